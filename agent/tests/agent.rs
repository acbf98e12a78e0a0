//! End-to-end tests of the real agent binary: recipes, persistence across
//! restarts and kills, busy/quiesce, the control protocol's robustness, and
//! the exit statuses the packaging relies on.
mod common;

use common::{describe, gate_script, instance, request_on, Env};
use serde_json::{json, Value};
use std::fs;
use std::os::unix::net::UnixStream;

fn apply(env: &Env, args: &[&str]) -> Value {
    let mut full = vec!["ctl", "apply", "--wait", "30"];
    full.extend_from_slice(args);
    env.json(&full)
}

fn alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

fn spawned_pid(env: &Env, name: &str) -> i32 {
    fs::read_to_string(env.state.join("spawn").join(format!("{name}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Recipes that leave evidence: deploy writes the instance variables to a
/// file, start launches a long-running process through `spawn`, stop stops it.
fn evidence_recipes(env: &Env, component: &str) {
    env.recipe(
        component,
        "deploy",
        "echo \"$ROBOCONF_APPLICATION $ROBOCONF_INSTANCE_PATH $ROBOCONF_INSTANCE_NAME $ROBOCONF_COMPONENT $ROBOCONF_PARENT_PATH\" > deployed\necho deployed \"$ROBOCONF_INSTANCE_PATH\"",
    );
    env.recipe(
        component,
        "start",
        "\"$ROBOCONF_AGENT\" spawn start --name \"$ROBOCONF_INSTANCE_NAME\" -- sleep 600",
    );
    env.recipe(
        component,
        "stop",
        "\"$ROBOCONF_AGENT\" spawn stop --name \"$ROBOCONF_INSTANCE_NAME\"",
    );
    env.recipe(component, "undeploy", "rm -f deployed");
}

#[test]
fn deploy_start_restart_keeps_tree_states_queue_and_processes() {
    let mut env = Env::new("e2e");
    evidence_recipes(&env, "VM");
    evidence_recipes(&env, "App");
    let gate = env.root.join("gate");
    env.recipe("Slow", "start", &gate_script(&gate));
    let pid = env.start();

    apply(&env, &["add", "--name", "vm1", "--component", "VM"]);
    apply(
        &env,
        &[
            "add",
            "--name",
            "app",
            "--component",
            "App",
            "--parent",
            "/vm1",
        ],
    );
    apply(
        &env,
        &[
            "add",
            "--name",
            "slow",
            "--component",
            "Slow",
            "--parent",
            "/vm1",
        ],
    );
    for p in ["/vm1", "/vm1/app", "/vm1/slow"] {
        apply(&env, &["deploy", p]);
    }
    // A child asked to start before its parent waits for it, and starts with it.
    apply(&env, &["start", "/vm1/app"]);
    assert_eq!(
        instance(&env.status(), "/vm1/app")["state"],
        "WAITING_FOR_ANCESTOR"
    );
    apply(&env, &["start", "/vm1"]);
    let s = env.until("the app to start after its parent", |s| {
        instance(s, "/vm1/app")["state"] == "DEPLOYED_STARTED"
    });
    assert_eq!(instance(&s, "/vm1")["state"], "DEPLOYED_STARTED");
    assert_eq!(instance(&s, "/vm1/app")["parent"], "/vm1");
    assert_eq!(instance(&s, "/vm1/app")["component"], "App");
    assert_eq!(s["busy"], false);

    let deployed = fs::read_to_string(env.state.join("work/vm1/app/deployed")).unwrap();
    assert_eq!(deployed.trim(), "shop /vm1/app app App /vm1");
    let app_pid = spawned_pid(&env, "app");
    assert!(alive(app_pid));

    // The slow start holds a recipe running; an undeploy waits behind it.
    env.json(&["ctl", "apply", "start", "/vm1/slow"]);
    env.json(&["ctl", "apply", "stop", "/vm1/app"]);
    let before = env.until("the slow recipe to run", |s| {
        s["running"]["instance"] == "/vm1/slow"
    });
    assert_eq!(before["queue_length"], 2);
    assert_eq!(instance(&before, "/vm1/slow")["state"], "STARTING");

    // SIGKILL: nothing is persisted on the way out.
    env.kill(pid, libc::SIGKILL);
    let offline = env.json(&["state", "check", "--json"]);
    assert_eq!(offline["queue_length"], 2);
    assert_eq!(offline["instances"], 3);
    assert!(
        alive(app_pid),
        "the application process must survive the agent"
    );

    let pid = env.start();
    // The interrupted start runs again (the worker may need a moment to pick it up).
    let after = env.until("the interrupted recipe to run again", |s| {
        s["running"]["instance"] == "/vm1/slow"
    });
    assert_eq!(after["queue_length"], 2, "{after:#}");
    assert_eq!(after["queue"], before["queue"]);
    // Same tree, same states.
    assert_eq!(after["instances"], before["instances"]);

    fs::write(&gate, "").unwrap();
    let s = env.until("the queue to drain", |s| s["busy"] == false);
    assert_eq!(instance(&s, "/vm1/slow")["state"], "DEPLOYED_STARTED");
    assert_eq!(instance(&s, "/vm1/app")["state"], "DEPLOYED_STOPPED");
    assert!(!env.state.join("spawn/app.pid").exists());

    // An ordinary stop (SIGTERM) is recorded as such.
    assert!(env.kill(pid, libc::SIGTERM).success());
    let last: Value =
        serde_json::from_slice(&fs::read(env.state.join("last-stop.json")).unwrap()).unwrap();
    assert_eq!(last["kind"], "shutdown");
    env.start();
    assert_eq!(env.status()["previous_stop"]["kind"], "shutdown");
    assert_eq!(env.status()["instances"], s["instances"]);
}

#[test]
fn failing_recipe_puts_the_instance_in_problem_with_its_output() {
    let mut env = Env::new("problem");
    env.recipe(
        "Bad",
        "deploy",
        "echo first line\necho 'it broke' >&2\nexit 3",
    );
    env.start();
    apply(&env, &["add", "--name", "bad", "--component", "Bad"]);
    let out = env.cmd(&["ctl", "apply", "--wait", "30", "deploy", "/bad"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exit code 3"),
        "{}",
        describe(&out)
    );
    let bad = instance(&env.status(), "/bad").clone();
    assert_eq!(bad["state"], "PROBLEM");
    assert_eq!(bad["problem"]["exit_code"], 3);
    let lines = bad["problem"]["output"].as_array().unwrap();
    assert!(
        lines.contains(&json!("first line")) && lines.contains(&json!("it broke")),
        "{bad}"
    );
    // An instruction that makes no sense in the current state is rejected, not run.
    let out = env.cmd(&["ctl", "apply", "--wait", "30", "start", "/bad"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot start /bad: it is PROBLEM"),
        "{}",
        describe(&out)
    );
}

#[test]
fn busy_agent_quiesce_and_resume() {
    let mut env = Env::new("quiesce");
    let gate = env.root.join("gate");
    env.recipe("Slow", "deploy", &gate_script(&gate));
    let pid = env.start();
    apply(&env, &["add", "--name", "slow", "--component", "Slow"]);
    env.json(&["ctl", "apply", "deploy", "/slow"]);
    env.json(&[
        "ctl",
        "apply",
        "add",
        "--name",
        "later",
        "--component",
        "Slow",
    ]);
    let s = env.until("the slow recipe to run", |s| {
        s["running"]["recipe"] == "deploy"
    });
    assert_eq!(s["busy"], true);
    assert_eq!(s["idle"], false);
    assert_eq!(s["queue_length"], 2);
    assert_eq!(s["pid"], pid);

    // Too short: fails, naming instance, recipe and queue, and the agent resumes.
    let out = env.cmd(&["ctl", "quiesce", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "recipe `deploy` of instance /slow",
        "component Slow",
        "2 instruction(s) queued",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in {err}");
    }
    assert_eq!(env.status()["quiesced"], false);

    // Long enough: answers once the recipe has finished.
    let quiesce = env
        .command(&["ctl", "quiesce", "--timeout", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    env.until("the agent to be quiesced", |s| s["quiesced"] == true);
    assert_eq!(
        env.status()["running"]["recipe"],
        "deploy",
        "still running while quiesce waits"
    );
    fs::write(&gate, "").unwrap();
    let out = quiesce.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["idle"], true);
    // The queued add is kept, not run, while quiesced.
    let s = env.status();
    assert_eq!(instance(&s, "/slow")["state"], "DEPLOYED_STOPPED");
    assert_eq!(s["queue_length"], 1);
    assert_eq!(s["running"], Value::Null);
    env.json(&[
        "ctl",
        "apply",
        "add",
        "--name",
        "more",
        "--component",
        "Slow",
    ]);
    assert_eq!(env.status()["queue_length"], 2);

    env.json(&["ctl", "resume"]);
    let s = env.until("the queue to drain", |s| s["queue_length"] == 0);
    assert_eq!(instance(&s, "/later")["state"], "NOT_DEPLOYED");
    assert_eq!(instance(&s, "/more")["state"], "NOT_DEPLOYED");
}

#[test]
fn stop_for_upgrade_persists_and_does_not_announce_machine_down() {
    let mut env = Env::new("upgrade");
    let pid = env.start();
    apply(&env, &["add", "--name", "vm1", "--component", "VM"]);
    env.json(&["ctl", "quiesce", "--timeout", "5"]);
    env.json(&["ctl", "apply", "deploy", "/vm1"]);
    let answer = env.json(&["ctl", "stop-for-upgrade"]);
    assert_eq!(answer["stopping"], "stop-for-upgrade");
    assert!(env.wait(pid).success());
    let last: Value =
        serde_json::from_slice(&fs::read(env.state.join("last-stop.json")).unwrap()).unwrap();
    assert_eq!(last["kind"], "stop-for-upgrade");
    assert_eq!(last["queue_length"], 1);
    assert!(!env.socket().exists());
    let check = env.json(&["state", "check", "--json"]);
    assert_eq!(
        (check["instances"].clone(), check["queue_length"].clone()),
        (json!(1), json!(1))
    );

    // The new start runs what was queued during the upgrade.
    env.start();
    assert_eq!(env.status()["previous_stop"]["kind"], "stop-for-upgrade");
    env.until("the queued deploy to run", |s| {
        instance(s, "/vm1")["state"] == "DEPLOYED_STOPPED"
    });
}

#[test]
fn malformed_requests_change_nothing_and_the_agent_keeps_serving() {
    let mut env = Env::new("malformed");
    env.start();
    apply(&env, &["add", "--name", "vm1", "--component", "VM"]);
    let before = env.json(&["state", "check", "--json"]);
    let mut s = UnixStream::connect(env.socket()).unwrap();
    for (line, expect) in [
        ("this is not json", "malformed request"),
        ("[1,2]", "expected a JSON object"),
        (r#"{"cmd":"status"}"#, "missing \"protocol\""),
        (r#"{"protocol":3,"cmd":"status"}"#, "unsupported protocol 3"),
        (r#"{"protocol":1,"cmd":"explode"}"#, "unknown variant"),
        (
            r#"{"protocol":1,"cmd":"apply","instruction":{"action":"deploy"}}"#,
            "missing field `path`",
        ),
        (
            r#"{"protocol":1,"cmd":"apply","instruction":{"action":"add","path":"/vm1/../x","component":"C"}}"#,
            "invalid instance name",
        ),
        (
            r#"{"protocol":1,"cmd":"apply","instruction":{"action":"deploy","path":"/vm1","extra":1}}"#,
            "unknown field",
        ),
        (r#"{"protocol":1,"cmd":"quiesce"}"#, "timeout_secs"),
    ] {
        let answer = request_on(&mut s, line);
        assert_eq!(answer["ok"], false, "{line}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains(expect),
            "{line}: expected {expect:?} in {error:?}"
        );
    }
    // Same connection, still served; nothing was queued or written.
    let status = request_on(&mut s, r#"{"protocol":1,"cmd":"status"}"#);
    assert_eq!(status["ok"], true);
    assert_eq!(status["queue_length"], 0);
    assert_eq!(status["quiesced"], false);
    assert_eq!(
        env.json(&["state", "check", "--json"])["sha256"],
        before["sha256"]
    );
}

/// Writes a state file with a valid checksum but the given schema number.
fn forge_state(env: &Env, schema: u32, written_by: &str) {
    use sha2::{Digest, Sha256};
    let payload =
        b"{\"roots\": [], \"queue\": [], \"next_id\": 1, \"whatever\": \"the future holds\"}\n";
    let sha: String = Sha256::digest(payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let header = json!({"format": "roboconf-agent-state", "schema": schema, "written_by": written_by, "sha256": sha});
    fs::write(
        env.state.join("state.json"),
        [format!("{header}\n").as_bytes(), payload].concat(),
    )
    .unwrap();
}

#[test]
fn newer_schema_bad_checksum_and_upgrade_marker_give_their_exit_codes() {
    let mut env = Env::new("exitcodes");
    forge_state(&env, 5, "9.9.9");
    for args in [
        &["run"][..],
        &["state", "check"],
        &["state", "migrate", "--to", "4"],
    ] {
        let out = env.cmd(args);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("schema 5, written by roboconf-agent 9.9.9")
                && err.contains("knows schemas 1 to 4"),
            "{err}"
        );
    }

    fs::remove_file(env.state.join("state.json")).unwrap();
    let pid = env.start();
    apply(&env, &["add", "--name", "vm1", "--component", "VM"]);
    env.kill(pid, libc::SIGTERM);
    let path = env.state.join("state.json");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"vm1\"", "\"vm2\"");
    fs::write(&path, text).unwrap();
    for args in [&["run"][..], &["state", "check"]] {
        let out = env.cmd(args);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is corrupt: sha256 of the payload"),
            "{}",
            describe(&out)
        );
    }
    let out = env.cmd(&["state", "check", "--json"]);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (answer["ok"].clone(), answer["exit_code"].clone()),
        (json!(false), json!(78))
    );

    fs::write(env.state.join("upgrade-in-progress"), "1.0.0 -> 1.1.0").unwrap();
    let out = env.cmd(&["run"]);
    assert_eq!(out.status.code(), Some(75), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("an upgrade is changing the state") && err.contains("1.0.0 -> 1.1.0"),
        "{err}"
    );
}

#[test]
fn loose_credentials_and_missing_config_are_refused_clearly() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("config");
    fs::set_permissions(
        env.config.join("credentials"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = env.cmd(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be 0640 or tighter"),
        "{}",
        describe(&out)
    );
    fs::remove_file(env.config.join("agent.toml")).unwrap();
    let out = env.cmd(&["run"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read the agent configuration"),
        "{}",
        describe(&out)
    );
}

#[test]
fn migrate_is_atomic_checked_and_excluded_while_the_agent_runs() {
    let mut env = Env::new("migrate");
    let pid = env.start();
    apply(&env, &["add", "--name", "vm1", "--component", "VM"]);
    let out = env.cmd(&["state", "migrate", "--to", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("another roboconf-agent process (pid {pid})")),
        "{}",
        describe(&out)
    );
    env.kill(pid, libc::SIGTERM);

    for bad in ["0", "5"] {
        let out = env.cmd(&["state", "migrate", "--to", bad]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("knows schemas 1 to 4"),
            "{}",
            describe(&out)
        );
    }
    let original = env.json(&["state", "show"]);
    let migrate = |to: u32| {
        let out = env.cmd(&["state", "migrate", "--to", &to.to_string()]);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(env.json(&["state", "check", "--json"])["schema"], to);
    };
    migrate(2);
    migrate(4);
    assert_eq!(
        env.json(&["state", "show"]),
        original,
        "4 -> 2 -> 4 is lossless"
    );
    // Schema 1 has no instruction counter: coming back, next_id is derived
    // from the queue again (see docs/AGENT.md); the tree is unchanged.
    migrate(1);
    migrate(4);
    assert_eq!(
        env.json(&["state", "show"])["state"]["roots"],
        original["state"]["roots"]
    );
    assert!(fs::read_dir(&env.state).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}

#[test]
fn version_and_schema_report_the_build_settings() {
    let env = Env::new("schema");
    let out = env.cmd(&["--version"]);
    // FERRY_VERSION, when the tests are built with it, is what the binary reports.
    let version = option_env!("FERRY_VERSION")
        .filter(|v| !v.is_empty())
        .unwrap_or(env!("CARGO_PKG_VERSION"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("roboconf-agent {version}")
    );
    let s = env.json(&["schema", "--json"]);
    assert_eq!(
        (s["writes"].clone(), s["newest_known"].clone()),
        (json!(4), json!(4))
    );
    assert_eq!(s["steps"].as_array().unwrap().len(), 3);
}

/// The package's hook runs `state migrate` as the agent's user, never as
/// root (docs/SECURITY.md): root is refused on a directory the agent's
/// user owns, and the user's own run leaves files the agent can use.
#[test]
fn state_is_written_by_the_agents_user_never_by_root() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root, as CI and the package hooks have"
    );
    let mut env = Env::new("owner");
    let pid = env.start();
    apply(&env, &["add", "--name", "vm1", "--component", "VM"]);
    env.kill(pid, libc::SIGTERM);
    let (uid, gid) = (65534, 65534);
    for entry in fs::read_dir(&env.state).unwrap() {
        std::os::unix::fs::lchown(entry.unwrap().path(), Some(uid), Some(gid)).unwrap();
    }
    fs::remove_file(env.state.join("agent.lock")).unwrap();
    for dir in [&env.root, &env.config, &env.state] {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    }
    let before = fs::read(env.state.join("state.json")).unwrap();
    let out = env.cmd(&["state", "migrate", "--to", "2"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(describe(&out).contains("runuser"), "{}", describe(&out));
    assert_eq!(fs::read(env.state.join("state.json")).unwrap(), before);
    let mut as_user = env.command(&["state", "migrate", "--to", "2"]);
    as_user.uid(uid).gid(gid);
    let out = as_user.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    for name in ["state.json", "agent.lock"] {
        let meta = fs::metadata(env.state.join(name)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (uid, gid),
            "{name} must stay usable by the agent's user"
        );
    }
}
