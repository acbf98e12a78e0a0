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

impl Lab {
    fn new(kind: HostKind) -> Lab {
        let began = Instant::now();
        // Built before the host boots: once per test process.
        for v in [OLD, NEW, BROKEN] {
            v.package(kind);
        }
        let mut host = Host::new(kind);
        assert!(matches!(host.boot().as_str(), "running" | "degraded"));
        let first = if kind == HostKind::Rpm { "install" } else { "" };
        let out = install(&host, &OLD.package(kind), first);
        assert!(out.success(), "installing {}: {out}", OLD.semver);
        wait_answering(&host);
        deploy_tree(&host);
        host.copy_in(env!("CARGO_BIN_EXE_ferry"), "/usr/local/bin/ferry");
        host.write(RACE_SCRIPT, RACE_PERL);
        let mut lab = Lab {
            tree: sorted_tree(&host),
            host,
            kind,
            canaries: Vec::new(),
        };
        lab.make_canaries();
        report(&format!(
            "{} host booted, {} installed, tree deployed, canaries made in {:.1} s",
            kind.name(),
            OLD.semver,
            began.elapsed().as_secs_f64()
        ));
        lab
    }

    /// Root-only files with unique text, and a valid state holding a
    /// secret (component `VM-<unique>`) made from the agent's own.
    fn make_canaries(&mut self) {
        let h = &self.host;
        h.sh_ok(&format!(
            "[ -d {FERRY_DIR} ] || install -d -m 0700 {FERRY_DIR}"
        ));
        let mut canaries = vec![Canary {
            path: "/etc/shadow".into(),
            unique: None,
        }];
        let plain = ["lock", "tmp", "marker", "race"]
            .iter()
            .map(|n| format!("/root/canary-{n}"))
            .chain([format!("{FERRY_DIR}/canary")]);
        for path in plain {
            let unique = format!("ferry-hostile-canary-{}", random_hex());
            h.sh_ok(&format!(
                "umask 077; printf '%s\\n' {unique} > {path}; chmod 0600 {path}"
            ));
            canaries.push(Canary {
                path,
                unique: Some(unique),
            });
        }
        let secret = format!("VM-secret-{}", random_hex());
        let state = h.read(&format!("{STATE}/state.json"));
        let (head, payload) = state.split_once('\n').expect("a state header line");
        let secret_payload = payload.replacen(
            "\"component\": \"VM\"",
            &format!("\"component\": \"{secret}\""),
            1,
        );
        assert_ne!(secret_payload, payload, "the /vm instance in {payload}");
        let mut head: serde_json::Value = serde_json::from_str(head).unwrap();
        head["sha256"] = hex(&Sha256::digest(secret_payload.as_bytes())).into();
        h.write(STATE_CANARY, format!("{head}\n{secret_payload}"));
        h.sh_ok(&format!(
            "chmod 0600 {STATE_CANARY}
             mkdir -m 0700 /root/hostile-check
             cp {STATE_CANARY} /root/hostile-check/state.json
             {AGENT} --state-dir /root/hostile-check state check
             rm -r /root/hostile-check"
        ));
        canaries.push(Canary {
            path: STATE_CANARY.into(),
            unique: Some(secret),
        });
        self.canaries = canaries;
    }

    /// Each canary's type, owner, mode and SHA-256.
    fn fingerprints(&self) -> BTreeMap<String, String> {
        let paths: Vec<&str> = self.canaries.iter().map(|c| c.path.as_str()).collect();
        let out = self.host.sh_ok(&format!(
            "for f in {}; do
                if [ -e \"$f\" ] || [ -L \"$f\" ]; then
                    printf '%s\\t%s %s\\n' \"$f\" \"$(stat -c '%F %U:%G %a' \"$f\")\" \"$(sha256sum < \"$f\" | cut -c1-64)\"
                else
                    printf '%s\\tmissing\\n' \"$f\"
                fi
            done",
            paths.join(" ")
        ));
        out.lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(p, f)| (p.to_string(), f.to_string()))
            .collect()
    }

