//! The assertions every upgrade path of the reference agent makes, shared by
//! tests/hooks.rs and tests/interrupted.rs: the four things (the state, the
//! version running, started exactly once, the deployed software's process
//! kept), the package database as each format reports it, and the package
//! manager killed at a chosen moment.

use super::agent::{
    agent, header, install, log_since, sorted_tree, status, version_running, MARKER, RECORD,
    SNAPSHOTS, STATE,
};
use super::client::{socket_activated, socket_since, Client};
use super::lab::{Host, HostKind};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// How many times the agent came up, from its unit's journal: the lines
/// the agent logs once it has loaded the state and listens ("roboconf-agent
/// VERSION running: pid N, ..."). Not systemd's "Started" lines: under load
/// the lab's nested cgroups sometimes fail a spawn before the agent runs
/// (status 219/CGROUP), which systemd logs as started and restarts, and
/// finish rightly waits through; what must happen once is the agent
/// loading the state.
pub fn starts(host: &Host) -> usize {
    host.sh("journalctl --no-pager -o cat -u roboconf-agent.service")
        .stdout
        .lines()
        .filter(|l| l.starts_with("roboconf-agent ") && l.contains(" running: pid "))
        .count()
}

/// The agent's main PID as systemd knows it ("0" when not running).
pub fn main_pid(host: &Host) -> String {
    host.sh_ok("systemctl show -p MainPID --value roboconf-agent.service")
        .trim()
        .to_string()
}

/// Finds the App instance's process by its command line, whether systemd
/// ran it by its full path or not; never the shell running pgrep.
pub const FIND_INSTANCE_PROCESS: &str = "pgrep -f '^[^ ]*sleep 86401$'";

/// The process the App instance's start recipe spawned (`sleep 86401`),
/// after checking that it runs in the agent user's own systemd manager,
/// outside the agent's cgroup: what lets it outlive the agent.
#[track_caller]
pub fn instance_process(host: &Host) -> String {
    let found = host.sh(FIND_INSTANCE_PROCESS);
    let pid = found.stdout.trim().to_string();
    assert!(
        found.success() && !pid.contains('\n'),
        "one instance process, found {pid:?}; the agent's journal:\n{}",
        host.sh("journalctl --no-pager -o cat -n 30 -u roboconf-agent.service")
            .stdout
    );
    let cgroup = host.sh_ok(&format!("cat /proc/{pid}/cgroup"));
    assert!(
        cgroup.contains("/user.slice/") && cgroup.contains("roboconf-app.service"),
        "spawned in the user manager: {cgroup}"
    );
    pid
}

/// Polls `done` until it holds; past `timeout` the test fails naming what
/// it waited for, never goes on as if it had come.
#[track_caller]
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a package step is compared against: the tree, the journal's count
/// of starts and the instance's process, taken before the step.
pub struct Before {
    pub tree: Vec<(String, String, String)>,
    pub starts: usize,
    pub process: String,
}

#[track_caller]
pub fn before(host: &Host) -> Before {
    Before {
        tree: sorted_tree(host),
        starts: starts(host),
        process: instance_process(host),
    }
}

/// The four things, once the package manager is done: the state is `tree`
/// with the header of `version` at `schema` (equal, or exactly migrated),
/// `version` answers, the unit was started exactly once since `before`
/// (journal), the deployed software kept its process. No marker is left.
#[track_caller]
pub fn assert_four(
    host: &Host,
    before: &Before,
    tree: &[(String, String, String)],
    version: &str,
    schema: u32,
) {
    let mut expected = tree.to_vec();
    expected.sort();
    assert_eq!(sorted_tree(host), expected, "the tree under {version}");
    let h = header(host);
    assert_eq!(h["schema"], schema, "{h}");
    assert_eq!(h["written_by"], version, "{h}");
    assert_eq!(version_running(host), version);
    assert_eq!(
        starts(host),
        before.starts + 1,
        "started exactly once; the unit's journal:\n{}",
        host.sh("journalctl --no-pager -o short-precise -n 40 -u roboconf-agent.service")
            .stdout
    );
    assert_eq!(
        instance_process(host),
        before.process,
        "the deployed software kept its process"
    );
    assert!(!host.path(MARKER).exists(), "the marker is gone");
}

/// Leaves one instruction in the queue: applied while quiesced, it waits for
/// the next start, which must keep it and run it.
pub fn queue_one(host: &Host, name: &str) {
    agent(host, "ctl quiesce --timeout 5");
    agent(
        host,
        &format!("ctl apply add --name {name} --component App --parent /vm"),
    );
    assert_eq!(status(host)["queue_length"], 1);
}

