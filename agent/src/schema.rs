//! The stored layouts of the state, one per schema version. Once released, a
//! layout never changes: a new layout is a new schema with a migration step in
//! `migrate`. docs/AGENT.md describes each layout field by field.
use crate::model::{
    name_of, parent_of, Instance, Instruction, Lifecycle, MigrationLock, Model, Problem, Queued,
};
use serde::{Deserialize, Serialize};

/// Schema 1: a flat list of instances and a queue of bare instructions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V1 {
    pub instances: Vec<InstanceV1>,
    pub queue: Vec<Instruction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceV1 {
    pub path: String,
    pub component: String,
    pub state: Lifecycle,
}

/// Schema 2: schema 1 plus problem details per instance and instruction ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V2 {
    pub instances: Vec<InstanceV2>,
    pub queue: Vec<Queued>,
    pub next_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceV2 {
    pub path: String,
    pub component: String,
    pub state: Lifecycle,
    pub problem: Option<Problem>,
}

/// Schema 3: the instances as a tree of named nodes (paths are implied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V3 {
    pub roots: Vec<NodeV3>,
    pub queue: Vec<Queued>,
    pub next_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeV3 {
    pub name: String,
    pub component: String,
    pub state: Lifecycle,
    pub problem: Option<Problem>,
    pub children: Vec<NodeV3>,
}

impl V3 {
    /// The tree, queue and counter of `model`; its migration lock, which
    /// schema 3 cannot hold, is for the caller to refuse (`V4::from_model`
    /// keeps it).
    pub fn from_model(model: &Model) -> V3 {
        fn node(model: &Model, path: &str, inst: &Instance) -> NodeV3 {
            NodeV3 {
                name: name_of(path).to_string(),
                component: inst.component.clone(),
                state: inst.state,
                problem: inst.problem.clone(),
                children: model
                    .children_of(path)
                    .map(|(p, i)| node(model, p, i))
                    .collect(),
            }
        }
        V3 {
            roots: model
                .instances
                .iter()
                .filter(|(p, _)| parent_of(p).is_none())
                .map(|(p, i)| node(model, p, i))
                .collect(),
            queue: model.queue.iter().cloned().collect(),
            next_id: model.next_id,
        }
    }

    pub fn into_model(self) -> Result<Model, String> {
        fn walk(model: &mut Model, parent: &str, nodes: Vec<NodeV3>) -> Result<(), String> {
            for n in nodes {
                let path = format!("{parent}/{}", n.name);
                let inst = Instance {
                    component: n.component,
                    state: n.state,
                    problem: n.problem,
                };
                if model.instances.insert(path.clone(), inst).is_some() {
                    return Err(format!("instance {path} appears twice"));
                }
                walk(model, &path, n.children)?;
            }
            Ok(())
        }
        let mut model = Model {
            next_id: self.next_id,
            queue: self.queue.into(),
            ..Default::default()
        };
        walk(&mut model, "", self.roots)?;
        model.validate()?;
        Ok(model)
    }
}

/// Schema 4: schema 3 plus the migration lock, null when none is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4 {
    pub roots: Vec<NodeV3>,
    pub queue: Vec<Queued>,
    pub next_id: u64,
    pub lock: Option<MigrationLock>,
}

impl V4 {
    pub fn from_model(model: &Model) -> V4 {
        let V3 {
            roots,
            queue,
            next_id,
        } = V3::from_model(model);
        V4 {
            roots,
            queue,
            next_id,
            lock: model.lock.clone(),
        }
    }

    pub fn into_model(self) -> Result<Model, String> {
        let mut model = V3 {
            roots: self.roots,
            queue: self.queue,
            next_id: self.next_id,
        }
        .into_model()?;
        model.lock = self.lock;
        model.validate()?;
        Ok(model)
    }
}
