//! The agent's in-memory model: the instance tree of this VM, each instance's
//! Roboconf lifecycle state, and the durable queue of pending instructions.
//! The lifecycle rules (what an instruction may do in which state) live here so
//! that the daemon, the state store and the tests share one definition.
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// Roboconf lifecycle states, spelled as Roboconf spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Lifecycle {
    NotDeployed,
    DeployedStopped,
    DeployedStarted,
    /// Deployed and asked to start, but its dependencies are not resolved.
    /// This agent models no imports, so it never enters this state itself; it is
    /// part of the stored format so that state written by agents that do can be
    /// read, reported and migrated.
    Unresolved,
    WaitingForAncestor,
    Deploying,
    Starting,
    Stopping,
    Undeploying,
    Problem,
}

impl Lifecycle {
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            Lifecycle::Deploying
                | Lifecycle::Starting
                | Lifecycle::Stopping
                | Lifecycle::Undeploying
        )
    }

    fn is_deployed(self) -> bool {
        !matches!(self, Lifecycle::NotDeployed)
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).expect("lifecycle serializes");
        f.write_str(s.as_str().expect("lifecycle is a string"))
    }
}

/// Why an instance is in PROBLEM: the failing recipe's exit code (None when it
/// was killed by a signal or timed out) and the last lines it printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub exit_code: Option<i32>,
    pub output: Vec<String>,
}

/// One instruction, as queued and as stored in every schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Instruction {
    Add { path: String, component: String },
    Remove { path: String },
    Deploy { path: String },
    Start { path: String },
    Stop { path: String },
    Undeploy { path: String },
}

impl Instruction {
    pub fn path(&self) -> &str {
        match self {
            Instruction::Add { path, .. }
            | Instruction::Remove { path }
            | Instruction::Deploy { path }
            | Instruction::Start { path }
            | Instruction::Stop { path }
            | Instruction::Undeploy { path } => path,
        }
    }

    pub fn action(&self) -> &'static str {
        match self {
            Instruction::Add { .. } => "add",
            Instruction::Remove { .. } => "remove",
            Instruction::Deploy { .. } => "deploy",
            Instruction::Start { .. } => "start",
            Instruction::Stop { .. } => "stop",
            Instruction::Undeploy { .. } => "undeploy",
        }
    }

    /// Checks what can be checked without the tree, so that a request with a
    /// bad path or component is refused before it is queued.
    pub fn validate(&self) -> Result<(), String> {
        validate_path(self.path())?;
        if let Instruction::Add { component, .. } = self {
            validate_name("component", component)?;
        }
        Ok(())
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instruction::Add { path, component } => write!(f, "add {path} (component {component})"),
            other => write!(f, "{} {}", other.action(), other.path()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub id: u64,
    #[serde(flatten)]
    pub instruction: Instruction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub component: String,
    pub state: Lifecycle,
    pub problem: Option<Problem>,
}

/// The recipe steps, named as the recipe scripts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Deploy,
    Start,
    Stop,
    Undeploy,
}

impl Step {
    pub fn script(self) -> &'static str {
        match self {
            Step::Deploy => "deploy",
            Step::Start => "start",
            Step::Stop => "stop",
            Step::Undeploy => "undeploy",
        }
    }

    fn transitional(self) -> Lifecycle {
        match self {
            Step::Deploy => Lifecycle::Deploying,
            Step::Start => Lifecycle::Starting,
            Step::Stop => Lifecycle::Stopping,
            Step::Undeploy => Lifecycle::Undeploying,
        }
    }

    fn success(self) -> Lifecycle {
        match self {
            Step::Deploy | Step::Stop => Lifecycle::DeployedStopped,
            Step::Start => Lifecycle::DeployedStarted,
            Step::Undeploy => Lifecycle::NotDeployed,
        }
    }
}

/// What the worker must do for the instruction at the head of the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// Applied to the tree already; nothing to run.
    Done(String),
    /// The instance is now transitional; run this recipe, then call `finish`.
    Run { step: Step, component: String },
}

/// Roboconf's migration lock (`migration initialize APP`): while it is
/// held, only the migration's own steps (instructions applied with its id)
/// run and are taken; what was queued before, or arrives without its id,
/// waits or is refused. Stored from schema 4 on (docs/AGENT.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationLock {
    pub id: String,
    /// The application being migrated: the agent's own (agent.toml).
    pub application: String,
    /// When it was taken, in seconds since the Unix epoch.
    pub since: u64,
    /// Who took it (a user, a tool).
    pub by: String,
    pub reason: String,
    /// The ids of the queued instructions that are the migration's own
    /// steps: these run while the lock is held, the others wait.
    pub steps: BTreeSet<u64>,
}

