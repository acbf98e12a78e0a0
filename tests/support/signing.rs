//! A throwaway OpenPGP signing key in a temporary GNUPGHOME, no passphrase.

use super::{run, Scratch};
use std::path::Path;
use std::process::Command;

/// Makes an RSA signing key for `name` in `home`; its fingerprint.
fn generate_key(home: &Path, name: &str) -> String {
    let uid = format!("ferry lab {name} <{name}@lab.ferry.invalid>");
    gpg(
        home,
        &[
            "--passphrase",
            "",
            "--quick-gen-key",
            &uid,
            "rsa3072",
            "sign",
            "never",
        ],
    );
    gpg(home, &["--with-colons", "--list-secret-keys", &uid])
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .expect("no fingerprint in gpg's listing")
        .to_string()
}

pub struct Signer {
    home: Scratch,
    fingerprint: String,
}

impl Signer {
    /// Makes a new RSA signing key for `name` (e.g. "probe").
    pub fn new(name: &str) -> Signer {
        let home = Scratch::new("ferry-lab-gpg");
        let fingerprint = generate_key(home.path(), name);
        Signer { home, fingerprint }
    }

    /// Makes a second RSA signing key for `name` in the same GNUPGHOME (a
    /// key to rotate to); its fingerprint. The signer's own key stays the
    /// first one.
    pub fn add_key(&self, name: &str) -> String {
        generate_key(self.home(), name)
    }

    /// The key's full fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The GNUPGHOME holding the key.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Runs gpg on this key ring in batch mode; returns its standard output.
    pub fn gpg(&self, args: &[&str]) -> String {
        gpg(self.home(), args)
    }

    /// The public key, binary (for /etc/apt/keyrings/*.gpg).
    pub fn public_key(&self) -> Vec<u8> {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home())
            .args(["--batch", "--export", &self.fingerprint])
            .output()
            .expect("gpg --export");
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "gpg --export failed"
        );
        out.stdout
    }

    /// The public key, ASCII-armoured (for rpm --import and dnf's gpgkey=).
    pub fn public_key_armored(&self) -> String {
        self.gpg(&["--armor", "--export", &self.fingerprint])
    }

    /// Writes `input`'s clear-signed copy (InRelease).
    pub fn clearsign(&self, input: &Path, output: &Path) {
        self.sign(&["--clearsign"], input, output);
    }

    /// Writes a detached signature of `input`; armoured when `armor`.
    pub fn detach_sign(&self, input: &Path, output: &Path, armor: bool) {
        let mut args = vec!["--detach-sign"];
        if armor {
            args.push("--armor");
        }
        self.sign(&args, input, output);
    }

    fn sign(&self, how: &[&str], input: &Path, output: &Path) {
        let (input, output) = (input.to_string_lossy(), output.to_string_lossy());
        let mut args = vec!["--local-user", &self.fingerprint, "--digest-algo", "SHA256"];
        args.extend_from_slice(how);
        args.extend_from_slice(&["--output", &*output, &*input]);
        self.gpg(&args);
    }

    /// Signs an rpm package in place (`rpmsign --addsign`).
    pub fn rpmsign(&self, rpm: &Path) {
        run(Command::new("rpmsign")
            .arg("--addsign")
            .arg("--define")
            .arg(format!("_gpg_name {}", self.fingerprint))
            .arg("--define")
            .arg(format!("_gpg_path {}", self.home().display()))
            .arg("--define")
            .arg("__gpg /usr/bin/gpg")
            .arg(rpm));
    }
}

fn gpg(home: &Path, args: &[&str]) -> String {
    run(Command::new("gpg")
        .arg("--homedir")
        .arg(home)
        .args(["--batch", "--yes", "--pinentry-mode", "loopback"])
        .args(args))
}

impl Drop for Signer {
    /// gpg started an agent for this GNUPGHOME: stop it before the directory
    /// goes, so that no process is left behind.
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home())
            .args(["--kill", "all"])
            .status();
    }
}