/// An upgrade, downgrade or reinstall to `version` (state schema `schema`)
/// by the package file `package` (`extra`: what `install` takes), with an
/// instruction queued while quiesced: the four things, the queued
/// instruction run once after the start, the recipe's file kept. A
/// migration up is proven to be the hook's: the log says so, and the test
/// builds' agent refuses to migrate at start (`migrate_on_start = false`).
pub fn upgrade_step(host: &Host, package: &Path, version: &str, schema: u32, extra: &str) {
    static STEP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STEP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let queued = format!("q{n}-{}", version.replace('.', ""));
    let from_schema = header(host)["schema"].as_u64().unwrap();
    queue_one(host, &queued);
    let before = before(host);
    let log_from = super::agent::log_len(host);
    let socket = SocketWatch::start(host);
    let out = install(host, package, extra);
    assert!(out.success(), "installing {version}: {out}");
    wait_for(
        &format!("the instruction queued before {version} to run"),
        Duration::from_secs(30),
        || status(host)["queue_length"] == 0,
    );
    if let Some(socket) = socket {
        socket.assert_waited_through(host, version);
    }
    if socket_activated(host) {
        assert!(
            socket_since(host).is_some(),
            "{version} has a socket unit: it listens after the upgrade"
        );
    }
    let mut tree = before.tree.clone();
    tree.push((format!("/vm/{queued}"), "App".into(), "NOT_DEPLOYED".into()));
    assert_four(host, &before, &tree, version, schema);
    assert_eq!(
        host.read(&format!("{STATE}/work/vm/app/made-by-recipe")),
        "deployed\n"
    );
    // The admin's escape hatch (ferry-skip-migration) is the one case where
    // the hook must not migrate.
    let hatch = host
        .path("/etc/roboconf-agent/ferry-skip-migration")
        .exists();
    if u64::from(schema) > from_schema && !hatch {
        let log = log_since(host, log_from);
        assert!(
            log.contains(&format!(
                "finish: migrating the state up from schema {from_schema} to {schema}"
            )),
            "the hook migrated {from_schema} -> {schema}: {log}"
        );
    }
}

/// A socket-activated agent's upgrade, watched: the socket unit's start
/// time and a client asking `status` every 5 ms throughout.
struct SocketWatch {
    since: String,
    from: String,
    client: Client,
}

impl SocketWatch {
    /// Nothing to watch if the installed agent binds its socket itself.
    fn start(host: &Host) -> Option<SocketWatch> {
        let since = socket_since(host)?;
        Some(SocketWatch {
            since,
            from: version_running(host),
            client: Client::start(host),
        })
    }

    /// The socket unit kept listening through the upgrade (never
    /// restarted), and every request the client made was answered: none
    /// refused, reset or timed out, the first by the outgoing version, the
    /// last by `version`.
    #[track_caller]
    fn assert_waited_through(self, host: &Host, version: &str) {
        let seen = self.client.finish();
        eprintln!(
            "socket client, {} -> {version}: {} answers, longest wait {:?}, versions {:?}",
            self.from, seen.answered, seen.longest, seen.versions
        );
        assert!(
            seen.errors.is_empty(),
            "{} of {} requests failed during {} -> {version}: {:?}",
            seen.errors.len(),
            seen.answered + seen.errors.len(),
            self.from,
            &seen.errors[..seen.errors.len().min(5)]
        );
        assert_eq!(seen.versions.first(), Some(&self.from), "{seen:?}");
        assert_eq!(
            seen.versions.last().map(String::as_str),
            Some(version),
            "{seen:?}"
        );
        assert_eq!(
            socket_since(host),
            Some(self.since),
            "the socket unit stayed active, never restarted"
        );
    }
}

/// The package as its database holds it: `VERSION-REVISION STATUS` from
/// dpkg, every installed `VERSION-RELEASE` from rpm (one per line: rpm can
/// hold two after an interrupted transaction).
pub fn installed(host: &Host) -> String {
    match host.kind() {
        HostKind::Debian => {
            host.sh_ok("dpkg-query -W -f '${Version} ${db:Status-Status}' roboconf-agent")
        }
        HostKind::Rpm => host
            .sh_ok("rpm -q --qf '%{VERSION}-%{RELEASE}\\n' roboconf-agent")
            .trim()
            .to_string(),
    }
}

/// The snapshot the pending upgrade record names.
pub fn recorded_snapshot(host: &Host) -> String {
    let record: Value = serde_json::from_str(&host.read(RECORD)).expect("upgrade record");
    let name = record["snapshot"]
        .as_str()
        .expect("record names a snapshot");
    format!("{SNAPSHOTS}/{name}")
}

