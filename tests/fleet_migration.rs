//! The `ferry.fleet` migration playbook (ansible/playbooks/migration.yml)
//! on four booted lab hosts, two Debian and two RPM, driven by the pinned
//! ansible-core as in tests/fleet.rs. One host refuses `initialize` (a stale
//! journal of another migration is open on it): the run fails naming it, and
//! every other host ends unlocked, its package not held, its journal closed
//! as cancelled. Fixed, the migration initializes on all four, a second run
//! changes nothing; `perform` moves all four back from 1.1.0 (the newest,
//! which enrolment installed) to 1.0.0 in batches of two, under the lock (a
//! second run changes nothing); `complete` (twice: the second changes
//! nothing) leaves them all unlocked on 1.0.0, pinned to it in the record
//! of holds, so that their updaters, run then, keep it although the
//! channel offers 1.1.0. Root is required (docs/LAB.md).

mod support;

use std::time::Instant;

use serde_json::Value;
use support::fleet::{failures, stats, task_results, Fleet, Repository, AGENT_PACKAGE};
use support::lab::{Host, HostKind};

/// The application in pkg/agent.toml.
const APP: &str = "my-application";
const ID: &str = "mig-fleet";
const BROKEN: &str = "rpm2";
const OPEN: &str = "/var/lib/ferry/roboconf-agent/migration.json";
const CLOSED: &str = "/var/lib/ferry/roboconf-agent/migration.done.json";

fn held(host: &Host) -> bool {
    match host.kind() {
        HostKind::Debian => host
            .sh_ok("apt-mark showhold")
            .lines()
            .any(|l| l == AGENT_PACKAGE),
        // `roboconf-agent-0:1.0.0-1.*`
        HostKind::Rpm => host.sh_ok("dnf -q versionlock list").lines().any(|l| {
            l.strip_prefix(&format!("{AGENT_PACKAGE}-"))
                .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        }),
    }
}

