//! Reading the repository `ferry publish` made: from the disk for
//! file://, with apt's own downloader (or curl where apt is not) for
//! http(s)://.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::host::Host;

/// Reads `rel` (relative to the repository URL): from the disk (under the
/// root) for file://, with curl for http(s)://.
pub fn fetch(host: &Host, repo: &str, rel: &str, into: &Path) -> Result<bool> {
    let url = format!("{}/{rel}", repo.trim_end_matches('/'));
    if let Some(path) = repo.strip_prefix("file://") {
        let local = host.path(&format!("{}/{rel}", path.trim_end_matches('/')));
        match fs::copy(&local, into) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", local.display())),
        }
    } else if repo.starts_with("https://") || repo.starts_with("http://") {
        if Path::new(APT_HELPER).is_file() {
            download_with_apt(repo, &url, into)
        } else {
            download_with_curl(repo, &url, into)
        }
    } else {
        bail!("--repo {repo:?}: give a file://, http:// or https:// URL of the directory `ferry publish` made")
    }
}

/// apt's own downloader: on every Debian and Ubuntu VM, where curl is not.
const APT_HELPER: &str = "/usr/lib/apt/apt-helper";

/// `apt-helper download-file`: true when fetched, false on a 404.
fn download_with_apt(repo: &str, url: &str, into: &Path) -> Result<bool> {
    let out = Command::new(APT_HELPER)
        .args(["-o", "Acquire::http::Timeout=30", "download-file", url])
        .arg(into)
        .output()
        .with_context(|| format!("cannot run {APT_HELPER}"))?;
    if out.status.success() {
        return Ok(true);
    }
    let said = String::from_utf8_lossy(&out.stderr);
    if said.contains(" 404 ") {
        return Ok(false);
    }
    let error = said
        .lines()
        .filter(|l| l.starts_with("E: "))
        .collect::<Vec<_>>()
        .join("; ");
    bail!("repository {repo} is unreachable: {url}: {error}; check the URL and the network")
}

/// curl, where apt is not (Fedora, RHEL and kin ship it): true when
/// fetched, false on a 404.
fn download_with_curl(repo: &str, url: &str, into: &Path) -> Result<bool> {
    let out = Command::new("curl")
        .args(["-sSL", "--max-time", "30", "-w", "%{http_code}", "-o"])
        .arg(into)
        .arg(url)
        .output()
        .context("cannot run curl (needed for an http(s) repository where apt is not installed)")?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if code == "404" {
        return Ok(false);
    }
    if !out.status.success() || code != "200" {
        bail!(
            "repository {repo} is unreachable: {url}: {} (HTTP {code}); check the URL and the network",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
    Ok(true)
}

/// Checks the repository is there and the channel exists (`probe` is the
/// file whose presence means the channel exists, e.g.
/// `apt/dists/stable/InRelease`).
pub fn require_channel(
    host: &Host,
    repo: &str,
    probe: &str,
    into: &Path,
    channel: &str,
) -> Result<()> {
    if fetch(host, repo, probe, into)? {
        return Ok(());
    }
    let mut known = String::new();
    if let Some(path) = repo.strip_prefix("file://") {
        let root = host.path(path.trim_end_matches('/'));
        if !root.is_dir() {
            bail!(
                "repository {repo} is unreachable: {} does not exist",
                root.display()
            )
        }
        let dists = host.path(&format!("{}/apt/dists", path.trim_end_matches('/')));
        if let Ok(entries) = fs::read_dir(&dists) {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            names.sort();
            known = format!(" (channels there: {})", names.join(", "));
        }
    }
    bail!("channel {channel:?} not found in repository {repo}: no {probe}{known}; publish to it first or pick another --channel")
}
