//! Writing what a backend planned (or printing its diff) and removing what
//! was recorded, refusing to touch a file somebody changed.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::files::{self, Change, FileRecord, Planned, Record};
use super::host::{output, Host};
use super::report::Report;

/// What applying a list of planned files would change, refusals first.
pub fn plan_changes(
    host: &Host,
    plans: &[Planned],
    record: Option<&Record>,
) -> Result<Vec<(Planned, Change)>> {
    plans
        .iter()
        .map(|p| Ok((p.clone(), files::change_for(&host.root, p, record)?)))
        .collect()
}

/// Writes the changed files (or prints their diffs) and records them.
pub fn apply(
    host: &Host,
    changes: &[(Planned, Change)],
    record: &mut Record,
    dry_run: bool,
    out: &mut Report,
) -> Result<usize> {
    let mut changed = 0;
    for (plan, change) in changes {
        let (old, verb) = match change {
            Change::Unchanged => continue,
            Change::Create => (Vec::new(), "create"),
            Change::Update { old } => (old.clone(), "update"),
        };
        changed += 1;
        out.change(
            &plan.path,
            verb,
            String::from_utf8_lossy(&old),
            String::from_utf8_lossy(&plan.contents),
        );
        if dry_run {
            let old_name = if old.is_empty() {
                "/dev/null".to_string()
            } else {
                plan.path.clone()
            };
            let _ = writeln!(out, "would {verb} {} (mode {:04o})", plan.path, plan.mode);
            out.push_str(&files::unified_diff(
                &String::from_utf8_lossy(&old),
                &String::from_utf8_lossy(&plan.contents),
                &old_name,
                &plan.path,
            ));
            continue;
        }
        files::write_atomic(
            &host.root,
            &plan.path,
            &plan.contents,
            plan.mode,
            &mut record.dirs,
        )?;
        record.files.insert(
            plan.path.clone(),
            FileRecord {
                sha256: files::sha256_hex(&plan.contents),
                mode: plan.mode,
            },
        );
        let _ = writeln!(out, "{verb}d {}", plan.path);
    }
    Ok(changed)
}

/// Reloads systemd on a live host after a unit or drop-in changed.
pub fn daemon_reload(host: &Host, out: &mut Report) {
    if host.is_live() && Path::new("/run/systemd/system").is_dir() {
        if let Err(e) = output(Command::new("systemctl").arg("daemon-reload")) {
            let _ = writeln!(out, "warning: systemctl daemon-reload: {e:#}");
        }
    }
}

/// Removes one recorded file unless somebody changed it.
pub fn remove_recorded(
    host: &Host,
    rec: &mut Record,
    path: &str,
    dry_run: bool,
    out: &mut Report,
) -> Result<()> {
    check_removable(host, rec, path)?;
    let before = fs::read(host.path(path)).unwrap_or_default();
    out.change(path, "remove", String::from_utf8_lossy(&before), "");
    if dry_run {
        let _ = writeln!(out, "would remove {path}");
        return Ok(());
    }
    match fs::remove_file(host.path(path)) {
        Ok(()) => {
            let _ = writeln!(out, "removed {path}");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {path}")),
    }
    rec.files.remove(path);
    Ok(())
}

pub fn check_removable(host: &Host, rec: &Record, path: &str) -> Result<()> {
    let Some(want) = rec.files.get(path) else {
        return Ok(());
    };
    match fs::read(host.path(path)) {
        Ok(data) if files::sha256_hex(&data) != want.sha256 => bail!(
            "{path} was changed since ferry wrote it; ferry will not delete your changes. \
             Move it aside (or put ferry's version back) and run the command again"
        ),
        _ => Ok(()),
    }
}
