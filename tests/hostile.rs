//! The privilege boundary between root and the agent's user (issue #14),
//! end to end in booted lab hosts.
//!
//! Threat model: root and the package are trusted; the agent's user
//! (`roboconf-agent`) and everything it runs are not (its recipes' processes
//! live in the user's own systemd manager and outlive the agent, so they can
//! act at any moment, also while the agent is stopped). The maintainer
//! scripts and `/usr/libexec/roboconf-agent/ferry-hook` run as root inside
//! directories that user owns (`/var/lib/roboconf-agent`,
//! `/var/log/roboconf-agent`). Before each step, acting as that user
//! (`setpriv --reuid roboconf-agent`), a case plants objects there, then runs
//! the step as an admin would and checks that root did nothing for the
//! planter it would not do for itself.
//!
//! ## The matrix
//!
//! Two formats: the booted Debian host (apt-get, dpkg) and the booted RPM
//! host (dnf, rpm). Versions as tests/hooks.rs builds them: 1.1.0 (schema
//! 2), 1.2.0 (schema 3), and 1.3.0 (schema 3, its unit cannot start). The
//! test names end in the format; libtest runs them in name order, so with
//! two threads a Debian and an RPM case run side by side.
//!
//! | test (`…_debian`, `…_rpm`) | step | plants (as the agent's user) |
//! |---|---|---|
//! | `step1_upgrade_symlinks_newline_deep_tree` | 1.1.0 → 1.2.0, the new agent migrates 2 → 3 (the agent runs) | the "should complete" set (below) |
//! | `step1_upgrade_state_json_symlink` | the same, with the agent stopped beforehand | `state.json` → `/root/canary-state`, a root-only file that is a valid state (schema 2) holding a secret |
//! | `step1_upgrade_fifo` | the same (the agent runs) | a FIFO in the state directory |
//! | `step1_upgrade_sparse_100g_file` | the same | a 100 GiB sparse file (`truncate -s 100G`; twice the free space if that is more) |
//! | `step1_upgrade_dir_symlink_race` | the same | a directory mirroring `/root`'s names (empty files) and a symlink to `/root`, swapped atomically (renameat2 `RENAME_EXCHANGE`) as often as it can by a background process of the user for the whole step, stopped after it; 2000 small files of the agent's before them in the walk give it time to swap between the listing and the copy |
//! | `step2_downgrade_symlinks_newline_deep_tree` | 1.2.0 → 1.1.0, the outgoing agent migrates 3 → 2 | the "should complete" set |
//! | `step3_failed_upgrade_symlinks_newline_deep_tree` | 1.1.0 → 1.3.0: migrates 2 → 3, cannot start, restores the snapshot; then 1.1.0 again | the "should complete" set |
//! | `step4_restore_by_hand_symlinks_newline_deep_tree` | agent stopped: `ferry-hook snapshot restore NAME`, then (planted again) `ferry state restore NAME` | the "should complete" set |
//!
//! The "should complete" set (a step may still refuse it, naming a plant),
//! planted right before the step (the running agent rewrites none of it
//! while idle or quiesced): symlinks
//! `agent.lock` → `/root/canary-lock`, `.state.json.tmp` →
//! `/root/canary-tmp`, `upgrade-in-progress` → `/root/canary-marker`,
//! `last-stop.json` → `/var/lib/ferry/roboconf-agent/canary` in
//! `/var/lib/roboconf-agent`, and `upgrades.log` → `/etc/shadow` in
//! `/var/log/roboconf-agent` (the real log moved aside, put back after); a
//! file whose name holds a newline; a tree of directories 200 levels deep.
//! The `state.json` case stops the agent first: a running agent persists its
//! state when it stops for the upgrade, which replaces the link before root
//! reads it, while a planter running beside a stopped agent is never
//! overtaken.
//!
//! ## What every case asserts
//!
//! - **Canaries**: owner, mode and SHA-256 of `/etc/shadow`, of the 0600
//!   files `/root/canary-{lock,tmp,marker,race,state}` and of the 0600 file
//!   `/var/lib/ferry/roboconf-agent/canary`, taken before the plants and after
//!   the step, are equal. A change is reported with what the file now holds
//!   (the agent's PID, state JSON, ferry-hook's log lines).
//! - **Nothing blocked**: the step runs under `timeout 300` and must not be
//!   killed by it.
//! - **Outcome**, read from the package database, the marker and the
//!   upgrade record: *completed* (the incoming version is installed, no
//!   marker, no record; the agent answers with that version, with the
//!   instance tree made before the case, its recipe's file and the incoming
//!   schema), or *refused* (the outgoing version is still installed and,
//!   started again once the plants are gone, answers with its tree) or
//!   *failed* (the incoming version is installed but did not finish), the
//!   last two with output (the package manager's, or `upgrades.log` if it
//!   is still a file) that names a planted path (its full path, or its name
//!   inside the state directory; for `state.json` only the full path).
//!   Step 3 fails by design: there the failure may name the way out
//!   instead. Step 4: each command succeeds, or fails naming a plant.
//! - **Snapshots**: no file under `/var/lib/ferry/roboconf-agent/snapshots`
//!   holds a canary's unique text, and no regular file there has the content
//!   of a file outside the state directory (`/root`, `/etc/shadow`,
//!   `/etc/gshadow`, the ferry canary); nor do the agent's own directories
//!   hold a canary's text (root read something for the agent).
//! - **Recovery**: after the case (the plants removed, the previous version
//!   installed again if the step failed) the agent answers with its tree.
//!
//! Each case prints how long its step took (to stderr, also when it passes).
//! Hosts are shared between the cases of a format (one boot, one install,
//! one tree; a case installs the version it starts from, without plants, if
//! another is installed); a failed case drops its host, and the next one
//! boots afresh (about 15 s). Root is required.

