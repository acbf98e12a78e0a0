//! What the hook asks of the world: the agent (through its command line,
//! docs/PROTOCOL.md), systemd (only when it runs), and the upgrade log.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::confined::{self, Dir};
use crate::package::PackageManifest;
use anyhow::{bail, Context, Result};

use crate::account::Account;
use serde_json::Value;

/// Appends a line to the package's upgrade log and echoes it to stderr,
/// where dpkg, apt and dnf show it to whoever runs them. The log's
/// directory belongs to the agent's user: the file is appended to only
/// through [`Dir::append`], which refuses a link or a FIFO in its place
/// (then the line reaches stderr alone, with a warning naming the file).
pub struct Log {
    /// The log's directory, opened (created if missing) once; or why not.
    dir: Result<Dir, String>,
    name: String,
    step: &'static str,
}

impl Log {
    pub fn new(m: &PackageManifest, step: &'static str) -> Log {
        // The log directory is a state directory the package creates; the
        // first install runs the hook before it may exist (root's until the
        // package hands it over).
        let (dir, name) = match confined::split(Path::new(&m.log_file)) {
            Ok((dir, name)) => (
                Dir::create_trusted(dir, 0o755).map_err(|e| format!("{e:#}")),
                name.to_string(),
            ),
            Err(e) => (Err(format!("{e:#}")), String::new()),
        };
        Log { dir, name, step }
    }

    pub fn line(&self, message: &str) {
        // Milliseconds: the benchmarks time the hook's steps from this log.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // One line per message, whatever names it quotes.
        let message = message.replace('\n', "\\n");
        let line = format!(
            "{}.{:03} ferry-hook[{}] {}: {message}\n",
            now.as_secs(),
            now.subsec_millis(),
            std::process::id(),
            self.step
        );
        eprintln!("ferry-hook: {}: {message}", self.step);
        let appended = match &self.dir {
            Ok(dir) => dir
                .append(&self.name, line.as_bytes(), 0o640)
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(e.clone()),
        };
        if let Err(e) = appended {
            eprintln!("ferry-hook: warning: the upgrade log is not written: {e}");
        }
    }
}

/// The agent's command line, pointed at the package's directories, run as
/// the agent's own user.
pub struct Agent<'a> {
    m: &'a PackageManifest,
    account: Account,
}

/// What `state check --json` says.
pub struct StateCheck {
    pub ok: bool,
    /// The file's schema; None when there is no state file yet.
    pub schema: Option<u32>,
    pub error: String,
}

