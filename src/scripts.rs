//! Maintainer scripts rendered from the handlebars templates in `hooks/`.
//!
//! Every value is shell-quoted on the way in: the escape function of the
//! registry *is* the quoting helper, so a template cannot forget it. A
//! template writes `user={{user}}` and gets `user='roboconf-agent'`; values
//! must therefore never be placed inside quotes in a template.

use std::path::Path;

use anyhow::{Context, Result};
use handlebars::Handlebars;
use serde::Serialize;

use ferry_hook::package::{self, PackageManifest};
use ferry_hook::snapshot;

use crate::descriptor::{Agent, DescriptorError, Validated};

/// The templates, compiled into ferry so an installed binary needs no files.
const PARTIALS: &[(&str, &str)] = &[
    ("header", include_str!("../hooks/partials/header.hbs")),
    (
        "create-user",
        include_str!("../hooks/partials/create-user.hbs"),
    ),
    (
        "create-dirs",
        include_str!("../hooks/partials/create-dirs.hbs"),
    ),
    ("prepare", include_str!("../hooks/partials/prepare.hbs")),
    (
        "enable-linger",
        include_str!("../hooks/partials/enable-linger.hbs"),
    ),
    (
        "disable-linger",
        include_str!("../hooks/partials/disable-linger.hbs"),
    ),
];

/// The Debian maintainer scripts, by file name.
const DEB_TEMPLATES: &[(&str, &str)] = &[
    ("preinst", include_str!("../hooks/deb/preinst.hbs")),
    ("postinst", include_str!("../hooks/deb/postinst.hbs")),
    ("prerm", include_str!("../hooks/deb/prerm.hbs")),
    ("postrm", include_str!("../hooks/deb/postrm.hbs")),
];

/// The rpm scriptlets, by the name of their spec-file section.
const RPM_TEMPLATES: &[(RpmScriptlet, &str)] = &[
    (RpmScriptlet::Pre, include_str!("../hooks/rpm/pre.hbs")),
    (RpmScriptlet::Post, include_str!("../hooks/rpm/post.hbs")),
    (RpmScriptlet::Preun, include_str!("../hooks/rpm/preun.hbs")),
    (
        RpmScriptlet::Postun,
        include_str!("../hooks/rpm/postun.hbs"),
    ),
    (
        RpmScriptlet::Posttrans,
        include_str!("../hooks/rpm/posttrans.hbs"),
    ),
];

/// An rpm scriptlet section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpmScriptlet {
    Pretrans,
    Pre,
    Post,
    Preun,
    Postun,
    Posttrans,
}

impl RpmScriptlet {
    /// The template's name under `hooks/rpm/`.
    pub fn template(self) -> &'static str {
        match self {
            Self::Pretrans => "pretrans",
            Self::Pre => "pre",
            Self::Post => "post",
            Self::Preun => "preun",
            Self::Postun => "postun",
            Self::Posttrans => "posttrans",
        }
    }

    /// cargo-generate-rpm's metadata key for this scriptlet.
    pub fn cargo_generate_rpm_key(self) -> &'static str {
        match self {
            Self::Pretrans => "pre_trans_script",
            Self::Pre => "pre_install_script",
            Self::Post => "post_install_script",
            Self::Preun => "pre_uninstall_script",
            Self::Postun => "post_uninstall_script",
            Self::Posttrans => "post_trans_script",
        }
    }
}

/// Rendered scripts for both formats; none for a package without an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scripts {
    /// (file name in the control archive, script)
    pub deb: Vec<(&'static str, String)>,
    pub rpm: Vec<(RpmScriptlet, String)>,
}

/// The values templates may use; all of them arrive shell-quoted, but for
/// the fixed names of the hook's layout (`marker` to `data`), which are
/// plain words that templates put inside quoted paths with `{{{…}}}`.
#[derive(Serialize)]
struct TemplateValues<'a> {
    ferry_version: &'static str,
    name: &'a str,
    version: String,
    user: &'a str,
    group: &'a str,
    unit: &'a str,
    /// The socket unit that owns the control socket, if the agent is
    /// socket-activated.
    socket: Option<&'a str>,
    home: &'a str,
    state_dirs: &'a [String],
    secrets: &'a [String],
    linger: bool,
    purge: Vec<String>,
    /// The semantic version the agent reports, as the hook compares it.
    semver: &'a str,
    schema: u32,
    hook: String,
    hook_protocol: u32,
    state_dir: &'a str,
    work_dir: &'a str,
    marker: &'static str,
    record: &'static str,
    snapshots: &'static str,
    partial: &'static str,
    data: &'static str,
}

