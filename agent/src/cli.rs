//! Command line: the flags and subcommands, and what each one does.
use crate::build_info::VERSION;
use crate::config::Paths;
use crate::exit::{Exit, BAD_STATE};
use crate::migrate::{NEWEST, STEPS, WRITES};
use crate::model::Instruction;
use crate::{control, daemon, log, spawn, state};
use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "roboconf-agent", version = VERSION, about = "Roboconf-style agent with durable, versioned state")]
pub struct Cli {
    /// Configuration directory (agent.toml, credentials); never written.
    #[arg(
        long,
        global = true,
        env = "ROBOCONF_AGENT_CONFIG_DIR",
        default_value = "/etc/roboconf-agent"
    )]
    config_dir: PathBuf,
    /// State directory (state.json, work directories, default recipes).
    #[arg(
        long,
        global = true,
        env = "ROBOCONF_AGENT_STATE_DIR",
        default_value = "/var/lib/roboconf-agent"
    )]
    state_dir: PathBuf,
    /// Runtime directory holding the control socket control.sock.
    #[arg(
        long,
        global = true,
        env = "ROBOCONF_AGENT_RUNTIME_DIR",
        default_value = "/run/roboconf-agent"
    )]
    runtime_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent in the foreground (logs to stderr).
    Run,
    /// Talk to the running agent over its control socket.
    Ctl {
        #[command(subcommand)]
        cmd: Ctl,
    },
    /// Offline operations on the state directory (no running agent needed).
    State {
        #[command(subcommand)]
        cmd: StateCmd,
    },
    /// Print the state schema this build writes and the newest it knows.
    Schema {
        #[arg(long)]
        json: bool,
    },
    /// Start or stop a long-running process of an instance outside the agent's cgroup (for recipes).
    Spawn {
        #[command(subcommand)]
        cmd: SpawnCmd,
    },
}

#[derive(Subcommand)]
enum Ctl {
    /// Show version, schema, instances, queue, running recipe, busy/idle, migration lock.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Queue an instruction (refused while a migration lock is held, unless it carries the lock's id).
    Apply {
        /// Wait up to SECS for the instruction to finish, and fail if it failed.
        #[arg(long, value_name = "SECS", global = true)]
        wait: Option<u64>,
        /// The instruction is a step of the migration holding this lock: it runs while the lock is held.
        #[arg(long, value_name = "ID", global = true)]
        lock_id: Option<String>,
        #[command(subcommand)]
        action: Action,
    },
    /// Take the migration lock: until it is released, only instructions carrying its id are taken and
    /// run; what was queued before waits. Prints the agent's JSON answer.
    #[command(
        after_help = "Taking the lock already held (same id) changes nothing; another lock is refused, naming it. \
                      The lock is kept in the state (schema 4), so it survives restarts and upgrades, and a \
                      downgrade to a schema that cannot hold it is refused while it is held."
    )]
    Lock {
        /// The migration's id (1 to 128 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        id: String,
        /// The application being migrated: must be this agent's (agent.toml).
        #[arg(long)]
        application: String,
        /// Who takes the lock (logged and shown in `status`).
        #[arg(long)]
        by: String,
        /// Why (logged and shown in `status`).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Release the migration lock ID; held instructions run again. Prints the agent's JSON answer.
    #[command(
        after_help = "A lock with another id is refused, naming the lock held. `--force --by NAME` breaks \
                      whatever lock is held (a stale one, whose migration is gone): the agent logs who \
                      forced it and the lock it broke."
    )]
    Unlock {
        /// The lock to release (with --force: refused unless it is the lock held).
        #[arg(long, required_unless_present = "force")]
        id: Option<String>,
        /// Break the lock held, whatever its id.
        #[arg(long, requires = "by")]
        force: bool,
        /// Who forces the unlock (logged).
        #[arg(long, requires = "force")]
        by: Option<String>,
    },
    /// Take no new work and wait until no recipe runs; fail naming what runs after SECS.
    Quiesce {
        #[arg(long, value_name = "SECS")]
        timeout: u64,
    },
    /// Take work again after a quiesce.
    Resume,
    /// Persist everything and exit without announcing the machine as gone.
    StopForUpgrade,
}

#[derive(Subcommand)]
enum Action {
    /// Add an instance (NOT_DEPLOYED) under PARENT, or as a root.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        component: String,
        #[arg(long, value_name = "PATH")]
        parent: Option<String>,
    },
    /// Remove a NOT_DEPLOYED instance without children.
    Remove { path: String },
    /// Run the component's deploy recipe.
    Deploy { path: String },
    /// Run the start recipe (or wait for the parent to start).
    Start { path: String },
    /// Run the stop recipe.
    Stop { path: String },
    /// Run the undeploy recipe.
    Undeploy { path: String },
}

