//! `ferry bench build`: ferry beside nfpm, cargo-deb and cargo-generate-rpm
//! on each payload of a corpus of real files (`corpus`), every tool in the
//! same run, medians of several runs, reported as ratios with the tools'
//! versions.
//!
//! The generated payload of earlier measurements is still available: made
//! from a fixed seed so every run and every machine packs the same bytes,
//! the agent binary plus `size_mib` MiB of 40% binary-like data (the
//! agent's own code, each copy with a seeded fraction of its bytes changed
//! so copies do not deduplicate), 40% text (log-like lines over a fixed
//! vocabulary) and 20% random bytes (assets that are already compressed).

pub mod corpus;

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::build::{self, Profile};
pub use corpus::Payload;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The agent binary at the core of every payload (the upgrade hook is
    /// read beside it).
    pub agent: PathBuf,
    /// The reference agent's package directory (configuration, unit,
    /// manual page), for the `agent` payload.
    pub pkg: PathBuf,
    pub payloads: Vec<Payload>,
    /// Profiles measured, each with the tools of its goals.
    pub profiles: Vec<Profile>,
    /// MiB of the generated payload.
    pub size_mib: usize,
    pub runs: usize,
    pub seed: u64,
    /// Scratch directory.
    pub work: PathBuf,
    /// Keep the scratch directory (payload and packages) for inspection.
    pub keep: bool,
}

/// One tool's measurement: the median time of the runs, the output size,
/// and the largest peak memory (max RSS) of the runs.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub tool: String,
    pub format: String,
    pub seconds: f64,
    pub bytes: u64,
    pub peak_rss_bytes: u64,
}

/// Every measurement on one payload.
#[derive(Debug, Clone, Serialize)]
pub struct PayloadReport {
    pub payload: Payload,
    pub files: usize,
    pub payload_bytes: u64,
    pub measurements: Vec<Measurement>,
}

/// Every measurement of one run of the bench.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub cores: u32,
    pub runs: usize,
    /// (tool, what `--version` said)
    pub versions: Vec<(String, String)>,
    /// The upgrade hook every package holds beside the payload (ferry adds
    /// it to its own, the other tools pack it as a file).
    pub hook_bytes: u64,
    pub payloads: Vec<PayloadReport>,
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

/// Runs the whole comparison, payload after payload.
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
    let versions = tool_versions();
    let mut payloads = Vec::new();
    for &kind in &opts.payloads {
        let work = opts.work.join(kind.name());
        let payload_dir = work.join("payload");
        progress(&format!("payload {}", kind.name()));
        let mut payload = match kind {
            Payload::Generated => generate_payload(&payload_dir, &agent, opts.size_mib, opts.seed)?,
            _ => corpus::collect(kind, &payload_dir, &opts.pkg)?,
        };
        // The program the package's hook drives, in every payload.
        let agent_copy = payload_dir.join(asset_name(&opts.agent));
        std::fs::write(&agent_copy, &agent)?;
        payload.push(agent_copy);
        let payload_bytes = payload
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()))
            .sum::<std::io::Result<u64>>()?;
        let mut measurements = Vec::new();
        let peers = peer_assets(&payload, &hook);
        for &profile in &opts.profiles {
            progress(&format!("{}: ferry ({profile:?})", kind.name()));
            measurements.extend(bench_ferry(opts, &work, &payload, &hook, profile)?);
            // The tools the profile's goals name.
            match profile {
                Profile::Fast => {
                    progress(&format!("{}: nfpm", kind.name()));
                    measurements.extend(bench_nfpm(opts.runs, &work, &peers)?);
                }
                Profile::Small => {
                    progress(&format!(
                        "{}: cargo-deb and cargo-generate-rpm",
                        kind.name()
                    ));
                    measurements.extend(bench_cargo_tools(opts.runs, &work, &peers)?);
                }
            }
        }
        payloads.push(PayloadReport {
            payload: kind,
            files: payload.len(),
            payload_bytes,
            measurements,
        });
    }
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&opts.work);
    }
    Ok(BenchReport {
        cores: build::threads(),
        runs: opts.runs,
        versions,
        hook_bytes: std::fs::metadata(&hook)?.len(),
        payloads,
    })
}

