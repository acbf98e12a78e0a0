//! The system `ferry channel` configures: its root, the agent's package,
//! the backend of its updater; and running a command on it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::backend::{detect, Backend, BACKENDS};
use super::files::{self, Record};

/// The system being configured.
pub struct Host {
    pub root: PathBuf,
    pub package: String,
    /// The updater backend that runs on it (apt, dnf, …).
    pub backend: &'static dyn Backend,
}

impl Host {
    pub fn open(root: &Path, package: &str, family: Option<&str>) -> Result<Host> {
        if let Some(problem) = crate::names::package_name_problem(package) {
            bail!("--package: {problem}")
        }
        // apt ignores apt.conf.d files whose names hold a `+`, and ferry
        // names its files there after the package.
        if package.contains('+') {
            bail!(
                "--package {package:?}: ferry channel cannot follow a package whose name holds `+` \
                 (apt ignores apt.conf.d files named with it)"
            )
        }
        Ok(Host {
            root: root.to_path_buf(),
            package: package.to_string(),
            backend: detect_or_recorded(root, package, family)?,
        })
    }

    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    pub fn path(&self, p: &str) -> PathBuf {
        files::under(&self.root, p)
    }

    pub fn record(&self) -> Result<Option<Record>> {
        files::load_record(&self.root, &self.package)
    }
}

/// The backend `family` names; else the only one present; else, on a host
/// that has several (an RPM system with apt installed, a Debian one with
/// dnf), the one `ferry channel enable` was told to use for this package
/// and kept in its record, so that the commands after `enable` (and
/// `ferry info`, the Ansible modules) need no `--family` again.
fn detect_or_recorded(
    root: &Path,
    package: &str,
    family: Option<&str>,
) -> Result<&'static dyn Backend> {
    let detected = detect(root, family);
    if family.is_some() || detected.is_ok() {
        return detected;
    }
    match files::load_record(root, package) {
        Ok(Some(rec))
            if BACKENDS
                .iter()
                .any(|b| b.name() == rec.family && b.present(root)) =>
        {
            detect(root, Some(&rec.family))
        }
        _ => detected,
    }
}

/// Runs a command; its stdout, or an error naming it with its output.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A host with both apt and dnf needs `--family` until `enable` has
    /// recorded one for the package; then the record decides.
    #[test]
    fn an_ambiguous_host_takes_the_family_enable_recorded() {
        let root = std::env::temp_dir().join(format!("ferry-host-family-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        fs::write(root.join("usr/bin/apt-get"), "").unwrap();
        fs::write(root.join("usr/bin/dnf"), "").unwrap();
        let pkg = "roboconf-agent";
        let err = Host::open(&root, pkg, None).err().unwrap().to_string();
        assert!(err.contains("--family apt or --family dnf"), "{err}");
        let rec = Record {
            package: pkg.into(),
            family: "dnf".into(),
            ..Record::default()
        };
        files::save_record(&root, &rec).unwrap();
        assert_eq!(Host::open(&root, pkg, None).unwrap().backend.name(), "dnf");
        // The command line still wins, and another package has no record.
        let apt = Host::open(&root, pkg, Some("apt")).unwrap();
        assert_eq!(apt.backend.name(), "apt");
        assert!(Host::open(&root, "other-agent", None).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
