//! First-boot enrolment with cloud-init (docs/CLOUD-INIT.md): a lab host
//! boots with cloud-init's NoCloud data source seeded with the document
//! `ferry enroll cloud-config` printed, while the repository is not there
//! yet; cloud-init's one attempt fails, the timer it left behind enrols the
//! VM once the repository appears, and then removes itself.
//!
//! Root is required (lab hosts, see docs/LAB.md); never skipped.

mod support;

use std::fs;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::agent::{version_running, AGENT};
use support::lab::{Host, HostKind};
use support::probe;
use support::repo::ferry_publish;
use support::signing::Signer;
use support::{run, Scratch};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// How long after the host starts booting the repository appears.
const UNREACHABLE_FOR: Duration = Duration::from_secs(20);
/// The timer's steps are 30 s, 2 and 5 minutes after boot, each up to 30 s
/// later at random: enrolled well within this.
const ENROLLED_WITHIN: Duration = Duration::from_secs(360);

/// Seeds cloud-init's NoCloud data source in the host's root and turns
/// cloud-init on (the lab's roots carry it disabled).
fn seed_cloud_init(host: &Host, user_data: &str) {
    fs::remove_file(host.path("/etc/cloud/cloud-init.disabled"))
        .expect("the lab root has cloud-init, disabled");
    host.write(
        "/etc/cloud/cloud.cfg.d/99-ferry-lab.cfg",
        "# The lab's hosts have no network to configure, the seed is local, and\n\
         # the root has no locale but C.UTF-8.\n\
         datasource_list: [NoCloud, None]\nnetwork: {config: disabled}\nlocale: C.UTF-8\n",
    );
    host.write(
        "/var/lib/cloud/seed/nocloud/meta-data",
        "instance-id: ferry-lab-enroll-1\nlocal-hostname: ferry-lab-enroll\n",
    );
    host.write("/var/lib/cloud/seed/nocloud/user-data", user_data);
}

/// Waits until the enrolment script is gone and its service is not running.
fn wait_enrolled(host: &Host, since: Instant) {
    loop {
        let gone = !host.path("/usr/local/sbin/ferry-enroll").exists();
        let state = host.sh("systemctl is-active ferry-enroll.service || true");
        if gone && state.stdout.trim() != "activating" {
            return;
        }
        if since.elapsed() > ENROLLED_WITHIN {
            panic!(
                "not enrolled {} s after boot:\n--- timers\n{}\n--- journal\n{}\n--- cloud-init\n{}",
                since.elapsed().as_secs(),
                host.sh("systemctl list-timers --all --no-pager").stdout,
                host.sh("journalctl --no-pager -o short-precise -u ferry-enroll.service")
                    .stdout,
                host.sh("tail -n 60 /var/log/cloud-init-output.log").stdout,
            );
        }
        sleep(Duration::from_secs(2));
    }
}

