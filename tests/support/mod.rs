//! Support shared by the integration tests: throwaway hosts with real systemd
//! (`lab`), six of them driven by Ansible (`fleet`), the reference agent inside them (`agent`), a throwaway signing key (`signing`), signed local apt and rpm
//! repositories (`repo`) and tiny probe packages (`probe`). See docs/LAB.md.
//!
//! The assertions of the upgrade paths (`upgrade`, with a `client` of the
//! agent's socket) serve tests/hooks.rs and tests/interrupted.rs.
//!
//! Each test crate compiles this module and uses only part of it; tests/lab.rs
//! exercises all of it but `upgrade`, which the upgrade suites use whole, so
//! the lint below hides no code that nothing uses.
#![allow(dead_code)]

pub mod agent;
pub mod client;
pub mod fleet;
pub mod lab;
pub mod probe;
pub mod repo;
pub mod signing;
pub mod upgrade;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory under the system's temporary directory, removed on drop
/// (kept when `FERRY_LAB_KEEP` is set, for debugging).
pub struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{prefix}-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Scratch { path, keep: false },
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Do not remove the directory on drop (something is still mounted in it).
    fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if std::env::var_os("FERRY_LAB_KEEP").is_some() {
            eprintln!("FERRY_LAB_KEEP: keeping {}", self.path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Runs a command on the machine running the tests; panics with its output
/// unless it succeeds. Returns its standard output.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lab needs root (debootstrap, systemd-nspawn, nsenter). Tests fail, and
/// never skip, when run without it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the lab tests need root (systemd-nspawn, nsenter); run them as root, as CI does"
    );
}
