//! `ferry bench build`: ferry beside nfpm, cargo-deb and cargo-generate-rpm
//! on one payload, in one run, reported as ratios.
//!
//! The payload is generated from a fixed seed so every run and every
//! machine packs the same bytes: the agent binary, plus `size_mib` MiB made
//! of 40% binary-like data (the agent's own code, each copy with a seeded
//! fraction of its bytes changed so copies do not deduplicate), 40% text
//! (log-like lines over a fixed vocabulary) and 20% random bytes (assets
//! that are already compressed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::build::{self, BuildOptions, Profile};
use crate::plan::Format;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The agent binary at the core of the payload.
    pub agent: PathBuf,
    pub size_mib: usize,
    pub runs: usize,
    pub seed: u64,
    /// Scratch directory.
    pub work: PathBuf,
    /// Keep the scratch directory (payload and packages) for inspection.
    pub keep: bool,
}

/// One tool's measurement: best-of-runs time, and output size.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub tool: String,
    pub format: String,
    pub seconds: f64,
    pub bytes: u64,
}

/// Every measurement of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub payload_bytes: u64,
    pub cores: u32,
    pub runs: usize,
    pub measurements: Vec<Measurement>,
}

/// xorshift64*: tiny, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const WORDS: &[&str] = &[
    "instance",
    "deployed",
    "started",
    "stopped",
    "agent",
    "recipe",
    "queue",
    "message",
    "component",
    "application",
    "scoped",
    "path",
    "state",
    "schema",
    "upgrade",
    "vm",
    "ERROR",
    "INFO",
    "WARN",
    "DEBUG",
    "lifecycle",
    "undeploy",
    "waiting",
    "ancestor",
    "timeout",
    "snapshot",
    "restore",
    "checksum",
    "migration",
    "health",
    "socket",
    "control",
];

/// Writes the payload files into `dir` and returns their paths.
pub fn generate_payload(
    dir: &Path,
    agent: &[u8],
    size_mib: usize,
    seed: u64,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng(seed | 1);
    let mib = 1024 * 1024;
    let mut files = Vec::new();
    let mut write = |name: String, data: Vec<u8>| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
        Ok(())
    };
    let (binary, text) = (size_mib * 2 / 5, size_mib * 2 / 5);
    let random = size_mib - binary - text;
    for i in 0..binary {
        let mut data: Vec<u8> = agent.iter().copied().cycle().take(mib).collect();
        for _ in 0..mib / 64 {
            let at = (rng.next() % mib as u64) as usize;
            data[at] = rng.next() as u8;
        }
        write(format!("lib{i:02}.so"), data)?;
    }
    for i in 0..text {
        let mut data = String::with_capacity(mib + 200);
        while data.len() < mib {
            let _ = write!(
                data,
                "2026-11-{:02} {:05} ",
                rng.next() % 28 + 1,
                rng.next() % 100_000
            );
            for _ in 0..(rng.next() % 12 + 3) {
                data.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
                data.push(' ');
            }
            data.push('\n');
        }
        write(format!("log{i:02}.txt"), data.into_bytes())?;
    }
    for i in 0..random {
        let data = (0..mib / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        write(format!("blob{i:02}.bin"), data)?;
    }
    Ok(files)
}

/// Runs the whole comparison.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let agent = std::fs::read(&opts.agent).with_context(|| {
        format!(
            "reading the agent binary {}: build it first (ferry build)",
            opts.agent.display()
        )
    })?;
    let hook_beside_agent = opts.agent.with_file_name("ferry-hook");
    let hook = std::fs::canonicalize(&hook_beside_agent).with_context(|| {
        format!(
            "finding the upgrade hook {} (ferry build makes it)",
            hook_beside_agent.display()
        )
    })?;
    let _ = std::fs::remove_dir_all(&opts.work);
    let payload_dir = opts.work.join("payload");
    let mut payload = generate_payload(&payload_dir, &agent, opts.size_mib, opts.seed)?;
    let agent_copy = payload_dir.join(asset_name(&opts.agent));
    std::fs::write(&agent_copy, &agent)?;
    payload.push(agent_copy);
    let payload_bytes = payload
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    let mut measurements = Vec::new();
    for profile in [Profile::Fast, Profile::Small] {
        progress(&format!("ferry ({profile:?})"));
        measurements.extend(bench_ferry(opts, &payload, &hook, profile)?);
    }
    progress("nfpm");
    measurements.extend(bench_nfpm(opts, &payload)?);
    progress("cargo-deb and cargo-generate-rpm");
    measurements.extend(bench_cargo_tools(opts, &payload)?);
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&opts.work);
    }
    Ok(BenchReport {
        payload_bytes,
        cores: build::threads(),
        runs: opts.runs,
        measurements,
    })
}

