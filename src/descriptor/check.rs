//! Validation of a parsed descriptor, field by field, each error naming the
//! field and its fix.

use std::collections::BTreeSet;
use std::path::Path;

use super::error::closest;
use super::unit::{hardening_warning, service_assignments, service_settings};
use super::{dependencies, Agent, Descriptor, DescriptorError, DescriptorWarning, ServiceSection};
use crate::version::{self, PackageVersion};

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

pub(super) struct Checker<'a> {
    pub(super) file: &'a Path,
    pub(super) root: &'a Path,
    pub(super) d: &'a Descriptor,
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

    pub(super) fn check(
        &self,
        version_override: Option<&str>,
    ) -> Result<(PackageVersion, Architecture, Vec<DescriptorWarning>), DescriptorError> {
        self.check_name()?;
        self.check_texts()?;
        let version = self.check_version(version_override)?;
        let architecture = self.check_architecture()?;
        self.check_assets()?;
        let warnings = match self.d.agent() {
            Some(agent) => {
                let warnings = self.check_service(agent)?;
                self.check_state(agent)?;
                self.check_hooks(agent)?;
                warnings
            }
            None => {
                self.check_plain()?;
                Vec::new()
            }
        };
        self.check_dependencies()?;
        self.check_lintian_overrides()?;
        Ok((version, architecture, warnings))
    }

    fn check_name(&self) -> Result<(), DescriptorError> {
        match crate::names::package_name_problem(&self.d.package.name) {
            None => Ok(()),
            Some(problem) => Err(self.err(
                "package.name",
                problem,
                "use lowercase letters, digits, `+`, `-` and `.`, starting with a letter or digit",
            )),
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

    /// A package without an agent has none of the agent's sections: half of
    /// them would build a package whose scripts miss the other half.
    fn check_plain(&self) -> Result<(), DescriptorError> {
        let d = self.d;
        if d.service.is_some() {
            return Err(self.err(
                "state",
                "is missing: [service] runs an agent, and an agent's package keeps its state across upgrades".into(),
                "add [state] with the schema and the directories the agent writes, or remove [service] for a package without an agent",
            ));
        }
        if d.state.is_some() {
            return Err(self.err(
                "service",
                "is missing: [state] is an agent's, and no [service] runs one".into(),
                "add [service] with the agent's unit, user and group, or remove [state] for a package without an agent",
            ));
        }
        if d.hooks.is_some() {
            return Err(self.err(
                "hooks",
                "configures the upgrade hook of an agent, and there is no [service] or [state]"
                    .into(),
                "remove [hooks] for a package without an agent, or add [service] and [state]",
            ));
        }
        Ok(())
    }

    /// Refuses a bad `[service]`; warns about a unit without the hardening set.
    fn check_service(&self, agent: Agent) -> Result<Vec<DescriptorWarning>, DescriptorError> {
        let s = agent.service;
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
        self.check_unit_text(agent, &text)?;
        if let Some(socket) = &s.socket {
            self.check_socket(s, socket, &text)?;
        }
        Ok(hardening_warning(&unit, &text).into_iter().collect())
    }

    /// The socket unit must be readable, named after the service (systemd
    /// activates NAME.service from NAME.socket), and its socket must
    /// survive the service's stops: systemd removes a `RuntimeDirectory=`,
    /// and the socket in it, each time the service stops unless it is
    /// preserved.
    fn check_socket(
        &self,
        service: &ServiceSection,
        socket: &Path,
        service_text: &str,
    ) -> Result<(), DescriptorError> {
        let path = self.root.join(socket);
        std::fs::read_to_string(&path).map_err(|e| {
            self.err(
                "service.socket",
                format!("cannot read {}: {e}", path.display()),
                "point it at the systemd socket unit, relative to the descriptor",
            )
        })?;
        let service_name = service.unit.file_name().unwrap_or_default();
        let expected = Path::new(service_name).with_extension("socket");
        if socket.file_name() != expected.file_name() {
            return Err(self.err(
                "service.socket",
                format!("{} is not named after the service", path.display()),
                &format!(
                    "name the socket unit {} (systemd starts NAME.service for NAME.socket)",
                    expected.display()
                ),
            ));
        }
        let settings = service_settings(service_text);
        let get = |key: &str| settings.get(key).map(String::as_str);
        if get("RuntimeDirectory").is_some_and(|v| !v.is_empty())
            && get("RuntimeDirectoryPreserve") != Some("yes")
        {
            return Err(self.err(
                "service.unit",
                "the unit has RuntimeDirectory= without RuntimeDirectoryPreserve=: systemd would remove the \
                 runtime directory, and the socket unit's socket in it, each time the agent stops"
                    .into(),
                "add RuntimeDirectoryPreserve=yes to the [Service] section",
            ));
        }
        Ok(())
    }

    /// The unit must run as the declared user and let the agent write its
    /// state directories under `ProtectSystem=strict`.
    fn check_unit_text(&self, agent: Agent, text: &str) -> Result<(), DescriptorError> {
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
        if values("User") != vec![agent.service.user.clone()] {
            return Err(self.err(
                "service.unit",
                format!("the unit does not say `User={}`", agent.service.user),
                "add User= with service.user to the [Service] section",
            ));
        }
        let writable = values("ReadWritePaths");
        for dir in &agent.state.directories {
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

    fn check_state(&self, agent: Agent) -> Result<(), DescriptorError> {
        let st = agent.state;
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
        for (i, path) in st.purge.iter().flatten().enumerate() {
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
        for (i, name) in st.live.iter().enumerate() {
            let plain = !name.is_empty()
                && !name.contains('/')
                && !name.starts_with('.')
                && !st.live[..i].contains(name);
            if !plain {
                return Err(self.err(
                    &format!("state.live[{i}]"),
                    format!("`{name}` is not a plain name, or is listed twice"),
                    "name top-level entries of the state directory, once each (e.g. live = [\"work\"])",
                ));
            }
        }
        Ok(())
    }
}

impl Checker<'_> {
    fn check_hooks(&self, agent: Agent) -> Result<(), DescriptorError> {
        let h = agent.hooks;
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

impl Checker<'_> {
    /// Every relation in each format's grammar, so that no format starts on
    /// a bad one.
    fn check_dependencies(&self) -> Result<(), DescriptorError> {
        let d = &self.d.dependencies;
        for (i, relation) in d.deb.iter().enumerate() {
            dependencies::check_deb(relation).map_err(|problem| {
                self.err(
                    &format!("dependencies.deb[{i}]"),
                    problem,
                    dependencies::DEB_SHAPE,
                )
            })?;
        }
        for (i, requirement) in d.rpm.iter().enumerate() {
            dependencies::parse_rpm(requirement).map_err(|problem| {
                self.err(
                    &format!("dependencies.rpm[{i}]"),
                    problem,
                    dependencies::RPM_SHAPE,
                )
            })?;
        }
        Ok(())
    }
}

impl Checker<'_> {
    /// Each override is one line of lintian's override file, under its
    /// reason as a comment.
    fn check_lintian_overrides(&self) -> Result<(), DescriptorError> {
        for (i, o) in self.d.lintian_overrides.iter().enumerate() {
            let tag = o.tag.split_whitespace().next().unwrap_or_default();
            let valid_tag = tag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
                && !tag.is_empty()
                && !o.tag.contains('\n');
            if !valid_tag {
                return Err(self.err(
                    &format!("lintian_override[{i}].tag"),
                    format!("`{}` is not a lintian tag", o.tag),
                    "write the tag as lintian prints it, e.g. `uses-dpkg-database-directly [usr/bin/NAME]`",
                ));
            }
            if o.reason.trim().is_empty() {
                return Err(self.err(
                    &format!("lintian_override[{i}].reason"),
                    "is empty".into(),
                    "say why lintian is wrong about this package",
                ));
            }
        }
        Ok(())
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
