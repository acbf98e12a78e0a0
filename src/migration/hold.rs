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

    /// The package manager that moves the package, for messages.
    pub fn how_installed(&self) -> &'static str {
        match self {
            Hold::Apt => "apt-get",
            Hold::Dnf => "dnf",
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

    /// The installed full version of `package` as ferry's pin names it
    /// (`1.1.0-1`: apt's version, or rpm's VERSION-RELEASE).
    pub fn installed(&self, package: &str) -> Result<String> {
        match self {
            Hold::Apt => output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package])),
            Hold::Dnf => {
                output(Command::new("rpm").args(["-q", "--qf", "%{VERSION}-%{RELEASE}", package]))
            }
        }
        .map(|v| v.trim().to_string())
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
                let full = self.installed(package)?;
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
        only_file(dir)
    }
}

fn only_file(dir: &Path) -> Result<PathBuf> {
    match files(dir)?.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!(
            "{} holds {} package files after the download, not one",
            dir.display(),
            other.len()
        ),
    }
}

impl Hold {
    /// Downloads the package file of `version` (as the agent reports it,
    /// `1.1.0`, or the package's full version, `1.1.0-1`) from the
    /// configured repositories into `dir`: the file.
    pub fn download(&self, package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
        clear(dir)?;
        match self {
            Hold::Apt => {
                let full = apt_version(package, version)?;
                output(
                    Command::new("apt-get")
                        .current_dir(dir)
                        .args(["download", &format!("{package}={full}")]),
                )?;
            }
            // The hold (versionlock) hides every other version from dnf:
            // this download is the migration's own.
            Hold::Dnf => output(
                Command::new("dnf")
                    .args(["-q", "--disableplugin=versionlock", "download", "--destdir"])
                    .arg(dir)
                    .arg(format!("{package}-{version}")),
            )
            .map(drop)
            .with_context(|| format!("no repository offers {package} {version} (dnf download)"))?,
        }
        only_file(dir)
    }

    /// Installs the package file `file` (a newer, older or the same
    /// version) through apt or dnf, past the migration's own hold, so that
    /// the package's scripts (ferry's hooks) carry the agent's state.
    pub fn install(&self, file: &Path, backward: bool) -> Result<String> {
        match self {
            Hold::Apt => output(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args([
                        "install",
                        "-y",
                        "--allow-downgrades",
                        "--allow-change-held-packages",
                        // A perform resumed after a kill may find the apt
                        // its first run started still working.
                        "-o",
                        "DPkg::Lock::Timeout=300",
                        "-o",
                        "Dpkg::Options::=--force-confdef",
                        "-o",
                        "Dpkg::Options::=--force-confold",
                    ])
                    .arg(file),
            ),
            Hold::Dnf => output(
                Command::new("dnf")
                    .args(["-y", "--disableplugin=versionlock"])
                    .arg(if backward { "downgrade" } else { "install" })
                    .arg(file),
            ),
        }
    }

    /// After the package moved, the migration's hold is taken again: apt
    /// forgets a hold when a package file is installed over it, and a dnf
    /// versionlock names the version it locked.
    pub fn renew(&self, package: &str) -> Result<()> {
        match self {
            Hold::Apt => self.hold(package),
            Hold::Dnf => {
                self.release(package)?;
                self.hold(package)
            }
        }
    }
}

/// apt's full version of `package` for `version`: itself, or the one
/// whose upstream part it is (`1.1.0` → `1.1.0-1`), from `apt-cache madison`.
fn apt_version(package: &str, version: &str) -> Result<String> {
    let text = output(Command::new("apt-cache").args(["madison", package]))?;
    let known: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split('|').nth(1))
        .map(str::trim)
        .collect();
    known
        .iter()
        .find(|v| **v == version || v.rsplit_once('-').map(|(u, _)| u) == Some(version))
        .map(|v| v.to_string())
        .with_context(|| {
            format!(
                "no repository offers {package} {version} (apt-cache madison knows: {}); \
                 run `apt-get update`, or pick a version the repository keeps",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
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
