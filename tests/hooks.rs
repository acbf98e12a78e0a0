//! End to end: real packages built by `ferry build` (deb and rpm from one
//! build), installed, upgraded, downgraded, refused, failed and recovered,
//! removed and purged with real dpkg/apt-get and dnf/rpm in booted lab hosts, with the reference agent holding a deployed tree, a
//! queue and files its recipes made. See docs/UPGRADES.md for what each step
//! proves. Root is required (the lab boots hosts with systemd-nspawn).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::agent::{
    agent, deploy_tree, header, install, log_len, log_since, sorted_tree, status, tree,
    version_running, wait_answering, AGENT, MARKER, RECORD, SNAPSHOTS, STATE,
};
use support::lab::{Host, HostKind};
use support::probe::{self, Variant};
use support::run;

fn starts(host: &Host) -> usize {
    host.sh("journalctl --no-pager -o cat -u roboconf-agent.service")
        .stdout
        .lines()
        .filter(|l| l.starts_with("Started "))
        .count()
}

/// Finds the App instance's process by its command line, whether systemd
/// ran it by its full path or not; never the shell running pgrep.
const FIND_INSTANCE_PROCESS: &str = "pgrep -f '^[^ ]*sleep 86401$'";

/// The process the App instance's start recipe spawned (`sleep 86401`),
/// after checking that it runs in the agent user's own systemd manager,
/// outside the agent's cgroup: what lets it outlive the agent.
#[track_caller]
fn instance_process(host: &Host) -> String {
    let found = host.sh(FIND_INSTANCE_PROCESS);
    let pid = found.stdout.trim().to_string();
    assert!(
        found.success() && !pid.contains('\n'),
        "one instance process, found {pid:?}; the agent says {}; its journal:\n{}",
        agent(host, "ctl status --json"),
        host.sh("journalctl --no-pager -o cat -n 30 -u roboconf-agent.service")
            .stdout
    );
    let cgroup = host.sh_ok(&format!("cat /proc/{pid}/cgroup"));
    assert!(
        cgroup.contains("/user.slice/") && cgroup.contains("roboconf-app.service"),
        "spawned in the user manager: {cgroup}"
    );
    pid
}

