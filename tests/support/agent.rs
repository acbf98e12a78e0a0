//! The reference agent inside a lab host, seen through its own client
//! (`roboconf-agent ctl`) and its state file.

use super::lab::Host;
use serde_json::Value;

pub const AGENT: &str = "roboconf-agent";
pub const STATE: &str = "/var/lib/roboconf-agent";

/// `roboconf-agent ARGS` in the host; its output.
pub fn agent(host: &Host, args: &str) -> String {
    host.sh_ok(&format!("{AGENT} {args}"))
}

pub fn status(host: &Host) -> Value {
    serde_json::from_str(&agent(host, "ctl status --json")).expect("status JSON")
}

/// The instance tree as (path, component, state).
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

/// The state file's header: schema, written_by, checksum.
pub fn header(host: &Host) -> Value {
    let text = host.read(&format!("{STATE}/state.json"));
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

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
