//! Shared by the integration tests: a throwaway agent environment (config,
//! state, runtime and recipes directories under one temporary directory) and
//! helpers to run the real binary in it.
#![allow(dead_code)] // each test binary uses a different subset

use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_roboconf-agent");

pub struct Env {
    pub root: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
    pub run: PathBuf,
    pub recipes: PathBuf,
    agents: Vec<Child>,
}

impl Env {
    pub fn new(tag: &str) -> Env {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "roboconf-agent-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&root);
        let env = Env {
            config: root.join("etc"),
            state: root.join("var"),
            run: root.join("run"),
            recipes: root.join("recipes"),
            root,
            agents: Vec::new(),
        };
        for d in [&env.config, &env.state, &env.run, &env.recipes] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(
            env.config.join("agent.toml"),
            format!(
                "application = \"shop\"\nscoped_instance_path = \"/vm1\"\nmessaging_endpoint = \"amqp://dm.invalid:5672\"\n\
                 recipes_dir = \"{}\"\nrecipe_timeout_secs = 60\n",
                env.recipes.display()
            ),
        )
        .unwrap();
        let cred = env.config.join("credentials");
        fs::write(&cred, "user=vm1\npassword=secret\n").unwrap();
        fs::set_permissions(&cred, fs::Permissions::from_mode(0o640)).unwrap();
        env
    }

    /// Writes `<recipes>/<component>/<step>` as an executable shell script.
    pub fn recipe(&self, component: &str, step: &str, body: &str) {
        let dir = self.recipes.join(component);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(step);
        fs::write(&path, format!("#!/bin/sh\nset -e\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("ROBOCONF_AGENT_CONFIG_DIR", &self.config)
            .env("ROBOCONF_AGENT_STATE_DIR", &self.state)
            .env("ROBOCONF_AGENT_RUNTIME_DIR", &self.run)
            // Tests run outside systemd: long-running processes are detached.
            .env("ROBOCONF_SPAWN_MODE", "process")
            .env_remove("JOURNAL_STREAM");
        c
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs a command that must succeed and returns its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd(args);
        assert!(out.status.success(), "{args:?} failed: {}", describe(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", describe(&out)))
    }

    pub fn status(&self) -> Value {
        self.json(&["ctl", "status", "--json"])
    }

    pub fn socket(&self) -> PathBuf {
        self.run.join("control.sock")
    }

    /// Starts `roboconf-agent run` and returns once its socket answers.
    pub fn start(&mut self) -> u32 {
        self.start_with(Stdio::inherit())
    }

    /// Starts the agent with its log (stderr) in `log`, appended to.
    pub fn start_logged(&mut self, log: &Path) -> u32 {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        self.start_with(Stdio::from(file))
    }

    fn start_with(&mut self, stderr: Stdio) -> u32 {
        let mut child = self
            .command(&["run"])
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = UnixStream::connect(self.socket()) {
                if request_on(&mut s, r#"{"protocol":1,"cmd":"status"}"#)["pid"] == pid {
                    break;
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the agent exited during start: {status}");
            }
            if Instant::now() > deadline {
                // Not left running (nor holding the test's output open).
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the agent did not answer on {} within 20s",
                    self.socket().display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.agents.push(child);
        pid
    }

    pub fn kill(&mut self, pid: u32, signal: i32) -> std::process::ExitStatus {
        let i = self
            .agents
            .iter()
            .position(|c| c.id() == pid)
            .expect("an agent we started");
        let mut child = self.agents.remove(i);
        unsafe { libc::kill(pid as i32, signal) };
        child.wait().unwrap()
    }

    /// Waits for an agent that is expected to exit by itself.
    pub fn wait(&mut self, pid: u32) -> std::process::ExitStatus {
        let i = self
            .agents
            .iter()
            .position(|c| c.id() == pid)
            .expect("an agent we started");
        self.agents.remove(i).wait().unwrap()
    }

    /// Polls status until `done` holds (bounded): for waiting on the agent,
    /// never for asserting how long something took.
    pub fn until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Detached processes started by recipes through `spawn` (process mode).
        if let Ok(entries) = fs::read_dir(self.state.join("spawn")) {
            for e in entries.flatten() {
                if let Some(pid) = fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends one raw line on an open connection and reads the answer.
pub fn request_on(stream: &mut UnixStream, line: &str) -> Value {
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut answer)
        .unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("answer {answer:?} is not JSON: {e}"))
}

pub fn instance<'a>(status: &'a Value, path: &str) -> &'a Value {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == path)
        .unwrap_or_else(|| panic!("no instance {path} in {status:#}"))
}

/// A file whose existence a recipe waits for: lets a test hold a recipe
/// running for exactly as long as it needs, without timing assumptions.
pub fn gate_script(gate: &Path) -> String {
    format!("while [ ! -e '{}' ]; do sleep 0.02; done", gate.display())
}