    /// What a changed canary holds now, in words.
    fn describe(&self, path: &str) -> String {
        let bytes = std::fs::read(self.host.path(path)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let mut said = Vec::new();
        let trimmed = text.trim();
        if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit()) {
            said.push(format!("now holds a PID ({trimmed}): the agent's lock"));
        }
        if text.contains("roboconf-agent-state") && path != STATE_CANARY {
            said.push("now holds the agent's state JSON".to_string());
        }
        if text.contains("ferry-hook[") {
            said.push("now holds ferry-hook's log lines".to_string());
        }
        if said.is_empty() && path != "/etc/shadow" {
            let head: String = text.chars().take(120).collect();
            said.push(format!("now begins {head:?}"));
        }
        said.join("; ")
    }

    fn canary_findings(&self, before: &BTreeMap<String, String>) -> Vec<String> {
        let after = self.fingerprints();
        before
            .iter()
            .filter(|(path, was)| after.get(*path) != Some(*was))
            .map(|(path, was)| {
                format!(
                    "canary {path} changed: [{was}] -> [{}]; {}",
                    after.get(path).map_or("gone", String::as_str),
                    self.describe(path)
                )
            })
            .collect()
    }

    /// Runs `script` as the agent's user (no new privileges, its groups).
    fn as_agent(&self, script: &str) -> String {
        self.host.sh_ok(&format!(
            "setpriv --reuid={USER} --regid={USER} --init-groups sh -ec {}",
            shell_quote(script)
        ))
    }

    fn plant(&self, plants: Plants) -> Planted {
        // The full path, or the name inside the state directory, but for
        // `state.json`, which many messages name for other reasons.
        let in_state = |name: &str| {
            let mut needles = vec![format!("{STATE}/{name}")];
            if name != "state.json" {
                needles.push(name.to_string());
            }
            needles
        };
        let mut needles = Vec::new();
        match plants {
            Plants::Survivable => {
                self.as_agent(&format!(
                    "cd {STATE}
                     ln -sfn /root/canary-lock agent.lock
                     ln -sfn /root/canary-tmp .state.json.tmp
                     ln -sfn /root/canary-marker upgrade-in-progress
                     ln -sfn {FERRY_DIR}/canary last-stop.json
                     : > 'hostile-new\nline'
                     d=hostile-deep; i=0
                     while [ $i -lt 200 ]; do d=$d/d; i=$((i + 1)); done
                     mkdir -p $d && echo deep > $d/leaf
                     cd {LOG_DIR}
                     if [ -f upgrades.log ] && [ ! -L upgrades.log ]; then mv upgrades.log upgrades.log.hostile-saved; fi
                     ln -sfn /etc/shadow upgrades.log"
                ));
                for name in [
                    "agent.lock",
                    ".state.json.tmp",
                    "upgrade-in-progress",
                    "last-stop.json",
                    "hostile-new",
                    "hostile-deep",
                ] {
                    needles.extend(in_state(name));
                }
                // Not the log: every failure's advice names it.
            }
            Plants::StateJsonSymlink => {
                self.as_agent(&format!(
                    "cd {STATE}
                     mv state.json hostile-saved-state.json
                     ln -s {STATE_CANARY} state.json"
                ));
                needles.extend(in_state("state.json"));
            }
            Plants::Fifo => {
                self.as_agent(&format!("mkfifo {STATE}/hostile-fifo"));
                needles.extend(in_state("hostile-fifo"));
            }
            Plants::Sparse => {
                // More than the free space (twice it when 100 GiB is not):
                // a copy must never be able to fill the disk.
                let free: u64 = self
                    .host
                    .sh_ok(&format!("df --output=avail -B1 {STATE} | tail -n 1"))
                    .trim()
                    .parse()
                    .expect("free bytes");
                let size = if free < 100 << 30 {
                    100 << 30
                } else {
                    2 * free
                };
                self.as_agent(&format!("truncate -s {size} {STATE}/hostile-sparse"));
                needles.extend(in_state("hostile-sparse"));
            }
            Plants::Race => {
                // The directory holds an empty file or directory for every
                // name under /root, so that whichever of the two a path
                // resolves through when root opens it, the open succeeds.
                // Before it in the walk, 2000 small files of the agent's:
                // copying them takes long enough for the swapper to run
                // between the walk that lists the race's files and the
                // threads that open them.
                let listing = self
                    .host
                    .sh_ok("cd /root && find . -mindepth 1 -printf '%y %P\\n'");
                let mut mirror = format!(
                    "cd {STATE}
                     mkdir hostile-bulk hostile-race
                     i=0; while [ $i -lt 2000 ]; do echo \"agent's own file $i\" > hostile-bulk/$i; i=$((i + 1)); done
                     ln -s /root hostile-race.swap
                     cd hostile-race\n"
                );
                for line in listing.lines() {
                    match line.split_once(' ') {
                        Some(("d", name)) => mirror += &format!("mkdir -p {}\n", shell_quote(name)),
                        Some(("f", name)) => mirror += &format!(": > {}\n", shell_quote(name)),
                        _ => {}
                    }
                }
                self.as_agent(&mirror);
                self.host.sh_ok(&format!(
                    "rm -f {RACE_PID}
                     setsid --fork sh -c 'echo $$ > {RACE_PID}; exec setpriv --reuid={USER} --regid={USER} --init-groups perl {RACE_SCRIPT}' </dev/null >/dev/null 2>&1
                     while [ ! -s {RACE_PID} ]; do sleep 0.01; done
                     sleep 0.2
                     kill -0 $(cat {RACE_PID})"
                ));
                needles.extend(in_state("hostile-race"));
            }
        }
        Planted {
            needles,
            race: plants == Plants::Race,
        }
    }

