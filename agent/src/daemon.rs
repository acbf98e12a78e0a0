//! `roboconf-agent run`: the checks made before anything is touched, then the
//! worker, the control socket, and the wait for a stop signal.
use crate::agent::{Agent, StopKind};
use crate::config::{self, Paths};
use crate::exit::{Exit, BAD_STATE, UPGRADE_IN_PROGRESS};
use crate::migrate::WRITES;
use crate::{activation, control, log, state};
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::thread;

pub fn run(paths: &Paths) -> Result<()> {
    // The marker comes first: while an upgrade changes the state, even
    // reading it could see a half-finished migration.
    let marker = paths.state_dir.join(state::UPGRADE_MARKER);
    if marker.exists() {
        if activation::socket_passed() {
            return activation::hold_until_upgraded(&marker);
        }
        let note = fs::read_to_string(&marker).unwrap_or_default();
        return Err(Exit::new(
            UPGRADE_IN_PROGRESS,
            format!(
                "refusing to start: an upgrade is changing the state in {} (marker {}{}). The package's \
                 post-install step removes the marker and starts the agent when it is done; if no upgrade \
                 is running, check the state with `roboconf-agent state check` and remove the marker",
                paths.state_dir.display(),
                marker.display(),
                if note.trim().is_empty() { String::new() } else { format!(": {}", note.trim()) }
            ),
        )
        .into());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&paths.state_dir)
        .with_context(|| {
            format!(
                "cannot create the state directory {}",
                paths.state_dir.display()
            )
        })?;
    let _lock = state::lock(&paths.state_dir)?;
    let config = config::load(paths)?;
    let (mut model, stored) = state::load_model(&paths.state_dir)?;
    if let Some(s) = stored.as_ref().filter(|s| s.schema < WRITES) {
        if !config.migrate_on_start {
            return Err(Exit::new(
                BAD_STATE,
                format!(
                    "refusing to start: the state in {} has schema {} (written by roboconf-agent {}) and \
                     this agent writes {WRITES}, but migrate_on_start = false in {}: the package's upgrade \
                     step migrates it; by hand, run `roboconf-agent state migrate --to {WRITES}` as the \
                     agent's user, or set migrate_on_start = true",
                    paths.state_dir.display(),
                    s.schema,
                    s.written_by,
                    paths.config_dir.join(config::CONFIG_FILE).display()
                ),
            )
            .into());
        }
    }
    match &stored {
        None => log::info(&format!(
            "no state in {}: starting empty",
            paths.state_dir.display()
        )),
        Some(s) if s.schema < WRITES => log::info(&format!(
            "state has schema {} (written by roboconf-agent {}): migrating it to schema {WRITES}",
            s.schema, s.written_by
        )),
        Some(s) => log::info(&format!(
            "state loaded: schema {}, written by roboconf-agent {}",
            s.schema, s.written_by
        )),
    }
    if !config.has_credentials {
        log::warn(&format!(
            "no credentials file in {}: messaging would be unauthenticated",
            paths.config_dir.display()
        ));
    }
    for note in model.recover() {
        log::warn(&note);
    }
    state::save_model(&paths.state_dir, &model)?;

    // Signals are taken synchronously by the main thread; blocking them
    // before any thread exists makes every thread inherit the mask.
    // (Recipe processes get a clean mask: std resets it before exec.)
    let signals = blocked_stop_signals()?;
    let (listener, bound_socket) = match activation::take_listener()? {
        Some(listener) => (listener, false),
        None => (bind(paths)?, true),
    };
    let origin = if bound_socket {
        "bound by the agent"
    } else {
        "passed by systemd"
    };
    let agent = Arc::new(Agent::new(paths.clone(), config, model, bound_socket));
    {
        let agent = agent.clone();
        thread::Builder::new()
            .name("worker".into())
            .spawn(move || agent.work())?;
    }
    {
        let agent = agent.clone();
        thread::Builder::new()
            .name("control".into())
            .spawn(move || control::serve(agent, listener))?;
    }
    log::info(&format!(
        "roboconf-agent {} running: pid {}, state schema {WRITES}, control socket {} ({origin})",
        crate::build_info::VERSION,
        std::process::id(),
        paths.socket().display()
    ));
    let mut sig: libc::c_int = 0;
    // SAFETY: `signals` is an initialised set; sigwait writes one int.
    if unsafe { libc::sigwait(&signals, &mut sig) } != 0 {
        anyhow::bail!("sigwait failed: {}", std::io::Error::last_os_error());
    }
    log::info(&format!("signal {sig} received"));
    control::close_and_drain();
    agent.exit(StopKind::Shutdown)
}

fn blocked_stop_signals() -> Result<libc::sigset_t> {
    // SAFETY: plain libc signal-set manipulation on a local, then a mask change
    // for this thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            anyhow::bail!(
                "cannot block SIGTERM/SIGINT: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(set)
    }
}

fn bind(paths: &Paths) -> Result<UnixListener> {
    fs::create_dir_all(&paths.runtime_dir).with_context(|| {
        format!(
            "cannot create the runtime directory {}",
            paths.runtime_dir.display()
        )
    })?;
    let socket = paths.socket();
    // We hold the state lock, so a socket left here is from an agent that died.
    match fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e)
                .with_context(|| format!("cannot remove the stale socket {}", socket.display()))
        }
        _ => {}
    }
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    // 0660: the agent's user and group (the admin tools' group) may talk to it.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
    Ok(listener)
}