/// What each tool compared says of its version.
fn tool_versions() -> Vec<(String, String)> {
    let ask = |program: &str, args: &[&str], line: &dyn Fn(&str) -> Option<String>| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().find_map(line))
            .unwrap_or_else(|| "not found".into())
    };
    let first = |l: &str| Some(l.trim().to_string()).filter(|l| !l.is_empty());
    // nfpm prints a banner, then `GitVersion:    2.48.0`.
    let git_version = |l: &str| {
        l.strip_prefix("GitVersion:")
            .map(|v| format!("nfpm {}", v.trim()))
    };
    vec![
        (
            "ferry".into(),
            format!("ferry {}", env!("CARGO_PKG_VERSION")),
        ),
        ("nfpm".into(), ask("nfpm", &["--version"], &git_version)),
        (
            "cargo-deb".into(),
            ask("cargo", &["deb", "--version"], &first),
        ),
        (
            "cargo-generate-rpm".into(),
            ask("cargo", &["generate-rpm", "--version"], &first),
        ),
    ]
}

/// What one run of a tool gave: the output size and the peak memory.
struct Run {
    bytes: u64,
    peak_rss_bytes: u64,
}

/// The median of `runs` timings of `f` (at least one): one slow or fast
/// outlier does not decide a figure. The peak memory is the runs' largest.
fn measure(
    tool: &str,
    format: &str,
    runs: usize,
    mut f: impl FnMut() -> Result<Run>,
) -> Result<Measurement> {
    let mut times = Vec::new();
    let mut last = Run {
        bytes: 0,
        peak_rss_bytes: 0,
    };
    let mut peak = 0;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        last = f()?;
        times.push(start.elapsed());
        peak = peak.max(last.peak_rss_bytes);
    }
    times.sort();
    let time: Duration = times[times.len() / 2];
    Ok(Measurement {
        tool: tool.into(),
        format: format.into(),
        seconds: time.as_secs_f64(),
        bytes: last.bytes,
        peak_rss_bytes: peak,
    })
}

/// A file the packages hold: where it is read, where it goes, its mode.
struct Asset {
    source: PathBuf,
    dest: String,
    mode: &'static str,
}

/// The payload's files, under /usr/lib/bench-agent.
fn payload_assets(payload: &[PathBuf]) -> Vec<Asset> {
    payload
        .iter()
        .map(|p| Asset {
            source: p.clone(),
            dest: format!("/usr/lib/bench-agent/{}", asset_name(p)),
            mode: "644",
        })
        .collect()
}

/// What the other tools package: the payload, and the upgrade hook where
/// ferry puts it in every package it builds, so that every tool packs the
/// same files.
fn peer_assets(payload: &[PathBuf], hook: &Path) -> Vec<Asset> {
    let mut assets = payload_assets(payload);
    assets.push(Asset {
        source: hook.to_path_buf(),
        dest: ferry_hook::package::hook_path_of("bench-agent"),
        mode: "755",
    });
    assets
}

/// One line (or block) of a tool's configuration per file, from its
/// source path, its destination in the package and its mode.
fn each_asset(assets: &[Asset], line: impl Fn(&str, &str, &str) -> String) -> String {
    assets
        .iter()
        .map(|a| line(&a.source.display().to_string(), &a.dest, a.mode))
        .collect()
}