/// The best of `runs` timings of `f`, which returns the output size.
fn best_of(runs: usize, mut f: impl FnMut() -> Result<u64>) -> Result<(Duration, u64)> {
    let mut best = Duration::MAX;
    let mut bytes = 0;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        bytes = f()?;
        best = best.min(start.elapsed());
    }
    Ok((best, bytes))
}

fn measurement(tool: &str, format: &str, (time, bytes): (Duration, u64)) -> Measurement {
    Measurement {
        tool: tool.into(),
        format: format.into(),
        seconds: time.as_secs_f64(),
        bytes,
    }
}

fn asset_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn bench_ferry(
    opts: &BenchOptions,
    payload: &[PathBuf],
    hook: &Path,
    profile: Profile,
) -> Result<Vec<Measurement>> {
    let dir = opts.work.join("ferry");
    std::fs::create_dir_all(&dir)?;
    let mut descriptor = String::from(concat!(
        "[package]\nname = \"bench-agent\"\nversion = \"1.0.0\"\n",
        "maintainer = \"Bench <bench@example.org>\"\nsummary = \"benchmark payload\"\n",
        "description = \"benchmark payload\"\nlicense = \"Apache-2.0\"\n",
        "[service]\nunit = \"bench-agent.service\"\nuser = \"bench\"\ngroup = \"bench\"\n",
        "[state]\nschema = 1\ndirectories = [\"/var/lib/bench-agent\"]\n",
    ));
    for p in payload {
        let _ = write!(
            descriptor,
            "[[asset]]\nsource = \"{}\"\ndest = \"/usr/lib/bench-agent/{}\"\nmode = \"0644\"\n",
            p.display(),
            asset_name(p)
        );
    }
    // Every ferry package carries the upgrade hook: the one built beside
    // the agent, driving the agent copy in the payload.
    let _ = write!(
        descriptor,
        "[hooks]\nagent = \"/usr/lib/bench-agent/{}\"\nprogram = \"{}\"\n",
        asset_name(&opts.agent),
        hook.display()
    );
    std::fs::write(dir.join("ferry.toml"), descriptor)?;
    std::fs::write(
        dir.join("bench-agent.service"),
        "[Service]\nUser=bench\nReadWritePaths=/var/lib/bench-agent\nExecStart=/bin/true\n",
    )?;
    let out = dir.join("out");
    let build_opts = |formats: Vec<Format>| BuildOptions {
        descriptor: dir.join("ferry.toml"),
        out: out.clone(),
        formats,
        version: None,
        profile,
        source_date: 1_700_000_000,
        run_build_command: false,
    };
    let label = format!("ferry {}", format!("{profile:?}").to_lowercase());
    let mut results = Vec::new();
    for (format, name) in [(Format::Deb, "deb"), (Format::Rpm, "rpm")] {
        let r = best_of(opts.runs, || {
            let a = build::build(&build_opts(vec![format]), &mut |_| {})?;
            Ok(a.iter().map(|a| a.bytes).sum())
        })?;
        results.push(measurement(&label, name, r));
    }
    let both = best_of(opts.runs, || {
        let a = build::build(&build_opts(vec![Format::Deb, Format::Rpm]), &mut |_| {})?;
        Ok(a.iter().map(|a| a.bytes).sum())
    })?;
    results.push(measurement(&label, "both", both));
    Ok(results)
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?}: is it installed? (ci/test installs it)"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The size of the single file in `dir` whose name ends with `suffix`.
fn output_size(dir: &Path, suffix: &str) -> Result<u64> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(suffix) {
            return Ok(std::fs::metadata(&path)?.len());
        }
    }
    bail!("no *{suffix} in {}", dir.display())
}

fn bench_nfpm(opts: &BenchOptions, payload: &[PathBuf]) -> Result<Vec<Measurement>> {
    let dir = opts.work.join("nfpm");
    std::fs::create_dir_all(&dir)?;
    let mut config = String::from(
        "name: bench-agent\narch: amd64\nversion: 1.0.0\nmaintainer: Bench <bench@example.org>\ndescription: benchmark payload\nlicense: Apache-2.0\ncontents:\n",
    );
    for p in payload {
        let _ = writeln!(
            config,
            "  - src: {}\n    dst: /usr/lib/bench-agent/{}",
            p.display(),
            asset_name(p)
        );
    }
    std::fs::write(dir.join("nfpm.yaml"), config)?;
    let mut results = Vec::new();
    for format in ["deb", "rpm"] {
        let out = dir.join(format);
        std::fs::create_dir_all(&out)?;
        let r = best_of(opts.runs, || {
            run_tool(
                Command::new("nfpm")
                    .args(["package", "-f"])
                    .arg(dir.join("nfpm.yaml"))
                    .args(["-p", format, "-t"])
                    .arg(&out),
            )?;
            output_size(&out, &format!(".{format}"))
        })?;
        results.push(measurement("nfpm", format, r));
    }
    Ok(results)
}

