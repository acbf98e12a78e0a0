//! The `.deb` writer: an ar archive of `debian-binary`, `control.tar.*` and
//! `data.tar.*`, written by ferry itself so that compression is ours to
//! choose (lintian in Debian 12 rejects zstd members: gzip or xz only).

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::{Context, Result};
use md5::{Digest, Md5};

use super::{gzip, xz, Packager, Profile};

mod depends;
mod docs;
use crate::plan::{Format, Plan, PlannedFile};

pub struct Deb {
    pub profile: Profile,
}

/// A member compression dpkg and lintian both accept.
#[derive(Debug, Clone, Copy)]
enum Compression {
    /// gzip at a level: the control member, a few KiB, always at 9.
    Gzip(u32),
    /// gzip in members compressed in parallel, see `gzip.rs`.
    ParallelGzip(gzip::Settings),
    /// xz (LZMA2) in independent blocks, see `xz.rs`.
    Xz(xz::Settings),
}

impl Compression {
    fn suffix(self) -> &'static str {
        match self {
            Compression::Gzip(_) | Compression::ParallelGzip(_) => "gz",
            Compression::Xz(_) => "xz",
        }
    }

    fn compress(self, data: &[u8]) -> Result<Vec<u8>> {
        match self {
            Compression::Gzip(level) => crate::plan::gzip(data, level),
            Compression::ParallelGzip(settings) => gzip::compress(data, settings),
            Compression::Xz(settings) => xz::compress(data, settings),
        }
    }
}

impl Deb {
    fn compression(&self) -> Compression {
        match self.profile {
            // libdeflate at 8 in 1 MiB members over every core: on the
            // bench corpus 0.96-1.00 of nfpm's gzip -9 in a fifth of its
            // time (at 6 it was as large as nfpm's on text). It
            // replaces xz -0, which was smaller (xz finds repeats between
            // files beyond gzip's 32 KiB window) but took most of the
            // build's time; gzip also unpacks several times faster than xz
            // on the VMs.
            Profile::Fast => Compression::ParallelGzip(gzip::Settings {
                level: 8,
                high_entropy_level: 6,
                chunk_kib: 1024,
            }),
            Profile::Small => Compression::Xz(xz::SMALL),
        }
    }
}

impl Packager for Deb {
    fn format(&self) -> Format {
        Format::Deb
    }

    fn file_name(&self, plan: &Plan) -> String {
        format!(
            "{}_{}_{}.deb",
            plan.name,
            plan.version.deb_file_version(),
            plan.architecture.deb
        )
    }

    fn write(&self, plan: &Plan, out: &mut dyn Write) -> Result<()> {
        let compression = self.compression();
        let docs = docs::files(plan)?;
        let mut files: Vec<&PlannedFile> = plan.files_for(Format::Deb).chain(&docs).collect();
        files.sort_by(|a, b| a.dest.cmp(&b.dest));
        let data_tar = data_tar(&files, plan.source_date)?;
        let control_tar = control_tar(plan, &files)?;
        // Both members are compressed before anything is written, so a
        // failure leaves no partial archive behind.
        let control = Compression::Gzip(9).compress(&control_tar)?;
        let data = compression.compress(&data_tar)?;
        let mut ar = ArWriter::new(out, plan.source_date)?;
        ar.member("debian-binary", b"2.0\n")?;
        ar.member("control.tar.gz", &control)?;
        ar.member(&format!("data.tar.{}", compression.suffix()), &data)?;
        Ok(())
    }
}

/// The control member: control, md5sums, conffiles and the scripts.
fn control_tar(plan: &Plan, files: &[&PlannedFile]) -> Result<Vec<u8>> {
    let mut tar = TarWriter::new(plan.source_date);
    tar.dir("./")?;
    tar.file("./control", control_file(plan, files).as_bytes(), 0o644)?;
    let conffiles: String = files
        .iter()
        .filter(|f| f.config)
        .map(|f| format!("{}\n", f.dest))
        .collect();
    if !conffiles.is_empty() {
        tar.file("./conffiles", conffiles.as_bytes(), 0o644)?;
    }
    tar.file("./md5sums", md5sums(files).as_bytes(), 0o644)?;
    let mut scripts: Vec<_> = plan.scripts.deb.iter().collect();
    scripts.sort_by_key(|(name, _)| *name);
    for (name, text) in scripts {
        tar.file(&format!("./{name}"), text.as_bytes(), 0o755)?;
    }
    tar.finish()
}