fn channel_status(host: &Host) -> Value {
    let family = match host.kind() {
        HostKind::Debian => "apt",
        HostKind::Rpm => "dnf",
    };
    let out = host.sh_ok(&format!("ferry channel --family {family} status --json"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn lock(host: &Host) -> Value {
    support::agent::status(host)["lock"].clone()
}

fn closed(host: &Host) -> Value {
    serde_json::from_str(&host.sh_ok(&format!("cat {CLOSED}"))).unwrap()
}

fn migration(fleet: &Fleet, action: &str, extra: &[&str]) -> (Value, bool) {
    let playbook = fleet.collection_playbook("migration.yml");
    let action = format!("ferry_migration_action={action}");
    let app = format!("ferry_migration_app={APP}");
    let id = format!("ferry_migration_id={ID}");
    let mut args = vec!["-e", &action, "-e", &app, "-e", &id];
    args.extend_from_slice(extra);
    fleet.playbook(&playbook, &args)
}

#[test]
fn four_hosts_one_fails_initialize_and_the_others_end_unlocked() {
    support::require_root();
    let started = Instant::now();
    let v110 = support::probe::agent("1.1.0");
    let repo = Repository::new("fleet-migration", &[&v110.deb, &v110.rpm]);
    let fleet = Fleet::boot_n(&repo, &["debian1", "rpm1", "debian2", BROKEN]);
    let (run, ok) = fleet.playbook("enroll.yml", &[]);
    assert!(ok, "enrolment failed:\n{}", failures(&run));
    eprintln!(
        "fleet_migration: four hosts enrolled after {:.0?}",
        started.elapsed()
    );

    // A stale migration of another id is open on rpm2: it refuses initialize.
    let broken = fleet.host(BROKEN);
    broken.sh_ok("install -d -m 0700 /var/lib/ferry/roboconf-agent");
    broken.write(
        OPEN,
        serde_json::json!({
            "format": "ferry-migration", "id": "mig-stale", "app": APP, "by": "bob",
            "reason": "left over", "package": AGENT_PACKAGE, "since": 1765115000u64,
            "from_version": "1.0.0", "from_schema": 1, "hold_before": null,
            "package_file": null, "package_file_note": null, "steps": [],
            "perform": [], "state": "open", "ended": null
        })
        .to_string(),
    );
    broken.sh_ok(&format!("chmod 0600 {OPEN}"));

    let (run, ok) = migration(&fleet, "initialize", &[]);
    assert!(!ok, "initialize succeeded with {BROKEN} refusing: {run:#}");
    let init = task_results(&run, "Initialize the migration");
    assert_eq!(init.len(), 4, "{run:#}");
    for (name, result) in &init {
        if *name == BROKEN {
            assert_eq!(result["failed"], true, "{name}: {result:#}");
            assert_eq!(result["rc"], 3, "{name}: {result:#}");
            assert!(
                result["msg"].as_str().unwrap().contains("mig-stale"),
                "{result:#}"
            );
        } else {
            assert_eq!(result["changed"], true, "{name}: {result:#}");
            assert_eq!(result["lock"]["id"], ID, "{name}: {result:#}");
            assert_eq!(result["held"], true, "{name}: {result:#}");
        }
    }
    let verdict = task_results(
        &run,
        "Fail the run, naming the hosts where initialize failed",
    );
    assert_eq!(verdict.len(), 4, "{run:#}");
    for (name, result) in &verdict {
        let msg = result["msg"].as_str().unwrap();
        assert!(
            result["failed"] == true && msg.contains(&format!("did not initialize on {BROKEN} ")),
            "{name}: {msg}"
        );
    }
    for (name, host) in &fleet.hosts {
        assert_eq!(lock(host), Value::Null, "{name}: the agent stayed locked");
        assert!(!held(host), "{name}: the package stayed held");
        if name == BROKEN {
            assert!(
                host.sh_ok(&format!("cat {OPEN}")).contains("mig-stale"),
                "{name}: the stale journal was touched"
            );
            assert!(host.sh(&format!("test ! -e {CLOSED}")).success(), "{name}");
        } else {
            let j = closed(host);
            assert_eq!(j["id"], ID, "{name}: {j:#}");
            assert_eq!(j["state"], "cancelled", "{name}: {j:#}");
            assert!(host.sh(&format!("test ! -e {OPEN}")).success(), "{name}");
        }
    }
    eprintln!(
        "fleet_migration: cancelled everywhere after {:.0?}",
        started.elapsed()
    );

    // Fixed: the stale migration cancelled on rpm2.
    broken.sh_ok("ferry migration --family dnf cancel");

    // Check mode predicts a change on all four and changes nothing.
    let (run, ok) = migration(&fleet, "initialize", &["--check"]);
    assert!(ok, "{}", failures(&run));
    for (name, result) in task_results(&run, "Initialize the migration") {
        assert_eq!(result["changed"], true, "{name}: {result:#}");
        assert_eq!(
            lock(fleet.host(name)),
            Value::Null,
            "{name}: check mode locked"
        );
    }

    let (run, ok) = migration(&fleet, "initialize", &[]);
    assert!(ok, "{}", failures(&run));
    for (name, host) in &fleet.hosts {
        assert_eq!(lock(host)["id"], ID, "{name}");
        assert_eq!(lock(host)["application"], APP, "{name}");
        assert!(held(host), "{name}: the package is not held");
    }
    let (run, ok) = migration(&fleet, "initialize", &[]);
    assert!(ok, "{}", failures(&run));
    for (name, _) in &fleet.hosts {
        assert_eq!(
            stats(&run, name)["changed"],
            0,
            "{name}: {:#}",
            run["stats"]
        );
    }

    // Perform back to 1.0.0, in batches of two: each host moves under its lock.
    for (name, host) in &fleet.hosts {
        assert_eq!(support::agent::version_running(host), "1.1.0", "{name}");
    }
    for round in 0..2 {
        let (run, ok) = migration(
            &fleet,
            "perform",
            &[
                "-e",
                "ferry_migration_to=1.0.0",
                "-e",
                "ferry_migration_serial=2",
            ],
        );
        assert!(ok, "{}", failures(&run));
        let performed = task_results(&run, "Perform the migration");
        assert_eq!(performed.len(), 4, "{run:#}");
        assert_eq!(
            run["plays"].as_array().map(Vec::len),
            Some(3),
            "two batches of the first play, then the second play: {run:#}"
        );
        for (name, result) in performed {
            assert_eq!(result["changed"], round == 0, "{name}: {result:#}");
            assert_eq!(result["migration"]["perform"][0]["to_version"], "1.0.0");
        }
    }
    for (name, host) in &fleet.hosts {
        assert_eq!(support::agent::version_running(host), "1.0.0", "{name}");
        assert_eq!(
            lock(host)["id"],
            ID,
            "{name}: the lock held through perform"
        );
        assert!(held(host), "{name}: the package is not held after perform");
    }

    for round in 0..2 {
        let (run, ok) = migration(&fleet, "complete", &[]);
        assert!(ok, "{}", failures(&run));
        for (name, result) in task_results(&run, "Complete or cancel the migration") {
            assert_eq!(result["changed"], round == 0, "{name}: {result:#}");
            assert_eq!(result["migration"]["state"], "done", "{name}: {result:#}");
            assert_eq!(result["lock"], Value::Null, "{name}: {result:#}");
        }
    }
    // Each host follows the channel, whose newest is 1.1.0: complete pinned
    // it to the version performed, so its own updater, run now, does not
    // undo the migration. The pin is in the record of holds, the
    // migration's hold is gone (on dnf the versionlock left is the pin's).
    for (name, host) in &fleet.hosts {
        assert_eq!(lock(host), Value::Null, "{name}");
        let j = closed(host);
        assert_eq!(
            (j["id"].as_str(), j["state"].as_str()),
            (Some(ID), Some("done")),
            "{name}"
        );
        let status = channel_status(host);
        assert_eq!(status["pinned"], "1.0.0-1", "{name}: {status:#}");
        let holds = status["holds"].as_array().unwrap();
        assert_eq!(holds.len(), 1, "{name}: {status:#}");
        assert_eq!(
            (holds[0]["kind"].as_str(), holds[0]["version"].as_str()),
            (Some("pin"), Some("1.0.0-1")),
            "{name}: {status:#}"
        );
        assert!(
            holds[0]["by"]
                .as_str()
                .unwrap()
                .contains(&format!("(ferry migration `{ID}` of application {APP})")),
            "{name}: {status:#}"
        );
        match host.kind() {
            HostKind::Debian => {
                assert!(!held(host), "{name}: the migration's hold stayed");
                host.sh_ok(
                    "rm -f /var/lib/apt/periodic/*; systemctl start apt-daily.service && \
                     systemctl start apt-daily-upgrade.service",
                );
            }
            HostKind::Rpm => {
                host.sh_ok(&format!(
                    "systemctl start ferry-{AGENT_PACKAGE}-automatic.service"
                ));
            }
        }
        assert_eq!(
            support::fleet::installed_version(host),
            "1.0.0-1",
            "{name}: the updater undid the migration"
        );
    }
    eprintln!("fleet_migration: done after {:.0?}", started.elapsed());
}