/// `systemctl restart` of the agent leaves the instance's process alone
/// (same PID), and the agent comes back with its tree.
fn assert_process_survives_restart(host: &Host) {
    let process = instance_process(host);
    let before = tree(host);
    host.sh_ok("systemctl restart roboconf-agent");
    wait_answering(host);
    assert_eq!(tree(host), before);
    assert_eq!(instance_process(host), process, "same PID after a restart");
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
    let after = sorted_tree(host);
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
    let process = instance_process(host);
    let out = install(host, deb, extra);
    assert!(out.success(), "installing {version}: {out}");
    assert_upgraded(host, &before, &queued, version);
    assert_eq!(
        instance_process(host),
        process,
        "the deployed software kept running"
    );
    assert_eq!(starts(host), started + 1, "started exactly once");
    let h = header(host);
    assert_eq!(h["schema"], schema, "{h}");
    assert_eq!(h["written_by"], version, "{h}");
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

/// The snapshot the pending upgrade record names.
fn recorded_snapshot(host: &Host) -> String {
    let record: Value = serde_json::from_str(&host.read(RECORD)).expect("upgrade record");
    let name = record["snapshot"]
        .as_str()
        .expect("record names a snapshot");
    format!("{SNAPSHOTS}/{name}")
}

/// Case 9: the new version's health check fails in postinst / %posttrans.
/// The state is the snapshot's again (schema 2, as 1.1.0 left it, although
/// the new agent had migrated it to 3), the cause and the way out are
/// reported, the agent is stopped behind the marker, the record says
/// `failed`.
/// dpkg fails the package; dnf reports the %posttrans error but exits 0
/// (the transaction is done), so only apt's exit status is asserted.
fn assert_failed_upgrade_restored(host: &Host, out: &support::lab::Output, exit_fails: bool) {
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
    assert!(!host
        .sh("systemctl --quiet is-active roboconf-agent")
        .success());
}

/// Installing the previous version again after a failed upgrade: the tree
/// is back, 1.1.0 runs, the marker and the record are gone.
fn assert_recovered(host: &Host, before: &[(String, String, String)], started: usize) {
    let after = sorted_tree(host);
    let mut before = before.to_vec();
    before.sort();
    assert_eq!(after, before);
    assert_eq!(version_running(host), "1.1.0");
    assert_eq!(header(host)["schema"], 2);
    assert!(!host.path(MARKER).exists());
    assert!(!host.path(RECORD).exists());
    assert_eq!(starts(host), started + 1, "started once, by the recovery");
}

#[test]
fn debian_install_upgrade_downgrade_busy_remove_purge() {
    let v100 = probe::agent_variant("1.0.0", 2, Variant::Good).deb;
    let v110 = probe::agent_variant("1.1.0", 2, Variant::Good).deb;
    let v120 = probe::agent_variant("1.2.0", 3, Variant::Good).deb;
    let broken = probe::agent_variant("1.3.0", 3, Variant::Broken).deb;
    let mut host = Host::new(HostKind::Debian);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));

    // 1. Fresh install: enabled, started, healthy, schema 2.
    let out = install(&host, &v100, "");
    assert!(out.success(), "fresh install: {out}");
    assert_eq!(version_running(&host), "1.0.0");
    deploy_tree(&host);
    assert_eq!(header(&host)["schema"], 2);
    assert!(host.path("/var/lib/systemd/linger/roboconf-agent").exists());
    assert_process_survives_restart(&host);

    // 2. Upgrade, same schema: tree, queue, recipe files kept; one start;
    // the instance's process keeps its PID (every upgrade step checks it).
    // 1.0.0's prepare only quiesces (both speak hook protocol 2): the agent
    // answers through the unpack, and 1.1.0's finish stops it.
    let from = log_len(&host);
    upgrade_step(&host, &v110, "1.1.0", 2, "");
    assert_prepare_left_running(&host, from, true);
    // 3. Upgrade with up-migration 2 -> 3 by the new agent.
    // 12. The admin changed the conffile and 1.2.0 ships another one:
    // --force-confdef --force-confold keeps the admin's, the package's is
    // written beside it.
    let admin = edit_conffile(&host);
    upgrade_step(&host, &v120, "1.2.0", 3, "");
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
    upgrade_step(&host, &v110, "1.1.0", 2, "--allow-downgrades");
    assert_prepare_left_running(&host, from, false);
    // 5. Reinstall: same version, same schema.
    upgrade_step(&host, &v110, "1.1.0", 2, "--reinstall");
    assert_eq!(host.read(CONFFILE), admin, "the admin's conffile is kept");

    // 9. A new version (schema 3) that migrates up and then cannot start:
    // its postinst restores the snapshot and leaves the package
    // half-configured; installing 1.1.0 again recovers with the tree.
    let before = tree(&host);
    let started = starts(&host);
    let process = instance_process(&host);
    let out = install(&host, &broken, "");
    assert_failed_upgrade_restored(&host, &out, true);
    assert_eq!(
        host.sh_ok("dpkg-query -W -f '${Version} ${db:Status-Status}' roboconf-agent"),
        "1.3.0-1 half-configured"
    );
    let out = install(&host, &v110, "--allow-downgrades");
    assert!(out.success(), "installing 1.1.0 again: {out}");
    assert_recovered(&host, &before, started);
    assert_eq!(instance_process(&host), process, "through a failed upgrade");

    // 13. The same failure, with the snapshot damaged between unpack
    // (preinst: prepare took it while the agent ran) and configure (finish
    // stops the agent and retakes it, keeping the unchanged files, the
    // damaged recipe among them): finish refuses to restore it, says so,
    // and leaves the state as the failed step left it (migrated to schema 3
    // by 1.3.0, intact); 1.1.0 again migrates it down and runs.
    let started = starts(&host);
    let_restored_files_age();
    host.copy_in(&broken, "/root/broken.deb");
    host.sh_ok("dpkg --force-confdef --force-confold --unpack /root/broken.deb");
    let snapshot = recorded_snapshot(&host);
    host.sh_ok(&format!("echo damage >> {snapshot}/data/{UNCHANGED_FILE}"));
    let out = host.sh("dpkg --force-confdef --force-confold --configure roboconf-agent");
    assert!(!out.success(), "{out}");
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("the snapshot was NOT restored")
            && said.contains(&format!("{UNCHANGED_FILE} was changed")),
        "the damaged snapshot is refused and said so: {said}"
    );
    assert!(
        host.path(&recorded_snapshot(&host)).is_dir(),
        "the damaged snapshot is kept"
    );
    assert_eq!(header(&host)["schema"], 3, "state left as migrated");
    assert!(host.read(MARKER).contains("FAILED"));
    let out = install(&host, &v110, "--allow-downgrades");
    assert!(out.success(), "installing 1.1.0 again: {out}");
    assert_recovered(&host, &before, started);

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
    // Lingering ends with the purge, and with it the user manager and the
    // processes the recipes started.
    assert!(!host.path("/var/lib/systemd/linger/roboconf-agent").exists());
    assert!(!host.sh(FIND_INSTANCE_PROCESS).success());
    host.poweroff();
}

