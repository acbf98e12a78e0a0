//! The command line of `publish`, `promote`, `channel` and `enroll`: clap's
//! structures, each converted into the library's plain options (the
//! library knows nothing of clap), and the possible values of enums the
//! library defines.

use std::path::PathBuf;

use anyhow::Result;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use ferry::bench::Payload;
use ferry::build::Profile;
use ferry::channel::{self, EnableArgs, Host, BACKENDS};
use ferry::enroll::CloudConfigArgs;
use ferry::repo::{PromoteArgs, PublishArgs, SigningArgs};

/// Add .deb and .rpm packages to a channel of a signed repository.
///
/// One directory holds an apt repository (DIR/apt: `deb [signed-by=DIR/signing-key.asc]
/// file://DIR/apt CHANNEL main`) and an rpm repository (DIR/rpm/CHANNEL, for
/// `baseurl=`). Every index is signed with the repository's gpg key (two
/// while it is rotated); rpms are signed too.
/// A published version is immutable: publishing it again with the same
/// content changes nothing, with other content is refused. Each publish is
/// atomic: interrupted at any point, apt and dnf still read the repository.
#[derive(clap::Args)]
pub struct PublishCli {
    /// Repository directory; created on first publish (must then be empty or absent).
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,

    /// Channel to publish into, e.g. `candidate` or `stable`: the apt suite and
    /// codename, and the rpm repository DIR/rpm/CHANNEL.
    #[arg(long, value_name = "NAME")]
    pub channel: String,

    /// Keep the newest N versions of each package in the channel; older ones
    /// are pruned from it (kept versions excepted).
    #[arg(long, value_name = "N", default_value_t = ferry::repo::DEFAULT_KEEP)]
    pub keep: usize,

    #[command(flatten)]
    pub signing: SigningCli,

    /// Mark VERSION (upstream `1.2.0` or full `1.2.0-1`) as kept: retention never
    /// prunes it from any channel, now or later, so it stays a rollback target.
    /// Repeatable; recorded in the repository.
    #[arg(long = "keep-version", value_name = "VERSION")]
    pub keep_versions: Vec<String>,

    /// .deb and .rpm files to publish.
    #[arg(required = true, value_name = "PACKAGES")]
    pub packages: Vec<PathBuf>,
}

/// The key that signs the indices (and, on publish, the rpms).
#[derive(clap::Args)]
pub struct SigningCli {
    /// gpg key that signs (id, fingerprint or user id of a secret key). Required
    /// on the first publish; later publishes and promotes default to the
    /// repository's keys, and refuse keys that share none with them.
    /// Repeatable, to rotate the key: every index is signed by each key, the
    /// rpms by the first; a change of keys re-signs every channel
    /// (docs/REPOSITORIES.md, "Rotating the signing key").
    #[arg(long = "key", value_name = "KEYID")]
    pub keys: Vec<String>,

    /// GnuPG home holding the secret key (default: gpg's own, $GNUPGHOME or ~/.gnupg).
    #[arg(long, value_name = "DIR")]
    pub gnupghome: Option<PathBuf>,
}

/// Copy a published version from one channel to another, byte for byte.
///
/// Nothing is rebuilt or re-signed: the packages in the target channel are
/// the very files tested in the source channel. Retention (--keep) then
/// applies to the target channel.
#[derive(clap::Args)]
pub struct PromoteCli {
    /// Repository directory made by `ferry publish`.
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,

    /// Channel that holds the version now.
    #[arg(long, value_name = "CHANNEL")]
    pub from: String,

    /// Channel to copy it into (created if new).
    #[arg(long, value_name = "CHANNEL")]
    pub to: String,

    /// Keep the newest N versions of each package in the target channel.
    #[arg(long, value_name = "N", default_value_t = ferry::repo::DEFAULT_KEEP)]
    pub keep: usize,

    #[command(flatten)]
    pub signing: SigningCli,

    /// Version to promote: upstream (`1.2.0`) or full (`1.2.0-1`); every
    /// package file of that version (deb and rpm, all architectures) is copied.
    #[arg(value_name = "VERSION")]
    pub version: String,

    /// Only this package's files of that version (when the repository holds
    /// several packages, e.g. the agent and ferry itself).
    #[arg(long, value_name = "NAME")]
    pub package: Option<String>,
}

impl From<SigningCli> for SigningArgs {
    fn from(c: SigningCli) -> SigningArgs {
        SigningArgs {
            keys: c.keys,
            gnupghome: c.gnupghome,
        }
    }
}

impl From<PublishCli> for PublishArgs {
    fn from(c: PublishCli) -> PublishArgs {
        PublishArgs {
            repo: c.repo,
            channel: c.channel,
            keep: c.keep,
            signing: c.signing.into(),
            keep_versions: c.keep_versions,
            packages: c.packages,
        }
    }
}

