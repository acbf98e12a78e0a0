//! End to end: real packages built by `ferry build`, installed, upgraded,
//! downgraded, refused, removed and purged with real dpkg/apt-get in a
//! booted lab host, with the reference agent holding a deployed tree, a
//! queue and files its recipes made. See docs/UPGRADES.md for what each step
//! proves. Root is required (the lab boots hosts with systemd-nspawn).

mod support;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::lab::{Host, HostKind};
use support::run;

const AGENT: &str = "roboconf-agent";
const STATE: &str = "/var/lib/roboconf-agent";
const SNAPSHOTS: &str = "/var/lib/ferry/roboconf-agent/snapshots";

/// Builds share target/release (the agent is rebuilt for each version and
/// schema), so every build in every test process holds this file lock.
struct BuildLock {
    _file: fs::File,
}

impl BuildLock {
    fn take() -> BuildLock {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ferry-build.lock");
        let file = fs::File::create(&path).expect("build lock");
        // SAFETY: a valid open file descriptor.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
        BuildLock { _file: file }
    }
}

/// `ferry build --version VERSION` of a copy of pkg/ whose state schema is
/// `schema` and whose quiesce timeout is short; built once per process.
fn deb(version: &str, schema: u32) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out = tmp.join(format!("hooks-{version}-s{schema}"));
    let deb = out.join(format!("{AGENT}_{version}-1_amd64.deb"));
    static BUILT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.contains(&deb) {
        return deb;
    }
    let _lock = BuildLock::take();
    let pkg = tmp.join(format!("hooks-pkg-{version}-s{schema}"));
    let _ = fs::remove_dir_all(&pkg);
    fs::create_dir_all(&pkg).unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    for entry in fs::read_dir(Path::new(repo).join("pkg")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), pkg.join(entry.file_name())).unwrap();
    }
    let descriptor = fs::read_to_string(pkg.join("ferry.toml"))
        .unwrap()
        .replace("\"../", &format!("\"{repo}/"))
        .replace("schema = 3", &format!("schema = {schema}"))
        .replace("quiesce_timeout_secs = 120", "quiesce_timeout_secs = 5");
    fs::write(pkg.join("ferry.toml"), descriptor).unwrap();
    run(Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "build",
            "--format",
            "deb",
            "--version",
            version,
            "--descriptor",
        ])
        .arg(pkg.join("ferry.toml"))
        .arg("--out")
        .arg(&out));
    assert!(deb.is_file(), "{} missing", deb.display());
    built.push(deb.clone());
    deb
}

fn agent(host: &Host, args: &str) -> String {
    host.sh_ok(&format!("{AGENT} {args}"))
}

fn status(host: &Host) -> Value {
    serde_json::from_str(&agent(host, "ctl status --json")).expect("status JSON")
}

