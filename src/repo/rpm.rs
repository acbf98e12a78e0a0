//! The rpm side: `DIR/rpm/<channel>` is a symlink to a generation directory
//! holding `Packages/*.rpm` (hard links into `DIR/rpm/pool/`, so a generation
//! never changes under a reader and costs no copy) and `repodata/` made by
//! `createrepo_c`, with `repodata/repomd.xml.asc` signed by ferry.
//!
//! repodata is not written by hand: primary/filelists/other carry every
//! dependency and file of every package, which createrepo_c reads from the
//! rpm headers exactly as dnf expects; it is one Debian package (createrepo-c).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::state::{Format, RepoState};
use super::Signer;

/// Pool path of an rpm, relative to the repository directory.
pub fn pool_path(name: &str, version: &str, arch: &str) -> String {
    let version = version.split_once(':').map_or(version, |(_, rest)| rest);
    format!("rpm/pool/{name}-{version}.{arch}.rpm")
}

/// Writes a complete, signed generation of the channel's rpm repository into
/// `gen_dir`, reusing the metadata of `previous` (a generation directory) for
/// packages it already described.
pub fn write_generation(
    repo: &Path,
    gen_dir: &Path,
    previous: Option<&Path>,
    state: &RepoState,
    channel: &str,
    signer: &Signer,
) -> Result<()> {
    let packages = gen_dir.join("Packages");
    std::fs::create_dir_all(&packages)
        .with_context(|| format!("cannot create {}", packages.display()))?;
    for package in state
        .members(channel)
        .into_iter()
        .filter(|p| p.format == Format::Rpm)
    {
        let pooled = repo.join(&package.file);
        let name = pooled
            .file_name()
            .context("pool entry without a file name")?;
        std::fs::hard_link(&pooled, packages.join(name)).with_context(|| {
            format!(
                "cannot link {} into {}",
                pooled.display(),
                packages.display()
            )
        })?;
    }
    createrepo(
        gen_dir,
        previous.filter(|p| p.join("repodata/repomd.xml").is_file()),
    )?;
    let repomd = gen_dir.join("repodata/repomd.xml");
    signer.detach_sign(&repomd, &gen_dir.join("repodata/repomd.xml.asc"))
}

fn createrepo(gen_dir: &Path, previous: Option<&Path>) -> Result<()> {
    let mut command = super::sign::tool("createrepo_c");
    // No sqlite databases: dnf builds its own cache from the XML.
    command.args(["--quiet", "--no-database", "--workers", "2"]);
    if let Some(previous) = previous {
        // Reuse entries for unchanged files (same path, size and mtime: hard links).
        command
            .arg("--update")
            .arg("--update-md-path")
            .arg(previous);
    }
    let output = command
        .arg(gen_dir)
        .output()
        .context("cannot run createrepo_c: install createrepo-c")?;
    if !output.status.success() {
        bail!(
            "createrepo_c failed on {}: {}",
            gen_dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
