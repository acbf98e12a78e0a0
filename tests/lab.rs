//! The lab's own tests: throwaway Debian and RPM hosts with real systemd
//! install from signed local repositories and take a newer version through
//! their automatic update services. Root is required (see docs/LAB.md).

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use support::agent::AGENT;

/// ferry's own package (pkg/ferry-cli.toml).
const FERRY: &str = "ferry";
use support::lab::{self, Host, HostKind};
use support::probe;
use support::repo::{AptRepo, RpmRepo};
use support::signing::Signer;
use support::Scratch;

fn deb_version(host: &Host, package: &str) -> String {
    host.sh_ok(&format!("dpkg-query -W -f '${{Version}}' {package}"))
}

fn rpm_version(host: &Host, package: &str) -> String {
    host.sh_ok(&format!(
        "rpm -q --qf '%{{VERSION}}-%{{RELEASE}}' {package}"
    ))
}

/// After the unattended updater installed the agent's `version`: its unit
/// runs and the agent answers as `version` (the hook's finish started it).
fn assert_agent_runs(host: &Host, version: &str) {
    let active = host.sh("systemctl is-active roboconf-agent.service");
    assert_eq!(
        active.stdout.trim(),
        "active",
        "in the {} host, roboconf-agent.service after the upgrade: {}",
        host.kind().name(),
        host.sh("journalctl --no-pager -o cat -n 30 -u roboconf-agent.service")
            .stdout
    );
    assert_eq!(support::agent::version_running(host), version);
}

/// Powers off and checks, independently of `poweroff`'s own check, that
/// nothing is left: no mount under the host's directory, no process.
fn power_off_clean(mut host: Host) {
    let dir = host.dir().to_path_buf();
    let ns = host.pid_namespace().expect("booted").to_string();
    let alive_at = lab::clock_ticks();
    host.poweroff();
    assert_eq!(
        lab::leftovers(&dir, Some(&ns), alive_at),
        Vec::<String>::new()
    );
    drop(host);
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// A package at two versions, as files, and what the package manager
/// reports for each once installed.
struct Upgrade<'a> {
    name: &'a str,
    old: &'a Path,
    old_version: &'a str,
    new: &'a Path,
    new_version: &'a str,
}

/// A booted Debian host installs `old` from a signed repository, then
/// unattended-upgrades, started the way its timers start it, installs `new`.
fn debian_unattended_upgrade(up: Upgrade) {
    let repo = AptRepo::new("lab");
    repo.publish(up.old);

    let mut host = Host::new(HostKind::Debian);
    repo.attach(&mut host);
    assert_eq!(host.boot(), "running");

    // Signature checking is on (Signed-By); --error-on=any turns every
    // warning, a bad signature included, into a failure (SPEC §5).
    host.sh_ok(&format!(
        "apt-get update --error-on=any && apt-get install -y {}",
        up.name
    ));
    assert_eq!(deb_version(&host, up.name), up.old_version);

    repo.publish(up.new);
    host.write(
        "/etc/apt/apt.conf.d/52ferry-lab-test",
        format!(
            "APT::Periodic::Update-Package-Lists \"1\";\n\
             APT::Periodic::Unattended-Upgrade \"always\";\n\
             Unattended-Upgrade::Origins-Pattern {{ \"origin={}\"; }};\n",
            repo.origin()
        ),
    );
    // The real path: the services the timers would start.
    host.sh_ok("systemctl start apt-daily.service && systemctl start apt-daily-upgrade.service");
    let log = host.sh("cat /var/log/unattended-upgrades/unattended-upgrades.log");
    let dpkg = host.sh("cat /var/log/unattended-upgrades/unattended-upgrades-dpkg.log");
    assert_eq!(
        deb_version(&host, up.name),
        up.new_version,
        "unattended-upgrades log: {log}\ndpkg log: {dpkg}"
    );
    assert!(
        log.stdout
            .contains(&format!("Packages that will be upgraded: {}", up.name)),
        "not upgraded by unattended-upgrades: {log}"
    );
    if up.name == AGENT {
        assert_agent_runs(&host, up.new_version.split('-').next().unwrap());
    }
    if up.name == FERRY {
        assert_ferry_runs(&host);
    }
    power_off_clean(host);
}

