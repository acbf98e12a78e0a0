//! The one record of what keeps a package where it is on this VM:
//! `/var/lib/ferry/holds/<package>.json`. Every ferry command that holds
//! the package writes its entry here, with who set it, why, since when and
//! what undoes it: ferry's pin (`ferry channel pin`, `rollback`, `install`,
//! and `ferry migration complete` after a perform) and an open migration
//! (`ferry migration initialize` until `complete` or `cancel`). Every
//! command that would move or release the package reads it first, so a
//! migration and a pin never undo each other (docs/MIGRATION.md, "Holds").
//!
//! What holds the package from outside ferry (the package manager's own
//! hold, an exclusion in dnf's configuration or a negative pin in apt's
//! preferences) is not ferry's to record: [`outside`] reads it live.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What kind of holder an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// ferry's pin: the updater keeps (or goes down to) `version`.
    Pin,
    /// An open `ferry migration`: the package is held from the updater.
    Migration,
    /// The package manager's hold, set outside ferry (read live).
    Hold,
    /// An exclusion in the package manager's configuration (read live).
    Exclude,
}

/// One holder of the package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    /// Who set it, and with which command.
    pub by: String,
    pub why: String,
    /// When it was set (seconds since the epoch); unknown for what was set
    /// outside ferry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// The command that removes it.
    pub undo: String,
    /// The version a pin keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The record of one package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub package: String,
    pub holds: Vec<Entry>,
}

impl Kind {
    /// Its name in `--json` and in text.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pin => "pin",
            Kind::Migration => "migration",
            Kind::Hold => "hold",
            Kind::Exclude => "exclude",
        }
    }
}

impl Record {
    pub fn get(&self, kind: Kind) -> Option<&Entry> {
        self.holds.iter().find(|e| e.kind == kind)
    }
}

pub fn path(package: &str) -> String {
    format!("/var/lib/ferry/holds/{package}.json")
}

fn file(root: &Path, package: &str) -> PathBuf {
    root.join(path(package).trim_start_matches('/'))
}

/// The record of `package` under `root` (empty when nothing holds it).
pub fn load(root: &Path, package: &str) -> Result<Record> {
    let path = file(root, package);
    match fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).with_context(|| {
            format!(
                "{} does not parse: ferry's record of what holds {package} is damaged; \
                 restore it from a backup, or remove it and set the pin again",
                path.display()
            )
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Record {
            package: package.to_string(),
            holds: Vec::new(),
        }),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Sets `entry`, replacing the entry of its kind.
pub fn put(root: &Path, package: &str, entry: Entry) -> Result<()> {
    update(root, package, |r| {
        r.holds.retain(|e| e.kind != entry.kind);
        r.holds.push(entry);
    })
}

/// Removes the entry of `kind`, if there is one.
pub fn remove(root: &Path, package: &str, kind: Kind) -> Result<()> {
    update(root, package, |r| r.holds.retain(|e| e.kind != kind))
}

/// Reads, changes and writes the record under an exclusive lock of its
/// directory, so two ferry commands setting holds at once both land.
fn update(root: &Path, package: &str, change: impl FnOnce(&mut Record)) -> Result<()> {
    let path = file(root, package);
    let dir = path.parent().context("the record's path has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _lock = crate::fsutil::lock_file(&dir.join(".lock"), true)?;
    let mut record = load(root, package)?;
    record.package = package.to_string();
    change(&mut record);
    let mut data = serde_json::to_vec_pretty(&record)?;
    data.push(b'\n');
    crate::fsutil::write_atomic_mode(&path, &data, Some(0o644))
}

/// Who runs this ferry command: the user sudo ran it for, else the login
/// name, else `root`; with the command, for `by`.
pub fn by(command: &str) -> String {
    let user = ["SUDO_USER", "LOGNAME", "USER"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "root".into());
    format!("{user} ({command})")
}

/// What holds `package` from outside ferry, read from the configuration
/// as it is now: the package manager's hold when no ferry entry explains
/// it (`held`: apt-mark showhold or a dnf versionlock; on dnf ferry's pin
/// is a versionlock too), and exclusions: `exclude=` / `excludepkgs=` in
/// dnf.conf and the repository files, or a negative `Pin-Priority` in
/// apt's preferences that ferry did not write.
pub fn outside(root: &Path, package: &str, family: &str, held: bool, ferry: &Record) -> Vec<Entry> {
    let mut out = Vec::new();
    let explained =
        ferry.get(Kind::Migration).is_some() || (family == "dnf" && ferry.get(Kind::Pin).is_some());
    if held && !explained {
        out.push(Entry {
            kind: Kind::Hold,
            by: "outside ferry".into(),
            why: "unknown".into(),
            since: None,
            undo: match family {
                "dnf" => format!("dnf versionlock delete {package}"),
                _ => format!("apt-mark unhold {package}"),
            },
            version: None,
        });
    }
    let found = match family {
        "dnf" => dnf_exclusions(root, package),
        _ => apt_exclusions(root, package),
    };
    out.extend(found.into_iter().map(|(file, what)| Entry {
        kind: Kind::Exclude,
        by: format!("outside ferry ({file})"),
        why: format!("{what} excludes {package} from the updater"),
        since: None,
        undo: format!("remove it from {file}"),
        version: None,
    }));
    out
}

/// Whether a dnf or apt package pattern (a name or a shell glob) names
/// `package`; a dnf pattern may name some of its versions (`name-1.*`).
fn names(pattern: &str, package: &str) -> bool {
    let versions = pattern
        .strip_prefix(&format!("{package}-"))
        .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit() || c == '*'));
    versions || glob::Pattern::new(pattern).is_ok_and(|p| p.matches(package))
}

