//! Throwaway Debian and RPM hosts with real systemd, made from the roots that
//! `ci/lab build` caches. See docs/LAB.md.
//!
//! ```ignore
//! let mut host = Host::new(HostKind::Debian); // a fresh copy of the root
//! host.bind_ro(repo_dir, "/srv/repo");        // before boot
//! assert_eq!(host.boot(), "running");         // systemd-nspawn -b
//! host.sh_ok("apt-get update");               // nsenter into the container
//! host.poweroff();                            // and nothing is left behind
//! ```

use super::{require_root, Scratch};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// PATH inside the hosts.
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// No command inside a host may run longer than this (nothing may wait for a human).
const COMMAND_TIMEOUT_SECS: u32 = 600;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// Debian 12 with systemd, apt and unattended-upgrades.
    Debian,
    /// Debian 12 with systemd, made an RPM system: rpm, dnf, dnf-automatic.
    Rpm,
}

impl HostKind {
    pub fn name(self) -> &'static str {
        match self {
            HostKind::Debian => "debian",
            HostKind::Rpm => "rpm",
        }
    }
}

/// What a command run inside a host did.
#[derive(Debug)]
pub struct Output {
    /// Exit status; -1 when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The directory where `ci/lab` caches the roots.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("FERRY_LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ferry-lab"))
}

