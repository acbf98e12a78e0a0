//! `cargo bench --bench fleet` (as root; boots six lab hosts and needs the
//! pinned Ansible that ci/test installs, docs/FLEET.md): what the
//! `ferry.fleet` collection costs next to plain Ansible on the same six
//! hosts (three Debian, three RPM), in one run:
//!
//! - the rollout playbook (one `ferry_install` task per host: the metadata
//!   read again, the install through apt or dnf, the re-pin, the health)
//!   against a plain playbook that installs the same version with
//!   `ansible.builtin.apt` / `dnf`, both in batches of two and both moving
//!   every host from 1.0.0 to 1.1.0; between two timed moves the hosts are
//!   put back to 1.0.0, untimed (`ferry_channel: rollback_to`), and the
//!   order of the two sides alternates from run to run;
//! - one `ferry_info` task (and one with `channel: false`) against one
//!   `ansible.builtin.command: true` task on all six hosts (each task's own
//!   duration, from the JSON callback).
//!
//! Medians of `FERRY_BENCH_RUNS` runs per side (default 5); the single
//! tasks run five times per five runs. Prints markdown for
//! docs/BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fleet::{failures, Fleet, Repository};
use support::probe;

const PLAIN: &str = "- hosts: agents
  serial: 2
  gather_facts: false
  tasks:
    - name: Install the version (apt)
      ansible.builtin.apt:
        name: \"roboconf-agent={{ ferry_rollout_version }}*\"
        update_cache: true
        allow_downgrade: true
      when: lab_family == 'apt'
    - name: Install the version (dnf)
      ansible.builtin.dnf:
        name: \"roboconf-agent-{{ ferry_rollout_version }}\"
        update_cache: true
        allow_downgrade: true
        use_backend: dnf4
        disable_plugin: versionlock
      when: lab_family == 'dnf'
";

const RESET: &str = "- hosts: agents
  gather_facts: false
  tasks:
    - ferry.fleet.ferry_channel:
        rollback_to: 1.0.0
        family: \"{{ lab_family }}\"
";