/// The same paths with real dnf and rpm on the booted RPM host, from the
/// same builds: install, upgrade, up-migration with an admin-changed
/// `%config(noreplace)` file, downgrade with down-migration, reinstall, a
/// failing %posttrans restored and recovered by `dnf downgrade`, erase
/// ($1 = 0 keeps the state) and install again.
#[test]
fn rpm_install_upgrade_downgrade_failed_erase_reinstall() {
    let v100 = probe::agent_variant("1.0.0", 2, Variant::Good).rpm;
    let v110 = probe::agent_variant("1.1.0", 2, Variant::Good).rpm;
    let v120 = probe::agent_variant("1.2.0", 3, Variant::Good).rpm;
    let broken = probe::agent_variant("1.3.0", 3, Variant::Broken).rpm;
    let mut host = Host::new(HostKind::Rpm);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));

    // 1. Fresh install: %post enables, %posttrans starts and checks health.
    let out = install(&host, &v100, "install");
    assert!(out.success(), "fresh install: {out}");
    assert_eq!(version_running(&host), "1.0.0");
    assert!(host
        .sh("systemctl --quiet is-enabled roboconf-agent")
        .success());
    deploy_tree(&host);
    assert_eq!(header(&host)["schema"], 2);
    assert_process_survives_restart(&host);

    // 2. Upgrade, same schema: %pre ($1 = 2) runs 1.0.0's prepare, the old
    // %preun/%postun ($1 = 1) do nothing, %posttrans runs 1.1.0's finish.
    upgrade_step(&host, &v110, "1.1.0", 2, "install");
    // 3. Upgrade with up-migration; 12. %config(noreplace): the admin's
    // file stays, the package's is written as .rpmnew.
    let admin = edit_conffile(&host);
    upgrade_step(&host, &v120, "1.2.0", 3, "install");
    assert_eq!(host.read(CONFFILE), admin, "the admin's config is kept");
    assert!(host
        .read(&format!("{CONFFILE}.rpmnew"))
        .contains("# as shipped with 1.2.0"));
    // 4. dnf downgrade: 1.2.0's prepare migrates 3 -> 2 with 1.2.0's agent.
    upgrade_step(&host, &v110, "1.1.0", 2, "downgrade");
    // 5. dnf reinstall.
    upgrade_step(&host, &v110, "1.1.0", 2, "reinstall");
    assert_eq!(
        host.sh_ok("rpm -q roboconf-agent").trim(),
        "roboconf-agent-1.1.0-1.x86_64"
    );

    // 9. A failing %posttrans (the new agent cannot start): snapshot
    // restored, agent stopped behind the marker; dnf downgrade recovers.
    let before = tree(&host);
    let started = starts(&host);
    let process = instance_process(&host);
    let out = install(&host, &broken, "install");
    assert_failed_upgrade_restored(&host, &out, false);
    assert_eq!(
        host.sh_ok("rpm -q roboconf-agent").trim(),
        "roboconf-agent-1.3.0-1.x86_64"
    );
    let out = install(&host, &v110, "downgrade");
    assert!(out.success(), "dnf downgrade to 1.1.0: {out}");
    assert_recovered(&host, &before, started);
    assert_eq!(instance_process(&host), process, "through a failed upgrade");

    // 13. The same failure, with the snapshot damaged inside the
    // transaction: a package that requires roboconf-agent (so rpm installs
    // it after 1.3.0's %pre took the snapshot, before %posttrans) damages
    // it in its %post. finish refuses to restore it and says so; the state
    // is left as 1.3.0 migrated it (schema 3, intact); dnf downgrade to
    // 1.1.0 migrates it down and recovers.
    let started = starts(&host);
    let_restored_files_age();
    let damager = damaging_rpm();
    host.copy_in(&damager, "/root/damager.rpm");
    host.copy_in(&broken, "/root/broken.rpm");
    let out = host.sh("dnf -y install /root/broken.rpm /root/damager.rpm");
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("the snapshot was NOT restored")
            && said.contains(&format!("{UNCHANGED_FILE} was changed")),
        "the damaged snapshot is refused and said so: {said}"
    );
    assert!(
        host.path(&recorded_snapshot(&host)).is_dir(),
        "the damaged snapshot is kept"
    );
    assert_eq!(header(&host)["schema"], 3, "state left as migrated");
    assert!(host.read(MARKER).contains("FAILED"));
    host.sh_ok("dnf -y remove ferry-snapshot-damager");
    let out = install(&host, &v110, "downgrade");
    assert!(out.success(), "dnf downgrade to 1.1.0: {out}");
    assert_recovered(&host, &before, started);
    assert_eq!(instance_process(&host), process, "through a failed upgrade");

    // 6. Erase ($1 = 0): stopped and disabled, state and snapshots kept;
    // installing 1.2.0 again migrates up and brings the tree back.
    host.sh_ok("dnf -y remove roboconf-agent");
    assert!(!host
        .sh("systemctl --quiet is-active roboconf-agent")
        .success());
    assert!(host.path(&format!("{STATE}/state.json")).exists());
    assert!(!host.sh_ok(&format!("ls {SNAPSHOTS}")).is_empty());
    let out = install(&host, &v120, "install");
    assert!(out.success(), "install after erase: {out}");
    assert_eq!(tree(&host), before);
    assert_eq!(version_running(&host), "1.2.0");
    assert_eq!(header(&host)["schema"], 3);
    assert!(!host.path(MARKER).exists());
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
    let package = rpm::PackageBuilder::new(
        "ferry-snapshot-damager",
        "1",
        "MIT",
        "noarch",
        "damages the pending upgrade's snapshot (ferry's tests)",
    )
    .release("1")
    .requires(rpm::Dependency::any(AGENT))
    .post_install_script(post.as_str())
    .build()
    .unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ferry-snapshot-damager-1-1.noarch.rpm");
    package.write_file(&out).unwrap();
    out
}

