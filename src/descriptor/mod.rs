//! The package descriptor (`pkg/ferry.toml`): parsed and validated once,
//! before any format is touched, so a bad descriptor never writes a package.
//!
//! `mod.rs` holds the schema (what the TOML may say) and the validated
//! result; `error` how problems are reported, `check` the validation,
//! `dependencies` the relation grammars of both formats, `unit` what is
//! read from the agent's systemd unit.
//!
//! A descriptor packages an agent (`[service]` and `[state]`, with the
//! upgrade hook's `[hooks]`) or a plain program, such as ferry itself, with
//! none of the three: no user, unit, maintainer scripts or hook.

mod check;
pub mod dependencies;
mod error;
mod unit;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::version::PackageVersion;
use check::Checker;
pub use check::{parse_mode, Architecture};
pub use error::{closest, parse, DescriptorError, DescriptorWarning};
pub use unit::{hardening_warning, missing_hardening, HARDENING};

/// The descriptor as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub package: PackageSection,
    #[serde(default)]
    pub build: Option<BuildSection>,
    #[serde(default, rename = "asset")]
    pub assets: Vec<Asset>,
    /// With `state`, makes the package an agent's; see [`Descriptor::agent`].
    pub service: Option<ServiceSection>,
    pub state: Option<StateSection>,
    #[serde(default)]
    pub dependencies: Dependencies,
    pub hooks: Option<HooksSection>,
    /// What the .deb tells lintian to accept, each with its reason.
    #[serde(default, rename = "lintian_override")]
    pub lintian_overrides: Vec<LintianOverride>,
}

/// A lintian tag the .deb overrides, and why lintian is wrong about this
/// package; both go into its override file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LintianOverride {
    /// The tag, and optionally its pointer: `TAG [usr/bin/NAME]`.
    pub tag: String,
    pub reason: String,
}

impl Descriptor {
    /// The agent's sections, `[hooks]` defaulted; `None` for a plain
    /// package. Validation refuses `[service]` without `[state]` and the
    /// reverse, so on a `Validated` descriptor `None` means neither.
    pub fn agent(&self) -> Option<Agent<'_>> {
        Some(Agent {
            service: self.service.as_ref()?,
            state: self.state.as_ref()?,
            hooks: self.hooks.as_ref().unwrap_or(&DEFAULT_HOOKS),
        })
    }
}

/// What makes a package an agent's: the service that runs it, the state
/// its upgrades keep, and how the upgrade hook behaves.
#[derive(Debug, Clone, Copy)]
pub struct Agent<'a> {
    pub service: &'a ServiceSection,
    pub state: &'a StateSection,
    pub hooks: &'a HooksSection,
}

/// How the upgrade hook (`ferry-hook`, shipped in every agent's package)
/// behaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSection {
    /// Snapshots of the state directory kept after an upgrade.
    #[serde(default = "default_keep_snapshots")]
    pub keep_snapshots: u32,
    /// How long an upgrade waits for a busy agent to become idle.
    #[serde(default = "default_quiesce_timeout")]
    pub quiesce_timeout_secs: u64,
    /// How long the new agent may take to answer after its start.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_secs: u64,
    /// The agent program the hook drives (an asset's dest); default: the
    /// first asset under /usr/bin or /usr/sbin.
    pub agent: Option<String>,
    /// The `ferry-hook` binary to ship, relative to the descriptor; default:
    /// the one beside the running `ferry`.
    pub program: Option<PathBuf>,
}

/// An agent's `[hooks]` when its descriptor leaves the section out.
static DEFAULT_HOOKS: HooksSection = HooksSection {
    keep_snapshots: 3,
    quiesce_timeout_secs: 120,
    health_timeout_secs: 60,
    agent: None,
    program: None,
};

