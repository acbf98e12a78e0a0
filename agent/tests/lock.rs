//! The migration lock (issue #19): held durably in the state (schema 4), it
//! refuses lifecycle instructions that do not carry its id, holds what was
//! queued before it until it is released, survives restarts, keeps the
//! state from going down to a schema that cannot hold it, and is explained
//! to clients of the older control protocol.
mod common;

use common::{describe, instance, request_on, Env};
use serde_json::Value;
use std::fs;
use std::os::unix::net::UnixStream;

fn lock(env: &Env, id: &str, by: &str) -> Value {
    env.json(&[
        "ctl",
        "lock",
        "--id",
        id,
        "--application",
        "shop",
        "--by",
        by,
        "--reason",
        "move to the new DM",
    ])
}

/// Runs a `ctl` command that the agent must refuse; returns what it said.
/// Adds `/vm1`, then queues its deploy while the agent is quiesced, so
/// that the deploy is still queued when the lock is taken; its id.
fn deploy_queued_before_the_lock(env: &Env) -> u64 {
    env.json(&[
        "ctl",
        "apply",
        "--wait",
        "30",
        "add",
        "--name",
        "vm1",
        "--component",
        "VM",
    ]);
    env.json(&["ctl", "quiesce", "--timeout", "5"]);
    env.json(&["ctl", "apply", "deploy", "/vm1"])["id"]
        .as_u64()
        .unwrap()
}