/// 0.9.0 as an rpm made without ferry: the files of ferry's 0.9.0 rpm
/// (state schema 1) but its hook program and hook manifest, with the
/// scriptlets of a hand-made package: user in `%pre`; directories, enable
/// and start in `%post`; `%preun` stops on erase; `%postun` restarts on
/// upgrade, as `%systemd_postun_with_restart` does (it runs after the new
/// version's `%post`, before its `%posttrans`).
fn pre_ferry_rpm() -> PathBuf {
    let ferry_built = rpm::Package::open(probe::agent_variant("0.9.0", 1, Variant::Good).rpm)
        .expect("ferry's 0.9.0 rpm");
    let mut package = rpm::PackageBuilder::new(
        AGENT,
        "0.9.0",
        "MIT",
        "x86_64",
        "roboconf-agent packaged without ferry (ferry's tests)",
    );
    package.release("0");
    for file in ferry_built.files().unwrap() {
        let file = file.unwrap();
        let path = file.metadata.path().to_string_lossy().into_owned();
        let ferrys = ["/usr/libexec/roboconf-agent/", "/usr/lib/roboconf-agent/"];
        let (Some(content), rpm::FileType::Regular) = (file.content(), file.metadata.file_type())
        else {
            continue;
        };
        if ferrys.iter().any(|dir| path.starts_with(dir)) {
            continue;
        }
        let mut options = rpm::FileOptions::new(&path)
            .mode(file.metadata.mode())
            .user(file.metadata.user())
            .group(file.metadata.group());
        if file.metadata.flags().contains(rpm::FileFlags::CONFIG) {
            options = options.config().noreplace();
        }
        package
            .with_file_contents(content.to_vec(), options)
            .unwrap();
    }
    package
        .pre_install_script(
            "getent group roboconf-agent >/dev/null || groupadd --system roboconf-agent
getent passwd roboconf-agent >/dev/null || useradd --system --gid roboconf-agent \\
	--no-create-home --home-dir /var/lib/roboconf-agent --shell /sbin/nologin roboconf-agent
",
        )
        .post_install_script(
            "install -d -m 0750 -o roboconf-agent -g roboconf-agent /var/lib/roboconf-agent /var/log/roboconf-agent
systemctl daemon-reload
if [ $1 -eq 1 ]; then systemctl enable --now roboconf-agent.service; fi
",
        )
        .pre_uninstall_script(
            "if [ $1 -eq 0 ]; then systemctl disable --now roboconf-agent.service; fi
",
        )
        .post_uninstall_script(
            "systemctl daemon-reload
if [ $1 -ge 1 ]; then systemctl try-restart roboconf-agent.service; fi
",
        );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("roboconf-agent-0.9.0-0.x86_64.rpm");
    package.build().unwrap().write_file(&out).unwrap();
    out
}

