//! The migration journal: `/var/lib/ferry/<package>/migration.json` while a
//! migration is open, `migration.done.json` once it is completed or
//! cancelled. Root's directory (never the agent's user's), written beside
//! and renamed into place, so a crash leaves the old journal or the new one.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::plan::{Components, Instance, PlanStep, Strategy};
use crate::exit::refused;
use crate::fsutil;

const FORMAT: &str = "ferry-migration";
const OPEN: &str = "migration.json";
const CLOSED: &str = "migration.done.json";
/// Where the from-version's package file is kept.
const KEEP: &str = "migration";
/// Where a perform keeps the target's package file, under KEEP.
const TARGET: &str = "target";
/// Held (flock) by the migration command that runs.
const LOCK: &str = "migration.lock";

/// Where a migration stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Open,
    Done,
    Cancelled,
}

/// One step of `initialize`, in the order it runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The agent's migration lock is taken.
    Lock,
    /// The package is held from the automatic updater.
    Hold,
    /// The from-version's package file is kept (or why not is said).
    KeepPackage,
}

/// Every step of `initialize`.
pub const STEPS: [Step; 3] = [Step::Lock, Step::Hold, Step::KeepPackage];

/// What the journal holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub format: String,
    pub id: String,
    pub app: String,
    pub by: String,
    pub reason: String,
    pub package: String,
    /// Unix time `initialize` first ran.
    pub since: u64,
    /// The installed version and the state schema it writes, when the
    /// migration began.
    pub from_version: String,
    pub from_schema: u32,
    /// Whether the package was held before the migration held it (set
    /// before it is held, so that a crash between cannot lose it); `complete`
    /// and `cancel` release only a hold the migration added.
    pub hold_before: Option<bool>,
    /// The from-version's package file kept on the VM.
    pub package_file: Option<String>,
    /// Why no package file is kept, when it could not be.
    pub package_file_note: Option<String>,
    /// The steps of `initialize` done.
    pub steps: Vec<Step>,
    /// The perform (and, after a `cancel`, the way back), each with its
    /// plan and how far it went.
    pub perform: Vec<Perform>,
    pub state: State,
    /// Unix time it was completed or cancelled.
    pub ended: Option<u64>,
}

/// Why a perform runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// `ferry migration perform --to VERSION`.
    Perform,
    /// `ferry migration cancel` after a perform: back to the from-version
    /// and the tree as it was.
    Cancel,
}

/// One perform: its plan, fixed before anything changed, and how far it
/// went (`done` steps finished; `running` began and not finished: it runs
/// again on resume).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Perform {
    pub purpose: Purpose,
    pub to_version: String,
    pub to_schema: u32,
    /// `forward`, `backward` or `same`.
    pub direction: String,
    pub strategy: Strategy,
    pub components: Components,
    /// The target's package file, root's, in the migration's directory.
    pub package_file: Option<String>,
    /// The instances as they were when the perform was planned (for a
    /// cancel, as they were before the perform it undoes).
    pub tree: Vec<Instance>,
    pub steps: Vec<PlanStep>,
    pub done: usize,
    pub running: Option<usize>,
    pub began: u64,
    pub ended: Option<u64>,
}

impl Perform {
    pub fn finished(&self) -> bool {
        self.done == self.steps.len()
    }

    /// `perform` or `cancel`, for messages.
    pub fn verb(&self) -> &'static str {
        match self.purpose {
            Purpose::Perform => "perform",
            Purpose::Cancel => "cancel",
        }
    }

    /// The command that resumes it where it stopped (the same version and
    /// strategy: another is refused).
    pub fn resume_command(&self) -> String {
        match self.purpose {
            Purpose::Perform => format!(
                "ferry migration perform --to {} --strategy {}",
                self.to_version, self.strategy
            ),
            Purpose::Cancel => "ferry migration cancel".into(),
        }
    }

    /// `step 3 of 7 (install the package of 1.1.0)`, of the step running or next.
    pub fn at(&self) -> String {
        let i = self.running.unwrap_or(self.done);
        match self.steps.get(i) {
            Some(s) => format!("step {} of {} ({s})", i + 1, self.steps.len()),
            None => format!("all {} steps done", self.steps.len()),
        }
    }
}

/// What `initialize` is asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: Option<String>,
    pub app: String,
    pub by: String,
    pub reason: String,
    pub package: String,
}

impl Journal {
    /// A new open journal for `req`, begun at `now`.
    pub fn begin(req: &Request, now: u64, from_version: &str, from_schema: u32) -> Journal {
        Journal {
            format: FORMAT.into(),
            id: req.id.clone().unwrap_or_else(|| format!("mig-{now}")),
            app: req.app.clone(),
            by: req.by.clone(),
            reason: req.reason.clone(),
            package: req.package.clone(),
            since: now,
            from_version: from_version.into(),
            from_schema,
            hold_before: None,
            package_file: None,
            package_file_note: None,
            steps: Vec::new(),
            perform: Vec::new(),
            state: State::Open,
            ended: None,
        }
    }

