//! End to end: real packages built by `ferry build` (deb and rpm from one
//! build), installed, upgraded, downgraded, refused, failed and recovered,
//! removed and purged with real dpkg/apt-get and dnf/rpm in booted lab
//! hosts, with the reference agent holding a deployed tree, a queue and
//! files its recipes made. Every path asserts the four things
//! (support::upgrade::assert_four). tests/interrupted.rs holds the paths
//! that need a host of their own (package managers killed, versions
//! without ferry, the escape hatch). See docs/UPGRADES.md for what each
//! step proves. Root is required (the lab boots hosts with systemd-nspawn).

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::agent::{
    deploy_tree, header, install, log_len, log_since, sorted_tree, status, version_running,
    wait_answering, MARKER, RECORD, SNAPSHOTS, STATE,
};
use support::client::socket_since;
use support::lab::{Host, HostKind};
use support::probe::{self, Variant};
use support::upgrade::{
    assert_four, before, busy_refusal_then_upgrade, installed, instance_process, is_active,
    recorded_snapshot, starts, upgrade_step, Before, FIND_INSTANCE_PROCESS,
};

/// `systemctl restart` of the agent leaves the instance's process alone
/// (same PID), and the agent comes back with its tree.
fn assert_process_survives_restart(host: &Host) {
    let process = instance_process(host);
    let before = sorted_tree(host);
    host.sh_ok("systemctl restart roboconf-agent");
    wait_answering(host);
    assert_eq!(sorted_tree(host), before);
    assert_eq!(instance_process(host), process, "same PID after a restart");
}

/// Step 1, a fresh install of `package` (1.0.0, schema 2): the agent starts
/// exactly once, answers with an empty tree on a new state of its schema.
/// Then a tree is deployed, whose process survives a restart.
fn fresh_install(host: &Host, package: &Path, extra: &str) {
    let out = install(host, package, extra);
    assert!(out.success(), "fresh install: {out}");
    assert_eq!(version_running(host), "1.0.0");
    assert_eq!(starts(host), 1, "started exactly once");
    assert!(socket_since(host).is_some(), "the socket unit listens");
    assert!(
        host.sh_ok("journalctl --no-pager -o cat -u roboconf-agent.service")
            .contains("control socket /run/roboconf-agent/control.sock (passed by systemd)"),
        "the agent took the socket systemd passed"
    );
    assert_eq!(status(host)["instances"], serde_json::json!([]));
    let h = header(host);
    assert_eq!(
        (h["schema"].as_u64(), h["written_by"].as_str()),
        (Some(2), Some("1.0.0"))
    );
    assert!(host
        .sh("systemctl --quiet is-enabled roboconf-agent")
        .success());
    deploy_tree(host);
    assert_process_survives_restart(host);
}

/// Whether the upgrade logged since `from` left the agent running through
/// the unpack (prepare quiesced it, finish stopped it) or stopped it in
/// prepare, as `running` says.
fn assert_prepare_left_running(host: &Host, from: usize, running: bool) {
    let log = log_since(host, from);
    let left_running = log.contains("prepare: prepared: the agent answers, quiesced")
        && log.contains("finish: stopping the outgoing agent");
    let stopped = log.contains("prepare: stopping the agent for upgrade")
        && log.contains("prepare: prepared: the agent is stopped");
    assert!(
        if running {
            left_running && !stopped
        } else {
            stopped && !left_running
        },
        "prepare left the agent running: {running}; the log: {log}"
    );
    // Left running, the live data (pkg/ferry.toml's `[state] live`) is
    // snapshotted before the stop and only moved after it.
    if running {
        let before_stop = log.find("(before the agent stops;");
        let stop = log.find("finish: stopping the outgoing agent");
        assert!(
            before_stop.is_some()
                && before_stop < stop
                && log.contains("the live data (work, spawn) moved from"),
            "the live data was not snapshotted before the stop: {log}"
        );
    }
}

