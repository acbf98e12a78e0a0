//! `cargo bench --bench upgrade_gap` (as root; boots lab hosts, see
//! docs/LAB.md): how long the agent does not answer, and how long it takes
//! no new work, during an upgrade by `apt-get install` (Debian host) and
//! `dnf upgrade` (RPM host), side by side with a bare `systemctl restart` of
//! the same agent; and how the upgrade's time splits between ferry's hooks
//! and the package manager. Prints markdown for docs/BENCHMARKS.md.
//!
//! The agent is watched from outside the host: a thread connects to its
//! control socket (through /proc/PID/root of the host's init) every few
//! milliseconds and asks `status`. The gap is from the last answer of the
//! old process to the first answer of the new one; "no new work" starts at
//! the first answer that says `quiesced` (a restart has none: it is the gap).
//! The hooks' time is read from their log lines (millisecond stamps), one
//! span per ferry-hook process. The agent is socket-activated (pkg/), so a
//! request made while it is down waits instead of failing: the longest
//! wait of one request is reported beside the gap.
//!
//! The agent holds a real state: a deployed tree with a running instance,
//! and `FERRY_BENCH_STATE_MIB` MiB (default 100) in `FERRY_BENCH_STATE_FILES`
//! files (default 10 000) in the instance's work directory, which every
//! snapshot copies; `FERRY_BENCH_RUNS` runs each (default 10).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::agent::{log_len, log_since};
use support::client::{self, SOCKET};
use support::lab::{Host, HostKind};
use support::probe::{self, Variant};

const POLL: Duration = Duration::from_millis(5);
/// systemd refuses a sixth start within 10 s (StartLimitBurst): runs are
/// spaced so that no measured start is refused.
const PAUSE: Duration = Duration::from_millis(2500);

/// One answer to `status`, stamped in seconds since the UNIX epoch, and
/// how long its request waited for it.
struct Answer {
    at: f64,
    waited: f64,
    pid: u64,
    quiesced: bool,
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runs() -> usize {
    env_number("FERRY_BENCH_RUNS", 10)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn ask_status(socket: &Path) -> Option<(u64, bool)> {
    let v = client::ask(socket).ok()?;
    Some((v["pid"].as_u64()?, v["quiesced"].as_bool()?))
}

/// Watches the agent while `action` runs; returns the answers and the
/// action's own duration.
fn watch(socket: PathBuf, action: impl FnOnce()) -> (Vec<Answer>, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                if let Some((pid, quiesced)) = ask_status(&socket) {
                    answers.push(Answer {
                        at: unix_now(),
                        waited: asked.elapsed().as_secs_f64(),
                        pid,
                        quiesced,
                    });
                }
                thread::sleep(POLL);
            }
            answers
        })
    };
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    action();
    let took = started.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    (watcher.join().unwrap(), took)
}

/// The gap (old process's last answer to the new one's first) and the time
/// without new work (first quiesced answer, or the last answer, to the new
/// process's first answer).
fn gap_and_no_work(answers: &[Answer]) -> (f64, f64) {
    let old = answers.first().expect("the agent answered before").pid;
    let first_new = answers
        .iter()
        .position(|a| a.pid != old)
        .expect("a new agent process answered");
    let last_old = &answers[first_new - 1];
    let new_at = answers[first_new].at;
    let no_work_from = answers[..first_new]
        .iter()
        .find(|a| a.quiesced)
        .unwrap_or(last_old)
        .at;
    (new_at - last_old.at, new_at - no_work_from)
}

