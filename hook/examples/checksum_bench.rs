//! Hashing speed of the two checksums a snapshot manifest can name
//! (docs/BENCHMARKS.md, "Snapshot time against `cp -a`").
//!
//! cargo run --release -p ferry-hook --example checksum_bench
//!
//! For inputs of the sizes a state holds (4 KiB, 64 KiB, 1 MiB), hashes
//! 256 MiB with SHA-256 (what format 1 used) and BLAKE3 (format 2), one
//! core each, and prints GB/s; no assertion.

// A benchmark driver: it builds and removes its own trees by path.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use sha2::Digest;

const TOTAL: usize = 256 << 20;

fn rate(elapsed: Duration) -> f64 {
    TOTAL as f64 / 1e9 / elapsed.as_secs_f64()
}

fn time(input: &[u8], hash: impl Fn(&[u8])) -> Duration {
    let started = Instant::now();
    for _ in 0..TOTAL / input.len() {
        hash(black_box(input));
    }
    started.elapsed()
}

fn main() {
    println!("| input | SHA-256 | BLAKE3 | BLAKE3 / SHA-256 |");
    println!("|---|---|---|---|");
    for size in [4 << 10, 64 << 10, 1 << 20] {
        let input: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let sha256 = time(&input, |b| {
            black_box(sha2::Sha256::digest(b));
        });
        let blake3 = time(&input, |b| {
            black_box(blake3::hash(b));
        });
        println!(
            "| {} KiB | {:.2} GB/s | {:.2} GB/s | {:.1} × |",
            size >> 10,
            rate(sha256),
            rate(blake3),
            sha256.as_secs_f64() / blake3.as_secs_f64()
        );
    }
}