const CONFFILE: &str = "/etc/roboconf-agent/agent.toml";
/// A file of the state that no upgrade step changes (a recipe), by its
/// path in the state directory: the snapshot retaken once the agent stopped
/// keeps it from the one taken while it ran.
const UNCHANGED_FILE: &str = "recipes/App/deploy";

/// The retaken snapshot links only files whose inode last changed more
/// than 2 s before the first snapshot (ferry_hook::snapshot::reuse); the
/// files case 9's restore just wrote are younger. Waiting makes them old
/// enough for case 13's damaged recipe file to be linked.
fn let_restored_files_age() {
    std::thread::sleep(std::time::Duration::from_secs(3));
}

/// The admin's change to the conffile, made before an upgrade that ships a
/// different one.
fn edit_conffile(host: &Host) -> String {
    let text = format!("{}# changed by the admin\n", host.read(CONFFILE));
    host.write(CONFFILE, &text);
    text
}

/// Case 9: the new version (1.3.0, schema 3) fails its health check in
/// postinst / %posttrans. Its finish migrated the state up first (the log
/// says so, before the restore), then restored the snapshot: the state is
/// the snapshot's again (schema 2, as 1.1.0 left it); the cause and the way
/// out are reported, the agent is stopped behind the marker, the record
/// says `failed`, the deployed software kept its process.
/// dpkg fails the package; dnf reports the %posttrans error but exits 0
/// (the transaction is done), so only apt's exit status is asserted.
fn assert_failed_upgrade_restored(
    host: &Host,
    out: &support::lab::Output,
    exit_fails: bool,
    before: &Before,
    log_from: usize,
) {
    if exit_fails {
        assert!(!out.success(), "the broken version must fail: {out}");
    }
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("upgrade of roboconf-agent to 1.3.0 failed")
            && said.contains("roboconf-agent.service failed because the control process exited")
            && said.contains("the state was restored from snapshot")
            && said.contains("Install 1.1.0 again"),
        "the failure names its cause and the way out: {said}"
    );
    let log = log_since(host, log_from);
    let migrated = log.find("finish: migrating the state up from schema 2 to 3");
    let restored = log.find("finish: state restored from snapshot");
    assert!(
        matches!((migrated, restored), (Some(m), Some(r)) if m < r),
        "finish migrated the state, then restored it: {log}"
    );
    let snapshot = recorded_snapshot(host);
    assert_eq!(
        host.read(&format!("{STATE}/state.json")),
        host.read(&format!("{snapshot}/data/state.json")),
        "state restored from {snapshot}"
    );
    assert_eq!(header(host)["schema"], 2);
    assert_eq!(header(host)["written_by"], "1.1.0");
    assert!(host.read(MARKER).contains("FAILED"), "marker kept");
    let record: Value = serde_json::from_str(&host.read(RECORD)).unwrap();
    assert_eq!(record["status"], "failed", "{record}");
    assert!(!is_active(host));
    assert_eq!(instance_process(host), before.process);
}

/// Installing a good version after a failed upgrade (the previous one
/// again, or a fixed newer one): the four things against the tree before
/// the failure; the record is gone.
#[track_caller]
fn assert_recovered(host: &Host, before: &Before, version: &str, schema: u32) {
    assert_four(host, before, &before.tree, version, schema);
    assert!(!host.path(RECORD).exists());
}

/// Case 13, the failing 1.3.0 again with its snapshot damaged between the
/// first snapshot (taken by prepare while the agent ran) and finish (which
/// stops the agent and retakes it, keeping the unchanged files, the
/// damaged recipe among them): finish refuses to restore it, says so in
/// `said`, keeps it, and leaves the state as 1.3.0 migrated it (schema 3,
/// intact) behind the FAILED marker.
fn assert_damaged_snapshot_refused(host: &Host, said: &str) {
    assert!(
        said.contains("the snapshot was NOT restored")
            && said.contains(&format!("{UNCHANGED_FILE} was changed")),
        "the damaged snapshot is refused and said so: {said}"
    );
    assert!(
        host.path(&recorded_snapshot(host)).is_dir(),
        "the damaged snapshot is kept"
    );
    assert_eq!(header(host)["schema"], 3, "state left as migrated");
    assert!(host.read(MARKER).contains("FAILED"));
}

