//! The control protocol on the Unix socket: one JSON object per line each
//! way. Requests carry `"protocol": 1` or `2` and a `cmd`; answers are
//! `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. A request that
//! cannot be understood gets an error answer and changes nothing.
//! docs/PROTOCOL.md is the reference.
use crate::agent::{Agent, StopKind};
use crate::log;
use crate::model::Instruction;
use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// The newest control protocol this agent speaks. Protocol 2 adds the
/// migration lock (`lock`, `unlock`, `apply`'s `lock_id`); requests of
/// protocol 1 are still answered, so that the programs of two versions
/// talk during an upgrade.
pub const PROTOCOL: u64 = 2;
/// The oldest protocol this agent answers.
const OLDEST: u64 = 1;
/// A request longer than this is refused: no legitimate request comes near.
const MAX_LINE: u64 = 64 * 1024;
/// How long a client waits for an answer beyond the time it asked the agent
/// to wait (quiesce, apply --wait).
const ANSWER_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum Command {
    Status,
    Apply {
        instruction: Instruction,
        wait_secs: Option<u64>,
        /// Protocol 2: the migration lock this instruction is a step of.
        lock_id: Option<String>,
    },
    Quiesce {
        timeout_secs: u64,
    },
    Resume,
    StopForUpgrade,
    /// Protocol 2: takes the migration lock.
    Lock {
        id: String,
        application: String,
        by: String,
        #[serde(default)]
        reason: String,
    },
    /// Protocol 2: releases the migration lock `id`, or with `force` (and
    /// `by`, who breaks it) whatever lock is held.
    Unlock {
        id: Option<String>,
        #[serde(default)]
        force: bool,
        by: Option<String>,
    },
}

impl Command {
    /// The oldest protocol that has this request.
    fn protocol(&self) -> u64 {
        match self {
            Command::Lock { .. } | Command::Unlock { .. } => 2,
            Command::Apply {
                lock_id: Some(_), ..
            } => 2,
            _ => 1,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Apply { lock_id: None, .. } => "apply",
            Command::Apply { .. } => "apply with a lock_id",
            Command::Quiesce { .. } => "quiesce",
            Command::Resume => "resume",
            Command::StopForUpgrade => "stop_for_upgrade",
            Command::Lock { .. } => "lock",
            Command::Unlock { .. } => "unlock",
        }
    }
}

/// The connections accepted and not yet answered once, and whether the
/// agent still accepts. An agent that exits answers those first: with
/// socket activation, the connections it has not accepted wait in the
/// socket for the next agent, but one it accepted and then dropped would
/// fail its client.
struct Doors {
    closing: bool,
    accepting: bool,
    unanswered: usize,
}

static DOORS: Mutex<Doors> = Mutex::new(Doors {
    closing: false,
    accepting: true,
    unanswered: 0,
});
static DOORS_CHANGED: Condvar = Condvar::new();
/// How often the accepting thread looks whether the agent is closing.
const CLOSING_POLL: Duration = Duration::from_millis(20);
/// The longest an exit waits for accepted requests to be answered (a
/// quiesce or apply --wait may wait longer: its client then sees the
/// connection close).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn doors() -> std::sync::MutexGuard<'static, Doors> {
    DOORS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops accepting connections and waits until every accepted one had its
/// answer (at most DRAIN_TIMEOUT); called before the agent exits.
pub fn close_and_drain() {
    let mut d = doors();
    d.closing = true;
    let (_d, _timed_out) = DOORS_CHANGED
        .wait_timeout_while(d, DRAIN_TIMEOUT, |d| d.accepting || d.unanswered > 0)
        .unwrap_or_else(|e| e.into_inner());
}

/// Accepts connections until the agent closes, one thread each (quiesce
/// and apply --wait block their caller, not the other clients).
pub fn serve(agent: Arc<Agent>, listener: UnixListener) {
    if let Err(e) = listener.set_nonblocking(true) {
        log::warn(&format!("control socket: {e}"));
    }
    loop {
        let readable = wait_readable(&listener, CLOSING_POLL);
        let mut d = doors();
        if d.closing {
            d.accepting = false;
            DOORS_CHANGED.notify_all();
            return;
        }
        if !readable {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                d.unanswered += 1;
                drop(d);
                let agent = agent.clone();
                thread::spawn(move || handle_connection(&agent, stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => log::warn(&format!("control socket: accept failed: {e}")),
        }
    }
}

/// Whether a connection waits on `listener`, within `timeout`.
fn wait_readable(listener: &UnixListener, timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) > 0 }
}

/// Counts the connection as answered (once), for `close_and_drain`.
fn answered(first: &mut bool) {
    if std::mem::take(first) {
        doors().unanswered -= 1;
        DOORS_CHANGED.notify_all();
    }
}

fn handle_connection(agent: &Agent, stream: UnixStream) {
    let mut first = true;
    serve_connection(agent, stream, &mut first);
    answered(&mut first);
}