fn asset_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn bench_ferry(
    opts: &BenchOptions,
    work: &Path,
    payload: &[PathBuf],
    hook: &Path,
    profile: Profile,
) -> Result<Vec<Measurement>> {
    let dir = work.join("ferry");
    std::fs::create_dir_all(&dir)?;
    let mut descriptor = String::from(concat!(
        "[package]\nname = \"bench-agent\"\nversion = \"1.0.0\"\n",
        "maintainer = \"Bench <bench@example.org>\"\nsummary = \"benchmark payload\"\n",
        "description = \"benchmark payload\"\nlicense = \"Apache-2.0\"\n",
        "[service]\nunit = \"bench-agent.service\"\nuser = \"bench\"\ngroup = \"bench\"\n",
        "[state]\nschema = 1\ndirectories = [\"/var/lib/bench-agent\"]\n",
    ));
    descriptor.push_str(&each_asset(&payload_assets(payload), |src, dest, mode| {
        format!("[[asset]]\nsource = \"{src}\"\ndest = \"{dest}\"\nmode = \"0{mode}\"\n")
    }));
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
    // ferry runs as a child process, like the other tools, so that its
    // time includes starting up and its peak memory is its own.
    let exe = std::env::current_exe().context("finding ferry's own program")?;
    let out = dir.join("out");
    let label = format!("ferry {}", profile.name());
    let mut results = Vec::new();
    for format in ["deb", "rpm", "deb,rpm"] {
        let name = if format == "deb,rpm" { "both" } else { format };
        results.push(measure(&label, name, opts.runs, || {
            let _ = std::fs::remove_dir_all(&out);
            let peak_rss_bytes = run_tool(
                Command::new(&exe)
                    .arg("build")
                    .arg("--descriptor")
                    .arg(dir.join("ferry.toml"))
                    .arg("--out")
                    .arg(&out)
                    .args(["--format", format, "--profile", profile.name()])
                    .env("SOURCE_DATE_EPOCH", "1700000000"),
            )?;
            let mut bytes = 0;
            for entry in std::fs::read_dir(&out)? {
                bytes += entry?.metadata()?.len();
            }
            Ok(Run {
                bytes,
                peak_rss_bytes,
            })
        })?);
    }
    Ok(results)
}

/// Runs `cmd` to completion and returns its peak memory: the largest
/// resident set of the process and of every descendant it waited for
/// (cargo runs cargo-deb as its child), as `wait4` reports it.
fn run_tool(cmd: &mut Command) -> Result<u64> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}: is it installed? (ci/test installs it)"))?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)?;
    }
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child,
    // which std's `Child` has not reaped (it is never waited for again).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!("waiting for {cmd:?}: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (wait status {status}): {stderr}");
    }
    // Linux reports ru_maxrss in KiB.
    Ok(usage.ru_maxrss as u64 * 1024)
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

fn bench_nfpm(runs: usize, work: &Path, assets: &[Asset]) -> Result<Vec<Measurement>> {
    let dir = work.join("nfpm");
    std::fs::create_dir_all(&dir)?;
    let mut config = String::from(
        "name: bench-agent\narch: amd64\nversion: 1.0.0\nmaintainer: Bench <bench@example.org>\ndescription: benchmark payload\nlicense: Apache-2.0\ncontents:\n",
    );
    config.push_str(&each_asset(assets, |src, dest, mode| {
        format!("  - src: {src}\n    dst: {dest}\n    file_info:\n      mode: 0{mode}\n")
    }));
    std::fs::write(dir.join("nfpm.yaml"), config)?;
    let mut results = Vec::new();
    for format in ["deb", "rpm"] {
        let out = dir.join(format);
        std::fs::create_dir_all(&out)?;
        results.push(measure("nfpm", format, runs, || {
            let peak_rss_bytes = run_tool(
                Command::new("nfpm")
                    .args(["package", "-f"])
                    .arg(dir.join("nfpm.yaml"))
                    .args(["-p", format, "-t"])
                    .arg(&out),
            )?;
            Ok(Run {
                bytes: output_size(&out, &format!(".{format}"))?,
                peak_rss_bytes,
            })
        })?);
    }
    Ok(results)
}

