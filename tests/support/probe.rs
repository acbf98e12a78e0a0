//! Tiny packages to install in the lab hosts: `ferry-lab-probe`, one file
//! (`/usr/share/ferry-lab-probe/version`) and an install script that appends
//! to `/var/log/ferry-lab-probe.log` (so rpm needs the shim's /bin/sh).
//! And the reference agent itself, built by `ferry build`.

use super::agent::AGENT;
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

/// A variant of pkg/ for the upgrade tests.
#[derive(Clone, Copy, PartialEq)]
pub enum Variant {
    /// pkg/ with the given state schema, short quiesce and health timeouts,
    /// and its conffile marked with the version (so each version ships a
    /// different one) and `migrate_on_start = false` (so an older state is
    /// migrated by the hook or not at all).
    Good,
    /// The same, but the unit cannot start (`ExecStartPre=/bin/false`): a
    /// new version whose postinst / %posttrans health check fails.
    Broken,
    /// As `Good`, but without the socket unit: the agent binds its control
    /// socket itself, as agents that are not socket-activated do.
    Bound,
}

/// `ferry build --version VERSION` of pkg/ as it is.
pub fn agent(version: &str) -> AgentPackages {
    build_once(version, version, None)
}

/// ferry's own packages (pkg/ferry-cli.toml) at `version`, built once per
/// test process and version.
pub fn ferry_cli(version: &str) -> AgentPackages {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lab-ferry-cli-{version}-{}", std::process::id()));
    let packages = AgentPackages {
        deb: out.join(format!("ferry_{version}-1_amd64.deb")),
        rpm: out.join(format!("ferry-{version}-1.x86_64.rpm")),
    };
    if packages.deb.is_file() && packages.rpm.is_file() {
        return packages;
    }
    fs::create_dir_all(&out).unwrap();
    // Its [build] command compiles into the shared target/package.
    let _lock = build_lock();
    run(Command::new(env!("CARGO_BIN_EXE_ferry"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--descriptor",
            "pkg/ferry-cli.toml",
            "--version",
            version,
            "--out",
        ])
        .arg(&out));
    assert!(packages.deb.is_file(), "{} missing", packages.deb.display());
    assert!(packages.rpm.is_file(), "{} missing", packages.rpm.display());
    packages
}

/// `ferry build --version VERSION` of a copy of pkg/ made as `variant` says,
/// whose state schema is `schema`.
pub fn agent_variant(version: &str, schema: u32, variant: Variant) -> AgentPackages {
    let tag = match variant {
        Variant::Good => format!("{version}-s{schema}"),
        Variant::Broken => format!("{version}-s{schema}-broken"),
        Variant::Bound => format!("{version}-s{schema}-bound"),
    };
    build_once(&tag, version, Some((schema, variant)))
}

/// Builds once per test process and tag, into a directory of this process
/// under the target's tmp dir (test binaries run concurrently must not
/// rebuild each other's packages); directories of processes that are gone
/// are removed.
fn build_once(tag: &str, version: &str, variant: Option<(u32, Variant)>) -> AgentPackages {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let pid = std::process::id();
    let out = base.join(format!("lab-agent-{tag}-{pid}"));
    let packages = AgentPackages {
        deb: out.join(format!("{AGENT}_{version}-1_amd64.deb")),
        rpm: out.join(format!("{AGENT}-{version}-1.x86_64.rpm")),
    };
    // Held during the build: two versions never build the agent at once.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.is_empty() {
        remove_stale(base);
    }
    if built.iter().any(|t| t == tag) {
        return packages;
    }
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    let _lock = build_lock();
    let mut build = Command::new(env!("CARGO_BIN_EXE_ferry"));
    build
        .args(["build", "--version", version, "--out"])
        .arg(&out);
    match variant {
        None => build.current_dir(env!("CARGO_MANIFEST_DIR")),
        Some((schema, variant)) => {
            // Inside the workspace: the descriptor's build command runs
            // cargo in its directory.
            let pkg = out.join("pkg");
            pkg_copy(&pkg, version, schema, variant);
            build.arg("--descriptor").arg(pkg.join("ferry.toml"))
        }
    };
    run(&mut build);
    assert!(packages.deb.is_file(), "{} missing", packages.deb.display());
    assert!(packages.rpm.is_file(), "{} missing", packages.rpm.display());
    built.push(tag.to_string());
    packages
}

/// Held while `ferry build` writes to the shared target/package: one lock
/// across the test processes of every suite (released when dropped).
fn build_lock() -> fs::File {
    let lock = fs::File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join("ferry-build.lock"))
        .expect("build lock");
    // SAFETY: flock on a valid open file descriptor; released on close.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    lock
}

/// A copy of pkg/ with the schema, timeouts, conffile and unit `variant`
/// asks for; the descriptor's relative paths made absolute.
fn pkg_copy(dir: &Path, version: &str, schema: u32, variant: Variant) {
    fs::create_dir_all(dir).unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    for entry in fs::read_dir(Path::new(repo).join("pkg")).unwrap() {
        let entry = entry.unwrap();
        // The descriptors and units; pkg/cloud-init/ is not the agent's.
        if entry.path().is_file() {
            fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let descriptor = fs::read_to_string(dir.join("ferry.toml"))
        .unwrap()
        .replace("\"../", &format!("\"{repo}/"))
        .replace("schema = 4", &format!("schema = {schema}"))
        .replace("quiesce_timeout_secs = 120", "quiesce_timeout_secs = 5")
        .replace("health_timeout_secs = 60", "health_timeout_secs = 10");
    let descriptor = if variant == Variant::Bound {
        let socket = "socket = \"roboconf-agent.socket\"\n";
        assert!(
            descriptor.contains(socket),
            "pkg/ferry.toml declares the socket"
        );
        descriptor.replace(socket, "")
    } else {
        descriptor
    };
    fs::write(dir.join("ferry.toml"), descriptor).unwrap();
    let mut conffile = fs::read_to_string(dir.join("agent.toml")).unwrap();
    // Only the hook migrates: an upgrade whose hook did not migrate up
    // fails instead of passing on the agent's own migration at start.
    conffile.push_str(&format!(
        "migrate_on_start = false\n# as shipped with {version}\n"
    ));
    fs::write(dir.join("agent.toml"), conffile).unwrap();
    if variant == Variant::Broken {
        let unit = fs::read_to_string(dir.join("roboconf-agent.service"))
            .unwrap()
            .replace("[Service]\n", "[Service]\nExecStartPre=/bin/false\n");
        fs::write(dir.join("roboconf-agent.service"), unit).unwrap();
    }
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