    /// Stops the race's process (by its PID) and waits until it is gone.
    fn stop_race(&self, planted: &Planted) {
        if planted.race {
            self.host.sh_ok(&format!(
                "pid=$(cat {RACE_PID}); kill $pid
                 while kill -0 $pid 2>/dev/null; do sleep 0.02; done
                 rm -f {RACE_PID}"
            ));
        }
    }

    /// Removes whatever a plant left, as root, never following a link; puts
    /// back the agent's state file and the upgrade log the plants moved.
    fn unplant(&self) {
        self.host.sh_ok(&format!(
            "cd {STATE}
             for f in agent.lock .state.json.tmp upgrade-in-progress last-stop.json state.json; do
                 if [ -L \"$f\" ]; then rm -f \"$f\"; fi
             done
             if [ -e hostile-saved-state.json ] && [ ! -e state.json ]; then mv hostile-saved-state.json state.json; fi
             rm -rf hostile-*
             cd {LOG_DIR}
             if [ -L upgrades.log ]; then rm -f upgrades.log; fi
             if [ -e upgrades.log.hostile-saved ]; then
                 if [ -f upgrades.log ]; then cat upgrades.log >> upgrades.log.hostile-saved; fi
                 mv -f upgrades.log.hostile-saved upgrades.log
             fi"
        ));
    }

    /// A path exists, a symlink counting as itself (the state and ferry
    /// directories are root's or the agent's, never links).
    fn lexists(&self, guest: &str) -> bool {
        std::fs::symlink_metadata(self.host.root().join(guest.trim_start_matches('/'))).is_ok()
    }

    /// The installed version and whether the package manager finished with
    /// it (dpkg's `installed`; rpm has no such state).
    fn installed(&self) -> (String, bool) {
        match self.kind {
            HostKind::Debian => {
                let out = self
                    .host
                    .sh("dpkg-query -W -f '${Version} ${db:Status-Status}' roboconf-agent");
                let (version, status) = out.stdout.split_once(' ').unwrap_or_default();
                let version = version.rsplit_once('-').map_or(version, |(v, _)| v);
                (version.to_string(), status == "installed")
            }
            HostKind::Rpm => {
                let out = self.host.sh("rpm -q --qf '%{VERSION}' roboconf-agent");
                (out.stdout.trim().to_string(), out.success())
            }
        }
    }

    /// Installed and finished, no marker, no upgrade record.
    fn healthy(&self) -> bool {
        self.installed().1 && !self.lexists(MARKER) && !self.lexists(RECORD)
    }

    /// Installs `v` without plants (a downgrade, an upgrade, a reinstall, or
    /// the way out of a failed step).
    fn install_clean(&self, v: Version) {
        let (installed, _) = self.installed();
        let extra = match self.kind {
            HostKind::Debian if installed == v.semver => "--reinstall",
            HostKind::Debian => "--allow-downgrades",
            HostKind::Rpm if installed == v.semver => "reinstall",
            HostKind::Rpm if installed.as_str() > v.semver => "downgrade",
            HostKind::Rpm => "install",
        };
        let out = install(&self.host, &v.package(self.kind), extra);
        assert!(
            out.success() && self.healthy() && self.installed().0 == v.semver,
            "installing {} (from {installed}) to set the case up: {out}",
            v.semver
        );
    }

    fn start_agent(&self) {
        self.host.sh_ok(&format!(
            "systemctl reset-failed {AGENT} || true; systemctl start {AGENT}"
        ));
        wait_answering(&self.host);
    }

    /// `v` installed and healthy, the agent running or stopped.
    fn ready(&self, v: Version, running: bool) {
        if !self.healthy() || self.installed().0 != v.semver {
            self.install_clean(v);
        }
        if running {
            self.start_agent();
            assert_eq!(version_running(&self.host), v.semver);
        } else {
            self.host.sh_ok(&format!("systemctl stop {AGENT}"));
        }
    }

    /// After a case: a healthy package (`previous` installed again if the
    /// step left it unfinished), the agent running with the tree of setup.
    fn settle(&self, previous: Version) {
        if !self.healthy() {
            self.install_clean(previous);
        }
        self.start_agent();
        assert_eq!(version_running(&self.host), self.installed().0);
        assert_eq!(sorted_tree(&self.host), self.tree, "the tree of setup");
        assert_eq!(
            self.host
                .read(&format!("{STATE}/work/vm/app/made-by-recipe")),
            "deployed\n"
        );
    }

    /// Runs `command` under `timeout` in the host; how long it took.
    fn timed(&self, command: &str) -> (Output, Duration) {
        let began = Instant::now();
        let out = self
            .host
            .sh(&format!("timeout -k 10 {STEP_TIMEOUT_SECS} {command}"));
        (out, began.elapsed())
    }

    /// Where the upgrade log is before a step: its inode and length, if it
    /// is a file.
    fn log_mark(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let log = self.host.root().join(UPGRADE_LOG.trim_start_matches('/'));
        std::fs::symlink_metadata(log)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| (m.ino(), m.len()))
    }