#[path = "hostile/lab.rs"]
mod lab;
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::agent::{
    copy_package, deploy_tree, header, install, install_command, sorted_tree, version_running,
    wait_answering, AGENT, MARKER, RECORD, SNAPSHOTS, STATE, UPGRADE_LOG,
};
use support::lab::{Host, HostKind, Output};
use support::probe::{self, Variant};

/// The agent's user: the planter.
const USER: &str = "roboconf-agent";
const LOG_DIR: &str = "/var/log/roboconf-agent";
/// ferry's own directory for the package: root's, mode 0700.
const FERRY_DIR: &str = "/var/lib/ferry/roboconf-agent";
const HOOK: &str = "/usr/libexec/roboconf-agent/ferry-hook";
/// No step may take longer; `timeout` exits 124 (137 if it had to kill).
const STEP_TIMEOUT_SECS: u32 = 300;
/// The root-only file whose content is a valid state holding a secret.
const STATE_CANARY: &str = "/root/canary-state";
/// Where the race's background process writes its PID (root's /run).
const RACE_PID: &str = "/run/ferry-hostile-race.pid";
const RACE_SCRIPT: &str = "/usr/local/lib/ferry-hostile-race.pl";
/// Swaps `hostile-race` (a directory) and `hostile-race.swap` (a symlink to
/// /root) atomically, as often as it can, as the agent's user.
const RACE_PERL: &str = r#"chdir "/var/lib/roboconf-agent" or die "chdir: $!";
# Variables, not literals: syscall may write to its string arguments.
my ($dir, $link) = ("hostile-race", "hostile-race.swap");
while (1) {
    # renameat2 (316 on x86_64), AT_FDCWD, RENAME_EXCHANGE
    syscall(316, -100, $dir, -100, $link, 2) == 0 or die "renameat2: $!";
    select(undef, undef, undef, 0.00005);
}
"#;

#[derive(Clone, Copy, PartialEq)]
struct Version {
    semver: &'static str,
    schema: u32,
    variant: Variant,
}

const OLD: Version = Version {
    semver: "1.1.0",
    schema: 2,
    variant: Variant::Good,
};
const NEW: Version = Version {
    semver: "1.2.0",
    schema: 3,
    variant: Variant::Good,
};
/// Migrates up, then its unit cannot start: its health check fails.
const BROKEN: Version = Version {
    semver: "1.3.0",
    schema: 3,
    variant: Variant::Broken,
};

