//! The payloads `ferry bench build` measures on: real files present on any
//! Debian 12 machine, picked the same way every time (sorted paths, up to
//! a size), so anyone can rebuild them (docs/BENCHMARKS.md, "The corpus").
//! Each is copied into the scratch directory under numbered names, so that
//! files of the same name in different directories stay apart, with any
//! character but letters, digits and `._+-` replaced by `_`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const MIB: u64 = 1024 * 1024;

/// One payload of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Payload {
    /// ELF programs and shared libraries from /usr/bin and
    /// /usr/lib/x86_64-linux-gnu, each under 4 MiB, 15 MiB in all.
    Binaries,
    /// The Python standard library's modules (/usr/lib/python3.11/**/*.py):
    /// thousands of small source files.
    SmallFiles,
    /// Debian changelogs (/usr/share/doc/*/changelog*.gz), decompressed, 10
    /// MiB in all: text-heavy documentation.
    Text,
    /// The `.gz` files under /usr/share/doc as they are, 10 MiB in all:
    /// data that is already compressed.
    Compressed,
    /// The reference agent's own package: its program (which every
    /// payload holds), its configuration, unit and manual page; the
    /// upgrade hook is in every package of every payload.
    Agent,
    /// The generated payload of earlier measurements (agent code with
    /// seeded changes, log-like text, random bytes).
    Generated,
}

impl Payload {
    /// Every real-file payload, in report order.
    pub const CORPUS: [Payload; 5] = [
        Payload::Binaries,
        Payload::SmallFiles,
        Payload::Text,
        Payload::Compressed,
        Payload::Agent,
    ];

    /// Every payload, for `--payload`.
    pub const ALL: [Payload; 6] = [
        Payload::Binaries,
        Payload::SmallFiles,
        Payload::Text,
        Payload::Compressed,
        Payload::Agent,
        Payload::Generated,
    ];

    pub fn from_name(name: &str) -> Option<Payload> {
        Payload::ALL.into_iter().find(|p| p.name() == name)
    }

    /// What the payload holds, for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            Payload::Binaries => {
                "ELF programs and libraries from /usr/bin and /usr/lib/x86_64-linux-gnu, 15 MiB"
            }
            Payload::SmallFiles => "the Python standard library's modules: many small source files",
            Payload::Text => "Debian changelogs, decompressed, 10 MiB",
            Payload::Compressed => "the .gz files under /usr/share/doc as they are, 10 MiB",
            Payload::Agent => "the reference agent's own package",
            Payload::Generated => "the synthetic payload of earlier measurements",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Payload::Binaries => "binaries",
            Payload::SmallFiles => "small-files",
            Payload::Text => "text",
            Payload::Compressed => "compressed",
            Payload::Agent => "agent",
            Payload::Generated => "generated",
        }
    }
}

/// Copies the real-file payload `kind` into `dir`; the paths written. The
/// agent's package is read from `pkg` (configuration, unit, manual page).
pub fn collect(kind: Payload, dir: &Path, pkg: &Path) -> Result<Vec<PathBuf>> {
    let picked: Vec<(PathBuf, Vec<u8>)> = match kind {
        Payload::Binaries => {
            let mut files = listing(Path::new("/usr/bin"), false)?;
            files.extend(listing(Path::new("/usr/lib/x86_64-linux-gnu"), false)?);
            // Sizes from the directory, so that the large libraries are
            // never read only to be left out.
            files.retain(|p| std::fs::metadata(p).is_ok_and(|m| m.len() < 4 * MIB));
            files.sort();
            take(files, 15 * MIB, |data| data.starts_with(b"\x7fELF"))?
        }
        Payload::SmallFiles => {
            let root = Path::new("/usr/lib/python3.11");
            let files = listing(root, true)?
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "py"))
                .collect();
            take(files, u64::MAX, |_| true)?
        }
        Payload::Text => {
            let files = changelogs()?;
            let mut out = Vec::new();
            let mut total = 0;
            for path in files {
                if total >= 10 * MIB {
                    break;
                }
                let mut text = Vec::new();
                flate2::read::MultiGzDecoder::new(std::fs::File::open(&path)?)
                    .read_to_end(&mut text)
                    .with_context(|| format!("decompressing {}", path.display()))?;
                total += text.len() as u64;
                out.push((path.with_extension(""), text));
            }
            out
        }
        Payload::Compressed => {
            let files = listing(Path::new("/usr/share/doc"), true)?
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "gz"))
                .collect();
            take(files, 10 * MIB, |_| true)?
        }
        Payload::Agent => {
            // The program itself is added to every payload by the caller,
            // and the hook to every package (ferry's own, the others' as
            // an asset).
            let files = ["agent.toml", "roboconf-agent.service", "roboconf-agent.1"]
                .map(|name| pkg.join(name))
                .to_vec();
            take(files, u64::MAX, |_| true)?
        }
        Payload::Generated => bail!("the generated payload is not read from files"),
    };
    if picked.is_empty() {
        bail!(
            "payload {}: nothing found to measure on this machine (see docs/BENCHMARKS.md, \"The corpus\")",
            kind.name()
        );
    }
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (i, (source, data)) in picked.into_iter().enumerate() {
        // Plain names: nfpm reads sources as glob patterns (`/usr/bin/[`).
        let name: String = source
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{i:05}-{name}"));
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Regular files in `dir` (not links), recursively or not, sorted.
fn listing(dir: &Path, recursive: bool) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(dir)
        .max_depth(if recursive { usize::MAX } else { 1 })
        .sort_by_file_name();
    for entry in walker {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_type().is_file() {
            files.push(entry.into_path());
        }
    }
    Ok(files)
}

/// Reads `files` in order, keeping those `keep` accepts, until `limit`
/// bytes are kept.
fn take(
    files: Vec<PathBuf>,
    limit: u64,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut total = 0;
    for path in files {
        if total >= limit {
            break;
        }
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if keep(&data) {
            total += data.len() as u64;
            out.push((path, data));
        }
    }
    Ok(out)
}

/// The Debian changelogs under /usr/share/doc, sorted.
fn changelogs() -> Result<Vec<PathBuf>> {
    Ok(listing(Path::new("/usr/share/doc"), true)?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("changelog") && n.ends_with(".gz"))
        })
        .collect())
}
