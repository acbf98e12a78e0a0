//! End to end on booted lab hosts: `ferry migration perform` and `cancel`
//! after it (issue #19, docs/MIGRATION.md), with apt and with dnf (the RPM
//! host is a Debian root with Debian's rpm and dnf). One host per package
//! manager goes through, in order:
//!
//! 1. keep, 1.0.0 → 1.1.0: refused with no terminal and no --yes (nothing
//!    changed); the deployed processes keep their PIDs; the lock and the
//!    hold hold; `cancel` moves back to 1.0.0 and releases.
//! 2. drastic, 1.0.0 → 1.1.0, uninterrupted: the same tree after, the
//!    processes restarted, the recipes run children first then parents
//!    first (read from the recipes' own log); `cancel` goes back the same
//!    way.
//! 3. drastic again, with ferry SIGKILLed in each journalled step and run
//!    again: it ends in the same state, with the same recipes run in the
//!    same order, as the uninterrupted run; `complete`.
//! 4. smart, 1.1.0 → 1.0.0 (backward): one component kept (same PID), one
//!    redeployed (new PID), one migrated by a script that changes a file in
//!    its work directory, run as the agent's user with a recipe's
//!    environment; a `cancel` while it runs is refused, naming the step.
//! 5. keep, 1.0.0 → 0.9.0, whose state schema (3) cannot hold the lock: the
//!    agent is stopped and masked, lifecycle changes are refused, the
//!    deployed processes run on; `complete` starts 0.9.0 and takes work.
//!
//! Root is required.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::agent::{agent, sorted_tree, status, wait_answering, AGENT, STATE};
use support::lab::{Host, HostKind};
use support::probe::{self, Variant};
use support::repo::{AptRepo, RpmRepo};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const APPLICATION: &str = "my-application";
const JOURNAL: &str = "/var/lib/ferry/roboconf-agent/migration.json";
const RECIPES_LOG: &str = "/var/lib/roboconf-agent/recipes.log";
/// Where the smart migration's script lives: root's, readable by all.
const SCRIPT: &str = "/usr/local/lib/migrate-db";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every recipe logs its step and instance, then takes a second (so that a
/// kill lands inside it); App, Db and Cache run a process each (`sleep
/// 8640N`, told apart by N); Db's deploy writes `data` in its work directory.
fn deploy_logging_tree(host: &Host) {
    let mut script = format!("mkdir -p {STATE}/recipes\n");
    for (component, seconds) in [("VM", 0), ("App", 86401), ("Db", 86402), ("Cache", 86403)] {
        for step in ["deploy", "start", "stop", "undeploy"] {
            let mut body = String::from(
                "#!/bin/sh\nset -e\n\
                 echo \"$ROBOCONF_STEP $ROBOCONF_INSTANCE_PATH\" >> \"$ROBOCONF_AGENT_STATE_DIR/recipes.log\"\n\
                 sleep 1\n",
            );
            match (step, seconds) {
                (_, 0) => {}
                ("start", s) => body.push_str(&format!(
                    "exec \"$ROBOCONF_AGENT\" spawn start --name \"$ROBOCONF_INSTANCE_NAME\" -- sleep {s}\n"
                )),
                ("stop", _) => body.push_str(
                    "exec \"$ROBOCONF_AGENT\" spawn stop --name \"$ROBOCONF_INSTANCE_NAME\"\n",
                ),
                _ => {}
            }
            if (component, step) == ("Db", "deploy") {
                body.push_str("echo v1 > data\n");
            }
            script.push_str(&format!(
                "mkdir -p {STATE}/recipes/{component}\n\
                 cat > {STATE}/recipes/{component}/{step} <<'EOF'\n{body}EOF\n\
                 chmod 0755 {STATE}/recipes/{component}/{step}\n"
            ));
        }
    }
    script.push_str(&format!("chown -R roboconf-agent: {STATE}/recipes\n"));
    host.sh_ok(&script);
    for step in [
        "add --name vm --component VM",
        "add --name app --component App --parent /vm",
        "add --name db --component Db --parent /vm",
        "add --name cache --component Cache --parent /vm",
        "deploy /vm",
        "start /vm",
        "deploy /vm/app",
        "start /vm/app",
        "deploy /vm/db",
        "start /vm/db",
        "deploy /vm/cache",
        "start /vm/cache",
    ] {
        agent(host, &format!("ctl apply --wait 60 {step}"));
    }
}

/// The PIDs of the processes App, Db and Cache run.
fn pids(host: &Host) -> [String; 3] {
    ["86401", "86402", "86403"].map(|n| {
        let out = host.sh_ok(&format!("pgrep -f '^[^ ]*sleep {n}$' || true"));
        let pid = out.trim().to_string();
        assert!(!pid.is_empty(), "no process `sleep {n}` runs");
        pid
    })
}

/// The recipes' log from `from` lines on, and its length now.
fn recipes_since(host: &Host, from: usize) -> (Vec<String>, usize) {
    let all: Vec<String> = host.read(RECIPES_LOG).lines().map(String::from).collect();
    (all[from..].to_vec(), all.len())
}

fn installed(host: &Host) -> String {
    match host.kind() {
        HostKind::Debian => host.sh_ok(&format!("dpkg-query -W -f='${{Version}}' {AGENT}")),
        HostKind::Rpm => host.sh_ok(&format!("rpm -q --qf '%{{VERSION}}-%{{RELEASE}}' {AGENT}")),
    }
}

fn held(host: &Host) -> bool {
    match host.kind() {
        HostKind::Debian => host.sh_ok("apt-mark showhold").lines().any(|l| l == AGENT),
        HostKind::Rpm => host
            .sh_ok("dnf -q versionlock list")
            .contains(&format!("{AGENT}-0:")),
    }
}

/// `ferry migration --family F`: the RPM host has apt and dnf.
fn migration(host: &Host) -> &'static str {
    match host.kind() {
        HostKind::Debian => "ferry migration --family apt",
        HostKind::Rpm => "ferry migration --family dnf",
    }
}