fn default_keep_snapshots() -> u32 {
    DEFAULT_HOOKS.keep_snapshots
}
fn default_quiesce_timeout() -> u64 {
    DEFAULT_HOOKS.quiesce_timeout_secs
}
fn default_health_timeout() -> u64 {
    DEFAULT_HOOKS.health_timeout_secs
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSection {
    pub name: String,
    /// Semantic version; when absent, the version of `cargo_manifest`.
    pub version: Option<String>,
    /// A Cargo.toml whose `package.version` is the default version.
    pub cargo_manifest: Option<PathBuf>,
    #[serde(default = "default_revision")]
    pub revision: String,
    pub epoch: Option<u32>,
    pub maintainer: String,
    pub summary: String,
    pub description: String,
    pub license: String,
    pub homepage: Option<String>,
    /// `auto` (the build machine's), or a Debian or RPM architecture name.
    #[serde(default = "default_architecture")]
    pub architecture: String,
    #[serde(default = "default_section")]
    pub section: String,
    #[serde(default = "default_priority")]
    pub priority: String,
    /// Words a pre-release may start with (see `version`).
    pub prerelease_words: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    /// Run from the descriptor's directory before packaging, with
    /// FERRY_VERSION (and, for an agent, FERRY_STATE_SCHEMA) in its
    /// environment.
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// Relative to the descriptor's directory.
    pub source: PathBuf,
    /// Absolute path on the target system.
    pub dest: String,
    /// Octal permission bits as a string, e.g. "0755".
    pub mode: String,
    /// A configuration file: a deb conffile and an rpm `%config(noreplace)`.
    #[serde(default)]
    pub config: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// The systemd unit file, relative to the descriptor's directory.
    pub unit: PathBuf,
    /// A `.socket` unit of the same name that owns the agent's control
    /// socket (systemd socket activation): it keeps listening through
    /// restarts and upgrades, so clients wait instead of being refused.
    pub socket: Option<PathBuf>,
    pub user: String,
    pub group: String,
    /// Files under /etc created empty (mode 0640, group `group`) for the
    /// admin to fill, e.g. credentials; never shipped, never overwritten.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Keep a systemd user manager running for `user` (logind's lingering),
    /// so processes the agent starts as transient user units live outside
    /// its cgroup and outlive its restarts and upgrades.
    #[serde(default)]
    pub linger: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// The state schema version this build writes.
    pub schema: u32,
    /// Directories the agent writes, created 0750 and owned by its user.
    pub directories: Vec<String>,
    /// What purge (deb) removes; erase (rpm) never removes state.
    /// Default: the state directories.
    pub purge: Option<Vec<String>>,
    /// Top-level names under the state directory (the first of
    /// `directories`) that the software the agent deployed writes, and
    /// which it keeps writing through an upgrade (work directories, process
    /// logs): snapshotted while the agent is quiesced, before it stops, so
    /// the snapshot taken after the stop reads only the agent's own files.
    #[serde(default)]
    pub live: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependencies {
    #[serde(default)]
    pub deb: Vec<String>,
    #[serde(default)]
    pub rpm: Vec<String>,
}

fn default_revision() -> String {
    "1".into()
}
fn default_architecture() -> String {
    "auto".into()
}
fn default_section() -> String {
    "admin".into()
}
fn default_priority() -> String {
    "optional".into()
}

/// A descriptor that passed validation, with everything resolved.
#[derive(Debug, Clone)]
pub struct Validated {
    pub descriptor: Descriptor,
    /// The directory relative paths are resolved against.
    pub root: PathBuf,
    pub file: PathBuf,
    pub version: PackageVersion,
    pub architecture: Architecture,
    /// What the descriptor should do better; the build goes on.
    pub warnings: Vec<DescriptorWarning>,
}

impl Validated {
    /// A source path of the descriptor, resolved against its directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }

    /// The agent program the upgrade hook drives.
    pub fn agent_program(&self, agent: Agent) -> Option<String> {
        agent.hooks.agent.clone().or_else(|| {
            self.descriptor
                .assets
                .iter()
                .map(|a| a.dest.clone())
                .find(|dest| dest.starts_with("/usr/bin/") || dest.starts_with("/usr/sbin/"))
        })
    }

    /// The `ferry-hook` binary to ship.
    pub fn hook_program(&self, agent: Agent) -> PathBuf {
        match &agent.hooks.program {
            Some(p) => self.resolve(p),
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join("ferry-hook")))
                .unwrap_or_else(|| PathBuf::from("ferry-hook")),
        }
    }
}

impl StateSection {
    /// The state directory the hook snapshots: the first one declared.
    pub fn state_dir(&self) -> &str {
        self.directories
            .first()
            .map_or("/nonexistent", String::as_str)
    }

    /// What purge removes.
    pub fn purge_paths(&self) -> Vec<String> {
        self.purge
            .clone()
            .unwrap_or_else(|| self.directories.clone())
    }
}

/// Reads and validates the descriptor at `file`; `version_override` is the
/// command line's `--version`, which wins over the descriptor and Cargo.toml.
pub fn load(file: &Path, version_override: Option<&str>) -> Result<Validated, DescriptorError> {
    let text = std::fs::read_to_string(file).map_err(|e| DescriptorError {
        file: file.to_path_buf(),
        field: "(file)".into(),
        problem: format!("cannot read it: {e}"),
        fix: "pass --descriptor PATH to an existing descriptor (default pkg/ferry.toml)".into(),
    })?;
    let descriptor = parse(file, &text)?;
    let root = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let root = if root.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        root
    };
    Checker {
        file,
        root: &root,
        d: &descriptor,
    }
    .check(version_override)
    .map(|(version, architecture, warnings)| Validated {
        descriptor: descriptor.clone(),
        root: root.clone(),
        file: file.to_path_buf(),
        version,
        architecture,
        warnings,
    })
}

/// Checks that every asset's source exists: after the `[build]` command,
/// since it may make them, and before any package is written.
pub fn check_sources(v: &Validated) -> Result<(), DescriptorError> {
    for (i, asset) in v.descriptor.assets.iter().enumerate() {
        let source = v.resolve(&asset.source);
        if !source.is_file() {
            return Err(DescriptorError {
                file: v.file.clone(),
                field: format!("asset[{i}].source"),
                problem: format!("{} does not exist", source.display()),
                fix: "fix the path (relative to the descriptor), or add a [build] command that makes it".into(),
            });
        }
    }
    let Some(agent) = v.descriptor.agent() else {
        return Ok(());
    };
    let hook = v.hook_program(agent);
    if !hook.is_file() {
        return Err(DescriptorError {
            file: v.file.clone(),
            field: "hooks.program".into(),
            problem: format!("the upgrade hook program {} does not exist", hook.display()),
            fix: "build it (cargo build --release -p ferry-hook, e.g. in [build] command) or set hooks.program to its path".into(),
        });
    }
    Ok(())
}