/// The versions the main tests install: 1.0.0 and 1.1.0 (schema 2), 1.2.0
/// (schema 3), the broken 1.3.0 (schema 3, cannot start) and 1.4.0, the
/// fixed release after it (schema 3).
struct Versions {
    v100: PathBuf,
    v110: PathBuf,
    v120: PathBuf,
    broken: PathBuf,
    v140: PathBuf,
}

fn versions(pick: impl Fn(probe::AgentPackages) -> PathBuf) -> Versions {
    Versions {
        v100: pick(probe::agent_variant("1.0.0", 2, Variant::Good)),
        v110: pick(probe::agent_variant("1.1.0", 2, Variant::Good)),
        v120: pick(probe::agent_variant("1.2.0", 3, Variant::Good)),
        broken: pick(probe::agent_variant("1.3.0", 3, Variant::Broken)),
        v140: pick(probe::agent_variant("1.4.0", 3, Variant::Good)),
    }
}

#[test]
fn debian_install_upgrade_downgrade_busy_remove_purge() {
    let v = versions(|p| p.deb);
    let mut host = Host::new(HostKind::Debian);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));

    // 1. Fresh install: enabled, started once, healthy, schema 2.
    fresh_install(&host, &v.v100, "");
    assert!(host.path("/var/lib/systemd/linger/roboconf-agent").exists());

    // 2. Upgrade, same schema: the four things (every upgrade step checks
    // them). 1.0.0's prepare only quiesces (both speak hook protocol 2): the
    // agent answers through the unpack, and 1.1.0's finish stops it.
    let from = log_len(&host);
    upgrade_step(&host, &v.v110, "1.1.0", 2, "");
    assert_prepare_left_running(&host, from, true);
    // 3. Upgrade with up-migration 2 -> 3 by the hook's finish.
    // 12. The admin changed the conffile and 1.2.0 ships another one:
    // --force-confdef --force-confold keeps the admin's, the package's is
    // written beside it.
    let admin = edit_conffile(&host);
    upgrade_step(&host, &v.v120, "1.2.0", 3, "");
    assert_eq!(host.read(CONFFILE), admin, "the admin's conffile is kept");
    assert!(host
        .read(&format!("{CONFFILE}.dpkg-dist"))
        .contains("# as shipped with 1.2.0"));
    let snapshots = host.sh_ok(&format!("ls {SNAPSHOTS}"));
    assert!(
        snapshots.contains("-1.1.0"),
        "snapshot before 1.1.0 -> 1.2.0: {snapshots}"
    );
    // 4. Downgrade with down-migration 3 -> 2 by the outgoing (1.2.0) agent,
    // which prepare stops first: its files are gone by finish.
    let from = log_len(&host);
    upgrade_step(&host, &v.v110, "1.1.0", 2, "--allow-downgrades");
    assert_prepare_left_running(&host, from, false);
    // 5. Reinstall: same version, same schema.
    upgrade_step(&host, &v.v110, "1.1.0", 2, "--reinstall");
    assert_eq!(host.read(CONFFILE), admin, "the admin's conffile is kept");

    // 9. A new version (schema 3) that migrates up and then cannot start:
    // its postinst restores the snapshot and leaves the package
    // half-configured; installing 1.1.0 again recovers.
    let b = before(&host);
    let from = log_len(&host);
    let out = install(&host, &v.broken, "");
    assert_failed_upgrade_restored(&host, &out, true, &b, from);
    assert_eq!(installed(&host), "1.3.0-1 half-configured");
    let out = install(&host, &v.v110, "--allow-downgrades");
    assert!(out.success(), "installing 1.1.0 again: {out}");
    assert_recovered(&host, &b, "1.1.0", 2);

    // 13. The same failure with the snapshot damaged between unpack and
    // configure; recovered by the fixed release 1.4.0, whose finish starts
    // it on the state 1.3.0 migrated. Then back to 1.1.0 (3 -> 2).
    let b = before(&host);
    let_restored_files_age();
    host.copy_in(&v.broken, "/root/broken.deb");
    host.sh_ok("dpkg --force-confdef --force-confold --unpack /root/broken.deb");
    let snapshot = recorded_snapshot(&host);
    host.sh_ok(&format!("echo damage >> {snapshot}/data/{UNCHANGED_FILE}"));
    let out = host.sh("dpkg --force-confdef --force-confold --configure roboconf-agent");
    assert!(!out.success(), "{out}");
    assert_damaged_snapshot_refused(&host, &format!("{}{}", out.stdout, out.stderr));
    assert_eq!(instance_process(&host), b.process);
    let out = install(&host, &v.v140, "");
    assert!(out.success(), "installing the fixed 1.4.0: {out}");
    assert_recovered(&host, &b, "1.4.0", 3);
    upgrade_step(&host, &v.v110, "1.1.0", 2, "--allow-downgrades");

    // 8 and 10. Busy agent: the new preinst fails (the installed hook's
    // prepare refuses, naming what runs); dpkg keeps 1.1.0 installed and
    // its agent running, same process, no restart; once idle the same
    // upgrade passes.
    busy_refusal_then_upgrade(&host, &v.v120, "", ("1.2.0", 3));

    // 6. Remove, then install again: the state is kept, the deployed
    // software keeps running, and the agent comes back with its tree.
    let b = before(&host);
    host.sh_ok("apt-get remove -y roboconf-agent");
    assert!(!is_active(&host));
    assert_eq!(
        socket_since(&host),
        None,
        "the socket unit stops with the agent"
    );
    assert!(host.path(&format!("{STATE}/state.json")).exists());
    assert_eq!(instance_process(&host), b.process);
    let out = install(&host, &v.v120, "");
    assert!(out.success(), "install after remove: {out}");
    assert_four(&host, &b, &b.tree, "1.2.0", 3);
    assert!(socket_since(&host).is_some(), "the socket unit is back");

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
    // Lingering ends with the purge, and with it the user manager and the
    // processes the recipes started.
    assert!(!host.path("/var/lib/systemd/linger/roboconf-agent").exists());
    assert!(!host.sh(FIND_INSTANCE_PROCESS).success());
    host.poweroff();
}

