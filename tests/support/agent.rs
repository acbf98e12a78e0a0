//! The reference agent inside a lab host, seen through its own client
//! (`roboconf-agent ctl`) and its state file; its packages installed with
//! the host's package manager.

use super::lab::{Host, Output};
use serde_json::Value;
use std::path::Path;

pub const AGENT: &str = "roboconf-agent";
pub const STATE: &str = "/var/lib/roboconf-agent";
/// Where ferry-hook keeps the package's snapshots.
pub const SNAPSHOTS: &str = "/var/lib/ferry/roboconf-agent/snapshots";
/// The record of an upgrade under way (or failed).
pub const RECORD: &str = "/var/lib/ferry/roboconf-agent/upgrade.json";
/// The upgrade marker in the state directory.
pub const MARKER: &str = "/var/lib/roboconf-agent/upgrade-in-progress";

/// Copies a package file into the host's /root; its path there.
pub fn copy_package(host: &Host, package: &Path) -> String {
    let name = package.file_name().unwrap().to_string_lossy().into_owned();
    let guest = format!("/root/{name}");
    host.copy_in(package, &guest);
    guest
}

/// The command that installs the package file `guest` of the host with its
/// package manager: apt-get with `extra` options (unattended-upgrades'
/// conffile policy), or dnf with `extra` as its command (install,
/// downgrade, reinstall). A command, not a script: `timeout` may run it.
pub fn install_command(guest: &str, extra: &str) -> String {
    if guest.ends_with(".rpm") {
        format!("dnf -y {extra} {guest}")
    } else {
        format!(
            "env DEBIAN_FRONTEND=noninteractive apt-get install -y {extra} \
             -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {guest}"
        )
    }
}

/// Installs a package file with the host's package manager (see
/// `install_command`).
pub fn install(host: &Host, package: &Path, extra: &str) -> Output {
    let guest = copy_package(host, package);
    host.sh(&install_command(&guest, extra))
}

/// A tree with a deployed and started application whose deploy recipe wrote
/// a file in its work directory (`work/vm/app/made-by-recipe`), and a
/// recipe that waits on a gate (`Slow`, busy until `STATE/gate` exists).
pub fn deploy_tree(host: &Host) {
    host.sh_ok(&format!(
        "mkdir -p {STATE}/recipes/App {STATE}/recipes/Slow
         printf '#!/bin/sh\\necho deployed > made-by-recipe\\n' > {STATE}/recipes/App/deploy
         printf '#!/bin/sh\\nexec \"$ROBOCONF_AGENT\" spawn start --name \"$ROBOCONF_INSTANCE_NAME\" -- sleep 86401\\n' > {STATE}/recipes/App/start
         printf '#!/bin/sh\\nwhile [ ! -e {STATE}/gate ]; do sleep 0.2; done\\n' > {STATE}/recipes/Slow/deploy
         chmod 0755 {STATE}/recipes/App/deploy {STATE}/recipes/App/start {STATE}/recipes/Slow/deploy"
    ));
    for step in [
        "add --name vm --component VM",
        "add --name app --component App --parent /vm",
        "deploy /vm",
        "deploy /vm/app",
        "start /vm",
        "start /vm/app",
    ] {
        agent(host, &format!("ctl apply --wait 30 {step}"));
    }
}

/// `roboconf-agent ARGS` in the host; its output. A failure panics at the
/// test's line with what systemd says about the agent and its journal's
/// tail: an agent that does not answer needs both to be understood.
#[track_caller]
pub fn agent(host: &Host, args: &str) -> String {
    let out = host.sh(&format!("{AGENT} {args}"));
    assert!(
        out.success(),
        "in the {} host, `{AGENT} {args}` failed: {out}\n{}\n{}",
        host.kind().name(),
        host.sh("systemctl status --no-pager roboconf-agent").stdout,
        host.sh("journalctl --no-pager -o short-precise -n 40 -u roboconf-agent.service")
            .stdout
    );
    out.stdout
}

#[track_caller]
pub fn status(host: &Host) -> Value {
    serde_json::from_str(&agent(host, "ctl status --json")).expect("status JSON")
}

/// The instance tree as (path, component, state).
#[track_caller]
pub fn tree(host: &Host) -> Vec<(String, String, String)> {
    let s = status(host);
    s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap().to_string(),
                i["component"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The tree sorted by path, for comparisons that must not depend on the
/// order status lists it in.
#[track_caller]
pub fn sorted_tree(host: &Host) -> Vec<(String, String, String)> {
    let mut t = tree(host);
    t.sort();
    t
}

/// The log every ferry-hook step appends to.
pub const UPGRADE_LOG: &str = "/var/log/roboconf-agent/upgrades.log";

/// The upgrade log's length now, to read what comes after with `log_since`.
pub fn log_len(host: &Host) -> usize {
    std::fs::metadata(host.path(UPGRADE_LOG)).map_or(0, |m| m.len() as usize)
}

/// What the upgrade log gained since it was `from` bytes long.
pub fn log_since(host: &Host, from: usize) -> String {
    host.read(UPGRADE_LOG)[from..].to_string()
}

/// The state file's header: schema, written_by, checksum.
pub fn header(host: &Host) -> Value {
    let text = host.read(&format!("{STATE}/state.json"));
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

#[track_caller]
pub fn version_running(host: &Host) -> String {
    status(host)["version"].as_str().unwrap().to_string()
}

/// Waits until the agent answers on its socket again.
pub fn wait_answering(host: &Host) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !host.sh(&format!("{AGENT} ctl status --json")).success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent does not answer"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
