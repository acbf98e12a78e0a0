//! `roboconf-agent spawn`: how a recipe launches a long-running process of an
//! instance so that it survives the agent being stopped, restarted or
//! upgraded. systemd stops a service by killing its whole cgroup, so such a
//! process must not stay in the agent's cgroup. The agent runs unprivileged
//! (User=roboconf-agent, NoNewPrivileges), so it cannot create system units;
//! it asks its own user manager (kept running by lingering) for a transient
//! unit instead: `systemd-run --user --unit=roboconf-NAME`. Without a user
//! manager (not under systemd, e.g. tests) the process is detached into its
//! own session, which survives the agent but not a kill of its cgroup.
use crate::log;
use crate::model::validate_name;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A transient unit of the agent user's systemd user manager.
    Systemd,
    /// A detached child process (own session), tracked by a pid file.
    Process,
}

pub fn unit_name(name: &str) -> String {
    format!("roboconf-{name}.service")
}

/// The units of NAME started under another name because `unit_name` was
/// held by a stopped unit the user manager could not collect (below).
fn spare_units(name: &str) -> String {
    format!("roboconf-{name}-r*.service")
}

/// The loaded units of NAME (its own and spare ones) in one of `states`
/// (`--state=` of systemctl), as `list-units` lists them: unlike asking for
/// a unit by name, that loads nothing, and a unit that is not loaded is
/// simply not there.
fn units(name: &str, states: &str) -> Result<Vec<String>> {
    let out = systemctl_user(&[
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        &format!("--state={states}"),
        &unit_name(name),
        &spare_units(name),
    ])
    .output()
    .context("cannot run systemctl --user")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.ends_with(".service")))
        .map(String::from)
        .collect())
}

/// Whether a unit of NAME runs (or starts).
fn unit_runs(name: &str) -> Result<bool> {
    Ok(!units(name, "active,activating,reloading")?.is_empty())
}

/// The user manager's runtime directory. A system service does not get
/// XDG_RUNTIME_DIR from a login session, so fall back to /run/user/UID, where
/// systemd-logind puts it for a lingering user.
fn xdg_runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        // SAFETY: getuid cannot fail and touches no memory.
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", unsafe { libc::getuid() })))
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// ROBOCONF_SPAWN_MODE=systemd|process forces a mode; otherwise systemd is
/// used when the user manager's private socket exists. systemd-run and
/// systemctl reach the manager through that socket directly (no D-Bus session
/// bus needed) as long as systemd-run is not asked to wait for the process.
pub fn choose_mode() -> Result<Mode> {
    match std::env::var("ROBOCONF_SPAWN_MODE").as_deref() {
        Ok("systemd") => return Ok(Mode::Systemd),
        Ok("process") => return Ok(Mode::Process),
        Ok("auto") | Ok("") | Err(_) => {}
        Ok(other) => bail!("ROBOCONF_SPAWN_MODE is {other:?}: use systemd, process or auto"),
    }
    let socket = xdg_runtime_dir().join("systemd/private");
    if socket.exists() && in_path("systemd-run") {
        return Ok(Mode::Systemd);
    }
    // Under systemd (which sets INVOCATION_ID for every unit) a detached
    // process would still die with the agent's cgroup: refuse rather than
    // quietly break the promise that the software outlives the agent.
    if std::env::var_os("INVOCATION_ID").is_some() {
        bail!(
            "the agent runs under systemd but this user has no systemd user manager ({} is missing, or \
             systemd-run is not installed): enable lingering for the agent's user (the package creates \
             /var/lib/systemd/linger/<user>; `loginctl enable-linger <user>` does the same), or set \
             ROBOCONF_SPAWN_MODE=process to accept that the process dies whenever the agent stops",
            socket.display()
        );
    }
    log::warn(&format!(
        "no systemd user manager ({} is missing) and not under systemd: starting the process detached \
         in its own session; it survives the agent, but not a kill of a cgroup that holds both",
        socket.display()
    ));
    Ok(Mode::Process)
}

fn spawn_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("spawn")
}

fn systemctl_user(args: &[&str]) -> Command {
    let mut cmd = Command::new("systemctl");
    cmd.arg("--user")
        .args(args)
        .env("XDG_RUNTIME_DIR", xdg_runtime_dir());
    cmd
}

