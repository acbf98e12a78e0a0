//! Snapshot time against `cp -a` of the same tree (docs/BENCHMARKS.md, "Upgrades").
//!
//! cargo run --release -p ferry-hook --example snapshot_bench -- [DIR] [MiB…]
//!
//! For each size, builds a state-like tree under DIR (default /var/tmp): a
//! quarter of the bytes in 4 KiB files, the rest in 1 MiB files, then times
//! `ferry_hook::snapshot::create` (copy, sha256 of every byte, manifest,
//! one syncfs) against `cp -a` alone and `cp -a` followed by `sync -f` (the
//! same durability). Warm page cache for all three: the tree was just
//! written. Prints a Markdown table; no assertion.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_hook::snapshot::{self, Label};

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

fn best_of<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn cp(source: &Path, target: &Path, sync: bool) -> Duration {
    let _ = fs::remove_dir_all(target);
    let started = Instant::now();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(source)
        .arg(target)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a failed");
    if sync {
        let ok = Command::new("sync").arg("-f").arg(target).status().unwrap();
        assert!(ok.success());
    }
    let took = started.elapsed();
    fs::remove_dir_all(target).unwrap();
    took
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
    println!("| tree | files | snapshot | cp -a | cp -a + sync -f | snapshot / cp -a | snapshot / (cp -a + sync) |");
    println!("|---|---|---|---|---|---|---|");
    for mib in sizes {
        let source = work.join("state");
        make_tree(&source, mib * 1024 * 1024);
        let files = fs::read_dir(source.join("small")).unwrap().count()
            + fs::read_dir(source.join("large")).unwrap().count()
            + 1;
        let runs = if mib >= 512 { 1 } else { 3 };
        let label = Label {
            package: "bench".into(),
            version: "1.0.0".into(),
            schema: Some(1),
            reason: "bench".into(),
        };
        let snapshots = work.join("snapshots");
        let snap = best_of(runs, || {
            let started = Instant::now();
            let s = snapshot::create(&source, &snapshots, &label, &[]).unwrap();
            let took = started.elapsed();
            fs::remove_dir_all(&s.path).unwrap();
            took
        });
        let copy = best_of(runs, || cp(&source, &work.join("copy"), false));
        let copy_sync = best_of(runs, || cp(&source, &work.join("copy"), true));
        println!(
            "| {mib} MiB | {files} | {:.3} s | {:.3} s | {:.3} s | {:.2} | {:.2} |",
            snap.as_secs_f64(),
            copy.as_secs_f64(),
            copy_sync.as_secs_f64(),
            snap.as_secs_f64() / copy.as_secs_f64(),
            snap.as_secs_f64() / copy_sync.as_secs_f64()
        );
        fs::remove_dir_all(&work).unwrap();
    }
}
