//! Holding the package from the automatic updater (apt: `apt-mark hold`,
//! which unattended-upgrades honours; dnf: `dnf versionlock`, which
//! dnf-automatic honours), and keeping the installed version's package file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::channel::backend::detect;
use crate::channel::dnf::versionlocks;
use crate::channel::host::output;

/// The package manager of this VM.
pub enum Hold {
    Apt,
    Dnf,
}

impl Hold {
    pub fn detect(family: Option<&str>) -> Result<Hold> {
        match detect(Path::new("/"), family)?.name() {
            "apt" => Ok(Hold::Apt),
            "dnf" => Ok(Hold::Dnf),
            other => bail!("ferry migration cannot hold a package with {other} yet"),
        }
    }

    /// How the hold is made, for messages.
    pub fn how(&self) -> &'static str {
        match self {
            Hold::Apt => "apt-mark hold",
            Hold::Dnf => "dnf versionlock",
        }
    }

    pub fn is_held(&self, package: &str) -> Result<bool> {
        Ok(match self {
            Hold::Apt => output(Command::new("apt-mark").arg("showhold"))?
                .lines()
                .any(|l| l.trim() == package),
            Hold::Dnf => output(Command::new("dnf").args(["-q", "versionlock", "list"]))?
                .lines()
                .any(|l| versionlocks(l, package)),
        })
    }

    pub fn hold(&self, package: &str) -> Result<()> {
        match self {
            Hold::Apt => output(Command::new("apt-mark").args(["hold", package])),
            Hold::Dnf => output(Command::new("dnf").args(["-q", "versionlock", "add", package]))
                .context("dnf versionlock (needs the versionlock plugin: python3-dnf-plugin-versionlock or dnf-plugins-core)"),
        }
        .map(drop)
    }

    pub fn release(&self, package: &str) -> Result<()> {
        match self {
            Hold::Apt => output(Command::new("apt-mark").args(["unhold", package])),
            Hold::Dnf => output(Command::new("dnf").args(["-q", "versionlock", "delete", package])),
        }
        .map(drop)
    }

    /// Keeps the package file of `version` (as the agent reports it) in
    /// `dir`: downloaded from the configured repositories, or (apt) copied
    /// from apt's cache. The file kept.
    pub fn keep(&self, package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
        clear(dir)?;
        match self {
            Hold::Apt => {
                let full =
                    output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))?;
                let download = output(
                    Command::new("apt-get")
                        .current_dir(dir)
                        .args(["download", &format!("{package}={full}")]),
                );
                if let Err(e) = download {
                    let cached = cached_deb(package, &full).with_context(|| {
                        format!("apt-get download failed ({e:#}), and apt's cache has no copy")
                    })?;
                    let to = dir.join(cached.file_name().unwrap_or_default());
                    crate::fsutil::copy_atomic(&cached, &to)?;
                }
            }
            Hold::Dnf => {
                let full = output(Command::new("rpm").args([
                    "-q",
                    "--qf",
                    "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}",
                    package,
                ]))?;
                output(
                    Command::new("dnf")
                        .args(["-q", "download", "--destdir"])
                        .arg(dir)
                        .arg(&full),
                )
                .with_context(|| format!("dnf download {full} (of version {version})"))?;
            }
        }
        let kept = files(dir)?;
        match kept.as_slice() {
            [one] => Ok(one.clone()),
            other => bail!(
                "{} holds {} package files after the download, not one",
                dir.display(),
                other.len()
            ),
        }
    }
}

/// The .deb of `package` at `full` in apt's cache (a `:` of an epoch is
/// `%3a` in its name).
fn cached_deb(package: &str, full: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_{}_", full.replace(':', "%3a"));
    fs::read_dir("/var/cache/apt/archives")
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .map(|e| e.path())
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// Removes what an interrupted keep left in `dir`.
fn clear(dir: &Path) -> Result<()> {
    for f in files(dir)? {
        fs::remove_file(&f).with_context(|| format!("cannot remove {}", f.display()))?;
    }
    Ok(())
}
