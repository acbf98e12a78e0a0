//! A client of the agent's control socket that asks `status` every 5 ms
//! from the test machine (through the host's root, /proc/LEADER/root), as
//! a monitoring tool would through an upgrade: with socket activation no
//! request may fail to connect or go unanswered, it may only wait.

use super::lab::Host;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The socket, as the agent's users reach it.
pub const SOCKET: &str = "/run/roboconf-agent/control.sock";
const EVERY: Duration = Duration::from_millis(5);
/// Longer than any upgrade of the suites: a request that waits this long
/// counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// What the client saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub answered: usize,
    /// Every failure: connection refused or reset, no answer, a refusal.
    pub errors: Vec<String>,
    /// The versions that answered, each once, in the order they first did.
    pub versions: Vec<String>,
    /// The longest a request waited for its answer (connect included).
    pub longest: Duration,
}

pub struct Client {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Seen>,
}

impl Client {
    pub fn start(host: &Host) -> Client {
        let socket = host.live_path(SOCKET);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || ask_until(&socket, &flag));
        Client { stop, thread }
    }

    pub fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the socket client panicked")
    }
}

fn ask_until(socket: &Path, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match ask(socket) {
            Ok(answer) if answer["ok"] == true => {
                seen.answered += 1;
                let version = answer["version"].as_str().unwrap_or("?").to_string();
                if !seen.versions.contains(&version) {
                    seen.versions.push(version);
                }
            }
            Ok(answer) => seen.errors.push(format!("refused: {answer}")),
            Err(e) => seen
                .errors
                .push(format!("after {:?}: {e}", started.elapsed())),
        }
        seen.longest = seen.longest.max(started.elapsed());
        std::thread::sleep(EVERY);
    }
    seen
}

/// One `status` request on a connection of its own, and its answer.
pub fn ask(socket: &Path) -> std::io::Result<Value> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    (&stream).write_all(b"{\"protocol\": 1, \"cmd\": \"status\"}\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("closed without an answer"));
    }
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// When the agent's socket unit last became active (systemd's monotonic
/// timestamp), or None if it is not active: unchanged across a step means
/// the socket kept listening through it.
pub fn socket_since(host: &Host) -> Option<String> {
    let out = host.sh(
        "systemctl show -p ActiveState,ActiveEnterTimestampMonotonic --value roboconf-agent.socket",
    );
    let mut lines = out.stdout.lines();
    match (lines.next(), lines.next()) {
        (Some("active"), Some(since)) => Some(since.to_string()),
        _ => None,
    }
}

/// Whether the installed package has a socket unit.
pub fn socket_activated(host: &Host) -> bool {
    host.sh("systemctl cat roboconf-agent.socket").success()
}