/// `(file, "excludepkgs=…")` for each dnf exclusion naming `package`.
fn dnf_exclusions(root: &Path, package: &str) -> Vec<(String, String)> {
    let mut files = vec!["/etc/dnf/dnf.conf".to_string()];
    files.extend(listed(root, "/etc/yum.repos.d", ".repo"));
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = fs::read_to_string(root.join(f.trim_start_matches('/'))) else {
            continue;
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if !matches!(key, "exclude" | "excludepkgs" | "exclude_pkgs") {
                continue;
            }
            if value
                .split(|c: char| c == ',' || c.is_whitespace())
                .any(|p| !p.is_empty() && names(p, package))
            {
                out.push((f.clone(), line.trim().to_string()));
            }
        }
    }
    out
}

/// `(file, "Pin-Priority: -1")` for each apt preferences stanza naming
/// `package` with a negative priority (apt never installs it), but ferry's
/// own pin file.
fn apt_exclusions(root: &Path, package: &str) -> Vec<(String, String)> {
    let own = crate::channel::apt::preferences_path(package);
    let mut files = vec!["/etc/apt/preferences".to_string()];
    files.extend(listed(root, "/etc/apt/preferences.d", ""));
    let mut out = Vec::new();
    for f in files.into_iter().filter(|f| *f != own) {
        let Ok(text) = fs::read_to_string(root.join(f.trim_start_matches('/'))) else {
            continue;
        };
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|r| r.strip_prefix(':'))
                        .map(str::trim)
                })
            };
            let named =
                field("Package").is_some_and(|p| p.split_whitespace().any(|p| names(p, package)));
            let priority = field("Pin-Priority").and_then(|p| p.parse::<i64>().ok());
            if let (true, Some(p)) = (named, priority.filter(|p| *p < 0)) {
                out.push((f.clone(), format!("Pin-Priority: {p}")));
            }
        }
    }
    out
}

