//! Runs one recipe script, `<recipes>/<component>/<step>`, for one instance:
//! instance variables in the environment, output logged line by line, a
//! timeout that kills the script's whole process group.
use crate::log;
use crate::model::{name_of, parent_of, Problem, Step};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How many of the last output lines a PROBLEM keeps.
const KEPT_LINES: usize = 20;
/// How long to wait for the rest of the output once the script has exited:
/// a process it left behind may keep the pipes open forever.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

pub struct Recipe<'a> {
    pub recipes_dir: &'a Path,
    pub component: &'a str,
    pub step: Step,
    pub instance_path: &'a str,
    pub application: &'a str,
    pub scoped_instance_path: &'a str,
    pub state_dir: &'a Path,
    pub runtime_dir: &'a Path,
    pub timeout: Duration,
}

impl Recipe<'_> {
    pub fn script(&self) -> PathBuf {
        self.recipes_dir
            .join(self.component)
            .join(self.step.script())
    }

    /// Each instance gets a work directory under the state directory, kept
    /// across restarts and upgrades; recipes start in it.
    pub fn work_dir(&self) -> PathBuf {
        self.state_dir
            .join("work")
            .join(self.instance_path.trim_start_matches('/'))
    }

    /// Runs the script; `started` gets the script's pid for status reports.
    /// A component without a script for this step has nothing to do there,
    /// as with Roboconf's bash plugin.
    pub fn run(&self, started: impl FnOnce(u32)) -> Result<(), Problem> {
        let script = self.script();
        let tag = format!("{} {}", self.step.script(), self.instance_path);
        if !script.exists() {
            log::info(&format!(
                "[{tag}] no recipe {}: nothing to run",
                script.display()
            ));
            return Ok(());
        }
        let fail = |msg: String| {
            log::error(&format!("[{tag}] {msg}"));
            Err(Problem {
                exit_code: None,
                output: vec![msg],
            })
        };
        let work = self.work_dir();
        if let Err(e) = std::fs::create_dir_all(&work) {
            return fail(format!(
                "cannot create the work directory {}: {e}",
                work.display()
            ));
        }
        let agent = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("roboconf-agent"));
        let mut cmd = Command::new(&script);
        cmd.current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout kills everything the
            // script started (processes launched with `spawn` leave the group).
            .process_group(0)
            .env("ROBOCONF_APPLICATION", self.application)
            .env("ROBOCONF_SCOPED_INSTANCE_PATH", self.scoped_instance_path)
            .env("ROBOCONF_INSTANCE_PATH", self.instance_path)
            .env("ROBOCONF_INSTANCE_NAME", name_of(self.instance_path))
            .env(
                "ROBOCONF_PARENT_PATH",
                parent_of(self.instance_path).unwrap_or(""),
            )
            .env("ROBOCONF_COMPONENT", self.component)
            .env("ROBOCONF_STEP", self.step.script())
            .env("ROBOCONF_WORK_DIR", &work)
            .env("ROBOCONF_AGENT", &agent)
            .env("ROBOCONF_AGENT_STATE_DIR", self.state_dir)
            .env("ROBOCONF_AGENT_RUNTIME_DIR", self.runtime_dir);
        log::info(&format!("[{tag}] running {}", script.display()));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return fail(format!(
                    "cannot run {}: {e} (is it executable?)",
                    script.display()
                ))
            }
        };
        let pid = child.id();
        started(pid);

        let kept = Arc::new(Mutex::new(VecDeque::with_capacity(KEPT_LINES)));
        let (eof_tx, eof_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let (kept, eof_tx, tag) = (kept.clone(), eof_tx.clone(), tag.clone());
            thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    log::info(&format!("[{tag}] {line}"));
                    let mut kept = kept.lock().expect("output buffer lock");
                    if kept.len() == KEPT_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                    buf.clear();
                }
                let _ = eof_tx.send(());
            });
        }
        drop(eof_tx);

        let (status_tx, status_rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = status_tx.send(child.wait());
        });
        let status = match status_rx.recv_timeout(self.timeout) {
            Ok(s) => s,
            Err(_) => {
                log::error(&format!(
                    "[{tag}] timed out after {}s: killing its process group",
                    self.timeout.as_secs()
                ));
                // SAFETY: kill(2) on the group we created; no memory involved.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                status_rx.recv().expect("the waiter thread always reports")
            }
        };
        for _ in 0..2 {
            if eof_rx.recv_timeout(OUTPUT_GRACE).is_err() {
                log::warn(&format!("[{tag}] a process it left behind still holds its output open; not waiting for it"));
                break;
            }
        }
        let output: Vec<String> = kept
            .lock()
            .expect("output buffer lock")
            .iter()
            .cloned()
            .collect();
        match status {
            Ok(s) if s.success() => {
                log::info(&format!("[{tag}] done"));
                Ok(())
            }
            Ok(s) => {
                let how = match (s.code(), s.signal()) {
                    (Some(c), _) => format!("exit code {c}"),
                    (None, Some(sig)) => format!("signal {sig}"),
                    _ => "unknown status".into(),
                };
                log::error(&format!("[{tag}] failed: {how}"));
                Err(Problem {
                    exit_code: s.code(),
                    output,
                })
            }
            Err(e) => fail(format!("cannot wait for {}: {e}", script.display())),
        }
    }
}
