//! The Ansible collection (ansible/) driving six booted lab hosts, three
//! Debian and three RPM, from this machine: a pinned ansible-core
//! (ci/ansible-requirements.txt, installed by ci/test) reaching each host
//! through community.docker's nsenter connection. Enrolment, idempotence,
//! check and diff modes, a health-gated rollout in batches, and ferry_info
//! against what dpkg, rpm and the agent say. Root is required (docs/LAB.md).

mod support;

use std::fs;
use std::time::Instant;

use serde_json::Value;
use support::fleet::{
    etc_listing, failures, installed_version, stats, task_results, Fleet, Repository,
};
use support::lab::HostKind;
use support::probe;

/// The rollout playbook's one task that acts on a host.
const ROLLOUT_TASK: &str =
    "Install the version, re-pin a pinned host, refuse one whose updater would race the rollout";

#[test]
fn six_hosts_enrolled_idempotent_checked_and_rolled_out_in_health_gated_batches() {
    support::require_root();
    let started = Instant::now();
    let v110 = probe::agent("1.1.0");
    let repo = Repository::new("fleet", &[]);
    let fleet = Fleet::boot(&repo);
    eprintln!("fleet: six hosts booted after {:.0?}", started.elapsed());

    // Enrolment: ferry and the agent from the repository, the channel followed.
    let (run, ok) = fleet.playbook("enroll.yml", &[]);
    assert!(ok, "enrolment failed:\n{}", failures(&run));
    // The role told each host's family by probing it (the RPM hosts have
    // apt too, and Ansible's facts call them Debian).
    let decided = task_results(&run, "Decide the family");
    assert_eq!(decided.len(), 6, "{run:#}");
    for (name, result) in decided {
        let family = if name.starts_with("rpm") {
            "dnf"
        } else {
            "apt"
        };
        assert_eq!(
            result["ansible_facts"]["ferry_family"], family,
            "{name}: {result:#}"
        );
    }
    for (name, host) in &fleet.hosts {
        assert_eq!(installed_version(host), "1.0.0-1", "{name}");
        assert_eq!(support::agent::version_running(host), "1.0.0", "{name}");
        let status: Value = serde_json::from_str(&host.sh_ok(&format!(
            "ferry channel --family {} status --json",
            if host.kind() == HostKind::Rpm {
                "dnf"
            } else {
                "apt"
            }
        )))
        .unwrap();
        assert_eq!(status["enabled"], true, "{name}: {status:#}");
        assert_eq!(status["channel"], "stable", "{name}");
        assert!(
            host.sh("test ! -e /etc/apt/sources.list.d/ferry-bootstrap.sources && test ! -e /etc/yum.repos.d/ferry-bootstrap.repo").success(),
            "{name}: the bootstrap source was left behind"
        );
    }
    eprintln!("fleet: enrolled after {:.0?}", started.elapsed());

    // A second run changes nothing.
    let (run, ok) = fleet.playbook("enroll.yml", &[]);
    assert!(ok, "{}", failures(&run));
    for (name, _) in &fleet.hosts {
        assert_eq!(
            stats(&run, name)["changed"],
            0,
            "{name}: {:#}",
            run["stats"]
        );
    }

    // Check and diff modes on a changed window: the diff names the timer,
    // nothing on the hosts changes.
    let before: Vec<String> = fleet.hosts.iter().map(|(_, h)| etc_listing(h)).collect();
    let (run, ok) = fleet.playbook(
        "enroll.yml",
        &[
            "--check",
            "--diff",
            "-e",
            "ferry_window='Mon..Fri 02:00-04:00'",
        ],
    );
    assert!(ok, "{}", failures(&run));
    let results = task_results(&run, "Follow the channel");
    assert_eq!(results.len(), 6, "{run:#}");
    for (name, result) in results {
        assert_eq!(result["changed"], true, "{name}: {result:#}");
        let diff = result["diff"].to_string();
        assert!(
            diff.contains("Mon..Fri *-*-* 02:00:00"),
            "{name}: the diff does not show the window: {diff}"
        );
        assert_eq!(result["window"], "Mon..Fri 02:00-04:00", "{name}");
    }
    let after: Vec<String> = fleet.hosts.iter().map(|(_, h)| etc_listing(h)).collect();
    assert_eq!(before, after, "a check-mode run changed /etc");

    // The push path refuses a host whose updater follows the channel unpinned.
    repo.publish(&[&v110.deb, &v110.rpm]);
    let rollout = fleet.rollout_playbook();
    let (run, ok) = fleet.playbook(
        &rollout,
        &["--limit", "debian1", "-e", "ferry_rollout_version=1.1.0"],
    );
    assert!(!ok, "a racing host was rolled out: {run:#}");
    // Refused by ferry itself (`ferry channel install`, status 3), before
    // anything changed: the one task that acts is the one that refuses.
    let refusal = task_results(&run, ROLLOUT_TASK);
    assert_eq!(refusal.len(), 1, "{run:#}");
    assert_eq!(refusal[0].1["rc"], 3, "{refusal:?}");
    assert!(
        refusal[0].1["msg"]
            .as_str()
            .unwrap()
            .contains("without a pin"),
        "{refusal:?}"
    );
    assert_eq!(installed_version(fleet.host("debian1")), "1.0.0-1");

    // Pinned everywhere; debian2 made unhealthy (its agent stopped, so the
    // upgrade leaves it stopped): the rollout stops after the second batch.
    let pin = "- hosts: agents\n  gather_facts: false\n  tasks:\n    - ferry.fleet.ferry_channel:\n        pin: 1.0.0\n        family: \"{{ lab_family }}\"\n";
    fs::write(fleet.dir.path().join("pin.yml"), pin).unwrap();
    let (run, ok) = fleet.playbook("pin.yml", &[]);
    assert!(ok, "{}", failures(&run));
    fleet
        .host("debian2")
        .sh_ok("systemctl stop roboconf-agent.socket roboconf-agent.service");
    let (run, ok) = fleet.playbook(&rollout, &["-e", "ferry_rollout_version=1.1.0"]);
    assert!(
        !ok,
        "the rollout went on past an unhealthy host: {:#}",
        run["stats"]
    );
    for name in ["debian1", "rpm1", "debian2", "rpm2"] {
        assert_eq!(
            installed_version(fleet.host(name)),
            "1.1.0-1",
            "{name}: {}",
            failures(&run)
        );
    }
    for name in ["debian3", "rpm3"] {
        assert_eq!(
            installed_version(fleet.host(name)),
            "1.0.0-1",
            "{name} is in the batch after the unhealthy one"
        );
        assert!(
            stats(&run, name).is_null(),
            "{name} was touched: {:#}",
            run["stats"]
        );
    }
    let stopped = task_results(
        &run,
        "Stop the rollout unless the agent is healthy at the new version",
    );
    let (_, debian2) = stopped.iter().find(|(h, _)| *h == "debian2").unwrap();
    assert_eq!(debian2["failed"], true, "{debian2:#}");
    // The rolled-out hosts are pinned to the new version (their updaters
    // agree with the push), the untouched ones still to the old. The
    // status is asked without --family: ferry takes the family of its
    // channel record, as the rollout did (no family probe in it).
    for (name, pinned) in [
        ("debian1", "1.1.0-1"),
        ("rpm1", "1.1.0-1"),
        ("debian2", "1.1.0-1"),
        ("rpm2", "1.1.0-1"),
        ("debian3", "1.0.0-1"),
        ("rpm3", "1.0.0-1"),
    ] {
        let status: Value =
            serde_json::from_str(&fleet.host(name).sh_ok("ferry channel status --json")).unwrap();
        assert!(
            status["pinned"].as_str().unwrap().contains(pinned),
            "{name}: {status:#}"
        );
    }
    assert_eq!(
        task_results(&run, "ferry.fleet.enroll : Decide the family").len(),
        0,
        "the rollout probed the family again"
    );
    eprintln!("fleet: rolled out after {:.0?}", started.elapsed());

    // ferry_info tells the truth on each host; without the channel, the
    // same health and no channel.
    let info = "- hosts: agents\n  gather_facts: false\n  tasks:\n    - name: info\n      ferry.fleet.ferry_info:\n        family: \"{{ lab_family }}\"\n    - name: health\n      ferry.fleet.ferry_info:\n        channel: false\n";
    fs::write(fleet.dir.path().join("info.yml"), info).unwrap();
    let (run, ok) = fleet.playbook("info.yml", &["--check"]);
    assert!(ok, "{}", failures(&run));
    let health = task_results(&run, "health");
    assert_eq!(health.len(), 6, "{run:#}");
    for (name, result) in task_results(&run, "info") {
        let (_, alone) = health.iter().find(|(h, _)| *h == name).unwrap();
        assert!(alone["channel"].is_null(), "{name}: {alone:#}");
        for key in ["version", "healthy", "health", "schema"] {
            assert_eq!(alone[key], result[key], "{name}: {key}");
        }
        let host = fleet.host(name);
        let installed = installed_version(host);
        assert_eq!(
            format!("{}-1", result["version"].as_str().unwrap()),
            installed,
            "{name}"
        );
        assert_eq!(result["channel"]["installed"], installed.as_str(), "{name}");
        assert_eq!(result["changed"], false);
        let running = host.sh("systemctl is-active roboconf-agent.service").stdout;
        if name == "debian2" {
            assert_eq!(result["healthy"], false, "{name}: {result:#}");
            assert_eq!(running.trim(), "inactive");
        } else {
            assert_eq!(result["healthy"], true, "{name}: {result:#}");
            assert_eq!(
                result["agent"]["version"].as_str().unwrap(),
                support::agent::version_running(host),
                "{name}"
            );
        }
    }
    eprintln!("fleet: done after {:.0?}", started.elapsed());
}