/// Runs `ci/lab build` once per test process; the script's own lock keeps
/// parallel test processes from building twice, and it returns at once when
/// the cached roots match the recipe.
fn ensure_roots() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/lab");
        let status = Command::new(&script)
            .arg("build")
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{} build` failed ({status})", script.display()))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A throwaway host: a private copy of a cached root, booted or not.
///
/// Not booted, `exec` runs each command in a fresh `systemd-nspawn` (a
/// chroot with /proc, /sys and /dev): enough for dpkg and rpm. After `boot`,
/// commands run inside the running system with `nsenter`.
pub struct Host {
    kind: HostKind,
    // Field order matters for Drop: `scratch` (the copy) goes last.
    nspawn: Option<Child>,
    leader: Option<u32>,
    pid_namespace: Option<String>,
    /// `boot` restarted the units that failed with 219/CGROUP (once only).
    spawn_failures_restarted: bool,
    binds: Vec<(PathBuf, String)>,
    root: PathBuf,
    scratch: Scratch,
}

impl Host {
    /// Copies the cached root of `kind` (building it first if needed).
    pub fn new(kind: HostKind) -> Host {
        require_root();
        ensure_roots();
        let scratch = Scratch::new(&format!("ferry-lab-{}", kind.name()));
        let root = scratch.path().join("root");
        let cached = cache_dir().join(kind.name());
        let lock = cache_dir().join(".lock");
        // A shared lock: `ci/lab build` cannot replace the root mid-copy.
        super::run(
            Command::new("flock")
                .arg("-s")
                .arg(&lock)
                .args(["cp", "-a", "--reflink=auto"])
                .arg(&cached)
                .arg(&root),
        );
        Host {
            kind,
            nspawn: None,
            leader: None,
            pid_namespace: None,
            spawn_failures_restarted: false,
            binds: Vec::new(),
            root,
            scratch,
        }
    }

    pub fn kind(&self) -> HostKind {
        self.kind
    }

    /// The host's root directory, as seen from the machine running the tests.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The temporary directory holding the root and the console log.
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The PID namespace of the booted host (`pid:[…]`), to look for leftovers.
    pub fn pid_namespace(&self) -> Option<&str> {
        self.pid_namespace.as_deref()
    }

    /// The booted host's PID 1 as the machine sees it (what `nsenter -t`
    /// and Ansible's `community.docker.nsenter` connection take).
    pub fn leader(&self) -> Option<u32> {
        self.leader
    }

    /// Makes `host_path` visible read-only at `guest_path` (e.g. a repository
    /// used as a `file://` URL). Takes effect at boot and for unbooted `exec`.
    pub fn bind_ro(&mut self, host_path: impl AsRef<Path>, guest_path: &str) -> &mut Self {
        assert!(
            self.nspawn.is_none(),
            "bind_ro must be called before boot()"
        );
        assert!(guest_path.starts_with('/'), "{guest_path}: not absolute");
        self.binds
            .push((host_path.as_ref().to_path_buf(), guest_path.to_string()));
        self
    }

    fn bind_args(&self) -> Vec<String> {
        self.binds
            .iter()
            .map(|(h, g)| format!("--bind-ro={}:{g}", h.display()))
            .collect()
    }

    /// Stop timeouts of 15 s instead of 90 s (120 s for user managers):
    /// with two hosts booted on two cores, a user manager stopping the
    /// processes a recipe spawned sometimes hangs at power-off (its
    /// `cgroup.kill` fails with EIO in the nested cgroup), and would
    /// outlast the power-off deadline. What the tests check happens before
    /// power-off; `poweroff` still checks that nothing is left behind.
    fn shorten_stop_timeouts(&self) {
        let drop_ins = [
            (
                "etc/systemd/system.conf.d/ferry-lab.conf",
                "[Manager]\nDefaultTimeoutStopSec=15s\n",
            ),
            (
                "etc/systemd/user.conf.d/ferry-lab.conf",
                "[Manager]\nDefaultTimeoutStopSec=15s\n",
            ),
            (
                "etc/systemd/system/user@.service.d/ferry-lab.conf",
                "[Service]\nTimeoutStopSec=15s\n",
            ),
        ];
        for (path, text) in drop_ins {
            let path = self.root.join(path);
            fs::create_dir_all(path.parent().unwrap()).expect("lab drop-in directory");
            fs::write(&path, text).expect("lab drop-in");
        }
    }

    /// Boots the host with systemd-nspawn and waits until systemd has
    /// finished starting up. Returns what `systemctl is-system-running` says:
    /// "running", or "degraded" (the failed units are printed).
    pub fn boot(&mut self) -> String {
        assert!(self.nspawn.is_none(), "already booted");
        self.shorten_stop_timeouts();
        let console = fs::File::create(self.console_log()).expect("console log");
        let child = Command::new("systemd-nspawn")
            .args([
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--private-network",
            ])
            .arg("--console=read-only")
            .arg("-D")
            .arg(&self.root)
            .args(self.bind_args())
            .arg("-b")
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console log"))
            .stderr(console)
            .process_group(0)
            .spawn()
            .expect("cannot run systemd-nspawn (package systemd-container)");
        let pid = child.id();
        self.nspawn = Some(child);

        let deadline = Instant::now() + BOOT_TIMEOUT;
        // The container's PID 1 is the child of systemd-nspawn that is PID 1
        // in its own PID namespace (nspawn's short-lived intermediate child
        // is not).
        let leader = loop {
            if let Some(l) = children_of(pid).into_iter().find(|&c| is_namespace_init(c)) {
                break l;
            }
            if self.nspawn_exited() || Instant::now() > deadline {
                panic!(
                    "systemd-nspawn did not start a container:\n{}",
                    self.console_tail()
                );
            }
            sleep(Duration::from_millis(20));
        };
        self.leader = Some(leader);
        self.pid_namespace = fs::read_link(format!("/proc/{leader}/ns/pid"))
            .ok()
            .map(|p| p.display().to_string());

        // `--wait` needs systemd's bus; retry until it answers.
        loop {
            let out = self.exec(&["systemctl", "is-system-running", "--wait"]);
            let state = out.stdout.trim().to_string();
            match state.as_str() {
                "running" => return state,
                "degraded" if self.restart_spawn_failures() => continue,
                "degraded" => {
                    let failed = self.sh("systemctl --failed --no-legend --plain; \
                         for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1); do \
                         journalctl -b -u \"$u\" --no-pager | tail -n 20; done");
                    eprintln!(
                        "lab: {} host is degraded; failed units:\n{}",
                        self.kind.name(),
                        failed.stdout
                    );
                    return state;
                }
                _ => {}
            }
            if self.nspawn_exited() || Instant::now() > deadline {
                let jobs = self.exec(&["systemctl", "list-jobs", "--no-pager"]);
                panic!(
                    "{} host did not boot (last state {state:?}, {out}\n--- jobs\n{}):\n{}",
                    self.kind.name(),
                    jobs.stdout,
                    self.console_tail()
                );
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// Starts again, once, the failed units whose process systemd could not
    /// place in its cgroup (status 219/CGROUP): under load this machine's
    /// kernel sometimes refuses a cgroup write with EIO while several hosts
    /// boot, which says nothing about the unit. Whether any was restarted;
    /// a unit failing for any other reason is left failed.
    fn restart_spawn_failures(&mut self) -> bool {
        if self.spawn_failures_restarted {
            return false;
        }
        self.spawn_failures_restarted = true;
        let out = self.sh(
            "for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1); do \
               if [ \"$(systemctl show -P ExecMainStatus \"$u\")\" = 219 ]; then \
                 echo \"$u\"; systemctl reset-failed \"$u\"; systemctl start \"$u\" || true; \
               fi; \
             done",
        );
        let restarted = out.stdout.split_whitespace().count() > 0;
        if restarted {
            eprintln!(
                "lab: {} host: started again after 219/CGROUP: {}",
                self.kind.name(),
                out.stdout.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
        restarted
    }

    pub fn is_booted(&self) -> bool {
        self.leader.is_some()
    }

    /// Runs a command inside the host; never panics on failure.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let timeout = COMMAND_TIMEOUT_SECS.to_string();
        let mut cmd;
        match self.leader {
            Some(leader) => {
                cmd = Command::new("nsenter");
                cmd.args(["-t", &leader.to_string(), "-a"]);
                // The command's own timeout runs inside: killing nsenter would
                // not kill what it started in the host's PID namespace.
                cmd.args(["timeout", "-k", "10", &timeout, "env", "-i"]);
                cmd.args(guest_env());
            }
            None => {
                cmd = Command::new("systemd-nspawn");
                cmd.args([
                    "--quiet",
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                ])
                .arg("--console=pipe")
                .arg("-D")
                .arg(&self.root)
                .args(self.bind_args());
                for var in guest_env() {
                    cmd.arg(format!("--setenv={var}"));
                }
                cmd.args(["--", "timeout", "-k", "10", &timeout]);
            }
        }
        cmd.args(argv).stdin(Stdio::null());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a shell script (`sh -ec`) inside the host.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-ec", script])
    }

    /// Runs a shell script inside the host; panics with its output unless it
    /// succeeds. Returns its standard output.
    #[track_caller]
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.success(),
            "in the {} host, `{script}` failed: {out}",
            self.kind.name()
        );
        out.stdout
    }

    /// A path of the booted host's own mounts (/run, /tmp) as the machine
    /// sees it: through its init's root, /proc/PID/root.
    pub fn live_path(&self, guest: &str) -> PathBuf {
        let leader = self.leader.expect("the host is not booted");
        PathBuf::from(format!("/proc/{leader}/root{guest}"))
    }

    /// Where a path of the host lives on the machine running the tests.
    /// Symbolic links are resolved as the host would (an absolute target is
    /// taken relative to the host's root); the last component may not exist.
    pub fn path(&self, guest: &str) -> PathBuf {
        assert!(guest.starts_with('/'), "{guest}: not absolute");
        let mut pending: Vec<String> = components(guest);
        pending.reverse();
        let mut resolved = self.root.clone();
        let mut links = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                if resolved != self.root {
                    resolved.pop();
                }
                continue;
            }
            let next = resolved.join(&part);
            match fs::read_link(&next) {
                Ok(target) => {
                    links += 1;
                    assert!(links < 40, "{guest}: too many symbolic links");
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        resolved = self.root.clone();
                    }
                    let mut more = components(&target);
                    more.reverse();
                    pending.extend(more);
                }
                Err(_) => resolved = next,
            }
        }
        resolved
    }

    /// Writes a file inside the host (parents created, mode 0644).
    pub fn write(&self, guest: &str, contents: impl AsRef<[u8]>) {
        let path = self.path(guest);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Reads a file of the host.
    pub fn read(&self, guest: &str) -> String {
        let path = self.path(guest);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Copies a file or directory of the machine into the host (`cp -a`).
    pub fn copy_in(&self, host_src: impl AsRef<Path>, guest_dst: &str) {
        let dst = self.path(guest_dst);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        }
        super::run(Command::new("cp").arg("-a").arg(host_src.as_ref()).arg(dst));
    }

    /// Copies a file or directory of the host out to the machine (`cp -a`).
    pub fn copy_out(&self, guest_src: &str, host_dst: impl AsRef<Path>) {
        super::run(
            Command::new("cp")
                .arg("-a")
                .arg(self.path(guest_src))
                .arg(host_dst.as_ref()),
        );
    }

    /// Powers the host off from inside and waits for systemd-nspawn to exit;
    /// panics if it does not, or if anything is left behind (a mount under
    /// the host's directory, a process in its PID namespace).
    pub fn poweroff(&mut self) {
        assert!(self.nspawn.is_some(), "not booted");
        let alive_at = clock_ticks();
        // The connection may drop while systemd goes down: ignore the status.
        let _ = self.exec(&["systemctl", "poweroff"]);
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        while !self.nspawn_exited() {
            assert!(
                Instant::now() < deadline,
                "{} host did not power off within {POWEROFF_TIMEOUT:?}:\n{}",
                self.kind.name(),
                self.console_tail()
            );
            sleep(Duration::from_millis(100));
        }
        self.nspawn = None;
        self.leader = None;
        let left = leftovers(self.dir(), self.pid_namespace.as_deref(), alive_at);
        assert!(left.is_empty(), "left behind after poweroff: {left:?}");
    }

    fn console_log(&self) -> PathBuf {
        self.scratch.path().join("console.log")
    }

    fn console_tail(&self) -> String {
        let text = fs::read_to_string(self.console_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// True once systemd-nspawn has exited (it is then reaped).
    fn nspawn_exited(&mut self) -> bool {
        match self.nspawn.as_mut() {
            None => true,
            Some(child) => !matches!(child.try_wait(), Ok(None)),
        }
    }
}

impl Drop for Host {
    /// Always cleans up, also when a test panics: kills the container (its
    /// PID 1, which takes its whole PID namespace along) and systemd-nspawn's
    /// process group, then removes the copy, never through a mount point.
    fn drop(&mut self) {
        let alive_at = clock_ticks();
        if let Some(mut child) = self.nspawn.take() {
            if matches!(child.try_wait(), Ok(None)) {
                if let Some(leader) = self.leader {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(leader as libc::pid_t, libc::SIGKILL) };
                }
                // systemd-nspawn reaps the container and exits by itself.
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    sleep(Duration::from_millis(20));
                }
                // SAFETY: as above; the negative pid names nspawn's process group.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            }
            let _ = child.wait();
            // The kernel empties a PID namespace asynchronously.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !leftovers(self.dir(), self.pid_namespace.as_deref(), alive_at).is_empty()
                && Instant::now() < deadline
            {
                sleep(Duration::from_millis(20));
            }
        }
        let mounts = mounts_under(self.dir());
        for m in &mounts {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let still = mounts_under(self.dir());
        if !still.is_empty() {
            eprintln!(
                "lab: not removing {}: still mounted: {still:?}",
                self.dir().display()
            );
            self.scratch.keep();
        }
    }
}

fn guest_env() -> [String; 5] {
    [
        format!("PATH={GUEST_PATH}"),
        "HOME=/root".to_string(),
        "LC_ALL=C.UTF-8".to_string(),
        "TERM=dumb".to_string(),
        "DEBIAN_FRONTEND=noninteractive".to_string(),
    ]
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// Whether `pid` is PID 1 of a PID namespace below ours ("NSpid: N 1").
fn is_namespace_init(pid: u32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        })
        .unwrap_or(false)
}

/// Mount points at or under `dir`, as /proc/self/mountinfo lists them.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    found
}

