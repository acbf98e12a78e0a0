//! `ferry migration perform`, and the way back a `cancel` takes after one:
//! the plan (plan.rs) is fixed and journalled before anything changes, then
//! each step is recorded as running, done, and the journal written between,
//! so a perform killed at any point runs the same plan on from the step it
//! was in (every step is idempotent: it looks at what is there first).
//!
//! The agent is asked, as its own user, for every lifecycle step, with the
//! lock's id (docs/AGENT.md); the package moves through apt or dnf, whose
//! scripts (ferry's hooks) carry the state; a `smart` migration script runs
//! as the agent's user. Root never enters the agent's directories.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferry_hook::package::{compare_versions, PackageManifest};
use ferry_hook::system::{Agent, Systemd};
use serde_json::Value;

use super::hold::Hold;
use super::journal::{Journal, Perform, Purpose, Store};
use super::plan::{self, Components, PlanStep, Strategy, Target, LOCK_SCHEMA};
use super::{now, partial};
use crate::exit::refused;

/// The longest a lifecycle step may take (a recipe's own timeout is the
/// agent's, 300 s by default).
const STEP_WAIT_SECS: u64 = 900;

/// What `perform` is asked for.
pub struct Request {
    pub package: String,
    pub to: String,
    pub strategy: Strategy,
    pub components: Option<PathBuf>,
    /// Go on without asking.
    pub yes: bool,
    /// Show the plan, change nothing.
    pub dry_run: bool,
}

/// What the steps need: the package, the agent, the package manager.
pub struct Ctx<'a> {
    pub m: &'a PackageManifest,
    pub agent: Agent<'a>,
    pub hold: Hold,
    pub store: &'a Store,
}

/// Plans (or resumes) the perform, asks for confirmation, runs it.
pub fn perform(c: &Ctx, j: &mut Journal, req: &Request) -> Result<Vec<String>> {
    let mut did = Vec::new();
    match j.perform.last() {
        Some(p) if p.purpose == Purpose::Cancel => {
            return Err(refused(anyhow!(
                "the migration {} is being cancelled ({}): run `ferry migration cancel` again",
                j.describe(),
                p.at()
            )))
        }
        Some(p) if !same_version(&p.to_version, &req.to) || p.strategy != req.strategy => {
            return Err(refused(anyhow!(
                "the migration {} has performed to {} with --strategy {} ({}): one perform per \
                 migration; run that perform again to resume it, `ferry migration cancel` to go \
                 back to {}, or complete this migration and begin another",
                j.describe(),
                p.to_version,
                p.strategy,
                p.at(),
                j.from_version
            )))
        }
        Some(p) if p.finished() => return Ok(did),
        Some(p) => did.push(format!(
            "resuming the perform to {} at {}",
            p.to_version,
            p.at()
        )),
        None => {
            let p = plan(c, j, req, table(req)?)?;
            did.extend(describe(&p));
            if req.dry_run {
                j.perform.push(p);
                return Ok(did);
            }
            confirm(&p, &did, req.yes)?;
            j.perform.push(p);
            c.store.write(j)?;
        }
    }
    if req.dry_run {
        return Ok(did);
    }
    run(c, j, &mut did)?;
    Ok(did)
}

/// The `--components` table of a new smart perform (a resumed perform has
/// its table in the journal).
fn table(req: &Request) -> Result<Components> {
    Ok(match (&req.components, req.strategy) {
        (Some(path), Strategy::Smart) => Components::read(path)?,
        (None, Strategy::Smart) => {
            return Err(refused(anyhow!(
                "--strategy smart needs --components FILE, the table of what to do with each \
                 component (docs/MIGRATION.md)"
            )))
        }
        (Some(_), _) => {
            return Err(refused(anyhow!(
                "--components is read by --strategy smart only"
            )))
        }
        (None, _) => Components::default(),
    })
}

/// `1.1.0` and `1.1.0-1` name the same version of a package.
fn same_version(planned: &str, asked: &str) -> bool {
    planned == asked || asked.rsplit_once('-').map(|(u, _)| u) == Some(planned)
}

