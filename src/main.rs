//! The `ferry` command: parses arguments, calls the library, maps errors to
//! exit codes. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use ferry::build::{self, BuildOptions, Profile};
use ferry::plan::Format;

/// Build, publish and roll out state-safe .deb and .rpm packages of a VM agent.
///
/// ferry reads one descriptor (pkg/ferry.toml), builds versioned .deb and .rpm
/// packages whose maintainer scripts keep the agent's state safe across every
/// install, upgrade, downgrade and removal path, and configures the OS's own
/// automatic update tools to follow them.
#[derive(Parser)]
#[command(name = "ferry", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the .deb and .rpm described by a descriptor.
    ///
    /// With no argument, builds the reference agent of this repository
    /// (pkg/ferry.toml) into dist/. The descriptor's [build] command runs
    /// first, with FERRY_VERSION and FERRY_STATE_SCHEMA in its environment.
    /// Packages are written beside their final name and renamed into place,
    /// so a failed build leaves nothing half-written.
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
    /// Compression: `fast` (gzip/zstd -3) or `small` (xz/zstd -19).
    #[arg(long, value_enum, default_value = "fast")]
    profile: Profile,
    /// Do not run the descriptor's [build] command; package what exists.
    #[arg(long)]
    no_build_command: bool,
    /// Print what was written as JSON.
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
enum HooksCommand {
    /// Render the maintainer scripts for cargo-deb and cargo-generate-rpm.
    ///
    /// Writes OUT/deb/{postinst,prerm,postrm} (cargo-deb:
    /// maintainer-scripts = "OUT/deb") and OUT/rpm/pre_install_script and
    /// friends (cargo-generate-rpm: pre_install_script = "OUT/rpm/pre_install_script").
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
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(args) => run_build(args),
        Command::Hooks(HooksCommand::Render {
            descriptor,
            version,
            out,
        }) => {
            let validated = ferry::descriptor::load(&descriptor, version.as_deref())?;
            let scripts = ferry::hooks::render(&validated)?;
            for path in ferry::hooks::write_for_cargo_tools(&scripts, &out)? {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
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
    let artifacts = build::build(&opts, &mut |step| eprintln!("ferry: {step}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&artifacts)?);
    } else {
        for a in &artifacts {
            println!("{}  ({} bytes)", a.path.display(), a.bytes);
        }
        eprintln!(
            "ferry: built {} package(s) in {:.1?}",
            artifacts.len(),
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
