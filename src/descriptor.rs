//! The package descriptor (`pkg/ferry.toml`): parsed and validated once,
//! before any format is touched, so a bad descriptor never writes a package.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::version::{self, PackageVersion};

/// The descriptor as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub package: PackageSection,
    #[serde(default)]
    pub build: Option<BuildSection>,
    #[serde(default, rename = "asset")]
    pub assets: Vec<Asset>,
    pub service: ServiceSection,
    pub state: StateSection,
    #[serde(default)]
    pub dependencies: Dependencies,
    #[serde(default)]
    pub hooks: HooksSection,
}

/// How the upgrade hook (`ferry-hook`, shipped in every package) behaves.
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

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            keep_snapshots: default_keep_snapshots(),
            quiesce_timeout_secs: default_quiesce_timeout(),
            health_timeout_secs: default_health_timeout(),
            agent: None,
            program: None,
        }
    }
}

fn default_keep_snapshots() -> u32 {
    3
}
fn default_quiesce_timeout() -> u64 {
    120
}
fn default_health_timeout() -> u64 {
    60
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
    /// FERRY_VERSION and FERRY_STATE_SCHEMA in its environment.
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

/// What was wrong with a descriptor: which file, which field, what, and how
/// to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorError {
    pub file: PathBuf,
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: field `{}`: {}\n  fix: {}",
            self.file.display(),
            self.field,
            self.problem,
            self.fix
        )
    }
}

impl std::error::Error for DescriptorError {}

/// Something a descriptor should do better, which does not stop the build:
/// which file, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DescriptorWarning {
    pub file: PathBuf,
    pub problem: String,
    /// The directives (or fields) concerned.
    pub missing: Vec<String>,
    pub fix: String,
}

impl fmt::Display for DescriptorWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: warning: {}\n  fix: {}",
            self.file.display(),
            self.problem,
            self.fix
        )
    }
}