fn bench_cargo_tools(runs: usize, work: &Path, assets: &[Asset]) -> Result<Vec<Measurement>> {
    let dir = work.join("cargo");
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n")?;
    let deb_assets = each_asset(assets, |src, dest, mode| {
        format!("  [\"{src}\", \"{dest}\", \"{mode}\"],\n")
    });
    let rpm_assets = each_asset(assets, |src, dest, mode| {
        format!("  {{ source = \"{src}\", dest = \"{dest}\", mode = \"{mode}\" }},\n")
    });
    let manifest = format!(
        "[package]\nname = \"bench-agent\"\nversion = \"1.0.0\"\nedition = \"2021\"\nlicense = \"Apache-2.0\"\ndescription = \"benchmark payload\"\nauthors = [\"Bench <bench@example.org>\"]\n\n[workspace]\n\n[package.metadata.deb]\nassets = [\n{deb_assets}]\n\n[package.metadata.generate-rpm]\nassets = [\n{rpm_assets}]\n"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    let deb_out = dir.join("target/debian");
    let rpm_out = dir.join("target/generate-rpm");
    let deb = measure("cargo-deb", "deb", runs, || {
        let peak_rss_bytes = run_tool(
            Command::new("cargo")
                .args(["deb", "--no-build", "--no-strip"])
                .current_dir(&dir),
        )?;
        Ok(Run {
            bytes: output_size(&deb_out, ".deb")?,
            peak_rss_bytes,
        })
    })?;
    let rpm = measure("cargo-generate-rpm", "rpm", runs, || {
        let peak_rss_bytes = run_tool(
            Command::new("cargo")
                .args(["generate-rpm"])
                .current_dir(&dir),
        )?;
        Ok(Run {
            bytes: output_size(&rpm_out, ".rpm")?,
            peak_rss_bytes,
        })
    })?;
    Ok(vec![deb, rpm])
}

impl PayloadReport {
    fn get(&self, tool: &str, format: &str) -> Option<&Measurement> {
        self.measurements
            .iter()
            .find(|m| m.tool == tool && m.format == format)
    }

    /// The measurements' table and the goal ratios.
    fn markdown(&self) -> String {
        let mut s = format!(
            "### {}: {} files, {:.1} MiB\n\n| tool | format | time (s) | size (MiB) | peak memory (MiB) |\n|---|---|---|---|---|\n",
            self.payload.name(),
            self.files,
            self.payload_bytes as f64 / 1048576.0,
        );
        for m in &self.measurements {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.2} | {:.0} |",
                m.tool,
                m.format,
                m.seconds,
                m.bytes as f64 / 1048576.0,
                m.peak_rss_bytes as f64 / 1048576.0
            );
        }
        s.push_str(&self.goals());
        s
    }

    fn goals(&self) -> String {
        let mut s = String::from("\n| goal | ratio | target | met |\n|---|---|---|---|\n");
        let mut row = |name: String, ratio: f64, target: f64| {
            let _ = writeln!(
                s,
                "| {name} | {ratio:.2} | ≤ {target:.2} | {} |",
                if ratio <= target { "yes" } else { "no" }
            );
        };
        for goal in GOALS {
            let (Some(both), Some(fd), Some(fr), Some(bd), Some(br)) = (
                self.get(goal.ferry, "both"),
                self.get(goal.ferry, "deb"),
                self.get(goal.ferry, "rpm"),
                self.get(goal.deb_tool, "deb"),
                self.get(goal.rpm_tool, "rpm"),
            ) else {
                continue;
            };
            let baseline = if goal.deb_tool == goal.rpm_tool {
                format!("{}'s deb + rpm", goal.deb_tool)
            } else {
                format!("{} + {}", goal.deb_tool, goal.rpm_tool)
            };
            let name = goal.name;
            row(
                format!("{name}: time of both / {baseline}"),
                both.seconds / (bd.seconds + br.seconds),
                goal.time_ratio,
            );
            row(
                format!("{name}: deb size / {} size", goal.deb_tool),
                fd.bytes as f64 / bd.bytes as f64,
                1.0,
            );
            row(
                format!("{name}: rpm size / {} size", goal.rpm_tool),
                fr.bytes as f64 / br.bytes as f64,
                1.0,
            );
        }
        s
    }
}

