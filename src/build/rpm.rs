//! The `.rpm` writer, on the `rpm` crate (the engine under
//! cargo-generate-rpm, which has no library of its own).

use std::io::Write;

use anyhow::{Context, Result};
use rpm::{BuildConfig, CompressionWithLevel, Dependency, FileMode, FileOptions, Scriptlet};

use super::{Packager, Profile};
use crate::hooks::RpmScriptlet;
use crate::plan::{Format, Plan};

pub struct Rpm {
    pub profile: Profile,
}

impl Rpm {
    fn compression(&self) -> CompressionWithLevel {
        // rpm >= 4.14 reads zstd payloads; zstd at level 19 is as small as
        // xz -6 here and decompresses several times faster on the VMs.
        match self.profile {
            Profile::Fast => CompressionWithLevel::Zstd(3),
            Profile::Small => CompressionWithLevel::Zstd(19),
        }
    }
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
            .compression(self.compression())
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
        for requirement in &plan.rpm_requires {
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
        package.write(&mut &mut *out).context("writing the rpm")?;
        Ok(())
    }
}

/// Parses `name`, or `name OP version` with OP one of = < <= > >=.
fn parse_requirement(text: &str) -> Result<Dependency> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    Ok(match parts.as_slice() {
        [name] => Dependency::any(*name),
        [name, "=", v] => Dependency::eq(*name, *v),
        [name, "<", v] => Dependency::less(*name, *v),
        [name, "<=", v] => Dependency::less_eq(*name, *v),
        [name, ">", v] => Dependency::greater(*name, *v),
        [name, ">=", v] => Dependency::greater_eq(*name, *v),
        _ => anyhow::bail!(
            "rpm requirement `{text}` is not `NAME` or `NAME OP VERSION` (OP one of = < <= > >=)"
        ),
    })
}
