//! The running agent: the model behind one lock, a worker thread that runs
//! the queue in order, and the operations the control socket offers. Every
//! change to the model is persisted before anyone can observe it, and an
//! instruction leaves the queue only once it has finished, so a kill at any
//! moment loses nothing (see `Model::recover`).
use crate::build_info::VERSION;
use crate::config::{Config, Paths};
use crate::migrate::{LOCK_SCHEMA, NEWEST, WRITES};
use crate::model::{name_of, parent_of, Begin, Instruction, MigrationLock, Model, Step};
use crate::recipe::Recipe;
use crate::{log, state};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many finished instructions are remembered for `apply --wait`.
const FINISHED_KEPT: usize = 256;

pub const LAST_STOP_FILE: &str = "last-stop.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// An ordinary stop (SIGTERM/SIGINT): the machine is going away.
    Shutdown,
    /// Stop for upgrade: everything persisted, the machine is NOT announced as gone.
    Upgrade,
}

impl StopKind {
    fn as_str(self) -> &'static str {
        match self {
            StopKind::Shutdown => "shutdown",
            StopKind::Upgrade => "stop-for-upgrade",
        }
    }
}

struct Running {
    id: u64,
    instruction: Instruction,
    step: Step,
    component: String,
    pid: Option<u32>,
    since: Instant,
}

struct Inner {
    model: Model,
    quiesced: bool,
    stopping: Option<StopKind>,
    running: Option<Running>,
    finished: VecDeque<(u64, Result<String, String>)>,
}

