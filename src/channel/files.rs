//! Files ferry writes on a host: atomic writes with the modes the tools
//! expect, a unified diff for `--dry-run`, and the record of what was
//! written (with checksums) so `disable` removes exactly that.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A file ferry wants on the host: an absolute path inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl Planned {
    pub fn new(path: impl Into<String>, contents: impl Into<Vec<u8>>, mode: u32) -> Planned {
        Planned {
            path: path.into(),
            contents: contents.into(),
            mode,
        }
    }
}

/// One recorded file: its checksum and mode when ferry wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub sha256: String,
    pub mode: u32,
}

/// What ferry wrote for one package, kept in
/// `/var/lib/ferry/channel/<package>.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    pub package: String,
    pub family: String,
    pub repo: String,
    pub channel: String,
    pub origin: Option<String>,
    /// Every file ferry wrote, by absolute path inside the root.
    pub files: BTreeMap<String, FileRecord>,
    /// Directories ferry created (removed by `disable` when empty).
    pub dirs: Vec<String>,
    /// The `gpg-pubkey-…` rpm package ferry imported (dnf hosts), if ferry
    /// imported it (a key that was already there is not ferry's to remove):
    /// NAME-VERSION-RELEASE (older records hold NAME-VERSION; `rpm -e` takes
    /// either).
    pub rpm_key: Option<String>,
    /// The keys ferry imported for this repository before its key was
    /// rotated (`enable` with the new fingerprint): kept, since the rpms
    /// published before the rotation carry their signature, and removed by
    /// `disable` with `rpm_key`.
    pub rotated_rpm_keys: Vec<String>,
    /// The version pinned by `ferry channel pin`, if any.
    pub pinned: Option<String>,
    /// The maintenance window `enable` was given, if any.
    pub window: Option<String>,
    /// dnf: versionlock.list before ferry's first lock, put back by unpin
    /// when dnf left only its comments behind.
    pub versionlock_before: Option<String>,
}

pub fn record_path(package: &str) -> String {
    format!("/var/lib/ferry/channel/{package}.json")
}

pub use crate::digest::sha256_hex;

/// `root` + an absolute path.
pub fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

pub fn load_record(root: &Path, package: &str) -> Result<Option<Record>> {
    let path = under(root, &record_path(package));
    match fs::read(&path) {
        Ok(data) => Ok(Some(serde_json::from_slice(&data).with_context(|| {
            format!(
                "{} does not parse: ferry's record of what it wrote is damaged; \
                 restore it from a backup or remove the files by hand",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn save_record(root: &Path, record: &Record) -> Result<()> {
    let mut data = serde_json::to_vec_pretty(record)?;
    data.push(b'\n');
    write_atomic(
        root,
        &record_path(&record.package),
        &data,
        0o644,
        &mut Vec::new(),
    )
}

pub fn remove_record(root: &Path, package: &str) -> Result<()> {
    let path = under(root, &record_path(package));
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Writes `data` to `path` (inside `root`) atomically, with `mode`
/// (`crate::fsutil::write_atomic_mode`). Directories it had to create are
/// appended to `created`, so that disable removes them.
pub fn write_atomic(
    root: &Path,
    path: &str,
    data: &[u8],
    mode: u32,
    created: &mut Vec<String>,
) -> Result<()> {
    let target = under(root, path);
    let dir = target.parent().context("a file path has a parent")?;
    let mut missing = Vec::new();
    let mut d = Path::new(path).parent();
    while let Some(p) = d {
        if p.as_os_str().is_empty()
            || p == Path::new("/")
            || under(root, &p.to_string_lossy()).is_dir()
        {
            break;
        }
        missing.push(p.to_string_lossy().into_owned());
        d = p.parent();
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    missing.reverse();
    created.extend(missing);
    crate::fsutil::write_atomic_mode(&target, data, Some(mode))
}

/// What applying a plan would do to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Create,
    Update { old: Vec<u8> },
}

/// Compares a planned file with the disk; refuses to overwrite a file that
/// ferry did not write, or that was changed since ferry wrote it.
pub fn change_for(root: &Path, plan: &Planned, record: Option<&Record>) -> Result<Change> {
    let target = under(root, &plan.path);
    let old = match fs::read(&target) {
        Ok(old) => old,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Change::Create),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", target.display())),
    };
    let mode = fs::metadata(&target)?.permissions().mode() & 0o7777;
    if old == plan.contents && mode == plan.mode {
        return Ok(Change::Unchanged);
    }
    match record.and_then(|r| r.files.get(&plan.path)) {
        Some(rec) if rec.sha256 == sha256_hex(&old) => Ok(Change::Update { old }),
        Some(_) => bail!(
            "{} was changed by someone else since ferry wrote it; ferry will not overwrite it. \
             Move your version aside (or restore ferry's) and run the command again",
            plan.path
        ),
        None => bail!(
            "{} exists and was not written by ferry; ferry will not overwrite it. \
             Move it aside (e.g. if it is an older hand-made copy of this configuration) \
             and run the command again",
            plan.path
        ),
    }
}

/// A unified diff (3 lines of context) between two texts, with `---`/`+++`
/// headers naming them, as `diff -u` writes it (the `similar` crate);
/// empty when they are equal.
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_of_a_new_file_adds_every_line() {
        let d = unified_diff("", "a\nb\n", "/dev/null", "/etc/x");
        assert_eq!(d, "--- /dev/null\n+++ /etc/x\n@@ -0,0 +1,2 @@\n+a\n+b\n");
    }

    #[test]
    fn diff_keeps_three_lines_of_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        let d = unified_diff(old, new, "a", "b");
        assert_eq!(
            d,
            "--- a\n+++ b\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
        assert_eq!(unified_diff(old, old, "a", "b"), "");
    }

    #[test]
    fn atomic_write_sets_mode_and_reports_created_directories() {
        let root = std::env::temp_dir().join(format!("ferry-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let mut created = Vec::new();
        write_atomic(&root, "/etc/a/b/c.conf", b"x\n", 0o640, &mut created).unwrap();
        assert_eq!(
            created,
            vec!["/etc".to_string(), "/etc/a".into(), "/etc/a/b".into()]
        );
        let meta = fs::metadata(root.join("etc/a/b/c.conf")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(
            fs::read_dir(root.join("etc/a/b")).unwrap().count(),
            1,
            "no temp file left"
        );
        // Unchanged, changed-by-ferry, changed-by-someone-else.
        let plan = Planned::new("/etc/a/b/c.conf", "x\n", 0o640);
        assert_eq!(change_for(&root, &plan, None).unwrap(), Change::Unchanged);
        let other = Planned::new("/etc/a/b/c.conf", "y\n", 0o640);
        assert!(change_for(&root, &other, None)
            .unwrap_err()
            .to_string()
            .contains("not written by ferry"));
        let mut record = Record::default();
        record.files.insert(
            other.path.clone(),
            FileRecord {
                sha256: sha256_hex(b"x\n"),
                mode: 0o640,
            },
        );
        assert!(matches!(
            change_for(&root, &other, Some(&record)).unwrap(),
            Change::Update { .. }
        ));
        record.files.get_mut(&other.path).unwrap().sha256 = sha256_hex(b"z\n");
        assert!(change_for(&root, &other, Some(&record))
            .unwrap_err()
            .to_string()
            .contains("changed by someone else"));
        // The record round-trips.
        record.package = "p".into();
        save_record(&root, &record).unwrap();
        assert_eq!(load_record(&root, "p").unwrap(), Some(record));
        fs::remove_dir_all(&root).unwrap();
    }
}