/// The hardening set ferry expects of an agent's unit, with the value it
/// suggests for each: the list in docs/SECURITY.md ("The unit's sandbox"),
/// kept here once. `ferry build` warns when the unit lacks any of them.
pub const HARDENING: &[(&str, &str)] = &[
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("RestrictSUIDSGID", "yes"),
    ("ProtectSystem", "strict"),
    ("PrivateTmp", "yes"),
    ("ProtectHome", "read-only"),
    ("PrivateMounts", "yes"),
    ("UMask", "0027"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("LockPersonality", "yes"),
    ("RemoveIPC", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("RestrictAddressFamilies", "AF_UNIX"),
];

/// Every assignment of the unit's `[Service]` section, in order
/// (`Key=value`, spaces around `=` allowed, `\` continuations joined,
/// comments left out).
fn service_assignments(unit: &str) -> Vec<(String, String)> {
    let mut assignments = Vec::new();
    let mut in_service = false;
    let mut pending = String::new();
    for raw in unit.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(rest) = line.strip_suffix('\\') {
            pending.push_str(rest);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if let (true, Some((key, value))) = (in_service, line.split_once('=')) {
            assignments.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    assignments
}

/// The last value each key of the unit's `[Service]` section is assigned.
fn service_settings(unit: &str) -> std::collections::BTreeMap<String, String> {
    service_assignments(unit).into_iter().collect()
}

/// Whether `value` leaves `directive` off: not set, reset (empty, but for
/// CapabilityBoundingSet, where empty keeps no capability), turned off, or a
/// UMask that lets others read.
fn weak_setting(directive: &str, value: Option<&String>) -> bool {
    let Some(value) = value else {
        return true;
    };
    if value.is_empty() {
        return directive != "CapabilityBoundingSet";
    }
    if ["no", "false", "off", "0", "default"].contains(&value.to_ascii_lowercase().as_str()) {
        return true;
    }
    directive == "UMask" && u32::from_str_radix(value, 8).map_or(true, |m| m & 0o007 != 0o007)
}

/// The directives of [`HARDENING`] the unit lacks (or turns off).
pub fn missing_hardening(unit: &str) -> Vec<&'static str> {
    let settings = service_settings(unit);
    HARDENING
        .iter()
        .filter(|(directive, _)| weak_setting(directive, settings.get(*directive)))
        .map(|(directive, _)| *directive)
        .collect()
}

/// The warning for a unit that lacks part of the hardening set, if it does.
pub fn hardening_warning(unit_file: &Path, unit: &str) -> Option<DescriptorWarning> {
    let missing = missing_hardening(unit);
    if missing.is_empty() {
        return None;
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|m| {
            let value = HARDENING
                .iter()
                .find(|(d, _)| d == m)
                .map_or("", |(_, v)| *v);
            format!("{m}={value}")
        })
        .collect();
    Some(DescriptorWarning {
        file: unit_file.to_path_buf(),
        problem: format!(
            "the unit lacks {} of ferry's hardening set: {}",
            missing.len(),
            missing.join(", ")
        ),
        missing: missing.iter().map(|m| m.to_string()).collect(),
        fix: format!(
            "add to its [Service] section {} (ferry's docs/SECURITY.md, \"The unit's sandbox\", \
             says what each forbids the agent and its recipes; RestrictAddressFamilies= lists \
             AF_INET AF_INET6 too if the agent talks to the network)",
            lines.join(" ")
        ),
    })
}

/// Architecture names of both formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Architecture {
    pub deb: String,
    pub rpm: String,
}

const ARCHITECTURES: &[(&str, &str)] = &[
    ("amd64", "x86_64"),
    ("arm64", "aarch64"),
    ("armhf", "armv7hl"),
    ("i386", "i686"),
    ("ppc64el", "ppc64le"),
    ("s390x", "s390x"),
    ("riscv64", "riscv64"),
    ("all", "noarch"),
];

/// Roots a packaged file may be installed under. State lives under /var and
/// is made by the maintainer scripts, never shipped.
const INSTALL_ROOTS: &[&str] = &["/usr/", "/etc/", "/opt/"];

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
    pub fn agent_program(&self) -> Option<String> {
        let d = &self.descriptor;
        d.hooks.agent.clone().or_else(|| {
            d.assets
                .iter()
                .map(|a| a.dest.clone())
                .find(|dest| dest.starts_with("/usr/bin/") || dest.starts_with("/usr/sbin/"))
        })
    }

    /// The `ferry-hook` binary to ship.
    pub fn hook_program(&self) -> PathBuf {
        match &self.descriptor.hooks.program {
            Some(p) => self.resolve(p),
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join("ferry-hook")))
                .unwrap_or_else(|| PathBuf::from("ferry-hook")),
        }
    }

    /// The state directory the hook snapshots: the first one declared.
    pub fn state_dir(&self) -> &str {
        self.descriptor
            .state
            .directories
            .first()
            .map_or("/nonexistent", String::as_str)
    }

    /// What purge removes.
    pub fn purge_paths(&self) -> Vec<String> {
        let state = &self.descriptor.state;
        state
            .purge
            .clone()
            .unwrap_or_else(|| state.directories.clone())
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
    let hook = v.hook_program();
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

/// Parses descriptor text, turning serde's messages into ones that name the
/// field and suggest the closest known key.
pub fn parse(file: &Path, text: &str) -> Result<Descriptor, DescriptorError> {
    toml::from_str(text).map_err(|e| toml_error(file, text, &e))
}

fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> DescriptorError {
    let message = e.message().to_string();
    let line = e
        .span()
        .map(|span| format!(" (line {})", line_of(text, span.start)))
        .unwrap_or_default();
    if let Some((unknown, expected)) = parse_unknown_field(&message) {
        let fix = match closest(&unknown, &expected) {
            Some(best) => format!(
                "did you mean `{best}`? Known keys here: {}",
                expected.join(", ")
            ),
            None => format!("remove it; known keys here: {}", expected.join(", ")),
        };
        return DescriptorError {
            file: file.to_path_buf(),
            field: unknown,
            problem: format!("unknown key{line}"),
            fix,
        };
    }
    DescriptorError {
        file: file.to_path_buf(),
        field: "(syntax)".into(),
        problem: format!("{message}{line}"),
        fix: "see pkg/ferry.toml in the ferry repository for a complete example".into(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads serde's "unknown field `x`, expected one of `a`, `b`" message.
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((unknown.to_string(), expected))
}

/// The known key closest to `word`, if any is close enough to be a typo.
pub fn closest(word: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

struct Checker<'a> {
    file: &'a Path,
    root: &'a Path,
    d: &'a Descriptor,
}

impl Checker<'_> {
    fn err(&self, field: &str, problem: String, fix: &str) -> DescriptorError {
        DescriptorError {
            file: self.file.to_path_buf(),
            field: field.into(),
            problem,
            fix: fix.into(),
        }
    }

    fn check(
        &self,
        version_override: Option<&str>,
    ) -> Result<(PackageVersion, Architecture, Vec<DescriptorWarning>), DescriptorError> {
        self.check_name()?;
        self.check_texts()?;
        let version = self.check_version(version_override)?;
        let architecture = self.check_architecture()?;
        self.check_assets()?;
        let warnings = self.check_service()?;
        self.check_state()?;
        self.check_hooks()?;
        Ok((version, architecture, warnings))
    }

    fn check_name(&self) -> Result<(), DescriptorError> {
        let name = &self.d.package.name;
        let valid = name.len() >= 2
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if valid {
            Ok(())
        } else {
            Err(self.err(
                "package.name",
                format!("`{name}` is not a valid package name for dpkg and rpm"),
                "use lowercase letters, digits, `+`, `-` and `.`, starting with a letter or digit",
            ))
        }
    }

    fn check_texts(&self) -> Result<(), DescriptorError> {
        let p = &self.d.package;
        for (field, value) in [
            ("package.maintainer", &p.maintainer),
            ("package.summary", &p.summary),
            ("package.description", &p.description),
            ("package.license", &p.license),
        ] {
            if value.trim().is_empty() {
                return Err(self.err(field, "is empty".into(), "write a value"));
            }
        }
        if !(p.maintainer.contains('<') && p.maintainer.ends_with('>')) {
            return Err(self.err(
                "package.maintainer",
                format!("`{}` has no e-mail address", p.maintainer),
                "write it as `Full Name <address@example.org>`",
            ));
        }
        if p.summary.contains('\n') || p.summary.len() > 80 {
            return Err(self.err(
                "package.summary",
                "must be one line of at most 80 characters".into(),
                "shorten it; put details in package.description",
            ));
        }
        Ok(())
    }

    fn check_version(
        &self,
        version_override: Option<&str>,
    ) -> Result<PackageVersion, DescriptorError> {
        let p = &self.d.package;
        let words: Vec<String> = p.prerelease_words.clone().unwrap_or_else(|| {
            version::DEFAULT_PRERELEASE_WORDS
                .iter()
                .map(|w| w.to_string())
                .collect()
        });
        version::check_prerelease_words(&words)
            .map_err(|e| self.err("package.prerelease_words", e.problem, &e.fix))?;
        let (field, text) = match (version_override, &p.version) {
            (Some(v), _) => ("--version", v.to_string()),
            (None, Some(v)) => ("package.version", v.clone()),
            (None, None) => ("package.cargo_manifest", self.cargo_version()?),
        };
        PackageVersion::new(&text, &p.revision, p.epoch, &words).map_err(|e| {
            let field = if e.problem.starts_with("revision") {
                "package.revision"
            } else {
                field
            };
            self.err(field, e.problem, &e.fix)
        })
    }

    fn cargo_version(&self) -> Result<String, DescriptorError> {
        let field = "package.cargo_manifest";
        let Some(manifest) = &self.d.package.cargo_manifest else {
            return Err(self.err(
                "package.version",
                "is missing, and there is no cargo_manifest to take it from".into(),
                "set package.version = \"1.0.0\", or package.cargo_manifest to the agent's Cargo.toml, or pass --version",
            ));
        };
        let path = self.root.join(manifest);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            self.err(
                field,
                format!("cannot read {}: {e}", path.display()),
                "point it at the agent's Cargo.toml, relative to the descriptor",
            )
        })?;
        let value: toml::Table = toml::from_str(&text).map_err(|e| {
            self.err(
                field,
                format!("{} is not valid TOML: {e}", path.display()),
                "fix that file",
            )
        })?;
        value
            .get("package")
            .and_then(|p| p.get("version"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                self.err(
                    field,
                    format!("{} has no package.version string", path.display()),
                    "set package.version in the descriptor instead",
                )
            })
    }

    fn check_architecture(&self) -> Result<Architecture, DescriptorError> {
        let requested = &self.d.package.architecture;
        let name = if requested == "auto" {
            std::env::consts::ARCH
        } else {
            requested.as_str()
        };
        ARCHITECTURES
            .iter()
            .find(|(deb, rpm)| *deb == name || *rpm == name)
            .map(|(deb, rpm)| Architecture {
                deb: deb.to_string(),
                rpm: rpm.to_string(),
            })
            .ok_or_else(|| {
                let known: Vec<String> = ARCHITECTURES.iter().map(|(d, _)| d.to_string()).collect();
                let hint = closest(name, &known)
                    .map(|k| format!("did you mean `{k}`? "))
                    .unwrap_or_default();
                self.err(
                    "package.architecture",
                    format!("`{name}` is not an architecture ferry knows"),
                    &format!("{hint}use `auto` or one of {}", known.join(", ")),
                )
            })
    }

    fn check_assets(&self) -> Result<(), DescriptorError> {
        let mut seen = BTreeSet::new();
        for (i, asset) in self.d.assets.iter().enumerate() {
            let field = |f: &str| format!("asset[{i}].{f}");
            parse_mode(&asset.mode).map_err(|problem| {
                self.err(
                    &field("mode"),
                    problem,
                    "write the octal permissions as a string, e.g. \"0755\" or \"0644\"",
                )
            })?;
            self.check_dest(&field("dest"), &asset.dest)?;
            if asset.config && !asset.dest.starts_with("/etc/") {
                return Err(self.err(
                    &field("config"),
                    format!("`{}` is marked config but is not under /etc", asset.dest),
                    "install configuration under /etc/, or drop `config = true`",
                ));
            }
            if !seen.insert(asset.dest.clone()) {
                return Err(self.err(
                    &field("dest"),
                    format!("`{}` is installed twice", asset.dest),
                    "give each asset its own destination",
                ));
            }
        }
        Ok(())
    }

    fn check_dest(&self, field: &str, dest: &str) -> Result<(), DescriptorError> {
        let normal = dest.starts_with('/')
            && !dest.ends_with('/')
            && !dest.split('/').any(|c| c == ".." || c == ".")
            && !dest.contains("//");
        if !normal {
            return Err(self.err(
                field,
                format!("`{dest}` is not an absolute, normalized file path"),
                "write an absolute path without `.`, `..`, `//` or a trailing `/`",
            ));
        }
        if !INSTALL_ROOTS.iter().any(|r| dest.starts_with(r)) {
            return Err(self.err(
                field,
                format!("`{dest}` is outside the usual roots {}", INSTALL_ROOTS.join(", ")),
                "install programs under /usr/, configuration under /etc/; state under /var is created by the hooks from [state] directories",
            ));
        }
        Ok(())
    }

    /// Refuses a bad `[service]`; warns about a unit without the hardening set.
    fn check_service(&self) -> Result<Vec<DescriptorWarning>, DescriptorError> {
        let s = &self.d.service;
        for (field, value) in [("service.user", &s.user), ("service.group", &s.group)] {
            let valid = !value.is_empty()
                && value.len() <= 32
                && value.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
            if !valid {
                return Err(self.err(
                    field,
                    format!("`{value}` is not a valid system user or group name"),
                    "use lowercase letters, digits, `_` and `-`, at most 32 characters",
                ));
            }
            if value == "root" {
                return Err(self.err(
                    field,
                    "the agent must not run as root".into(),
                    "name a system user of its own, e.g. the package name",
                ));
            }
        }
        for (i, secret) in s.secrets.iter().enumerate() {
            let field = format!("service.secrets[{i}]");
            self.check_dest(&field, secret)?;
            if !secret.starts_with("/etc/") {
                return Err(self.err(
                    &field,
                    format!("`{secret}` is not under /etc"),
                    "secrets are admin configuration: keep them under /etc/NAME/",
                ));
            }
        }
        let unit = self.root.join(&s.unit);
        let text = std::fs::read_to_string(&unit).map_err(|e| {
            self.err(
                "service.unit",
                format!("cannot read {}: {e}", unit.display()),
                "point it at the systemd unit file, relative to the descriptor",
            )
        })?;
        if !s.unit.to_string_lossy().ends_with(".service") {
            return Err(self.err(
                "service.unit",
                format!("{} is not a .service file", unit.display()),
                "name the unit file NAME.service",
            ));
        }
        self.check_unit_text(&text)?;
        Ok(hardening_warning(&unit, &text).into_iter().collect())
    }

    /// The unit must run as the declared user and let the agent write its
    /// state directories under `ProtectSystem=strict`.
    fn check_unit_text(&self, text: &str) -> Result<(), DescriptorError> {
        let assignments = service_assignments(text);
        // Every word of every assignment of `key` (list settings add up).
        let values = |key: &str| -> Vec<String> {
            assignments
                .iter()
                .filter(|(k, _)| k == key)
                .flat_map(|(_, v)| {
                    v.split_whitespace()
                        .map(|w| w.trim_start_matches('-').to_string())
                })
                .collect()
        };
        if values("User") != vec![self.d.service.user.clone()] {
            return Err(self.err(
                "service.unit",
                format!("the unit does not say `User={}`", self.d.service.user),
                "add User= with service.user to the [Service] section",
            ));
        }
        let writable = values("ReadWritePaths");
        for dir in &self.d.state.directories {
            if !writable.contains(dir) {
                return Err(self.err(
                    "service.unit",
                    format!("ReadWritePaths= does not list state directory `{dir}`"),
                    "list every [state] directory in ReadWritePaths= (the unit uses ProtectSystem=strict)",
                ));
            }
        }
        Ok(())
    }

    fn check_state(&self) -> Result<(), DescriptorError> {
        let st = &self.d.state;
        if st.schema == 0 {
            return Err(self.err(
                "state.schema",
                "schema versions start at 1".into(),
                "set state.schema to the schema this build of the agent writes",
            ));
        }
        for (i, dir) in st.directories.iter().enumerate() {
            let ok = dir.starts_with("/var/lib/")
                || dir.starts_with("/var/log/")
                || dir.starts_with("/var/cache/");
            if !ok || dir.ends_with('/') || dir.contains("..") {
                return Err(self.err(
                    &format!("state.directories[{i}]"),
                    format!("`{dir}` is not a directory under /var/lib, /var/log or /var/cache"),
                    "keep state under /var/lib/NAME (logs under /var/log/NAME)",
                ));
            }
        }
        for (i, path) in self.d.state.purge.iter().flatten().enumerate() {
            let allowed = st
                .directories
                .iter()
                .any(|d| path == d || path.starts_with(&format!("{d}/")))
                || path.starts_with("/etc/");
            if !allowed {
                return Err(self.err(
                    &format!("state.purge[{i}]"),
                    format!("`{path}` is neither a state directory nor under /etc"),
                    "purge may remove only what the package's state directories or configuration hold",
                ));
            }
        }
        Ok(())
    }
}