    /// What the step said: its output, and what the upgrade log gained
    /// since `mark` if it is still a file (all of it if it is another file:
    /// the plant moved the real one aside).
    fn said(&self, out: &Output, mark: Option<(u64, u64)>) -> String {
        let mut said = format!("{}\n{}", out.stdout, out.stderr);
        let from = match (mark, self.log_mark()) {
            (_, None) => return said,
            (Some((ino, len)), Some((now, _))) if ino == now => len as usize,
            _ => 0,
        };
        let log = std::fs::read(self.host.root().join(UPGRADE_LOG.trim_start_matches('/')))
            .unwrap_or_default();
        said.push_str(&String::from_utf8_lossy(
            log.get(from..).unwrap_or_default(),
        ));
        said
    }

    /// No snapshot and no directory of the agent holds a canary's text; no
    /// regular file in a snapshot has the content of a file outside the
    /// state directory.
    fn snapshot_findings(&self) -> Vec<String> {
        let mut findings = Vec::new();
        let patterns: Vec<String> = self
            .canaries
            .iter()
            .filter_map(|c| c.unique.as_ref())
            .map(|u| format!("-e {u}"))
            .collect();
        // -D skip: never open a FIFO; the sparse file is never read.
        let found = self.host.sh(&format!(
            "grep -rlF -D skip --exclude=hostile-sparse {} {SNAPSHOTS} {STATE} {LOG_DIR} 2>/dev/null || true",
            patterns.join(" ")
        ));
        for file in found.stdout.lines() {
            findings.push(format!(
                "{file} holds a canary's text: root copied a root-only file for the agent's user"
            ));
        }
        let hashes = |script: &str| -> BTreeMap<String, String> {
            self.host
                .sh(&format!("{script} 2>/dev/null || true"))
                .stdout
                .lines()
                .filter_map(|l| l.split_once("  "))
                .map(|(h, p)| (h.to_string(), p.to_string()))
                .collect()
        };
        let outside = hashes(&format!(
            "find /root /etc/shadow /etc/gshadow {FERRY_DIR}/canary -xdev -type f -size +0 -exec sha256sum {{}} +"
        ));
        let copies = hashes(&format!(
            "[ ! -d {SNAPSHOTS} ] || find {SNAPSHOTS} -path '*/data/*' -type f -size +0 ! -name hostile-sparse -exec sha256sum {{}} +"
        ));
        for (hash, copy) in &copies {
            if let Some(original) = outside.get(hash) {
                findings.push(format!(
                    "{copy} in a snapshot is a copy of {original}, outside the state directory"
                ));
            }
        }
        findings
    }
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
