//! `ferry channel`: make the OS's own automatic update tool
//! (unattended-upgrades on apt hosts, dnf-automatic on dnf hosts) follow one
//! channel of a repository made by `ferry publish`, and undo it exactly.
//!
//! Everything ferry writes is listed, with checksums, in
//! `/var/lib/ferry/channel/<package>.json`; `disable` removes exactly those
//! files and refuses to delete one somebody changed. See docs/CHANNEL.md.

//!
//! `backend` says what an updater backend does and lists them (`apt`,
//! `dnf`); `commands` and `status` drive any backend; `host`, `gpg`,
//! `fetch`, `files`, `write` and `window` are what they share.

pub mod apt;
pub mod backend;
mod commands;
pub mod dnf;
mod fetch;
pub mod files;
mod gpg;
pub mod host;
mod status;
pub mod window;
mod write;

use std::path::PathBuf;

use anyhow::Result;

pub use backend::{Backend, BACKENDS};
pub use commands::{disable, enable, pin, rollback, unpin};
pub use host::Host;
pub use status::{status, Status};

/// The `ferry channel` command line.
#[derive(clap::Args, Debug)]
pub struct ChannelArgs {
    /// The root of the system to configure (every path is under it).
    #[arg(long, global = true, default_value = "/")]
    pub root: PathBuf,
    /// The agent's package name.
    #[arg(long, global = true, default_value = "roboconf-agent")]
    pub package: String,
    /// apt or dnf; detected, and needed only on a host that has both.
    #[arg(long, global = true, value_parser = backend::family_parser())]
    pub family: Option<String>,
    #[command(subcommand)]
    pub command: ChannelCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ChannelCommand {
    /// Trust the repository's key (after checking its fingerprint), add the
    /// repository, and turn the automatic update tool on for it.
    Enable(EnableArgs),
    /// Remove exactly what enable, pin and rollback wrote.
    Disable {
        /// Print what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Installed and available versions, pin, the automatic tool's last run,
    /// and why the agent was not updated.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Keep the agent at VERSION (downgrading to it on the next automatic run).
    Pin {
        version: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the pin.
    Unpin {
        #[arg(long)]
        dry_run: bool,
    },
    /// Install the previous (or given) version through the package manager,
    /// so the upgrade hooks carry the state down, then pin it.
    Rollback {
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct EnableArgs {
    /// The repository made by `ferry publish`: file:///srv/repo or https://…
    /// (the directory holding apt/ and rpm/).
    #[arg(long, value_name = "URL")]
    pub repo: String,
    /// The repository's public key (DIR/signing-key.asc).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The key's full fingerprint, obtained out of band; a key with another
    /// fingerprint is refused.
    #[arg(long, value_name = "FPR")]
    pub fingerprint: String,
    /// The channel to follow; it must exist in the repository.
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// The repository's Origin (read from its Release file by default).
    #[arg(long)]
    pub origin: Option<String>,
    /// Maintenance window for the automatic upgrade, `[DAYS] HH:MM-HH:MM`
    /// in local time, e.g. `Mon..Fri 02:00-04:00`.
    #[arg(long, value_name = "SPEC")]
    pub window: Option<String>,
    /// Print a unified diff of every file it would write; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs one `ferry channel` command, printing its report.
pub fn run(args: ChannelArgs) -> Result<()> {
    let host = Host::open(&args.root, &args.package, args.family.as_deref())?;
    let text = match args.command {
        ChannelCommand::Enable(e) => enable(&host, &e)?,
        ChannelCommand::Disable { dry_run } => disable(&host, dry_run)?,
        ChannelCommand::Status { json } => {
            let s = status(&host)?;
            if json {
                serde_json::to_string_pretty(&s)? + "\n"
            } else {
                s.to_string()
            }
        }
        ChannelCommand::Pin { version, dry_run } => pin(&host, &version, dry_run)?,
        ChannelCommand::Unpin { dry_run } => unpin(&host, dry_run)?,
        ChannelCommand::Rollback { to } => rollback(&host, to.as_deref())?,
    };
    print!("{text}");
    Ok(())
}