fn serve_connection(agent: &Agent, stream: UnixStream, first: &mut bool) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match reader
            .by_ref()
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() as u64 > MAX_LINE {
            let _ = answer(
                &mut writer,
                &refusal(format!("request longer than {MAX_LINE} bytes")),
            );
            return;
        }
        let (response, stop) = handle_line(agent, &line);
        let sent = answer(&mut writer, &response);
        answered(first);
        if let Some(kind) = stop {
            close_and_drain();
            agent.exit(kind);
        }
        if sent.is_err() || doors().closing {
            return;
        }
    }
}

fn answer(w: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    w.write_all(line.as_bytes())?;
    w.flush()
}

fn refusal(error: String) -> Value {
    json!({"ok": false, "error": error})
}

/// Answers one request line; the second value asks the caller to stop the
/// agent once the answer is sent.
fn handle_line(agent: &Agent, line: &[u8]) -> (Value, Option<StopKind>) {
    let mut request: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return (
                refusal(format!(
                    "malformed request: not a JSON object on one line: {e}"
                )),
                None,
            )
        }
    };
    let Some(obj) = request.as_object_mut() else {
        return (
            refusal("malformed request: expected a JSON object".into()),
            None,
        );
    };
    let protocol = match obj.remove("protocol") {
        Some(v) => match v.as_u64().filter(|p| (OLDEST..=PROTOCOL).contains(p)) {
            Some(p) => p,
            None => {
                let why = format!(
                    "unsupported protocol {v}: this agent speaks protocols {OLDEST} to {PROTOCOL}"
                );
                return (refusal(why), None);
            }
        },
        None => {
            let why = format!("malformed request: missing \"protocol\": {PROTOCOL}");
            return (refusal(why), None);
        }
    };
    let command: Command = match serde_json::from_value(request) {
        Ok(c) => c,
        Err(e) => {
            return (
                refusal(format!(
                    "malformed request: {e} (cmd is one of status, apply, quiesce, resume, stop_for_upgrade, \
                     lock, unlock)"
                )),
                None,
            )
        }
    };
    if command.protocol() > protocol {
        return (
            refusal(format!(
                "`{}` is in control protocol {}; this request says protocol {protocol}: nothing was done \
                 (use a client of protocol {PROTOCOL}, such as this agent's `roboconf-agent ctl`)",
                command.name(),
                command.protocol()
            )),
            None,
        );
    }
    let result = match command {
        Command::Status => Ok(agent.status()),
        Command::Apply {
            instruction,
            wait_secs,
            lock_id,
        } => agent
            .apply(
                instruction,
                wait_secs.map(Duration::from_secs),
                lock_id.as_deref(),
            )
            .map_err(|e| {
                if protocol < 2 && agent.locked() {
                    format!(
                        "{e}. This request speaks control protocol {protocol}, which cannot carry the \
                         migration's lock id (protocol 2 can: `roboconf-agent ctl apply --lock-id ID ...`)"
                    )
                } else {
                    e
                }
            }),
        Command::Quiesce { timeout_secs } => agent.quiesce(Duration::from_secs(timeout_secs)),
        Command::Resume => Ok(agent.resume()),
        Command::StopForUpgrade => {
            return match agent.stop_for_upgrade() {
                Ok(v) => (v, Some(StopKind::Upgrade)),
                Err(e) => (refusal(e), None),
            }
        }
        Command::Lock {
            id,
            application,
            by,
            reason,
        } => agent.take_lock(id, application, by, reason),
        Command::Unlock { id, force, by } => match (force, by.as_deref(), id.as_deref()) {
            (true, Some(by), id) if !by.trim().is_empty() => agent.release_lock(id, Some(by)),
            (true, _, _) => Err(
                "malformed request: a forced unlock needs `by`, who breaks the lock (it is logged)"
                    .into(),
            ),
            (false, _, Some(id)) => agent.release_lock(Some(id), None),
            (false, _, None) => Err(
                "malformed request: unlock needs the lock's `id`, or `force: true` and `by` to break a \
                 stale lock"
                    .into(),
            ),
        },
    };
    (result.unwrap_or_else(refusal), None)
}

/// The oldest protocol that carries `request`: a client sends that one, so
/// that it is also understood by agents of an older protocol (during an
/// upgrade the incoming package's program stops the outgoing agent).
fn protocol_for(request: &Value) -> u64 {
    match request["cmd"].as_str() {
        Some("lock" | "unlock") => 2,
        Some("apply") if !request["lock_id"].is_null() => 2,
        _ => OLDEST,
    }
}

/// Sends one request and returns the answer (ok or not). `waits` is how long
/// the agent itself was asked to wait before answering.
pub fn request(socket: &Path, mut request: Value, waits: Duration) -> Result<Value> {
    request["protocol"] = json!(protocol_for(&request));
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the agent on {}: is it running (`systemctl status roboconf-agent`), and is the \
             runtime directory right (--runtime-dir / ROBOCONF_AGENT_RUNTIME_DIR)?",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(waits + ANSWER_MARGIN))?;
    let mut writer = stream.try_clone()?;
    writer
        .write_all(format!("{request}\n").as_bytes())
        .context("cannot send the request to the agent")?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .with_context(|| format!("no answer from the agent on {}", socket.display()))?;
    if line.is_empty() {
        anyhow::bail!(
            "the agent on {} closed the connection without answering",
            socket.display()
        );
    }
    serde_json::from_str(&line).with_context(|| format!("the agent's answer is not JSON: {line:?}"))
}
