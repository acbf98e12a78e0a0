//! What a `perform` will do, decided before anything changes and kept in
//! the journal, so that a perform killed midway resumes the same plan: the
//! strategy, the per-component table of `smart`, and the ordered steps
//! (retire instances children first, move the package, check the agent,
//! run migration scripts, bring instances back parents first). Pure: the
//! instance tree and the versions come in, steps come out.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::exit::refused;

/// The lowest state schema that can hold the agent's migration lock.
pub const LOCK_SCHEMA: u32 = 4;

/// How a perform treats the instances the agent deployed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Touch no instance: only the agent moves (its deployed software keeps
    /// running, with the same processes).
    Keep,
    /// Stop and undeploy every instance (children first), move, deploy and
    /// start them again as they were (parents first).
    Drastic,
    /// Per component, from the table `--components` names: keep it,
    /// redeploy it (with its subtree), or run a migration script.
    Smart,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Keep => "keep",
            Strategy::Drastic => "drastic",
            Strategy::Smart => "smart",
        })
    }
}

/// What `smart` does with the instances of one component.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Treatment {
    Keep,
    Redeploy,
    /// Run this script as the agent's user, as a recipe runs.
    Script(PathBuf),
}

/// One instance as the agent reported it when the perform was planned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Instance {
    pub path: String,
    pub component: String,
    pub state: String,
}

/// One journalled step of a perform, in the order it runs. Each is
/// idempotent: a step that was running when ferry was killed runs again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum PlanStep {
    /// Stop (if started) and undeploy the instance.
    Retire { path: String },
    /// The target cannot hold the lock: release it into ferry's journal,
    /// stop the agent and its socket and mask both, so that nothing reaches
    /// it until `complete` or `cancel` (docs/MIGRATION.md).
    StopAgent,
    /// Install the target's package file with apt or dnf (the hooks carry
    /// the state forward or back).
    Move { version: String },
    /// The agent answers as the target version, holding the lock (or, when
    /// stopped, the installed version is the target).
    Check,
    /// Run the component's migration script for the instance.
    Script {
        path: String,
        component: String,
        script: PathBuf,
    },
    /// Deploy the instance again, and start it if it was started.
    Restore { path: String, state: String },
    /// Unmask and start the agent stopped by `stop-agent`.
    StartAgent,
}

impl fmt::Display for PlanStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanStep::Retire { path } => write!(f, "stop and undeploy {path}"),
            PlanStep::StopAgent => write!(
                f,
                "release the agent's lock into ferry's journal; stop and mask the agent and its socket"
            ),
            PlanStep::Move { version } => write!(f, "install the package of {version}"),
            PlanStep::Check => write!(f, "check the agent"),
            PlanStep::Script {
                path,
                component,
                script,
            } => write!(
                f,
                "run {} for {path} ({component}) as the agent's user",
                script.display()
            ),
            PlanStep::Restore { path, state } => write!(f, "bring {path} back to {state}"),
            PlanStep::StartAgent => write!(f, "unmask and start the agent"),
        }
    }
}

/// The `--components` table of `smart`: component name → treatment.
/// Components it does not name are redeployed (replaced as stateless).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Components(pub BTreeMap<String, Treatment>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentsFile {
    components: BTreeMap<String, toml::Value>,
}

