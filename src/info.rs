//! `ferry info`: one VM's agent in one answer, read only: the installed
//! version and state schema (from the package's manifest), whether its unit
//! runs and the agent answers, an upgrade left unfinished, the last line of
//! the upgrade log, the snapshots, and the channel's status. The Ansible
//! module `ferry_info` (ansible/) returns exactly this.
//!
//! The agent is asked as its own user, the way the upgrade hook asks it
//! (`ferry_hook::system::Agent`); files in directories that user owns are
//! read through the hook's confined handles (docs/SECURITY.md).

use std::path::Path;

use anyhow::Result;
use ferry_hook::package::{PackageManifest, Record};
use ferry_hook::snapshot;
use ferry_hook::system::{Agent, Systemd};
use serde::Serialize;
use serde_json::Value;

use crate::channel::{self, Host, Status};

/// What `ferry info` reports.
#[derive(Debug, Serialize)]
pub struct Info {
    pub package: String,
    /// Whether a ferry package of that name is installed (its manifest).
    pub installed: bool,
    /// The installed package's version, as the agent reports it.
    pub version: Option<String>,
    /// The state schema the installed version writes.
    pub schema: Option<u32>,
    pub unit: Option<String>,
    /// systemd's ActiveState of the unit (empty without systemd).
    pub active_state: String,
    /// The unit is active and the agent answers `status` as the installed
    /// version.
    pub healthy: bool,
    /// Why it is (or is not) healthy, in words.
    pub health: String,
    /// The agent's own `ctl status --json`, when it answered.
    pub agent: Option<Value>,
    /// An upgrade the hook has not finished (or one that failed), if any.
    pub upgrade_record: Option<Record>,
    /// The last line of the hook's upgrade log.
    pub last_upgrade: Option<String>,
    /// Snapshot names, oldest first (`ferry state list` verifies them).
    pub snapshots: Vec<String>,
    /// `ferry channel status`, when the host's package manager is known
    /// (and it was asked for: `--no-channel` leaves it out).
    pub channel: Option<Status>,
    /// Why the channel's status could not be read.
    pub channel_error: Option<String>,
}

/// Gathers the info of `package` under `root`; the agent is asked only on
/// the running system (`root` is `/`), the channel's status only with
/// `with_channel`.
pub fn info(root: &Path, package: &str, family: Option<&str>, with_channel: bool) -> Result<Info> {
    // The channel's status (apt's or dnf's metadata, the repository's
    // signature checked) is most of the time `info` takes: read beside the
    // agent's health rather than before it.
    std::thread::scope(|scope| {
        let channel = with_channel.then(|| {
            scope.spawn(|| Host::open(root, package, family).and_then(|h| channel::status(&h)))
        });
        let mut info = gather(root, package)?;
        (info.channel, info.channel_error) = match channel.map(|t| t.join()) {
            None => (None, None),
            Some(Ok(Ok(s))) => (Some(s), None),
            Some(Ok(Err(e))) => (None, Some(format!("{e:#}"))),
            Some(Err(_)) => (
                None,
                Some("reading the channel's status failed (a panic)".into()),
            ),
        };
        Ok(info)
    })
}

/// Everything but the channel's status.
fn gather(root: &Path, package: &str) -> Result<Info> {
    let manifest_path = root.join(PackageManifest::path_for(package).trim_start_matches('/'));
    let manifest = PackageManifest::read(&manifest_path).ok();
    let mut info = Info {
        package: package.to_string(),
        installed: manifest.is_some(),
        version: manifest.as_ref().map(|m| m.version.clone()),
        schema: manifest.as_ref().map(|m| m.schema),
        unit: manifest.as_ref().map(|m| m.unit.clone()),
        active_state: String::new(),
        healthy: false,
        health: format!("{package} is not installed by a ferry package"),
        agent: None,
        upgrade_record: None,
        last_upgrade: channel::read_upgrade_log(root, package)
            .and_then(|log| log.lines().last().map(String::from)),
        snapshots: Vec::new(),
        channel: None,
        channel_error: None,
    };
    if let Some(m) = &manifest {
        let under_root = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        info.upgrade_record = Record::load(&under_root(&m.record_path()))?;
        info.snapshots = snapshot::names(&under_root(&m.snapshots_dir())).unwrap_or_default();
        if root == Path::new("/") {
            health(m, &mut info);
        } else {
            info.health = "not asked: --root is not the running system".into();
        }
    }
    Ok(info)
}

/// Fills in the unit's state and whether the agent answers as the
/// installed version.
fn health(m: &PackageManifest, info: &mut Info) {
    if !Systemd::running() {
        info.health = "not asked: systemd is not running".into();
        return;
    }
    let unit = Systemd::new(&m.unit);
    info.active_state = unit.active_state();
    // What `systemctl is-active` counts as active, without asking again.
    if !matches!(
        info.active_state.as_str(),
        "active" | "reloading" | "refreshing"
    ) {
        info.health = format!("{} is {}", m.unit, info.active_state);
        return;
    }
    match Agent::new(m).and_then(|a| a.status()) {
        Ok(status) => {
            let answers_as = status["version"].as_str().unwrap_or("?").to_string();
            info.healthy = answers_as == m.version;
            info.health = if info.healthy {
                format!("{} is active and the agent answers as {answers_as}", m.unit)
            } else {
                format!(
                    "the agent answers as {answers_as}, but {} is installed",
                    m.version
                )
            };
            info.agent = Some(status);
        }
        Err(e) => {
            info.health = format!("{} is active, but the agent does not answer: {e:#}", m.unit)
        }
    }
}

impl std::fmt::Display for Info {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        writeln!(f, "package:        {}", self.package)?;
        writeln!(f, "version:        {}", or_none(&self.version))?;
        writeln!(
            f,
            "state schema:   {}",
            self.schema.map_or("none".into(), |s| s.to_string())
        )?;
        writeln!(
            f,
            "health:         {} ({})",
            if self.healthy { "healthy" } else { "UNHEALTHY" },
            self.health
        )?;
        if let Some(r) = &self.upgrade_record {
            writeln!(
                f,
                "upgrade:        {} -> {}: {}",
                r.from_version.as_deref().unwrap_or("(none)"),
                r.to_version,
                r.status
            )?;
        }
        writeln!(f, "last upgrade:   {}", or_none(&self.last_upgrade))?;
        writeln!(f, "snapshots:      {}", self.snapshots.join(", "))?;
        match (&self.channel, &self.channel_error) {
            (Some(s), _) => write!(f, "{s}"),
            (None, Some(e)) => writeln!(f, "channel:        unknown: {e}"),
            (None, None) => Ok(()),
        }
    }
}