/// ferry's own package, as the updater left it: the program runs (it says
/// the version of the ferry that was built: the test packages it at made-up
/// versions to have an upgrade), and its manual pages and completions are
/// where man and the shells look.
fn assert_ferry_runs(host: &Host) {
    assert_eq!(
        host.sh_ok("ferry --version").trim(),
        format!("ferry {}", env!("CARGO_PKG_VERSION"))
    );
    host.sh_ok("ferry channel status --help >/dev/null");
    for file in [
        "/usr/share/man/man1/ferry.1.gz",
        "/usr/share/man/man1/ferry-channel-status.1.gz",
        "/usr/share/bash-completion/completions/ferry",
        "/usr/share/zsh/vendor-completions/_ferry",
        "/usr/share/fish/vendor_completions.d/ferry.fish",
    ] {
        assert!(
            host.path(file).is_file(),
            "{file} missing in the {} host",
            host.kind().name()
        );
    }
}

/// A booted RPM host installs `old` with dnf from a repository with package
/// and metadata signatures checked, then dnf-automatic's service installs `new`.
fn rpm_automatic_upgrade(up: Upgrade) {
    let repo = RpmRepo::new("lab");
    repo.publish(up.old);

    let mut host = Host::new(HostKind::Rpm);
    repo.attach(&mut host);
    assert_eq!(host.boot(), "running");

    host.sh_ok(&format!("dnf -y install {}", up.name));
    assert_eq!(rpm_version(&host, up.name), up.old_version);

    repo.publish(up.new);
    let journal = repo.automatic_run(&host);
    assert_eq!(
        rpm_version(&host, up.name),
        up.new_version,
        "dnf-automatic: {journal}"
    );
    if up.name == AGENT {
        assert_agent_runs(&host, up.new_version.split('-').next().unwrap());
    }
    if up.name == FERRY {
        assert_ferry_runs(&host);
    }
    power_off_clean(host);
}

#[test]
fn debian_host_installs_from_signed_repo_and_upgrades_unattended() {
    let pkgs = Scratch::new("ferry-lab-pkgs");
    debian_unattended_upgrade(Upgrade {
        name: probe::NAME,
        old: &probe::deb("1.0", pkgs.path()),
        old_version: "1.0",
        new: &probe::deb("1.1", pkgs.path()),
        new_version: "1.1",
    });
}

#[test]
fn rpm_host_installs_from_signed_repo_and_upgrades_with_dnf_automatic() {
    let pkgs = Scratch::new("ferry-lab-pkgs");
    rpm_automatic_upgrade(Upgrade {
        name: probe::NAME,
        old: &probe::rpm("1.0", pkgs.path()),
        old_version: "1.0-1",
        new: &probe::rpm("1.1", pkgs.path()),
        new_version: "1.1-1",
    });
}

/// The same with the reference agent's packages, made by `ferry build`.
#[test]
fn debian_host_upgrades_ferrys_agent_unattended() {
    debian_unattended_upgrade(Upgrade {
        name: AGENT,
        old: &probe::agent("1.0.0").deb,
        old_version: "1.0.0-1",
        new: &probe::agent("1.1.0").deb,
        new_version: "1.1.0-1",
    });
}

#[test]
fn rpm_host_upgrades_ferrys_agent_with_dnf_automatic() {
    rpm_automatic_upgrade(Upgrade {
        name: AGENT,
        old: &probe::agent("1.0.0").rpm,
        old_version: "1.0.0-1",
        new: &probe::agent("1.1.0").rpm,
        new_version: "1.1.0-1",
    });
}

