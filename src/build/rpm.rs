//! The `.rpm` writer, on the `rpm` crate (the engine under
//! cargo-generate-rpm, which has no library of its own).
//!
//! The crate compresses the payload with a level and nothing else: no
//! window size, no job size, no filter. So ferry has it write the payload
//! uncompressed, compresses it itself (zstd, or xz with ferry's writer),
//! and puts back what rpmbuild writes for such a payload: the compressor
//! tag, the flags, the digest of the compressed payload,
//! `rpmlib(PayloadIsZstd)` or `rpmlib(PayloadIsXz)`, and a signature header
//! over the new header and size.
//!
//! The crate is built from vendor/rpm, patched so that a v4 package is not
//! hashed with the SHA-512 and SHA3-256 digests only v6 packages carry
//! (vendor/README.md): they were 43% of the fast profile's .rpm CPU.

use std::io::Write;

use anyhow::{Context, Result};
use rpm::{
    BuildConfig, CompressionWithLevel, Dependency, FileMode, FileOptions, Header, HeaderEntry,
    IndexData, IndexTag, Scriptlet, SignatureHeaderBuilder,
};
use zstd::zstd_safe::CParameter;

use super::{xz, Packager, Profile};
use crate::plan::{Format, Plan};
use crate::scripts::RpmScriptlet;

pub struct Rpm {
    pub profile: Profile,
}

/// How the payload is compressed: rpm >= 4.14 reads zstd, every rpm xz.
#[derive(Debug, Clone, Copy)]
enum Compression {
    /// Decompresses several times faster than xz on the VMs.
    Zstd(Zstd),
    /// Smaller than zstd -19 for about as much CPU.
    Xz(xz::Settings),
}

#[derive(Debug, Clone, Copy)]
struct Zstd {
    level: i32,
    /// log2 of the window: how far back a match may reach, and about how
    /// much memory decompression takes. rpm and the zstd tool decode up
    /// to 27 (128 MiB) without being told to.
    window_log: u32,
    /// log2 of the match finder's table of earlier positions; 0 keeps the
    /// level's.
    chain_log: u32,
    /// The shortest match sought; 0 keeps the level's.
    min_match: u32,
    /// Input cut into jobs of this size, compressed in parallel. Fixed so
    /// that the output does not depend on the number of cores (zstd's
    /// output then depends on the job size, not on the thread count); each
    /// job still matches into the data before it, reloading up to half a
    /// window of it, which costs CPU.
    job_mib: u32,
}

impl Rpm {
    fn compression(&self) -> Compression {
        match self.profile {
            // zstd's default level: on the bench corpus 9-38% smaller
            // than nfpm's gzip, and less CPU than the crate's own work
            // (digests, cpio). Level 6 is 3-9% smaller for twice the
            // CPU, which the .deb's gzip, built beside it, needs more.
            Profile::Fast => Compression::Zstd(Zstd {
                level: 3,
                window_log: 23,
                chain_log: 0,
                min_match: 0,
                job_mib: 4,
            }),
            // The .deb's xz: zstd -19 (what cargo-generate-rpm writes) is
            // 1-13% larger on the bench corpus, a 32 MiB window barely
            // helps it, and it takes about as much CPU.
            Profile::Small => Compression::Xz(xz::SMALL),
        }
    }
}

impl Compression {
    fn compress(self, data: &[u8]) -> Result<Vec<u8>> {
        match self {
            Compression::Zstd(zstd) => zstd.compress(data, super::threads()),
            Compression::Xz(settings) => xz::compress(data, settings),
        }
    }

    /// What rpmbuild writes in the header for such a payload.
    fn tags(self) -> PayloadTags {
        match self {
            Compression::Zstd(zstd) => PayloadTags {
                compressor: "zstd",
                flags: zstd.level.to_string(),
                rpmlib: ("PayloadIsZstd", "5.4.18-1"),
            },
            Compression::Xz(settings) => PayloadTags {
                compressor: "xz",
                flags: settings.preset.to_string(),
                rpmlib: ("PayloadIsXz", "5.2-1"),
            },
        }
    }
}

/// What the header says of the payload's compression.
struct PayloadTags {
    compressor: &'static str,
    /// rpmbuild writes the level.
    flags: String,
    /// The rpmlib() feature and version the package requires.
    rpmlib: (&'static str, &'static str),
}

