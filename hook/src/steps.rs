//! The three steps of an upgrade (docs/UPGRADES.md): `prepare`, run by the
//! outgoing version while its files are still installed; `finish`, run by
//! the incoming version once its files are in place; `abort`, run by the
//! outgoing version when the package manager unwinds.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferry_hook::confined::{self, Dir};
use ferry_hook::package::{compare_versions, PackageManifest, Record, MARKER};
use ferry_hook::snapshot::{self, Label};

use ferry_hook::system::{Agent, Log, Process, Systemd};

/// How long the agent may take to exit after `stop-for-upgrade`.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

struct Ctx<'a> {
    m: &'a PackageManifest,
    log: Log,
    agent: Agent<'a>,
    unit: Systemd<'a>,
    /// The socket unit that owns the control socket, if the agent is
    /// socket-activated: never stopped by an upgrade that succeeds.
    socket: Option<Systemd<'a>>,
}

impl<'a> Ctx<'a> {
    fn new(m: &'a PackageManifest, step: &'static str) -> Result<Ctx<'a>> {
        let log = Log::new(m, step);
        let agent = Agent::new(m).inspect_err(|e| log.line(&format!("{e:#}")))?;
        Ok(Ctx {
            m,
            log,
            agent,
            unit: Systemd::new(&m.unit),
            socket: m.socket.as_deref().map(Systemd::new),
        })
    }

    /// Whether the admin asked to skip automatic migration; said in the log.
    fn skip_migration(&self) -> bool {
        let skip = confined::trusted_exists(Path::new(&self.m.skip_migration_file));
        if skip {
            self.log.line(&format!(
                "{} exists: the state is NOT migrated (escape hatch); remove it to migrate again",
                self.m.skip_migration_file
            ));
        }
        skip
    }

    /// The state directory, if there is one yet. Its name is root's; what
    /// is in it is the agent's user's, reached only through the handle.
    fn state(&self) -> Result<Option<Dir>> {
        Dir::open_trusted_if_present(Path::new(&self.m.state_dir))
    }

    /// Sets the marker by renaming a new file over whatever has the name
    /// (the agent's user may have put a link there): nothing is followed.
    fn write_marker(&self, text: &str) -> Result<()> {
        match self.state()? {
            Some(dir) => dir.replace_file(MARKER, format!("{text}\n").as_bytes(), 0o644),
            None => Ok(()),
        }
    }

    fn remove_marker(&self) -> Result<()> {
        match self.state()? {
            Some(dir) => dir
                .remove_file(MARKER)
                .context("removing the upgrade marker"),
            None => Ok(()),
        }
    }

    /// A snapshot of the state as this package's version left it.
    fn snapshot(&self, schema: Option<u32>, reason: &str) -> Result<Option<String>> {
        self.snapshot_of(&self.m.version, schema, reason)
    }

    fn snapshot_of(
        &self,
        version: &str,
        schema: Option<u32>,
        reason: &str,
    ) -> Result<Option<String>> {
        let state = Path::new(&self.m.state_dir);
        if self.state()?.is_none() {
            self.log.line("no state directory yet: nothing to snapshot");
            return Ok(None);
        }
        let started = Instant::now();
        let label = Label {
            package: self.m.name.clone(),
            version: version.into(),
            schema,
            reason: reason.into(),
        };
        let snap = snapshot::create(state, &self.m.snapshots_dir(), &label, &[MARKER])?;
        self.log.line(&format!(
            "snapshot {} taken in {:.0?}",
            snap.path.display(),
            started.elapsed()
        ));
        self.log_skipped(&snap);
        Ok(Some(snap.name))
    }

    /// Removes the snapshots the record no longer names.
    fn drop_snapshots(&self, names: Vec<String>) -> Result<()> {
        for name in names {
            let started = Instant::now();
            snapshot::remove_if_present(&self.m.snapshots_dir().join(&name))?;
            self.log.line(&format!(
                "removed the superseded snapshot {name} in {:.0?}",
                started.elapsed()
            ));
        }
        Ok(())
    }

    fn log_skipped(&self, snap: &snapshot::Snapshot) {
        if !snap.skipped.is_empty() {
            self.log.line(&format!(
                "not copied (sockets are live endpoints, not state): {}",
                snap.skipped.join(", ")
            ));
        }
    }

    /// Retakes the snapshot of an upgrade that was taken while the agent
    /// ran (`why` says when it is retaken), linking the files unchanged
    /// since. The earlier one is left for the caller to remove once the
    /// record names the new one (`drop_snapshots`). With `early`, a snapshot
    /// this step took moments before and recorded nowhere, the live data
    /// (`[state] live`) is moved from it instead of being read again.
    fn resnapshot(
        &self,
        record: &Record,
        why: &str,
        early: Option<&str>,
    ) -> Result<Option<String>> {
        let from = record.from_version.as_deref().unwrap_or("(predates ferry)");
        let reason = format!("before {from} -> {}, {why}", record.to_version);
        let Some(earlier) = early.or(record.snapshot.as_deref()) else {
            return self.snapshot_of(from, record.from_schema, &reason);
        };
        let state = Path::new(&self.m.state_dir);
        let started = Instant::now();
        let earlier_path = self.m.snapshots_dir().join(earlier);
        let (snap, how) = match early {
            Some(_) => {
                let live: Vec<&str> = self.m.state_live.iter().map(String::as_str).collect();
                let snap =
                    snapshot::retake_moving(&earlier_path, state, &reason, &[MARKER], &live)?;
                let how = format!(
                    "the live data ({}) moved from {earlier}, taken before the stop; \
                     the other files unchanged since are linked from it",
                    live.join(", ")
                );
                (snap, how)
            }
            None => (
                snapshot::retake(&earlier_path, state, &reason, &[MARKER])?,
                format!("files unchanged since {earlier} are linked from it"),
            ),
        };
        self.log.line(&format!(
            "snapshot {} retaken in {:.0?} ({why}; {how})",
            snap.path.display(),
            started.elapsed()
        ));
        self.log_skipped(&snap);
        Ok(Some(snap.name))
    }

    fn prune(&self, protect: Option<&str>) {
        match snapshot::prune(
            &self.m.snapshots_dir(),
            self.m.keep_snapshots as usize,
            protect,
        ) {
            Ok(removed) if !removed.is_empty() => self.log.line(&format!(
                "kept the last {} snapshots; removed {}",
                self.m.keep_snapshots,
                removed.join(", ")
            )),
            Ok(_) => {}
            Err(e) => self.log.line(&format!("warning: pruning snapshots: {e:#}")),
        }
    }

    fn restore(&self, name: &str) -> Result<()> {
        let path = self.m.snapshots_dir().join(name);
        snapshot::restore(&path, Path::new(&self.m.state_dir))?;
        self.log
            .line(&format!("state restored from snapshot {name}"));
        Ok(())
    }

    /// Starts the unit and waits until the agent answers `status` with this
    /// package's version; the error says why not.
    ///
    /// A start that fails while systemd restarts the unit (`Restart=`, in
    /// `activating`) is waited through, up to the health timeout: one
    /// transient failure is not a reason to roll back (SPEC §13). The unit
    /// gives up by itself on a status `RestartPreventExitStatus=` names or
    /// at its start limit, and then so does this.
    ///
    /// A socket-activated agent is started, not restarted: a connection
    /// made during the upgrade may have started it already, held behind the
    /// marker (it runs the new program once the marker is gone), and a
    /// restart would start it twice. What a plain start can miss is put
    /// right once: an agent that answers with another version is
    /// restarted, a unit found inactive (its process had exited, systemd
    /// had not yet noticed) is started again.
    fn start_and_check(&self) -> Result<()> {
        let socket_activated = self.start_socket()?;
        // A start job that failed (ExecStartPre=, say) but that systemd
        // retries is waited on below; any other failure is final. Its words
        // stay in the error if the retries do not help either.
        let mut first_failure = String::new();
        let mut corrected = !socket_activated;
        let started = if socket_activated {
            self.unit.start()
        } else {
            self.unit.restart()
        };
        if let Err(e) = started {
            if self.unit.active_state() != "activating" {
                return Err(e);
            }
            first_failure = format!("{e:#}; ");
        }
        let deadline = Instant::now() + Duration::from_secs(self.m.health_timeout_secs);
        let mut said_restarting = false;
        loop {
            let (last, other_version) = match self.agent.status() {
                Ok(s) if s["version"].as_str() == Some(self.m.version.as_str()) => {
                    self.log.line(&format!(
                        "{} {} is running (pid {}) and answers",
                        self.m.name, self.m.version, s["pid"]
                    ));
                    return Ok(());
                }
                Ok(s) => (format!("it reports version {}", s["version"]), true),
                Err(e) => (format!("{e:#}"), false),
            };
            let state = self.unit.active_state();
            if !corrected && (state == "inactive" || other_version) {
                corrected = true;
                self.log.line(&format!(
                    "{} after the start ({last}): restarting it once",
                    self.m.unit
                ));
                self.unit.restart()?;
                continue;
            }
            if state == "activating" && !said_restarting {
                said_restarting = true;
                self.log.line(&format!(
                    "{} did not come up at once ({}); systemd restarts it: waiting up to {} s",
                    self.m.unit,
                    self.unit.describe(),
                    self.m.health_timeout_secs
                ));
            }
            if Instant::now() > deadline || !matches!(state.as_str(), "active" | "activating") {
                bail!(
                    "{first_failure}{} is not healthy after start ({}; last answer: {last}; journal: {})",
                    self.m.unit,
                    self.unit.describe(),
                    self.unit.journal_tail()
                );
            }
            // Short: the package manager waits on this poll, not the agent.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Ctx<'_> {
    /// Starts the socket unit, if the agent has one and the admin left it
    /// enabled (a first install, an upgrade from a version without it, or
    /// the recovery from a failed upgrade, which stopped it); says whether
    /// the agent is socket-activated.
    fn start_socket(&self) -> Result<bool> {
        let Some(socket) = self.socket.as_ref().filter(|s| s.is_enabled()) else {
            return Ok(false);
        };
        if !socket.is_active() {
            socket.reset_failed();
            socket.start()?;
            self.log.line(&format!(
                "started {}: it owns the control socket from now on",
                self.m.socket.as_deref().unwrap_or_default()
            ));
        }
        Ok(true)
    }

    /// Stops the socket unit with the agent, after a failed upgrade: a
    /// connection must not start the agent on the restored state.
    fn stop_socket(&self) {
        if let Some(socket) = &self.socket {
            if let Err(e) = socket.stop() {
                self.log.line(&format!("warning: {e:#}"));
            }
        }
    }
}

/// What the incoming package tells the outgoing hook.
pub struct Incoming {
    pub version: String,
    pub schema: u32,
    /// The hook protocol of the incoming package: from 2 on, its `finish`
    /// can stop an agent that `prepare` left running.
    pub protocol: u32,
}

/// Quiesce and snapshot; then either leave the agent running, quiesced,
/// for the incoming `finish` to stop (protocol 2, no down-migration: the
/// agent keeps answering while the package manager unpacks), or stop it and
/// migrate down if the incoming schema is older. Undone on any failure, so
/// a refused upgrade leaves the agent as it was.
pub fn prepare(m: &PackageManifest, incoming: &Incoming) -> Result<()> {
    let c = Ctx::new(m, "prepare")?;
    let direction = match compare_versions(&incoming.version, &m.version) {
        std::cmp::Ordering::Greater => "upgrade",
        std::cmp::Ordering::Less => "downgrade",
        std::cmp::Ordering::Equal => "reinstall",
    };
    c.log.line(&format!(
        "{direction} of {} from {} (schema {}) to {} (schema {}): preparing",
        m.name, m.version, m.schema, incoming.version, incoming.schema
    ));
    let earlier = Record::load(&m.record_path())?;
    if let Some(r) = &earlier {
        c.log.line(&format!(
            "an earlier upgrade to {} did not finish ({}): keeping its snapshot and its view of whether the agent ran",
            r.to_version, r.status
        ));
    }
    if incoming.schema < m.schema {
        can_go_down(&c, direction, incoming)?;
    }
    // Asked once: quiescing does not change it, and each ask is a systemctl.
    let active = c.unit.is_active();
    let was_running = match &earlier {
        Some(r) => r.was_running.unwrap_or(false),
        None => active,
    };
    if was_running && active {
        quiesce(&c)?;
    }
    let result = prepare_steps(&c, incoming, earlier.as_ref(), was_running, active);
    if let Err(e) = &result {
        c.log.line(&format!("prepare failed, undoing it: {e:#}"));
        undo_prepare(&c, active, earlier.is_none());
    }
    result
}

/// Asks the agent, before anything changes, whether its state can go down
/// to the incoming schema: a state the older schema cannot hold (a
/// migration lock, docs/AGENT.md) refuses the downgrade as a busy agent
/// refuses an upgrade, in the log and in the error, naming what holds it.
fn can_go_down(c: &Ctx, direction: &str, incoming: &Incoming) -> Result<()> {
    c.agent.can_migrate(incoming.schema).map_err(|e| {
        let message = format!(
            "refusing to {direction} {} to {} (schema {}): its state cannot go down from schema {}: {e:#}. {} {} stays installed with its state untouched",
            c.m.name, incoming.version, incoming.schema, c.m.schema, c.m.name, c.m.version
        );
        c.log.line(&message);
        anyhow!(message)
    })
}

fn quiesce(c: &Ctx) -> Result<()> {
    c.log.line(&format!(
        "asking the agent to quiesce (at most {} s)",
        c.m.quiesce_timeout_secs
    ));
    c.agent.quiesce(c.m.quiesce_timeout_secs).map_err(|e| {
        let message = format!(
            "refusing to upgrade {}: the agent is busy and stays so: {e:#}. It keeps running {} with its state untouched; retry once it is idle",
            c.m.name, c.m.version
        );
        c.log.line(&message);
        anyhow!(message)
    })
}

/// The record is saved before anything is stopped and again after each
/// change, so a prepare killed half-way (dpkg SIGKILLed during unpack) is
/// retried knowing whether the agent ran, which snapshot holds the state
/// from before, and whether it was already migrated down.
fn prepare_steps(
    c: &Ctx,
    incoming: &Incoming,
    earlier: Option<&Record>,
    was_running: bool,
    active: bool,
) -> Result<()> {
    let check = c.agent.check()?;
    if !check.ok {
        bail!(
            "the state in {} does not verify: {}. Restore a snapshot (ferry-hook snapshot list / restore), or create {} to upgrade without migrating",
            c.m.state_dir,
            check.error,
            c.m.skip_migration_file
        );
    }
    snapshot::check_free_space(Path::new(&c.m.state_dir), &c.m.snapshots_dir())?;
    let migrate_down = check.schema.is_some_and(|s| s > incoming.schema) && !c.skip_migration();
    // A down-migration needs this version's agent, whose files the package
    // manager replaces before `finish`: then the agent stops here.
    let keep_running = incoming.protocol >= 2
        && !migrate_down
        && !earlier.is_some_and(|r| r.migrated_down)
        && active;
    let mut record = Record {
        status: "preparing".into(),
        fallback: false,
        from_version: Some(c.m.version.clone()),
        from_schema: earlier.and_then(|r| r.from_schema).or(check.schema),
        to_version: incoming.version.clone(),
        to_schema: incoming.schema,
        was_running: Some(was_running),
        snapshot: earlier.and_then(|r| r.snapshot.clone()),
        migrated_down: earlier.is_some_and(|r| r.migrated_down),
        quiesced_only: keep_running,
        failure: None,
    };
    record.save(&c.m.record_path())?;
    // Set while the agent may still run: if it dies during the unpack,
    // systemd's restart runs the new binary, which must not start on the
    // state before `finish` (it exits 75, which the unit does not restart).
    c.write_marker(&format!(
        "upgrade of {} from {} to {} in progress",
        c.m.name, c.m.version, incoming.version
    ))?;
    if !keep_running && active {
        c.log
            .line("stopping the agent for upgrade (the machine is not announced as gone)");
        stop_for_upgrade(c)?;
    }
    // A snapshot taken while the agent ran (by an earlier prepare that left
    // it running) may be out of date; one taken while it was stopped is not.
    if record.snapshot.is_none() {
        record.snapshot = c.snapshot(
            check.schema,
            &format!("before {} -> {}", c.m.version, incoming.version),
        )?;
        record.save(&c.m.record_path())?;
    } else if earlier.is_some_and(|r| r.quiesced_only) {
        let earlier = record.snapshot.clone();
        record.snapshot = c.resnapshot(&record, "by a retried prepare", None)?;
        record.save(&c.m.record_path())?;
        c.drop_snapshots(earlier.into_iter().collect())?;
    }
    if migrate_down {
        let from = check.schema.unwrap_or_default();
        c.log.line(&format!(
            "migrating the state down from schema {from} to {} with {} {}",
            incoming.schema, c.m.agent, c.m.version
        ));
        // Recorded first: if this is cut short, the retry and `abort` know
        // the state may be half-way and put the snapshot back.
        record.migrated_down = true;
        record.save(&c.m.record_path())?;
        c.agent.migrate(incoming.schema)?;
    }
    record.status = "prepared".into();
    record.save(&c.m.record_path())?;
    c.prune(record.snapshot.as_deref());
    c.log.line(if keep_running {
        "prepared: the agent answers, quiesced, until the new version's finish stops it; the upgrade marker is set"
    } else {
        "prepared: the agent is stopped and the upgrade marker is set"
    });
    Ok(())
}

/// Asks the agent to stop for upgrade (the machine is not announced as
/// gone) and waits for its process to exit; stops the unit if the agent
/// refuses or cannot be reached.
fn stop_for_upgrade(c: &Ctx) -> Result<()> {
    let process = c.unit.main_pid().map(Process::open);
    if let Err(e) = c.agent.stop_for_upgrade() {
        c.log.line(&format!(
            "stop-for-upgrade failed ({e:#}); stopping the unit"
        ));
        return c.unit.stop();
    }
    match process {
        Some(p) if !p.wait_exit(STOP_TIMEOUT) => {
            bail!("the agent did not exit within {STOP_TIMEOUT:?} of stop-for-upgrade")
        }
        Some(_) => Ok(()),
        None => c.unit.wait_inactive(STOP_TIMEOUT),
    }
}

/// Leaves the agent as it was before `prepare`: no marker, no record of its
/// own (an earlier one is kept), started again if `prepare` stopped it, or
/// taking work again if it was only quiesced.
fn undo_prepare(c: &Ctx, was_active: bool, own_record: bool) {
    if let Ok(Some(Record {
        migrated_down: true,
        snapshot: Some(name),
        ..
    })) = Record::load(&c.m.record_path())
    {
        if let Err(e) = c.restore(&name) {
            c.log.line(&format!("warning: {e:#}"));
        }
    }
    if let Err(e) = c.remove_marker() {
        c.log.line(&format!("warning: {e:#}"));
    }
    if own_record {
        if let Err(e) = Record::remove(&c.m.record_path()) {
            c.log.line(&format!("warning: {e:#}"));
        }
    }
    if !was_active {
        return;
    }
    // An agent that just exited may still look active to systemd for a
    // moment: if it does not take the resume, it is started.
    let outcome = if c.unit.is_active() && c.agent.resume().is_ok() {
        Ok(())
    } else {
        c.unit.reset_failed();
        c.unit.restart()
    };
    match outcome {
        Ok(()) => c.log.line(&format!("the agent runs {} again", c.m.version)),
        Err(e) => c
            .log
            .line(&format!("warning: could not restart the agent: {e:#}")),
    }
}

/// Stop the outgoing agent if `prepare` left it running and retake the
/// snapshot, migrate up if needed, verify, start once if it ran before,
/// check health; on failure restore the snapshot and leave the agent
/// stopped behind the marker, with the cause in the log and the error.
pub fn finish(m: &PackageManifest, previous: Option<&str>) -> Result<()> {
    let c = Ctx::new(m, "finish")?;
    let mut record = Record::load(&m.record_path())?;
    let start = match &record {
        Some(r) => {
            c.log.line(&format!(
                "finishing {} {} -> {} (schema {:?} -> {})",
                m.name,
                r.from_version.as_deref().unwrap_or("(predates ferry)"),
                m.version,
                r.from_schema,
                m.schema
            ));
            adopt_fallback_snapshot(&c, r);
            r.was_running.unwrap_or_else(|| c.unit.is_enabled())
        }
        None => {
            c.log.line(&format!(
                "installing {} {}{}",
                m.name,
                m.version,
                previous.map_or(String::new(), |p| format!(" (after {p}, nothing prepared)"))
            ));
            c.unit.is_enabled()
        }
    };
    match finish_steps(&c, record.as_mut(), start) {
        Ok(()) => {
            Record::remove(&m.record_path())?;
            c.prune(None);
            c.log.line("done");
            Ok(())
        }
        Err(cause) => Err(roll_back(&c, record, start, cause)),
    }
}

fn adopt_fallback_snapshot(c: &Ctx, r: &Record) {
    if !r.fallback {
        return;
    }
    // The shell fallback cannot append to the log safely (the log's
    // directory is the agent's user's): its step is written here.
    c.log.line(&format!(
        "fallback prepare for {} (no hook program was installed): the package scripts stopped the agent and copied the state to snapshot {}",
        c.m.version,
        r.snapshot.as_deref().unwrap_or("(none: there was no state directory)")
    ));
    let Some(name) = r.snapshot.as_deref() else {
        return;
    };
    let path = c.m.snapshots_dir().join(name);
    if confined::trusted_exists(&path.join(snapshot::MANIFEST)) {
        return;
    }
    let label = Label {
        package: c.m.name.clone(),
        version: "(predates ferry)".into(),
        schema: None,
        reason: "copied by the package scripts: the installed version had no hook".into(),
    };
    match snapshot::adopt(&path, &label) {
        Ok(()) => c
            .log
            .line(&format!("checksummed the fallback snapshot {name}")),
        Err(e) => c
            .log
            .line(&format!("warning: fallback snapshot {name}: {e:#}")),
    }
}

fn finish_steps(c: &Ctx, record: Option<&mut Record>, start: bool) -> Result<()> {
    // Checked first, while an agent left running still answers: the state's
    // schema cannot change under a quiesced agent, and the new agent checks
    // the state again when it loads it.
    let mut check = c.agent.check()?;
    c.unit.reset_failed();
    let superseded = match record.filter(|r| r.quiesced_only) {
        Some(r) => stop_outgoing(c, r)?,
        None => Vec::new(),
    };
    if !c.skip_migration() {
        match check.schema {
            Some(s) if s < c.m.schema && check.ok => {
                c.log.line(&format!(
                    "migrating the state up from schema {s} to {} with {} {}",
                    c.m.schema, c.m.agent, c.m.version
                ));
                c.agent.migrate(c.m.schema)?;
                check = c.agent.check()?;
            }
            _ => {}
        }
    }
    if !check.ok {
        bail!("the state does not verify: {}", check.error);
    }
    c.log
        .line(&format!("state verified (schema {:?})", check.schema));
    c.remove_marker()?;
    if !Systemd::running() {
        c.log
            .line("systemd is not running here: the agent is not started");
    } else if start {
        c.start_and_check()?;
    } else {
        c.log.line(&format!(
            "{} is not started: it was not running before (stopped or disabled by the admin)",
            c.m.unit
        ));
    }
    // Only now: removing thousands of files must not keep the agent down.
    c.drop_snapshots(superseded)
}

/// Stops the agent `prepare` left running and retakes the snapshot, since
/// the agent kept what arrived while quiesced; from here on the record
/// reads as if `prepare` had stopped it. Returns the superseded snapshots,
/// for `finish` to remove once the agent runs again.
///
/// The agent does not answer from its stop to the new agent's start: only
/// the retake is in that gap. When the descriptor names live data (`[state]
/// live`: what the software the agent deployed writes, which runs on
/// through the upgrade), that data is snapshotted before the stop, while the
/// agent still answers, quiesced, and the retake after the stop reads only
/// the agent's own files and moves the live data from it (one rename per
/// name). The live data is then as of just before the stop: the software
/// writing it does not stop, so no later moment would hold it still either.
fn stop_outgoing(c: &Ctx, record: &mut Record) -> Result<Vec<String>> {
    let active = c.unit.is_active();
    let early = match active && !c.m.state_live.is_empty() && record.snapshot.is_some() {
        true => c.resnapshot(record, "before the agent stops", None)?,
        false => None,
    };
    let retaken = (|| {
        if active {
            c.log.line(&format!(
                "stopping the outgoing agent {} for upgrade (the machine is not announced as gone)",
                record.from_version.as_deref().unwrap_or("?")
            ));
            stop_for_upgrade(c)?;
        }
        c.resnapshot(record, "once the agent stopped", early.as_deref())
    })();
    let retaken = match retaken {
        Ok(r) => r,
        Err(e) => {
            // Recorded nowhere (and, once its live data moved, incomplete).
            let _ = c.drop_snapshots(early.into_iter().collect());
            return Err(e);
        }
    };
    let superseded = record.snapshot.take().into_iter().chain(early).collect();
    record.snapshot = retaken;
    record.quiesced_only = false;
    record.save(&c.m.record_path())?;
    Ok(superseded)
}

/// Stops the failed agent, restores the snapshot taken before the upgrade,
/// and leaves the marker so nothing starts this version on it until the
/// admin installs the previous version or a fixed one.
fn roll_back(
    c: &Ctx,
    record: Option<Record>,
    was_running: bool,
    cause: anyhow::Error,
) -> anyhow::Error {
    c.log.line(&format!("FAILED: {cause:#}"));
    // Still set when the failure came before the outgoing agent stopped:
    // nothing touched the state, and the snapshot may be older than it.
    let untouched = record.as_ref().is_some_and(|r| r.quiesced_only);
    c.stop_socket();
    let stopped = if untouched && c.unit.is_active() {
        stop_for_upgrade(c)
    } else {
        c.unit.stop()
    };
    if let Err(e) = stopped {
        c.log.line(&format!("warning: {e:#}"));
    }
    let Some(mut record) = record else {
        return cause.context(format!(
            "{} {} did not start; see {}",
            c.m.name, c.m.version, c.m.log_file
        ));
    };
    let restored = match record.snapshot.as_deref() {
        _ if untouched => {
            "the state was not changed (the upgrade failed before the outgoing agent stopped)"
                .into()
        }
        Some(name) => match c.restore(name) {
            Ok(()) => format!("the state was restored from snapshot {name}"),
            Err(e) => {
                c.log.line(&format!("NOT restored: {e:#}"));
                format!("the snapshot was NOT restored ({e:#}); the state is as the failed step left it")
            }
        },
        None => "there was no snapshot to restore".into(),
    };
    let previous = record
        .from_version
        .clone()
        .unwrap_or_else(|| "the previous version".into());
    let advice = format!(
        "{restored}; {} is stopped. Install {previous} again (apt-get install --allow-downgrades {}={previous}... / dnf downgrade {}) or a fixed version; see {}",
        c.m.unit, c.m.name, c.m.name, c.m.log_file
    );
    let _ = c.write_marker(&format!(
        "upgrade of {} to {} FAILED: {cause:#}; {advice}",
        c.m.name, c.m.version
    ));
    record.status = "failed".into();
    record.failure = Some(format!("{cause:#}"));
    record.was_running = Some(was_running);
    if let Err(e) = record.save(&c.m.record_path()) {
        c.log.line(&format!("warning: {e:#}"));
    }
    c.log.line(&advice);
    cause.context(format!(
        "upgrade of {} to {} failed; {advice}",
        c.m.name, c.m.version
    ))
}

/// Undoes a `prepare` whose upgrade the package manager abandoned: the
/// snapshot is put back if the state was migrated down, the marker goes,
/// and the agent takes work again if it was left running, or starts again
/// if it ran.
pub fn abort(m: &PackageManifest) -> Result<()> {
    let c = Ctx::new(m, "abort")?;
    let Some(record) = Record::load(&m.record_path())? else {
        c.log.line("no upgrade was prepared: nothing to undo");
        return Ok(());
    };
    c.log.line(&format!(
        "the upgrade to {} was abandoned: undoing its preparation",
        record.to_version
    ));
    if let (true, Some(name)) = (record.migrated_down, record.snapshot.as_deref()) {
        c.restore(name)?;
    }
    c.remove_marker()?;
    Record::remove(&m.record_path())?;
    if record.quiesced_only && c.unit.is_active() {
        c.agent.resume()?;
        c.log
            .line(&format!("the agent runs {} again, taking work", m.version));
    } else if record.was_running == Some(true)
        || (record.was_running.is_none() && c.unit.is_enabled())
    {
        c.unit.reset_failed();
        c.start_and_check()?;
    }
    c.log.line("undone");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_hook::snapshot::DATA;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferry-hook-steps-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A state file of schema 4 holding a migration lock, as roboconf-agent
    /// writes it (header line, then the payload).
    const LOCKED_STATE: &str = concat!(
        r#"{"format":"roboconf-agent-state","schema":4,"written_by":"1.5.0","sha256":"-"}"#,
        "\n",
        r#"{"roots":[],"queue":[],"next_id":1,"lock":{"id":"mig-7","application":"shop","since":1,"by":"alice","reason":"new DM","steps":[]}}"#,
        "\n"
    );

    /// The package of `version` (schema 4) in `root`, whose agent program
    /// is a script: it answers `state migrate --to 3 --dry-run` as
    /// roboconf-agent does while a migration lock is held, and writes every
    /// command it is given to `root/calls`.
    fn locked_package(root: &Path) -> PackageManifest {
        let state = root.join("state");
        fs::create_dir_all(&state).unwrap();
        fs::write(state.join("state.json"), LOCKED_STATE).unwrap();
        let agent = root.join("agent");
        fs::write(
            &agent,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$*\" in\n*'state migrate --to 3 --dry-run')\n  \
                 echo 'roboconf-agent: error: migration failed, state unchanged: migrating 4 -> 3: the state holds \
                 the migration lock `mig-7` of application shop (taken by alice at unix time 1: new DM), and schema \
                 3 cannot hold a migration lock' >&2\n  exit 1;;\nesac\nexit 99\n",
                root.join("calls").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
        let path = |p: &str| root.join(p).display().to_string();
        PackageManifest {
            format: "ferry-package".into(),
            hook_protocol: ferry_hook::package::HOOK_PROTOCOL,
            name: "lock-test-agent".into(),
            version: "1.5.0".into(),
            schema: 4,
            agent: agent.display().to_string(),
            user: "root".into(),
            group: "root".into(),
            unit: "ferry-lock-test-no-such.service".into(),
            socket: None,
            state_dir: path("state"),
            state_live: Vec::new(),
            config_dir: path("etc"),
            runtime_dir: path("run"),
            log_file: path("log/upgrades.log"),
            skip_migration_file: path("etc/ferry-skip-migration"),
            work_dir: path("ferry"),
            keep_snapshots: 3,
            quiesce_timeout_secs: 5,
            health_timeout_secs: 5,
        }
    }

    /// A downgrade to a schema that cannot hold the state (here: a
    /// migration lock) is refused by the outgoing hook before anything
    /// changes, as a busy agent refuses an upgrade: no quiesce, record,
    /// marker, stop or snapshot, and the refusal names the lock in the log.
    #[test]
    fn a_downgrade_below_what_the_state_holds_is_refused_before_anything_changes() {
        let root = scratch("refused");
        let m = locked_package(&root);
        let incoming = Incoming {
            version: "1.4.0".into(),
            schema: 3,
            protocol: 2,
        };
        let err = format!("{:#}", prepare(&m, &incoming).unwrap_err());
        for needle in [
            "refusing to downgrade lock-test-agent to 1.4.0 (schema 3)",
            "cannot go down from schema 4",
            "migration lock `mig-7` of application shop (taken by alice",
            "lock-test-agent 1.5.0 stays installed with its state untouched",
        ] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        let calls = fs::read_to_string(root.join("calls")).unwrap();
        assert_eq!(
            calls
                .lines()
                .map(|l| l.split(" --runtime-dir ").nth(1).unwrap())
                .collect::<Vec<_>>(),
            [format!("{} state migrate --to 3 --dry-run", m.runtime_dir)],
            "the agent was asked nothing else"
        );
        assert!(!m.record_path().exists(), "no upgrade record");
        assert!(!m.snapshots_dir().exists(), "no snapshot");
        assert_eq!(
            fs::read_dir(&m.state_dir).unwrap().count(),
            1,
            "no marker: the state directory holds its state file only"
        );
        let log = fs::read_to_string(&m.log_file).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("prepare: refusing to downgrade") && l.contains("`mig-7`")),
            "{log}"
        );
        fs::remove_dir_all(root).unwrap();
    }

    /// The lock is part of the state file: the snapshot an upgrade takes
    /// holds it, and a restore (a failed upgrade's rollback) puts it back
    /// byte for byte.
    #[test]
    fn the_lock_survives_a_snapshot_and_its_restore() {
        let root = scratch("snapshot");
        let m = locked_package(&root);
        let state = Path::new(&m.state_dir);
        let label = Label {
            package: m.name.clone(),
            version: m.version.clone(),
            schema: Some(4),
            reason: "test".into(),
        };
        let snap = snapshot::create(state, &m.snapshots_dir(), &label, &[MARKER]).unwrap();
        assert_eq!(
            fs::read_to_string(snap.path.join(DATA).join("state.json")).unwrap(),
            LOCKED_STATE
        );
        // A failed upgrade changed the state (its lock gone), then rolls back.
        fs::write(state.join("state.json"), "changed\n").unwrap();
        snapshot::restore(&snap.path, state).unwrap();
        let restored = fs::read_to_string(state.join("state.json")).unwrap();
        assert_eq!(restored, LOCKED_STATE);
        let payload: serde_json::Value =
            serde_json::from_str(restored.split_once('\n').unwrap().1).unwrap();
        assert_eq!(payload["lock"]["id"], "mig-7");
        fs::remove_dir_all(root).unwrap();
    }
}
