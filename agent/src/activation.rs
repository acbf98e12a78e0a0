//! systemd socket activation: the control socket may belong to a `.socket`
//! unit, which keeps listening while the agent restarts or is upgraded, so
//! a client that connects meanwhile waits in the backlog instead of being
//! refused (docs/UPGRADES.md, "Socket activation").
use crate::log;
use anyhow::{Context, Result};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

/// How often a held agent looks for the end of the upgrade.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// Whether systemd passed this process a listening socket (`LISTEN_PID` is
/// ours and `LISTEN_FDS` at least 1), without taking it.
pub fn socket_passed() -> bool {
    let ours = std::env::var("LISTEN_PID").is_ok_and(|p| p == std::process::id().to_string());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok());
    ours && fds.is_some_and(|n| n >= 1)
}

/// The control socket systemd passed (the first one), if any; marked
/// close-on-exec so recipes never inherit it, and the variables that
/// announced it removed from the environment.
pub fn take_listener() -> Result<Option<UnixListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    fds.take_unix_listener(0)
        .context("the socket systemd passed (LISTEN_FDS) is not a listening Unix stream socket: check ListenStream= in the agent's .socket unit")
}

/// Started by the socket unit while an upgrade is changing the state: the
/// agent must neither touch the state nor exit (an exit with connections
/// waiting makes systemd start it again at once, until the socket unit hits
/// its trigger limit and fails). It holds the socket unanswered, so those
/// connections wait, and once the upgrade's finish removes `marker` it
/// replaces itself with the program now installed at its own path (the
/// same process: systemd's socket stays passed to it), which then starts
/// as usual. SIGTERM ends it as it ends any agent.
pub fn hold_until_upgraded(marker: &Path) -> Result<()> {
    log::info(&format!(
        "started by a connection while an upgrade is changing the state ({} exists): holding the \
         control socket, unanswered, until the upgrade is done",
        marker.display()
    ));
    while marker.exists() {
        std::thread::sleep(HOLD_POLL);
    }
    let mut args = std::env::args_os();
    let program = args.next().context("no program name in argv")?;
    log::info(&format!(
        "the upgrade is done: starting {} in this process",
        Path::new(&program).display()
    ));
    let error = std::process::Command::new(&program).args(args).exec();
    Err(error).with_context(|| {
        format!(
            "cannot run {} after the upgrade",
            Path::new(&program).display()
        )
    })
}
