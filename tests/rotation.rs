//! Rotating a repository's signing key across a fleet (docs/REPOSITORIES.md,
//! "Rotating the signing key"), on booted lab hosts whose unattended
//! updater follows a channel through `ferry channel`: the repository signed
//! by OLD, then by OLD and NEW while hosts are told to trust NEW, then by
//! NEW alone. A host told in time keeps taking new versions; a host never
//! told stops, and `ferry channel status` says why. Root is required (see
//! docs/LAB.md); what each test proves is listed in docs/CHANNEL.md.

mod support;

use std::path::Path;
use std::process::Command;
use support::lab::{Host, HostKind};
use support::probe;
use support::signing::Signer;
use support::{run, Scratch};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// `ferry publish` into the `stable` channel, signed by `keys` (in order:
/// the rpms by the first).
fn publish(signer: &Signer, repo: &Path, keys: &[&str], package: &Path) {
    let mut command = Command::new(FERRY);
    command
        .args(["publish", "--channel", "stable", "--repo"])
        .arg(repo)
        .arg("--gnupghome")
        .arg(signer.home());
    for key in keys {
        command.args(["--key", key]);
    }
    run(command.arg(package));
}

/// `ferry channel` with the family option the host needs (the RPM host
/// also has apt).
fn channel(host: &Host) -> &'static str {
    match host.kind() {
        HostKind::Debian => "ferry channel --package ferry-lab-probe",
        HostKind::Rpm => "ferry channel --family dnf --package ferry-lab-probe",
    }
}

fn enable_command(host: &Host, key: &str, fingerprint: &str) -> String {
    format!(
        "{} enable --repo file:///srv/repo --key {key} --fingerprint {fingerprint} --channel stable",
        channel(host)
    )
}

fn installed(host: &Host) -> String {
    match host.kind() {
        HostKind::Debian => host.sh_ok("dpkg-query -W -f '${Version}' ferry-lab-probe"),
        HostKind::Rpm => host.sh_ok("rpm -q --qf '%{VERSION}' ferry-lab-probe"),
    }
}

/// The automatic run, as the timers start it (apt's periodic stamps
/// removed: a day passed; dnf's cache age counts whole seconds). Whether
/// it worked is judged by what is installed.
fn automatic_run(host: &Host) {
    let out = match host.kind() {
        HostKind::Debian => host.sh(
            "rm -f /var/lib/apt/periodic/*; systemctl start apt-daily.service; \
             systemctl start apt-daily-upgrade.service",
        ),
        HostKind::Rpm => {
            std::thread::sleep(std::time::Duration::from_secs(1));
            host.sh("systemctl start ferry-ferry-lab-probe-automatic.service")
        }
    };
    eprintln!("automatic run in the {} host: {out}", host.kind().name());
}

fn status(host: &Host) -> serde_json::Value {
    let status =
        serde_json::from_str(&host.sh_ok(&format!("{} status --json", channel(host)))).unwrap();
    eprintln!("status in the {} host: {status:#}", host.kind().name());
    status
}

/// The primary fingerprints of the keys in the host's file `path` (none
/// when it is empty).
fn keys_in(host: &Host, path: &str) -> Vec<String> {
    host.sh_ok(&format!(
        "[ ! -s {path} ] || gpg --show-keys --with-colons {path}"
    ))
    .lines()
    .filter(|l| l.starts_with("fpr:"))
    .map(|l| l.split(':').nth(9).unwrap().to_string())
    .collect()
}

/// The fingerprints of the keys rpm's database holds.
fn rpm_keys(host: &Host) -> Vec<String> {
    let armored =
        host.sh_ok("! rpm -q gpg-pubkey >/dev/null || rpm -q gpg-pubkey --qf '%{DESCRIPTION}\\n'");
    if armored.trim().is_empty() {
        return Vec::new();
    }
    host.write("/root/rpm-keys.asc", armored);
    let mut keys = keys_in(host, "/root/rpm-keys.asc");
    keys.dedup();
    keys
}

/// A booted host following the repository's `stable` channel with OLD,
/// `ferry-lab-probe` 1.0 installed from it.
fn enrolled(kind: HostKind, repo: &Path, old: &str) -> Host {
    let mut host = Host::new(kind);
    host.bind_ro(repo, "/srv/repo");
    assert_eq!(host.boot(), "running");
    host.copy_in(FERRY, "/usr/local/sbin/ferry");
    let out = host.sh_ok(&enable_command(&host, "/srv/repo/signing-key.asc", old));
    assert!(out.contains("enabled:"), "{out}");
    match kind {
        HostKind::Debian => {
            host.sh_ok("apt-get update --error-on=any && apt-get install -y ferry-lab-probe")
        }
        HostKind::Rpm => host.sh_ok("dnf -y install ferry-lab-probe"),
    };
    assert_eq!(installed(&host), "1.0");
    host
}

