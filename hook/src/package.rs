//! The package manifest (`/usr/lib/<name>/ferry-package.json`), written by
//! `ferry build` and read by the hook program of the same package, and the
//! upgrade record the hook keeps between the steps of one upgrade.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::confined::{self, Dir};

/// The hook protocol this program speaks. Version 1: `protocol`,
/// `prepare --incoming-version V --incoming-schema N`, `abort`; prepare
/// stops the agent. Version 2 adds `--incoming-protocol P` to prepare: when
/// the incoming package speaks 2 or later and no down-migration is needed,
/// prepare only quiesces the agent and the incoming `finish` stops it, so
/// the agent answers while the package manager unpacks. A newer package
/// asks an installed hook only what its protocol offers.
pub const HOOK_PROTOCOL: u32 = 2;
const FORMAT: &str = "ferry-package";

/// Everything the hook needs to know about its package and agent; nothing
/// in the hook is specific to one agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackageManifest {
    pub format: String,
    pub hook_protocol: u32,
    pub name: String,
    /// The semantic version, as the agent reports it (`ctl status`).
    pub version: String,
    /// The state schema this version's agent writes.
    pub schema: u32,
    /// The agent program (speaks docs/PROTOCOL.md). The hook runs it as
    /// `user` and `group`, never as root (docs/SECURITY.md).
    pub agent: String,
    /// The agent's system user and group (absent in manifests written
    /// before ferry ran the agent's program unprivileged).
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub group: String,
    pub unit: String,
    /// The socket unit that owns the agent's control socket, when the
    /// agent is socket-activated: it stays running through upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    pub state_dir: String,
    /// Top-level names under `state_dir` that the software the agent
    /// deployed writes, which runs on through an upgrade (`[state] live`):
    /// snapshotted before the agent stops, not after (docs/UPGRADES.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_live: Vec<String>,
    pub config_dir: String,
    pub runtime_dir: String,
    pub log_file: String,
    /// When this file exists, the hooks do not migrate the state (and say so
    /// in the log).
    pub skip_migration_file: String,
    /// ferry's own directory: snapshots and the upgrade record.
    pub work_dir: String,
    pub keep_snapshots: u32,
    pub quiesce_timeout_secs: u64,
    pub health_timeout_secs: u64,
}

impl PackageManifest {
    /// The manifest's path on the target for package `name`.
    pub fn path_for(name: &str) -> String {
        format!("/usr/lib/{name}/ferry-package.json")
    }

    pub fn read(path: &Path) -> Result<PackageManifest> {
        let text = confined::read_trusted(path)
            .and_then(|t| t.context("no such file"))
            .with_context(|| format!("cannot read the package manifest {}", path.display()))?;
        let m: PackageManifest = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a valid package manifest", path.display()))?;
        if m.format != FORMAT {
            bail!("{} is not a ferry package manifest", path.display());
        }
        Ok(m)
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        Path::new(&self.work_dir).join(SNAPSHOTS)
    }

    pub fn record_path(&self) -> PathBuf {
        Path::new(&self.work_dir).join(RECORD)
    }

    /// Where the package installs this program.
    pub fn hook_path(&self) -> String {
        hook_path_of(&self.name)
    }

    pub fn marker_path(&self) -> PathBuf {
        Path::new(&self.state_dir).join(MARKER)
    }
}

/// The file in the state directory that keeps the agent from starting
/// (exit 75) while an upgrade changes the state (docs/PROTOCOL.md).
pub const MARKER: &str = "upgrade-in-progress";
/// The upgrade record's file name in the work directory.
pub const RECORD: &str = "upgrade.json";
/// The snapshots' directory name in the work directory.
pub const SNAPSHOTS: &str = "snapshots";

/// Where one upgrade stands, kept in `<work_dir>/upgrade.json` from
/// `prepare` (run by the outgoing version) to `finish` (run by the incoming
/// one). Also written by the shell fallback, hence its simple shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// `preparing` (saved before `prepare` changes anything, updated after
    /// each step), `prepared`, or `failed` once `finish` rolled back.
    pub status: String,
    /// Written by the incoming package's scripts alone: the installed
    /// version predates ferry.
    #[serde(default)]
    pub fallback: bool,
    pub from_version: Option<String>,
    pub from_schema: Option<u32>,
    pub to_version: String,
    pub to_schema: u32,
    /// Whether the agent ran before the upgrade; unknown (null) in the deb
    /// fallback, then the unit's enablement decides.
    pub was_running: Option<bool>,
    /// The snapshot taken before anything changed.
    pub snapshot: Option<String>,
    /// Whether `prepare` migrated the state down.
    #[serde(default)]
    pub migrated_down: bool,
    /// `prepare` left the agent running, quiesced (protocol 2): the state
    /// may change until `finish` stops it, so the snapshot is retaken then.
    #[serde(default)]
    pub quiesced_only: bool,
    /// The cause, when `finish` failed.
    #[serde(default)]
    pub failure: Option<String>,
}

impl Record {
    /// The record of `work_dir` (root's alone), if an upgrade left one.
    pub fn load(path: &Path) -> Result<Option<Record>> {
        match confined::read_trusted(path).with_context(|| format!("reading {}", path.display()))? {
            Some(text) => serde_json::from_slice(&text)
                .map(Some)
                .with_context(|| format!("{} is not a valid upgrade record", path.display())),
            None => Ok(None),
        }
    }

    /// Written atomically: a crash leaves the old record or the new one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (dir, name) = confined::split(path)?;
        Dir::create_trusted(dir, 0o700)?.replace_file(
            name,
            &serde_json::to_vec_pretty(self)?,
            0o600,
        )
    }

    pub fn remove(path: &Path) -> Result<()> {
        let (dir, name) = confined::split(path)?;
        match Dir::open_trusted_if_present(dir)? {
            Some(dir) => dir.remove_file(name),
            None => Ok(()),
        }
    }
}

/// Compares two versions of the forms ferry produces (`1.2.0`,
/// `1.2.0-rc.1`, or `1.2.0~rc.1` as Debian writes it) by semantic-version
/// precedence (the `semver` crate): a pre-release before its release. Only
/// for the log's upgrade/downgrade/reinstall word: the schemas, not the
/// versions, decide what migrates. A version that is not semantic (a
/// package made without ferry) compares as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |v: &str| semver::Version::parse(&v.replacen('~', "-", 1));
    match (parse(a), parse(b)) {
        (Ok(a), Ok(b)) => a.cmp_precedence(&b),
        _ => a.cmp(b),
    }
}

/// Where the package named `name` installs this program.
pub fn hook_path_of(name: &str) -> String {
    format!("/usr/libexec/{name}/ferry-hook")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions() {
        assert_eq!(compare_versions("1.0.0", "1.1.0"), Less);
        assert_eq!(compare_versions("1.10.0", "1.9.0"), Greater);
        assert_eq!(compare_versions("1.0.0~rc.1", "1.0.0"), Less);
        assert_eq!(compare_versions("1.0.0", "1.0.0"), Equal);
    }
}