fn enrols_at_first_boot(kind: HostKind) {
    support::require_root();
    let agent = probe::agent("1.0.0");
    let cli = probe::ferry_cli("1.0.0");
    let signer = Signer::new("enroll");
    let fpr = signer.fingerprint().to_string();
    let scratch = Scratch::new("ferry-enroll");
    // One repository holding the agent and ferry, published beside the
    // directory the host sees and moved into it (one rename) 20 s after boot
    // began: until then file:///srv/lab/repo is missing, as an unreachable
    // repository is.
    let published = scratch.path().join("published");
    let served = scratch.path().join("served");
    fs::create_dir_all(&served).unwrap();
    ferry_publish(
        &signer,
        &published,
        "stable",
        &[&agent.deb, &agent.rpm, &cli.deb, &cli.rpm],
    );

    let mut generate = Command::new(FERRY);
    generate
        .args(["enroll", "cloud-config", "--repo", "file:///srv/lab/repo"])
        .arg("--key")
        .arg(published.join("signing-key.asc"))
        .args(["--fingerprint", &fpr, "--channel", "stable"])
        .args(["--window", "Mon..Fri 02:00-04:00"]);
    if kind == HostKind::Rpm {
        // The lab's RPM host is a Debian root with dnf: it has both.
        generate.args(["--family", "dnf"]);
    }
    let user_data = run(&mut generate);

    let mut host = Host::new(kind);
    host.bind_ro(&served, "/srv/lab");
    seed_cloud_init(&host, &user_data);
    let booted_at = Instant::now();
    // Boot waits for cloud-init's last stage, and so for the first attempt.
    assert_eq!(host.boot(), "running");
    let boot_took = booted_at.elapsed();
    let output_log = host.read("/var/log/cloud-init-output.log");
    assert!(
        output_log.contains("ferry-enroll: the first attempt failed"),
        "cloud-init's attempt did not fail while the repository was missing:\n{output_log}"
    );
    assert!(
        output_log.contains("ferry-enroll: not enrolled: could not install ferry from"),
        "{output_log}"
    );
    let status = host.sh_ok("cloud-init status --long");
    assert!(status.contains("status: done"), "{status}");
    assert!(
        host.path("/etc/systemd/system/timers.target.wants/ferry-enroll.timer")
            .exists(),
        "the timer was not left behind"
    );

    sleep(UNREACHABLE_FOR.saturating_sub(booted_at.elapsed()));
    fs::rename(&published, served.join("repo")).unwrap();
    let appeared = booted_at.elapsed();

    wait_enrolled(&host, booted_at);
    let enrolled = booted_at.elapsed();
    eprintln!(
        "{} host: booted (cloud-init done) after {boot_took:?}, repository there after \
         {appeared:?}, enrolled after {enrolled:?}",
        kind.name()
    );

    // The timer's service did it, and logged every attempt.
    let journal = host.sh_ok("journalctl --no-pager -o cat -u ferry-enroll.service");
    assert!(
        journal.contains("ferry-enroll: enrolled: roboconf-agent and ferry follow channel stable"),
        "{journal}"
    );
    // Gone: the units (the timer's link too), the script, its configuration.
    for gone in [
        "/usr/local/sbin/ferry-enroll",
        "/etc/systemd/system/ferry-enroll.service",
        "/etc/systemd/system/ferry-enroll.timer",
        "/etc/systemd/system/timers.target.wants/ferry-enroll.timer",
        "/etc/ferry/enroll",
        "/etc/apt/sources.list.d/ferry-enroll.sources",
        "/etc/apt/keyrings/ferry-enroll.asc",
        "/etc/yum.repos.d/ferry-enroll.repo",
    ] {
        assert!(!host.path(gone).exists(), "{gone} is left");
    }
    let timers = host.sh_ok("systemctl list-timers --all --no-pager");
    assert!(!timers.contains("ferry-enroll"), "{timers}");

    // Enrolled: both packages installed, the agent running and answering,
    // its channel followed (ferry's package comes through the same source).
    let (query, family) = match kind {
        HostKind::Debian => ("dpkg-query -W -f '${Version}\\n'", "apt"),
        HostKind::Rpm => ("rpm -q --qf '%{VERSION}-%{RELEASE}\\n'", "dnf"),
    };
    assert_eq!(
        host.sh_ok(&format!("{query} ferry {AGENT}")),
        "1.0.0-1\n1.0.0-1\n"
    );
    assert_eq!(
        host.sh("systemctl is-active roboconf-agent.service")
            .stdout
            .trim(),
        "active"
    );
    assert_eq!(version_running(&host), "1.0.0");
    let status: serde_json::Value = serde_json::from_str(
        &host.sh_ok(&format!("ferry channel --family {family} status --json")),
    )
    .expect("status JSON");
    assert_eq!(status["enabled"], true, "{status:#}");
    assert_eq!(status["channel"], "stable", "{status:#}");
    assert_eq!(status["repo"], "file:///srv/lab/repo", "{status:#}");
    assert_eq!(status["installed"], "1.0.0-1", "{status:#}");
    match kind {
        HostKind::Debian => {
            // One source now, ferry channel's: apt reads it cleanly.
            host.sh_ok("apt-get update --error-on=any");
            let timer = host.sh_ok("systemctl cat apt-daily-upgrade.timer");
            assert!(
                timer.contains("OnCalendar=Mon..Fri *-*-* 02:00:00"),
                "{timer}"
            );
        }
        HostKind::Rpm => {
            let timer = host.sh_ok("systemctl cat ferry-roboconf-agent-automatic.timer");
            assert!(
                timer.contains("OnCalendar=Mon..Fri *-*-* 02:00:00"),
                "{timer}"
            );
        }
    }
    host.poweroff();
}

#[test]
fn debian_vm_enrols_at_first_boot_though_the_repository_comes_late() {
    enrols_at_first_boot(HostKind::Debian);
}

#[test]
fn rpm_vm_enrols_at_first_boot_though_the_repository_comes_late() {
    enrols_at_first_boot(HostKind::Rpm);
}