/// Starts `command` as the long-running process NAME. Starting a NAME that
/// already runs succeeds without starting a second one, so start recipes
/// may run again after a crash.
pub fn start(state_dir: &Path, name: &str, command: &[String]) -> Result<Mode> {
    validate_name("process", name).map_err(anyhow::Error::msg)?;
    let Some((program, args)) = command.split_first() else {
        bail!("spawn start needs a command after --");
    };
    let mode = choose_mode()?;
    match mode {
        Mode::Systemd => {
            let unit = unit_name(name);
            if unit_runs(name)? {
                log::info(&format!("{unit} already runs"));
                return Ok(mode);
            }
            // A failed earlier run leaves the unit loaded, which would make
            // systemd-run refuse the name. Usually there is none: quiet.
            let _ = systemctl_user(&["--quiet", "reset-failed", &unit])
                .stderr(Stdio::null())
                .status();
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            let run = |unit: &str| {
                let mut run = Command::new("systemd-run");
                run.args(["--user", "--quiet", "--collect", "--unit", unit])
                    .arg(format!("--working-directory={}", cwd.display()))
                    .env("XDG_RUNTIME_DIR", xdg_runtime_dir());
                // The unit starts from the user manager's environment, not
                // ours: hand over the instance variables the recipe was given.
                for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("ROBOCONF_")) {
                    run.arg(format!("--setenv={k}={v}"));
                }
                run.arg("--").arg(program).args(args);
                run.output().context("cannot run systemd-run")
            };
            let mut out = run(&unit)?;
            let mut started = unit.clone();
            // A stopped unit the manager could not collect keeps its name:
            // seen when the kernel failed its cgroup writes with EIO under
            // load ("Failed to kill control group … Input/output error"),
            // after which systemd cannot tell the cgroup empty and keeps the
            // unit loaded, dead. The process starts under a spare name,
            // which `stop` stops too.
            if !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("already loaded")
            {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                started = format!("roboconf-{name}-r{nanos}.service");
                log::warn(&format!(
                    "{unit} is held by a stopped unit systemd did not collect: starting {started}"
                ));
                out = run(&started)?;
            }
            if !out.status.success() {
                eprint!("{}", String::from_utf8_lossy(&out.stderr));
                bail!(
                    "systemd-run --user --unit={started} failed ({}); see `journalctl --user -u {started}`",
                    out.status
                );
            }
        }
        Mode::Process => {
            let dir = spawn_dir(state_dir);
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let pid_file = dir.join(format!("{name}.pid"));
            if let Some(pid) = running_pid(&pid_file) {
                log::info(&format!("{name} already runs (pid {pid})"));
                return Ok(mode);
            }
            let log_path = dir.join(format!("{name}.log"));
            let out = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("cannot open {}", log_path.display()))?;
            let mut cmd = Command::new(program);
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            // SAFETY: setsid is async-signal-safe, as pre_exec requires. A new
            // session takes the process out of the recipe's process group
            // (which a recipe timeout kills) and away from any terminal.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                });
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start {program}"))?;
            crate::state::atomic_write(
                &dir,
                &format!("{name}.pid"),
                format!("{}\n", child.id()).as_bytes(),
            )?;
        }
    }
    Ok(mode)
}

/// The pid in a pid file if that process is still alive.
fn running_pid(pid_file: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (pid > 0 && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// Stops the long-running process NAME; stopping one that is not running
/// succeeds, so stop recipes may run again.
pub fn stop(state_dir: &Path, name: &str) -> Result<Mode> {
    validate_name("process", name).map_err(anyhow::Error::msg)?;
    let mode = choose_mode()?;
    match mode {
        Mode::Systemd => {
            // Only what is loaded: `systemctl stop` of a unit that is not
            // (nothing runs) fails, and stopping must succeed then.
            let loaded = units(name, "active,activating,deactivating,reloading")?;
            if !loaded.is_empty() {
                let mut args = vec!["stop"];
                args.extend(loaded.iter().map(String::as_str));
                let status = systemctl_user(&args)
                    .status()
                    .context("cannot run systemctl --user")?;
                if !status.success() {
                    bail!(
                        "systemctl --user stop {} failed ({status})",
                        loaded.join(" ")
                    );
                }
            }
        }
        Mode::Process => {
            let pid_file = spawn_dir(state_dir).join(format!("{name}.pid"));
            if let Some(pid) = running_pid(&pid_file) {
                // The process leads its own session and group: stop all of it.
                // SAFETY: kill(2) with a pid we started; no memory involved.
                unsafe { libc::kill(-pid, libc::SIGTERM) };
            }
            let _ = fs::remove_file(&pid_file);
        }
    }
    Ok(mode)
}