fn dpkg_status(host: &Host) -> String {
    host.sh_ok("dpkg-query -W -f '${Version} ${db:Status-Status}' roboconf-agent")
}

/// Starts `dpkg ARGS` in a process group of its own, waits until
/// `moment(host, log so far)` says so, then SIGKILLs the whole group:
/// dpkg, the maintainer script and the hook die at once, as on a power loss
/// of the package manager (the agent, a systemd service, is not in it).
fn kill_dpkg_when(host: &Host, args: &str, moment: impl Fn(&Host, &str) -> bool) {
    let from = log_len(host);
    host.sh_ok(&format!(
        "rm -f /root/dpkg.pgid
         setsid --fork sh -c 'echo $$ > /root/dpkg.pgid; exec dpkg --force-confdef --force-confold {args} >/root/dpkg.out 2>&1'"
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !moment(host, &log_since(host, from)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the moment to kill dpkg never came; log:\n{}",
            log_since(host, from)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    host.sh_ok("pkill -KILL -g \"$(cat /root/dpkg.pgid)\"");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !host.sh("pgrep -x dpkg").success(),
        "dpkg is dead; it said: {}",
        host.read("/root/dpkg.out")
    );
}

/// 0.9.0 as a package made without ferry: ferry's 0.9.0 .deb (state
/// schema 1) taken apart with `dpkg-deb -R`, its maintainer scripts, hook
/// program and hook manifest removed, and the scripts of a hand-made package put in
/// (user, directories, `deb-systemd-helper enable`, `deb-systemd-invoke
/// start`, stop on remove), then rebuilt with `dpkg-deb`.
fn pre_ferry_deb() -> PathBuf {
    let ferry_built = probe::agent_variant("0.9.0", 1, Variant::Good).deb;
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tree = tmp.join("pre-ferry-tree");
    let out = tmp.join("roboconf-agent_0.9.0-0_amd64.deb");
    let _ = fs::remove_dir_all(&tree);
    run(Command::new("dpkg-deb")
        .arg("-R")
        .arg(&ferry_built)
        .arg(&tree));
    for gone in [
        "DEBIAN/preinst",
        "DEBIAN/postinst",
        "DEBIAN/prerm",
        "DEBIAN/postrm",
        "DEBIAN/md5sums",
        "usr/libexec/roboconf-agent",
        "usr/lib/roboconf-agent",
    ] {
        let path = tree.join(gone);
        if path.is_dir() {
            fs::remove_dir_all(&path).unwrap();
        } else {
            fs::remove_file(&path).unwrap_or_else(|e| panic!("{gone}: {e}"));
        }
    }
    let postinst = "#!/bin/sh
set -e
if [ \"$1\" = configure ]; then
	getent group roboconf-agent >/dev/null || groupadd --system roboconf-agent
	getent passwd roboconf-agent >/dev/null || useradd --system --gid roboconf-agent \\
		--no-create-home --home-dir /var/lib/roboconf-agent --shell /usr/sbin/nologin roboconf-agent
	install -d -m 0750 -o roboconf-agent -g roboconf-agent /var/lib/roboconf-agent /var/log/roboconf-agent
	[ -e /etc/roboconf-agent/credentials ] || install -m 0640 -g roboconf-agent /dev/null /etc/roboconf-agent/credentials
	deb-systemd-helper enable roboconf-agent.service >/dev/null
	deb-systemd-invoke start roboconf-agent.service
fi
";
    let prerm = "#!/bin/sh
set -e
if [ \"$1\" = remove ]; then
	deb-systemd-invoke stop roboconf-agent.service
fi
";
    for (name, text) in [("postinst", postinst), ("prerm", prerm)] {
        let path = tree.join("DEBIAN").join(name);
        fs::write(&path, text).unwrap();
        run(Command::new("chmod").arg("0755").arg(&path));
    }
    let control = fs::read_to_string(tree.join("DEBIAN/control"))
        .unwrap()
        .replace("Version: 0.9.0-1", "Version: 0.9.0-0");
    fs::write(tree.join("DEBIAN/control"), control).unwrap();
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&tree)
        .arg(&out));
    out
}

/// Installs `v090`, a version packaged without ferry (schema 1), with a
/// tree; the admin enables lingering by hand, as docs/AGENT.md asks of
/// agents not packaged by ferry. Then upgrades to `v110`: the new preinst
/// / `%pre` finds no hook and falls back (stop, `cp -a` snapshot, marker,
/// record); 1.1.0's finish checksums that snapshot, migrates 1 -> 2,
/// starts once. `extra` is what `install` takes.
fn upgrade_from_pre_ferry(host: &Host, v090: &Path, v110: &Path, extra: &str) {
    let out = install(host, v090, extra);
    assert!(out.success(), "pre-ferry install: {out}");
    assert!(!host.path("/usr/libexec/roboconf-agent/ferry-hook").exists());
    host.sh_ok(
        "loginctl enable-linger roboconf-agent
        while [ ! -S /run/user/$(id -u roboconf-agent)/systemd/private ]; do sleep 0.2; done",
    );
    wait_answering(host);
    deploy_tree(host);
    assert_eq!(header(host)["schema"], 1);
    let from = log_len(host);
    upgrade_step(host, v110, "1.1.0", 2, extra);
    let log = log_since(host, from);
    assert!(
        log.contains("fallback prepare for 1.1.0")
            && log.contains("checksummed the fallback snapshot")
            && log.contains("migrating the state up from schema 1 to 2"),
        "the fallback path, in the log: {log}"
    );
    let fallback = host.sh_ok(&format!("ls -d {SNAPSHOTS}/*-fallback"));
    assert!(
        host.path(&format!("{}/ferry-snapshot.json", fallback.trim()))
            .exists(),
        "the fallback snapshot is kept and checksummed: {fallback}"
    );
}

/// The paths the main Debian test cannot take in one host: an upgrade from
/// a version packaged without ferry (the shell fallback), dpkg SIGKILLed
/// while unpacking and while configuring (case 11), and the admin's escape
/// hatch that skips migration.
#[test]
fn debian_pre_ferry_killed_dpkg_and_escape_hatch() {
    let v090 = pre_ferry_deb();
    let v110 = probe::agent_variant("1.1.0", 2, Variant::Good).deb;
    let v120 = probe::agent_variant("1.2.0", 3, Variant::Good).deb;
    let mut host = Host::new(HostKind::Debian);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));

    upgrade_from_pre_ferry(&host, &v090, &v110, "");

    // 11a. dpkg SIGKILLed during unpack: 1.1.0's prepare has quiesced the
    // agent and is copying a large state into the snapshot. The package is
    // left half-installed, the agent still answers (quiesced, 1.1.0). apt
    // first asks for `dpkg --configure -a` (dpkg's journal), which leaves it
    // half-installed; installing it again completes the upgrade with the
    // state intact, the agent started once.
    host.sh_ok(&format!(
        "head -c 256M /dev/zero > {STATE}/bulk && chown roboconf-agent: {STATE}/bulk"
    ));
    let before = tree(&host);
    let process = instance_process(&host);
    host.copy_in(&v120, "/root/v120.deb");
    kill_dpkg_when(&host, "--unpack /root/v120.deb", |host, log| {
        log.contains("asking the agent to quiesce")
            && host
                .sh(&format!("ls -d {SNAPSHOTS}/.partial-*/data"))
                .success()
    });
    assert_eq!(dpkg_status(&host), "1.1.0-1 half-installed");
    let record: Value = serde_json::from_str(&host.read(RECORD)).unwrap();
    assert_eq!(record["status"], "preparing", "{record}");
    assert_eq!(record["was_running"], true, "{record}");
    assert_eq!(record["quiesced_only"], true, "{record}");
    let answer = status(&host);
    assert_eq!(answer["version"], "1.1.0", "{answer}");
    assert_eq!(answer["quiesced"], true, "{answer}");
    let started = starts(&host);
    let out = install(&host, &v120, "");
    assert!(
        !out.success() && out.stderr.contains("dpkg --configure -a"),
        "apt asks for dpkg --configure -a first: {out}"
    );
    host.sh_ok("dpkg --force-confdef --force-confold --configure -a");
    assert_eq!(dpkg_status(&host), "1.1.0-1 half-installed");
    let out = install(&host, &v120, "");
    assert!(out.success(), "installing 1.2.0 again: {out}");
    let after = sorted_tree(&host);
    let mut expected = before.clone();
    expected.sort();
    assert_eq!(after, expected);
    assert_eq!(version_running(&host), "1.2.0");
    assert_eq!(header(&host)["schema"], 3);
    assert_eq!(starts(&host), started + 1, "started once, by the retry");
    assert_eq!(instance_process(&host), process);
    assert!(!host.path(MARKER).exists() && !host.path(RECORD).exists());
    host.sh_ok(&format!("rm {STATE}/bulk"));

    // 11b. dpkg SIGKILLed during configure: 1.1.0 unpacked (1.2.0's prepare
    // migrated 3 -> 2), its finish killed once the state verified. The
    // package is left half-configured; `dpkg --configure -a` finishes.
    host.copy_in(&v110, "/root/v110.deb");
    host.sh_ok("dpkg --force-confdef --force-confold --unpack /root/v110.deb");
    kill_dpkg_when(&host, "--configure roboconf-agent", |_, log| {
        log.contains("state verified")
    });
    assert_eq!(dpkg_status(&host), "1.1.0-1 half-configured");
    host.sh_ok("dpkg --force-confdef --force-confold --configure -a");
    assert_eq!(dpkg_status(&host), "1.1.0-1 installed");
    let after = sorted_tree(&host);
    assert_eq!(after, expected);
    assert_eq!(version_running(&host), "1.1.0");
    assert_eq!(header(&host)["schema"], 2);
    assert_eq!(instance_process(&host), process);
    assert!(!host.path(MARKER).exists() && !host.path(RECORD).exists());

    // An installed hook of protocol 1 (the real one behind a wrapper that
    // answers `protocol` with 1): the incoming package asks only what
    // protocol 1 offers, and prepare stops the agent before the unpack.
    host.sh_ok(
        "cd /usr/libexec/roboconf-agent && mv ferry-hook ferry-hook.real
        printf '#!/bin/sh\nif [ \"$1\" = protocol ]; then echo 1; else exec /usr/libexec/roboconf-agent/ferry-hook.real \"$@\"; fi\n' > ferry-hook
        chmod 0755 ferry-hook",
    );
    let from = log_len(&host);
    upgrade_step(&host, &v110, "1.1.0", 2, "--reinstall");
    assert_prepare_left_running(&host, from, false);
    host.sh_ok("rm /usr/libexec/roboconf-agent/ferry-hook.real");

    // The escape hatch: with /etc/roboconf-agent/ferry-skip-migration the
    // hooks migrate nothing and say so; the upgrade still keeps the state
    // (the reference agent migrates up by itself when it starts).
    host.sh_ok("touch /etc/roboconf-agent/ferry-skip-migration");
    let from = log_len(&host);
    upgrade_step(&host, &v120, "1.2.0", 3, "");
    let log = log_since(&host, from);
    assert!(
        log.contains("ferry-skip-migration exists: the state is NOT migrated (escape hatch)")
            && !log.contains("migrating the state"),
        "the escape hatch, in the log: {log}"
    );
    host.poweroff();
}

