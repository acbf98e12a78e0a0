//! One resolved plan of files, metadata and scripts, shared by every format:
//! the descriptor is read once, and each packager only lays the plan out.

use std::io::Write;

use anyhow::{Context, Result};

use ferry_hook::package::PackageManifest;

use crate::descriptor::{self, Agent, Architecture, Validated};
use crate::scripts::{self, Scripts};
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

/// Everything a packager needs. What only one format knows (its docs,
/// its metadata, its dependencies) each packager derives itself, from
/// `declared` and the files.
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
    /// The descriptor as declared, for the fields only one format has
    /// (deb Section and Priority, each format's dependencies), which that
    /// format's packager reads.
    pub declared: crate::descriptor::Descriptor,
    /// The descriptor's file name, for the Debian changelog.
    pub descriptor_name: String,
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

/// Reads every asset and generated file into a plan. An agent's package
/// adds its unit, the upgrade hook, the package manifest the hook reads
/// (`crate::manifest`) and the maintainer scripts rendered from it
/// (`crate::scripts`); a plain package has none of them.
pub fn resolve(v: &Validated, source_date: u64) -> Result<Plan> {
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
    let mut scripts = Scripts::default();
    if let Some(agent) = d.agent() {
        let manifest = crate::manifest::of(v, agent)?;
        scripts = scripts::render(v, agent, &manifest)?;
        files.extend(unit_files(v, agent, &manifest)?);
        files.extend(hook_files(v, agent, &manifest)?);
    }
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
        declared: d.clone(),
        descriptor_name: v
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
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

/// The upgrade hook program and the manifest it reads: in every agent's
/// package, so the next version's scripts always find the installed
/// version's hook.
fn hook_files(v: &Validated, agent: Agent, manifest: &PackageManifest) -> Result<Vec<PlannedFile>> {
    let program = v.hook_program(agent);
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
/// The socket unit, if any, goes beside it.
fn unit_files(v: &Validated, agent: Agent, manifest: &PackageManifest) -> Result<Vec<PlannedFile>> {
    let service = agent.service;
    let mut units = vec![(&service.unit, &manifest.unit)];
    if let (Some(socket), Some(name)) = (&service.socket, &manifest.socket) {
        units.push((socket, name));
    }
    let mut files = Vec::new();
    for (source, name) in units {
        let data = std::fs::read(v.resolve(source))
            .with_context(|| format!("reading the unit {}", v.resolve(source).display()))?;
        for (format, dir) in [
            (Format::Deb, "/lib/systemd/system"),
            (Format::Rpm, "/usr/lib/systemd/system"),
        ] {
            files.push(PlannedFile {
                dest: format!("{dir}/{name}"),
                data: data.clone(),
                mode: 0o644,
                config: false,
                only: Some(format),
            });
        }
    }
    Ok(files)
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
