//! The control protocol on the Unix socket: one JSON object per line each
//! way. Requests carry `"protocol": 1` and a `cmd`; answers are
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

pub const PROTOCOL: u64 = 1;
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
    },
    Quiesce {
        timeout_secs: u64,
    },
    Resume,
    StopForUpgrade,
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
    match obj.remove("protocol") {
        Some(Value::Number(n)) if n.as_u64() == Some(PROTOCOL) => {}
        Some(other) => {
            return (
                refusal(format!(
                    "unsupported protocol {other}: this agent speaks protocol {PROTOCOL}"
                )),
                None,
            )
        }
        None => {
            return (
                refusal(format!(
                    "malformed request: missing \"protocol\": {PROTOCOL}"
                )),
                None,
            )
        }
    }
    let command: Command = match serde_json::from_value(request) {
        Ok(c) => c,
        Err(e) => {
            return (
                refusal(format!(
                    "malformed request: {e} (cmd is one of status, apply, quiesce, resume, stop_for_upgrade)"
                )),
                None,
            )
        }
    };
    let result = match command {
        Command::Status => Ok(agent.status()),
        Command::Apply {
            instruction,
            wait_secs,
        } => agent.apply(instruction, wait_secs.map(Duration::from_secs)),
        Command::Quiesce { timeout_secs } => agent.quiesce(Duration::from_secs(timeout_secs)),
        Command::Resume => Ok(agent.resume()),
        Command::StopForUpgrade => {
            return match agent.stop_for_upgrade() {
                Ok(v) => (v, Some(StopKind::Upgrade)),
                Err(e) => (refusal(e), None),
            }
        }
    };
    (result.unwrap_or_else(refusal), None)
}

/// Sends one request and returns the answer (ok or not). `waits` is how long
/// the agent itself was asked to wait before answering.
pub fn request(socket: &Path, mut request: Value, waits: Duration) -> Result<Value> {
    request["protocol"] = json!(PROTOCOL);
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