impl BenchReport {
    /// Every payload's table and goals, after the tools' versions.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "{} core(s), median of {} run(s) per tool and payload. Versions: {}. Every package, of every tool, also holds the upgrade hook ({:.1} MiB), not counted in the payloads' sizes below.\n",
            self.cores,
            self.runs,
            self.versions
                .iter()
                .map(|(tool, version)| format!("{tool} `{version}`"))
                .collect::<Vec<_>>()
                .join(", "),
            self.hook_bytes as f64 / 1048576.0
        );
        for payload in &self.payloads {
            s.push('\n');
            s.push_str(&payload.markdown());
        }
        s
    }
}

/// A speed goal of the build issue: ferry's profile against the tools a
/// user would run instead, at no larger packages.
struct Goal {
    name: &'static str,
    ferry: &'static str,
    deb_tool: &'static str,
    rpm_tool: &'static str,
    /// ferry's time for both packages over the tools' combined time.
    time_ratio: f64,
}

const GOALS: &[Goal] = &[
    Goal {
        name: "fast",
        ferry: "ferry fast",
        deb_tool: "nfpm",
        rpm_tool: "nfpm",
        time_ratio: 0.5,
    },
    Goal {
        name: "small",
        ferry: "ferry small",
        deb_tool: "cargo-deb",
        rpm_tool: "cargo-generate-rpm",
        time_ratio: 0.55,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_tools_pack_the_hook_where_ferry_puts_it() {
        let payload = [PathBuf::from("/w/payload/00001-ls")];
        let hook = Path::new("/t/release/ferry-hook");
        let lines = each_asset(&peer_assets(&payload, hook), |src, dest, mode| {
            format!("{src} {dest} {mode}\n")
        });
        assert_eq!(
            lines,
            "/w/payload/00001-ls /usr/lib/bench-agent/00001-ls 644\n\
             /t/release/ferry-hook /usr/libexec/bench-agent/ferry-hook 755\n"
        );
        // ferry's own descriptor lists the payload alone: it adds the hook.
        assert_eq!(payload_assets(&payload).len(), 1);
    }

    fn m(tool: &str, format: &str, seconds: f64, bytes: u64) -> Measurement {
        Measurement {
            tool: tool.into(),
            format: format.into(),
            seconds,
            bytes,
            peak_rss_bytes: 0,
        }
    }

    /// A one-file text payload's report of `measurements`.
    fn one_file_report(measurements: Vec<Measurement>) -> PayloadReport {
        PayloadReport {
            payload: Payload::Text,
            files: 1,
            payload_bytes: 1,
            measurements,
        }
    }

    #[test]
    fn goals_are_ratios_against_the_tools_combined() {
        let report = one_file_report(vec![
            m("ferry fast", "deb", 0.5, 90),
            m("ferry fast", "rpm", 0.2, 120),
            m("ferry fast", "both", 0.5, 210),
            m("nfpm", "deb", 1.5, 100),
            m("nfpm", "rpm", 0.5, 100),
        ]);
        let table = report.goals();
        assert!(
            table.contains("| fast: time of both / nfpm's deb + rpm | 0.25 | ≤ 0.50 | yes |"),
            "{table}"
        );
        assert!(
            table.contains("| fast: deb size / nfpm size | 0.90 | ≤ 1.00 | yes |"),
            "{table}"
        );
        assert!(
            table.contains("| fast: rpm size / nfpm size | 1.20 | ≤ 1.00 | no |"),
            "{table}"
        );
        assert!(!table.contains("small"), "no cargo tools measured: {table}");
    }

    #[test]
    fn small_goal_is_0_55_of_the_cargo_tools_time() {
        let report = one_file_report(vec![
            m("ferry small", "deb", 4.0, 100),
            m("ferry small", "rpm", 3.0, 100),
            m("ferry small", "both", 4.0, 200),
            m("cargo-deb", "deb", 5.0, 100),
            m("cargo-generate-rpm", "rpm", 3.0, 101),
        ]);
        let table = report.goals();
        assert!(
            table.contains(
                "| small: time of both / cargo-deb + cargo-generate-rpm | 0.50 | ≤ 0.55 | yes |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| small: deb size / cargo-deb size | 1.00 | ≤ 1.00 | yes |"),
            "{table}"
        );
        assert!(!table.contains("fast"), "nfpm not measured: {table}");
    }
}
