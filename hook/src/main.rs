//! `ferry-hook`: called by a ferry package's maintainer scripts, once per
//! step of an install, upgrade, downgrade or removal. It reads its own
//! package's manifest (`/usr/lib/<name>/ferry-package.json`, found from the
//! program's path `/usr/libexec/<name>/ferry-hook`), so it works for any
//! agent speaking docs/PROTOCOL.md. See docs/UPGRADES.md.

// Tests build their fixtures by path, as the agent's user would.
#![cfg_attr(test, allow(clippy::disallowed_methods))]

mod steps;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferry_hook::package::{PackageManifest, HOOK_PROTOCOL};
use ferry_hook::snapshot;
use ferry_hook::system;

const USAGE: &str = "usage: ferry-hook [--manifest FILE] COMMAND
  protocol                          print the hook protocol version
  prepare --incoming-version V --incoming-schema N [--incoming-protocol P]
                                    (outgoing version) quiesce, snapshot, and stop and
                                    migrate down unless the incoming finish (P >= 2) stops
  finish [--previous-version V]     (incoming version) migrate up, verify, start, check health
  abort                             undo a prepare the package manager abandoned
  snapshot list                     the package's snapshots, verified
  snapshot restore NAME             put a snapshot back (the agent must be stopped)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-hook: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let (manifest, rest) = match args {
        [flag, path, rest @ ..] if flag == "--manifest" => (PathBuf::from(path), rest),
        _ => (default_manifest()?, args),
    };
    let words: Vec<&str> = rest.iter().map(String::as_str).collect();
    if words == ["protocol"] {
        println!("{HOOK_PROTOCOL}");
        return Ok(());
    }
    let m = PackageManifest::read(&manifest)?;
    match words.as_slice() {
        ["prepare", "--incoming-version", version, "--incoming-schema", schema, rest @ ..] => {
            let protocol = match rest {
                // Packages of protocol 1 do not pass it.
                [] => 1,
                ["--incoming-protocol", p] => number("--incoming-protocol", p)?,
                _ => bail!("unknown arguments {rest:?} after prepare's schema\n{USAGE}"),
            };
            let incoming = steps::Incoming {
                version: version.to_string(),
                schema: number("--incoming-schema", schema)?,
                protocol,
            };
            steps::prepare(&m, &incoming)
        }
        ["finish"] => steps::finish(&m, None),
        ["finish", "--previous-version", previous] => steps::finish(&m, Some(previous)),
        ["abort"] => steps::abort(&m),
        ["snapshot", "list"] => {
            print!("{}", snapshot::listing(&m.snapshots_dir())?);
            Ok(())
        }
        ["snapshot", "restore", name] => restore(&m, name),
        _ => bail!("unknown arguments {words:?}\n{USAGE}"),
    }
}

/// The value of `flag`, which must be a number.
fn number(flag: &str, value: &str) -> Result<u32> {
    value
        .parse()
        .with_context(|| format!("{flag} `{value}` is not a number"))
}

/// `/usr/libexec/<name>/ferry-hook` reads `/usr/lib/<name>/ferry-package.json`.
fn default_manifest() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let name = exe
        .parent()
        .and_then(Path::file_name)
        .with_context(|| format!("{} is not in /usr/libexec/<name>/", exe.display()))?;
    Ok(PathBuf::from(PackageManifest::path_for(
        &name.to_string_lossy(),
    )))
}

fn restore(m: &PackageManifest, name: &str) -> Result<()> {
    if system::Systemd::new(&m.unit).is_active() {
        bail!(
            "{} is running: stop it first (systemctl stop {}), then restore",
            m.unit,
            m.unit
        );
    }
    snapshot::restore(&m.snapshots_dir().join(name), Path::new(&m.state_dir))?;
    system::Log::new(m, "restore").line(&format!("state restored from snapshot {name} by hand"));
    Ok(())
}
