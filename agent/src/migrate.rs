//! The schema registry: every schema version ever written, and for each step
//! between neighbours an `up` and a `down` function. `down(up(x)) == x` holds for
//! every valid `x` (tested on generated data), so a down-migration during a
//! downgrade never loses what the older version could store.
use crate::build_info;
use crate::model::{Lifecycle, Model, Problem, Queued};
use crate::schema::{InstanceV1, InstanceV2, V1, V2, V3, V4};

/// The newest schema in the registry.
pub const NEWEST: u32 = 4;

/// The first schema that can hold a migration lock.
pub const LOCK_SCHEMA: u32 = 4;

/// The schema this build writes, and the newest it knows: FERRY_STATE_SCHEMA
/// at build time, else the newest in the registry. A build that writes N
/// treats any schema above N as unknown, as a real older release would.
pub const WRITES: u32 = match build_info::REQUESTED_SCHEMA {
    Some(n) => n,
    None => NEWEST,
};

const _: () = assert!(
    WRITES >= 1 && WRITES <= NEWEST,
    "FERRY_STATE_SCHEMA must name a schema in the registry (1 to 4)"
);

/// What each step does, for `roboconf-agent schema` and the docs.
pub const STEPS: [(u32, &str); 3] = [
    (
        2,
        "1->2: every instance gains `problem` (null, or {exit_code: null, output: []} when its state is \
         PROBLEM); every queued instruction gains `id` (1, 2, ... in queue order) and the state gains \
         `next_id` (queue length + 1). Down drops these fields.",
    ),
    (
        3,
        "2->3: the flat `instances` list (sorted by path) becomes the tree `roots`: nodes with `name` \
         and `children` (sorted by name) instead of `path`. Down flattens the tree back into the list \
         sorted by path.",
    ),
    (
        4,
        "3->4: the state gains `lock`, the migration lock (null, or {id, application, since, by, reason, \
         steps}). Down drops it when it is null, and is refused while a lock is held.",
    ),
];

/// A state payload in one of the known layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    V1(V1),
    V2(V2),
    V3(V3),
    V4(V4),
}

impl Snapshot {
    pub fn schema(&self) -> u32 {
        match self {
            Snapshot::V1(_) => 1,
            Snapshot::V2(_) => 2,
            Snapshot::V3(_) => 3,
            Snapshot::V4(_) => 4,
        }
    }

    /// Parses a payload stored under `schema`; the caller has already refused
    /// schemas this build does not know.
    pub fn parse(schema: u32, payload: &[u8]) -> Result<Snapshot, String> {
        let parsed = match schema {
            1 => serde_json::from_slice(payload).map(Snapshot::V1),
            2 => serde_json::from_slice(payload).map(Snapshot::V2),
            3 => serde_json::from_slice(payload).map(Snapshot::V3),
            4 => serde_json::from_slice(payload).map(Snapshot::V4),
            other => return Err(format!("schema {other} is not in the registry")),
        };
        parsed.map_err(|e| format!("payload does not match schema {schema}: {e}"))
    }

    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = match self {
            Snapshot::V1(s) => serde_json::to_vec_pretty(s),
            Snapshot::V2(s) => serde_json::to_vec_pretty(s),
            Snapshot::V3(s) => serde_json::to_vec_pretty(s),
            Snapshot::V4(s) => serde_json::to_vec_pretty(s),
        }
        .expect("state serializes to JSON");
        out.push(b'\n');
        out
    }

    pub fn up(self) -> Result<Snapshot, String> {
        match self {
            Snapshot::V1(s) => Ok(Snapshot::V2(up_1_to_2(s))),
            Snapshot::V2(s) => up_2_to_3(s).map(Snapshot::V3),
            Snapshot::V3(s) => Ok(Snapshot::V4(up_3_to_4(s))),
            Snapshot::V4(_) => {
                Err("schema 4 is the newest; there is nothing to migrate up to".into())
            }
        }
    }

    pub fn down(self) -> Result<Snapshot, String> {
        match self {
            Snapshot::V1(_) => {
                Err("schema 1 is the oldest; there is nothing to migrate down to".into())
            }
            Snapshot::V2(s) => Ok(Snapshot::V1(down_2_to_1(s))),
            Snapshot::V3(s) => down_3_to_2(s).map(Snapshot::V2),
            Snapshot::V4(s) => down_4_to_3(s).map(Snapshot::V3),
        }
    }

    pub fn migrate_to(mut self, to: u32) -> Result<Snapshot, String> {
        if !(1..=NEWEST).contains(&to) {
            return Err(format!(
                "schema {to} is not in the registry (1 to {NEWEST})"
            ));
        }
        while self.schema() < to {
            let from = self.schema();
            self = self
                .up()
                .map_err(|e| format!("migrating {from} -> {}: {e}", from + 1))?;
        }
        while self.schema() > to {
            let from = self.schema();
            self = self
                .down()
                .map_err(|e| format!("migrating {from} -> {}: {e}", from - 1))?;
        }
        Ok(self)
    }

    pub fn from_model(model: &Model, schema: u32) -> Result<Snapshot, String> {
        Snapshot::V4(V4::from_model(model)).migrate_to(schema)
    }

    pub fn into_model(self) -> Result<Model, String> {
        match self.migrate_to(NEWEST)? {
            Snapshot::V4(s) => s.into_model(),
            _ => unreachable!("migrate_to(NEWEST) yields the newest layout"),
        }
    }
}