/// Five of each task, interleaved, so neither side runs on a warmer host.
fn tasks_play() -> String {
    let mut play = String::from("- hosts: agents\n  gather_facts: false\n  tasks:\n");
    for _ in 0..5 {
        play += "    - name: \"ferry_info\"\n      ferry.fleet.ferry_info:\n        family: \"{{ lab_family }}\"\n";
        play += "    - name: \"command true\"\n      ansible.builtin.command: \"true\"\n      changed_when: false\n";
        play += "    - name: \"ferry_info channel false\"\n      ferry.fleet.ferry_info:\n        channel: false\n";
    }
    play
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A task's duration from the JSON callback's start and end stamps.
fn task_duration(task: &Value) -> Duration {
    let stamp = |key: &str| {
        let text = task["task"]["duration"][key].as_str().unwrap();
        // 2026-12-07T14:30:53.383560Z: seconds of the day are enough here.
        let time = &text[11..text.len() - 1];
        let mut parts = time.split(':');
        let h: f64 = parts.next().unwrap().parse().unwrap();
        let m: f64 = parts.next().unwrap().parse().unwrap();
        let s: f64 = parts.next().unwrap().parse().unwrap();
        h * 3600.0 + m * 60.0 + s
    };
    Duration::from_secs_f64((stamp("end") - stamp("start")).max(0.0))
}

fn timed(fleet: &Fleet, playbook: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    let (run, ok) = fleet.playbook(playbook, args);
    let took = started.elapsed();
    assert!(ok, "{playbook}: {}", failures(&run));
    took
}

fn main() {
    support::require_root();
    let runs: usize = std::env::var("FERRY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let v110 = probe::agent("1.1.0");
    let repo = Repository::new("fleet-bench", &[&v110.deb, &v110.rpm]);
    let fleet = Fleet::boot(&repo);
    for (name, text) in [("plain.yml", PLAIN), ("reset.yml", RESET)] {
        fs::write(fleet.dir.path().join(name), text).unwrap();
    }
    fs::write(fleet.dir.path().join("tasks.yml"), tasks_play()).unwrap();
    // Enrolled (the newest version, 1.1.0), then put back to 1.0.0 and
    // pinned there: the rollout refuses hosts whose updater would race it.
    timed(&fleet, "enroll.yml", &[]);
    timed(&fleet, "reset.yml", &[]);

    let rollout = fleet.rollout_playbook();
    let version = ["-e", "ferry_rollout_version=1.1.0"];
    let (mut ferry_side, mut plain_side) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for side in if run % 2 == 0 { [0, 1] } else { [1, 0] } {
            if side == 0 {
                ferry_side.push(timed(&fleet, &rollout, &version));
            } else {
                plain_side.push(timed(&fleet, "plain.yml", &version));
            }
            timed(&fleet, "reset.yml", &[]);
        }
        eprintln!(
            "fleet bench: run {}: rollout {:.1?}, plain {:.1?}",
            run + 1,
            ferry_side.last().unwrap(),
            plain_side.last().unwrap()
        );
    }

    let (mut info, mut truth, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs.div_ceil(5).max(1) {
        let (run, ok) = fleet.playbook("tasks.yml", &[]);
        assert!(ok, "{}", failures(&run));
        for task in run["plays"][0]["tasks"].as_array().unwrap() {
            match task["task"]["name"].as_str() {
                Some("ferry_info") => info.push(task_duration(task)),
                Some("command true") => truth.push(task_duration(task)),
                Some("ferry_info channel false") => alone.push(task_duration(task)),
                other => eprintln!("fleet bench: task {other:?} not counted"),
            }
        }
    }

    let ansible = std::process::Command::new(
        std::env::var("FERRY_ANSIBLE_VENV")
            .map(|v| format!("{v}/bin/ansible"))
            .unwrap_or_else(|_| "/var/cache/ferry-ansible/venv/bin/ansible".into()),
    )
    .arg("--version")
    .output()
    .map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })
    .unwrap_or_default();
    let (f, p) = (median(ferry_side.clone()), median(plain_side.clone()));
    let (i, t, a) = (
        median(info.clone()),
        median(truth.clone()),
        median(alone.clone()),
    );
    println!("{ansible}; six hosts (3 Debian, 3 RPM: Debian roots with Debian's rpm and dnf), batches of two");
    println!();
    println!("| | ferry.fleet | plain Ansible | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| rollout 1.0.0 → 1.1.0, six hosts (median of {}) | {:.1} s ({:.1} s per host) | {:.1} s ({:.1} s per host) | {:.2} | ≤ 1.5 |",
        ferry_side.len(),
        f.as_secs_f64(),
        f.as_secs_f64() / 6.0,
        p.as_secs_f64(),
        p.as_secs_f64() / 6.0,
        f.as_secs_f64() / p.as_secs_f64()
    );
    println!(
        "| one task on six hosts: `ferry_info` vs `command: true` (median of {}) | {:.2} s | {:.2} s | {:.2} | ≤ 1.2 |",
        info.len(),
        i.as_secs_f64(),
        t.as_secs_f64(),
        i.as_secs_f64() / t.as_secs_f64()
    );
    println!(
        "| one task on six hosts: `ferry_info` with `channel: false` vs `command: true` (median of {}) | {:.2} s | {:.2} s | {:.2} | |",
        alone.len(),
        a.as_secs_f64(),
        t.as_secs_f64(),
        a.as_secs_f64() / t.as_secs_f64()
    );
    eprintln!("rollout runs: {ferry_side:.1?}; plain runs: {plain_side:.1?}");
    eprintln!("ferry_info tasks: {info:.2?}; true tasks: {truth:.2?}");
    eprintln!("ferry_info channel: false tasks: {alone:.2?}");
}