    pub fn done(&self, step: Step) -> bool {
        self.steps.contains(&step)
    }

    /// Whether a perform stopped the agent (its target could not hold the
    /// lock) and nothing started it again: the lock is then this journal's.
    pub fn agent_stopped(&self) -> bool {
        let mut stopped = false;
        for p in &self.perform {
            for s in &p.steps[..p.done] {
                match s {
                    PlanStep::StopAgent => stopped = true,
                    PlanStep::StartAgent => stopped = false,
                    _ => {}
                }
            }
        }
        stopped
    }

    /// The steps of `initialize` not done yet.
    pub fn missing(&self) -> Vec<Step> {
        STEPS.into_iter().filter(|s| !self.done(*s)).collect()
    }

    /// `` `mig-1` of application shop (taken by alice at unix time …: why) ``
    pub fn describe(&self) -> String {
        format!(
            "`{}` of application {} (begun by {} at unix time {}{})",
            self.id,
            self.app,
            self.by,
            self.since,
            if self.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", self.reason)
            }
        )
    }
}

/// Whether `initialize` may go on: with the open journal to resume (the
/// same id and application: a retry), with none (a new migration), or
/// refused because another migration is open.
pub fn admit(open: Option<&Journal>, req: &Request) -> Result<Option<Journal>> {
    let Some(j) = open else {
        return Ok(None);
    };
    match &req.id {
        Some(id) if *id == j.id && req.app == j.app => Ok(Some(j.clone())),
        Some(id) if *id == j.id => Err(refused(anyhow::anyhow!(
            "the migration {} is open, and this request names application {}: \
             one id is one migration; give the application it began with (--app {})",
            j.describe(),
            req.app,
            j.app
        ))),
        None if req.app == j.app => Err(refused(anyhow::anyhow!(
            "the migration {} is open: to resume its initialize, give its id (--id {}); \
             to end it, `ferry migration complete` or `ferry migration cancel`",
            j.describe(),
            j.id
        ))),
        _ => Err(refused(anyhow::anyhow!(
            "another migration is open: {}; one migration at a time: \
             `ferry migration complete` or `ferry migration cancel` it first",
            j.describe()
        ))),
    }
}

/// The journal's directory of one package.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store of `package` on the system under `root`.
    pub fn new(root: &Path, package: &str) -> Store {
        Store {
            dir: root.join("var/lib/ferry").join(package),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn open_path(&self) -> PathBuf {
        self.dir.join(OPEN)
    }

    pub fn closed_path(&self) -> PathBuf {
        self.dir.join(CLOSED)
    }

    /// The directory the kept package file goes in (created, root's, 0700).
    pub fn keep_dir(&self) -> Result<PathBuf> {
        self.trusted_dir()?;
        let keep = self.dir.join(KEEP);
        trusted(&keep)?;
        Ok(keep)
    }

    /// The open migration, if any.
    pub fn open(&self) -> Result<Option<Journal>> {
        read(&self.open_path())
    }

    /// The last migration completed or cancelled, if any.
    pub fn last(&self) -> Result<Option<Journal>> {
        read(&self.closed_path())
    }

    /// Where a perform keeps the target's package file (created, root's, 0700).
    pub fn target_dir(&self) -> Result<PathBuf> {
        let dir = self.keep_dir()?.join(TARGET);
        trusted(&dir)?;
        Ok(dir)
    }

    /// Removes the perform's target package file and its directory: the
    /// files removed.
    pub fn remove_target(&self) -> Result<Vec<PathBuf>> {
        let dir = self.dir.join(KEEP).join(TARGET);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        let mut removed = Vec::new();
        for e in entries {
            let path = e?.path();
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            removed.push(path);
        }
        fs::remove_dir(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        Ok(removed)
    }

    /// Holds the package's migration commands to one at a time while the
    /// returned file is open (`flock` on `migration.lock`); `None` when
    /// another ferry holds it (a perform runs).
    pub fn exclusive(&self) -> Result<Option<fs::File>> {
        self.trusted_dir()?;
        crate::fsutil::lock_file(&self.dir.join(LOCK), false)
    }

    /// Writes the open journal atomically (0600).
    pub fn write(&self, j: &Journal) -> Result<()> {
        self.trusted_dir()?;
        write(&self.open_path(), j)
    }

    /// Ends the migration: the journal, with its final state, becomes
    /// `migration.done.json` (replacing the one before), then the open one
    /// goes.
    pub fn close(&self, j: &Journal) -> Result<()> {
        self.trusted_dir()?;
        write(&self.closed_path(), j)?;
        fs::remove_file(self.open_path())
            .with_context(|| format!("cannot remove {}", self.open_path().display()))?;
        fsutil::fsync_dir(&self.dir)
    }

    fn trusted_dir(&self) -> Result<()> {
        if let Some(parent) = self.dir.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        trusted(&self.dir)
    }
}

fn read(path: &Path) -> Result<Option<Journal>> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let j: Journal = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a migration journal ferry can read: fix it, or move it aside \
             once the migration it names is ended by hand",
            path.display()
        )
    })?;
    if j.format != FORMAT {
        bail!(
            "{}: field `format` is {:?}, not {FORMAT:?}: this is not ferry's migration journal",
            path.display(),
            j.format
        );
    }
    Ok(Some(j))
}

