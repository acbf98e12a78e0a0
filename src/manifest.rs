//! The package manifest (`ferry_hook::package::PackageManifest`): what the
//! upgrade hook needs to know of a package, built once per build from the
//! validated descriptor. The maintainer scripts (`crate::scripts`) and the
//! plan (`crate::plan`) take every name they use from it.

use anyhow::{Context, Result};
use ferry_hook::package::{PackageManifest, HOOK_PROTOCOL};

use crate::descriptor::Validated;

/// What the hook needs to know, from the descriptor.
pub fn of(v: &Validated) -> Result<PackageManifest> {
    let d = &v.descriptor;
    let name = d.package.name.clone();
    let agent = v.agent_program().with_context(|| {
        format!(
            "{}: no agent program for the upgrade hook; set hooks.agent",
            v.file.display()
        )
    })?;
    let unit = file_name(&d.service.unit);
    Ok(PackageManifest {
        format: "ferry-package".into(),
        hook_protocol: HOOK_PROTOCOL,
        version: v.version.semver.to_string(),
        schema: d.state.schema,
        agent,
        user: d.service.user.clone(),
        group: d.service.group.clone(),
        unit,
        socket: d.service.socket.as_ref().map(|s| file_name(s)),
        state_dir: v.state_dir().to_string(),
        config_dir: format!("/etc/{name}"),
        runtime_dir: format!("/run/{name}"),
        log_file: format!("/var/log/{name}/upgrades.log"),
        skip_migration_file: format!("/etc/{name}/ferry-skip-migration"),
        work_dir: format!("/var/lib/ferry/{name}"),
        keep_snapshots: d.hooks.keep_snapshots,
        quiesce_timeout_secs: d.hooks.quiesce_timeout_secs,
        health_timeout_secs: d.hooks.health_timeout_secs,
        name,
    })
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The manifest as the file the packages ship.
pub fn to_json(manifest: &PackageManifest) -> Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(manifest)?;
    json.push(b'\n');
    Ok(json)
}