/// The tree as (path, component, state), and the state file's header.
fn tree(host: &Host) -> Vec<(String, String, String)> {
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

fn header(host: &Host) -> Value {
    let text = host.read(&format!("{STATE}/state.json"));
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

fn starts(host: &Host) -> usize {
    host.sh("journalctl --no-pager -o cat -u roboconf-agent.service")
        .stdout
        .lines()
        .filter(|l| l.starts_with("Started "))
        .count()
}

fn install(host: &Host, deb: &Path, extra: &str) -> support::lab::Output {
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    host.copy_in(deb, &format!("/root/{name}"));
    host.sh(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y {extra} \
         -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /root/{name}"
    ))
}

fn version_running(host: &Host) -> String {
    status(host)["version"].as_str().unwrap().to_string()
}

/// A tree with a deployed and started application whose deploy recipe wrote
/// a file in its work directory, and a recipe that waits on a gate (busy).
fn deploy_tree(host: &Host) {
    host.sh_ok(&format!(
        "mkdir -p {STATE}/recipes/App {STATE}/recipes/Slow
         printf '#!/bin/sh\\necho deployed > made-by-recipe\\n' > {STATE}/recipes/App/deploy
         printf '#!/bin/sh\\nwhile [ ! -e {STATE}/gate ]; do sleep 0.2; done\\n' > {STATE}/recipes/Slow/deploy
         chmod 0755 {STATE}/recipes/App/deploy {STATE}/recipes/Slow/deploy"
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

/// Leaves one instruction in the queue: applied while quiesced, it waits for
/// the next start, which must keep it and run it.
fn queue_one(host: &Host, name: &str) {
    agent(host, "ctl quiesce --timeout 5");
    agent(
        host,
        &format!("ctl apply add --name {name} --component App --parent /vm"),
    );
    assert_eq!(status(host)["queue_length"], 1);
}

/// An upgrade keeps the tree, runs the queued instruction once after the
/// start, keeps the recipe's file, starts the agent exactly once.
fn assert_upgraded(host: &Host, before: &[(String, String, String)], queued: &str, version: &str) {
    let mut expected = before.to_vec();
    expected.push((format!("/vm/{queued}"), "App".into(), "NOT_DEPLOYED".into()));
    expected.sort();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while status(host)["queue_length"] != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut after = tree(host);
    after.sort();
    assert_eq!(after, expected, "tree after the upgrade to {version}");
    assert_eq!(version_running(host), version);
    assert_eq!(
        host.read(&format!("{STATE}/work/vm/app/made-by-recipe")),
        "deployed\n"
    );
    assert!(!host.path(&format!("{STATE}/upgrade-in-progress")).exists());
}

fn upgrade_step(host: &Host, deb: &Path, version: &str, schema: u32, extra: &str) {
    static STEP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STEP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let queued = format!("q{n}-{}", version.replace('.', ""));
    queue_one(host, &queued);
    let before = tree(host);
    let started = starts(host);
    let out = install(host, deb, extra);
    assert!(out.success(), "installing {version}: {out}");
    assert_upgraded(host, &before, &queued, version);
    assert_eq!(starts(host), started + 1, "started exactly once");
    let h = header(host);
    assert_eq!(h["schema"], schema, "{h}");
    assert_eq!(h["written_by"], version, "{h}");
}

#[test]
fn debian_install_upgrade_downgrade_busy_remove_purge() {
    let v100 = deb("1.0.0", 2);
    let v110 = deb("1.1.0", 2);
    let v120 = deb("1.2.0", 3);
    let mut host = Host::new(HostKind::Debian);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));

    // 1. Fresh install: enabled, started, healthy, schema 2.
    let out = install(&host, &v100, "");
    assert!(out.success(), "fresh install: {out}");
    assert_eq!(version_running(&host), "1.0.0");
    deploy_tree(&host);
    assert_eq!(header(&host)["schema"], 2);

    // 2. Upgrade, same schema: tree, queue, recipe files kept; one start.
    upgrade_step(&host, &v110, "1.1.0", 2, "");
    // 3. Upgrade with up-migration 2 -> 3 by the new agent.
    upgrade_step(&host, &v120, "1.2.0", 3, "");
    let snapshots = host.sh_ok(&format!("ls {SNAPSHOTS}"));
    assert!(
        snapshots.contains("-1.1.0"),
        "snapshot before 1.1.0 -> 1.2.0: {snapshots}"
    );
    // 4. Downgrade with down-migration 3 -> 2 by the outgoing (1.2.0) agent.
    upgrade_step(&host, &v110, "1.1.0", 2, "--allow-downgrades");
    // 5. Reinstall: same version, same schema.
    upgrade_step(&host, &v110, "1.1.0", 2, "--reinstall");

    // 8. Busy agent: the upgrade is refused naming what runs; the old agent
    // keeps running with its state; once idle the same upgrade passes.
    agent(
        &host,
        "ctl apply add --name slow --component Slow --parent /vm",
    );
    agent(&host, "ctl apply deploy /vm/slow");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let state_before = host.read(&format!("{STATE}/state.json"));
    let out = install(&host, &v120, "");
    assert!(
        !out.success(),
        "a busy agent must refuse the upgrade: {out}"
    );
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("busy") && said.contains("/vm/slow") && said.contains("deploy"),
        "the refusal names what runs: {said}"
    );
    assert_eq!(
        host.sh_ok("dpkg-query -W -f '${Version} ${db:Status-Status}' roboconf-agent"),
        "1.1.0-1 installed"
    );
    assert_eq!(version_running(&host), "1.1.0");
    assert_eq!(host.read(&format!("{STATE}/state.json")), state_before);
    host.sh_ok(&format!("touch {STATE}/gate"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while status(&host)["busy"] == true && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    upgrade_step(&host, &v120, "1.2.0", 3, "");

    // 6. Remove, then install again: the state is kept and the agent
    // comes back with its tree.
    let before = tree(&host);
    host.sh_ok("apt-get remove -y roboconf-agent");
    assert!(!host
        .sh("systemctl --quiet is-active roboconf-agent")
        .success());
    assert!(host.path(&format!("{STATE}/state.json")).exists());
    assert!(install(&host, &v120, "").success());
    assert_eq!(tree(&host), before);

    // 7. Purge: exactly what the descriptor lists goes (and ferry's own
    // snapshots); the configuration conffile is dpkg's to remove.
    host.sh_ok("apt-get purge -y roboconf-agent");
    for gone in [
        STATE,
        "/var/log/roboconf-agent",
        "/etc/roboconf-agent/credentials",
        "/var/lib/ferry/roboconf-agent",
    ] {
        assert!(!host.path(gone).exists(), "{gone} survived the purge");
    }
    assert!(
        host.sh("getent passwd roboconf-agent").success(),
        "the user stays"
    );
    host.poweroff();
}