impl Checker<'_> {
    fn check_hooks(&self) -> Result<(), DescriptorError> {
        let h = &self.d.hooks;
        for (field, value) in [
            ("hooks.keep_snapshots", u64::from(h.keep_snapshots)),
            ("hooks.quiesce_timeout_secs", h.quiesce_timeout_secs),
            ("hooks.health_timeout_secs", h.health_timeout_secs),
        ] {
            if value == 0 {
                return Err(self.err(field, "must be at least 1".into(), "set a positive number"));
            }
        }
        let programs: Vec<&str> = self.d.assets.iter().map(|a| a.dest.as_str()).collect();
        match &h.agent {
            Some(agent) if !programs.contains(&agent.as_str()) => Err(self.err(
                "hooks.agent",
                format!("`{agent}` is not the dest of any asset"),
                "name the installed path of the agent program, e.g. /usr/bin/NAME",
            )),
            Some(_) => Ok(()),
            None if programs
                .iter()
                .any(|d| d.starts_with("/usr/bin/") || d.starts_with("/usr/sbin/")) =>
            {
                Ok(())
            }
            None => Err(self.err(
                "hooks.agent",
                "no asset is installed under /usr/bin or /usr/sbin to drive upgrades with".into(),
                "set hooks.agent to the installed path of the agent program",
            )),
        }
    }
}