fn bench_cargo_tools(opts: &BenchOptions, payload: &[PathBuf]) -> Result<Vec<Measurement>> {
    let dir = opts.work.join("cargo");
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n")?;
    let mut deb_assets = String::new();
    let mut rpm_assets = String::new();
    for p in payload {
        let dest = format!("/usr/lib/bench-agent/{}", asset_name(p));
        let _ = writeln!(deb_assets, "  [\"{}\", \"{dest}\", \"644\"],", p.display());
        let _ = writeln!(
            rpm_assets,
            "  {{ source = \"{}\", dest = \"{dest}\", mode = \"644\" }},",
            p.display()
        );
    }
    let manifest = format!(
        "[package]\nname = \"bench-agent\"\nversion = \"1.0.0\"\nedition = \"2021\"\nlicense = \"Apache-2.0\"\ndescription = \"benchmark payload\"\nauthors = [\"Bench <bench@example.org>\"]\n\n[workspace]\n\n[package.metadata.deb]\nassets = [\n{deb_assets}]\n\n[package.metadata.generate-rpm]\nassets = [\n{rpm_assets}]\n"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    let deb_out = dir.join("target/debian");
    let rpm_out = dir.join("target/generate-rpm");
    let deb = best_of(opts.runs, || {
        run_tool(
            Command::new("cargo")
                .args(["deb", "--no-build", "--no-strip"])
                .current_dir(&dir),
        )?;
        output_size(&deb_out, ".deb")
    })?;
    let rpm = best_of(opts.runs, || {
        run_tool(
            Command::new("cargo")
                .args(["generate-rpm"])
                .current_dir(&dir),
        )?;
        output_size(&rpm_out, ".rpm")
    })?;
    Ok(vec![
        measurement("cargo-deb", "deb", deb),
        measurement("cargo-generate-rpm", "rpm", rpm),
    ])
}

impl BenchReport {
    fn get(&self, tool: &str, format: &str) -> Option<&Measurement> {
        self.measurements
            .iter()
            .find(|m| m.tool == tool && m.format == format)
    }

    /// The markdown table and the goal ratios.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Payload: {:.1} MiB, {} core(s), best of {} run(s).\n\n| tool | format | time (s) | size (MiB) |\n|---|---|---|---|\n",
            self.payload_bytes as f64 / 1048576.0,
            self.cores,
            self.runs
        );
        for m in &self.measurements {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.2} |",
                m.tool,
                m.format,
                m.seconds,
                m.bytes as f64 / 1048576.0
            );
        }
        s.push_str(&self.goals());
        s
    }

    fn goals(&self) -> String {
        let pair = |tool_deb: &str, tool_rpm: &str| -> Option<(f64, u64, u64)> {
            let d = self.get(tool_deb, "deb")?;
            let r = self.get(tool_rpm, "rpm")?;
            Some((d.seconds + r.seconds, d.bytes, r.bytes))
        };
        let mut s = String::from("\n| goal | ratio | target | met |\n|---|---|---|---|\n");
        let mut row = |name: &str, ratio: f64, target: f64| {
            let _ = writeln!(
                s,
                "| {name} | {ratio:.2} | ≤ {target:.2} | {} |",
                if ratio <= target { "yes" } else { "no" }
            );
        };
        if let (Some((nt, nd, nr)), Some(ff), Some(fd), Some(fr)) = (
            pair("nfpm", "nfpm"),
            self.get("ferry fast", "both"),
            self.get("ferry fast", "deb"),
            self.get("ferry fast", "rpm"),
        ) {
            row(
                "fast: time of both / nfpm's combined time",
                ff.seconds / nt,
                0.5,
            );
            row(
                "fast: deb size / nfpm deb size",
                fd.bytes as f64 / nd as f64,
                1.0,
            );
            row(
                "fast: rpm size / nfpm rpm size",
                fr.bytes as f64 / nr as f64,
                1.0,
            );
        }
        if let (Some((ct, cd, cr)), Some(sf), Some(sd), Some(sr)) = (
            pair("cargo-deb", "cargo-generate-rpm"),
            self.get("ferry small", "both"),
            self.get("ferry small", "deb"),
            self.get("ferry small", "rpm"),
        ) {
            row(
                "small: time of both / cargo-deb + cargo-generate-rpm",
                sf.seconds / ct,
                0.25,
            );
            row(
                "small: deb size / cargo-deb size",
                sd.bytes as f64 / cd as f64,
                1.0,
            );
            row(
                "small: rpm size / cargo-generate-rpm size",
                sr.bytes as f64 / cr as f64,
                1.0,
            );
        }
        s
    }
}
