//! End to end on booted lab hosts: `ferry migration` on one VM (issue #19,
//! docs/MIGRATION.md), with apt/unattended-upgrades and dnf/dnf-automatic.
//! The agent 1.0.0 is installed from a signed repository and holds a tree;
//! `initialize` is refused for another application, then takes the agent's
//! lock (a lifecycle instruction is refused, naming the migration), holds
//! the package, keeps its package file and writes the journal; a second
//! `initialize` with the same id changes nothing, another id is refused;
//! `ferry channel status` says why updates stopped; with 1.1.0 published,
//! the automatic updater leaves 1.0.0 installed. `complete` releases the
//! lock (lifecycle accepted again), the hold and the kept file, and closes
//! the journal; the next automatic run takes 1.1.0. Root is required.

mod support;

use std::path::Path;

use serde_json::Value;
use support::agent::{agent, deploy_tree, wait_answering, AGENT};
use support::lab::{Host, HostKind};
use support::probe;
use support::repo::{AptRepo, RpmRepo};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// The application in pkg/agent.toml.
const APPLICATION: &str = "my-application";
const ID: &str = "mig-lab";
const JOURNAL: &str = "/var/lib/ferry/roboconf-agent/migration.json";
const CLOSED: &str = "/var/lib/ferry/roboconf-agent/migration.done.json";

/// The host's package manager and its automatic updater.
trait Updater {
    /// `--family …` for ferry on this host.
    fn family(&self) -> &'static str;
    fn installed(&self, host: &Host) -> String;
    fn held(&self, host: &Host) -> bool;
    /// Publishes `package` and lets the automatic updater run once.
    fn publish_and_run(&self, host: &Host, package: &Path);
}

struct Apt(AptRepo);

impl Updater for Apt {
    fn family(&self) -> &'static str {
        "--family apt"
    }
    fn installed(&self, host: &Host) -> String {
        host.sh_ok(&format!("dpkg-query -W -f='${{Version}}' {AGENT}"))
    }
    fn held(&self, host: &Host) -> bool {
        host.sh_ok("apt-mark showhold").lines().any(|l| l == AGENT)
    }
    fn publish_and_run(&self, host: &Host, package: &Path) {
        self.0.publish(package);
        host.write(
            "/etc/apt/apt.conf.d/52ferry-lab-test",
            format!(
                "APT::Periodic::Update-Package-Lists \"1\";\n\
                 APT::Periodic::Unattended-Upgrade \"always\";\n\
                 Unattended-Upgrade::Origins-Pattern {{ \"origin={}\"; }};\n",
                self.0.origin()
            ),
        );
        host.sh_ok(
            "systemctl start apt-daily.service && systemctl start apt-daily-upgrade.service",
        );
        eprintln!(
            "unattended-upgrades: {}",
            host.sh("tail -n 12 /var/log/unattended-upgrades/unattended-upgrades.log")
                .stdout
        );
    }
}

struct Dnf(RpmRepo);

