//! `ferry state list|restore`: the snapshots the upgrade hook takes of an
//! installed agent's state directory, read with the hook's own format
//! (the `ferry-hook` library), so both always agree on what is damaged.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ferry_hook::package::PackageManifest;
use ferry_hook::snapshot;

/// Where an installed package keeps its snapshots and state.
pub struct Installed {
    pub snapshots: PathBuf,
    pub state_dir: PathBuf,
    pub unit: String,
}

impl Installed {
    /// Reads the installed package's manifest under `root` (`/` on the VM).
    pub fn find(root: &Path, package: &str) -> Result<Installed> {
        let path = root.join(PackageManifest::path_for(package).trim_start_matches('/'));
        let m = PackageManifest::read(&path)
            .with_context(|| format!("is {package} installed here (by a ferry package)?"))?;
        let under_root = |p: &str| root.join(p.trim_start_matches('/'));
        Ok(Installed {
            snapshots: under_root(&m.snapshots_dir().to_string_lossy()),
            state_dir: under_root(&m.state_dir),
            unit: m.unit,
        })
    }
}

/// One line per snapshot, oldest first; damaged ones say why.
pub fn list(installed: &Installed) -> Result<String> {
    snapshot::listing(&installed.snapshots)
}

/// One snapshot as `ferry state list --json` shows it.
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    pub name: String,
    pub version: Option<String>,
    pub schema: Option<u32>,
    pub entries: Option<usize>,
    /// Why the snapshot is damaged; null when it verified.
    pub damaged: Option<String>,
}

/// The snapshots, oldest first, each verified.
pub fn list_verified(installed: &Installed) -> Result<Vec<Listed>> {
    Ok(snapshot::list(&installed.snapshots)?
        .into_iter()
        .map(|l| match l.verified {
            Ok(m) => Listed {
                name: l.snapshot.name,
                version: Some(m.version),
                schema: m.schema,
                entries: Some(m.entries.len()),
                damaged: None,
            },
            Err(e) => Listed {
                name: l.snapshot.name,
                version: None,
                schema: None,
                entries: None,
                damaged: Some(e),
            },
        })
        .collect())
}

/// Restores snapshot `name` over the state directory; refuses a damaged
/// snapshot, and refuses while the agent's unit runs.
pub fn restore(installed: &Installed, name: &str, root: &Path) -> Result<()> {
    if unit_active(installed, root) {
        bail!(
            "{} is running: stop it first (systemctl stop {}), then restore",
            installed.unit,
            installed.unit
        );
    }
    snapshot::restore(&installed.snapshots.join(name), &installed.state_dir)?;
    Ok(())
}

/// Whether the agent's unit runs: asked of systemd on the live system
/// (`root` is `/`); an alternate root has no running unit.
fn unit_active(installed: &Installed, root: &Path) -> bool {
    root == Path::new("/")
        && std::process::Command::new("systemctl")
            .args(["--quiet", "is-active", &installed.unit])
            .status()
            .is_ok_and(|s| s.success())
}
