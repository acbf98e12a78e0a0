//! The reference agent inside a lab host, seen through its own client
//! (`roboconf-agent ctl`) and its state file.

use super::lab::Host;
use serde_json::Value;

pub const AGENT: &str = "roboconf-agent";
pub const STATE: &str = "/var/lib/roboconf-agent";

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