/// The files of `dir` (inside `root`) whose names end with `suffix`, by
/// absolute path, sorted.
fn listed(root: &Path, dir: &str, suffix: &str) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(root.join(dir.trim_start_matches('/')))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix) && !n.starts_with('.'))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str) -> PathBuf {
        let r = std::env::temp_dir().join(format!("ferry-holds-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&r);
        fs::create_dir_all(&r).unwrap();
        r
    }

    fn entry(kind: Kind, by: &str) -> Entry {
        Entry {
            kind,
            by: by.into(),
            why: "test".into(),
            since: Some(1),
            undo: "undo".into(),
            version: None,
        }
    }

    #[test]
    fn one_entry_per_kind_and_removing_one_keeps_the_other() {
        let r = root("record");
        assert_eq!(load(&r, "agent").unwrap().holds, vec![]);
        put(&r, "agent", entry(Kind::Pin, "a")).unwrap();
        put(&r, "agent", entry(Kind::Migration, "b")).unwrap();
        put(&r, "agent", entry(Kind::Pin, "c")).unwrap();
        let rec = load(&r, "agent").unwrap();
        assert_eq!(rec.holds.len(), 2);
        assert_eq!(rec.get(Kind::Pin).unwrap().by, "c");
        remove(&r, "agent", Kind::Pin).unwrap();
        let rec = load(&r, "agent").unwrap();
        assert_eq!(rec.holds, vec![entry(Kind::Migration, "b")]);
        let mode = fs::metadata(file(&r, "agent")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o644
        );
        fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn a_damaged_record_is_named_not_replaced() {
        let r = root("damaged");
        fs::create_dir_all(r.join("var/lib/ferry/holds")).unwrap();
        fs::write(file(&r, "agent"), "{").unwrap();
        let err = put(&r, "agent", entry(Kind::Pin, "a")).unwrap_err();
        assert!(format!("{err:#}").contains("is damaged"), "{err:#}");
        assert_eq!(fs::read(file(&r, "agent")).unwrap(), b"{");
        fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn exclusions_are_read_from_dnf_and_apt_configuration() {
        let r = root("outside");
        fs::create_dir_all(r.join("etc/dnf")).unwrap();
        fs::create_dir_all(r.join("etc/yum.repos.d")).unwrap();
        fs::write(
            r.join("etc/dnf/dnf.conf"),
            "[main]\ngpgcheck=1\nexcludepkgs=kernel*, roboconf-*\n",
        )
        .unwrap();
        fs::write(
            r.join("etc/yum.repos.d/site.repo"),
            "[site]\nexclude=other roboconf-agent-1.*\n",
        )
        .unwrap();
        let ferry = Record::default();
        let found = outside(&r, "roboconf-agent", "dnf", false, &ferry);
        let by: Vec<&str> = found.iter().map(|e| e.by.as_str()).collect();
        assert_eq!(
            by,
            [
                "outside ferry (/etc/dnf/dnf.conf)",
                "outside ferry (/etc/yum.repos.d/site.repo)"
            ]
        );
        assert!(found.iter().all(|e| e.kind == Kind::Exclude));
        assert!(outside(&r, "other-agent", "dnf", false, &ferry).is_empty());

        fs::create_dir_all(r.join("etc/apt/preferences.d")).unwrap();
        fs::write(
            r.join("etc/apt/preferences.d/site"),
            "Package: nginx\nPin: release *\nPin-Priority: -1\n\n\
             Package: roboconf-agent\nPin: release *\nPin-Priority: -10\n",
        )
        .unwrap();
        // ferry's own pin file is a pin, not an exclusion, whatever it says.
        fs::write(
            r.join(crate::channel::apt::preferences_path("roboconf-agent").trim_start_matches('/')),
            "Package: roboconf-agent\nPin: version 1\nPin-Priority: -1\n",
        )
        .unwrap();
        let found = outside(&r, "roboconf-agent", "apt", false, &ferry);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].why,
            "Pin-Priority: -10 excludes roboconf-agent from the updater"
        );
        fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn the_package_managers_hold_is_outside_ferry_unless_a_ferry_entry_explains_it() {
        let r = root("held");
        let mut ferry = Record::default();
        let held = |f: &Record, family| outside(&r, "agent", family, true, f);
        assert_eq!(held(&ferry, "apt")[0].undo, "apt-mark unhold agent");
        ferry.holds.push(entry(Kind::Pin, "a"));
        // apt's pin is a preferences file, not apt-mark's hold.
        assert_eq!(held(&ferry, "apt").len(), 1);
        // dnf's pin is a versionlock: the hold is the pin.
        assert!(held(&ferry, "dnf").is_empty());
        ferry.holds = vec![entry(Kind::Migration, "b")];
        assert!(held(&ferry, "apt").is_empty());
        fs::remove_dir_all(&r).unwrap();
    }
}