/// `ferry migration ARGS --json` in the host; its answer. A failure panics
/// with what the agent's user manager says of the processes the recipes
/// spawned, and the agent's journal: a recipe failing there is otherwise
/// seen only as its last lines.
#[track_caller]
fn ferry(host: &Host, args: &str) -> Value {
    let out = host.sh(&format!("{} {args} --json", migration(host)));
    if !out.success() {
        let units = host.sh("u=$(id -u roboconf-agent)
             export XDG_RUNTIME_DIR=/run/user/$u
             runuser -u roboconf-agent -- systemctl --user list-units --all --no-pager 'roboconf-*'
             runuser -u roboconf-agent -- systemctl --user status --no-pager 'roboconf-*' || true
             journalctl --no-pager -n 60 _UID=$u
             journalctl --no-pager -n 40 -u roboconf-agent.service");
        panic!(
            "`ferry migration {args}` failed: {out}\nthe agent's user manager and journal:\n{}",
            units.stdout
        );
    }
    json(&out.stdout)
}

fn initialize(host: &Host, id: &str) {
    ferry(
        host,
        &format!("initialize --app {APPLICATION} --id {id} --by lab --reason 'perform under test'"),
    );
}

/// The lifecycle instruction a client sends without the lock's id.
fn lifecycle_refused(host: &Host, id: &str) {
    let out = host.sh(&format!("{AGENT} ctl apply stop /vm/app"));
    assert!(
        !out.success() && out.stderr.contains(&format!("migration lock `{id}`")),
        "{out}"
    );
}

/// What the recipes do when every instance is retired children first and
/// restored parents first (docs/AGENT.md: a parent stops after its
/// children, deploys before them).
fn drastic_order() -> Vec<String> {
    let mut out = Vec::new();
    for path in ["/vm/db", "/vm/cache", "/vm/app", "/vm"] {
        out.push(format!("stop {path}"));
        out.push(format!("undeploy {path}"));
    }
    for path in ["/vm", "/vm/app", "/vm/cache", "/vm/db"] {
        out.push(format!("deploy {path}"));
        out.push(format!("start {path}"));
    }
    out
}

/// Runs `ferry migration ARGS` in the background and SIGKILLs ferry (only
/// ferry: the package manager or agent client it started finishes, as after
/// a real kill) once the journal says step `step` (0-based) runs. Whether
/// the kill landed inside the step (false: the run ended or went past it).
fn kill_in_step(host: &Host, args: &str, step: usize) -> bool {
    host.sh_ok(&format!(
        "rm -f /root/perform.pid /root/perform.done
         setsid --fork sh -c 'echo $$ > /root/perform.pid; {} {args} >/root/perform.out 2>&1; touch /root/perform.done' \
             </dev/null >/dev/null 2>&1",
        migration(host)
    ));
    let deadline = Instant::now() + Duration::from_secs(300);
    // The journal may already say `step` runs (the last kill landed as
    // ferry entered it): ferry must run before the journal is believed.
    while !host
        .sh("pgrep -P \"$(cat /root/perform.pid)\" -x ferry >/dev/null || test -e /root/perform.done")
        .success()
    {
        assert!(Instant::now() < deadline, "the perform never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let landed = loop {
        let journal: Value = serde_json::from_str(&host.read(JOURNAL)).unwrap_or(Value::Null);
        let perform = &journal["perform"][0];
        if perform["running"] == step {
            break true;
        }
        if perform["done"].as_u64().is_some_and(|d| d as usize > step)
            || host.path("/root/perform.done").exists()
        {
            break false;
        }
        assert!(Instant::now() < deadline, "step {step} never ran");
        std::thread::sleep(Duration::from_millis(10));
    };
    // The shell's child is ferry: kill it, and the agent client it waits
    // on (the agent goes on with the instruction it was sent, which the
    // resumed perform must wait for); a package manager it started is left
    // to finish, as dpkg and rpm must. Then wait for all of it to end.
    host.sh_ok(
        "sid=\"$(cat /root/perform.pid)\"
         pkill -KILL -P \"$sid\" -x ferry || true
         pkill -KILL -s \"$sid\" -f '^[^ ]*roboconf-agent .* ctl ' || true",
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while host
        .sh("pgrep -s \"$(cat /root/perform.pid)\" >/dev/null")
        .success()
    {
        assert!(Instant::now() < deadline, "what ferry started never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    landed
}

fn perform_and_cancel(kind: HostKind) {
    support::require_root();
    let (v090, v100, v110) = (
        probe::agent_variant("0.9.0", 3, Variant::Good),
        probe::agent("1.0.0"),
        probe::agent("1.1.0"),
    );
    let mut host = Host::new(kind);
    let _repo: Box<dyn std::any::Any> = match kind {
        HostKind::Debian => {
            let repo = AptRepo::new("perform");
            for p in [&v090.deb, &v100.deb, &v110.deb] {
                repo.publish(p);
            }
            repo.attach(&mut host);
            Box::new(repo)
        }
        HostKind::Rpm => {
            let repo = RpmRepo::new("perform");
            for p in [&v090.rpm, &v100.rpm, &v110.rpm] {
                repo.publish(p);
            }
            repo.attach(&mut host);
            Box::new(repo)
        }
    };
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));
    host.copy_in(FERRY, "/usr/local/sbin/ferry");
    match kind {
        HostKind::Debian => host.sh_ok(&format!(
            "apt-get update --error-on=any && apt-get install -y {AGENT}=1.0.0-1"
        )),
        HostKind::Rpm => host.sh_ok(&format!("dnf -y install {AGENT}-1.0.0")),
    };
    wait_answering(&host);
    // Until scenario 3, a unit file of the agent's user holds Cache's unit
    // name, as a stopped unit the user manager could not collect does
    // (docs/AGENT.md): its process runs under a spare name, which start
    // sees and stop stops.
    let user_unit = |script: &str| {
        host.sh_ok(&format!(
            "u=$(id -u roboconf-agent); export XDG_RUNTIME_DIR=/run/user/$u
             export HOME=\"$(getent passwd roboconf-agent | cut -d: -f6)\"
             cd /tmp
             runuser -u roboconf-agent -- sh -c '{script}'"
        ))
    };
    user_unit(
        "d=$(systemd-path user-configuration)/systemd/user; mkdir -p \"$d\"
         printf \"[Service]\\nExecStart=/bin/true\\n\" > \"$d/roboconf-cache.service\"
         systemctl --user daemon-reload",
    );
    let spare =
        || user_unit("systemctl --user list-units --plain --no-legend \"roboconf-cache-r*\"");
    deploy_logging_tree(&host);
    assert!(spare().contains("running"), "Cache runs under a spare unit");
    let tree = sorted_tree(&host);
    let started = pids(&host);

    // 1. keep forward, then cancel.
    initialize(&host, "mig-keep");
    let unasked = host.sh(&format!("{} perform --to 1.1.0", migration(&host)));
    assert!(
        unasked.code == 3 && unasked.stderr.contains("pass --yes"),
        "{unasked}"
    );
    assert_eq!(json(&host.read(JOURNAL))["perform"], serde_json::json!([]));
    let plan = ferry(&host, "perform --to 1.1.0 --dry-run");
    assert!(
        plan["did"][0]
            .as_str()
            .unwrap()
            .starts_with("perform to 1.1.0 (forward; the state goes to schema 4), strategy keep"),
        "{plan:#}"
    );
    assert_eq!(json(&host.read(JOURNAL))["perform"], serde_json::json!([]));
    // On a terminal (util-linux's `script` gives it one) perform shows the
    // plan and asks: "n" changes nothing, "y" goes on.
    let on_terminal = |answer: &str| {
        host.sh(&format!(
            "printf '{answer}\\n' | script -qec '{} perform --to 1.1.0' /dev/null",
            migration(&host)
        ))
    };
    let no = on_terminal("n");
    assert!(
        no.code == 3
            && no.stdout.contains("1. install the package of 1.1.0")
            && no.stdout.contains("Perform it? [y/N]")
            && no.stdout.contains("not confirmed: nothing changed"),
        "{no}"
    );
    assert_eq!(json(&host.read(JOURNAL))["perform"], serde_json::json!([]));
    let yes = on_terminal("y");
    assert!(
        yes.success()
            && yes
                .stdout
                .contains("2. check the agent: the agent answers as 1.1.0"),
        "{yes}"
    );
    assert_eq!(installed(&host), "1.1.0-1");
    assert_eq!(status(&host)["version"], "1.1.0");
    assert_eq!(status(&host)["lock"]["id"], "mig-keep");
    assert_eq!(pids(&host), started, "keep touches no deployed process");
    assert_eq!(sorted_tree(&host), tree);
    assert!(held(&host), "the package stays held under the migration");
    lifecycle_refused(&host, "mig-keep");
    // The same perform again: nothing left to do.
    assert_eq!(
        ferry(&host, "perform --to 1.1.0 --yes")["did"],
        serde_json::json!([])
    );
    let back = ferry(&host, "cancel");
    eprintln!("cancel keep: {back:#}");
    assert_eq!(back["journal"]["state"], "cancelled");
    assert_eq!(installed(&host), "1.0.0-1");
    assert_eq!(status(&host)["version"], "1.0.0");
    assert_eq!(status(&host)["lock"], Value::Null);
    assert!(!held(&host));
    assert_eq!(pids(&host), started);
    assert_eq!(sorted_tree(&host), tree);

    // 2. drastic forward, uninterrupted, and its cancel.
    initialize(&host, "mig-drastic");
    let (_, mark) = recipes_since(&host, 0);
    let out = ferry(&host, "perform --to 1.1.0 --strategy drastic --yes");
    eprintln!("drastic: {out:#}");
    let (ran, mark) = recipes_since(&host, mark);
    assert_eq!(ran, drastic_order(), "drastic's recipes, in order");
    assert_eq!(sorted_tree(&host), tree, "the same tree after drastic");
    let restarted = pids(&host);
    assert!(
        restarted.iter().zip(&started).all(|(a, b)| a != b),
        "drastic restarts every process: {restarted:?} against {started:?}"
    );
    assert_eq!(status(&host)["lock"]["id"], "mig-drastic");
    assert!(spare().contains("running"), "Cache runs under a spare unit");
    let uninterrupted = (sorted_tree(&host), installed(&host), ran);
    ferry(&host, "cancel");
    let (ran, mark) = recipes_since(&host, mark);
    assert_eq!(ran, drastic_order(), "the cancel goes back the same way");
    assert_eq!(installed(&host), "1.0.0-1");
    assert_eq!(sorted_tree(&host), tree);
    // The name freed, the next stop (of the spare) and start (by name) work.
    user_unit(
        "rm \"$(systemd-path user-configuration)/systemd/user/roboconf-cache.service\"
         systemctl --user daemon-reload",
    );

    // 3. drastic again, ferry killed in each step and run again.
    initialize(&host, "mig-killed");
    let args = "perform --to 1.1.0 --strategy drastic --yes";
    let steps = drastic_order().len() / 2 + 2;
    let mut landed = Vec::new();
    for step in 0..steps {
        if kill_in_step(&host, args, step) {
            landed.push(step);
        }
    }
    eprintln!("killed in steps {landed:?} of {steps}");
    // Every step but `check` (which may take a few milliseconds) takes a
    // second or more: the kill lands in each.
    let check = drastic_order().len() / 4 + 1;
    landed.retain(|s| *s != check);
    assert_eq!(
        landed,
        (0..steps).filter(|s| *s != check).collect::<Vec<_>>(),
        "{}",
        host.read("/root/perform.out")
    );
    let out = ferry(&host, args);
    eprintln!("resumed: {out:#}");
    assert_eq!(out["journal"]["perform"][0]["done"], steps);
    let (ran, _) = recipes_since(&host, mark);
    assert_eq!(
        (sorted_tree(&host), installed(&host), ran),
        uninterrupted,
        "killed at each step, the perform ends as the uninterrupted one did"
    );
    assert_eq!(status(&host)["lock"]["id"], "mig-killed");
    assert_eq!(
        spare().trim(),
        "",
        "the spare unit stopped, Cache under its own name"
    );
    ferry(&host, "complete");
    assert_eq!(status(&host)["lock"], Value::Null);
    assert_eq!(installed(&host), "1.1.0-1");

    // 4. smart, backward to 1.0.0.
    host.sh_ok(&format!(
        "cat > {SCRIPT} <<'EOF'
#!/bin/sh
set -e
sleep 3
echo \"migrated $FERRY_MIGRATION_FROM_VERSION to $FERRY_MIGRATION_TO_VERSION ($FERRY_MIGRATION_DIRECTION) by $(id -un) in $ROBOCONF_STEP of $ROBOCONF_INSTANCE_PATH ($ROBOCONF_COMPONENT, $ROBOCONF_APPLICATION)\" > data
pwd
EOF
         chmod 0755 {SCRIPT}
         printf '[components]\\nVM = \"keep\"\\nApp = \"keep\"\\nCache = \"redeploy\"\\nDb = {{ script = \"{SCRIPT}\" }}\\n' > /root/components.toml"
    ));
    initialize(&host, "mig-smart");
    let before = pids(&host);
    host.sh_ok(&format!(
        "setsid --fork sh -c '{} perform --to 1.0.0 --strategy smart \
         --components /root/components.toml --yes > /root/smart.out 2>&1; touch /root/smart.done' \
         </dev/null >/dev/null 2>&1",
        migration(&host)
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !host.read(JOURNAL).contains("\"step\": \"script\"")
        || json(&host.read(JOURNAL))["perform"][0]["running"] != 3
    {
        assert!(Instant::now() < deadline, "{}", host.read(JOURNAL));
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = host.sh(&format!("{} cancel", migration(&host)));
    assert!(
        refused.code == 3
            && refused.stderr.contains("step 4 of 5")
            && refused.stderr.contains(SCRIPT),
        "a cancel during the perform is refused, naming the step: {refused}"
    );
    while !host.path("/root/smart.done").exists() {
        assert!(
            Instant::now() < deadline,
            "{}",
            host.read("/root/smart.out")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("smart: {}", host.read("/root/smart.out"));
    assert_eq!(installed(&host), "1.0.0-1");
    let after = pids(&host);
    assert_eq!(after[0], before[0], "App is kept: same process");
    assert_eq!(after[1], before[1], "Db is migrated in place: same process");
    assert_ne!(after[2], before[2], "Cache is redeployed: a new process");
    assert_eq!(
        host.read(&format!("{STATE}/work/vm/db/data")).trim(),
        "migrated 1.1.0 to 1.0.0 (backward) by roboconf-agent in migrate of /vm/db (Db, my-application)"
    );
    assert_eq!(sorted_tree(&host), tree);
    ferry(&host, "complete");

    // 5. keep, backward below the lock's schema.
    initialize(&host, "mig-old");
    let before = pids(&host);
    let out = ferry(&host, "perform --to 0.9.0 --yes");
    eprintln!("to 0.9.0: {out:#}");
    assert_eq!(installed(&host), "0.9.0-1");
    assert_eq!(
        host.sh("systemctl is-enabled roboconf-agent.service roboconf-agent.socket")
            .stdout,
        "masked\nmasked\n"
    );
    let out = host.sh(&format!("{AGENT} ctl apply stop /vm/app"));
    assert!(!out.success(), "a lifecycle change reaches no agent: {out}");
    assert!(!host.sh("systemctl start roboconf-agent.service").success());
    assert_eq!(pids(&host), before, "the deployed processes run on");
    let status_out = ferry(&host, "status");
    assert!(
        status_out["next"].as_str().unwrap().contains("complete"),
        "{status_out:#}"
    );
    ferry(&host, "complete");
    wait_answering(&host);
    assert_eq!(status(&host)["version"], "0.9.0");
    assert_eq!(status(&host)["schema"], 3);
    assert!(!held(&host));
    agent(&host, "ctl apply --wait 60 stop /vm/app");
    host.poweroff();
}

#[test]
fn debian_perform_keep_drastic_smart_killed_and_below_the_lock_schema() {
    perform_and_cancel(HostKind::Debian);
}

#[test]
fn rpm_perform_keep_drastic_smart_killed_and_below_the_lock_schema() {
    perform_and_cancel(HostKind::Rpm);
}
