//! The repository's key, checked against the fingerprint the admin was
//! given, in a throwaway GNUPGHOME; gpg's listings read the same way
//! everywhere ferry reads them.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::host::output;

/// A temporary GNUPGHOME holding only the checked key (mode 0700, made by
/// the `tempfile` crate, removed on drop once gpg's agent, if one was
/// started, is stopped).
pub struct TempGpg {
    pub home: PathBuf,
    /// Whether a command that may start gpg's agent ran.
    agent: Cell<bool>,
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
            agent: Cell::new(false),
            _dir: dir,
        })
    }

    /// gpg on this home, for public keys only (import, export, listings,
    /// verification): it never starts gpg's agent, which none of these
    /// needs, so nothing is left to stop (an agent's start and stop cost
    /// `ferry channel status` more than the rest of the check).
    pub fn gpg(&self) -> Command {
        let mut c = self.command();
        c.arg("--no-autostart");
        c
    }

    /// gpg on this home, free to start gpg's agent (secret keys), which
    /// the drop then stops.
    pub fn gpg_with_agent(&self) -> Command {
        self.agent.set(true);
        self.command()
    }

    fn command(&self) -> Command {
        let mut c = Command::new("gpg");
        c.arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--no-tty", "--no-permission-warning"]);
        c
    }

    /// Verifies a detached (`data` given) or clear-signed file with the
    /// key, as apt and dnf do: one good signature by it is enough, others
    /// by keys this keyring lacks are ignored (a repository whose key is
    /// being rotated carries two), a bad one fails.
    pub fn verify(&self, what: &str, signed: &Path, data: Option<&Path>) -> Result<()> {
        let mut c = self.gpg();
        c.args(["--status-fd", "1", "--verify"]).arg(signed);
        if let Some(d) = data {
            c.arg(d);
        }
        let out = c.output().context("cannot run gpg")?;
        let status = String::from_utf8_lossy(&out.stdout);
        if !signature_accepted(&status) {
            let said: Vec<String> = String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            bail!(
                "{what} is not signed by the checked key: the repository or the key is wrong ({})",
                said.join("; ")
            )
        }
        Ok(())
    }

    /// The primary fingerprints of the keys in `file`, as gpg prints them
    /// (upper-case hex, in full), without importing anything.
    pub fn show_keys(&self, file: &Path) -> Result<Vec<String>> {
        let listing = output(self.gpg().args(["--with-colons", "--show-keys"]).arg(file))
            .with_context(|| format!("{} is not an OpenPGP public key", file.display()))?;
        Ok(primary_fingerprints(&listing))
    }
}

/// Whether gpg's `--status-fd` lines show a good signature (`VALIDSIG`,
/// by a key of the keyring) and no bad one (`BADSIG`, `EXPSIG`,
/// `EXPKEYSIG`, `REVKEYSIG`); `NO_PUBKEY` signatures, by other keys, are
/// not the keyring's to judge.
fn signature_accepted(status: &str) -> bool {
    let keywords: Vec<&str> = status
        .lines()
        .filter_map(|l| l.strip_prefix("[GNUPG:] "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    keywords.contains(&"VALIDSIG")
        && !keywords
            .iter()
            .any(|k| matches!(*k, "BADSIG" | "EXPSIG" | "EXPKEYSIG" | "REVKEYSIG"))
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
        if !self.agent.get() {
            return;
        }
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "all"])
            .output();
    }
}

/// Checks that FILE holds the key whose primary fingerprint is
/// `fingerprint` (alone, or among the keys of a repository whose key is
/// being rotated); returns a keyring holding that key alone and its
/// armored export.
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
        [] => bail!("{} holds no public key", key.display()),
        found if found.iter().any(|f| same_fingerprint(f, &want)) => {}
        [one] => bail!(
            "the key in {} has fingerprint {one}, not {want}: refusing to trust it. \
             Get the right key (the repository's signing-key.asc) or check the fingerprint you were given",
            key.display()
        ),
        many => bail!(
            "{} holds the keys {}, none with fingerprint {want}: refusing to trust any. \
             Get the right key (the repository's signing-key.asc) or check the fingerprint you were given",
            key.display(),
            many.join(", ")
        ),
    }
    // Only the wanted key enters the keyring that checks the repository.
    let all = TempGpg::new()?;
    output(all.gpg().arg("--import").arg(key))?;
    let armored = output(all.gpg().args(["--armor", "--export", &want]))?;
    let exported = gpg.home.join("checked-key.asc");
    std::fs::write(&exported, &armored)
        .with_context(|| format!("cannot write {}", exported.display()))?;
    output(gpg.gpg().arg("--import").arg(&exported))?;
    Ok((gpg, armored))
}

#[cfg(test)]
mod tests {
    use super::signature_accepted;

    #[test]
    fn one_good_signature_is_enough_and_a_bad_one_fails() {
        let good = "[GNUPG:] GOODSIG 4A8C4B5BF46E68D5 old\n\
                    [GNUPG:] VALIDSIG CDDB029D8C5A7C7BDD594D1D4A8C4B5BF46E68D5 2026-12-07 1 0 4 0 1 8 01 CDDB029D8C5A7C7BDD594D1D4A8C4B5BF46E68D5\n";
        let other = "[GNUPG:] ERRSIG 37E203326E4DD6AC 1 8 01 1 9 F70648AB00C5FD3EC78F5B8E37E203326E4DD6AC\n\
                     [GNUPG:] NO_PUBKEY 37E203326E4DD6AC\n";
        let bad = "[GNUPG:] BADSIG 37E203326E4DD6AC new\n";
        assert!(signature_accepted(good));
        assert!(signature_accepted(&format!("{good}{other}")));
        assert!(signature_accepted(&format!("{other}{good}")));
        assert!(!signature_accepted(other));
        assert!(!signature_accepted(&format!("{good}{bad}")));
        assert!(!signature_accepted(""));
    }
}