/// The whole rotation on two hosts of one family: `told` is told to trust
/// NEW while the repository carries both signatures, `untold` never is.
fn rotation(kind: HostKind) {
    support::require_root();
    let scratch = Scratch::new("ferry-rotation");
    let packages = scratch.path().join("packages");
    std::fs::create_dir_all(&packages).unwrap();
    let package = |version: &str| match kind {
        HostKind::Debian => probe::deb(version, &packages),
        HostKind::Rpm => probe::rpm(version, &packages),
    };
    let signer = Signer::new("rotation-old");
    let old = signer.fingerprint().to_string();
    let new = signer.add_key("rotation-new");
    let repo = scratch.path().join("repo");

    // 1. The repository signed by OLD; both hosts enrolled with OLD.
    publish(&signer, &repo, &[&old], &package("1.0"));
    let told = enrolled(kind, &repo, &old);
    let untold = enrolled(kind, &repo, &old);
    if kind == HostKind::Rpm {
        assert_eq!(
            rpm_keys(&told),
            [old.as_str()],
            "enable imported OLD into rpm"
        );
    }

    // NEW is refused while the repository is signed by OLD alone: the
    // host would stop updating. Nothing changes.
    told.write("/root/new.asc", signer.gpg(&["--armor", "--export", &new]));
    let etc_listing = "find /etc -xdev -type f -exec sha256sum {} + | sort";
    let etc = told.sh_ok(etc_listing);
    let early = told.sh(&enable_command(&told, "/root/new.asc", &new));
    assert!(
        !early.success() && early.stderr.contains("is not signed by the checked key"),
        "{early}"
    );
    assert_eq!(
        told.sh_ok(etc_listing),
        etc,
        "a refused enable changed /etc"
    );

    // 2. Signed by OLD and NEW (rpms by OLD, which every host trusts);
    // `told` now trusts NEW, and a second enable changes nothing.
    publish(&signer, &repo, &[&old, &new], &package("1.1"));
    let enable_new = enable_command(&told, "/srv/repo/signing-key.asc", &new);
    let out = told.sh_ok(&enable_new);
    assert!(out.contains("enabled:"), "{out}");
    let again = told.sh_ok(&enable_new);
    assert!(again.contains("nothing to change"), "{again}");
    match kind {
        HostKind::Debian => assert_eq!(
            keys_in(&told, "/etc/apt/keyrings/ferry-ferry-lab-probe.asc"),
            [new.as_str()]
        ),
        HostKind::Rpm => {
            assert_eq!(
                keys_in(&told, "/etc/pki/rpm-gpg/ferry-ferry-lab-probe.asc"),
                [new.as_str()]
            );
            let mut expected = [old.clone(), new.clone()];
            expected.sort();
            let mut keys = rpm_keys(&told);
            keys.sort();
            assert_eq!(
                keys, expected,
                "rpm keeps OLD (the rpms signed by it) and adds NEW"
            );
        }
    }
    for host in [&told, &untold] {
        automatic_run(host);
        assert_eq!(installed(host), "1.1", "in the {} host", host.kind().name());
    }

    // 3. Signed by NEW alone: the told host still updates; the untold one
    // stops, and its status says why.
    publish(&signer, &repo, &[&new], &package("1.2"));
    for host in [&told, &untold] {
        automatic_run(host);
    }
    assert_eq!(installed(&told), "1.2", "the host that trusts NEW");
    let s = status(&told);
    assert!(
        s["repository_check"].as_str().unwrap().starts_with("ok"),
        "{s:#}"
    );
    assert_eq!(s["up_to_date"], true, "{s:#}");
    assert_eq!(installed(&untold), "1.1", "the host that trusts OLD alone");
    let s = status(&untold);
    assert!(
        s["repository_check"]
            .as_str()
            .unwrap()
            .contains("is not signed by the checked key"),
        "{s:#}"
    );
    assert_eq!(s["up_to_date"], false, "{s:#}");
    let why = s["not_updated_because"].to_string();
    assert!(
        why.contains("the repository failed its check") && !why.contains("no newer version"),
        "{s:#}"
    );

    // disable takes back every key ferry imported, the rotated one too.
    told.sh_ok(&format!("{} disable", channel(&told)));
    if kind == HostKind::Rpm {
        assert_eq!(
            rpm_keys(&told),
            Vec::<String>::new(),
            "disable left a key in rpm"
        );
    }
    for mut host in [told, untold] {
        host.poweroff();
    }
}

#[test]
fn debian_hosts_follow_a_key_rotation_and_an_untold_host_stops_saying_why() {
    rotation(HostKind::Debian);
}

#[test]
fn rpm_hosts_follow_a_key_rotation_and_an_untold_host_stops_saying_why() {
    rotation(HostKind::Rpm);
}