impl Components {
    /// Reads a table like
    ///
    /// ```toml
    /// [components]
    /// VM = "keep"
    /// App = "redeploy"
    /// Db = { script = "/root/migrate-db" }
    /// ```
    pub fn read(path: &Path) -> Result<Components> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --components {}", path.display()))?;
        Components::parse(&text).map_err(|e| {
            refused(e.context(format!(
                "{}: not a component table (docs/MIGRATION.md, \"smart\")",
                path.display()
            )))
        })
    }

    pub fn parse(text: &str) -> Result<Components> {
        let file: ComponentsFile = toml::from_str(text)?;
        let mut table = BTreeMap::new();
        for (name, value) in file.components {
            let treatment = match &value {
                toml::Value::String(s) if s == "keep" => Treatment::Keep,
                toml::Value::String(s) if s == "redeploy" => Treatment::Redeploy,
                toml::Value::Table(t) if t.len() == 1 && t.contains_key("script") => {
                    let script = t["script"]
                        .as_str()
                        .map(PathBuf::from)
                        .filter(|p| p.is_absolute())
                        .ok_or_else(|| {
                            anyhow!(
                                "components.{name}.script must be an absolute path, \
                                 e.g. {{ script = \"/root/migrate-{name}\" }}"
                            )
                        })?;
                    Treatment::Script(script)
                }
                other => bail!(
                    "components.{name} is {other}: give \"keep\", \"redeploy\" or \
                     {{ script = \"/absolute/path\" }}"
                ),
            };
            table.insert(name, treatment);
        }
        Ok(Components(table))
    }

    /// The treatment of `component` (unnamed: redeploy).
    pub fn of(&self, component: &str) -> &Treatment {
        self.0.get(component).unwrap_or(&Treatment::Redeploy)
    }
}

/// The instances as `ctl status --json` lists them.
pub fn instances(status: &Value) -> Result<Vec<Instance>> {
    let list = status["instances"]
        .as_array()
        .context("the agent's status lists no `instances`")?;
    list.iter()
        .map(|i| {
            Ok(Instance {
                path: text(i, "path")?,
                component: text(i, "component")?,
                state: text(i, "state")?,
            })
        })
        .collect()
}

fn text(v: &Value, field: &str) -> Result<String> {
    v[field]
        .as_str()
        .map(String::from)
        .with_context(|| format!("an instance in the agent's status has no `{field}`"))
}

/// Stable states a perform can start from; a transitional one means a
/// recipe runs.
pub fn is_stable(state: &str) -> bool {
    !matches!(state, "DEPLOYING" | "STARTING" | "STOPPING" | "UNDEPLOYING")
}

/// The state a retired instance is brought back to: a `PROBLEM` is
/// deployed again (the redeploy retries it), `WAITING_FOR_ANCESTOR` is
/// what a start gives under a parent that is not started.
pub fn restore_target(state: &str) -> &str {
    match state {
        "PROBLEM" => "DEPLOYED_STOPPED",
        other => other,
    }
}

fn is_deployed(state: &str) -> bool {
    state != "NOT_DEPLOYED"
}

fn depth(path: &str) -> usize {
    path.matches('/').count()
}

fn is_under(path: &str, root: &str) -> bool {
    path == root || path.starts_with(&format!("{root}/"))
}

/// Where a perform starts from and where it goes.
pub struct Target<'a> {
    pub version: &'a str,
    /// The state schema the target version writes.
    pub schema: u32,
    /// The instances to bring back: as they are now for a perform, as they
    /// were before it for a cancel.
    pub tree: &'a [Instance],
    /// A perform before stopped the agent (its target could not hold the
    /// lock): the way back starts it again.
    pub agent_stopped: bool,
}

/// The subtrees replaced in `tree`: every deployed instance (drastic), or
/// those of components to redeploy and everything under them (smart).
fn replaced<'a>(
    strategy: Strategy,
    components: &Components,
    tree: &'a [Instance],
) -> Vec<&'a Instance> {
    match strategy {
        Strategy::Keep => Vec::new(),
        Strategy::Drastic => tree.iter().filter(|i| is_deployed(&i.state)).collect(),
        Strategy::Smart => {
            let roots: Vec<&str> = tree
                .iter()
                .filter(|i| *components.of(&i.component) == Treatment::Redeploy)
                .map(|i| i.path.as_str())
                .collect();
            tree.iter()
                .filter(|i| is_deployed(&i.state) && roots.iter().any(|r| is_under(&i.path, r)))
                .collect()
        }
    }
}

fn parents_first(list: &mut [&Instance]) {
    list.sort_by(|a, b| {
        depth(&a.path)
            .cmp(&depth(&b.path))
            .then(a.path.cmp(&b.path))
    });
}

