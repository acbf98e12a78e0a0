//! What an updater backend does for `ferry channel`, and the registry of
//! backends. A backend is one package manager with its unattended updater
//! (apt with unattended-upgrades, dnf with dnf-automatic); the commands in
//! `commands.rs` and `status.rs` drive every backend the same way. Adding
//! one: its own file implementing [`Backend`], and one line in [`BACKENDS`]
//! (docs/ARCHITECTURE.md).

use std::path::Path;

use anyhow::{bail, Result};

use super::files::{Planned, Record};
use super::gpg::TempGpg;
use super::host::Host;
use super::report::Report;
use super::status::Status;
use super::window::Window;
use super::EnableArgs;

/// Every backend `ferry channel` knows, in the order detection tries them.
pub static BACKENDS: &[&dyn Backend] = &[&super::apt::Apt, &super::dnf::Dnf];

/// How a backend is named in messages and on the command line.
pub struct About {
    /// The name `--family` takes, the record keeps and status shows.
    pub name: &'static str,
    /// The unattended updater it drives.
    pub updater: &'static str,
    /// What a host of this backend has, under its root.
    pub requires: &'static [&'static str],
}

impl About {
    /// What marks a host of this backend, for messages.
    pub fn marks(&self) -> String {
        self.requires.join(" and ")
    }
}

/// What the files `enable` writes are made from, for every backend.
pub struct Source<'a> {
    pub package: &'a str,
    /// The repository's URL.
    pub repo: &'a str,
    pub channel: &'a str,
    /// The checked key, armored.
    pub armored_key: &'a str,
    pub window: Option<&'a Window>,
}

/// What `enable` hands a backend: the host, the command line, the key it
/// checked (in a throwaway keyring), and what the files are made from.
pub struct Enable<'a> {
    pub host: &'a Host,
    pub args: &'a EnableArgs,
    pub gpg: &'a TempGpg,
    pub source: Source<'a>,
}

/// A change to the host, kept in ferry's record of what it wrote; what was
/// done (or, in a dry run, would be) is said in `out`.
pub struct Edit<'a> {
    pub rec: &'a mut Record,
    pub dry_run: bool,
    pub out: &'a mut Report,
}

impl<'a> Edit<'a> {
    pub fn new(rec: &'a mut Record, dry_run: bool, out: &'a mut Report) -> Edit<'a> {
        Edit { rec, dry_run, out }
    }
}

/// One package manager and its unattended updater.
pub trait Backend: Sync {
    fn about(&self) -> &'static About;
    /// Whether the system under `root` has this backend.
    fn present(&self, root: &Path) -> bool {
        self.about()
            .requires
            .iter()
            .all(|p| root.join(p.trim_start_matches('/')).exists())
    }

    /// The files `enable` writes, and the repository's Origin when the
    /// format has one. Every check of the repository happens here.
    fn plan_enable(&self, e: &Enable) -> Result<(Vec<Planned>, Option<String>)>;
    /// Trusts the checked key where the package manager keeps keys outside
    /// files (rpm's database), noting the change in the edit's report.
    fn trust_key(&self, _e: &Enable, _edit: &mut Edit) -> Result<()> {
        Ok(())
    }
    /// Once `enable` wrote its files: starts what runs the updates.
    fn after_enable(&self, _host: &Host, _out: &mut Report) {}
    /// Before `disable` removes its files: stops the updater and drops a
    /// pin kept outside files.
    fn before_disable(&self, _host: &Host, _edit: &mut Edit) -> Result<()> {
        Ok(())
    }
    /// Once `disable` removed its files: forgets the key.
    fn after_disable(&self, _host: &Host, _edit: &mut Edit) -> Result<()> {
        Ok(())
    }