fn up_1_to_2(s: V1) -> V2 {
    let queue: Vec<Queued> = s
        .queue
        .into_iter()
        .zip(1..)
        .map(|(instruction, id)| Queued { id, instruction })
        .collect();
    V2 {
        next_id: queue.len() as u64 + 1,
        queue,
        instances: s
            .instances
            .into_iter()
            .map(|i| InstanceV2 {
                // Schema 1 knew that an instance was in PROBLEM but not why.
                problem: (i.state == Lifecycle::Problem).then(|| Problem {
                    exit_code: None,
                    output: vec![],
                }),
                path: i.path,
                component: i.component,
                state: i.state,
            })
            .collect(),
    }
}

fn down_2_to_1(s: V2) -> V1 {
    V1 {
        instances: s
            .instances
            .into_iter()
            .map(|i| InstanceV1 {
                path: i.path,
                component: i.component,
                state: i.state,
            })
            .collect(),
        queue: s.queue.into_iter().map(|q| q.instruction).collect(),
    }
}

fn up_2_to_3(s: V2) -> Result<V3, String> {
    // Schema 2 stores instances in path order; holding it to that makes the
    // step exactly reversible.
    if let Some(w) = s.instances.windows(2).find(|w| w[0].path >= w[1].path) {
        return Err(format!(
            "schema 2 instances are not in strict path order at {} / {}",
            w[0].path, w[1].path
        ));
    }
    let mut model = Model {
        next_id: s.next_id,
        queue: s.queue.into(),
        ..Default::default()
    };
    for i in s.instances {
        let inst = crate::model::Instance {
            component: i.component,
            state: i.state,
            problem: i.problem,
        };
        model.instances.insert(i.path, inst);
    }
    model.validate()?;
    Ok(V3::from_model(&model))
}

fn down_3_to_2(s: V3) -> Result<V2, String> {
    let model = s.into_model()?;
    Ok(V2 {
        instances: model
            .instances
            .into_iter()
            .map(|(path, i)| InstanceV2 {
                path,
                component: i.component,
                state: i.state,
                problem: i.problem,
            })
            .collect(),
        queue: model.queue.into(),
        next_id: model.next_id,
    })
}

fn up_3_to_4(s: V3) -> V4 {
    V4 {
        roots: s.roots,
        queue: s.queue,
        next_id: s.next_id,
        lock: None,
    }
}