/// Parses an octal mode string such as "0755".
pub fn parse_mode(mode: &str) -> Result<u32, String> {
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    let value =
        u32::from_str_radix(digits, 8).map_err(|_| format!("`{mode}` is not an octal mode"))?;
    if value > 0o7777 {
        return Err(format!("`{mode}` is larger than 07777"));
    }
    if value & 0o002 != 0 {
        return Err(format!("`{mode}` is world-writable"));
    }
    if value & 0o6000 != 0 {
        return Err(format!("`{mode}` sets setuid or setgid"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_closest_key() {
        let text = "[package]\nname = \"a\"\nverison = \"1.0.0\"\n";
        let err = parse(Path::new("x.toml"), text).unwrap_err();
        assert_eq!(err.field, "verison");
        assert!(err.fix.contains("did you mean `version`"), "{err}");
        assert!(err.problem.contains("line 3"), "{err}");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert!(parse_mode("0799").is_err());
        assert!(parse_mode("0777").is_err());
        assert!(parse_mode("4755").is_err());
    }

    const REFERENCE_UNIT: &str = include_str!("../pkg/roboconf-agent.service");

    /// A unit with exactly the hardening set, as ferry suggests it.
    fn hardened_unit() -> String {
        let mut unit = String::from("[Unit]\nDescription=x\n\n[Service]\nUser=agent\n");
        for (directive, value) in HARDENING {
            unit.push_str(&format!("{directive}={value}\n"));
        }
        unit
    }

    #[test]
    fn a_unit_with_the_hardening_set_gets_no_warning() {
        // hardened_unit() has `CapabilityBoundingSet=`: empty keeps no
        // capability, which is the hardening, not a reset.
        assert_eq!(missing_hardening(&hardened_unit()), Vec::<&str>::new());
        assert_eq!(missing_hardening(REFERENCE_UNIT), Vec::<&str>::new());
        assert_eq!(
            hardening_warning(Path::new("pkg/roboconf-agent.service"), REFERENCE_UNIT),
            None
        );
        // Spaces around `=`, continuation lines, several lines of a list.
        let spaced = hardened_unit()
            .replace("ProtectClock=yes", "ProtectClock = yes")
            .replace(
                "SystemCallFilter=@system-service",
                "SystemCallFilter=\nSystemCallFilter=@system-service \\\n  @network-io",
            );
        assert_eq!(missing_hardening(&spaced), Vec::<&str>::new(), "{spaced}");
    }

    #[test]
    fn a_unit_missing_a_directive_is_warned_about_by_name() {
        let unit = hardened_unit().replace("ProtectClock=yes\n", "");
        let w = hardening_warning(Path::new("pkg/agent.service"), &unit).expect("a warning");
        assert_eq!(w.missing, vec!["ProtectClock"]);
        assert_eq!(w.file, Path::new("pkg/agent.service"));
        let shown = w.to_string();
        assert!(shown.starts_with("pkg/agent.service: warning: "), "{shown}");
        assert!(
            shown.contains("lacks 1 of ferry's hardening set: ProtectClock"),
            "{shown}"
        );
        assert!(
            shown.contains("fix: add to its [Service] section ProtectClock=yes "),
            "{shown}"
        );
        assert!(shown.contains("docs/SECURITY.md"), "{shown}");
        // Turned off, reset, or in another section: missing too.
        for (from, to, missing) in [
            (
                "ProtectHostname=yes",
                "ProtectHostname=no",
                "ProtectHostname",
            ),
            (
                "NoNewPrivileges=yes",
                "NoNewPrivileges=false",
                "NoNewPrivileges",
            ),
            (
                "ProtectProc=invisible",
                "ProtectProc=default",
                "ProtectProc",
            ),
            ("UMask=0027", "UMask=0022", "UMask"),
            (
                "RestrictAddressFamilies=AF_UNIX",
                "RestrictAddressFamilies=AF_UNIX\nRestrictAddressFamilies=",
                "RestrictAddressFamilies",
            ),
            (
                "LockPersonality=yes",
                "#LockPersonality=yes",
                "LockPersonality",
            ),
        ] {
            let unit = hardened_unit().replace(from, to);
            assert_eq!(missing_hardening(&unit), vec![missing], "{unit}");
        }
        let moved = hardened_unit()
            .replace("RemoveIPC=yes\n", "")
            .replace("[Unit]\n", "[Unit]\nRemoveIPC=yes\n");
        assert_eq!(missing_hardening(&moved), vec!["RemoveIPC"]);
        // A bare unit lacks all of it, in the table's order.
        let all: Vec<&str> = HARDENING.iter().map(|(d, _)| *d).collect();
        assert_eq!(missing_hardening("[Service]\nUser=agent\n"), all);
    }

    /// docs/SECURITY.md lists exactly the set the code checks.
    #[test]
    fn the_documented_hardening_set_is_the_checked_one() {
        let doc = include_str!("../docs/SECURITY.md");
        let table = doc
            .split("### The hardening set ferry expects")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .expect("docs/SECURITY.md has the hardening set's section");
        let documented: Vec<String> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(d, _)| d.to_string()))
            .collect();
        let checked: Vec<String> = HARDENING.iter().map(|(d, v)| format!("{d}={v}")).collect();
        assert_eq!(documented, checked);
    }

    #[test]
    fn closest_needs_to_be_close() {
        let known = vec!["source".to_string(), "dest".to_string()];
        assert_eq!(closest("sorce", &known).as_deref(), Some("source"));
        assert_eq!(closest("banana", &known), None);
    }
}
