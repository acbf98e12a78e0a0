//! The files Debian policy (and lintian) want in every binary package,
//! written from the descriptor: the changelog, the copyright file, and the
//! lintian overrides: the one every ferry package needs, and the
//! descriptor's.

use anyhow::Result;

use crate::plan::{Format, Plan, PlannedFile};

/// Debian policy wants a copyright file and a changelog in every binary
/// package; ferry writes both from the descriptor.
pub(super) fn files(plan: &Plan) -> Result<Vec<PlannedFile>> {
    let p = &plan.declared.package;
    let source_date = plan.source_date;
    let doc = format!("/usr/share/doc/{}", p.name);
    let changelog = format!(
        "{name} ({version}) unstable; urgency=medium\n\n  * Built by ferry from {descriptor}.\n\n -- {maintainer}  {date}\n",
        name = p.name,
        version = plan.version.deb(),
        descriptor = plan.descriptor_name,
        maintainer = p.maintainer,
        date = crate::date::rfc2822(source_date, "+0000"),
    );
    Ok(vec![
        PlannedFile {
            dest: format!("{doc}/changelog.Debian.gz"),
            data: crate::plan::gzip_reproducibly(changelog.as_bytes())?,
            mode: 0o644,
            config: false,
            only: Some(Format::Deb),
        },
        PlannedFile {
            dest: format!("{doc}/copyright"),
            data: copyright(plan).into_bytes(),
            mode: 0o644,
            config: false,
            only: Some(Format::Deb),
        },
        PlannedFile {
            dest: format!("/usr/share/lintian/overrides/{}", p.name),
            data: lintian_overrides(plan).into_bytes(),
            mode: 0o644,
            config: false,
            only: Some(Format::Deb),
        },
    ])
}

/// ferry's own override, then the descriptor's, each under its reason.
fn lintian_overrides(plan: &Plan) -> String {
    let name = &plan.declared.package.name;
    let mut text = format!(
        "# ferry's packages go to their own repositories, never to the Debian\n# archive: there is no ITP bug for the first changelog entry to close.\n{name}: initial-upload-closes-no-bugs\n"
    );
    for o in &plan.declared.lintian_overrides {
        for line in o.reason.trim().lines() {
            text.push_str(&format!("# {}\n", line.trim()));
        }
        text.push_str(&format!("{name}: {}\n", o.tag.trim()));
    }
    text
}

/// Licenses whose full text Debian ships in /usr/share/common-licenses.
const COMMON_LICENSES: &[&str] = &[
    "Apache-2.0",
    "Artistic",
    "BSD",
    "CC0-1.0",
    "GFDL-1.2",
    "GFDL-1.3",
    "GPL-2",
    "GPL-3",
    "LGPL-2",
    "LGPL-2.1",
    "LGPL-3",
    "MPL-1.1",
    "MPL-2.0",
];

fn copyright(plan: &Plan) -> String {
    let p = &plan.declared.package;
    let source = p.homepage.as_deref().unwrap_or("(not published)");
    let body = if COMMON_LICENSES.contains(&p.license.as_str()) {
        format!(
            " On Debian systems, the full text of this license is in\n /usr/share/common-licenses/{}.",
            p.license
        )
    } else {
        " The full text of this license ships with the upstream source.".to_string()
    };
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: {name}\nSource: {source}\n\nFiles: *\nCopyright: {year} {maintainer}\nLicense: {license}\n\nLicense: {license}\n{body}\n",
        name = p.name,
        maintainer = p.maintainer,
        license = p.license,
        year = crate::date::year(plan.source_date),
    )
}