/// Seconds spent in ferry-hook processes, from the log lines added since
/// `from` bytes: per hook process, last stamp minus first.
fn hook_seconds(host: &Host, from: usize) -> f64 {
    let log = log_since(host, from);
    let mut spans: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for line in log.lines() {
        let mut words = line.split_whitespace();
        let (Some(stamp), Some(process)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(at) = stamp.parse::<f64>() else {
            continue;
        };
        let span = spans.entry(process).or_insert((at, at));
        span.1 = at;
    }
    spans.values().map(|(a, b)| b - a).sum()
}

#[derive(Default)]
struct Figures {
    gap: Vec<f64>,
    no_work: Vec<f64>,
    longest_wait: Vec<f64>,
    total: Vec<f64>,
    hooks: Vec<f64>,
}

impl Figures {
    fn add(&mut self, answers: &[Answer], took: f64, hooks: f64) {
        let (gap, no_work) = gap_and_no_work(answers);
        self.gap.push(gap);
        self.no_work.push(no_work);
        self.longest_wait
            .push(answers.iter().map(|a| a.waited).fold(0.0, f64::max));
        self.total.push(took);
        self.hooks.push(hooks);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn restarts(host: &Host) -> Figures {
    let mut f = Figures::default();
    for _ in 0..runs() {
        let (answers, took) = watch(host.live_path(SOCKET), || {
            host.sh_ok("systemctl restart roboconf-agent");
        });
        f.add(&answers, took, 0.0);
        thread::sleep(PAUSE);
    }
    f
}

/// `runs()` upgrades from `old` to `new` with `upgrade`, each followed by an
/// unmeasured way back with `back`.
fn upgrades(host: &Host, upgrade: &str, back: &str) -> Figures {
    let mut f = Figures::default();
    for _ in 0..runs() {
        let from = log_len(host);
        let (answers, took) = watch(host.live_path(SOCKET), || {
            host.sh_ok(upgrade);
        });
        f.add(&answers, took, hook_seconds(host, from));
        host.sh_ok(back);
        support::agent::wait_answering(host);
        thread::sleep(PAUSE);
    }
    f
}

fn row(what: &str, f: &Figures, restart: &Figures) {
    let hooks = median(&f.hooks);
    let manager = median(&f.total) - hooks;
    println!(
        "| {what} | {:.3} | {:.3} | {:.2} | {:.3} | {:.2} | {:.3} | {:.2} | {:.2} | {:.2} |",
        median(&f.gap),
        median(&f.no_work),
        median(&f.gap) / median(&restart.gap),
        median(&f.longest_wait),
        median(&f.longest_wait) / median(&restart.gap),
        median(&f.total),
        hooks,
        manager,
        if manager > 0.0 { hooks / manager } else { 0.0 },
    );
}

fn main() {
    support::require_root();
    let old = probe::agent_variant("1.0.0", 2, Variant::Good);
    let new = probe::agent_variant("1.1.0", 2, Variant::Good);
    let state_mib = env_number("FERRY_BENCH_STATE_MIB", 100);
    let state_files = env_number("FERRY_BENCH_STATE_FILES", 10_000);
    println!(
        "{} runs each, medians, seconds; state {state_mib} MiB in {state_files} files beside a deployed tree; load average before: {}",
        runs(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!();
    println!("| host: what | gap | no new work | gap / restart gap | longest wait | longest wait / restart gap | command time | in ferry's hooks | in the package manager | hooks / package manager |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut disk = Vec::new();
    for kind in [HostKind::Debian, HostKind::Rpm] {
        let mut host = Host::new(kind);
        host.boot();
        let (first, second, upgrade, back) = match kind {
            HostKind::Debian => (
                &old.deb,
                &new.deb,
                "apt-get install -y /root/new.deb",
                "apt-get install -y --allow-downgrades /root/old.deb",
            ),
            HostKind::Rpm => (
                &old.rpm,
                &new.rpm,
                "dnf -y upgrade /root/new.rpm",
                "dnf -y downgrade /root/old.rpm",
            ),
        };
        let ext = if kind == HostKind::Debian {
            "deb"
        } else {
            "rpm"
        };
        host.copy_in(first, &format!("/root/old.{ext}"));
        host.copy_in(second, &format!("/root/new.{ext}"));
        let install = if kind == HostKind::Debian {
            "apt-get install -y /root/old.deb"
        } else {
            "dnf -y install /root/old.rpm"
        };
        host.sh_ok(install);
        support::agent::wait_answering(&host);
        support::agent::deploy_tree(&host);
        fill_state(&host, state_mib, state_files);
        let restart = restarts(&host);
        row(
            &format!("{}: systemctl restart", kind.name()),
            &restart,
            &restart,
        );
        let upgraded = upgrades(&host, upgrade, back);
        let tool = if kind == HostKind::Debian {
            "apt-get install (upgrade)"
        } else {
            "dnf upgrade"
        };
        row(&format!("{}: {tool}", kind.name()), &upgraded, &restart);
        disk.push(format!(
            "{}: state {} MiB, snapshots {} MiB (keep_snapshots = 3, unchanged files linked)",
            kind.name(),
            du_mib(&host, support::agent::STATE),
            du_mib(&host, support::agent::SNAPSHOTS),
        ));
        host.poweroff();
    }
    println!();
    for line in disk {
        println!("{line}");
    }
}

/// `mib` MiB of random bytes in `files` files of the App instance's work
/// directory, written as the agent's user (as a recipe would).
fn fill_state(host: &Host, mib: usize, files: usize) {
    let bytes = mib << 20;
    host.sh_ok(&format!(
        "runuser -u roboconf-agent -- sh -c 'mkdir -p {state}/work/vm/app/data && cd {state}/work/vm/app/data \
         && head -c {bytes} /dev/urandom | split -a 5 -d -b {size} - part-'",
        state = support::agent::STATE,
        size = bytes.div_ceil(files.max(1)),
    ));
}

/// Disk used under `dir` in the host, in MiB (hard links counted once).
fn du_mib(host: &Host, dir: &str) -> String {
    host.sh_ok(&format!("du -s --block-size=1M {dir} | cut -f1"))
        .trim()
        .to_string()
}
