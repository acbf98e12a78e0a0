//! Reads what a repository needs from a package file: name, version,
//! architecture, the .deb control paragraph, and a digest of the content.
//!
//! Done in-process (a .deb is an `ar` archive holding a compressed tar, an rpm
//! has a lead and two headers) so that publishing needs neither dpkg nor rpm
//! tools for reading, and stays fast on a pool of a thousand files.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::state::Format;
use crate::fsutil;

/// A package file given to `publish`, as read from disk.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub path: PathBuf,
    pub format: Format,
    pub name: String,
    pub version: String,
    pub arch: String,
    pub content: String,
    /// Control paragraph of a .deb; empty for an rpm.
    pub control: String,
}

pub fn inspect(path: &Path) -> Result<Inspected> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read package {}", path.display()))?;
    let result = if bytes.starts_with(b"!<arch>\n") {
        inspect_deb(path, &bytes)
    } else if bytes.starts_with(&[0xed, 0xab, 0xee, 0xdb]) {
        inspect_rpm(path, &bytes)
    } else {
        Err(anyhow!(
            "it is neither a .deb (ar archive) nor an .rpm (no rpm lead)"
        ))
    };
    result.with_context(|| format!("{} is not a package ferry can publish", path.display()))
}

fn inspect_deb(path: &Path, bytes: &[u8]) -> Result<Inspected> {
    let control = deb_control(bytes)?;
    let field = |name: &str| {
        control_field(&control, name).ok_or_else(|| anyhow!("its control file has no {name} field"))
    };
    Ok(Inspected {
        path: path.to_path_buf(),
        format: Format::Deb,
        name: field("Package")?,
        version: field("Version")?,
        arch: field("Architecture")?,
        content: fsutil::sha256_hex(bytes),
        control,
    })
}

fn inspect_rpm(path: &Path, bytes: &[u8]) -> Result<Inspected> {
    let metadata =
        rpm::PackageMetadata::parse(&mut &bytes[..]).context("cannot parse its rpm headers")?;
    if metadata.is_source_package() {
        bail!("it is a source rpm; repositories of ferry hold binary packages only");
    }
    let epoch = metadata.get_epoch().unwrap_or(0);
    let version = metadata.get_version()?;
    let release = metadata.get_release()?;
    let full = match epoch {
        0 => format!("{version}-{release}"),
        e => format!("{e}:{version}-{release}"),
    };
    Ok(Inspected {
        path: path.to_path_buf(),
        format: Format::Rpm,
        name: metadata.get_name()?.to_string(),
        version: full,
        arch: metadata.get_arch()?.to_string(),
        content: rpm_content_digest(bytes)?,
        control: String::new(),
    })
}

/// SHA-256 of an rpm without its lead and signature header: the header and
/// payload, which `rpmsign --addsign` leaves untouched. So republishing an rpm
/// that ferry signed, or the unsigned file it came from, is the same content.
pub fn rpm_content_digest(bytes: &[u8]) -> Result<String> {
    const LEAD: usize = 96;
    let intro = bytes
        .get(LEAD..LEAD + 16)
        .ok_or_else(|| anyhow!("truncated rpm"))?;
    if intro[..3] != [0x8e, 0xad, 0xe8] {
        bail!("rpm signature header is missing");
    }
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let (entries, store) = (be32(&intro[8..12]), be32(&intro[12..16]));
    let signature_len = 16 + entries * 16 + store;
    let header_start = LEAD + signature_len.div_ceil(8) * 8;
    let rest = bytes
        .get(header_start..)
        .ok_or_else(|| anyhow!("truncated rpm"))?;
    Ok(fsutil::sha256_hex(rest))
}

/// The file `inside` (e.g. `./usr/lib/NAME/ferry-package.json`) of a
/// .deb's or an rpm's payload: the bytes of a package ferry reads without
/// installing it (`ferry migration perform` reads the target's manifest).
pub fn payload_file(path: &Path, inside: &str) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read package {}", path.display()))?;
    let found = if bytes.starts_with(b"!<arch>\n") {
        ar_member(&bytes, "data.tar").and_then(|(name, member)| tar_file(&name, member, inside))
    } else {
        rpm_file(path, inside)
    };
    found.with_context(|| format!("{}: cannot read {inside} in it", path.display()))
}