/// Schema 3 cannot hold a migration lock: going down while one is held
/// would drop it, and with it what keeps the migration's instance tree from
/// being changed under it. Refused, naming the lock.
fn down_4_to_3(s: V4) -> Result<V3, String> {
    if let Some(lock) = &s.lock {
        return Err(format!(
            "the state holds the {}, and schema 3 cannot hold a migration lock: complete or cancel the \
             migration first (`roboconf-agent ctl unlock --id {}`), or break the lock if it is stale \
             (`roboconf-agent ctl unlock --force --by NAME`)",
            lock.describe(),
            lock.id
        ));
    }
    Ok(V3 {
        roots: s.roots,
        queue: s.queue,
        next_id: s.next_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Instruction;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn lifecycle() -> impl Strategy<Value = Lifecycle> {
        use Lifecycle::*;
        proptest::sample::select(vec![
            NotDeployed,
            DeployedStopped,
            DeployedStarted,
            Unresolved,
            WaitingForAncestor,
            Deploying,
            Starting,
            Stopping,
            Undeploying,
            Problem,
        ])
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9._-]{0,6}"
    }

    /// Valid instance paths: each new path hangs under an earlier one or is a root.
    fn paths() -> impl Strategy<Value = BTreeSet<String>> {
        proptest::collection::vec((any::<prop::sample::Index>(), name(), any::<bool>()), 0..24)
            .prop_map(|picks| {
                let mut paths: Vec<String> = Vec::new();
                for (idx, n, root) in picks {
                    let p = if root || paths.is_empty() {
                        format!("/{n}")
                    } else {
                        format!("{}/{n}", idx.get(&paths))
                    };
                    if !paths.contains(&p) {
                        paths.push(p);
                    }
                }
                paths.into_iter().collect()
            })
    }

    fn instruction() -> impl Strategy<Value = Instruction> {
        (name(), name(), 0..6u8).prop_map(|(a, b, k)| {
            let path = format!("/{a}/{b}");
            match k {
                0 => Instruction::Add { path, component: b },
                1 => Instruction::Remove { path },
                2 => Instruction::Deploy { path },
                3 => Instruction::Start { path },
                4 => Instruction::Stop { path },
                _ => Instruction::Undeploy { path },
            }
        })
    }

    fn v1() -> impl Strategy<Value = V1> {
        (
            paths(),
            proptest::collection::vec((name(), lifecycle()), 24),
            proptest::collection::vec(instruction(), 0..8),
        )
            .prop_map(|(paths, attrs, queue)| V1 {
                instances: paths
                    .into_iter()
                    .zip(attrs)
                    .map(|(path, (component, state))| InstanceV1 {
                        path,
                        component,
                        state,
                    })
                    .collect(),
                queue,
            })
    }

    fn problem() -> impl Strategy<Value = Option<Problem>> {
        proptest::option::of(
            (
                proptest::option::of(any::<i32>()),
                proptest::collection::vec(".{0,12}", 0..3),
            )
                .prop_map(|(exit_code, output)| Problem { exit_code, output }),
        )
    }

    fn v2() -> impl Strategy<Value = V2> {
        (
            paths(),
            proptest::collection::vec((name(), lifecycle(), problem()), 24),
            proptest::collection::vec(instruction(), 0..8),
            0..1000u64,
        )
            .prop_map(|(paths, attrs, queue, gap)| {
                let queue: Vec<Queued> = queue
                    .into_iter()
                    .zip((gap + 1)..)
                    .map(|(instruction, id)| Queued { id, instruction })
                    .collect();
                V2 {
                    next_id: gap + queue.len() as u64 + 1,
                    queue,
                    instances: paths
                        .into_iter()
                        .zip(attrs)
                        .map(|(path, (component, state, problem))| InstanceV2 {
                            path,
                            component,
                            state,
                            problem,
                        })
                        .collect(),
                }
            })
    }

    proptest! {
        #[test]
        fn step_1_2_round_trips(s in v1()) {
            let up = Snapshot::V1(s.clone()).up().unwrap();
            prop_assert_eq!(up.clone().down().unwrap(), Snapshot::V1(s));
            // What was stored must survive a write and a read.
            prop_assert_eq!(Snapshot::parse(2, &up.to_payload()).unwrap(), up);
        }

        #[test]
        fn step_2_3_round_trips(s in v2()) {
            let up = Snapshot::V2(s.clone()).up().unwrap();
            prop_assert_eq!(up.clone().down().unwrap(), Snapshot::V2(s));
            prop_assert_eq!(Snapshot::parse(3, &up.to_payload()).unwrap(), up);
        }

        #[test]
        fn step_3_4_round_trips(s in v2()) {
            let Snapshot::V3(v3) = Snapshot::V2(s).up().unwrap() else { panic!("not v3") };
            let up = Snapshot::V3(v3.clone()).up().unwrap();
            prop_assert_eq!(up.clone().down().unwrap(), Snapshot::V3(v3));
            prop_assert_eq!(Snapshot::parse(4, &up.to_payload()).unwrap(), up);
        }

        #[test]
        fn whole_chain_round_trips_through_the_model(s in v1()) {
            let model = Snapshot::V1(s.clone()).into_model().unwrap();
            prop_assert_eq!(Snapshot::from_model(&model, 1).unwrap(), Snapshot::V1(s));
        }
    }

    #[test]
    fn step_1_2_derives_problem_and_ids() {
        let s = V1 {
            instances: vec![
                InstanceV1 {
                    path: "/vm".into(),
                    component: "VM".into(),
                    state: Lifecycle::DeployedStarted,
                },
                InstanceV1 {
                    path: "/vm/app".into(),
                    component: "App".into(),
                    state: Lifecycle::Problem,
                },
            ],
            queue: vec![
                Instruction::Stop {
                    path: "/vm/app".into(),
                },
                Instruction::Remove {
                    path: "/vm/app".into(),
                },
            ],
        };
        let Snapshot::V2(v2) = Snapshot::V1(s).up().unwrap() else {
            panic!("not v2")
        };
        assert_eq!(v2.instances[0].problem, None);
        assert_eq!(
            v2.instances[1].problem,
            Some(Problem {
                exit_code: None,
                output: vec![]
            })
        );
        assert_eq!(
            v2.queue.iter().map(|q| q.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(v2.next_id, 3);
    }

    #[test]
    fn step_2_3_refuses_orphans_and_disorder() {
        let inst = |path: &str| InstanceV2 {
            path: path.into(),
            component: "C".into(),
            state: Lifecycle::NotDeployed,
            problem: None,
        };
        let orphan = V2 {
            instances: vec![inst("/a/b")],
            queue: vec![],
            next_id: 1,
        };
        assert!(Snapshot::V2(orphan).up().unwrap_err().contains("no parent"));
        let disorder = V2 {
            instances: vec![inst("/b"), inst("/a")],
            queue: vec![],
            next_id: 1,
        };
        assert!(Snapshot::V2(disorder)
            .up()
            .unwrap_err()
            .contains("path order"));
    }

    #[test]
    fn step_4_3_is_refused_while_a_migration_lock_is_held() {
        let mut model = Model::new();
        let queued = model.enqueue(Instruction::Deploy { path: "/vm".into() });
        model
            .take_lock(crate::model::MigrationLock {
                id: "mig-7".into(),
                application: "shop".into(),
                since: 1,
                by: "alice".into(),
                reason: "new DM".into(),
                steps: [queued].into(),
            })
            .unwrap();
        let locked = Snapshot::from_model(&model, NEWEST).unwrap();
        let back = Snapshot::parse(4, &locked.to_payload()).unwrap();
        assert_eq!(
            back.clone().into_model().unwrap(),
            model,
            "the lock is stored"
        );
        let err = back.migrate_to(3).unwrap_err();
        assert!(
            err.contains("migrating 4 -> 3")
                && err.contains("migration lock `mig-7` of application shop")
                && err.contains("alice"),
            "{err}"
        );
        assert!(Snapshot::from_model(&model, 3).is_err());
        model.release_lock(Some("mig-7")).unwrap();
        let Snapshot::V3(v3) = Snapshot::from_model(&model, 3).unwrap() else {
            panic!("not v3")
        };
        assert_eq!(v3.queue.len(), 1, "the queue stays, without the lock");
    }

    #[test]
    fn out_of_registry_targets_are_refused() {
        let s = Snapshot::V1(V1 {
            instances: vec![],
            queue: vec![],
        });
        assert!(s.clone().migrate_to(0).is_err());
        assert!(s.migrate_to(NEWEST + 1).is_err());
    }
}