/// Case 8 (and 10, a failing new preinst / `%pre`): with a recipe running,
/// installing `package` is refused by the installed hook's `prepare`,
/// naming what runs; the package manager keeps `installed_before`, the old
/// agent keeps its process (same main PID, no start) and resumes taking
/// work, the state file is byte-identical, no marker or record is left.
/// Then the recipe ends and the same upgrade passes.
pub fn busy_refusal_then_upgrade(host: &Host, package: &Path, extra: &str, to: (&str, u32)) {
    agent(
        host,
        "ctl apply add --name slow --component Slow --parent /vm",
    );
    agent(host, "ctl apply deploy /vm/slow");
    wait_for("the Slow recipe to run", Duration::from_secs(10), || {
        status(host)["busy"] == true
    });
    let state_before = host.read(&format!("{STATE}/state.json"));
    let installed_before = installed(host);
    let pid = main_pid(host);
    let version = version_running(host);
    let started = starts(host);
    let process = instance_process(host);
    let out = install(host, package, extra);
    assert!(
        !out.success(),
        "a busy agent must refuse the upgrade: {out}"
    );
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("busy") && said.contains("/vm/slow") && said.contains("deploy"),
        "the refusal names what runs: {said}"
    );
    assert_eq!(installed(host), installed_before);
    assert_eq!(main_pid(host), pid, "the old agent kept its process");
    assert_eq!(starts(host), started, "no start across the refusal");
    assert_eq!(version_running(host), version);
    assert_eq!(
        status(host)["quiesced"],
        false,
        "the agent takes work again"
    );
    assert_eq!(instance_process(host), process);
    assert_eq!(host.read(&format!("{STATE}/state.json")), state_before);
    assert!(!host.path(MARKER).exists() && !host.path(RECORD).exists());
    host.sh_ok(&format!("touch {STATE}/gate"));
    wait_for("the Slow recipe to end", Duration::from_secs(30), || {
        status(host)["busy"] == false
    });
    upgrade_step(host, package, to.0, to.1, extra);
}

/// Starts `command` in a process group of its own (with no descriptor of
/// the caller's: `host.sh` returns at once), waits until
/// `moment(host, upgrade log since the start)` holds, then SIGKILLs the
/// whole group: the package manager, the maintainer script and the hook die
/// at once, as on a power loss of the package manager (the agent, a systemd
/// service, is not in it). Fails if the command ended before the moment
/// came or survived the kill. Returns the log written until the kill.
pub fn kill_when(host: &Host, command: &str, moment: impl Fn(&Host, &str) -> bool) -> String {
    let from = super::agent::log_len(host);
    host.sh_ok(&format!(
        "rm -f /root/pm.pgid /root/pm.done
         setsid --fork sh -c 'echo $$ > /root/pm.pgid; {command} >/root/pm.out 2>&1; touch /root/pm.done' \
             </dev/null >/dev/null 2>&1"
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut log = log_since(host, from);
    while !moment(host, &log) {
        assert!(
            !host.path("/root/pm.done").exists(),
            "`{command}` ended before the moment to kill it came; it said: {}\nlog:\n{log}",
            host.read("/root/pm.out")
        );
        assert!(
            Instant::now() < deadline,
            "the moment to kill `{command}` never came; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
        log = log_since(host, from);
    }
    host.sh_ok("pkill -KILL -g \"$(cat /root/pm.pgid)\"");
    wait_for(
        "the killed package manager's processes to be gone",
        Duration::from_secs(10),
        || !host.sh("pgrep -g \"$(cat /root/pm.pgid)\"").success(),
    );
    assert!(
        !host.path("/root/pm.done").exists(),
        "`{command}` was killed, not finished; it said: {}",
        host.read("/root/pm.out")
    );
    log
}

/// The unit the package installs.
pub const UNIT: &str = "roboconf-agent.service";

/// Whether systemd runs the agent's unit.
pub fn is_active(host: &Host) -> bool {
    host.sh(&format!("systemctl --quiet is-active {UNIT}"))
        .success()
}

/// A noarch package `NAME-1-1` that requires the agent and runs `post` as
/// its `%post`: in one transaction with the agent's package, rpm runs it
/// after the agent's `%pre`, files and `%post`, before its `%posttrans`.
/// The tests use it to act inside a transaction.
pub fn scriptlet_rpm(name: &str, post: &str) -> std::path::PathBuf {
    let package = rpm::PackageBuilder::new(
        name,
        "1",
        "MIT",
        "noarch",
        "acts inside a transaction (ferry's tests)",
    )
    .release("1")
    .requires(rpm::Dependency::any(super::agent::AGENT))
    .post_install_script(post)
    .build()
    .unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-1-1.noarch.rpm"));
    package.write_file(&out).unwrap();
    out
}