impl Updater for Dnf {
    fn family(&self) -> &'static str {
        "--family dnf"
    }
    fn installed(&self, host: &Host) -> String {
        host.sh_ok(&format!("rpm -q --qf '%{{VERSION}}-%{{RELEASE}}' {AGENT}"))
    }
    fn held(&self, host: &Host) -> bool {
        // `roboconf-agent-0:1.0.0-1.*`
        host.sh_ok("dnf -q versionlock list").lines().any(|l| {
            l.strip_prefix(&format!("{AGENT}-"))
                .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        })
    }
    fn publish_and_run(&self, host: &Host, package: &Path) {
        self.0.publish(package);
        eprintln!("dnf-automatic: {}", self.0.automatic_run(host));
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn migration_holds_the_agent(mut host: Host, updater: &dyn Updater, v110: &Path) {
    let family = updater.family();
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));
    host.copy_in(FERRY, "/usr/local/sbin/ferry");
    match host.kind() {
        HostKind::Debian => host.sh_ok(&format!(
            "apt-get update --error-on=any && apt-get install -y {AGENT}"
        )),
        HostKind::Rpm => host.sh_ok(&format!("dnf -y install {AGENT}")),
    };
    assert_eq!(updater.installed(&host), "1.0.0-1");
    wait_answering(&host);
    deploy_tree(&host);

    // The agent belongs to my-application: another is refused, nothing done.
    let out = host.sh(&format!(
        "ferry migration {family} initialize --app another-app --id {ID}"
    ));
    assert_eq!(out.code, 3, "{out}");
    assert!(
        out.stderr
            .contains("belongs to application \"my-application\""),
        "{out}"
    );
    assert!(!host.path(JOURNAL).exists() && !updater.held(&host));

    let initialize = format!(
        "ferry migration {family} initialize --app {APPLICATION} --id {ID} --by lab \
         --reason 'migration under test' --json"
    );
    let out = json(&host.sh_ok(&initialize));
    eprintln!("initialize: {out:#}");
    assert_eq!(
        out["journal"]["steps"],
        serde_json::json!(["lock", "hold", "keep-package"])
    );
    assert_eq!(out["journal"]["hold_before"], false);
    // Installed from the repository: its file is kept, root's only.
    let kept = out["journal"]["package_file"]
        .as_str()
        .unwrap_or_else(|| panic!("no package file kept: {out:#}"))
        .to_string();
    assert!(
        kept.starts_with("/var/lib/ferry/roboconf-agent/migration/"),
        "{kept}"
    );
    assert!(host.path(&kept).is_file());
    assert_eq!(
        host.sh_ok("stat -c %a:%U /var/lib/ferry/roboconf-agent/migration")
            .trim(),
        "700:root"
    );
    let journal = json(&host.read(JOURNAL));
    assert_eq!(
        (journal["id"].as_str(), journal["state"].as_str()),
        (Some(ID), Some("open"))
    );
    assert_eq!(host.sh_ok(&format!("stat -c %a {JOURNAL}")).trim(), "600");

    // The agent refuses a lifecycle instruction, naming the migration.
    let refused = host.sh(&format!("{AGENT} ctl apply stop /vm/app"));
    assert!(
        !refused.success() && refused.stderr.contains(&format!("migration lock `{ID}`")),
        "{refused}"
    );
    assert!(updater.held(&host), "the package is held");

    // The same id again changes nothing; another id is refused, naming it.
    let again = json(&host.sh_ok(&initialize));
    assert_eq!(again["did"], serde_json::json!([]), "{again:#}");
    assert_eq!(json(&host.read(JOURNAL)), journal);
    let other = host.sh(&format!(
        "ferry migration {family} initialize --app {APPLICATION} --id mig-other"
    ));
    assert!(
        other.code == 3
            && other
                .stderr
                .contains(&format!("another migration is open: `{ID}`")),
        "{other}"
    );

    let status = json(&host.sh_ok(&format!("ferry migration {family} status --json")));
    assert_eq!(status["agent_lock"]["id"], ID, "{status:#}");
    assert_eq!(status["held"], true);
    assert!(status["next"].as_str().unwrap().contains("complete"));
    let channel = json(&host.sh_ok(&format!("ferry channel {family} status --json")));
    assert_eq!(channel["held"], true, "{channel:#}");
    assert_eq!(
        channel["holds"],
        serde_json::json!([{
            "kind": "migration",
            "by": format!("lab (ferry migration `{ID}` of application {APPLICATION})"),
            "why": "migration under test",
            "since": journal["since"],
            "undo": "ferry migration complete, or cancel"
        }]),
        "the hold is the migration's, named with who and why: {channel:#}"
    );
    assert!(
        channel["not_updated_because"]
            .to_string()
            .contains(&format!(
                "held by lab (ferry migration `{ID}` of application {APPLICATION})"
            )),
        "{channel:#}"
    );

    // 1.1.0 published: the automatic updater leaves the held 1.0.0.
    updater.publish_and_run(&host, v110);
    assert_eq!(updater.installed(&host), "1.0.0-1", "the hold did not hold");

    // Complete: the lock, the hold and the kept file go; the journal closes.
    let done = json(&host.sh_ok(&format!("ferry migration {family} complete --json")));
    eprintln!("complete: {done:#}");
    assert_eq!(done["journal"]["state"], "done");
    assert!(!host.path(JOURNAL).exists() && !host.path(&kept).exists());
    assert_eq!(json(&host.read(CLOSED))["state"], "done");
    assert!(!updater.held(&host), "the hold is released");
    let channel = json(&host.sh_ok(&format!("ferry channel {family} status --json")));
    assert_eq!(channel["holds"], serde_json::json!([]), "{channel:#}");
    agent(&host, "ctl apply --wait 30 stop /vm/app");
    let twice = host.sh(&format!("ferry migration {family} complete"));
    assert!(
        twice.code == 3 && twice.stderr.contains("no migration"),
        "{twice}"
    );

    // The next automatic run takes 1.1.0.
    updater.publish_and_run(&host, v110);
    assert_eq!(
        updater.installed(&host),
        "1.1.0-1",
        "released, the updater upgrades"
    );
    host.poweroff();
}

#[test]
fn debian_migration_holds_the_agent_from_unattended_upgrades() {
    support::require_root();
    let repo = AptRepo::new("migration");
    repo.publish(&probe::agent("1.0.0").deb);
    let v110 = probe::agent("1.1.0").deb;
    let mut host = Host::new(HostKind::Debian);
    repo.attach(&mut host);
    migration_holds_the_agent(host, &Apt(repo), &v110);
}

#[test]
fn rpm_migration_holds_the_agent_from_dnf_automatic() {
    support::require_root();
    let repo = RpmRepo::new("migration");
    repo.publish(&probe::agent("1.0.0").rpm);
    let v110 = probe::agent("1.1.0").rpm;
    let mut host = Host::new(HostKind::Rpm);
    repo.attach(&mut host);
    migration_holds_the_agent(host, &Dnf(repo), &v110);
}
