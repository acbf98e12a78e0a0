//! One resolved plan of files, metadata and scripts, shared by every format:
//! the descriptor is read once, and each packager only lays the plan out.

use std::io::Write;

use anyhow::{Context, Result};

use ferry_hook::package::PackageManifest;

use crate::descriptor::{self, Architecture, Validated};
use crate::scripts::Scripts;
use crate::version::PackageVersion;

pub use crate::format::Format;

/// One file to install.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// Absolute path on the target.
    pub dest: String,
    pub data: Vec<u8>,
    pub mode: u32,
    /// A deb conffile / rpm `%config(noreplace)`.
    pub config: bool,
    /// Set when only one format carries the file.
    pub only: Option<Format>,
}

impl PlannedFile {
    /// Documentation (rpm `%doc`): manual pages and /usr/share/doc.
    pub fn is_doc(&self) -> bool {
        self.dest.starts_with("/usr/share/doc/") || self.dest.starts_with("/usr/share/man/")
    }
}

/// Everything a packager needs; nothing in it is format-specific except
/// the files marked `only`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub version: PackageVersion,
    pub architecture: Architecture,
    pub maintainer: String,
    pub summary: String,
    pub description: String,
    pub license: String,
    pub homepage: Option<String>,
    pub section: String,
    pub priority: String,
    pub deb_depends: Vec<String>,
    pub rpm_requires: Vec<String>,
    pub files: Vec<PlannedFile>,
    pub scripts: Scripts,
    /// Seconds since the epoch stamped on every file and header
    /// (SOURCE_DATE_EPOCH), so two builds are byte-identical.
    pub source_date: u64,
}

impl Plan {
    /// The files one format carries, sorted by destination.
    pub fn files_for(&self, format: Format) -> impl Iterator<Item = &PlannedFile> {
        self.files
            .iter()
            .filter(move |f| f.only.is_none_or(|only| only == format))
    }
}

/// Reads every asset and generated file into a plan, with the package
/// manifest (`crate::manifest`) and the maintainer scripts rendered from it
/// (`crate::scripts`).
pub fn resolve(
    v: &Validated,
    manifest: &PackageManifest,
    scripts: Scripts,
    source_date: u64,
) -> Result<Plan> {
    let d = &v.descriptor;
    let mut files = Vec::new();
    for asset in &d.assets {
        let path = v.resolve(&asset.source);
        let data = std::fs::read(&path).with_context(|| {
            format!(
                "{}: asset `{}` has no source file {}: build it first or fix `source`",
                v.file.display(),
                asset.dest,
                path.display()
            )
        })?;
        let (dest, data) = compress_manual_page(&asset.dest, data)?;
        files.push(PlannedFile {
            dest,
            data,
            mode: descriptor::parse_mode(&asset.mode).map_err(anyhow::Error::msg)?,
            config: asset.config,
            only: None,
        });
    }
    files.extend(unit_files(v, manifest)?);
    files.extend(hook_files(v, manifest)?);
    files.extend(debian_docs(v, source_date)?);
    files.sort_by(|a, b| a.dest.cmp(&b.dest).then(a.only.cmp(&b.only)));
    let p = &d.package;
    Ok(Plan {
        name: p.name.clone(),
        version: v.version.clone(),
        architecture: v.architecture.clone(),
        maintainer: p.maintainer.clone(),
        summary: p.summary.clone(),
        description: p.description.trim().to_string(),
        license: p.license.clone(),
        homepage: p.homepage.clone(),
        section: p.section.clone(),
        priority: p.priority.clone(),
        deb_depends: deb_depends(&d.dependencies.deb, &files),
        rpm_requires: d.dependencies.rpm.clone(),
        files,
        scripts,
        source_date,
    })
}

/// Manual pages ship compressed, as dh_compress and brp-compress do.
fn compress_manual_page(dest: &str, data: Vec<u8>) -> Result<(String, Vec<u8>)> {
    if dest.starts_with("/usr/share/man/") && !dest.ends_with(".gz") {
        Ok((format!("{dest}.gz"), gzip_reproducibly(&data)?))
    } else {
        Ok((dest.to_string(), data))
    }
}

/// The descriptor's Depends, plus libc6 at the newest glibc symbol version
/// a shipped ELF binary needs: what dpkg-shlibdeps would add, without
/// needing dpkg-dev on the build machine.
fn deb_depends(declared: &[String], files: &[PlannedFile]) -> Vec<String> {
    let mut depends = declared.to_vec();
    let declares_libc = declared
        .iter()
        .any(|d| d.split_whitespace().next() == Some("libc6"));
    let needed = files.iter().filter_map(|f| glibc_needed(&f.data)).max();
    if let (false, Some((major, minor))) = (declares_libc, needed) {
        depends.insert(0, format!("libc6 (>= {major}.{minor})"));
    }
    depends
}

