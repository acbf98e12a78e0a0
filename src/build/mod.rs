//! `ferry build`: descriptor → plan → one package per format, written in
//! parallel (compression dominates, and each format compresses its own
//! copy of the payload) and renamed into place only when complete.

pub mod deb;
mod gzip;
pub mod rpm;
mod xz;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::descriptor::{self, DescriptorWarning, Validated};
use crate::exit::PartiallyDone;
use crate::plan::{self, Format, Plan};

/// One package format's writer.
pub trait Packager: Sync {
    fn format(&self) -> Format;
    /// The file name the package gets in the output directory.
    fn file_name(&self, plan: &Plan) -> String;
    /// Writes the whole package to `out`.
    fn write(&self, plan: &Plan, out: &mut dyn Write) -> Result<()>;
}

/// How hard to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// deb gzip (libdeflate level 8, 1 MiB members compressed in
    /// parallel), rpm zstd -3: a fraction of a second for tens of MiB,
    /// spread over every core.
    Fast,
    /// deb and rpm both xz -6 with the x86 filter, in blocks of 32 MiB:
    /// the smallest downloads, one core per 32 MiB and format.
    Small,
}

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::Fast, Profile::Small];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Fast => "fast",
            Profile::Small => "small",
        }
    }

    /// What the profile does, for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            Profile::Fast => "deb gzip (libdeflate level 8 in 1 MiB members, in parallel), rpm zstd -3: a fraction of a second for tens of MiB, spread over every core",
            Profile::Small => "deb and rpm xz -6 with the x86 filter, in blocks of 32 MiB: the smallest downloads, one core per 32 MiB and format",
        }
    }

    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// What `ferry build` was asked to do.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub descriptor: PathBuf,
    pub out: PathBuf,
    pub formats: Vec<Format>,
    pub version: Option<String>,
    pub profile: Profile,
    /// Seconds since the epoch for every timestamp in the packages.
    pub source_date: u64,
    /// Run the descriptor's `[build] command` first.
    pub run_build_command: bool,
}

/// A package written by a build.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Artifact {
    pub format: &'static str,
    pub path: PathBuf,
    pub bytes: u64,
}

/// What a build wrote, and what the descriptor should do better.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Built {
    pub packages: Vec<Artifact>,
    pub warnings: Vec<DescriptorWarning>,
}

/// The timestamp reproducible builds agree on: SOURCE_DATE_EPOCH when set,
/// otherwise now.
pub fn source_date_from_env() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH=`{v}` is not a number of seconds since 1970")
        }),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()),
    }
}

/// Threads a compressor may use: the machine's cores.
pub fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// `f` over `items` on `threads` threads; results in the items' order,
/// whatever the number of threads.
pub(crate) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: u32,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, f(item)));
        }
    };
    let mut results: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers = (threads as usize).clamp(1, items.len().max(1));
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a build thread panicked"))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Validates the descriptor, runs its build command, and writes every
/// requested package into `opts.out`. The descriptor's warnings are
/// returned with the packages (and never stop the build).
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<Built> {
    let validated = descriptor::load(&opts.descriptor, opts.version.as_deref())?;
    if opts.run_build_command {
        run_build_command(&validated, progress)?;
    }
    descriptor::check_sources(&validated)?;
    progress(&format!(
        "packaging {} {} ({})",
        validated.descriptor.package.name,
        validated.version.deb(),
        opts.formats
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let plan = plan::resolve(&validated, opts.source_date)?;
    let packagers = packagers(&opts.formats, opts.profile);
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating the output directory {}", opts.out.display()))?;
    let packages = write_all(&plan, &packagers, &opts.out)?;
    Ok(Built {
        packages,
        warnings: validated.warnings,
    })
}

fn packagers(formats: &[Format], profile: Profile) -> Vec<Box<dyn Packager>> {
    formats
        .iter()
        .map(|f| -> Box<dyn Packager> {
            match f {
                Format::Deb => Box::new(deb::Deb { profile }),
                Format::Rpm => Box::new(rpm::Rpm { profile }),
            }
        })
        .collect()
}

/// Writes the packages side by side, one thread each. When one fails
/// after another was written, the error says which landed (exit status 4,
/// partially done).
pub fn write_all(
    plan: &Plan,
    packagers: &[Box<dyn Packager>],
    out: &Path,
) -> Result<Vec<Artifact>> {
    let results: Vec<Result<Artifact>> = std::thread::scope(|s| {
        let handles: Vec<_> = packagers
            .iter()
            .map(|p| s.spawn(move || write_one(plan, p.as_ref(), out)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a packager thread panicked"))
            })
            .collect()
    });
    let written: Vec<String> = results
        .iter()
        .flatten()
        .map(|a| format!("wrote {}", a.path.display()))
        .collect();
    let mut artifacts = Vec::new();
    for result in results {
        match result {
            Ok(artifact) => artifacts.push(artifact),
            Err(e) if written.is_empty() => return Err(e),
            Err(e) => return Err(e.context(PartiallyDone { done: written })),
        }
    }
    Ok(artifacts)
}

/// Writes to a temporary file beside the target and renames it into place,
/// so a failed or interrupted build never leaves a partial package.
fn write_one(plan: &Plan, packager: &dyn Packager, out: &Path) -> Result<Artifact> {
    let path = out.join(packager.file_name(plan));
    let tmp = out.join(format!(".{}.partial", packager.file_name(plan)));
    let result = (|| -> Result<u64> {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        packager.write(plan, &mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file.metadata()?.len())
    })();
    match result {
        Ok(bytes) => {
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("moving the package into {}", path.display()))?;
            Ok(Artifact {
                format: packager.format().name(),
                path,
                bytes,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.context(format!("writing the {} package", packager.format().name())))
        }
    }
}

/// Runs `[build] command` in the descriptor's directory. The payload learns
/// the package version and an agent's state schema from the environment,
/// so two builds of one source can differ in schema (the end-to-end tests
/// do).
fn run_build_command(v: &Validated, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let Some(build) = &v.descriptor.build else {
        return Ok(());
    };
    let Some((program, args)) = build.command.split_first() else {
        bail!(
            "{}: field `build.command` is empty; fix: list the program and its arguments",
            v.file.display()
        );
    };
    progress(&format!("running {}", build.command.join(" ")));
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&v.root)
        .env("FERRY_VERSION", v.version.semver.to_string())
        // ferry's stdout carries its report alone (`--json` is parsed).
        .stdout(std::io::stderr());
    if let Some(agent) = v.descriptor.agent() {
        command.env("FERRY_STATE_SCHEMA", agent.state.schema.to_string());
    }
    let status = command
        .status()
        .with_context(|| format!("{}: cannot run build.command `{program}`", v.file.display()))?;
    if !status.success() {
        bail!(
            "{}: build.command `{}` failed ({status}); nothing was packaged",
            v.file.display(),
            build.command.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_the_order_whatever_the_threads() {
        let items: Vec<u32> = (0..100).collect();
        let squares: Vec<u32> = items.iter().map(|i| i * i).collect();
        for threads in [1, 3, 8] {
            assert_eq!(parallel_map(&items, threads, |i| i * i), squares);
        }
    }
}