fn rpm_file(path: &Path, inside: &str) -> Result<Vec<u8>> {
    let package = rpm::Package::open(path).context("cannot parse it as an rpm")?;
    let wanted = Path::new(inside.trim_start_matches('.'));
    for file in package.files().context("cannot read its payload")? {
        let file = file.context("cannot read its payload")?;
        if file.metadata.path() == wanted {
            return file
                .content()
                .map(<[u8]>::to_vec)
                .ok_or_else(|| anyhow!("it is not a regular file"));
        }
    }
    bail!("no such file in the package")
}

fn tar_file(name: &str, member: Vec<u8>, inside: &str) -> Result<Vec<u8>> {
    let mut archive = tar::Archive::new(decompressed(name, &member)?);
    let wanted = inside.trim_start_matches("./");
    for entry in archive.entries().context("cannot read its data.tar")? {
        let mut entry = entry.context("cannot read its data.tar")?;
        if entry.path()?.to_string_lossy().trim_start_matches("./") == wanted {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            return Ok(data);
        }
    }
    bail!("no such file in the package")
}

/// A reader of the ar member `name` (`*.tar`, `.tar.gz`, `.tar.xz`,
/// `.tar.zst`). gzip and xz files may be several members or streams one
/// after the other, as dpkg reads them: ferry's own fast profile writes
/// gzip in 1 MiB members (`build/gzip.rs`), and a reader of the first
/// member alone would see only the first MiB of the tar.
fn decompressed<'a>(name: &str, member: &'a [u8]) -> Result<Box<dyn Read + 'a>> {
    Ok(match name.rsplit_once(".tar").map_or("?", |(_, z)| z) {
        "" => Box::new(member),
        ".gz" => Box::new(flate2::read::MultiGzDecoder::new(member)),
        ".xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(member)),
        ".zst" => Box::new(zstd::stream::read::Decoder::new(member)?),
        _ => bail!("its member {name} uses a compression ferry cannot read"),
    })
}

/// The control paragraph of a .deb: member `control.tar.*` of the ar archive,
/// file `./control` inside it.
pub fn deb_control(bytes: &[u8]) -> Result<String> {
    let (name, member) = ar_member(bytes, "control.tar")?;
    let reader = decompressed(&name, &member)?;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().context("cannot read control.tar")? {
        let mut entry = entry.context("cannot read control.tar")?;
        if entry.path()?.as_os_str() == "./control" || entry.path()?.as_os_str() == "control" {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .context("control file is not UTF-8")?;
            return Ok(text);
        }
    }
    bail!("its control.tar has no control file")
}

/// The member `prefix.*` (`control.tar`, `data.tar`) of a .deb's ar
/// archive (the `ar` crate): its name and bytes.
fn ar_member(bytes: &[u8], prefix: &str) -> Result<(String, Vec<u8>)> {
    let mut archive = ar::Archive::new(bytes);
    while let Some(entry) = archive.next_entry() {
        let mut entry = entry.context("corrupt ar archive")?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        if name.starts_with(prefix) {
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .with_context(|| format!("truncated ar member {name}"))?;
            return Ok((name, data));
        }
    }
    bail!("it has no {prefix} member")
}

/// Value of a single-line field of a control paragraph.
pub fn control_field(control: &str, name: &str) -> Option<String> {
    control.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.eq_ignore_ascii_case(name)).then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip_member(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_file_past_the_first_gzip_member_is_read() {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("./usr/bin/agent", vec![7u8; 3 << 20]),
            ("./usr/lib/agent/ferry-package.json", b"{}".to_vec()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, &data[..]).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        // Members of 1 MiB, as the fast profile writes them.
        let member: Vec<u8> = tar.chunks(1 << 20).flat_map(gzip_member).collect();
        let found = tar_file("data.tar.gz", member, "./usr/lib/agent/ferry-package.json");
        assert_eq!(found.unwrap(), b"{}");
    }
}