#[derive(Subcommand)]
enum StateCmd {
    /// Verify the state file: checksum, schema, writer.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Print the stored state (header fields and payload) as JSON.
    Show,
    /// Migrate the state file to schema N, atomically.
    Migrate {
        #[arg(long, value_name = "N")]
        to: u32,
        /// Only check that the state can be migrated to N (read-only: works while the agent runs).
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum SpawnCmd {
    /// Start CMD as the long-running process NAME (no-op if it runs).
    Start {
        #[arg(long)]
        name: String,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Stop the long-running process NAME (no-op if it does not run).
    Stop {
        #[arg(long)]
        name: String,
    },
}

impl Cli {
    pub fn execute(self) -> Result<()> {
        let paths = Paths {
            config_dir: self.config_dir,
            state_dir: self.state_dir,
            runtime_dir: self.runtime_dir,
        };
        match self.command {
            Cmd::Run => daemon::run(&paths),
            Cmd::Ctl { cmd } => ctl(&paths, cmd),
            Cmd::State {
                cmd: StateCmd::Check { json },
            } => state_check(&paths, json),
            Cmd::State {
                cmd: StateCmd::Show,
            } => state_show(&paths),
            Cmd::State {
                cmd: StateCmd::Migrate { to, dry_run },
            } => state_migrate(&paths, to, dry_run),
            Cmd::Schema { json } => {
                print_schema(json);
                Ok(())
            }
            Cmd::Spawn {
                cmd: SpawnCmd::Start { name, command },
            } => {
                let mode = spawn::start(&paths.state_dir, &name, &command)?;
                println!("{name} runs ({mode:?})");
                Ok(())
            }
            Cmd::Spawn {
                cmd: SpawnCmd::Stop { name },
            } => {
                let mode = spawn::stop(&paths.state_dir, &name)?;
                println!("{name} stopped ({mode:?})");
                Ok(())
            }
        }
    }
}

fn ctl(paths: &Paths, cmd: Ctl) -> Result<()> {
    let (request, waits, json_out) = match cmd {
        Ctl::Status { json } => (json!({"cmd": "status"}), Duration::ZERO, json),
        Ctl::Apply {
            wait,
            lock_id,
            action,
        } => {
            let instruction = instruction(action);
            let mut request =
                json!({"cmd": "apply", "instruction": instruction, "wait_secs": wait});
            if let Some(lock_id) = lock_id {
                request["lock_id"] = json!(lock_id);
            }
            (request, Duration::from_secs(wait.unwrap_or(0)), true)
        }
        Ctl::Lock {
            id,
            application,
            by,
            reason,
        } => (
            json!({"cmd": "lock", "id": id, "application": application, "by": by, "reason": reason}),
            Duration::ZERO,
            true,
        ),
        Ctl::Unlock { id, force, by } => {
            let mut request = json!({"cmd": "unlock"});
            if let Some(id) = id {
                request["id"] = json!(id);
            }
            if force {
                request["force"] = json!(true);
                request["by"] = json!(by);
            }
            (request, Duration::ZERO, true)
        }
        Ctl::Quiesce { timeout } => (
            json!({"cmd": "quiesce", "timeout_secs": timeout}),
            Duration::from_secs(timeout),
            true,
        ),
        Ctl::Resume => (json!({"cmd": "resume"}), Duration::ZERO, true),
        Ctl::StopForUpgrade => (json!({"cmd": "stop_for_upgrade"}), Duration::ZERO, true),
    };
    let answer = control::request(&paths.socket(), request, waits)?;
    if answer["ok"] != json!(true) {
        bail!(
            "the agent refused: {}",
            answer["error"].as_str().unwrap_or("(no error message)")
        );
    }
    if json_out {
        println!("{answer}");
    } else {
        print_status(&answer);
    }
    Ok(())
}

fn instruction(action: Action) -> Instruction {
    match action {
        Action::Add {
            name,
            component,
            parent,
        } => Instruction::Add {
            path: format!(
                "{}/{name}",
                parent.unwrap_or_default().trim_end_matches('/')
            ),
            component,
        },
        Action::Remove { path } => Instruction::Remove { path },
        Action::Deploy { path } => Instruction::Deploy { path },
        Action::Start { path } => Instruction::Start { path },
        Action::Stop { path } => Instruction::Stop { path },
        Action::Undeploy { path } => Instruction::Undeploy { path },
    }
}

fn print_status(s: &Value) {
    println!(
        "roboconf-agent {} (pid {}), state schema {}",
        s["version"].as_str().unwrap_or("?"),
        s["pid"],
        s["schema"]
    );
    println!(
        "application {}, scoped instance {}",
        s["application"].as_str().unwrap_or("?"),
        s["scoped_instance_path"].as_str().unwrap_or("?")
    );
    let running = match &s["running"] {
        Value::Null => "no recipe running".to_string(),
        r => format!(
            "recipe {} of {} running for {}s",
            r["recipe"].as_str().unwrap_or("?"),
            r["instance"].as_str().unwrap_or("?"),
            r["running_secs"]
        ),
    };
    println!(
        "{}: {running}, {} queued, quiesced: {}",
        if s["busy"] == json!(true) {
            "busy"
        } else {
            "idle"
        },
        s["queue_length"],
        s["quiesced"]
    );
    if let Some(lock) = s["lock"].as_object() {
        println!(
            "migration lock {} of application {}, taken by {} at unix time {} ({}): {} instruction(s) held",
            lock["id"].as_str().unwrap_or("?"),
            lock["application"].as_str().unwrap_or("?"),
            lock["by"].as_str().unwrap_or("?"),
            lock["since"],
            lock["reason"].as_str().unwrap_or(""),
            s["held"]
        );
    }
    for i in s["instances"].as_array().into_iter().flatten() {
        println!(
            "  {:<40} {:<20} {}",
            i["path"].as_str().unwrap_or("?"),
            i["component"].as_str().unwrap_or("?"),
            i["state"].as_str().unwrap_or("?")
        );
    }
}

/// With --json, failures are also printed as a JSON object on stdout (with
/// the exit status), so that scripts can parse every outcome.
fn state_check(paths: &Paths, json_out: bool) -> Result<()> {
    let file = state::state_file(&paths.state_dir);
    let marker = paths.state_dir.join(state::UPGRADE_MARKER).exists();
    let loaded = state::load_model(&paths.state_dir);
    let (model, stored) = match loaded {
        Ok(l) => l,
        Err(e) => {
            if json_out {
                let code = e.downcast_ref::<Exit>().map_or(1, |x| x.code);
                println!(
                    "{}",
                    json!({"ok": false, "error": format!("{e:#}"), "exit_code": code, "state_file": file})
                );
            }
            return Err(e);
        }
    };
    let summary = json!({
        "ok": true,
        "state_file": file,
        "schema": stored.as_ref().map(|s| s.schema),
        "written_by": stored.as_ref().map(|s| s.written_by.clone()),
        "sha256": stored.as_ref().map(|s| s.sha256.clone()),
        "instances": model.instances.len(),
        "queue_length": model.queue.len(),
        "upgrade_in_progress": marker,
        "this_build_writes": WRITES,
    });
    if json_out {
        println!("{summary}");
    } else if let Some(s) = stored {
        println!(
            "state OK: {} has schema {}, written by roboconf-agent {}, sha256 {}; {} instance(s), {} queued{}",
            file.display(),
            s.schema,
            s.written_by,
            s.sha256,
            model.instances.len(),
            model.queue.len(),
            if marker { "; an upgrade-in-progress marker is present" } else { "" }
        );
    } else {
        println!("no state yet at {}: the agent starts empty", file.display());
    }
    Ok(())
}

fn state_show(paths: &Paths) -> Result<()> {
    let Some(stored) = state::read(&paths.state_dir)? else {
        bail!(
            "no state file at {}",
            state::state_file(&paths.state_dir).display()
        );
    };
    let payload: Value = serde_json::from_slice(&stored.snapshot.to_payload())?;
    println!(
        "{}",
        json!({"schema": stored.schema, "written_by": stored.written_by, "state": payload})
    );
    Ok(())
}

/// With `dry_run`, nothing is written and the state lock is not taken (a
/// running agent holds it): the file, written atomically, is read and
/// migrated in memory only.
fn state_migrate(paths: &Paths, to: u32, dry_run: bool) -> Result<()> {
    if !(1..=WRITES).contains(&to) {
        bail!(
            "cannot migrate to schema {to}: roboconf-agent {VERSION} knows schemas 1 to {WRITES}"
        );
    }
    let _lock = if dry_run {
        None
    } else {
        Some(state::lock(&paths.state_dir)?)
    };
    let Some(stored) = state::read(&paths.state_dir)? else {
        println!(
            "no state file at {}: nothing to migrate",
            state::state_file(&paths.state_dir).display()
        );
        return Ok(());
    };
    let from = stored.schema;
    // Check the whole state makes sense before rewriting it in any schema.
    stored.snapshot.clone().into_model().map_err(|e| {
        Exit::new(
            BAD_STATE,
            format!("state has schema {from} and passed its checksum but is inconsistent: {e}"),
        )
    })?;
    if from == to {
        println!("state already has schema {to}: nothing to do");
        return Ok(());
    }
    let migrated = stored
        .snapshot
        .migrate_to(to)
        .map_err(|e| anyhow::anyhow!("migration failed, state unchanged: {e}"))?;
    if dry_run {
        println!("the state can be migrated from schema {from} to schema {to} (dry run: nothing written)");
        return Ok(());
    }
    state::write(&paths.state_dir, &migrated)?;
    log::info(&format!("state migrated from schema {from} to schema {to}"));
    println!("state migrated from schema {from} to schema {to}");
    Ok(())
}

fn print_schema(json_out: bool) {
    let steps: Vec<Value> = STEPS
        .iter()
        .filter(|(to, _)| *to <= WRITES)
        .map(|(to, what)| json!({"from": to - 1, "to": to, "does": what}))
        .collect();
    if json_out {
        println!(
            "{}",
            json!({"version": VERSION, "writes": WRITES, "newest_known": WRITES, "known": (1..=WRITES).collect::<Vec<_>>(), "registry_newest": NEWEST, "steps": steps})
        );
    } else {
        println!(
            "roboconf-agent {VERSION} writes state schema {WRITES} and knows schemas 1 to {WRITES}"
        );
        for s in &steps {
            println!("  {}", s["does"].as_str().unwrap_or(""));
        }
    }
}