fn refused(env: &Env, args: &[&str]) -> String {
    let out = env.cmd(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn queued_ids(status: &Value) -> Vec<u64> {
    status["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn the_lock_refuses_what_lacks_its_id_runs_its_steps_and_holds_what_was_queued() {
    let mut env = Env::new("lock");
    env.start();
    let before = deploy_queued_before_the_lock(&env);
    let taken = lock(&env, "mig-1", "alice");
    assert_eq!(
        (taken["taken"].clone(), taken["held"].clone()),
        (true.into(), 1.into())
    );
    env.json(&["ctl", "resume"]);

    // Every lifecycle instruction without the lock's id is refused, naming
    // the migration; nothing is queued. `status` is still answered.
    for args in [
        &["add", "--name", "vm2", "--component", "VM"][..],
        &["remove", "/vm1"],
        &["deploy", "/vm1"],
        &["start", "/vm1"],
        &["stop", "/vm1"],
        &["undeploy", "/vm1"],
    ] {
        let said = refused(&env, &[&["ctl", "apply"][..], args].concat());
        assert!(
            said.contains("migration lock `mig-1` of application shop (taken by alice")
                && said.contains("move to the new DM")
                && said.contains("nothing was queued"),
            "{args:?}: {said}"
        );
    }
    let said = refused(
        &env,
        &["ctl", "apply", "--lock-id", "mig-2", "deploy", "/vm1"],
    );
    assert!(said.contains("`mig-1`"), "{said}");
    let s = env.status();
    assert_eq!(s["lock"]["id"], "mig-1");
    assert_eq!(s["lock"]["by"], "alice");
    assert_eq!(s["lock"]["application"], "shop");
    assert_eq!(queued_ids(&s), vec![before], "refusals queue nothing");
    assert_eq!(s["held"], 1);

    // The migration's own steps run, though queued after the held deploy:
    // in queue order, the deploy would have run first.
    let step = env.json(&[
        "ctl",
        "apply",
        "--wait",
        "30",
        "--lock-id",
        "mig-1",
        "add",
        "--name",
        "vm2",
        "--component",
        "VM",
    ]);
    assert_eq!(step["done"], "added /vm2");
    env.json(&[
        "ctl",
        "apply",
        "--wait",
        "30",
        "--lock-id",
        "mig-1",
        "deploy",
        "/vm2",
    ]);
    let s = env.status();
    assert_eq!(instance(&s, "/vm2")["state"], "DEPLOYED_STOPPED");
    assert_eq!(instance(&s, "/vm1")["state"], "NOT_DEPLOYED", "held");
    assert_eq!(queued_ids(&s), vec![before]);
    assert_eq!(s["queue"][0]["lock_id"], Value::Null);

    // One lock at a time: the same one again is a no-op, another is refused,
    // and so is a lock for another application, naming both.
    assert_eq!(lock(&env, "mig-1", "alice")["taken"], false);
    let said = refused(
        &env,
        &[
            "ctl",
            "lock",
            "--id",
            "mig-2",
            "--application",
            "shop",
            "--by",
            "bob",
        ],
    );
    assert!(
        said.contains("migration lock `mig-1`") && said.contains("is held"),
        "{said}"
    );
    let said = refused(
        &env,
        &[
            "ctl",
            "lock",
            "--id",
            "mig-2",
            "--application",
            "bank",
            "--by",
            "bob",
        ],
    );
    assert!(
        said.contains("application bank") && said.contains("application shop"),
        "{said}"
    );
    let said = refused(&env, &["ctl", "unlock", "--id", "mig-2"]);
    assert!(
        said.contains("`mig-1`") && said.contains("not `mig-2`"),
        "{said}"
    );
    assert_eq!(env.status()["lock"]["id"], "mig-1");

    // Released: what was held runs; a step of the gone lock is refused.
    let released = env.json(&["ctl", "unlock", "--id", "mig-1"]);
    assert_eq!(released["released"]["id"], "mig-1");
    let s = env.until("the held deploy to run", |s| {
        instance(s, "/vm1")["state"] == "DEPLOYED_STOPPED" && s["queue_length"] == 0
    });
    assert_eq!(
        (s["lock"].clone(), s["held"].clone()),
        (Value::Null, 0.into())
    );
    let said = refused(
        &env,
        &["ctl", "apply", "--lock-id", "mig-1", "stop", "/vm1"],
    );
    assert!(said.contains("no migration lock is held"), "{said}");
}

#[test]
fn the_lock_survives_a_kill_and_a_forced_unlock_is_logged_with_who_forced_it() {
    let mut env = Env::new("lock-restart");
    let log = env.root.join("agent.log");
    let pid = env.start_logged(&log);
    let before = deploy_queued_before_the_lock(&env);
    lock(&env, "mig-9", "bob");
    env.kill(pid, libc::SIGKILL);

    // Restarted: the lock, and what it holds, are as they were.
    env.start_logged(&log);
    let s = env.status();
    assert_eq!(
        (
            s["lock"]["id"].clone(),
            s["lock"]["by"].clone(),
            s["held"].clone()
        ),
        ("mig-9".into(), "bob".into(), 1.into())
    );
    assert_eq!(s["quiesced"], false, "quiesce is not kept; the lock is");
    let said = refused(&env, &["ctl", "apply", "undeploy", "/vm1"]);
    assert!(said.contains("migration lock `mig-9`"), "{said}");
    env.json(&[
        "ctl",
        "apply",
        "--wait",
        "30",
        "--lock-id",
        "mig-9",
        "add",
        "--name",
        "vm2",
        "--component",
        "VM",
    ]);
    let s = env.status();
    assert_eq!(instance(&s, "/vm1")["state"], "NOT_DEPLOYED", "still held");
    assert_eq!(queued_ids(&s), vec![before]);

    // Its migration is gone: broken by hand, logged with who forced it.
    let broken = env.json(&["ctl", "unlock", "--force", "--by", "carol"]);
    assert_eq!(broken["released"]["id"], "mig-9");
    assert_eq!(broken["forced_by"], "carol");
    env.until("the held deploy to run", |s| {
        instance(s, "/vm1")["state"] == "DEPLOYED_STOPPED"
    });
    let logged = fs::read_to_string(&log).unwrap();
    assert!(
        logged.lines().any(|l| l
            .contains("migration lock `mig-9` of application shop (taken by bob")
            && l.contains("FORCED open by carol")),
        "{logged}"
    );
    assert_eq!(env.json(&["state", "show"])["state"]["lock"], Value::Null);
}

#[test]
fn the_state_does_not_go_down_to_schema_3_while_a_lock_is_held() {
    let mut env = Env::new("lock-down");
    let pid = env.start();
    env.json(&[
        "ctl",
        "apply",
        "--wait",
        "30",
        "add",
        "--name",
        "vm1",
        "--component",
        "VM",
    ]);
    lock(&env, "mig-3", "alice");
    // The dry run reads the state without its lock: it answers while the
    // agent runs (the upgrade hook asks it before anything changes).
    let said = refused(&env, &["state", "migrate", "--to", "3", "--dry-run"]);
    assert!(
        said.contains("migration lock `mig-3` of application shop")
            && said.contains("schema 3 cannot hold a migration lock"),
        "{said}"
    );
    env.kill(pid, libc::SIGTERM);
    let stored = fs::read(env.state.join("state.json")).unwrap();
    for args in [
        &["state", "migrate", "--to", "3"][..],
        &["state", "migrate", "--to", "2", "--dry-run"],
        &["state", "migrate", "--to", "1"],
    ] {
        let said = refused(&env, args);
        assert!(said.contains("migration lock `mig-3`"), "{args:?}: {said}");
    }
    assert_eq!(
        fs::read(env.state.join("state.json")).unwrap(),
        stored,
        "the state is untouched"
    );

    let pid = env.start();
    env.json(&["ctl", "unlock", "--id", "mig-3"]);
    env.kill(pid, libc::SIGTERM);
    let out = env.cmd(&["state", "migrate", "--to", "3", "--dry-run"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        env.json(&["state", "check", "--json"])["schema"],
        4,
        "a dry run writes nothing"
    );
    let out = env.cmd(&["state", "migrate", "--to", "3"]);
    assert!(out.status.success(), "{}", describe(&out));
    let shown = env.json(&["state", "show"]);
    assert_eq!(shown["schema"], 3);
    assert_eq!(shown["state"]["roots"][0]["name"], "vm1");
}

#[test]
fn a_client_of_the_older_protocol_is_told_about_the_lock_clearly() {
    let mut env = Env::new("lock-protocol");
    env.start();
    lock(&env, "mig-p", "alice");
    let mut s = UnixStream::connect(env.socket()).unwrap();
    for (line, expect) in [
        (
            r#"{"protocol":1,"cmd":"apply","instruction":{"action":"add","path":"/vm1","component":"VM"}}"#,
            &[
                "migration lock `mig-p` of application shop",
                "protocol 1, which cannot carry",
                "--lock-id",
            ][..],
        ),
        (
            r#"{"protocol":1,"cmd":"lock","id":"x","application":"shop","by":"old"}"#,
            &["`lock` is in control protocol 2; this request says protocol 1"],
        ),
        (
            r#"{"protocol":1,"cmd":"apply","instruction":{"action":"add","path":"/vm1","component":"VM"},"lock_id":"mig-p"}"#,
            &["`apply with a lock_id` is in control protocol 2"],
        ),
        (
            r#"{"protocol":1,"cmd":"unlock","id":"mig-p"}"#,
            &["`unlock` is in control protocol 2"],
        ),
        (
            r#"{"protocol":3,"cmd":"status"}"#,
            &["unsupported protocol 3: this agent speaks protocols 1 to 2"],
        ),
        (
            r#"{"protocol":2,"cmd":"unlock"}"#,
            &["unlock needs the lock's `id`"],
        ),
        (
            r#"{"protocol":2,"cmd":"unlock","force":true}"#,
            &["a forced unlock needs `by`"],
        ),
    ] {
        let answer = request_on(&mut s, line);
        assert_eq!(answer["ok"], false, "{line}: {answer}");
        let error = answer["error"].as_str().unwrap();
        for needle in expect {
            assert!(
                error.contains(needle),
                "{line}: {needle:?} not in {error:?}"
            );
        }
    }
    // What protocol 1 had still works: an upgrade's programs talk across it.
    let status = request_on(&mut s, r#"{"protocol":1,"cmd":"status"}"#);
    assert_eq!(
        (
            status["ok"].clone(),
            status["protocol"].clone(),
            status["lock"]["id"].clone()
        ),
        (true.into(), 2.into(), "mig-p".into())
    );
    for line in [
        r#"{"protocol":1,"cmd":"quiesce","timeout_secs":5}"#,
        r#"{"protocol":1,"cmd":"resume"}"#,
    ] {
        assert_eq!(request_on(&mut s, line)["ok"], true, "{line}");
    }
    let status = env.status();
    assert_eq!(
        (status["queue_length"].clone(), status["lock"]["id"].clone()),
        (0.into(), "mig-p".into()),
        "nothing was queued, locked or unlocked"
    );
}
