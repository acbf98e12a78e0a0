//! The release candidate, installed the way a fleet gets it: from the
//! `candidate` channel of the repository `ci/release` publishes, on a
//! booted Debian host and a booted RPM host, with `ferry channel` and the
//! hosts' own package managers: ferry's channel for the agent serves ferry's
//! own package too (docs/FLEET.md). Root is required (see docs/LAB.md).
//!
//! `FERRY_TEST_REPO=DIR` names the repository to test (as `ci/release`
//! makes it) and `FERRY_TEST_REPO_FINGERPRINT` the key the hosts are told to
//! trust; without them the test publishes this build's packages into a
//! repository of its own, signed with a throwaway key. `ci/test` runs it through
//! `ci/release` (docs/TESTING.md).

mod support;

use std::path::PathBuf;
use std::process::Command;
use support::agent::{version_running, wait_answering, AGENT};
use support::lab::{Host, HostKind};
use support::probe;
use support::signing::Signer;
use support::{run, Scratch};

/// ferry's own package (pkg/ferry-cli.toml).
const FERRY: &str = "ferry";
/// Where the hosts see the repository.
const GUEST_REPOS: &str = "/srv/release";

/// The repositories under test and the fingerprint of their key; what the
/// test made itself lives as long as this does.
struct Release {
    repos: PathBuf,
    fingerprint: String,
    _made: Option<(Scratch, Signer)>,
}

impl Release {
    /// The repositories `FERRY_TEST_REPO` names, or new ones holding this
    /// build's packages.
    fn get() -> Release {
        match std::env::var_os("FERRY_TEST_REPO") {
            Some(repos) => {
                let fingerprint = std::env::var("FERRY_TEST_REPO_FINGERPRINT").expect(
                    "FERRY_TEST_REPO is set but FERRY_TEST_REPO_FINGERPRINT is not: \
                     set it to the full fingerprint of the repositories' signing key",
                );
                let repos = PathBuf::from(repos);
                let record = repos.join("ferry-repo.json");
                assert!(
                    record.is_file(),
                    "FERRY_TEST_REPO: {} is missing: name the repository ci/release made",
                    record.display()
                );
                Release {
                    repos,
                    fingerprint,
                    _made: None,
                }
            }
            None => Release::made(),
        }
    }

    fn made() -> Release {
        let agent = probe::agent("1.0.0");
        let ferry = probe::ferry_cli("1.0.0");
        let signer = Signer::new("release");
        let scratch = Scratch::new("ferry-release");
        run(Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["publish", "--channel", "candidate", "--repo"])
            .arg(scratch.path())
            .args(["--key", signer.fingerprint(), "--gnupghome"])
            .arg(signer.home())
            .args([&agent.deb, &agent.rpm, &ferry.deb, &ferry.rpm]));
        Release {
            repos: scratch.path().to_path_buf(),
            fingerprint: signer.fingerprint().to_string(),
            _made: Some((scratch, signer)),
        }
    }
}

/// `ferry channel … enable` for `package` on the candidate channel of the
/// repository, by the ferry program `ferry` of the host.
fn enable(host: &Host, ferry: &str, package: &str, fingerprint: &str) {
    let family = match host.kind() {
        HostKind::Debian => "apt",
        HostKind::Rpm => "dnf",
    };
    let out = host.sh_ok(&format!(
        "{ferry} channel --family {family} --package {package} enable \
         --repo file://{GUEST_REPOS} --key {GUEST_REPOS}/signing-key.asc \
         --fingerprint {fingerprint} --channel candidate"
    ));
    assert!(out.contains("enabled:"), "{out}");
}

/// Installs `package` from the repositories the host follows.
fn install(host: &Host, package: &str) {
    match host.kind() {
        HostKind::Debian => host.sh_ok(&format!(
            "apt-get update --error-on=any && apt-get install -y {package}"
        )),
        HostKind::Rpm => host.sh_ok(&format!("dnf -y install {package}")),
    };
}

