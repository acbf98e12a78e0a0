//! The repository's key, checked against the fingerprint the admin was
//! given, in a throwaway GNUPGHOME; gpg's listings read the same way
//! everywhere ferry reads them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::host::output;

/// A temporary GNUPGHOME holding only the checked key (mode 0700, made by
/// the `tempfile` crate, removed on drop once gpg's agent is stopped).
pub struct TempGpg {
    pub home: PathBuf,
    _dir: tempfile::TempDir,
}

impl TempGpg {
    pub fn new() -> Result<TempGpg> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-channel-gpg-")
            .tempdir()
            .context("cannot create a temporary GNUPGHOME")?;
        Ok(TempGpg {
            home: dir.path().to_path_buf(),
            _dir: dir,
        })
    }

    pub fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--no-tty"]);
        c
    }

    /// Verifies a detached (`sig` given) or clear-signed file with the key.
    pub fn verify(&self, what: &str, signed: &Path, data: Option<&Path>) -> Result<()> {
        let mut c = self.gpg();
        c.arg("--verify").arg(signed);
        if let Some(d) = data {
            c.arg(d);
        }
        output(&mut c).map(drop).with_context(|| {
            format!("{what} is not signed by the checked key: the repository or the key is wrong")
        })
    }

    /// The primary fingerprints of the keys in `file`, as gpg prints them
    /// (upper-case hex, in full), without importing anything.
    pub fn show_keys(&self, file: &Path) -> Result<Vec<String>> {
        let listing = output(self.gpg().args(["--with-colons", "--show-keys"]).arg(file))
            .with_context(|| format!("{} is not an OpenPGP public key", file.display()))?;
        Ok(primary_fingerprints(&listing))
    }
}

/// The primary keys' fingerprints in a `gpg --with-colons` listing: the
/// `fpr:` record right after each `pub:` (subkeys' follow `sub:`).
pub fn primary_fingerprints(listing: &str) -> Vec<String> {
    let mut primaries = Vec::new();
    let mut after_pub = false;
    for line in listing.lines() {
        if line.starts_with("pub:") {
            after_pub = true;
        } else if after_pub && line.starts_with("fpr:") {
            primaries.push(line.split(':').nth(9).unwrap_or("").to_string());
            after_pub = false;
        }
    }
    primaries
}

/// A fingerprint as gpg prints it: hex digits in upper case, no spaces.
pub fn normalize_fingerprint(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// A whole fingerprint (40 hex digits for a v4 key, 64 for v5 and v6), not
/// a key id: ids of 8 or 16 digits are cheap to collide.
pub fn is_full_fingerprint(fingerprint: &str) -> bool {
    fingerprint.len() >= 40 && fingerprint.chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether two fingerprints name the same key: every digit compared, so a
/// key that shares only its short (last 8 digits) or long id is another key.
pub fn same_fingerprint(a: &str, b: &str) -> bool {
    let (a, b) = (normalize_fingerprint(a), normalize_fingerprint(b));
    is_full_fingerprint(&a) && a == b
}

impl Drop for TempGpg {
    fn drop(&mut self) {
        // The directory goes with `_dir`, after the agent that holds its
        // socket has stopped.
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "all"])
            .output();
    }
}

/// Checks that FILE holds exactly one key whose primary fingerprint is
/// `fingerprint`; returns a keyring holding it and its armored export.
pub fn checked_key(key: &Path, fingerprint: &str) -> Result<(TempGpg, String)> {
    let want = normalize_fingerprint(fingerprint);
    if !is_full_fingerprint(&want) {
        bail!(
            "--fingerprint {fingerprint:?} is not a full fingerprint (40 or more hex digits); \
             `gpg --show-keys {}` prints it: compare it with the one the repository's owner published",
            key.display()
        )
    }
    if !key.is_file() {
        bail!("key file {} does not exist", key.display())
    }
    let gpg = TempGpg::new()?;
    let primaries = gpg.show_keys(key)?;
    match primaries.as_slice() {
        [one] if same_fingerprint(one, &want) => {}
        [one] => bail!(
            "the key in {} has fingerprint {one}, not {want}: refusing to trust it. \
             Get the right key (the repository's signing-key.asc) or check the fingerprint you were given",
            key.display()
        ),
        [] => bail!("{} holds no public key", key.display()),
        many => bail!(
            "{} holds {} keys ({}); give a file with the repository's key alone",
            key.display(),
            many.len(),
            many.join(", ")
        ),
    }
    output(gpg.gpg().arg("--import").arg(key))?;
    let armored = output(gpg.gpg().args(["--armor", "--export", &want]))?;
    Ok((gpg, armored))
}