impl<'a> Agent<'a> {
    pub fn new(m: &'a PackageManifest) -> Result<Agent<'a>> {
        if m.user.is_empty() {
            bail!(
                "the package manifest names no user for {}: rebuild the package with this ferry",
                m.agent
            );
        }
        let account = Account::lookup(&m.user, &m.group)
            .with_context(|| format!("{} runs as its own user", m.agent))?;
        Ok(Agent { m, account })
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new(&self.m.agent);
        command
            .args(["--config-dir", &self.m.config_dir])
            .args(["--state-dir", &self.m.state_dir])
            .args(["--runtime-dir", &self.m.runtime_dir])
            .args(args);
        self.account.run_as(&mut command);
        command
            .output()
            .with_context(|| format!("cannot run {} as {}", self.m.agent, self.account.name))
    }

    /// Runs a command that must succeed; the error carries the agent's words.
    fn run_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "`{} {}` failed ({}): {}",
                self.m.agent,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn check(&self) -> Result<StateCheck> {
        let out = self.run(&["state", "check", "--json"])?;
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`{} state check --json` did not answer JSON: {}",
                self.m.agent,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        Ok(StateCheck {
            ok: v["ok"].as_bool() == Some(true),
            schema: v["schema"].as_u64().map(|s| s as u32),
            error: v["error"].as_str().unwrap_or_default().to_string(),
        })
    }

    pub fn migrate(&self, to: u32) -> Result<()> {
        self.run_ok(&["state", "migrate", "--to", &to.to_string()])
            .map(drop)
    }

    /// Whether the state can be migrated to schema `to`, asked without
    /// changing anything (`state migrate --dry-run`, which also answers
    /// while the agent runs); the error carries the agent's reason, such as
    /// a migration lock the older schema cannot hold.
    pub fn can_migrate(&self, to: u32) -> Result<()> {
        self.run_ok(&["state", "migrate", "--to", &to.to_string(), "--dry-run"])
            .map(drop)
    }

    pub fn quiesce(&self, timeout: u64) -> Result<()> {
        self.run_ok(&["ctl", "quiesce", "--timeout", &timeout.to_string()])
            .map(drop)
    }

    pub fn resume(&self) -> Result<()> {
        self.run_ok(&["ctl", "resume"]).map(drop)
    }

    pub fn stop_for_upgrade(&self) -> Result<()> {
        self.run_ok(&["ctl", "stop-for-upgrade"]).map(drop)
    }

    pub fn status(&self) -> Result<Value> {
        let text = self.run_ok(&["ctl", "status", "--json"])?;
        serde_json::from_str(&text).context("`ctl status --json` did not answer JSON")
    }

    /// Takes the agent's migration lock (`ctl lock`, docs/AGENT.md): the
    /// agent's answer (`taken` is false when this very lock was already
    /// held). The agent refuses another lock, or an application that is
    /// not its own, and the error carries its words.
    pub fn lock(&self, id: &str, application: &str, by: &str, reason: &str) -> Result<Value> {
        let mut args = vec![
            "ctl",
            "lock",
            "--id",
            id,
            "--application",
            application,
            "--by",
            by,
        ];
        if !reason.is_empty() {
            args.extend(["--reason", reason]);
        }
        let text = self.run_ok(&args)?;
        serde_json::from_str(&text).context("`ctl lock` did not answer JSON")
    }

    /// Runs one lifecycle instruction (`deploy`, `start`, `stop`,
    /// `undeploy`) of the migration holding lock `lock_id` on the instance
    /// `path`, waiting at most `wait_secs` for it to finish (`ctl apply
    /// --wait --lock-id`): the agent's answer; a rejected instruction or a
    /// failed recipe is an error carrying the agent's words.
    pub fn apply(&self, lock_id: &str, action: &str, path: &str, wait_secs: u64) -> Result<Value> {
        let wait = wait_secs.to_string();
        let text = self.run_ok(&[
            "ctl",
            "apply",
            "--wait",
            &wait,
            "--lock-id",
            lock_id,
            action,
            path,
        ])?;
        serde_json::from_str(&text).context("`ctl apply` did not answer JSON")
    }

    /// The agent's own user, for what else must run as it.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Releases the migration lock `id` (`ctl unlock --id`): the agent's
    /// answer (`released` is null when no lock was held). Another lock
    /// held is refused by the agent, naming it.
    pub fn unlock(&self, id: &str) -> Result<Value> {
        let text = self.run_ok(&["ctl", "unlock", "--id", id])?;
        serde_json::from_str(&text).context("`ctl unlock` did not answer JSON")
    }
}

/// systemd, when it is the running init system (not in a chroot or a
/// container without it: then every call here is skipped).
pub struct Systemd<'a> {
    unit: &'a str,
}

