//! Tiny packages to install in the lab hosts: `ferry-lab-probe`, one file
//! (`/usr/share/ferry-lab-probe/version`) and an install script that appends
//! to `/var/log/ferry-lab-probe.log` (so rpm needs the shim's /bin/sh).
//! And the reference agent itself, built by `ferry build`.

use super::{run, Scratch};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

pub const NAME: &str = "ferry-lab-probe";
const SCRIPT: &str =
    "echo \"ferry-lab-probe $VERSION installed ($*)\" >> /var/log/ferry-lab-probe.log";

/// Builds `ferry-lab-probe_VERSION_all.deb` in `out` with `dpkg-deb`.
pub fn deb(version: &str, out: &Path) -> PathBuf {
    let work = Scratch::new("ferry-lab-probe-deb");
    let root = work.path().join("root");
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::create_dir_all(root.join("usr/share").join(NAME)).unwrap();
    fs::write(
        root.join("usr/share").join(NAME).join("version"),
        format!("{version}\n"),
    )
    .unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {NAME}\nVersion: {version}\nArchitecture: all\n\
             Maintainer: ferry lab <lab@ferry.invalid>\nSection: misc\nPriority: optional\n\
             Description: ferry lab probe package\n"
        ),
    )
    .unwrap();
    let postinst = root.join("DEBIAN/postinst");
    fs::write(
        &postinst,
        format!("#!/bin/sh\nset -e\nVERSION={version}\n{SCRIPT}\n"),
    )
    .unwrap();
    run(Command::new("chmod").arg("0755").arg(&postinst));
    let deb = out.join(format!("{NAME}_{version}_all.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb));
    deb
}

/// Builds `ferry-lab-probe-VERSION-1.noarch.rpm` in `out` with `rpmbuild`.
pub fn rpm(version: &str, out: &Path) -> PathBuf {
    let work = Scratch::new("ferry-lab-probe-rpm");
    let spec = work.path().join("probe.spec");
    fs::write(
        &spec,
        format!(
            "Name: {NAME}\nVersion: {version}\nRelease: 1\nSummary: ferry lab probe package\n\
             License: Apache-2.0\nBuildArch: noarch\n\n\
             %description\nferry lab probe package\n\n\
             %install\nmkdir -p %{{buildroot}}/usr/share/{NAME}\n\
             echo {version} > %{{buildroot}}/usr/share/{NAME}/version\n\n\
             %post\nVERSION={version}\n{SCRIPT}\n\n\
             %files\n/usr/share/{NAME}\n"
        ),
    )
    .unwrap();
    run(Command::new("rpmbuild")
        .args(["-bb", "--quiet"])
        .arg("--define")
        .arg(format!("_topdir {}", work.path().display()))
        .arg(&spec));
    let name = format!("{NAME}-{version}-1.noarch.rpm");
    let rpm = out.join(&name);
    fs::copy(work.path().join("RPMS/noarch").join(&name), &rpm).unwrap();
    rpm
}

/// The reference agent's packages, made by `ferry build --version VERSION`.
pub struct AgentPackages {
    pub deb: PathBuf,
    pub rpm: PathBuf,
}

pub const AGENT: &str = "roboconf-agent";

/// Runs `ferry build --version VERSION` (the ferry binary of this test
/// build) once per test process and version, into a directory of this
/// process under the target's tmp dir (test binaries run concurrently must
/// not rebuild each other's packages); directories of processes that are
/// gone are removed.
pub fn agent(version: &str) -> AgentPackages {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let pid = std::process::id();
    let out = base.join(format!("lab-agent-{version}-{pid}"));
    let packages = AgentPackages {
        deb: out.join(format!("{AGENT}_{version}-1_amd64.deb")),
        rpm: out.join(format!("{AGENT}-{version}-1.x86_64.rpm")),
    };
    // Held during the build: two versions never build the agent at once.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.is_empty() {
        remove_stale(base);
    }
    if !built.iter().any(|v| v == version) {
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&out).unwrap();
        // `ferry build` writes the agent to the shared target/package: the
        // same cross-process lock as the other suites' builds (tests/hooks.rs).
        let lock = fs::File::create(base.join("ferry-build.lock")).expect("build lock");
        // SAFETY: flock on a valid open file descriptor; released on close.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        run(Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["build", "--version", version, "--out"])
            .arg(&out)
            .current_dir(env!("CARGO_MANIFEST_DIR")));
        assert!(packages.deb.is_file(), "{} missing", packages.deb.display());
        assert!(packages.rpm.is_file(), "{} missing", packages.rpm.display());
        built.push(version.to_string());
    }
    packages
}

/// Removes `lab-agent-VERSION-PID` directories whose process is gone.
fn remove_stale(base: &Path) {
    for entry in fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("lab-agent-")
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