/// RPM from a version packaged without ferry: the incoming `%pre` finds no
/// hook and falls back (`systemctl stop`, `cp -a` snapshot, marker, record
/// with `was_running: true`); the old package's `%postun` try-restart finds
/// the unit stopped; 1.1.0's `%posttrans` checksums the snapshot, migrates
/// 1 -> 2, starts once.
#[test]
fn rpm_pre_ferry_upgrade() {
    let v090 = pre_ferry_rpm();
    let v110 = probe::agent_variant("1.1.0", 2, Variant::Good).rpm;
    let mut host = Host::new(HostKind::Rpm);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));
    upgrade_from_pre_ferry(&host, &v090, &v110, "install");
    host.poweroff();
}

/// A start of the new version that fails once (a drop-in whose
/// `ExecStartPre` fails the first time, as a transient failure would) is
/// restarted by systemd (`Restart=on-failure`) and waited through: the
/// upgrade completes instead of rolling back on one failure (SPEC §13), and
/// the log says what happened.
#[test]
fn debian_a_start_that_fails_once_is_waited_through() {
    let v110 = probe::agent_variant("1.1.0", 2, Variant::Good).deb;
    let v120 = probe::agent_variant("1.2.0", 3, Variant::Good).deb;
    let mut host = Host::new(HostKind::Debian);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));
    let out = install(&host, &v110, "");
    assert!(out.success(), "{out}");
    host.sh_ok(
        "mkdir -p /etc/systemd/system/roboconf-agent.service.d
         printf '[Service]\\nExecStartPre=+/bin/sh -c \"[ -e /run/failed-once ] || { touch /run/failed-once; exit 1; }\"\\n' \
             > /etc/systemd/system/roboconf-agent.service.d/fail-once.conf
         systemctl daemon-reload",
    );
    let from = log_len(&host);
    let out = install(&host, &v120, "");
    let log = log_since(&host, from);
    assert!(out.success(), "{out}\n{log}");
    let journal = host.sh_ok("journalctl --no-pager -o cat -u roboconf-agent.service");
    assert!(
        journal.contains("Scheduled restart job"),
        "the first start failed and systemd restarted it: {journal}"
    );
    assert_eq!(version_running(&host), "1.2.0");
    assert!(log.contains("did not come up at once"), "{log}");
    assert!(!log.contains("FAILED"), "{log}");
}