impl Zstd {
    /// Compresses on `workers` threads (at least one: zstd's output with
    /// none differs from its output with any number).
    fn compress(self, data: &[u8], workers: u32) -> Result<Vec<u8>> {
        let mut e = zstd::stream::Encoder::new(Vec::with_capacity(data.len() / 2), self.level)?;
        // With the size known, zstd shrinks the window to the payload.
        e.set_pledged_src_size(Some(data.len() as u64))?;
        e.set_parameter(CParameter::WindowLog(self.window_log))?;
        e.set_parameter(CParameter::ChainLog(self.chain_log))?;
        e.set_parameter(CParameter::MinMatch(self.min_match))?;
        e.set_parameter(CParameter::NbWorkers(workers.max(1)))?;
        e.set_parameter(CParameter::JobSize(self.job_mib << 20))?;
        e.write_all(data)?;
        Ok(e.finish()?)
    }
}

/// Replaces the uncompressed payload the crate wrote with a compressed
/// one, and updates the header and signature header to match.
fn compress_payload(package: rpm::Package, compression: Compression) -> Result<rpm::Package> {
    let payload = compression.compress(&package.payload)?;
    let mut metadata = package.metadata;
    metadata.header = payload_header(&metadata.header, &payload, &compression.tags())?;
    let header_bytes = metadata.header_bytes()?;
    metadata.signature = SignatureHeaderBuilder::from_existing(&metadata.signature)?
        .set_content_length((header_bytes.len() + payload.len()) as u64)
        .calculate_digests(&header_bytes)
        .build()?;
    Ok(rpm::Package { metadata, payload })
}

/// The main header as rpmbuild writes it for the compressed payload.
fn payload_header(
    header: &Header<IndexTag>,
    payload: &[u8],
    tags: &PayloadTags,
) -> Result<Header<IndexTag>> {
    let tag = |t: IndexTag| u32::from(t);
    let mut entries: Vec<HeaderEntry> = header
        .get_all_entries()?
        .into_iter()
        // The region tag is made anew, and the payload tags replaced.
        .filter(|(t, _)| {
            ![
                tag(IndexTag::RPMTAG_HEADERIMMUTABLE),
                tag(IndexTag::RPMTAG_PAYLOADCOMPRESSOR),
                tag(IndexTag::RPMTAG_PAYLOADFLAGS),
                tag(IndexTag::RPMTAG_PAYLOADSHA256),
            ]
            .contains(t)
        })
        .map(|(t, data)| HeaderEntry::new(t, data))
        .collect();
    let digest = crate::digest::sha256_hex(payload);
    entries.extend([
        HeaderEntry::new(
            tag(IndexTag::RPMTAG_PAYLOADCOMPRESSOR),
            IndexData::StringTag(tags.compressor.into()),
        ),
        HeaderEntry::new(
            tag(IndexTag::RPMTAG_PAYLOADFLAGS),
            IndexData::StringTag(tags.flags.clone()),
        ),
        HeaderEntry::new(
            tag(IndexTag::RPMTAG_PAYLOADSHA256),
            IndexData::StringArray(vec![digest]),
        ),
    ]);
    Ok(Header::from_entries(
        entries,
        IndexTag::RPMTAG_HEADERIMMUTABLE,
    ))
}

impl Packager for Rpm {
    fn format(&self) -> Format {
        Format::Rpm
    }

    fn file_name(&self, plan: &Plan) -> String {
        format!(
            "{}-{}-{}.{}.rpm",
            plan.name,
            plan.version.rpm_version(),
            plan.version.rpm_release(),
            plan.architecture.rpm
        )
    }

    fn write(&self, plan: &Plan, out: &mut dyn Write) -> Result<()> {
        let config = BuildConfig::v4()
            .compression(CompressionWithLevel::None)
            .source_date(plan.source_date as u32);
        let mut b = rpm::PackageBuilder::new(
            &plan.name,
            &plan.version.rpm_version(),
            &plan.license,
            &plan.architecture.rpm,
            &plan.summary,
        );
        b.using_config(config)
            .release(plan.version.rpm_release())
            .description(plan.description.as_str())
            .packager(plan.maintainer.as_str())
            // rpmlint still asks for a Group; no descriptor field, since
            // modern rpm ignores it.
            .group("Applications/System")
            .build_host("ferry")
            .add_changelog_entry(
                format!("{} - {}", plan.maintainer, plan.version.rpm_evr()),
                "- Built by ferry.",
                plan.source_date as u32,
            );
        if let Some(epoch) = plan.version.epoch {
            b.epoch(epoch);
        }
        if let Some(home) = &plan.homepage {
            b.url(home.as_str());
        }
        for f in plan.files_for(Format::Rpm) {
            let mut options =
                FileOptions::new(f.dest.as_str()).mode(FileMode::regular(f.mode as u16));
            if f.config {
                options = options.config().noreplace();
            }
            if f.is_doc() {
                options = options.doc();
            }
            b.with_file_contents(f.data.clone(), options)
                .with_context(|| format!("adding {} to the rpm", f.dest))?;
        }
        let compression = self.compression();
        // What rpmbuild requires for the payload's compressor.
        let (feature, version) = compression.tags().rpmlib;
        b.requires(Dependency::rpmlib(feature, version));
        for requirement in &plan.declared.dependencies.rpm {
            b.requires(parse_requirement(requirement)?);
        }
        for (scriptlet, text) in &plan.scripts.rpm {
            let s = Scriptlet::new(text.as_str());
            match scriptlet {
                RpmScriptlet::Pretrans => b.pre_trans_script(s),
                RpmScriptlet::Pre => b.pre_install_script(s),
                RpmScriptlet::Post => b.post_install_script(s),
                RpmScriptlet::Preun => b.pre_uninstall_script(s),
                RpmScriptlet::Postun => b.post_uninstall_script(s),
                RpmScriptlet::Posttrans => b.post_trans_script(s),
            };
        }
        let package = b.build().context("building the rpm")?;
        let package = compress_payload(package, compression)?;
        package.write(&mut &mut *out).context("writing the rpm")?;
        Ok(())
    }
}

