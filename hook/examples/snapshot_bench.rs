//! Snapshot time against `cp -a` of the same tree (docs/BENCHMARKS.md, "Upgrades").
//!
//! cargo run --release -p ferry-hook --example snapshot_bench -- [DIR] [MiB…]
//!
//! For each size, builds a state-like tree under DIR (default /var/tmp): a
//! quarter of the bytes in 4 KiB files, the rest in 1 MiB files, then times
//! `ferry_hook::snapshot::create` (copy, checksum of every byte, manifest,
//! flushed to disk) against `cp -a` alone and `cp -a` followed by `sync -f`
//! (the same durability). Prints a Markdown table of medians and bests of
//! several rounds, and ratios; no assertion.
//!
//! What keeps the three comparable:
//! - Warm page cache for all (the trees were just written), and every tree
//!   flushed before any timing: `syncfs` flushes the whole filesystem, so an
//!   unflushed source or earlier copy would be charged to whoever syncs next.
//!   For the same reason each timed run is followed by an untimed `sync -f`.
//! - Nothing is deleted until the end, and the timing starts 6 minutes
//!   after the trees are built: ext4 without a journal (as on the VMs
//!   measured) skips inodes freed in the last 60 s (360 s while their inode
//!   table block is dirty) when it allocates one, scanning past each of them
//!   on every file created, which made whatever ran after a large `rm -rf`
//!   (an earlier run's cleanup) several times slower than the same run later.
//! - The three run in turn in each round, so a load change on this shared
//!   machine hits them alike, and the ratios are the medians of each
//!   round's ratio: a slow spell that lasts a round or longer (seen here:
//!   writing into the page cache ten times slower for a while) slows both
//!   sides of that round's ratio, where it would move one median alone.

// A benchmark driver: it builds and removes its own trees by path.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_hook::snapshot::{self, Label};

/// How long ext4 without a journal treats a freed inode as recently deleted
/// (fs/ext4/ialloc.c, `recently_deleted`), at most.
const SETTLE: Duration = Duration::from_secs(360);

fn make_tree(root: &Path, bytes: u64) {
    fs::create_dir_all(root.join("small")).unwrap();
    fs::create_dir_all(root.join("large")).unwrap();
    let small = vec![0x5a_u8; 4096];
    let large: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut left = bytes;
    let mut n = 0;
    while left > bytes * 3 / 4 && left >= 4096 {
        fs::write(root.join("small").join(format!("f{n}")), &small).unwrap();
        left -= 4096;
        n += 1;
    }
    n = 0;
    while left >= large.len() as u64 {
        fs::write(root.join("large").join(format!("f{n}")), &large).unwrap();
        left -= large.len() as u64;
        n += 1;
    }
    fs::write(root.join("rest"), vec![1_u8; left as usize]).unwrap();
}

fn sync(path: &Path) {
    let ok = Command::new("sync").arg("-f").arg(path).status().unwrap();
    assert!(ok.success(), "sync -f failed");
}

fn cp(source: &Path, target: &Path, and_sync: bool) -> Duration {
    let started = Instant::now();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(source)
        .arg(target)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a failed");
    if and_sync {
        sync(target);
    }
    started.elapsed()
}

fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| {
        a.partial_cmp(b)
            .expect("times and their ratios are not NaN")
    });
    values[values.len() / 2]
}

fn load() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Size {
    mib: u64,
    files: usize,
    rounds: usize,
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let base = if args.first().is_some_and(|a| a.starts_with('/')) {
        args.remove(0)
    } else {
        "/var/tmp".into()
    };
    let sizes: Vec<u64> = if args.is_empty() {
        vec![1, 16, 128, 1024]
    } else {
        args.iter()
            .map(|a| a.parse().expect("size in MiB"))
            .collect()
    };
    let work = Path::new(&base).join(format!("ferry-snapshot-bench-{}", std::process::id()));
    let sizes: Vec<Size> = sizes
        .into_iter()
        .map(|mib| {
            let source = work.join(mib.to_string()).join("state");
            make_tree(&source, mib * 1024 * 1024);
            let files = fs::read_dir(source.join("small")).unwrap().count()
                + fs::read_dir(source.join("large")).unwrap().count()
                + 1;
            // Small trees are quick and their times the noisiest: a few
            // milliseconds, where one disturbed round moves a median of 11.
            // At least 10 rounds everywhere: docs/BENCHMARKS.md reports
            // medians of 10 or more.
            let rounds = match mib {
                0..64 => 31,
                64..512 => 11,
                _ => 10,
            };
            Size { mib, files, rounds }
        })
        .collect();
    sync(&work);
    eprintln!(
        "trees written; waiting {} s before timing",
        SETTLE.as_secs()
    );
    std::thread::sleep(SETTLE);
    println!("load average before: {}", load());
    println!();
    println!("| tree | files | rounds | snapshot | cp -a | cp -a + sync -f | snapshot / cp -a | snapshot / (cp -a + sync -f) |");
    println!("|---|---|---|---|---|---|---|---|");
    let label = Label {
        package: "bench".into(),
        version: "1.0.0".into(),
        schema: Some(1),
        reason: "bench".into(),
    };
    for size in &sizes {
        let dir = work.join(size.mib.to_string());
        let source = dir.join("state");
        let (mut snap, mut copy, mut copy_sync) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..size.rounds {
            let started = Instant::now();
            snapshot::create(&source, &dir.join("snapshots"), &label, &[]).unwrap();
            snap.push(started.elapsed());
            sync(&dir);
            copy.push(cp(&source, &dir.join(format!("copy-{round}")), false));
            sync(&dir);
            copy_sync.push(cp(&source, &dir.join(format!("copy-sync-{round}")), true));
        }
        let cell = |times: &Vec<Duration>| {
            let best = times.iter().min().unwrap();
            format!(
                "{:.3} s ({:.3})",
                median(times.clone()).as_secs_f64(),
                best.as_secs_f64()
            )
        };
        let ratio = |a: &Vec<Duration>, b: &Vec<Duration>| {
            let rounds: Vec<f64> = a
                .iter()
                .zip(b)
                .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
                .collect();
            format!(
                "{:.2} ({:.2})",
                median(rounds),
                median(a.clone()).as_secs_f64() / median(b.clone()).as_secs_f64()
            )
        };
        println!(
            "| {} MiB | {} | {} | {} | {} | {} | {} | {} |",
            size.mib,
            size.files,
            size.rounds,
            cell(&snap),
            cell(&copy),
            cell(&copy_sync),
            ratio(&snap, &copy),
            ratio(&snap, &copy_sync)
        );
    }
    println!();
    println!("load average after: {}", load());
    println!(
        "times: median of the rounds (best in parentheses); ratios: median of the rounds' ratios (ratio of the medians)"
    );
    fs::remove_dir_all(&work).unwrap();
}