fn plan(c: &Ctx, j: &Journal, req: &Request, components: Components) -> Result<Perform> {
    let status = c
        .agent
        .status()
        .context("the agent must answer to plan a perform: start its unit")?;
    if status["lock"]["id"].as_str() != Some(&j.id) {
        return Err(refused(anyhow!(
            "the agent does not hold the migration lock `{}` (it reports {}): run `ferry \
             migration initialize --id {} --app {}` to take it again",
            j.id,
            status["lock"],
            j.id,
            j.app
        )));
    }
    let tree = plan::instances(&status)?;
    let (to_version, to_schema, package_file) = if same_version(&c.m.version, &req.to) {
        (c.m.version.clone(), c.m.schema, None)
    } else {
        let file = c
            .hold
            .download(&j.package, &req.to, &c.store.target_dir()?)
            .map_err(refused)?;
        let target = manifest_in(&file, &j.package)?;
        (
            target.version,
            target.schema,
            Some(file.display().to_string()),
        )
    };
    let steps = plan::steps(
        req.strategy,
        &components,
        &tree,
        &Target {
            version: &to_version,
            schema: to_schema,
            tree: &tree,
            agent_stopped: false,
        },
    )?;
    Ok(Perform {
        purpose: Purpose::Perform,
        direction: direction(&to_version, &c.m.version).into(),
        to_version,
        to_schema,
        strategy: req.strategy,
        components,
        package_file,
        tree,
        steps,
        done: 0,
        running: None,
        began: now(),
        ended: None,
    })
}

fn direction(to: &str, from: &str) -> &'static str {
    match compare_versions(to, from) {
        std::cmp::Ordering::Greater => "forward",
        std::cmp::Ordering::Less => "backward",
        std::cmp::Ordering::Equal => "same",
    }
}

/// The ferry manifest inside a package file: the version and the state
/// schema it brings.
fn manifest_in(file: &Path, package: &str) -> Result<PackageManifest> {
    let inside = format!(".{}", PackageManifest::path_for(package));
    let bytes = crate::repo::inspect::payload_file(file, &inside)
        .map_err(|e| refused(e.context(format!("{package}'s target is not a ferry package"))))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: {inside} is not a ferry manifest", file.display()))
}

/// The plan in words, as `perform` shows it before asking.
pub fn describe(p: &Perform) -> Vec<String> {
    let mut out = vec![format!(
        "{} to {} ({}; the state goes to schema {}), strategy {}, {} instance(s):",
        match p.purpose {
            Purpose::Perform => "perform",
            Purpose::Cancel => "cancel: back",
        },
        p.to_version,
        p.direction,
        p.to_schema,
        p.strategy,
        p.tree.len()
    )];
    out.extend(
        p.steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("  {}. {s}", i + 1)),
    );
    out
}

fn confirm(p: &Perform, plan: &[String], yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(refused(anyhow!(
            "the perform to {} changes the agent{}: confirm it on a terminal, or pass --yes \
             (nothing changed; --dry-run shows the plan)",
            p.to_version,
            if p.steps.len() > 2 {
                " and its instances"
            } else {
                ""
            }
        )));
    }
    for line in plan {
        eprintln!("{line}");
    }
    eprint!("Perform it? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(refused(anyhow!("not confirmed: nothing changed")))
    }
}

/// Runs the last perform of the journal from where it stands, writing the
/// journal before and after each step.
pub fn run(c: &Ctx, j: &mut Journal, did: &mut Vec<String>) -> Result<()> {
    let k = j.perform.len() - 1;
    while !j.perform[k].finished() {
        let i = j.perform[k].done;
        j.perform[k].running = Some(i);
        c.store.write(j)?;
        let step = j.perform[k].steps[i].clone();
        let said = execute(c, j, k, &step).map_err(|e| stopped(e, j, k, did))?;
        did.push(format!("{}. {step}: {said}", i + 1));
        let p = &mut j.perform[k];
        p.done = i + 1;
        p.running = None;
        if p.finished() {
            p.ended = Some(now());
        }
        c.store.write(j)?;
    }
    Ok(())
}

fn stopped(e: anyhow::Error, j: &Journal, k: usize, did: &[String]) -> anyhow::Error {
    let p = &j.perform[k];
    let mut then = format!(
        "the {} stopped at {}: run `{}` again to resume it",
        p.verb(),
        p.at(),
        p.resume_command()
    );
    if p.purpose == Purpose::Perform {
        then.push_str(&format!(
            ", or `ferry migration cancel` to go back to {}",
            j.from_version
        ));
    }
    partial(e, j, did, &then)
}

fn execute(c: &Ctx, j: &mut Journal, k: usize, step: &PlanStep) -> Result<String> {
    match step {
        PlanStep::Retire { path } => retire(c, &j.id, path),
        PlanStep::StopAgent => stop_agent(c, &j.id),
        PlanStep::Move { version } => move_package(c, j, k, version),
        PlanStep::Check => check(c, j, k),
        PlanStep::Script {
            path,
            component,
            script,
        } => run_script(c, j, k, path, component, script),
        PlanStep::Restore { path, state } => restore(c, &j.id, path, state),
        PlanStep::StartAgent => start_agent(c),
    }
}