/// The longest `by` and `reason` a lock keeps: both end up in log lines.
const LOCK_TEXT_MAX: usize = 1024;

impl MigrationLock {
    /// Checks what a lock holds, so that what it says can be logged and
    /// quoted on one line.
    pub fn validate(&self) -> Result<(), String> {
        validate_name("migration lock id", &self.id)?;
        validate_name("application", &self.application)?;
        for (what, text, required) in [("by", &self.by, true), ("reason", &self.reason, false)] {
            if required && text.trim().is_empty() {
                return Err(format!(
                    "the migration lock's `{what}` is empty: say who takes it"
                ));
            }
            if text.len() > LOCK_TEXT_MAX || text.chars().any(char::is_control) {
                return Err(format!(
                    "the migration lock's `{what}` must be at most {LOCK_TEXT_MAX} bytes without control characters"
                ));
            }
        }
        Ok(())
    }

    /// The lock in words, for refusals and log lines.
    pub fn describe(&self) -> String {
        format!(
            "migration lock `{}` of application {} (taken by {} at unix time {}{})",
            self.id,
            self.application,
            self.by,
            self.since,
            if self.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", self.reason)
            }
        )
    }
}

/// The whole durable state. Instances are keyed by path, so iteration order is
/// path order, which is also the order every schema stores them in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Model {
    pub instances: BTreeMap<String, Instance>,
    pub queue: VecDeque<Queued>,
    pub next_id: u64,
    pub lock: Option<MigrationLock>,
}

/// Instance and component names end up in unit names, directory names and
/// environment variables, so they are kept to a safe alphabet.
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name {name:?}: use 1 to 128 of A-Z a-z 0-9 . _ - (not . or ..)"
        ))
    }
}

/// A Roboconf instance path: `/root/child/...`, each segment an instance name.
pub fn validate_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!(
            "invalid instance path {path:?}: it must start with /"
        ));
    };
    for segment in rest.split('/') {
        validate_name("instance", segment)
            .map_err(|e| format!("in instance path {path:?}: {e}"))?;
    }
    Ok(())
}

/// The parent path of a valid instance path, None for a root instance.
pub fn parent_of(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) | None => None,
        Some(i) => Some(&path[..i]),
    }
}