pub struct Agent {
    paths: Paths,
    /// Whether the control socket's path is the agent's to remove when it
    /// exits: not when a socket unit owns it, which keeps it listening.
    bound_socket: bool,
    config: Config,
    previous_stop: Option<Value>,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Agent {
    pub fn new(paths: Paths, config: Config, model: Model, bound_socket: bool) -> Agent {
        let previous_stop = std::fs::read(paths.state_dir.join(LAST_STOP_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Agent {
            paths,
            bound_socket,
            config,
            previous_stop,
            inner: Mutex::new(Inner {
                model,
                quiesced: false,
                stopping: None,
                running: None,
                finished: VecDeque::new(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("agent state lock poisoned")
    }

    /// Persists the model. If that fails, memory and disk disagree and the
    /// only safe course is to stop: systemd restarts us on what the disk holds.
    fn persist(&self, inner: &Inner) {
        if let Err(e) = state::save_model(&self.paths.state_dir, &inner.model) {
            log::error(&format!(
                "{e:#}: stopping so that the agent restarts from the state on disk"
            ));
            std::process::exit(1);
        }
    }

    fn is_busy(inner: &Inner) -> bool {
        inner.running.is_some()
            || inner.model.transitional().next().is_some()
            || !inner.model.queue.is_empty()
    }

    fn describe_running(inner: &Inner) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &inner.running {
            parts.push(format!(
                "recipe `{}` of instance {} (component {}, instruction {}, pid {}, running for {}s)",
                r.step.script(),
                r.instruction.path(),
                r.component,
                r.id,
                r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
                r.since.elapsed().as_secs()
            ));
        }
        for (path, inst) in inner.model.transitional() {
            if inner
                .running
                .as_ref()
                .is_none_or(|r| r.instruction.path() != path)
            {
                parts.push(format!("instance {path} is {}", inst.state));
            }
        }
        parts.push(format!("{} instruction(s) queued", inner.model.queue.len()));
        if let Some(lock) = &inner.model.lock {
            parts.push(format!(
                "{} of them held by the {}",
                inner.model.held(),
                lock.describe()
            ));
        }
        parts.join("; ")
    }

    pub fn status(&self) -> Value {
        let inner = self.lock();
        let instances: Vec<Value> = inner
            .model
            .instances
            .iter()
            .map(|(path, i)| {
                json!({
                    "path": path,
                    "name": name_of(path),
                    "component": i.component,
                    "parent": parent_of(path),
                    "state": i.state,
                    "problem": i.problem,
                })
            })
            .collect();
        let running = inner.running.as_ref().map(|r| {
            json!({
                "id": r.id,
                "instance": r.instruction.path(),
                "component": r.component,
                "recipe": r.step.script(),
                "pid": r.pid,
                "running_secs": r.since.elapsed().as_secs(),
            })
        });
        let busy = Self::is_busy(&inner);
        let steps = inner.model.lock.as_ref().map(|l| &l.steps);
        let queue: Vec<Value> = inner
            .model
            .queue
            .iter()
            .map(|q| {
                let mut entry = json!(q);
                if steps.is_some_and(|s| s.contains(&q.id)) {
                    entry["lock_id"] = json!(inner.model.lock.as_ref().map(|l| &l.id));
                }
                entry
            })
            .collect();
        json!({
            "ok": true,
            "protocol": crate::control::PROTOCOL,
            "version": VERSION,
            "schema": WRITES,
            "newest_known_schema": WRITES,
            "registry_newest_schema": NEWEST,
            "pid": std::process::id(),
            "application": self.config.application,
            "scoped_instance_path": self.config.scoped_instance_path,
            "instances": instances,
            "queue_length": inner.model.queue.len(),
            "queue": queue,
            "lock": inner.model.lock,
            "held": inner.model.held(),
            "running": running,
            "busy": busy,
            "idle": !busy,
            "quiesced": inner.quiesced,
            "previous_stop": self.previous_stop,
        })
    }

    /// Whether a migration lock is held.
    pub fn locked(&self) -> bool {
        self.lock().model.lock.is_some()
    }

    /// Queues an instruction durably; with `wait`, answers once it finished.
    /// While a migration lock is held, only its steps (`lock_id`) are taken.
    pub fn apply(
        &self,
        instruction: Instruction,
        wait: Option<Duration>,
        lock_id: Option<&str>,
    ) -> Result<Value, String> {
        instruction.validate()?;
        let mut inner = self.lock();
        if inner.stopping.is_some() {
            return Err("the agent is stopping; the instruction was not queued".into());
        }
        let id = inner
            .model
            .enqueue_checked(instruction.clone(), lock_id)
            .inspect_err(|e| log::warn(&format!("instruction {instruction}: {e}")))?;
        self.persist(&inner);
        log::info(&format!(
            "queued instruction {id}: {instruction}{}",
            lock_id.map_or(String::new(), |l| format!(" (a step of migration `{l}`)"))
        ));
        self.changed.notify_all();
        let queued = json!({"ok": true, "id": id, "queue_length": inner.model.queue.len(), "quiesced": inner.quiesced});
        let Some(timeout) = wait else {
            return Ok(queued);
        };
        let (inner, result) = self
            .changed
            .wait_timeout_while(inner, timeout, |i| {
                !i.finished.iter().any(|(fid, _)| *fid == id)
            })
            .expect("agent state lock poisoned");
        if result.timed_out() {
            return Err(format!(
                "instruction {id} ({instruction}) is queued durably but not finished after {}s{}: {}",
                timeout.as_secs(),
                if inner.quiesced { " (the agent is quiesced)" } else { "" },
                Self::describe_running(&inner)
            ));
        }
        let (_, outcome) = inner
            .finished
            .iter()
            .find(|(fid, _)| *fid == id)
            .expect("checked above");
        match outcome {
            Ok(done) => Ok(json!({"ok": true, "id": id, "done": done})),
            Err(why) => Err(format!("instruction {id} ({instruction}) failed: {why}")),
        }
    }

    /// Takes the migration lock (durably) for `application`, which must be
    /// this agent's. Taking the lock already held is a no-op that answers
    /// it; another lock is refused, naming it.
    pub fn take_lock(
        &self,
        id: String,
        application: String,
        by: String,
        reason: String,
    ) -> Result<Value, String> {
        if WRITES < LOCK_SCHEMA {
            return Err(format!(
                "roboconf-agent {VERSION} writes state schema {WRITES}, which cannot hold a migration lock \
                 (schema {LOCK_SCHEMA} and later can): nothing was locked"
            ));
        }
        if application != self.config.application {
            return Err(format!(
                "refused: migration lock `{id}` is for application {application}, but this agent belongs \
                 to application {} (agent.toml): nothing was locked",
                self.config.application
            ));
        }
        let mut inner = self.lock();
        if inner.stopping.is_some() {
            return Err("the agent is stopping; nothing was locked".into());
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let taken = inner.model.take_lock(MigrationLock {
            id,
            application,
            since,
            by,
            reason,
            steps: Default::default(),
        })?;
        let lock = inner.model.lock.clone().expect("just taken or held");
        if taken {
            self.persist(&inner);
            log::info(&format!(
                "{} taken: instructions without its id are refused, {} queued instruction(s) wait until \
                 it is released",
                lock.describe(),
                inner.model.held()
            ));
        }
        Ok(json!({"ok": true, "lock": lock, "taken": taken, "held": inner.model.held()}))
    }

    /// Releases the migration lock `id`, or whatever lock is held when
    /// `forced_by` names who breaks it (logged as a warning with the lock
    /// it broke). What waited for the lock runs again.
    pub fn release_lock(&self, id: Option<&str>, forced_by: Option<&str>) -> Result<Value, String> {
        let mut inner = self.lock();
        if inner.stopping.is_some() {
            return Err("the agent is stopping; nothing was unlocked".into());
        }
        let held = inner.model.held();
        let released = inner.model.release_lock(id)?;
        match (&released, forced_by) {
            (Some(lock), Some(by)) => {
                self.persist(&inner);
                log::warn(&format!(
                    "the {} was FORCED open by {by}; {held} held instruction(s) run again",
                    lock.describe()
                ));
            }
            (Some(lock), None) => {
                self.persist(&inner);
                log::info(&format!(
                    "the {} was released; {held} held instruction(s) run again",
                    lock.describe()
                ));
            }
            (None, Some(by)) => log::info(&format!(
                "forced unlock by {by}: no migration lock was held"
            )),
            (None, None) => {}
        }
        self.changed.notify_all();
        Ok(json!({
            "ok": true,
            "released": released,
            "forced_by": forced_by,
            "queue_length": inner.model.queue.len(),
        }))
    }

    /// Takes no new work and waits until no recipe runs. Queued instructions
    /// stay queued (durably) for after the upgrade. On timeout the agent goes
    /// back to work, so a failed upgrade attempt cannot leave it stuck.
    pub fn quiesce(&self, timeout: Duration) -> Result<Value, String> {
        let mut inner = self.lock();
        let was_quiesced = inner.quiesced;
        inner.quiesced = true;
        log::info("quiesced: no new instruction will start");
        let (mut inner, result) = self
            .changed
            .wait_timeout_while(inner, timeout, |i| {
                i.running.is_some() || i.model.transitional().next().is_some()
            })
            .expect("agent state lock poisoned");
        if result.timed_out() {
            inner.quiesced = was_quiesced;
            self.changed.notify_all();
            let what = Self::describe_running(&inner);
            log::warn(&format!(
                "quiesce timed out after {}s, resuming: still running: {what}",
                timeout.as_secs()
            ));
            return Err(format!(
                "not idle after {}s; still running: {what}",
                timeout.as_secs()
            ));
        }
        Ok(
            json!({"ok": true, "idle": true, "quiesced": true, "queue_length": inner.model.queue.len()}),
        )
    }

    pub fn resume(&self) -> Value {
        let mut inner = self.lock();
        inner.quiesced = false;
        self.changed.notify_all();
        log::info("resumed: instructions run again");
        json!({"ok": true, "quiesced": false, "queue_length": inner.model.queue.len()})
    }

    /// Marks the agent as stopping; the caller answers and then calls `exit`.
    /// Refused while a recipe runs, since cutting it would leave its instance
    /// half-done across an upgrade: quiesce first.
    pub fn stop_for_upgrade(&self) -> Result<Value, String> {
        let mut inner = self.lock();
        if inner.running.is_some() {
            return Err(format!(
                "a recipe is running, quiesce first (`ctl quiesce --timeout SECS`): {}",
                Self::describe_running(&inner)
            ));
        }
        inner.quiesced = true;
        inner.stopping = Some(StopKind::Upgrade);
        self.persist(&inner);
        self.changed.notify_all();
        Ok(
            json!({"ok": true, "stopping": StopKind::Upgrade.as_str(), "queue_length": inner.model.queue.len()}),
        )
    }

    /// Records how the agent stopped and ends the process.
    pub fn exit(&self, kind: StopKind) -> ! {
        let mut inner = self.lock();
        inner.stopping = Some(kind);
        self.persist(&inner);
        match kind {
            StopKind::Upgrade => log::info(
                "stopping for upgrade: state persisted; the machine is NOT announced as gone, its instances \
                 keep their states",
            ),
            StopKind::Shutdown => log::info(&format!(
                "stopping: this is where the DM at {} would be told the machine is going down (the reference \
                 agent has no DM connection, so it is only logged)",
                self.config.messaging_endpoint
            )),
        }
        let record = json!({
            "kind": kind.as_str(),
            "version": VERSION,
            "pid": std::process::id(),
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "queue_length": inner.model.queue.len(),
        });
        if let Err(e) = state::atomic_write(
            &self.paths.state_dir,
            LAST_STOP_FILE,
            format!("{record}\n").as_bytes(),
        ) {
            log::warn(&format!("{e:#}"));
        }
        if self.bound_socket {
            let _ = std::fs::remove_file(self.paths.socket());
        }
        std::process::exit(0);
    }

    /// The worker: runs the head of the queue whenever the agent is not
    /// quiesced, one instruction at a time, in order; while a migration lock
    /// is held, only the migration's steps, in order.
    pub fn work(&self) {
        loop {
            let mut inner = self
                .changed
                .wait_while(self.lock(), |i| {
                    i.stopping.is_none() && (i.quiesced || i.model.next_runnable().is_none())
                })
                .expect("agent state lock poisoned");
            if inner.stopping.is_some() {
                return;
            }
            let head = inner
                .model
                .next_runnable()
                .cloned()
                .expect("waited for a runnable instruction");
            match inner.model.begin(&head.instruction) {
                Ok(Begin::Done(done)) => self.complete(&mut inner, head.id, Ok(done)),
                Err(why) => self.complete(&mut inner, head.id, Err(format!("rejected: {why}"))),
                Ok(Begin::Run { step, component }) => {
                    inner.running = Some(Running {
                        id: head.id,
                        instruction: head.instruction.clone(),
                        step,
                        component: component.clone(),
                        pid: None,
                        since: Instant::now(),
                    });
                    self.persist(&inner);
                    self.changed.notify_all();
                    drop(inner);
                    let recipe = Recipe {
                        recipes_dir: &self.config.recipes_dir,
                        component: &component,
                        step,
                        instance_path: head.instruction.path(),
                        application: &self.config.application,
                        scoped_instance_path: &self.config.scoped_instance_path,
                        state_dir: &self.paths.state_dir,
                        runtime_dir: &self.paths.runtime_dir,
                        timeout: self.config.recipe_timeout,
                    };
                    let result = recipe.run(|pid| {
                        if let Some(r) = self.lock().running.as_mut() {
                            r.pid = Some(pid);
                        }
                    });
                    let mut inner = self.lock();
                    let outcome =
                        inner
                            .model
                            .finish(head.id, head.instruction.path(), step, result);
                    inner.running = None;
                    self.complete(&mut inner, head.id, outcome);
                }
            }
        }
    }

    fn complete(&self, inner: &mut Inner, id: u64, outcome: Result<String, String>) {
        inner.model.dequeue(id);
        self.persist(inner);
        match &outcome {
            Ok(done) => log::info(&format!("instruction {id} finished: {done}")),
            Err(why) => log::warn(&format!("instruction {id} failed: {why}")),
        }
        if inner.finished.len() == FINISHED_KEPT {
            inner.finished.pop_front();
        }
        inner.finished.push_back((id, outcome));
        self.changed.notify_all();
    }
}
