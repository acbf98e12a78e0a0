//! The apt side: `DIR/apt/dists/<channel>` is a symlink to a generation
//! directory holding `Release`, `InRelease`, `Release.gpg` and
//! `main/binary-<arch>/Packages(.gz)`; packages live in `DIR/apt/pool/`.
//!
//! The index files are written by hand: a flat repository with one component
//! needs two short formats (deb822 paragraphs and a Release with SHA256
//! lines), while the `debian-packaging` crate would bring an async runtime and
//! reprepro keeps its own database beside ours.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::state::{Format, Published, RepoState};
use super::Signer;
use crate::fsutil;

/// The only component of a ferry repository.
pub const COMPONENT: &str = "main";

/// Pool path of a .deb, relative to the repository directory.
pub fn pool_path(name: &str, version: &str, arch: &str) -> String {
    let version = version.replace(':', "%3a");
    format!("apt/pool/{COMPONENT}/{name}/{name}_{version}_{arch}.deb")
}

/// Writes a complete, signed generation of `dists/<channel>` into `gen_dir`.
pub fn write_generation(
    gen_dir: &Path,
    state: &RepoState,
    channel: &str,
    signer: &Signer,
) -> Result<()> {
    let members: Vec<&Published> = state
        .members(channel)
        .into_iter()
        .filter(|p| p.format == Format::Deb)
        .collect();
    let architectures = release_architectures(state);
    let mut checksums = Vec::new();
    for arch in &architectures {
        let packages = packages_file(&members, arch);
        let dir = format!("{COMPONENT}/binary-{arch}");
        std::fs::create_dir_all(gen_dir.join(&dir))
            .with_context(|| format!("cannot create {dir}"))?;
        let gz = crate::plan::gzip_reproducibly(packages.as_bytes())?;
        for (name, bytes) in [("Packages", packages.as_bytes()), ("Packages.gz", &gz[..])] {
            let relative = format!("{dir}/{name}");
            std::fs::write(gen_dir.join(&relative), bytes)
                .with_context(|| format!("cannot write {relative}"))?;
            checksums.push((relative, bytes.len(), fsutil::sha256_hex(bytes)));
        }
    }
    let release = release_file(state, channel, &architectures, &checksums);
    let release_path = gen_dir.join("Release");
    std::fs::write(&release_path, release).context("cannot write Release")?;
    signer.clearsign(&release_path, &gen_dir.join("InRelease"))?;
    signer.detach_sign(&release_path, &gen_dir.join("Release.gpg"))
}

/// Concrete architectures of the repository's .debs; `all` packages are
/// listed in each of them, so apt on any of them sees them.
fn release_architectures(state: &RepoState) -> Vec<String> {
    let recorded = state
        .architectures
        .get(&Format::Deb)
        .cloned()
        .unwrap_or_default();
    let concrete: Vec<String> = recorded.iter().filter(|a| *a != "all").cloned().collect();
    if concrete.is_empty() {
        recorded.into_iter().collect()
    } else {
        concrete
    }
}

/// One `Packages` paragraph per .deb: its control file, plus where and what it is.
fn packages_file(members: &[&Published], arch: &str) -> String {
    let mut text = String::new();
    for package in members.iter().filter(|p| p.arch == arch || p.arch == "all") {
        for line in package
            .control
            .lines()
            .filter(|l| !l.trim().is_empty() && !is_location_field(l))
        {
            text.push_str(line);
            text.push('\n');
        }
        let filename = package.file.strip_prefix("apt/").unwrap_or(&package.file);
        let _ = writeln!(
            text,
            "Filename: {filename}\nSize: {}\nSHA256: {}\n",
            package.size, package.sha256
        );
    }
    text
}

/// Fields that the repository, not the package, supplies.
fn is_location_field(line: &str) -> bool {
    ["Filename:", "Size:", "SHA256:", "MD5sum:", "SHA1:"]
        .iter()
        .any(|f| line.starts_with(f))
}

fn release_file(
    state: &RepoState,
    channel: &str,
    architectures: &[String],
    checksums: &[(String, usize, String)],
) -> String {
    let mut text = format!(
        "Origin: {}\nLabel: {}\nSuite: {channel}\nCodename: {channel}\nDate: {}\n\
         Architectures: {}\nComponents: {COMPONENT}\nDescription: {} channel {channel}\nSHA256:\n",
        state.origin,
        state.label,
        rfc2822_utc(SystemTime::now()),
        architectures.join(" "),
        state.label,
    );
    for (path, size, sha) in checksums {
        let _ = writeln!(text, " {sha} {size:>16} {path}");
    }
    text
}

/// `Date:` of a Release file, e.g. `Wed, 25 Nov 2026 22:27:41 UTC`.
pub fn rfc2822_utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::date::rfc2822(secs, "UTC")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn release_date_is_rfc2822() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_559_261);
        assert_eq!(rfc2822_utc(time), "Tue, 24 Nov 2026 22:27:41 UTC");
        assert_eq!(
            rfc2822_utc(SystemTime::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 UTC"
        );
    }
}