/// The highest `GLIBC_x.y` symbol version named in a dynamically linked
/// ELF file, if it is one.
pub fn glibc_needed(data: &[u8]) -> Option<(u32, u32)> {
    if !data.starts_with(b"\x7fELF") {
        return None;
    }
    const TAG: &[u8] = b"GLIBC_";
    data.windows(TAG.len())
        .enumerate()
        .filter(|(_, w)| *w == TAG)
        .filter_map(|(i, _)| {
            let rest = &data[i + TAG.len()..];
            let end = rest
                .iter()
                .position(|b| !(b.is_ascii_digit() || *b == b'.'))?;
            let text = std::str::from_utf8(&rest[..end]).ok()?;
            let (major, minor) = text.split_once('.')?;
            let minor = minor.split('.').next()?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .max()
}

/// The upgrade hook program and the manifest it reads: in every package, so
/// the next version's scripts always find the installed version's hook.
fn hook_files(v: &Validated, manifest: &PackageManifest) -> Result<Vec<PlannedFile>> {
    let program = v.hook_program();
    let data = std::fs::read(&program).with_context(|| {
        format!(
            "reading the upgrade hook program {}: build it with `cargo build --release -p ferry-hook` or set hooks.program",
            program.display()
        )
    })?;
    Ok(vec![
        PlannedFile {
            dest: manifest.hook_path(),
            data,
            mode: 0o755,
            config: false,
            only: None,
        },
        PlannedFile {
            dest: PackageManifest::path_for(&manifest.name),
            data: crate::manifest::to_json(manifest)?,
            mode: 0o644,
            config: false,
            only: None,
        },
    ])
}

/// The unit goes where each distribution family keeps packaged units:
/// Debian 12 still uses /lib (lintian flags /usr/lib there), rpm /usr/lib.
fn unit_files(v: &Validated, manifest: &PackageManifest) -> Result<Vec<PlannedFile>> {
    let unit = &v.descriptor.service.unit;
    let data = std::fs::read(v.resolve(unit))
        .with_context(|| format!("reading the unit {}", v.resolve(unit).display()))?;
    let name = &manifest.unit;
    Ok([
        (Format::Deb, "/lib/systemd/system"),
        (Format::Rpm, "/usr/lib/systemd/system"),
    ]
    .into_iter()
    .map(|(format, dir)| PlannedFile {
        dest: format!("{dir}/{name}"),
        data: data.clone(),
        mode: 0o644,
        config: false,
        only: Some(format),
    })
    .collect())
}

/// Debian policy wants a copyright file and a changelog in every binary
/// package; ferry writes both from the descriptor.
fn debian_docs(v: &Validated, source_date: u64) -> Result<Vec<PlannedFile>> {
    let p = &v.descriptor.package;
    let doc = format!("/usr/share/doc/{}", p.name);
    let changelog = format!(
        "{name} ({version}) unstable; urgency=medium\n\n  * Built by ferry from {descriptor}.\n\n -- {maintainer}  {date}\n",
        name = p.name,
        version = v.version.deb(),
        descriptor = v.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        maintainer = p.maintainer,
        date = crate::date::rfc2822(source_date, "+0000"),
    );
    Ok(vec![
        PlannedFile {
            dest: format!("{doc}/changelog.Debian.gz"),
            data: gzip_reproducibly(changelog.as_bytes())?,
            mode: 0o644,
            config: false,
            only: Some(Format::Deb),
        },
        PlannedFile {
            dest: format!("{doc}/copyright"),
            data: copyright(v, source_date).into_bytes(),
            mode: 0o644,
            config: false,
            only: Some(Format::Deb),
        },
        PlannedFile {
            dest: format!("/usr/share/lintian/overrides/{}", p.name),
            data: format!(
                "# ferry's packages go to their own repositories, never to the Debian\n# archive: there is no ITP bug for the first changelog entry to close.\n{}: initial-upload-closes-no-bugs\n",
                p.name
            )
            .into_bytes(),
            mode: 0o644,
            config: false,
            only: Some(Format::Deb),
        },
    ])
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

fn copyright(v: &Validated, source_date: u64) -> String {
    let p = &v.descriptor.package;
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
        year = crate::date::year(source_date),
    )
}

/// gzip at maximum compression (lintian asks for it) with no name and a
/// zero mtime in the header, so the bytes depend on the content alone.
pub fn gzip_reproducibly(data: &[u8]) -> Result<Vec<u8>> {
    gzip(data, 9)
}

/// gzip at `level` with no name and a zero mtime in the header.
pub fn gzip(data: &[u8], level: u32) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(level));
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_glibc_version() {
        let elf = b"\x7fELF....GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_PRIVATE\0GLIBC_2.17\0";
        assert_eq!(glibc_needed(elf), Some((2, 34)));
        assert_eq!(glibc_needed(b"GLIBC_2.34"), None);
    }
}