#[test]
fn unbooted_hosts_run_package_managers_and_refuse_bad_signatures() {
    let pkgs = Scratch::new("ferry-lab-pkgs");
    let stranger = Signer::new("stranger");

    // Debian: dpkg in a chroot, and apt refuses a repository signed by a
    // key other than its Signed-By.
    let deb = probe::deb("1.0", pkgs.path());
    let repo = AptRepo::new("signed");
    repo.publish(&deb);
    let mut host = Host::new(HostKind::Debian);
    repo.attach(&mut host);
    host.copy_in(&deb, "/root/probe.deb");
    host.sh_ok("dpkg -i /root/probe.deb");
    assert!(!host.is_booted());
    assert_eq!(deb_version(&host, probe::NAME), "1.0");
    // The root is an ordinary directory on the machine running the tests.
    let version = host.root().join("usr/share/ferry-lab-probe/version");
    assert_eq!(std::fs::read_to_string(version).unwrap(), "1.0\n");
    let copied = pkgs.path().join("probe.log");
    host.copy_out("/var/log/ferry-lab-probe.log", &copied);
    assert!(std::fs::read_to_string(&copied)
        .unwrap()
        .contains("ferry-lab-probe 1.0 installed (configure"));
    host.sh_ok("apt-get update --error-on=any");
    host.write(&repo.keyring(), stranger.public_key());
    let out = host.sh("apt-get update --error-on=any");
    assert!(!out.success(), "apt accepted a wrong key: {out}");
    assert!(out.stderr.contains("NO_PUBKEY"), "{out}");

    // RPM: dnf installs a signed package from a signed repository; with the
    // wrong key imported it fails instead of skipping the repository.
    let rpm = probe::rpm("1.0", pkgs.path());
    let repo = RpmRepo::new("signed");
    repo.publish(&rpm);
    let mut host = Host::new(HostKind::Rpm);
    repo.attach(&mut host);
    host.sh_ok(&format!(
        "rpm -K {dir}/packages/ferry-lab-probe-1.0-1.noarch.rpm | grep -q 'digests signatures OK'",
        dir = "/srv/ferry-lab/signed"
    ));
    host.sh_ok("dnf -y install ferry-lab-probe");
    assert_eq!(rpm_version(&host, probe::NAME), "1.0-1");
    // Installed through the shim's /bin/sh: the %post scriptlet ran.
    assert!(host
        .read("/var/log/ferry-lab-probe.log")
        .contains("ferry-lab-probe 1.0 installed (1)"));
    host.sh_ok(
        "rpm -e ferry-lab-probe && rpm -e --allmatches gpg-pubkey && rm -rf /var/cache/dnf/*",
    );
    host.write(&repo.key_path(), stranger.public_key_armored());
    host.sh_ok(&format!("rpm --import {}", repo.key_path()));
    let out = host.sh("dnf -y install ferry-lab-probe");
    assert!(!out.success(), "dnf accepted a wrong key: {out}");
    assert!(
        out.stderr
            .contains("repomd.xml GPG signature verification error"),
        "{out}"
    );
    assert!(host.sh("rpm -q ferry-lab-probe").code != 0);
}

#[test]
fn a_booted_host_is_cleaned_up_when_its_test_panics() {
    let mut host = Host::new(HostKind::Debian);
    assert_eq!(host.boot(), "running");
    let dir = host.dir().to_path_buf();
    let ns = host.pid_namespace().expect("booted").to_string();
    // Something long-running, as a recipe would leave behind.
    host.sh_ok("systemd-run --unit=ferry-lab-sleeper sleep 1000");

    let alive_at = lab::clock_ticks();
    let result = catch_unwind(AssertUnwindSafe(move || {
        let _host = host;
        panic!("deliberate panic: the host must still be cleaned up");
    }));
    assert!(result.is_err());
    assert_eq!(
        lab::leftovers(&dir, Some(&ns), alive_at),
        Vec::<String>::new()
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// ferry itself, from its own package (pkg/ferry-cli.toml): installed from
/// the signed repository and upgraded by each host's unattended updater,
/// like the agent, with its manual pages and completions.
#[test]
fn debian_host_installs_and_upgrades_ferry_itself_unattended() {
    debian_unattended_upgrade(Upgrade {
        name: FERRY,
        old: &probe::ferry_cli("1.0.0").deb,
        old_version: "1.0.0-1",
        new: &probe::ferry_cli("1.1.0").deb,
        new_version: "1.1.0-1",
    });
}

#[test]
fn rpm_host_installs_and_upgrades_ferry_itself_with_dnf_automatic() {
    rpm_automatic_upgrade(Upgrade {
        name: FERRY,
        old: &probe::ferry_cli("1.0.0").rpm,
        old_version: "1.0.0-1",
        new: &probe::ferry_cli("1.1.0").rpm,
        new_version: "1.1.0-1",
    });
}