/// The rpm crate's form of a requirement the descriptor's validation
/// accepted (`descriptor::dependencies::parse_rpm`).
fn parse_requirement(text: &str) -> Result<Dependency> {
    use crate::descriptor::dependencies::{parse_rpm, RpmOp};
    let requirement = parse_rpm(text).map_err(anyhow::Error::msg)?;
    let name = requirement.name;
    Ok(match requirement.version {
        None => Dependency::any(name),
        Some((RpmOp::Eq, v)) => Dependency::eq(name, v),
        Some((RpmOp::Less, v)) => Dependency::less(name, v),
        Some((RpmOp::LessEq, v)) => Dependency::less_eq(name, v),
        Some((RpmOp::Greater, v)) => Dependency::greater(name, v),
        Some((RpmOp::GreaterEq, v)) => Dependency::greater_eq(name, v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 MiB window and 1 MiB jobs, so that test data spans several jobs.
    const SMALL_TEST_SETTINGS: Zstd = Zstd {
        level: 3,
        window_log: 20,
        chain_log: 0,
        min_match: 0,
        job_mib: 1,
    };

    #[test]
    fn recompressed_package_keeps_valid_digests_and_the_archive() {
        let cases = [
            (
                Compression::Zstd(SMALL_TEST_SETTINGS),
                rpm::CompressionType::Zstd,
            ),
            (Compression::Xz(xz::SMALL), rpm::CompressionType::Xz),
        ];
        for (compression, compressor) in cases {
            let mut b = rpm::PackageBuilder::new("probe", "1", "MIT", "noarch", "probe");
            b.using_config(BuildConfig::v4().compression(CompressionWithLevel::None))
                .with_file_contents(
                    b"agent started\n".repeat(10_000),
                    FileOptions::new("/usr/share/probe/log"),
                )
                .unwrap();
            let package = b.build().unwrap();
            let archive = package.payload.clone();
            let mut written = Vec::new();
            compress_payload(package, compression)
                .unwrap()
                .write(&mut written)
                .unwrap();
            let mut read = rpm::Package::parse(&mut &written[..]).unwrap();
            read.verify_digests().unwrap();
            assert_eq!(read.metadata.get_payload_compressor().unwrap(), compressor);
            assert!(read.payload.len() < archive.len() / 10);
            read.decompress_payload().unwrap();
            assert_eq!(read.payload, archive);
            // The digest of the uncompressed archive, which the rpm crate
            // (patched in vendor/rpm) computes while writing it, and only
            // the v4 digests.
            let header = &read.metadata.header;
            assert_eq!(
                header
                    .get_entry_data_as_string_array(IndexTag::RPMTAG_PAYLOADSHA256ALT)
                    .unwrap(),
                [crate::digest::sha256_hex(&archive)]
            );
            for v6_only in [
                IndexTag::RPMTAG_PAYLOAD_SHA512,
                IndexTag::RPMTAG_PAYLOAD_SHA3_256,
            ] {
                assert!(!header.entry_is_present(v6_only), "{v6_only:?}");
            }
        }
    }

    #[test]
    fn zstd_output_does_not_depend_on_the_workers() {
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| ((i % 251) ^ (i >> 13)) as u8)
            .collect();
        let zstd = SMALL_TEST_SETTINGS;
        let one = zstd.compress(&data, 1).unwrap();
        assert_eq!(zstd.compress(&data, 3).unwrap(), one);
    }
}