/// The same paths with real dnf and rpm on the booted RPM host, from the
/// same builds: install, upgrade, up-migration with an admin-changed
/// `%config(noreplace)` file, downgrade with down-migration, reinstall, a
/// failing %posttrans restored and recovered by `dnf downgrade`, a damaged
/// snapshot recovered by the fixed release, a busy agent refusing in
/// `%pre`, erase ($1 = 0 keeps the state) and install again.
#[test]
fn rpm_install_upgrade_downgrade_failed_busy_erase_reinstall() {
    let v = versions(|p| p.rpm);
    let mut host = Host::new(HostKind::Rpm);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));

    // 1. Fresh install: %post enables, %posttrans starts and checks health.
    fresh_install(&host, &v.v100, "install");

    // 2. Upgrade, same schema: %pre ($1 = 2) runs 1.0.0's prepare, the old
    // %preun/%postun ($1 = 1) do nothing, %posttrans runs 1.1.0's finish.
    let from = log_len(&host);
    upgrade_step(&host, &v.v110, "1.1.0", 2, "install");
    assert_prepare_left_running(&host, from, true);
    // 3. Upgrade with up-migration; 12. %config(noreplace): the admin's
    // file stays, the package's is written as .rpmnew.
    let admin = edit_conffile(&host);
    upgrade_step(&host, &v.v120, "1.2.0", 3, "install");
    assert_eq!(host.read(CONFFILE), admin, "the admin's config is kept");
    assert!(host
        .read(&format!("{CONFFILE}.rpmnew"))
        .contains("# as shipped with 1.2.0"));
    // 4. dnf downgrade: 1.2.0's prepare migrates 3 -> 2 with 1.2.0's agent.
    let from = log_len(&host);
    upgrade_step(&host, &v.v110, "1.1.0", 2, "downgrade");
    assert_prepare_left_running(&host, from, false);
    // 5. dnf reinstall.
    upgrade_step(&host, &v.v110, "1.1.0", 2, "reinstall");
    assert_eq!(installed(&host), "1.1.0-1");

    // 9. A failing %posttrans (the new agent cannot start): snapshot
    // restored, agent stopped behind the marker; dnf downgrade recovers.
    let b = before(&host);
    let from = log_len(&host);
    let out = install(&host, &v.broken, "install");
    assert_failed_upgrade_restored(&host, &out, false, &b, from);
    assert_eq!(installed(&host), "1.3.0-1");
    let out = install(&host, &v.v110, "downgrade");
    assert!(out.success(), "dnf downgrade to 1.1.0: {out}");
    assert_recovered(&host, &b, "1.1.0", 2);

    // 13. The same failure, with the snapshot damaged inside the
    // transaction: a package that requires roboconf-agent (so rpm installs
    // it after 1.3.0's %pre took the snapshot, before %posttrans) damages
    // it in its %post. finish refuses to restore it and says so; the fixed
    // 1.4.0 recovers; then back to 1.1.0 (3 -> 2).
    let b = before(&host);
    let_restored_files_age();
    let damager = damaging_rpm();
    host.copy_in(&damager, "/root/damager.rpm");
    host.copy_in(&v.broken, "/root/broken.rpm");
    let out = host.sh("dnf -y install /root/broken.rpm /root/damager.rpm");
    assert_damaged_snapshot_refused(&host, &format!("{}{}", out.stdout, out.stderr));
    assert_eq!(instance_process(&host), b.process);
    host.sh_ok("dnf -y remove ferry-snapshot-damager");
    let out = install(&host, &v.v140, "install");
    assert!(out.success(), "dnf install of the fixed 1.4.0: {out}");
    assert_recovered(&host, &b, "1.4.0", 3);
    upgrade_step(&host, &v.v110, "1.1.0", 2, "downgrade");

    // 8 and 10. Busy agent: 1.2.0's %pre fails (1.1.0's prepare refuses);
    // rpm keeps 1.1.0 installed, its agent running, same process, no
    // restart; once idle the same upgrade passes.
    busy_refusal_then_upgrade(&host, &v.v120, "install", ("1.2.0", 3));

    // 6. Erase ($1 = 0): stopped and disabled, state and snapshots kept;
    // installing 1.2.0 again brings the agent back with its tree.
    let b = before(&host);
    host.sh_ok("dnf -y remove roboconf-agent");
    assert!(!is_active(&host));
    assert_eq!(
        socket_since(&host),
        None,
        "the socket unit stops with the agent"
    );
    assert!(host.path(&format!("{STATE}/state.json")).exists());
    assert!(!host.sh_ok(&format!("ls {SNAPSHOTS}")).is_empty());
    assert_eq!(instance_process(&host), b.process);
    let out = install(&host, &v.v120, "install");
    assert!(out.success(), "install after erase: {out}");
    assert_four(&host, &b, &b.tree, "1.2.0", 3);
    assert!(socket_since(&host).is_some(), "the socket unit is back");
    host.poweroff();
}

/// A package whose %post damages the snapshot the pending upgrade record
/// names; it requires roboconf-agent, so in a transaction with it rpm runs
/// that %post after roboconf-agent's %pre and before its %posttrans.
fn damaging_rpm() -> PathBuf {
    let post = format!(
        "snapshot=$(sed -n 's/.*\"snapshot\": *\"\\([^\"]*\\)\".*/\\1/p' {RECORD})
echo damage >> \"{SNAPSHOTS}/$snapshot/data/{UNCHANGED_FILE}\"
"
    );
    support::upgrade::scriptlet_rpm("ferry-snapshot-damager", &post)
}