    /// The files `pin` writes (not `enable`'s), by path.
    fn pin_paths(&self, _package: &str) -> Vec<String> {
        Vec::new()
    }
    /// The full version of the package that `version` names among those
    /// the repository offers.
    fn resolve_version(&self, host: &Host, version: &str) -> Result<String>;
    /// Pins the package to `full`; false when it already is.
    fn pin(&self, host: &Host, edit: &mut Edit, full: &str) -> Result<bool>;
    /// Removes the pin.
    fn unpin(&self, host: &Host, edit: &mut Edit) -> Result<()>;
    /// Installs `version` (upstream or full) through the package manager,
    /// upgrading or downgrading to it (in a dry run, only says which); the
    /// full version. With `refresh`, the repositories' metadata is read
    /// again first, so a version published since the last read is found.
    fn install(
        &self,
        host: &Host,
        version: &str,
        refresh: bool,
        dry_run: bool,
        out: &mut Report,
    ) -> Result<String>;
    /// Installs the previous (or given) version through the package
    /// manager (in a dry run, only says which); the version.
    fn rollback(
        &self,
        host: &Host,
        to: Option<&str>,
        dry_run: bool,
        out: &mut Report,
    ) -> Result<String>;
    /// Fills in what the package manager and the updater know.
    fn status(&self, host: &Host, rec: Option<&Record>, s: &mut Status) -> Result<()>;

    /// The backend's name (`about().name`).
    fn name(&self) -> &'static str {
        self.about().name
    }
}

/// The backend of the system under `root`: the one `family` names, or the
/// only one present. A host with several (e.g. Debian with dnf installed)
/// is ambiguous: `--family` decides.
pub fn detect(root: &Path, family: Option<&str>) -> Result<&'static dyn Backend> {
    let present: Vec<&'static dyn Backend> = BACKENDS
        .iter()
        .copied()
        .filter(|b| b.present(root))
        .collect();
    if let Some(name) = family {
        let Some(backend) = BACKENDS.iter().copied().find(|b| b.name() == name) else {
            bail!("--family {name}: ferry channel knows {}", names(BACKENDS));
        };
        if !backend.present(root) {
            bail!(
                "--family {name}: {} has no {} (see docs/CHANNEL.md)",
                root.display(),
                backend.about().marks()
            );
        }
        return Ok(backend);
    }
    match present.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "{} is neither {}: ferry channel supports {} only; give --root the system's root directory",
            root.display(),
            BACKENDS
                .iter()
                .map(|b| {
                    let article = if b.name().starts_with(['a', 'e', 'i', 'o', 'u']) {
                        "an"
                    } else {
                        "a"
                    };
                    format!("{article} {} host ({})", b.name(), b.about().marks())
                })
                .collect::<Vec<_>>()
                .join(" nor "),
            BACKENDS
                .iter()
                .map(|b| b.about().updater)
                .collect::<Vec<_>>()
                .join(" and ")
        ),
        several => bail!(
            "{} has {}: say which one updates the agent with {}",
            root.display(),
            several
                .iter()
                .map(|b| format!("{} ({})", b.name(), b.about().marks()))
                .collect::<Vec<_>>()
                .join(" and "),
            several
                .iter()
                .map(|b| format!("--family {}", b.name()))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    }
}

fn names(backends: &[&dyn Backend]) -> String {
    backends
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn the_host_family_is_detected_and_ambiguity_refused() {
        let root = std::env::temp_dir().join(format!("ferry-detect-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        let err = |f| detect(&root, f).err().unwrap().to_string();
        assert!(err(None).contains("neither an apt host"));
        fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        fs::write(root.join("usr/bin/apt-get"), "").unwrap();
        assert_eq!(detect(&root, None).unwrap().name(), "apt");
        assert!(err(Some("dnf")).contains("has no /usr/bin/dnf"));
        fs::write(root.join("usr/bin/dnf"), "").unwrap();
        assert!(err(None).contains("--family apt or --family dnf"));
        assert_eq!(detect(&root, Some("dnf")).unwrap().name(), "dnf");
        assert!(Host::open(&root, "Bad+Name", None).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
