//! Signing through the `gpg` and `rpmsign` command-line tools, with the key
//! in a given GNUPGHOME. Using the tools (rather than an OpenPGP crate) keeps
//! keys where admins already keep them, including smartcards and gpg-agent.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The secret keys that sign, named by their full fingerprints: each index
/// is signed by every one of them (apt and dnf accept an index when one of
/// its signatures is by a key they trust), each rpm by the first alone
/// (rpm 4.18 keeps one OpenPGP signature per package: `rpmsign --addsign`
/// replaces the one there).
#[derive(Debug, Clone)]
pub struct Signer {
    pub fingerprints: Vec<String>,
    gnupghome: Option<PathBuf>,
}

impl Signer {
    /// Finds, for each of `keys`, exactly one secret signing key (id,
    /// fingerprint or user id); two that name the same key are refused.
    pub fn find(keys: &[String], gnupghome: Option<&Path>) -> Result<Signer> {
        let mut fingerprints: Vec<String> = Vec::new();
        for key in keys {
            let fingerprint = find_one(key, gnupghome)?;
            if fingerprints.contains(&fingerprint) {
                bail!("--key {key:?} names key {fingerprint} a second time: give each key once");
            }
            fingerprints.push(fingerprint);
        }
        if fingerprints.is_empty() {
            bail!("no signing key given: pass --key KEYID");
        }
        Ok(Signer {
            fingerprints,
            gnupghome: gnupghome.map(Path::to_path_buf),
        })
    }

    /// The key that signs rpms: the first given.
    pub fn package_key(&self) -> &str {
        &self.fingerprints[0]
    }

    /// InRelease: the Release text, clear-signed.
    pub fn clearsign(&self, input: &Path, output: &Path) -> Result<()> {
        self.gpg(&["--clearsign"], input, output)
    }

    /// Release.gpg, repomd.xml.asc: a detached ASCII-armored signature.
    pub fn detach_sign(&self, input: &Path, output: &Path) -> Result<()> {
        self.gpg(&["--armor", "--detach-sign"], input, output)
    }

    /// The public keys, armored, for clients (`Signed-By:`, `gpgkey=`;
    /// `ferry channel enable` takes the one its `--fingerprint` names).
    pub fn export_public(&self) -> Result<Vec<u8>> {
        let output = gpg_command(self.gnupghome.as_deref())
            .args(["--armor", "--export"])
            .args(&self.fingerprints)
            .output()
            .context("cannot run gpg")?;
        if !output.status.success() || output.stdout.is_empty() {
            bail!(
                "gpg cannot export public key(s) {}",
                self.fingerprints.join(", ")
            );
        }
        Ok(output.stdout)
    }

    /// Adds an OpenPGP signature to an rpm in place (`rpmsign --addsign`).
    pub fn sign_rpm(&self, rpm: &Path) -> Result<()> {
        let mut command = tool("rpmsign");
        command.args([
            "--addsign",
            "--define",
            &format!("_gpg_name {}", self.package_key()),
        ]);
        // Debian's rpm names /usr/bin/gpg2, which Debian 12 does not ship:
        // point it at the gpg that signs everything else.
        command.args([
            "--define",
            &format!("__gpg {}", find_in_path("gpg")?.display()),
        ]);
        if let Some(home) = &self.gnupghome {
            command.args(["--define", &format!("_gpg_path {}", home.display())]);
        }
        let output = command
            .arg(rpm)
            .output()
            .context("cannot run rpmsign: install the rpm package")?;
        if !output.status.success() {
            bail!(
                "rpmsign failed on {}: {}",
                rpm.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    fn gpg(&self, mode: &[&str], input: &Path, output: &Path) -> Result<()> {
        let mut command = gpg_command(self.gnupghome.as_deref());
        command.args(["--yes", "--digest-algo", "SHA256"]);
        for fingerprint in &self.fingerprints {
            command.args(["--local-user", fingerprint]);
        }
        let result = command
            .args(mode)
            .arg("--output")
            .arg(output)
            .arg(input)
            .output()
            .context("cannot run gpg")?;
        if !result.status.success() {
            bail!(
                "gpg could not sign {} with {}: {}",
                input.display(),
                self.fingerprints.join(", "),
                String::from_utf8_lossy(&result.stderr).trim()
            );
        }
        Ok(())
    }
}

/// The fingerprint of the one secret signing key `key` names.
fn find_one(key: &str, gnupghome: Option<&Path>) -> Result<String> {
    let output = gpg_command(gnupghome)
        .args(["--with-colons", "--list-secret-keys", "--", key])
        .output()
        .context("cannot run gpg: install the gnupg package")?;
    let where_ = gnupghome.map_or("the default GNUPGHOME".to_string(), |h| {
        h.display().to_string()
    });
    if !output.status.success() {
        bail!(
            "signing key {key:?} is not a secret key in {where_}: \
             import it (gpg --import) or pass --gnupghome/--key naming one that is"
        );
    }
    let fingerprints = signing_fingerprints(&String::from_utf8_lossy(&output.stdout));
    match fingerprints.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "key {key:?} in {where_} cannot sign (no usable signing capability): use a signing key"
        ),
        many => bail!(
            "key {key:?} matches {} secret keys in {where_}: pass a full fingerprint",
            many.len()
        ),
    }
}

/// Absolute path of a program found in $PATH.
fn find_in_path(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{program} is not in PATH: install gnupg"))
}

/// gpg that never prompts: a publish must not wait for a human.
fn gpg_command(gnupghome: Option<&Path>) -> Command {
    let mut command = tool("gpg");
    command.args(["--batch", "--no-tty", "--quiet"]);
    if let Some(home) = gnupghome {
        command.arg("--homedir").arg(home);
    }
    command
}

/// Fingerprints of the primary secret keys whose key (or a subkey) can sign.
fn signing_fingerprints(colons: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut awaiting_fingerprint = false;
    for line in colons.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.first().copied() {
            Some("sec") => {
                // Field 12 lists the whole key's usable capabilities; capital S = can sign.
                awaiting_fingerprint = fields.get(11).is_some_and(|caps| caps.contains('S'));
            }
            Some("fpr") if awaiting_fingerprint => {
                found.extend(fields.get(9).map(|f| f.to_string()));
                awaiting_fingerprint = false;
            }
            _ => {}
        }
    }
    found
}

/// A command for one of the tools publishing runs (gpg, rpmsign,
/// createrepo_c) whose process dies with ferry's: a publish killed at any
/// instant leaves nothing still writing into the repository, where the
/// next run would race with it. (Publishing spawns only from the main
/// thread, whose exit is the process's.)
pub(super) fn tool(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    // SAFETY: between fork and exec, only async-signal-safe calls: prctl
    // and getppid.
    let parent = std::process::id();
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect: do not run at all.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from(std::io::ErrorKind::Interrupted));
            }
            Ok(())
        });
    }
    command
}
