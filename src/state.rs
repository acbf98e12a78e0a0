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
    let mut text = String::new();
    for listed in snapshot::list(&installed.snapshots)? {
        text.push_str(&match &listed.verified {
            Ok(m) => format!(
                "{}\tversion {}\tschema {}\t{} entries\tok\n",
                listed.snapshot.name,
                m.version,
                m.schema.map_or("?".into(), |s| s.to_string()),
                m.entries.len()
            ),
            Err(e) => format!("{}\tDAMAGED: {e}\n", listed.snapshot.name),
        });
    }
    if text.is_empty() {
        text = format!("no snapshots in {}\n", installed.snapshots.display());
    }
    Ok(text)
}

/// Restores snapshot `name` over the state directory; refuses a damaged
/// snapshot, and refuses while the agent's unit runs.
pub fn restore(installed: &Installed, name: &str, unit_active: bool) -> Result<()> {
    if unit_active {
        bail!(
            "{} is running: stop it first (systemctl stop {}), then restore",
            installed.unit,
            installed.unit
        );
    }
    snapshot::restore(&installed.snapshots.join(name), &installed.state_dir)?;
    Ok(())
}
