//! The package manifest (`ferry_hook::package::PackageManifest`): what the
//! upgrade hook needs to know of a package, built once per build from the
//! validated descriptor. The maintainer scripts (`crate::scripts`) and the
//! plan (`crate::plan`) take every name they use from it.

use anyhow::{Context, Result};
use ferry_hook::package::{PackageManifest, HOOK_PROTOCOL};

use crate::descriptor::{Agent, Validated};

/// What the hook needs to know, from the descriptor of an agent.
pub fn of(v: &Validated, agent: Agent) -> Result<PackageManifest> {
    let name = v.descriptor.package.name.clone();
    let program = v.agent_program(agent).with_context(|| {
        format!(
            "{}: no agent program for the upgrade hook; set hooks.agent",
            v.file.display()
        )
    })?;
    let unit = file_name(&agent.service.unit);
    Ok(PackageManifest {
        format: "ferry-package".into(),
        hook_protocol: HOOK_PROTOCOL,
        version: v.version.semver.to_string(),
        schema: agent.state.schema,
        agent: program,
        user: agent.service.user.clone(),
        group: agent.service.group.clone(),
        unit,
        socket: agent.service.socket.as_ref().map(|s| file_name(s)),
        state_dir: agent.state.state_dir().to_string(),
        state_live: agent.state.live.clone(),
        config_dir: format!("/etc/{name}"),
        runtime_dir: format!("/run/{name}"),
        log_file: format!("/var/log/{name}/upgrades.log"),
        skip_migration_file: format!("/etc/{name}/ferry-skip-migration"),
        work_dir: format!("/var/lib/ferry/{name}"),
        keep_snapshots: agent.hooks.keep_snapshots,
        quiesce_timeout_secs: agent.hooks.quiesce_timeout_secs,
        health_timeout_secs: agent.hooks.health_timeout_secs,
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