pub fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Model {
    pub fn new() -> Self {
        Model {
            next_id: 1,
            ..Default::default()
        }
    }

    /// Structural checks run on every load: a checksum proves the file is what
    /// was written, this proves that what was written makes sense.
    pub fn validate(&self) -> Result<(), String> {
        for path in self.instances.keys() {
            validate_path(path)?;
            if let Some(parent) = parent_of(path) {
                if !self.instances.contains_key(parent) {
                    return Err(format!("instance {path} has no parent instance {parent}"));
                }
            }
        }
        for q in &self.queue {
            q.instruction.validate()?;
            if q.id >= self.next_id {
                return Err(format!(
                    "queued instruction id {} is not below next_id {}",
                    q.id, self.next_id
                ));
            }
        }
        if let Some(lock) = &self.lock {
            lock.validate()?;
            if let Some(step) = lock
                .steps
                .iter()
                .find(|&&s| !self.queue.iter().any(|q| q.id == s))
            {
                return Err(format!(
                    "the migration lock `{}` names step {step}, which is not queued",
                    lock.id
                ));
            }
        }
        Ok(())
    }

    pub fn enqueue(&mut self, instruction: Instruction) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back(Queued { id, instruction });
        id
    }

    /// Queues an instruction that arrives from outside: while a migration
    /// lock is held only its own steps (carrying its id) are taken, and a
    /// lock id is taken only while that lock is held. Err refuses, naming
    /// the lock; nothing is queued then.
    pub fn enqueue_checked(
        &mut self,
        instruction: Instruction,
        lock_id: Option<&str>,
    ) -> Result<u64, String> {
        match (&self.lock, lock_id) {
            (None, None) => {}
            (None, Some(id)) => {
                return Err(format!(
                    "the instruction carries migration lock id `{id}`, but no migration lock is held (it was \
                     released, or never taken): nothing was queued"
                ))
            }
            (Some(lock), Some(id)) if lock.id == id => {}
            (Some(lock), _) => {
                return Err(format!(
                    "refused: the agent is held by the {}; only the migration's own steps (carrying lock id \
                     `{}`) are taken until it is released (`roboconf-agent ctl unlock --id {}`): nothing was \
                     queued",
                    lock.describe(),
                    lock.id,
                    lock.id
                ))
            }
        }
        let id = self.enqueue(instruction);
        if let Some(lock) = self.lock.as_mut().filter(|_| lock_id.is_some()) {
            lock.steps.insert(id);
        }
        Ok(id)
    }

    /// The instruction the worker may run next: the head of the queue, or
    /// while a migration lock is held, the first of the migration's steps
    /// (the others wait, in order, until the lock is released).
    pub fn next_runnable(&self) -> Option<&Queued> {
        match &self.lock {
            None => self.queue.front(),
            Some(lock) => self.queue.iter().find(|q| lock.steps.contains(&q.id)),
        }
    }

    /// How many queued instructions wait for the migration lock's release.
    pub fn held(&self) -> usize {
        self.lock
            .as_ref()
            .map_or(0, |lock| self.queue.len() - lock.steps.len())
    }

    /// Takes the migration lock. Ok(false) when that very lock is already
    /// held (taking it again changes nothing); another lock is refused,
    /// naming it.
    pub fn take_lock(&mut self, lock: MigrationLock) -> Result<bool, String> {
        lock.validate()?;
        match &self.lock {
            Some(held) if held.id == lock.id => Ok(false),
            Some(held) => Err(format!(
                "refused: the {} is held; release it first (`roboconf-agent ctl unlock --id {}`), or \
                 break it if it is stale (`roboconf-agent ctl unlock --force --by NAME`)",
                held.describe(),
                held.id
            )),
            None => {
                self.lock = Some(lock);
                Ok(true)
            }
        }
    }

    /// Releases the migration lock: the one named `id`, or whatever is held
    /// when `id` is None (a forced unlock). Returns what was released (None
    /// when no lock was held); another lock than `id` is refused, naming it.
    pub fn release_lock(&mut self, id: Option<&str>) -> Result<Option<MigrationLock>, String> {
        match (&self.lock, id) {
            (Some(held), Some(id)) if held.id != id => Err(format!(
                "refused: the {} is held, not `{id}`: nothing was unlocked",
                held.describe()
            )),
            _ => Ok(self.lock.take()),
        }
    }

    /// Removes a finished instruction from the queue (and from the
    /// migration's steps).
    pub fn dequeue(&mut self, id: u64) {
        self.queue.retain(|q| q.id != id);
        if let Some(lock) = self.lock.as_mut() {
            lock.steps.remove(&id);
        }
    }

    pub fn transitional(&self) -> impl Iterator<Item = (&String, &Instance)> {
        self.instances
            .iter()
            .filter(|(_, i)| i.state.is_transitional())
    }

    /// Direct children, in name order. A range scan: saving a large tree must
    /// not cost a pass over all instances per instance.
    pub fn children_of<'a>(
        &'a self,
        path: &str,
    ) -> impl Iterator<Item = (&'a String, &'a Instance)> + 'a {
        let prefix = format!("{path}/");
        let skip = prefix.len();
        self.instances
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .filter(move |(p, _)| !p[skip..].contains('/'))
    }

    fn get(&self, path: &str) -> Result<&Instance, String> {
        self.instances
            .get(path)
            .ok_or_else(|| format!("no instance {path}"))
    }

    /// Starts the instruction at the head of the queue: applies what needs no
    /// recipe, or moves the instance to its transitional state. Err means the
    /// instruction is not valid in the current state and is dropped.
    pub fn begin(&mut self, instruction: &Instruction) -> Result<Begin, String> {
        let path = instruction.path();
        let parent_state = parent_of(path)
            .and_then(|p| self.instances.get(p))
            .map(|i| i.state);
        let step = match instruction {
            Instruction::Add { path, component } => {
                if self.instances.contains_key(path) {
                    return Err(format!("instance {path} already exists"));
                }
                if let Some(parent) = parent_of(path) {
                    self.get(parent).map_err(|_| {
                        format!("cannot add {path}: parent {parent} does not exist")
                    })?;
                }
                self.instances.insert(
                    path.clone(),
                    Instance {
                        component: component.clone(),
                        state: Lifecycle::NotDeployed,
                        problem: None,
                    },
                );
                return Ok(Begin::Done(format!("added {path}")));
            }
            Instruction::Remove { path } => {
                let inst = self.get(path)?;
                if inst.state != Lifecycle::NotDeployed {
                    return Err(format!(
                        "cannot remove {path}: it is {}, undeploy it first",
                        inst.state
                    ));
                }
                if let Some((child, _)) = self.children_of(path).next() {
                    return Err(format!(
                        "cannot remove {path}: it has child instance {child}"
                    ));
                }
                self.instances.remove(path);
                return Ok(Begin::Done(format!("removed {path}")));
            }
            Instruction::Deploy { path } => {
                let inst = self.get(path)?;
                if !matches!(inst.state, Lifecycle::NotDeployed | Lifecycle::Problem) {
                    return Err(format!("cannot deploy {path}: it is {}", inst.state));
                }
                if let Some(ps) = parent_state {
                    if !matches!(ps, Lifecycle::DeployedStopped | Lifecycle::DeployedStarted) {
                        return Err(format!(
                            "cannot deploy {path}: its parent is {ps}, deploy the parent first"
                        ));
                    }
                }
                Step::Deploy
            }
            Instruction::Start { path } => {
                let inst = self.get(path)?;
                if !matches!(
                    inst.state,
                    Lifecycle::DeployedStopped | Lifecycle::WaitingForAncestor
                ) {
                    return Err(format!("cannot start {path}: it is {}", inst.state));
                }
                if parent_state.is_some_and(|ps| ps != Lifecycle::DeployedStarted) {
                    // Roboconf's rule: a child waits until its ancestor runs, and is
                    // started when the ancestor is (see `finish`).
                    self.set(path, Lifecycle::WaitingForAncestor, None);
                    return Ok(Begin::Done(format!("{path} waits for its parent to start")));
                }
                Step::Start
            }
            Instruction::Stop { path } => {
                let inst = self.get(path)?;
                if inst.state == Lifecycle::WaitingForAncestor {
                    self.set(path, Lifecycle::DeployedStopped, None);
                    return Ok(Begin::Done(format!("{path} no longer waits to start")));
                }
                if inst.state != Lifecycle::DeployedStarted {
                    return Err(format!("cannot stop {path}: it is {}", inst.state));
                }
                if let Some((child, _)) = self
                    .children_of(path)
                    .find(|(_, c)| c.state == Lifecycle::DeployedStarted)
                {
                    return Err(format!(
                        "cannot stop {path}: child instance {child} is started, stop it first"
                    ));
                }
                Step::Stop
            }
            Instruction::Undeploy { path } => {
                let inst = self.get(path)?;
                if !matches!(inst.state, Lifecycle::DeployedStopped | Lifecycle::Problem) {
                    return Err(format!(
                        "cannot undeploy {path}: it is {}, stop it first",
                        inst.state
                    ));
                }
                if let Some((child, _)) =
                    self.children_of(path).find(|(_, c)| c.state.is_deployed())
                {
                    return Err(format!(
                        "cannot undeploy {path}: child instance {child} is deployed"
                    ));
                }
                Step::Undeploy
            }
        };
        let component = self.get(path)?.component.clone();
        self.set(path, step.transitional(), None);
        Ok(Begin::Run { step, component })
    }

    /// Records the end of a recipe. Started instances release the children
    /// that were waiting for them: those get a start queued. Err describes a
    /// failed recipe (the instance is now in PROBLEM).
    /// `id` is the finished instruction's: the starts it queues are steps of
    /// the migration if it was one.
    pub fn finish(
        &mut self,
        id: u64,
        path: &str,
        step: Step,
        result: Result<(), Problem>,
    ) -> Result<String, String> {
        match result {
            Ok(()) => {
                self.set(path, step.success(), None);
                if step == Step::Start {
                    let waiting: Vec<String> = self
                        .children_of(path)
                        .filter(|(_, c)| c.state == Lifecycle::WaitingForAncestor)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for child in waiting {
                        let queued = self.enqueue(Instruction::Start { path: child });
                        if let Some(lock) = self.lock.as_mut().filter(|l| l.steps.contains(&id)) {
                            lock.steps.insert(queued);
                        }
                    }
                }
                Ok(format!("{path} is {}", step.success()))
            }
            Err(problem) => {
                let summary = match problem.exit_code {
                    Some(code) => format!(
                        "{} recipe of {path} failed with exit code {code}",
                        step.script()
                    ),
                    None => format!(
                        "{} recipe of {path} was killed (timeout or signal)",
                        step.script()
                    ),
                };
                self.set(path, Lifecycle::Problem, Some(problem));
                Err(summary)
            }
        }
    }

    fn set(&mut self, path: &str, state: Lifecycle, problem: Option<Problem>) {
        if let Some(inst) = self.instances.get_mut(path) {
            inst.state = state;
            inst.problem = problem;
        }
    }

    /// After a crash or kill, an instance can be left transitional. Its
    /// instruction is still the next to run (instructions leave the queue
    /// only once finished), so the instance goes back to the state the
    /// step started from and the step runs again. Recipes must therefore be
    /// idempotent, as Roboconf recipes already should be. Returns what was done.
    pub fn recover(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let head = self.next_runnable().map(|q| q.instruction.clone());
        for (path, inst) in self
            .instances
            .iter_mut()
            .filter(|(_, i)| i.state.is_transitional())
        {
            let (before, step) = match inst.state {
                Lifecycle::Deploying => (Lifecycle::NotDeployed, "deploy"),
                Lifecycle::Starting => (Lifecycle::DeployedStopped, "start"),
                Lifecycle::Stopping => (Lifecycle::DeployedStarted, "stop"),
                _ => (Lifecycle::DeployedStopped, "undeploy"),
            };
            let rerun = head
                .as_ref()
                .is_some_and(|h| h.path() == path && h.action() == step);
            notes.push(format!(
                "instance {path} was {} when the agent last stopped; back to {before}{}",
                inst.state,
                if rerun {
                    format!(", its {step} recipe runs again")
                } else {
                    String::new()
                }
            ));
            inst.state = before;
            inst.problem = None;
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(m: &mut Model, path: &str) {
        let i = Instruction::Add {
            path: path.into(),
            component: "C".into(),
        };
        assert!(matches!(m.begin(&i), Ok(Begin::Done(_))));
    }

    #[test]
    fn paths_are_checked() {
        assert!(validate_path("/vm/app").is_ok());
        assert!(validate_path("vm").is_err());
        assert!(validate_path("/vm//x").is_err());
        assert!(validate_path("/vm/..").is_err());
        assert!(validate_path("/vm/a b").is_err());
        assert_eq!(parent_of("/vm/app"), Some("/vm"));
        assert_eq!(parent_of("/vm"), None);
        assert_eq!(name_of("/vm/app"), "app");
    }

    #[test]
    fn child_waits_for_parent_and_is_started_with_it() {
        let mut m = Model::new();
        add(&mut m, "/vm");
        add(&mut m, "/vm/app");
        assert!(m
            .begin(&Instruction::Add {
                path: "/x/y".into(),
                component: "C".into()
            })
            .is_err());
        for p in ["/vm", "/vm/app"] {
            assert_eq!(
                m.begin(&Instruction::Deploy { path: p.into() }).unwrap(),
                Begin::Run {
                    step: Step::Deploy,
                    component: "C".into()
                }
            );
            m.finish(0, p, Step::Deploy, Ok(())).unwrap();
        }
        assert!(matches!(
            m.begin(&Instruction::Start {
                path: "/vm/app".into()
            }),
            Ok(Begin::Done(_))
        ));
        assert_eq!(m.instances["/vm/app"].state, Lifecycle::WaitingForAncestor);
        assert!(matches!(
            m.begin(&Instruction::Start { path: "/vm".into() }),
            Ok(Begin::Run { .. })
        ));
        m.finish(0, "/vm", Step::Start, Ok(())).unwrap();
        assert_eq!(
            m.queue.back().unwrap().instruction,
            Instruction::Start {
                path: "/vm/app".into()
            }
        );
        assert!(m
            .begin(&Instruction::Remove { path: "/vm".into() })
            .is_err());
    }

    #[test]
    fn failure_records_problem_and_recovery_rolls_back() {
        let mut m = Model::new();
        add(&mut m, "/vm");
        m.enqueue(Instruction::Deploy { path: "/vm".into() });
        assert!(matches!(
            m.begin(&Instruction::Deploy { path: "/vm".into() }),
            Ok(Begin::Run { .. })
        ));
        assert_eq!(m.instances["/vm"].state, Lifecycle::Deploying);
        let notes = m.recover();
        assert_eq!(m.instances["/vm"].state, Lifecycle::NotDeployed);
        assert!(notes[0].contains("runs again"), "{notes:?}");
        m.begin(&Instruction::Deploy { path: "/vm".into() })
            .unwrap();
        let err = m.finish(
            0,
            "/vm",
            Step::Deploy,
            Err(Problem {
                exit_code: Some(3),
                output: vec!["boom".into()],
            }),
        );
        assert!(err.unwrap_err().contains("exit code 3"));
        assert_eq!(m.instances["/vm"].state, Lifecycle::Problem);
        assert_eq!(
            m.instances["/vm"].problem.as_ref().unwrap().exit_code,
            Some(3)
        );
    }

    fn lock(id: &str) -> MigrationLock {
        MigrationLock {
            id: id.into(),
            application: "shop".into(),
            since: 1,
            by: "alice".into(),
            reason: "move to the new DM".into(),
            steps: BTreeSet::new(),
        }
    }

    fn deploy(path: &str) -> Instruction {
        Instruction::Deploy { path: path.into() }
    }

    #[test]
    fn a_migration_lock_holds_what_does_not_carry_its_id() {
        let mut m = Model::new();
        let before = m.enqueue(deploy("/a"));
        assert!(m.take_lock(lock("m1")).unwrap());
        assert!(
            !m.take_lock(lock("m1")).unwrap(),
            "taking it again is a no-op"
        );
        let other = m.take_lock(lock("m2")).unwrap_err();
        assert!(other.contains("`m1`") && other.contains("alice"), "{other}");
        for lock_id in [None, Some("m2")] {
            let refused = m.enqueue_checked(deploy("/b"), lock_id).unwrap_err();
            assert!(
                refused.contains("migration lock `m1` of application shop"),
                "{refused}"
            );
        }
        assert_eq!(m.queue.len(), 1, "refusals queue nothing");
        assert_eq!(
            m.next_runnable(),
            None,
            "what was queued before the lock waits"
        );
        let step = m.enqueue_checked(deploy("/c"), Some("m1")).unwrap();
        assert_eq!(m.next_runnable().map(|q| q.id), Some(step));
        assert_eq!(m.held(), 1);
        m.validate().unwrap();
        m.dequeue(step);
        assert!(m.lock.as_ref().unwrap().steps.is_empty());
        let wrong = m.release_lock(Some("m2")).unwrap_err();
        assert!(
            wrong.contains("`m1`") && wrong.contains("not `m2`"),
            "{wrong}"
        );
        assert_eq!(m.release_lock(Some("m1")).unwrap().unwrap().id, "m1");
        assert_eq!(
            m.next_runnable().map(|q| q.id),
            Some(before),
            "it runs after the release"
        );
        assert_eq!(m.release_lock(None).unwrap(), None);
        let stale = m.enqueue_checked(deploy("/d"), Some("m1")).unwrap_err();
        assert!(stale.contains("no migration lock is held"), "{stale}");
    }

    #[test]
    fn starts_released_by_a_migration_step_are_its_steps_too() {
        let mut m = Model::new();
        add(&mut m, "/vm");
        add(&mut m, "/vm/app");
        m.set("/vm", Lifecycle::DeployedStopped, None);
        m.set("/vm/app", Lifecycle::WaitingForAncestor, None);
        m.take_lock(lock("m1")).unwrap();
        let start = m
            .enqueue_checked(Instruction::Start { path: "/vm".into() }, Some("m1"))
            .unwrap();
        assert!(matches!(
            m.begin(&Instruction::Start { path: "/vm".into() }),
            Ok(Begin::Run { .. })
        ));
        m.finish(start, "/vm", Step::Start, Ok(())).unwrap();
        m.dequeue(start);
        assert_eq!(
            m.next_runnable().map(|q| q.instruction.clone()),
            Some(Instruction::Start {
                path: "/vm/app".into()
            })
        );
    }

    #[test]
    fn a_lock_naming_a_step_that_is_not_queued_is_inconsistent() {
        let mut m = Model::new();
        let mut l = lock("m1");
        l.steps.insert(7);
        m.lock = Some(l);
        assert!(m.validate().unwrap_err().contains("step 7"));
        let mut l = lock("bad id");
        l.by = "x".into();
        m.lock = Some(l);
        assert!(m.validate().is_err());
    }
}
