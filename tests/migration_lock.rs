//! End to end on booted lab hosts: the reference agent's migration lock
//! (issue #19, docs/AGENT.md) with real apt-get/dpkg and dnf/rpm. The lock
//! is taken after an upgrade migrated the state 3 -> 4; it survives a
//! reinstall (snapshot, stop, start); a plain downgrade to the schema-3
//! version is refused while it is held, naming it, before anything changes
//! (the old version installed and running, same process, state untouched,
//! no marker or record); once released, the same downgrade migrates 4 -> 3.
//! Root is required (the lab boots hosts with systemd-nspawn).

mod support;

use std::path::PathBuf;

use support::agent::{
    agent, deploy_tree, install, log_len, log_since, status, version_running, MARKER, RECORD, STATE,
};
use support::lab::{Host, HostKind};
use support::probe::{self, Variant};
use support::upgrade::{installed, main_pid, starts, upgrade_step, wait_for};

/// The application in pkg/agent.toml.
const APPLICATION: &str = "my-application";
const LOCK: &str = "mig-lab";

struct Commands {
    install: &'static str,
    reinstall: &'static str,
    downgrade: &'static str,
}

const APT: Commands = Commands {
    install: "",
    reinstall: "--reinstall",
    downgrade: "--allow-downgrades",
};

const DNF: Commands = Commands {
    install: "install",
    reinstall: "reinstall",
    downgrade: "downgrade",
};

fn lock_refuses_the_downgrade(kind: HostKind, pick: impl Fn(probe::AgentPackages) -> PathBuf) {
    let v140 = pick(probe::agent_variant("1.4.0", 3, Variant::Good));
    let v150 = pick(probe::agent_variant("1.5.0", 4, Variant::Good));
    let commands = match kind {
        HostKind::Debian => APT,
        HostKind::Rpm => DNF,
    };
    let mut host = Host::new(kind);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));
    let out = install(&host, &v140, commands.install);
    assert!(out.success(), "fresh install of 1.4.0: {out}");
    deploy_tree(&host);
    // The hook's finish migrates 3 -> 4 (the four things are asserted).
    upgrade_step(&host, &v150, "1.5.0", 4, commands.install);

    let taken = agent(
        &host,
        &format!(
            "ctl lock --id {LOCK} --application {APPLICATION} --by lab --reason 'migration under test'"
        ),
    );
    assert!(taken.contains("\"taken\":true"), "{taken}");
    let since = status(&host)["lock"]["since"].clone();

    // An upgrade's snapshot, stop and start keep the lock (it is state).
    let started = starts(&host);
    let out = install(&host, &v150, commands.reinstall);
    assert!(out.success(), "reinstall of 1.5.0 while locked: {out}");
    assert_eq!(
        starts(&host),
        started + 1,
        "the reinstall restarted the agent"
    );
    let s = status(&host);
    assert_eq!(
        (s["lock"]["id"].clone(), s["lock"]["since"].clone()),
        (LOCK.into(), since.clone()),
        "the lock survives the reinstall: {s}"
    );

    // The downgrade to schema 3 is refused while the lock is held.
    let state_before = host.read(&format!("{STATE}/state.json"));
    let installed_before = installed(&host);
    let pid = main_pid(&host);
    let started = starts(&host);
    let log_from = log_len(&host);
    let out = install(&host, &v140, commands.downgrade);
    assert!(!out.success(), "the downgrade must be refused: {out}");
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("refusing to downgrade roboconf-agent to 1.4.0 (schema 3)")
            && said.contains(&format!(
                "migration lock `{LOCK}` of application {APPLICATION}"
            )),
        "the refusal names the lock: {said}"
    );
    let log = log_since(&host, log_from);
    assert!(
        log.lines()
            .any(|l| l.contains("prepare: refusing to downgrade") && l.contains(LOCK)),
        "the upgrade log says why: {log}"
    );
    assert!(
        !log.contains("quiesce") && !log.contains("snapshot"),
        "refused before anything changed: {log}"
    );
    assert_eq!(installed(&host), installed_before);
    assert_eq!(main_pid(&host), pid, "the agent kept its process");
    assert_eq!(starts(&host), started, "no start across the refusal");
    assert_eq!(version_running(&host), "1.5.0");
    assert_eq!(host.read(&format!("{STATE}/state.json")), state_before);
    assert!(!host.path(MARKER).exists() && !host.path(RECORD).exists());
    assert_eq!(status(&host)["lock"]["id"], LOCK);

    // Released: the same downgrade passes, migrating 4 -> 3.
    agent(&host, &format!("ctl unlock --id {LOCK}"));
    wait_for(
        "the lock to be released",
        std::time::Duration::from_secs(5),
        || status(&host)["lock"].is_null(),
    );
    upgrade_step(&host, &v140, "1.4.0", 3, commands.downgrade);
    host.poweroff();
}

#[test]
fn debian_downgrade_below_schema_4_is_refused_while_a_migration_lock_is_held() {
    lock_refuses_the_downgrade(HostKind::Debian, |p| p.deb);
}

#[test]
fn rpm_downgrade_below_schema_4_is_refused_while_a_migration_lock_is_held() {
    lock_refuses_the_downgrade(HostKind::Rpm, |p| p.rpm);
}
