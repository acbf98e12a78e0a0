//! The system `ferry channel` configures: its root, the agent's package,
//! the backend of its updater; and running a command on it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::backend::{detect, Backend};
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
            backend: detect(root, family)?,
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