impl Version {
    fn package(&self, kind: HostKind) -> PathBuf {
        let built = probe::agent_variant(self.semver, self.schema, self.variant);
        match kind {
            HostKind::Debian => built.deb,
            HostKind::Rpm => built.rpm,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Step {
    Upgrade,
    Downgrade,
    FailedUpgrade,
    Restore,
}

impl Step {
    /// The installed version before the step, and the incoming one.
    fn versions(self) -> (Version, Version) {
        match self {
            Step::Upgrade => (OLD, NEW),
            Step::Downgrade => (NEW, OLD),
            Step::FailedUpgrade => (OLD, BROKEN),
            Step::Restore => unreachable!("a restore installs nothing"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Plants {
    /// The symlinks but `state.json`, a newline in a name, a deep tree.
    Survivable,
    StateJsonSymlink,
    Fifo,
    Sparse,
    Race,
}

/// What the outcome of a step says happened.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Outcome {
    Completed,
    Refused,
    Failed,
}

/// A root-only file that must not change, with the text only it holds.
struct Canary {
    path: String,
    /// None for /etc/shadow, whose content is not ours to choose.
    unique: Option<String>,
}

/// What is planted for one step: the paths an error may name.
struct Planted {
    needles: Vec<String>,
    race: bool,
}

/// A booted host with the agent installed and a tree deployed, shared by
/// the cases of its format.
struct Lab {
    host: Host,
    kind: HostKind,
    canaries: Vec<Canary>,
    /// The instance tree made at setup: every case must leave it intact.
    tree: Vec<(String, String, String)>,
}

static LABS: [Mutex<Option<Lab>>; 2] = [Mutex::new(None), Mutex::new(None)];

/// Runs `case` on the shared host of `kind`, booting it first if needed; a
/// case that panics takes its host along (it may have changed a canary or
/// left a package half-configured), so the next case boots a fresh one.
fn with_lab(kind: HostKind, case: impl FnOnce(&mut Lab)) {
    static AT_EXIT: Once = Once::new();
    // SAFETY: registers a plain extern "C" function, once.
    AT_EXIT.call_once(|| assert_eq!(unsafe { libc::atexit(drop_labs) }, 0));
    let slot = &LABS[kind as usize];
    let mut lab = slot.lock().unwrap_or_else(|e| e.into_inner());
    let result = catch_unwind(AssertUnwindSafe(|| {
        case(lab.get_or_insert_with(|| Lab::new(kind)))
    }));
    if let Err(panic) = result {
        let began = Instant::now();
        *lab = None;
        report(&format!(
            "{} host dropped in {:.1} s",
            kind.name(),
            began.elapsed().as_secs_f64()
        ));
        drop(lab);
        resume_unwind(panic);
    }
}

/// The shared hosts outlive the tests: at exit, each is dropped (its
/// container killed, its copy removed).
extern "C" fn drop_labs() {
    for slot in &LABS {
        let lab = match slot.lock() {
            Ok(mut lab) => lab.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(lab)));
    }
}

/// Printed whether the test passes or not (libtest captures `eprintln!`,
/// not writes to the stderr handle).
fn report(text: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let at = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    let _ = writeln!(std::io::stderr(), "hostile [{at:5.0}s]: {text}");
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// Runs a check that asserts; its failure becomes a finding, so a case
/// reports everything that went wrong, not only the first thing.
fn check(findings: &mut Vec<String>, what: &str, f: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        findings.push(format!("{what}: {}", panic_text(&*panic)));
    }
}

fn random_hex() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("a random UUID")
        .trim()
        .replace('-', "")
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The package step `step` with `plants`, then every check.
fn package_case(lab: &Lab, step: Step, plants: Plants, findings: &mut Vec<String>) -> String {
    let (from, to) = step.versions();
    let guest = copy_package(&lab.host, &to.package(lab.kind));
    let extra = match (lab.kind, step) {
        (HostKind::Debian, Step::Downgrade) => "--allow-downgrades",
        (HostKind::Debian, _) => "",
        (HostKind::Rpm, Step::Downgrade) => "downgrade",
        (HostKind::Rpm, _) => "install",
    };
    let before = lab.fingerprints();
    let mark = lab.log_mark();
    let planted = lab.plant(plants);
    let (out, took) = lab.timed(&install_command(&guest, extra));
    lab.stop_race(&planted);
    findings.extend(lab.canary_findings(&before));
    if matches!(out.code, 124 | 137) {
        findings.push(format!(
            "blocked: the step did not end within {STEP_TIMEOUT_SECS} s and was killed"
        ));
    }
    let said = lab.said(&out, mark);
    let names_plant = planted.needles.iter().any(|n| said.contains(n.as_str()));
    let (installed, finished) = lab.installed();
    let outcome = if installed == from.semver && finished {
        Outcome::Refused
    } else if installed == to.semver && finished && !lab.lexists(MARKER) && !lab.lexists(RECORD) {
        Outcome::Completed
    } else {
        Outcome::Failed
    };
    lab.unplant();
    match outcome {
        Outcome::Completed if step == Step::FailedUpgrade => findings.push(format!(
            "{} completed although its unit cannot start; it said, at the end:\n{}",
            to.semver,
            tail(&said, 30)
        )),
        Outcome::Completed => check(findings, "completed, but", || {
            lab.start_agent();
            assert_eq!(version_running(&lab.host), to.semver, "the version running");
            assert_eq!(sorted_tree(&lab.host), lab.tree, "the agent's tree");
            assert_eq!(header(&lab.host)["schema"], to.schema, "the state's schema");
        }),
        Outcome::Refused => {
            if !names_plant {
                findings.push(format!(
                    "refused without naming a planted path ({}); it said, at the end:\n{}",
                    planted.needles.join(", "),
                    tail(&said, 30)
                ));
            }
            // Started again if a plant (the lock, say) kept the agent from
            // coming back by itself: that is its own user's doing.
            check(findings, "refused, but", || {
                lab.start_agent();
                assert_eq!(
                    version_running(&lab.host),
                    from.semver,
                    "the version running"
                );
                assert_eq!(sorted_tree(&lab.host), lab.tree, "the agent's tree");
            });
        }
        Outcome::Failed => {
            // Step 3 fails by design; its failure may name the way out.
            let by_design = step == Step::FailedUpgrade
                && said.contains(&format!("Install {} again", from.semver));
            if !(names_plant || by_design) {
                findings.push(format!(
                    "failed (installed: {installed}) without naming a planted path ({}); it said, at the end:\n{}",
                    planted.needles.join(", "),
                    tail(&said, 30)
                ));
            }
        }
    }
    findings.extend(lab.snapshot_findings());
    let tool = match lab.kind {
        HostKind::Debian => "apt-get",
        HostKind::Rpm => "dnf",
    };
    format!(
        "{tool} {} -> {}: {outcome:?} in {:.1} s",
        from.semver,
        to.semver,
        took.as_secs_f64()
    )
}

/// The newest snapshot that verifies, that the installed agent can read,
/// and that no case planted anything in; made by a reinstall if none.
fn clean_snapshot(lab: &Lab) -> String {
    let pick = || {
        let (installed, _) = lab.installed();
        let schema = if installed == NEW.semver {
            NEW.schema
        } else {
            OLD.schema
        };
        let list = lab.host.sh_ok(&format!("{HOOK} snapshot list"));
        list.lines()
            .rev()
            .filter(|l| l.ends_with("\tok"))
            .filter_map(|l| {
                let mut fields = l.split('\t');
                let name = fields.next()?;
                let s: u32 = fields.nth(1)?.strip_prefix("schema ")?.parse().ok()?;
                (s <= schema).then(|| name.to_string())
            })
            .find(|name| {
                lab.host
                    .sh_ok(&format!(
                        "find {SNAPSHOTS}/{name}/data \\( -type l -o -name 'hostile*' \\) | head -n 1"
                    ))
                    .is_empty()
            })
    };
    if let Some(name) = pick() {
        return name;
    }
    let (installed, _) = lab.installed();
    lab.install_clean(if installed == NEW.semver { NEW } else { OLD });
    pick().expect("a reinstall takes a snapshot")
}

/// Step 4: both restore commands by hand, the agent stopped, each with the
/// plants made again.
fn restore_case(lab: &Lab, findings: &mut Vec<String>) -> String {
    let (installed, _) = lab.installed();
    let version = if installed == NEW.semver { NEW } else { OLD };
    lab.ready(version, true);
    let name = clean_snapshot(lab);
    lab.host.sh_ok(&format!("systemctl stop {AGENT}"));
    let mut timings = Vec::new();
    for command in [
        format!("{HOOK} snapshot restore {name}"),
        format!("/usr/local/bin/ferry state restore {name}"),
    ] {
        let before = lab.fingerprints();
        let mark = lab.log_mark();
        let planted = lab.plant(Plants::Survivable);
        let (out, took) = lab.timed(&command);
        findings.extend(lab.canary_findings(&before));
        if matches!(out.code, 124 | 137) {
            findings.push(format!(
                "blocked: `{command}` was killed after {STEP_TIMEOUT_SECS} s"
            ));
        }
        let said = lab.said(&out, mark);
        lab.unplant();
        let outcome = if out.success() {
            Outcome::Completed
        } else {
            if !planted.needles.iter().any(|n| said.contains(n.as_str())) {
                findings.push(format!(
                    "`{command}` failed without naming a planted path ({}); it said, at the end:\n{}",
                    planted.needles.join(", "),
                    tail(&said, 30)
                ));
            }
            Outcome::Refused
        };
        findings.extend(lab.snapshot_findings());
        timings.push(format!(
            "{}: {outcome:?} in {:.1} s",
            command
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            took.as_secs_f64()
        ));
    }
    check(findings, "after the restores", || {
        lab.start_agent();
        assert_eq!(version_running(&lab.host), version.semver);
    });
    timings.join("; ")
}

fn run(kind: HostKind, step: Step, plants: Plants) {
    report(&format!(
        "{} {step:?} with {plants:?}: starting",
        kind.name()
    ));
    with_lab(kind, |lab| {
        let title = format!("{} {step:?} with {plants:?}", kind.name());
        let began = Instant::now();
        let mut findings = Vec::new();
        let (previous, timing) = if step == Step::Restore {
            let (installed, _) = lab.installed();
            let previous = if installed == NEW.semver { NEW } else { OLD };
            (previous, restore_case(lab, &mut findings))
        } else {
            let (from, _) = step.versions();
            lab.ready(from, plants != Plants::StateJsonSymlink);
            (from, package_case(lab, step, plants, &mut findings))
        };
        if findings.is_empty() {
            // Step 3 is not done until the previous version runs again.
            lab.settle(previous);
        }
        report(&format!(
            "{title}: {timing} (case {:.1} s)",
            began.elapsed().as_secs_f64()
        ));
        assert!(
            findings.is_empty(),
            "{title}: {} finding(s):\n- {}",
            findings.len(),
            findings.join("\n- ")
        );
    });
}

macro_rules! cases {
    ($($name:ident: $kind:ident, $step:ident, $plants:ident;)*) => {
        $(
            #[test]
            fn $name() {
                run(HostKind::$kind, Step::$step, Plants::$plants);
            }
        )*
    };
}

cases! {
    step1_upgrade_dir_symlink_race_debian: Debian, Upgrade, Race;
    step1_upgrade_dir_symlink_race_rpm: Rpm, Upgrade, Race;
    step1_upgrade_fifo_debian: Debian, Upgrade, Fifo;
    step1_upgrade_fifo_rpm: Rpm, Upgrade, Fifo;
    step1_upgrade_sparse_100g_file_debian: Debian, Upgrade, Sparse;
    step1_upgrade_sparse_100g_file_rpm: Rpm, Upgrade, Sparse;
    step1_upgrade_state_json_symlink_debian: Debian, Upgrade, StateJsonSymlink;
    step1_upgrade_state_json_symlink_rpm: Rpm, Upgrade, StateJsonSymlink;
    step1_upgrade_symlinks_newline_deep_tree_debian: Debian, Upgrade, Survivable;
    step1_upgrade_symlinks_newline_deep_tree_rpm: Rpm, Upgrade, Survivable;
    step2_downgrade_symlinks_newline_deep_tree_debian: Debian, Downgrade, Survivable;
    step2_downgrade_symlinks_newline_deep_tree_rpm: Rpm, Downgrade, Survivable;
    step3_failed_upgrade_symlinks_newline_deep_tree_debian: Debian, FailedUpgrade, Survivable;
    step3_failed_upgrade_symlinks_newline_deep_tree_rpm: Rpm, FailedUpgrade, Survivable;
    step4_restore_by_hand_symlinks_newline_deep_tree_debian: Debian, Restore, Survivable;
    step4_restore_by_hand_symlinks_newline_deep_tree_rpm: Rpm, Restore, Survivable;
}
