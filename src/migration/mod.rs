//! `ferry migration`: a Roboconf migration of the application on this VM
//! (issue #19), run as root on the VM. `initialize` takes the agent's
//! migration lock (asking the agent as its own user, as the upgrade hook
//! does), holds the package from the automatic updater, keeps the
//! from-version's package file, and records all of it in a journal;
//! `complete` and `cancel` undo exactly what it did; `status` reads it all.
//! See docs/MIGRATION.md.
//!
//! Root and the package are trusted, the agent's user is not: the journal
//! and the kept package are in root's `/var/lib/ferry/<package>/`, and the
//! agent's own directories are never touched, only the agent asked.

mod hold;
pub mod journal;
pub mod perform;
pub mod plan;

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use ferry_hook::package::PackageManifest;
use ferry_hook::system::Agent;
use serde::Serialize;
use serde_json::Value;

use crate::date::now_unix as now;
use crate::exit::{refused, PartiallyDone};
use crate::holds;
use hold::Hold;
pub use journal::{Journal, Request, State, Step, Store};
use perform::Ctx;

/// What a verb did, for its output.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub journal: Journal,
    /// What this run did, in words (empty: nothing was left to do).
    pub did: Vec<String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "migration {}: {:?}",
            self.journal.describe(),
            self.journal.state
        )?;
        if self.did.is_empty() {
            writeln!(f, "nothing to do")?;
        }
        for d in &self.did {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

fn manifest(package: &str) -> Result<PackageManifest> {
    let path = PackageManifest::path_for(package);
    PackageManifest::read(Path::new(&path)).map_err(|e| {
        refused(e.context(format!(
            "{package} is not installed by a ferry package on this VM (--package names it)"
        )))
    })
}

/// Wraps an error after the journal exists: what landed, and how to go on.
fn partial(e: anyhow::Error, j: &Journal, did: &[String], then: &str) -> anyhow::Error {
    let mut done = vec![format!("journal {} written", j.id)];
    done.extend(did.iter().cloned());
    e.context(format!("{then} (the journal says what is done)"))
        .context(PartiallyDone { done })
}

/// `ferry migration initialize`.
pub fn initialize(req: &Request, family: Option<&str>) -> Result<Outcome> {
    let m = manifest(&req.package)?;
    let store = Store::new(Path::new("/"), &req.package);
    let open = store.open()?;
    let resumed = journal::admit(open.as_ref(), req)?;
    let agent = Agent::new(&m)?;
    let status = agent
        .status()
        .context("the agent must answer to take its migration lock: start its unit")?;
    let application = status["application"].as_str().unwrap_or_default();
    if application != req.app {
        return Err(refused(anyhow!(
            "the agent of {} on this VM belongs to application {application:?} \
             (`application` in {}/agent.toml), not {:?}: run with --app {application} \
             or on a VM of {}",
            req.package,
            m.config_dir,
            req.app,
            req.app
        )));
    }
    let mut j = match resumed {
        Some(j) => j,
        None => Journal::begin(req, now(), &m.version, m.schema),
    };
    if let Some(held) = status["lock"]["id"].as_str().filter(|id| *id != j.id) {
        return Err(refused(anyhow!(
            "the agent holds the migration lock `{held}` (of application {}, taken by {}), \
             which this VM's journal does not know: end that migration where it began, \
             or break its lock (`{} ctl unlock --force --by WHO`, docs/AGENT.md)",
            status["lock"]["application"].as_str().unwrap_or("?"),
            status["lock"]["by"].as_str().unwrap_or("?"),
            m.agent
        )));
    }
    let hold = Hold::detect(family)?;
    let mut did = Vec::new();
    if !j.missing().is_empty() {
        store.write(&j)?;
    }
    // In the one record of holds from the moment the journal exists, so
    // that `ferry channel` leaves the package to the migration.
    holds::put(Path::new("/"), &req.package, holds_entry(&j))?;
    if j.missing().is_empty() {
        return Ok(Outcome { journal: j, did });
    }
    let go_on = |e, j: &Journal, did: &[String]| {
        partial(
            e,
            j,
            did,
            &format!(
                "run `ferry migration initialize --id {} --app {}` again to finish, \
                 or `ferry migration cancel` to undo it",
                j.id, j.app
            ),
        )
    };
    if !j.done(Step::Lock) {
        let answer = agent
            .lock(&j.id, &j.app, &j.by, &j.reason)
            .map_err(|e| go_on(e, &j, &did))?;
        did.push(format!(
            "the agent's migration lock `{}` {}; {} queued instruction(s) wait",
            j.id,
            if answer["taken"] == true {
                "taken"
            } else {
                "was already held"
            },
            answer["held"]
        ));
        j.steps.push(Step::Lock);
        store.write(&j)?;
    }
    if !j.done(Step::Hold) {
        let before = match j.hold_before {
            Some(b) => b,
            None => {
                let b = hold.is_held(&req.package).map_err(|e| go_on(e, &j, &did))?;
                j.hold_before = Some(b);
                store.write(&j)?;
                b
            }
        };
        if before {
            did.push(format!(
                "{} was already held ({}): it stays held after the migration",
                req.package,
                hold.how()
            ));
        } else {
            hold.hold(&req.package).map_err(|e| go_on(e, &j, &did))?;
            did.push(format!("{} held ({})", req.package, hold.how()));
        }
        j.steps.push(Step::Hold);
        store.write(&j)?;
    }
    if !j.done(Step::KeepPackage) {
        let keep = store.keep_dir().map_err(|e| go_on(e, &j, &did))?;
        match hold.keep(&req.package, &j.from_version, &keep) {
            Ok(file) => {
                did.push(format!("kept {}", file.display()));
                j.package_file = Some(file.display().to_string());
                j.package_file_note = None;
            }
            Err(e) => {
                let note = format!(
                    "the {} package file of {} is not kept on this VM: {e:#}; a cancel after \
                     perform needs it from the repository",
                    j.from_version, req.package
                );
                did.push(note.clone());
                j.package_file_note = Some(note);
            }
        }
        j.steps.push(Step::KeepPackage);
        store.write(&j)?;
    }
    Ok(Outcome { journal: j, did })
}

/// Who holds the package for the migration `j`, as the record of holds
/// names it.
fn holder(j: &Journal) -> String {
    format!(
        "{} (ferry migration `{}` of application {})",
        j.by, j.id, j.app
    )
}

/// The migration's entry in the record of holds.
fn holds_entry(j: &Journal) -> holds::Entry {
    holds::Entry {
        kind: holds::Kind::Migration,
        by: holder(j),
        why: if j.reason.is_empty() {
            "a migration is open".into()
        } else {
            j.reason.clone()
        },
        since: Some(j.since),
        undo: "ferry migration complete, or cancel".into(),
        version: None,
    }
}

/// After `complete` of a migration that moved the package: a host that
/// follows a channel is pinned to the installed version, since its updater
/// would otherwise move the package again (up to the channel's newest, or
/// back to an older pin) and undo the migration. What was said, if the
/// host follows a channel.
fn pin_performed(
    c: &Ctx,
    j: &Journal,
    package: &str,
    family: Option<&str>,
) -> Result<Option<String>> {
    let full = c.hold.installed(package)?;
    let host = crate::channel::Host::open(Path::new("/"), package, family)?;
    let entry = holds::Entry {
        kind: holds::Kind::Pin,
        by: holder(j),
        why: format!("the migration performed {full}; its updater would otherwise move it again"),
        since: Some(now()),
        undo: "ferry channel unpin".into(),
        version: Some(full.clone()),
    };
    Ok(
        crate::channel::pin_after_migration(&host, &full, entry)?.map(|r| {
            format!(
                "{} (`ferry channel unpin` to follow the channel again)",
                r.text().trim_end().replace('\n', "; ")
            )
        }),
    )
}

/// `ferry migration perform`: see perform.rs.
pub fn perform(req: &perform::Request, family: Option<&str>) -> Result<Outcome> {
    let m = manifest(&req.package)?;
    let store = Store::new(Path::new("/"), &req.package);
    let Some(_running) = store.exclusive()? else {
        return Err(refused(anyhow!(
            "another `ferry migration` command runs for {}: perform once it has ended",
            req.package
        )));
    };
    let Some(mut j) = store.open()? else {
        return Err(refused(anyhow!(
            "no migration of {} is open on this VM: `ferry migration initialize --app APP` first",
            req.package
        )));
    };
    if !j.missing().is_empty() {
        return Err(refused(anyhow!(
            "the initialize of {} did not finish (not done: {:?}): run `ferry migration \
             initialize --id {} --app {}` again first",
            j.describe(),
            j.missing(),
            j.id,
            j.app
        )));
    }
    let c = Ctx {
        m: &m,
        agent: Agent::new(&m)?,
        hold: Hold::detect(family)?,
        store: &store,
    };
    let did = perform::perform(&c, &mut j, req)?;
    Ok(Outcome { journal: j, did })
}

/// `ferry migration complete` (`cancelled` false) or `cancel` (true).
pub fn end(package: &str, cancelled: bool, family: Option<&str>) -> Result<Outcome> {
    let verb = if cancelled { "cancel" } else { "complete" };
    let m = manifest(package)?;
    let store = Store::new(Path::new("/"), package);
    let Some(j) = store.open()? else {
        let last = store
            .last()?
            .map(|l| format!(" (the last, {}, is {:?})", l.describe(), l.state))
            .unwrap_or_default();
        return Err(refused(anyhow!(
            "no migration of {package} is open on this VM{last}: nothing to {verb} \
             ({} is absent)",
            store.open_path().display()
        )));
    };
    let Some(_running) = store.exclusive()? else {
        return Err(refused(anyhow!(
            "a `ferry migration` command runs for {package}{}: {verb} once it has ended",
            j.perform
                .last()
                .map(|p| format!(" (its perform is at {})", p.at()))
                .unwrap_or_default()
        )));
    };
    // Read again under the lock: what ran before may have changed it.
    let mut j = store.open()?.unwrap_or(j);
    let mut did = Vec::new();
    if let Some(p) = j.perform.last().filter(|p| !p.finished() && !cancelled) {
        return Err(refused(anyhow!(
            "the migration {} stopped at {} of its {}: run the same command again to finish it \
             (`{}`), or `ferry migration cancel`",
            j.describe(),
            p.at(),
            p.verb(),
            p.resume_command()
        )));
    }
    let c = Ctx {
        m: &m,
        agent: Agent::new(&m)?,
        hold: Hold::detect(family)?,
        store: &store,
    };
    if cancelled && !j.perform.is_empty() {
        did.extend(perform::plan_back(&c, &mut j)?);
        perform::run(&c, &mut j, &mut did)?;
    } else if j.agent_stopped() {
        let said = perform::start_agent(&c).map_err(|e| {
            partial(
                e,
                &j,
                &did,
                "run `ferry migration complete` again to finish",
            )
        })?;
        did.push(said);
    }
    let go_on = |e, j: &Journal, did: &[String]| {
        partial(
            e,
            j,
            did,
            &format!("run `ferry migration {verb}` again to finish"),
        )
    };
    if j.agent_stopped()
        || j.perform
            .last()
            .is_some_and(|p| p.to_schema < plan::LOCK_SCHEMA)
    {
        did.push(format!(
            "the lock `{}` was in ferry's journal: the agent of {} cannot hold one",
            j.id,
            j.perform.last().map_or("?", |p| p.to_version.as_str())
        ));
    } else {
        let answer = c.agent.unlock(&j.id).map_err(|e| go_on(e, &j, &did))?;
        did.push(if answer["released"].is_null() {
            format!("the agent held no migration lock (`{}` was released)", j.id)
        } else {
            format!("the agent's migration lock `{}` released", j.id)
        });
    }
    match j.hold_before {
        Some(false) => {
            c.hold.release(package).map_err(|e| go_on(e, &j, &did))?;
            did.push(format!(
                "the migration's hold ({}) of {package} released",
                c.hold.how()
            ));
        }
        Some(true) => did.push(format!("{package} stays held, as before the migration")),
        None => {}
    }
    holds::remove(Path::new("/"), package, holds::Kind::Migration)
        .map_err(|e| go_on(e, &j, &did))?;
    let performed = j.perform.last().is_some_and(|p| p.finished() && !cancelled);
    if performed {
        if let Some(said) =
            pin_performed(&c, &j, package, family).map_err(|e| go_on(e, &j, &did))?
        {
            did.push(said);
        }
    }
    if let Some(file) = j.package_file.take() {
        match std::fs::remove_file(&file) {
            Ok(()) => did.push(format!("removed {file}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                j.package_file = Some(file.clone());
                return Err(go_on(
                    anyhow!(e).context(format!("cannot remove {file}")),
                    &j,
                    &did,
                ));
            }
        }
    }
    for file in store.remove_target().map_err(|e| go_on(e, &j, &did))? {
        did.push(format!("removed {}", file.display()));
    }
    j.state = if cancelled {
        State::Cancelled
    } else {
        State::Done
    };
    j.ended = Some(now());
    store.close(&j)?;
    did.push(format!("journal closed: {}", store.closed_path().display()));
    Ok(Outcome { journal: j, did })
}

/// What `ferry migration status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub package: String,
    /// The open migration's journal.
    pub open: Option<Journal>,
    /// The last migration completed or cancelled.
    pub last: Option<Journal>,
    /// The agent's migration lock as the agent reports it (null: none).
    pub agent_lock: Option<Value>,
    /// Why the agent could not be asked.
    pub agent_error: Option<String>,
    /// Whether the package is held from the automatic updater.
    pub held: Option<bool>,
    pub hold_error: Option<String>,
    /// What the next command would do.
    pub next: String,
}

/// `ferry migration status`.
pub fn status(package: &str, family: Option<&str>) -> Result<Status> {
    let m = manifest(package)?;
    let store = Store::new(Path::new("/"), package);
    let open = store.open()?;
    let (agent_lock, agent_error) = match Agent::new(&m).and_then(|a| a.status()) {
        Ok(s) => (Some(s["lock"].clone()), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let (held, hold_error) = match Hold::detect(family).and_then(|h| h.is_held(package)) {
        Ok(h) => (Some(h), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let next = match &open {
        None => "`ferry migration initialize --app APP` would take the agent's migration lock, \
                 hold the package and keep its package file"
            .to_string(),
        Some(j) if !j.missing().is_empty() => format!(
            "`ferry migration initialize --id {} --app {}` would finish its initialize \
             (not done: {:?}); `ferry migration cancel` would undo it",
            j.id,
            j.app,
            j.missing()
        ),
        Some(j) => match j.perform.last() {
            None => format!(
                "`ferry migration perform --to VERSION` would move the agent under the lock; \
                 `complete` (or `cancel`) would release the lock `{}`, {}, and close the journal",
                j.id,
                if j.hold_before == Some(true) {
                    "leave the package held as it was before"
                } else {
                    "release the hold"
                }
            ),
            Some(p) if !p.finished() => format!(
                "the {} stopped at {}: run it again to resume (`{}`); `cancel` goes back to {}",
                p.verb(),
                p.at(),
                p.resume_command(),
                j.from_version
            ),
            Some(p) => format!(
                "performed to {}: `ferry migration complete` would keep it (pinned to it if \
                 the VM follows a channel, so its updater does not undo it) and release the \
                 lock `{}`; `cancel` would move back to {} and the tree as it was, then release",
                p.to_version, j.id, j.from_version
            ),
        },
    };
    Ok(Status {
        package: package.into(),
        open,
        last: store.last()?,
        agent_lock,
        agent_error,
        held,
        hold_error,
        next,
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.open {
            Some(j) => {
                writeln!(f, "migration:  {} open", j.describe())?;
                writeln!(
                    f,
                    "from:       {} (schema {})",
                    j.from_version, j.from_schema
                )?;
                writeln!(f, "steps done: {:?}", j.steps)?;
                if let Some(p) = &j.package_file {
                    writeln!(f, "kept:       {p}")?;
                }
                if let Some(n) = &j.package_file_note {
                    writeln!(f, "kept:       nothing: {n}")?;
                }
            }
            None => writeln!(f, "migration:  none open")?,
        }
        if let Some(l) = &self.last {
            writeln!(f, "last:       {} {:?}", l.describe(), l.state)?;
        }
        match (&self.agent_lock, &self.agent_error) {
            (Some(Value::Null), _) => writeln!(f, "agent lock: none")?,
            (Some(lock), _) => writeln!(f, "agent lock: {lock}")?,
            (None, Some(e)) => writeln!(f, "agent lock: unknown: {e}")?,
            (None, None) => {}
        }
        match (&self.held, &self.hold_error) {
            (Some(h), _) => writeln!(f, "held:       {}", if *h { "yes" } else { "no" })?,
            (None, Some(e)) => writeln!(f, "held:       unknown: {e}")?,
            (None, None) => {}
        }
        writeln!(f, "next:       {}", self.next)
    }
}