/// Quotes `value` for POSIX sh: single quotes, with each embedded single
/// quote closed, escaped and reopened.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn registry() -> Result<Handlebars<'static>> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(shell_quote);
    for (name, text) in PARTIALS {
        hb.register_partial(name, *text)
            .with_context(|| format!("hooks/partials/{name}.hbs does not parse"))?;
    }
    Ok(hb)
}

/// Renders every maintainer script for the validated descriptor of an
/// agent, with the names the hook uses (unit, paths, marker, record,
/// snapshot layout) taken from its package manifest.
pub fn render(v: &Validated, agent: Agent, m: &PackageManifest) -> Result<Scripts> {
    let ctx = TemplateValues {
        ferry_version: env!("CARGO_PKG_VERSION"),
        name: &m.name,
        version: v.version.deb(),
        user: &m.user,
        group: &m.group,
        unit: &m.unit,
        socket: m.socket.as_deref(),
        home: &m.state_dir,
        state_dirs: &agent.state.directories,
        secrets: &agent.service.secrets,
        linger: agent.service.linger,
        purge: agent.state.purge_paths(),
        semver: &m.version,
        schema: m.schema,
        hook: m.hook_path(),
        hook_protocol: m.hook_protocol,
        state_dir: &m.state_dir,
        work_dir: &m.work_dir,
        marker: package::MARKER,
        record: package::RECORD,
        snapshots: package::SNAPSHOTS,
        partial: snapshot::PARTIAL,
        data: snapshot::DATA,
    };
    let hb = registry()?;
    let render_one = |path: String, text: &str| {
        hb.render_template(text, &ctx)
            .with_context(|| format!("rendering hooks/{path}.hbs"))
    };
    let deb = DEB_TEMPLATES
        .iter()
        .map(|(name, text)| Ok((*name, render_one(format!("deb/{name}"), text)?)))
        .collect::<Result<_>>()?;
    let rpm = RPM_TEMPLATES
        .iter()
        .map(|(s, text)| Ok((*s, render_one(format!("rpm/{}", s.template()), text)?)))
        .collect::<Result<_>>()?;
    Ok(Scripts { deb, rpm })
}

/// `ferry hooks render`: the scripts and the package manifest of the
/// validated descriptor, written for cargo-deb and cargo-generate-rpm
/// ([`write_for_cargo_tools`]); returns the paths written.
pub fn render_for_cargo_tools(v: &Validated, out: &Path) -> Result<Vec<std::path::PathBuf>> {
    let agent = v.descriptor.agent().ok_or_else(|| DescriptorError {
        file: v.file.clone(),
        field: "service".into(),
        problem:
            "is missing: a package without an agent has no maintainer scripts or manifest to render"
                .into(),
        fix: "render the scripts of an agent's descriptor, one with [service] and [state]".into(),
    })?;
    let manifest = crate::manifest::of(v, agent)?;
    let scripts = render(v, agent, &manifest)?;
    write_for_cargo_tools(&scripts, &crate::manifest::to_json(&manifest)?, out)
}

/// Writes the scripts in the layouts cargo-deb (`maintainer-scripts = "DIR/deb"`)
/// and cargo-generate-rpm (`pre_install_script = "DIR/rpm/pre_install_script"`
/// and friends) read, and the hook's package manifest beside them as
/// `DIR/ferry-package.json`; returns the paths written.
pub fn write_for_cargo_tools(
    scripts: &Scripts,
    manifest: &[u8],
    out: &Path,
) -> Result<Vec<std::path::PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let mut written = Vec::new();
    let mut write = |path: std::path::PathBuf, text: &[u8], mode: u32| -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for (name, text) in &scripts.deb {
        write(out.join("deb").join(name), text.as_bytes(), 0o755)?;
    }
    for (scriptlet, text) in &scripts.rpm {
        let path = out.join("rpm").join(scriptlet.cargo_generate_rpm_key());
        write(path, text.as_bytes(), 0o755)?;
    }
    write(out.join("ferry-package.json"), manifest, 0o644)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_values() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