impl<'a> Systemd<'a> {
    pub fn new(unit: &'a str) -> Systemd<'a> {
        Systemd { unit }
    }

    pub fn running() -> bool {
        confined::trusted_exists(Path::new("/run/systemd/system"))
    }

    fn systemctl(&self, args: &[&str]) -> Result<Output> {
        Command::new("systemctl")
            .args(args)
            .arg(self.unit)
            .output()
            .context("cannot run systemctl")
    }

    pub fn is_active(&self) -> bool {
        Self::running()
            && self
                .systemctl(&["--quiet", "is-active"])
                .is_ok_and(|o| o.status.success())
    }

    /// systemd's ActiveState of the unit (`active`, `activating` while it
    /// starts or waits to restart, `failed`, `inactive`, …); empty if
    /// systemd cannot be asked.
    pub fn active_state(&self) -> String {
        self.systemctl(&["show", "--property=ActiveState", "--value"])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    pub fn is_enabled(&self) -> bool {
        Self::running()
            && self
                .systemctl(&["--quiet", "is-enabled"])
                .is_ok_and(|o| o.status.success())
    }

    /// Clears a failed state and the start rate limit, so that the one
    /// start of an upgrade is not refused for earlier ones.
    pub fn reset_failed(&self) {
        if Self::running() {
            self.checked(&["reset-failed"]).ok();
        }
    }

    /// Starts the unit afresh: also right when its old process has just
    /// exited and systemd has not yet noticed (a plain start would then
    /// find it active and do nothing).
    pub fn restart(&self) -> Result<()> {
        self.checked(&["restart"])
    }

    /// The unit's main process, if it has one.
    pub fn main_pid(&self) -> Option<u32> {
        let out = self
            .systemctl(&["show", "--property=MainPID", "--value"])
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|&pid| pid != 0)
    }

    pub fn stop(&self) -> Result<()> {
        self.checked(&["stop"])
    }

    /// Starts the unit; nothing if it is already active.
    pub fn start(&self) -> Result<()> {
        self.checked(&["start"])
    }

    /// Masks the unit in /etc (it survives a reboot): nothing, not a
    /// connection to its socket nor an admin's start, starts it.
    pub fn mask(&self) -> Result<()> {
        self.checked(&["mask"])
    }

    pub fn unmask(&self) -> Result<()> {
        self.checked(&["unmask"])
    }

    /// Whether the unit is masked (`systemctl is-enabled` says `masked`).
    pub fn is_masked(&self) -> bool {
        self.systemctl(&["is-enabled"])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "masked")
    }

    fn checked(&self, args: &[&str]) -> Result<()> {
        let out = self.systemctl(args)?;
        if !out.status.success() {
            bail!(
                "`systemctl {} {}` failed: {}",
                args.join(" "),
                self.unit,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// ActiveState, SubState and the main process's exit status.
    pub fn describe(&self) -> String {
        self.systemctl(&[
            "show",
            "--property=ActiveState,SubState,ExecMainStatus,MainPID",
        ])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
    }

    /// The unit's last journal lines, for a failure message.
    pub fn journal_tail(&self) -> String {
        Command::new("journalctl")
            .args([
                "--no-pager",
                "--quiet",
                "-n",
                "8",
                "-o",
                "cat",
                "-u",
                self.unit,
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .replace('\n', " | ")
            })
            .unwrap_or_default()
    }

    /// Waits until the unit is no longer active (polling systemctl: for the
    /// stop of a whole unit, whatever its processes).
    pub fn wait_inactive(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.is_active() {
            if Instant::now() > deadline {
                bail!("{} still active after {timeout:?}", self.unit);
            }
            // The agent is down while this polls: keep the added gap small.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// A process to wait for, held by a pidfd so that its exit is noticed at
/// once (no polling) and a reused PID cannot be mistaken for it.
pub struct Process {
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl Process {
    /// None in the pidfd when the process is already gone.
    pub fn open(pid: u32) -> Process {
        // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: `fd` is a file descriptor this process just opened and owns.
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) }
        });
        Process { pidfd }
    }

    /// Waits until the process has exited; false on timeout.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let Some(fd) = &self.pidfd else {
            return true;
        };
        let mut poll = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(fd),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd; the pidfd becomes readable when the
        // process exits.
        unsafe { libc::poll(&mut poll, 1, millis) > 0 }
    }
}
