//! The agent's in-memory model: the instance tree of this VM, each instance's
//! Roboconf lifecycle state, and the durable queue of pending instructions.
//! The lifecycle rules (what an instruction may do in which state) live here so
//! that the daemon, the state store and the tests share one definition.
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
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

/// The whole durable state. Instances are keyed by path, so iteration order is
/// path order, which is also the order every schema stores them in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Model {
    pub instances: BTreeMap<String, Instance>,
    pub queue: VecDeque<Queued>,
    pub next_id: u64,
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
        Ok(())
    }

    pub fn enqueue(&mut self, instruction: Instruction) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back(Queued { id, instruction });
        id
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
    pub fn finish(
        &mut self,
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
                        self.enqueue(Instruction::Start { path: child });
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
    /// instruction is still at the head of the queue (instructions leave the
    /// queue only once finished), so the instance goes back to the state the
    /// step started from and the step runs again. Recipes must therefore be
    /// idempotent, as Roboconf recipes already should be. Returns what was done.
    pub fn recover(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let head = self.queue.front().map(|q| q.instruction.clone());
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
            m.finish(p, Step::Deploy, Ok(())).unwrap();
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
        m.finish("/vm", Step::Start, Ok(())).unwrap();
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
}