/// The instance's state once none of the migration's steps is queued and
/// it is not transitional (a step a killed perform queued finishes first);
/// None when the instance does not exist.
fn settled(c: &Ctx, path: &str) -> Result<Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(STEP_WAIT_SECS);
    loop {
        let s = c.agent.status()?;
        let queued = s["lock"]["steps"].as_array().map_or(0, Vec::len);
        let state = s["instances"]
            .as_array()
            .and_then(|l| l.iter().find(|i| i["path"] == path))
            .map(|i| i["state"].as_str().unwrap_or_default().to_string());
        if queued == 0 && state.as_deref().is_none_or(plan::is_stable) {
            return Ok(state);
        }
        if Instant::now() > deadline {
            bail!(
                "{path} is {state:?} with {queued} step(s) of the migration still queued after \
                 {STEP_WAIT_SECS} s: see the agent's log"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One lifecycle step of the migration; a failed recipe's error carries
/// the last lines it wrote (the agent keeps them with the `PROBLEM`).
fn apply(c: &Ctx, id: &str, action: &str, path: &str) -> Result<()> {
    c.agent
        .apply(id, action, path, STEP_WAIT_SECS)
        .map(drop)
        .map_err(|e| {
            let output = c.agent.status().ok().and_then(|s| {
                s["instances"]
                    .as_array()?
                    .iter()
                    .find(|i| i["path"] == path)?["problem"]["output"]
                    .as_array()
                    .map(|lines| {
                        lines
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
            });
            match output {
                Some(o) if !o.is_empty() => anyhow!("{e:#}; its recipe said:\n{o}"),
                _ => e,
            }
        })
}

fn retire(c: &Ctx, id: &str, path: &str) -> Result<String> {
    let mut did: Vec<&str> = Vec::new();
    for _ in 0..4 {
        let action = match settled(c, path)?.as_deref() {
            None => return Ok("not in the tree any more".into()),
            Some("NOT_DEPLOYED") if did.is_empty() => return Ok("already not deployed".into()),
            Some("NOT_DEPLOYED") => return Ok(did.join(", ")),
            Some("DEPLOYED_STARTED" | "WAITING_FOR_ANCESTOR") => "stop",
            Some(_) => "undeploy",
        };
        apply(c, id, action, path)?;
        did.push(if action == "stop" {
            "stopped"
        } else {
            "undeployed"
        });
    }
    bail!("{path} is still deployed after {}", did.join(", "))
}

fn restore(c: &Ctx, id: &str, path: &str, target: &str) -> Result<String> {
    let mut did: Vec<&str> = Vec::new();
    for _ in 0..4 {
        let now = settled(c, path)?
            .with_context(|| format!("{path} is not in the agent's tree any more"))?;
        if now == target {
            return Ok(if did.is_empty() {
                format!("already {target}")
            } else {
                did.join(", ")
            });
        }
        let action = match (now.as_str(), target) {
            ("NOT_DEPLOYED" | "PROBLEM", _) => "deploy",
            ("DEPLOYED_STOPPED", "DEPLOYED_STARTED" | "WAITING_FOR_ANCESTOR") => "start",
            _ => bail!(
                "{path} is {now}, and the migration cannot bring it to {target}: bring it there \
                 with `ctl apply --lock-id {id}` and perform again"
            ),
        };
        apply(c, id, action, path)?;
        did.push(if action == "deploy" {
            "deployed"
        } else {
            "started"
        });
    }
    bail!("{path} is not {target} after {}", did.join(", "))
}

/// The target cannot hold the lock: the agent is quiesced (what the lock
/// held stays queued), its lock released (the state can then go down),
/// its socket stopped first (no connection starts it again), the agent
/// stopped for upgrade (it is not announced as gone), and both units
/// masked, so that nothing runs it until `complete` or `cancel`.
fn stop_agent(c: &Ctx, id: &str) -> Result<String> {
    let unit = Systemd::new(&c.m.unit);
    let socket = c.m.socket.as_deref().map(Systemd::new);
    let mut did = Vec::new();
    if unit.is_active() {
        c.agent.quiesce(c.m.quiesce_timeout_secs)?;
        if !c.agent.unlock(id)?["released"].is_null() {
            did.push(format!("the lock `{id}` is kept in ferry's journal"));
        }
    }
    if let Some(s) = &socket {
        s.stop()?;
    }
    if unit.is_active() {
        c.agent.stop_for_upgrade()?;
        did.push("the agent stopped for upgrade".to_string());
    }
    unit.stop()?;
    unit.mask()?;
    if let Some(s) = &socket {
        s.mask()?;
    }
    did.push(format!(
        "{} masked until `ferry migration complete` or `cancel`",
        c.m.socket
            .as_deref()
            .map_or(c.m.unit.clone(), |s| format!("{} and {s}", c.m.unit))
    ));
    Ok(did.join("; "))
}

pub fn start_agent(c: &Ctx) -> Result<String> {
    let unit = Systemd::new(&c.m.unit);
    unit.unmask()?;
    if let Some(s) = c.m.socket.as_deref().map(Systemd::new) {
        s.unmask()?;
        s.start()?;
    }
    unit.reset_failed();
    unit.start()?;
    Ok(format!("{} unmasked and started", c.m.unit))
}

fn installed(package: &str) -> Result<PackageManifest> {
    PackageManifest::read(Path::new(&PackageManifest::path_for(package)))
}

fn move_package(c: &Ctx, j: &Journal, k: usize, version: &str) -> Result<String> {
    let before = installed(&j.package)?;
    if before.version == version {
        // Also after a kill while the package manager ran: it finished.
        renew_hold(c, j)?;
        return Ok(format!("{} {version} is installed", j.package));
    }
    let file = j.perform[k]
        .package_file
        .as_deref()
        .with_context(|| format!("the plan names no package file of {version}"))?;
    let backward = compare_versions(version, &before.version) == std::cmp::Ordering::Less;
    c.hold.install(Path::new(file), backward).with_context(|| {
        format!(
            "the package manager did not install {file}; the upgrade log {} says what the \
             hooks did",
            c.m.log_file
        )
    })?;
    renew_hold(c, j)?;
    let after = installed(&j.package)?;
    if after.version != version {
        bail!(
            "{} {} is installed after the package manager ran, not {version}: see {}",
            j.package,
            after.version,
            c.m.log_file
        );
    }
    Ok(format!(
        "{} {} -> {version} ({})",
        j.package,
        before.version,
        c.hold.how_installed()
    ))
}

/// The hold, taken again on the version now installed: the migration's
/// own always; one set before the migration only where installing a
/// package file dropped it (apt), never moved to another version (a dnf
/// versionlock set by someone else names the version they chose).
fn renew_hold(c: &Ctx, j: &Journal) -> Result<()> {
    match (j.hold_before, &c.hold) {
        (Some(false), _) => c.hold.renew(&j.package),
        (Some(true), Hold::Apt) => c.hold.hold(&j.package),
        _ => Ok(()),
    }
}

/// The package is the target's; the agent answers as it and holds the
/// migration's lock (taken again if a stopped perform left it released),
/// or, stopped by the plan, stays stopped and masked.
fn check(c: &Ctx, j: &Journal, k: usize) -> Result<String> {
    let p = &j.perform[k];
    let now = installed(&j.package)?;
    if now.version != p.to_version {
        bail!(
            "{} {} is installed, not {}",
            j.package,
            now.version,
            p.to_version
        );
    }
    let unit = Systemd::new(&c.m.unit);
    if j.agent_stopped() {
        if unit.is_active() || !unit.is_masked() {
            bail!(
                "{} should be stopped and masked while its migration lock is in ferry's journal, \
                 and it is {}: stop and mask it (`systemctl mask --now {}`)",
                c.m.unit,
                unit.active_state(),
                c.m.unit
            );
        }
        return Ok(format!(
            "{} {} installed; the agent stays stopped and masked, the lock `{}` in ferry's journal",
            j.package, p.to_version, j.id
        ));
    }
    let status = answering(c, &p.to_version)?;
    if p.to_schema < LOCK_SCHEMA {
        return Ok(format!("the agent answers as {}", p.to_version));
    }
    match status["lock"]["id"].as_str() {
        Some(id) if id == j.id => Ok(format!(
            "the agent answers as {}, holding the lock `{}`",
            p.to_version, j.id
        )),
        None => {
            c.agent.lock(&j.id, &j.app, &j.by, &j.reason)?;
            Ok(format!(
                "the agent answers as {}; its lock `{}` taken again",
                p.to_version, j.id
            ))
        }
        Some(other) => bail!(
            "the agent answers as {}, holding another migration lock `{other}`",
            p.to_version
        ),
    }
}

/// The agent's status once it answers as `version` (within the package's
/// health timeout).
fn answering(c: &Ctx, version: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(c.m.health_timeout_secs.max(10));
    loop {
        let last = match c.agent.status() {
            Ok(s) if s["version"] == version => return Ok(s),
            Ok(s) => format!("it answers as {}", s["version"]),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("the agent does not answer as {version}: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs a `smart` migration script for one instance as the agent's user,
/// with the environment a recipe gets (docs/AGENT.md) and step `migrate`,
/// in the instance's work directory (entered as that user, never by root).
fn run_script(
    c: &Ctx,
    j: &Journal,
    k: usize,
    path: &str,
    component: &str,
    script: &Path,
) -> Result<String> {
    let status = c.agent.status()?;
    let p = &j.perform[k];
    let from = match k {
        0 => j.from_version.clone(),
        _ => j.perform[k - 1].to_version.clone(),
    };
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let mut command = Command::new("/bin/sh");
    command
        .args([
            "-c",
            r#"mkdir -p -- "$ROBOCONF_WORK_DIR" && cd -- "$ROBOCONF_WORK_DIR" && exec "$0""#,
        ])
        .arg(script)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        )
        .env("LANG", "C.UTF-8")
        .env(
            "ROBOCONF_APPLICATION",
            status["application"].as_str().unwrap_or_default(),
        )
        .env(
            "ROBOCONF_SCOPED_INSTANCE_PATH",
            status["scoped_instance_path"].as_str().unwrap_or_default(),
        )
        .env("ROBOCONF_INSTANCE_PATH", path)
        .env("ROBOCONF_INSTANCE_NAME", name)
        .env("ROBOCONF_PARENT_PATH", parent)
        .env("ROBOCONF_COMPONENT", component)
        .env("ROBOCONF_STEP", "migrate")
        .env("ROBOCONF_WORK_DIR", format!("{}/work{path}", c.m.state_dir))
        .env("ROBOCONF_AGENT", &c.m.agent)
        .env("ROBOCONF_AGENT_STATE_DIR", &c.m.state_dir)
        .env("ROBOCONF_AGENT_RUNTIME_DIR", &c.m.runtime_dir)
        .env("FERRY_MIGRATION_ID", &j.id)
        .env("FERRY_MIGRATION_FROM_VERSION", &from)
        .env("FERRY_MIGRATION_TO_VERSION", &p.to_version)
        .env("FERRY_MIGRATION_DIRECTION", &p.direction)
        .stdin(Stdio::null());
    c.agent.account().run_as(&mut command);
    let out = command
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .map(String::from)
        .collect();
    for line in &lines {
        eprintln!("[migrate {path}] {line}");
    }
    if !out.status.success() {
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        bail!(
            "{} for {path} failed ({}); it said:\n{tail}",
            script.display(),
            out.status
        );
    }
    Ok(format!(
        "ran as {} ({} line(s) of output)",
        c.agent.account().name,
        lines.len()
    ))
}

/// Plans the way back of a `cancel` after a perform (or resumes it): the
/// from-version's package (kept by `initialize`, or from the repository),
/// the same strategy, and the tree as it was before the perform.
pub fn plan_back(c: &Ctx, j: &mut Journal) -> Result<Vec<String>> {
    let Some(forward) = j.perform.last().cloned() else {
        return Ok(Vec::new());
    };
    if forward.purpose == Purpose::Cancel {
        return Ok(vec![format!("resuming the cancel at {}", forward.at())]);
    }
    let stopped = j.agent_stopped();
    let now_tree = if stopped {
        Vec::new()
    } else {
        plan::instances(
            &c.agent
                .status()
                .context("the agent must answer to plan the way back")?,
        )?
    };
    let installed_now = installed(&j.package)?;
    let package_file = if installed_now.version == j.from_version {
        None
    } else if let Some(kept) = &j.package_file {
        Some(kept.clone())
    } else {
        let file = c
            .hold
            .download(&j.package, &j.from_version, &c.store.target_dir()?)
            .context(
                "initialize kept no package file of the from-version, and no repository offers it",
            )?;
        Some(file.display().to_string())
    };
    let steps = plan::steps(
        forward.strategy,
        &forward.components,
        &now_tree,
        &Target {
            version: &j.from_version,
            schema: j.from_schema,
            tree: &forward.tree,
            agent_stopped: stopped,
        },
    )?;
    let back = Perform {
        purpose: Purpose::Cancel,
        direction: direction(&j.from_version, &installed_now.version).into(),
        to_version: j.from_version.clone(),
        to_schema: j.from_schema,
        strategy: forward.strategy,
        components: forward.components.clone(),
        package_file,
        tree: forward.tree.clone(),
        steps,
        done: 0,
        running: None,
        began: now(),
        ended: None,
    };
    let said = describe(&back);
    j.perform.push(back);
    c.store.write(j)?;
    Ok(said)
}