impl From<PromoteCli> for PromoteArgs {
    fn from(c: PromoteCli) -> PromoteArgs {
        PromoteArgs {
            repo: c.repo,
            from: c.from,
            to: c.to,
            keep: c.keep,
            signing: c.signing.into(),
            version: c.version,
            package: c.package,
        }
    }
}

/// The `ferry channel` command line.
#[derive(clap::Args)]
pub struct ChannelCli {
    /// The root of the system to configure (every path is under it).
    #[arg(long, global = true, default_value = "/")]
    pub root: PathBuf,
    /// The agent's package name.
    #[arg(long, global = true, default_value = "roboconf-agent")]
    pub package: String,
    /// apt or dnf; detected, and needed only on a host that has both.
    #[arg(long, global = true, value_parser = family_parser())]
    pub family: Option<String>,
    /// Print the result as JSON: the status, or what changed (`changed`,
    /// `dry_run`, and `changes`, each with `path`, `action`, `before`,
    /// `after`), with the text report as `message`.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: ChannelCommand,
}

#[derive(clap::Subcommand)]
pub enum ChannelCommand {
    /// Trust the repository's key (after checking its fingerprint), add the
    /// repository, and turn the automatic update tool on for it.
    Enable(EnableCli),
    /// Remove exactly what enable, pin, rollback and install wrote.
    Disable {
        /// Print what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Installed and available versions, pin, the automatic tool's last run,
    /// and why the agent was not updated.
    Status,
    /// Keep the agent at VERSION (downgrading to it on the next automatic run).
    Pin {
        /// The version to hold: upstream (`1.2.0`) or full (`1.2.0-1`).
        version: String,
        /// Why, kept with the pin in the record of holds and shown by
        /// `status` (default: what the command did).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the pin.
    Unpin {
        /// Print what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Install the previous (or given) version through the package manager,
    /// so the upgrade hooks carry the state down, then pin it.
    Rollback {
        /// The version to go back to (default: the newest one below the
        /// installed version that the repository offers).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Why, kept with the pin in the record of holds and shown by
        /// `status` (default: what the command did).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Say which version it would install and pin; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Install VERSION now through the package manager, up or down, so the
    /// upgrade hooks carry the state; a pinned agent is pinned to it.
    ///
    /// The push path (docs/FLEET.md, the rollout playbook): the
    /// repositories' metadata is read again first, so a version published
    /// since is found. Refused (status 3, nothing changed) on a host that
    /// follows the channel without a pin, since its updater would race the
    /// install; a host that follows no channel just gets the version.
    Install {
        /// The version to install: upstream (`1.2.0`) or full (`1.2.0-1`).
        version: String,
        /// Why, kept with the pin in the record of holds and shown by
        /// `status` (default: what the command did).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Say which version it would install and pin; change nothing (the
        /// metadata is read as it is, not refreshed).
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
pub struct EnableCli {
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

impl From<EnableCli> for EnableArgs {
    fn from(c: EnableCli) -> EnableArgs {
        EnableArgs {
            repo: c.repo,
            key: c.key,
            fingerprint: c.fingerprint,
            channel: c.channel,
            origin: c.origin,
            window: c.window,
            dry_run: c.dry_run,
        }
    }
}

/// `ferry enroll`'s subcommands.
#[derive(clap::Subcommand)]
pub enum EnrollCommand {
    /// Print a #cloud-config document that enrols a new VM at first boot.
    ///
    /// The same variables as `ferry channel enable` (the repository's URL,
    /// its key and the key's fingerprint, the channel, a window), and the
    /// repository of ferry's own package, make a document to give a new VM
    /// as its user data. At first boot cloud-init writes a small script,
    /// /usr/local/sbin/ferry-enroll, that installs ferry from its
    /// repository, runs `ferry channel enable` for ferry and for the agent
    /// (each key checked against its fingerprint) and installs the agent.
    /// cloud-init runs it once, for at most 10 minutes; cloud-init never
    /// retries, so if that attempt fails (the repository not reachable yet,
    /// the package manager busy) the document leaves ferry-enroll.timer
    /// behind: it runs the script 30 s, 2, 5, 10, 20 and 40 minutes after
    /// boot, then hourly, until the VM is enrolled, and the run that
    /// succeeds removes the timer, its service and the script. The first
    /// attempt logs to /var/log/cloud-init-output.log, the retries to the
    /// journal (`journalctl -u ferry-enroll.service`).
    ///
    /// The key is checked against --fingerprint here, as `ferry channel`
    /// checks it, and embedded; the VM checks it again. The document works
    /// on apt hosts and dnf hosts alike (each VM looks at its package
    /// managers); give --family only for VMs that have both. See
    /// docs/CLOUD-INIT.md.
    ///
    /// Examples:
    ///   ferry enroll cloud-config --repo https://repo.example.org/agent \
    ///       --key signing-key.asc --fingerprint 0123…CDEF \
    ///       --channel stable --window 'Mon..Fri 02:00-04:00' > user-data
    ///   cloud-init schema --config-file user-data    # check it where cloud-init is installed
    #[command(verbatim_doc_comment)]
    CloudConfig(CloudConfigCli),
}

#[derive(clap::Args)]
pub struct CloudConfigCli {
    /// The repository made by `ferry publish`, as the VM reaches it:
    /// https://…, http://… or file:///… (the directory holding apt/ and rpm/).
    #[arg(long, value_name = "URL")]
    pub repo: String,
    /// The repository's public key (DIR/signing-key.asc); embedded in the document.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The key's full fingerprint, obtained out of band; a key with another
    /// fingerprint is refused.
    #[arg(long, value_name = "FPR")]
    pub fingerprint: String,
    /// The channel the VM follows.
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// Maintenance window for the automatic upgrade, `[DAYS] HH:MM-HH:MM`
    /// in the VM's local time, e.g. `Mon..Fri 02:00-04:00`.
    #[arg(long, value_name = "SPEC")]
    pub window: Option<String>,
    /// The agent's package (installed with ferry's own package, `ferry`,
    /// from the same repository and channel, docs/FLEET.md).
    #[arg(long, default_value = "roboconf-agent")]
    pub package: String,
    /// apt or dnf: needed only for VMs that have both package managers.
    #[arg(long, value_parser = family_parser())]
    pub family: Option<String>,
}

impl From<CloudConfigCli> for CloudConfigArgs {
    fn from(c: CloudConfigCli) -> CloudConfigArgs {
        CloudConfigArgs {
            repo: c.repo,
            key: c.key,
            fingerprint: c.fingerprint,
            channel: c.channel,
            window: c.window,
            package: c.package,
            family: c.family,
        }
    }
}

/// Runs one `ferry enroll` command and prints what it makes.
pub fn run_enroll(command: EnrollCommand) -> Result<()> {
    match command {
        EnrollCommand::CloudConfig(c) => print!("{}", ferry::enroll::cloud_config(&c.into())?),
    }
    Ok(())
}

/// `--family`'s possible values: the backends' names.
pub fn family_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(BACKENDS.iter().map(|b| b.name()))
}

/// Runs one `ferry channel` command and prints its report.
pub fn run_channel(args: ChannelCli) -> Result<()> {
    let host = Host::open(&args.root, &args.package, args.family.as_deref())?;
    let (verb, dry_run, report) = match args.command {
        ChannelCommand::Enable(e) => {
            let dry_run = e.dry_run;
            ("enable", dry_run, channel::enable(&host, &e.into())?)
        }
        ChannelCommand::Disable { dry_run } => {
            ("disable", dry_run, channel::disable(&host, dry_run)?)
        }
        ChannelCommand::Status => {
            let s = channel::status(&host)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{s}");
            }
            return Ok(());
        }
        ChannelCommand::Pin {
            version,
            dry_run,
            reason,
        } => (
            "pin",
            dry_run,
            channel::pin(&host, &version, dry_run, reason.as_deref())?,
        ),
        ChannelCommand::Unpin { dry_run } => ("unpin", dry_run, channel::unpin(&host, dry_run)?),
        ChannelCommand::Install {
            version,
            dry_run,
            reason,
        } => (
            "install",
            dry_run,
            channel::install(&host, &version, dry_run, reason.as_deref())?,
        ),
        ChannelCommand::Rollback {
            to,
            dry_run,
            reason,
        } => (
            "rollback",
            dry_run,
            channel::rollback(&host, to.as_deref(), dry_run, reason.as_deref())?,
        ),
    };
    if args.json {
        let json = serde_json::json!({
            "command": verb,
            "package": host.package,
            "dry_run": dry_run,
            "changed": report.changed(),
            "changes": report.changes(),
            "message": report.text(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// `--profile`'s values, with the library's description of each.
pub fn profile_parser() -> impl TypedValueParser<Value = Profile> {
    PossibleValuesParser::new(
        Profile::ALL
            .iter()
            .map(|p| PossibleValue::new(p.name()).help(p.help())),
    )
    .map(|name| Profile::from_name(&name).expect("one of the possible values"))
}

/// `--payload`'s values, with the library's description of each.
pub fn payload_parser() -> impl TypedValueParser<Value = Payload> {
    PossibleValuesParser::new(
        Payload::ALL
            .iter()
            .map(|p| PossibleValue::new(p.name()).help(p.help())),
    )
    .map(|name| Payload::from_name(&name).expect("one of the possible values"))
}
