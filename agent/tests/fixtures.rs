//! State written by earlier schemas (fixtures made by the real code, see
//! fixtures/regenerate.sh) loads, migrates to exactly what docs/AGENT.md
//! says, and migrates back to the very same payload.
mod common;

use common::{describe, instance, Env};
use serde_json::{json, Value};
use std::fs;

const SCHEMA1: &str = include_str!("fixtures/state-schema1.json");
const SCHEMA2: &str = include_str!("fixtures/state-schema2.json");

fn payload(file: &str) -> &str {
    file.split_once('\n').unwrap().1
}

fn env_with(fixture: &str) -> Env {
    let env = Env::new("fixture");
    fs::write(env.state.join("state.json"), fixture).unwrap();
    env
}

fn node(name: &str, component: &str, state: &str, problem: Value, children: Vec<Value>) -> Value {
    json!({"name": name, "component": component, "state": state, "problem": problem, "children": children})
}

/// The schema 3 tree both fixtures become; they differ only in what schema 1
/// cannot hold (problem details, instruction ids).
fn expected_v3(db_problem: Value, ids: [u64; 2], next_id: u64) -> Value {
    json!({
        "roots": [node("vm1", "VM", "DEPLOYED_STARTED", Value::Null, vec![
            node("app", "App", "DEPLOYED_STOPPED", Value::Null, vec![]),
            node("cache", "Cache", "NOT_DEPLOYED", Value::Null, vec![]),
            node("db", "Db", "PROBLEM", db_problem, vec![]),
        ])],
        "queue": [
            {"id": ids[0], "action": "deploy", "path": "/vm1/cache"},
            {"id": ids[1], "action": "start", "path": "/vm1/app"},
        ],
        "next_id": next_id,
    })
}

#[test]
fn earlier_schemas_load_and_migrate_to_the_documented_data() {
    for (fixture, schema, expected) in [
        (
            SCHEMA1,
            1,
            expected_v3(json!({"exit_code": null, "output": []}), [1, 2], 3),
        ),
        (
            SCHEMA2,
            2,
            expected_v3(
                json!({"exit_code": 4, "output": ["disk full"]}),
                [9, 10],
                11,
            ),
        ),
    ] {
        let env = env_with(fixture);
        let check = env.json(&["state", "check", "--json"]);
        assert_eq!(
            (check["schema"].clone(), check["written_by"].clone()),
            (json!(schema), json!("0.1.0"))
        );
        assert_eq!(
            (check["instances"].clone(), check["queue_length"].clone()),
            (json!(4), json!(2))
        );

        assert!(env.cmd(&["state", "migrate", "--to", "3"]).status.success());
        let shown = env.json(&["state", "show"]);
        assert_eq!(shown["schema"], 3);
        assert_eq!(
            shown["state"], expected,
            "schema {schema} fixture migrated to 3"
        );

        // And back down: the very payload the older schema wrote.
        assert!(env
            .cmd(&["state", "migrate", "--to", &schema.to_string()])
            .status
            .success());
        let back = fs::read_to_string(env.state.join("state.json")).unwrap();
        assert_eq!(payload(&back), payload(fixture));
    }
}

#[test]
fn the_agent_runs_on_older_state_and_resumes_its_queue() {
    let mut env = env_with(SCHEMA1);
    env.start();
    let s = env.until("the fixture's queue to drain", |s| {
        s["queue_length"] == 0 && s["busy"] == false
    });
    assert_eq!(instance(&s, "/vm1/cache")["state"], "DEPLOYED_STOPPED");
    assert_eq!(instance(&s, "/vm1/app")["state"], "DEPLOYED_STARTED");
    assert_eq!(instance(&s, "/vm1/db")["state"], "PROBLEM");
    assert_eq!(
        env.json(&["state", "check", "--json"])["schema"],
        4,
        "the agent writes its own schema"
    );
}

/// With `migrate_on_start = false` the agent leaves migration to the
/// package's upgrade hook: on an older schema it refuses to start (78),
/// naming the way out, and leaves the file as it was.
#[test]
fn the_agent_refuses_older_state_when_told_not_to_migrate_it() {
    let env = env_with(SCHEMA2);
    let config = env.config.join("agent.toml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("{text}migrate_on_start = false\n")).unwrap();
    let out = env.cmd(&["run"]);
    assert_eq!(out.status.code(), Some(78), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("has schema 2") && said.contains("state migrate --to 4"),
        "{said}"
    );
    assert_eq!(
        fs::read_to_string(env.state.join("state.json")).unwrap(),
        SCHEMA2
    );
    // Once migrated (as the hook does), it starts.
    assert!(env.cmd(&["state", "migrate", "--to", "4"]).status.success());
    let mut env = env;
    let pid = env.start();
    assert_eq!(env.status()["pid"], pid);
}