/// `ferry channel status --json` of `package`: installed, and the newest
/// the channel offers.
fn assert_up_to_date(host: &Host, package: &str) -> String {
    let family = match host.kind() {
        HostKind::Debian => "apt",
        HostKind::Rpm => "dnf",
    };
    let status: serde_json::Value = serde_json::from_str(&host.sh_ok(&format!(
        "ferry channel --family {family} --package {package} status --json"
    )))
    .unwrap();
    let installed = status["installed"].as_str().unwrap_or_default().to_string();
    assert!(
        !installed.is_empty() && status["newest_available"] == installed.as_str(),
        "{package} in the {} host: {status:#}",
        host.kind().name()
    );
    installed
}

/// On a booted host: the test's ferry makes the host follow the agent's
/// candidate channel; ferry and the agent are installed from it; the
/// installed ferry reports the channel, and the agent runs and answers as
/// the version the channel offers.
fn candidate_on(kind: HostKind, release: &Release) {
    let mut host = Host::new(kind);
    host.bind_ro(&release.repos, GUEST_REPOS);
    assert_eq!(host.boot(), "running");
    host.copy_in(env!("CARGO_BIN_EXE_ferry"), "/root/ferry-bootstrap");
    enable(&host, "/root/ferry-bootstrap", AGENT, &release.fingerprint);
    host.sh_ok("rm /root/ferry-bootstrap");
    install(&host, FERRY);
    assert_eq!(
        host.sh_ok("command -v ferry && ferry --version"),
        format!("/usr/bin/ferry\nferry {}\n", env!("CARGO_PKG_VERSION"))
    );
    install(&host, AGENT);
    let installed = assert_up_to_date(&host, AGENT);
    let active = host.sh("systemctl is-active roboconf-agent.service");
    assert_eq!(
        active.stdout.trim(),
        "active",
        "{}",
        host.sh("journalctl --no-pager -o cat -n 30 -u roboconf-agent.service")
    );
    wait_answering(&host);
    let upstream = installed
        .rsplit_once('-')
        .map_or(installed.as_str(), |(v, _)| v);
    assert_eq!(version_running(&host), upstream);
    host.poweroff();
}

#[test]
fn release_candidate_installs_and_runs_on_debian_and_rpm_hosts() {
    support::require_root();
    let release = Release::get();
    eprintln!(
        "release candidate: {} (key {})",
        release.repos.display(),
        release.fingerprint
    );
    // Both hosts at once: each boots its own copy of its lab root.
    std::thread::scope(|s| {
        let rpm = s.spawn(|| candidate_on(HostKind::Rpm, &release));
        candidate_on(HostKind::Debian, &release);
        if let Err(panic) = rpm.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// `ci/release` itself: shellcheck clean (as `ci/test`, which runs it), its
/// exit statuses listed by `--help`, and missing inputs refused with status
/// 2 before anything is built.
#[test]
fn ci_release_is_shellcheck_clean_and_refuses_missing_inputs() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/release");
    let check = Command::new("shellcheck")
        .arg(script)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ci/test"))
        .output()
        .expect("shellcheck runs (ci/apt-packages.build)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let help = Command::new(script).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{text}");
    for status in [
        "  0  released",
        "  1  a step failed",
        "  2  usage",
        "  3  the candidate failed",
    ] {
        assert!(text.contains(status), "--help lacks {status:?}: {text}");
    }
    let gnupghome = Scratch::new("ferry-release-usage");
    for (args, message) in [
        (vec![], "--repo DIR is missing"),
        (vec!["--repo", "/nonexistent"], "--key KEYID is missing"),
        (
            vec!["--repo", "/nonexistent", "--key"],
            "--key needs a value",
        ),
        (
            vec![
                "--repo",
                "/nonexistent",
                "--key",
                "nobody@ferry.invalid",
                "--gnupghome",
            ],
            "--gnupghome needs a value",
        ),
        (vec!["--repos", "/nonexistent"], "unknown argument: --repos"),
    ] {
        let out = Command::new(script).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    let out = Command::new(script)
        .args([
            "--repo",
            "/nonexistent",
            "--key",
            "nobody@ferry.invalid",
            "--gnupghome",
        ])
        .arg(gnupghome.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no secret key nobody@ferry.invalid in") || err.contains("run as root"),
        "{err}"
    );
}