fn write(path: &Path, j: &Journal) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(j)?;
    text.push(b'\n');
    fsutil::write_atomic_mode(path, &text, Some(0o600))
}

/// Creates `dir` (0700) if missing; refuses one that is a link, not a
/// directory, not owned by this user (root), or writable by others: the
/// journal and the kept package are root's, never the agent's user's.
fn trusted(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta =
        fs::symlink_metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        bail!(
            "{} must be a directory of uid {me} that nobody else can write \
             (it is {}, uid {}, mode {:o}): refusing to keep a migration journal there; \
             remove it and run again",
            dir.display(),
            if meta.file_type().is_symlink() {
                "a symbolic link"
            } else if meta.is_dir() {
                "a directory"
            } else {
                "not a directory"
            },
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{status_of, REFUSED};

    fn request(id: Option<&str>, app: &str) -> Request {
        Request {
            id: id.map(String::from),
            app: app.into(),
            by: "alice".into(),
            reason: "new DM".into(),
            package: "roboconf-agent".into(),
        }
    }

    fn temp_root(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("ferry-migration-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn the_journal_is_written_atomically_into_a_private_directory() {
        let root = temp_root("write");
        let store = Store::new(&root, "roboconf-agent");
        assert_eq!(store.open().unwrap(), None);
        let mut j = Journal::begin(&request(Some("mig-1"), "shop"), 100, "1.0.0", 4);
        store.write(&j).unwrap();
        assert_eq!(store.open().unwrap().as_ref(), Some(&j));
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(&store.open_path()), 0o600);
        j.steps.push(Step::Lock);
        store.write(&j).unwrap();
        assert_eq!(store.open().unwrap().unwrap().steps, vec![Step::Lock]);
        let names: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![OPEN.to_string()], "no temporary file left");

        j.state = State::Done;
        j.ended = Some(200);
        store.close(&j).unwrap();
        assert_eq!(store.open().unwrap(), None);
        assert_eq!(store.last().unwrap(), Some(j));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_directory_others_control_is_refused() {
        let root = temp_root("untrusted");
        let elsewhere = root.join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::create_dir_all(root.join("var/lib/ferry")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("var/lib/ferry/roboconf-agent")).unwrap();
        let store = Store::new(&root, "roboconf-agent");
        let j = Journal::begin(&request(Some("mig-1"), "shop"), 100, "1.0.0", 4);
        let e = format!("{:#}", store.write(&j).unwrap_err());
        assert!(e.contains("a symbolic link"), "{e}");
        assert!(fs::read_dir(&elsewhere).unwrap().next().is_none());

        fs::remove_file(root.join("var/lib/ferry/roboconf-agent")).unwrap();
        fs::create_dir(root.join("var/lib/ferry/roboconf-agent")).unwrap();
        fs::set_permissions(
            root.join("var/lib/ferry/roboconf-agent"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let e = format!("{:#}", store.write(&j).unwrap_err());
        assert!(e.contains("mode 777"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_journal_of_another_format_is_refused_by_field() {
        let root = temp_root("format");
        let store = Store::new(&root, "roboconf-agent");
        let mut j = Journal::begin(&request(Some("mig-1"), "shop"), 100, "1.0.0", 4);
        j.format = "something-else".into();
        store.write(&j).unwrap();
        let e = format!("{:#}", store.open().unwrap_err());
        assert!(
            e.contains("field `format`") && e.contains("migration.json"),
            "{e}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn initialize_resumes_the_same_id_and_refuses_another() {
        let open = Journal::begin(&request(Some("mig-1"), "shop"), 100, "1.0.0", 4);
        assert_eq!(admit(None, &request(Some("mig-1"), "shop")).unwrap(), None);
        assert_eq!(
            admit(Some(&open), &request(Some("mig-1"), "shop")).unwrap(),
            Some(open.clone()),
            "the same id resumes the open migration"
        );
        for (req, says) in [
            (
                request(Some("mig-2"), "shop"),
                "another migration is open: `mig-1`",
            ),
            (
                request(Some("mig-2"), "bank"),
                "another migration is open: `mig-1`",
            ),
            (
                request(Some("mig-1"), "bank"),
                "give the application it began with (--app shop)",
            ),
            (request(None, "shop"), "give its id (--id mig-1)"),
        ] {
            let e = admit(Some(&open), &req).unwrap_err();
            assert_eq!(status_of(&e), REFUSED);
            assert!(format!("{e:#}").contains(says), "{e:#}");
        }
    }

    #[test]
    fn a_new_migration_is_named_after_its_start_without_an_id() {
        let j = Journal::begin(&request(None, "shop"), 1765115000, "1.0.0", 4);
        assert_eq!(j.id, "mig-1765115000");
        assert_eq!(j.missing(), STEPS.to_vec());
    }
}