fn control_file(plan: &Plan, files: &[&PlannedFile]) -> String {
    // dpkg-gencontrol counts each file in whole KiB, rounded up.
    let installed_kib: u64 = files
        .iter()
        .map(|f| (f.data.len() as u64).div_ceil(1024))
        .sum();
    let mut c = String::new();
    let mut field = |name: &str, value: &str| c.push_str(&format!("{name}: {value}\n"));
    field("Package", &plan.name);
    field("Version", &plan.version.deb());
    field("Architecture", &plan.architecture.deb);
    field("Maintainer", &plan.maintainer);
    field("Installed-Size", &installed_kib.max(1).to_string());
    let depends = depends::depends(&plan.declared.dependencies.deb, files);
    if !depends.is_empty() {
        field("Depends", &depends.join(", "));
    }
    field("Section", &plan.declared.package.section);
    field("Priority", &plan.declared.package.priority);
    if let Some(home) = &plan.homepage {
        field("Homepage", home);
    }
    field(
        "Description",
        &format!(
            "{}\n{}",
            plan.summary,
            extended_description(&plan.description)
        ),
    );
    c
}

/// Debian's extended description: each line indented by one space, and
/// empty lines written as " .".
fn extended_description(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim().is_empty() {
                " .".to_string()
            } else {
                format!(" {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn md5sums(files: &[&PlannedFile]) -> String {
    files
        .iter()
        .map(|f| {
            let digest = Md5::digest(&f.data);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{hex}  {}\n", f.dest.trim_start_matches('/'))
        })
        .collect()
}

/// The data member: every file, with each parent directory listed once.
fn data_tar(files: &[&PlannedFile], source_date: u64) -> Result<Vec<u8>> {
    let mut dirs = BTreeSet::new();
    for f in files {
        let mut path = f.dest.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            dirs.insert(parent.to_string());
            path = parent;
        }
    }
    let mut tar = TarWriter::new(source_date);
    tar.dir("./")?;
    // Directories first, in path order, then files in path order: the
    // order is a function of the plan alone.
    for dir in &dirs {
        tar.dir(&format!(".{dir}/"))?;
    }
    for f in files {
        tar.file(&format!(".{}", f.dest), &f.data, f.mode)?;
    }
    tar.finish()
}

/// A tar stream with fixed owners and times: root:root, the source date.
struct TarWriter {
    builder: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl TarWriter {
    fn new(mtime: u64) -> Self {
        TarWriter {
            builder: tar::Builder::new(Vec::new()),
            mtime,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> Result<tar::Header> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(self.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        Ok(h)
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let h = self.header(tar::EntryType::Directory, 0o755, 0)?;
        self.append(h, path, &[])
            .with_context(|| format!("adding directory {path}"))
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let h = self.header(tar::EntryType::Regular, mode, data.len() as u64)?;
        self.append(h, path, data)
            .with_context(|| format!("adding {path}"))
    }

    /// Keeps the `./` prefix dpkg-deb writes (the tar crate's path setter
    /// strips it) when the name fits the header; longer names go through
    /// the crate's GNU long-name support.
    fn append(&mut self, mut h: tar::Header, path: &str, data: &[u8]) -> Result<()> {
        const NAME_FIELD: usize = 100;
        if path.len() < NAME_FIELD {
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            self.builder.append(&h, data)?;
        } else {
            self.builder.append_data(&mut h, path, data)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>> {
        Ok(self.builder.into_inner()?)
    }
}

/// The .deb's ar archive, written by the `ar` crate: members with owner
/// 0:0, mode 100644 and the build's timestamp, as dpkg-deb writes them.
struct ArWriter<'a> {
    builder: ar::Builder<&'a mut dyn Write>,
    mtime: u64,
}

impl<'a> ArWriter<'a> {
    fn new(out: &'a mut dyn Write, mtime: u64) -> Result<Self> {
        Ok(ArWriter {
            builder: ar::Builder::new(out),
            mtime,
        })
    }

    fn member(&mut self, name: &str, data: &[u8]) -> Result<()> {
        anyhow::ensure!(
            name.len() <= 16,
            "ar member name {name} is longer than 16 bytes"
        );
        let mut header = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
        header.set_mtime(self.mtime);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(0o100644);
        self.builder.append(&header, data)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_description_marks_blank_lines() {
        assert_eq!(extended_description("a\n\nb"), " a\n .\n b");
    }

    #[test]
    fn ar_member_is_padded() {
        let mut buf = Vec::new();
        let mut ar = ArWriter::new(&mut buf, 0).unwrap();
        ar.member("x", b"abc").unwrap();
        assert_eq!(buf.len(), 8 + 60 + 4);
        assert_eq!(&buf[8 + 58..8 + 60], b"`\n");
    }
}