/// What a perform does with the instances `now` to reach `to`.
pub fn steps(
    strategy: Strategy,
    components: &Components,
    now: &[Instance],
    to: &Target,
) -> Result<Vec<PlanStep>> {
    if let Some(busy) = now.iter().find(|i| !is_stable(&i.state)) {
        return Err(refused(anyhow!(
            "{} is {}: a recipe runs; wait until the agent is idle and perform again",
            busy.path,
            busy.state
        )));
    }
    let keeps_lock = to.schema >= LOCK_SCHEMA;
    if (!keeps_lock || to.agent_stopped) && strategy != Strategy::Keep {
        return Err(refused(anyhow!(
            "{} writes state schema {}, which cannot hold the migration lock: \
             ferry keeps the application locked by stopping the agent (docs/MIGRATION.md), so it \
             cannot run lifecycle steps under it; perform with --strategy keep, or to a version \
             writing schema {LOCK_SCHEMA} or later",
            to.version,
            to.schema
        )));
    }
    let mut retire = replaced(strategy, components, now);
    parents_first(&mut retire);
    retire.reverse();
    let mut restore = replaced(strategy, components, to.tree);
    parents_first(&mut restore);

    let mut out: Vec<PlanStep> = retire
        .iter()
        .map(|i| PlanStep::Retire {
            path: i.path.clone(),
        })
        .collect();
    if !keeps_lock && !to.agent_stopped {
        out.push(PlanStep::StopAgent);
    }
    out.push(PlanStep::Move {
        version: to.version.into(),
    });
    if to.agent_stopped && keeps_lock {
        out.push(PlanStep::StartAgent);
    }
    out.push(PlanStep::Check);
    if strategy == Strategy::Smart {
        let mut scripted: Vec<&Instance> = to
            .tree
            .iter()
            .filter(|i| matches!(components.of(&i.component), Treatment::Script(_)))
            .filter(|i| !restore.iter().any(|r| r.path == i.path))
            .collect();
        parents_first(&mut scripted);
        for i in scripted {
            if let Treatment::Script(script) = components.of(&i.component) {
                out.push(PlanStep::Script {
                    path: i.path.clone(),
                    component: i.component.clone(),
                    script: script.clone(),
                });
            }
        }
    }
    out.extend(restore.iter().map(|i| PlanStep::Restore {
        path: i.path.clone(),
        state: restore_target(&i.state).into(),
    }));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{status_of, REFUSED};

    fn tree() -> Vec<Instance> {
        [
            ("/vm", "VM", "DEPLOYED_STARTED"),
            ("/vm/web", "Web", "DEPLOYED_STARTED"),
            ("/vm/db", "Db", "DEPLOYED_STOPPED"),
            ("/vm/db/backup", "Backup", "DEPLOYED_STARTED"),
            ("/vm/spare", "Web", "NOT_DEPLOYED"),
        ]
        .into_iter()
        .map(|(p, c, s)| Instance {
            path: p.into(),
            component: c.into(),
            state: s.into(),
        })
        .collect()
    }

    fn to<'a>(version: &'a str, schema: u32, tree: &'a [Instance]) -> Target<'a> {
        Target {
            version,
            schema,
            tree,
            agent_stopped: false,
        }
    }

    fn names(steps: &[PlanStep]) -> Vec<String> {
        steps.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keep_moves_the_package_and_touches_no_instance() {
        let s = steps(
            Strategy::Keep,
            &Components::default(),
            &tree(),
            &to("1.1.0", 4, &tree()),
        )
        .unwrap();
        assert_eq!(
            s,
            vec![
                PlanStep::Move {
                    version: "1.1.0".into()
                },
                PlanStep::Check
            ]
        );
    }

    #[test]
    fn drastic_retires_children_first_and_restores_parents_first_as_they_were() {
        let s = steps(
            Strategy::Drastic,
            &Components::default(),
            &tree(),
            &to("2.0.0", 4, &tree()),
        )
        .unwrap();
        assert_eq!(
            names(&s),
            [
                "stop and undeploy /vm/db/backup",
                "stop and undeploy /vm/web",
                "stop and undeploy /vm/db",
                "stop and undeploy /vm",
                "install the package of 2.0.0",
                "check the agent",
                "bring /vm back to DEPLOYED_STARTED",
                "bring /vm/db back to DEPLOYED_STOPPED",
                "bring /vm/web back to DEPLOYED_STARTED",
                "bring /vm/db/backup back to DEPLOYED_STARTED",
            ],
            "never-deployed /vm/spare is left alone"
        );
    }

    #[test]
    fn smart_keeps_redeploys_subtrees_and_scripts_from_the_table() {
        let table = Components::parse(
            "[components]\nVM = \"keep\"\nWeb = \"keep\"\nBackup = \"keep\"\n\
             Db = { script = \"/root/migrate-db\" }\n",
        )
        .unwrap();
        let s = steps(Strategy::Smart, &table, &tree(), &to("2.0.0", 4, &tree())).unwrap();
        assert_eq!(
            names(&s),
            [
                "install the package of 2.0.0",
                "check the agent",
                "run /root/migrate-db for /vm/db (Db) as the agent's user",
            ]
        );
        // Db unnamed: redeployed (as stateless), with the backup under it.
        let table = Components::parse("[components]\nVM = \"keep\"\nWeb = \"keep\"\n").unwrap();
        let s = steps(Strategy::Smart, &table, &tree(), &to("2.0.0", 4, &tree())).unwrap();
        assert_eq!(
            names(&s),
            [
                "stop and undeploy /vm/db/backup",
                "stop and undeploy /vm/db",
                "install the package of 2.0.0",
                "check the agent",
                "bring /vm/db back to DEPLOYED_STOPPED",
                "bring /vm/db/backup back to DEPLOYED_STARTED",
            ]
        );
    }

    #[test]
    fn below_the_lock_schema_only_keep_is_planned_and_the_agent_is_stopped() {
        let s = steps(
            Strategy::Keep,
            &Components::default(),
            &tree(),
            &to("0.9.0", 3, &tree()),
        )
        .unwrap();
        assert_eq!(
            names(&s),
            [
                "release the agent's lock into ferry's journal; stop and mask the agent and its socket",
                "install the package of 0.9.0",
                "check the agent",
            ]
        );
        let e = steps(
            Strategy::Drastic,
            &Components::default(),
            &tree(),
            &to("0.9.0", 3, &tree()),
        )
        .unwrap_err();
        assert_eq!(status_of(&e), REFUSED);
        assert!(format!("{e:#}").contains("--strategy keep"), "{e:#}");
    }

    #[test]
    fn the_way_back_retires_what_is_deployed_now_and_restores_the_tree_before() {
        let before = tree();
        let mut now = tree();
        now[1].state = "NOT_DEPLOYED".into(); // a perform stopped after retiring /vm/web
        let back = Target {
            version: "1.0.0",
            schema: 4,
            tree: &before,
            agent_stopped: false,
        };
        let s = steps(Strategy::Drastic, &Components::default(), &now, &back).unwrap();
        assert_eq!(
            names(&s)
                .iter()
                .filter(|n| n.contains("/vm/web"))
                .collect::<Vec<_>>(),
            ["bring /vm/web back to DEPLOYED_STARTED"],
            "not retired again, brought back as it was"
        );
        // Back from a target below schema 4: the agent is started again.
        let back = Target {
            agent_stopped: true,
            ..back
        };
        let s = steps(Strategy::Keep, &Components::default(), &[], &back).unwrap();
        assert_eq!(
            names(&s),
            [
                "install the package of 1.0.0",
                "unmask and start the agent",
                "check the agent"
            ]
        );
    }

    #[test]
    fn a_running_recipe_refuses_the_plan() {
        let mut t = tree();
        t[1].state = "STOPPING".into();
        let e = steps(
            Strategy::Keep,
            &Components::default(),
            &t,
            &to("1.1.0", 4, &t),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("/vm/web is STOPPING"), "{e:#}");
    }

    #[test]
    fn a_bad_table_names_the_field_and_the_fix() {
        for (text, says) in [
            ("[components]\nDb = \"drop\"\n", "components.Db is \"drop\""),
            (
                "[components]\nDb = { script = \"migrate\" }\n",
                "components.Db.script must be an absolute path",
            ),
            ("[component]\n", "unknown field `component`"),
        ] {
            let e = format!("{:#}", Components::parse(text).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