/// Clock ticks since boot, the unit of a process's start time in
/// /proc/PID/stat.
pub fn clock_ticks() -> u64 {
    let uptime = fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (secs * hz) as u64
}

/// When a process started, in clock ticks since boot.
fn start_ticks(proc_dir: &Path) -> Option<u64> {
    let stat = fs::read_to_string(proc_dir.join("stat")).ok()?;
    // Field 22; the fields after the command name, which may hold spaces,
    // start after its closing parenthesis (fields 3 and on).
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// What a host left behind: mounts under `dir`, and processes in its PID
/// namespace `pid_namespace` that had started by `alive_at` (clock ticks,
/// taken before the host was stopped). The kernel reuses a freed
/// namespace's number, so a process that started later is in another
/// test's new namespace, not ours.
pub fn leftovers(dir: &Path, pid_namespace: Option<&str>, alive_at: u64) -> Vec<String> {
    let mut left: Vec<String> = mounts_under(dir)
        .into_iter()
        .map(|m| format!("mount {m}"))
        .collect();
    if let Some(ns) = pid_namespace {
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<u32>().is_err() {
                continue;
            }
            let in_ns = fs::read_link(entry.path().join("ns/pid"))
                .is_ok_and(|link| link.display().to_string() == ns);
            let ours = start_ticks(&entry.path()).is_some_and(|t| t <= alive_at);
            if in_ns && ours {
                let cmdline = fs::read_to_string(entry.path().join("cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ");
                left.push(format!("process {name}: {cmdline}"));
            }
        }
    }
    left
}
