//! `ferry channel enable|disable|pin|unpin|rollback`, the same for every
//! backend: each asks the host's backend for what differs between package
//! managers, and keeps the record of what ferry wrote.

use std::fmt::Write as _;
use std::fs;

use anyhow::{bail, Context, Result};

use super::backend::{Edit, Enable, Source};
use super::files::{self, Record};
use super::gpg::checked_key;
use super::host::Host;
use super::report::Report;
use super::window::Window;
use super::write::{apply, check_removable, daemon_reload, plan_changes, remove_recorded};
use super::EnableArgs;

pub fn enable(host: &Host, args: &EnableArgs) -> Result<Report> {
    let backend = host.backend;
    if let Some(problem) = crate::names::channel_name_problem(&args.channel) {
        bail!("--channel: {problem}")
    }
    let window = args.window.as_deref().map(Window::parse).transpose()?;
    let record = host.record()?;
    if let Some(r) = &record {
        if r.repo != args.repo || r.channel != args.channel {
            bail!(
                "{} already follows {} channel {}; run `ferry channel disable` first to switch",
                host.package,
                r.repo,
                r.channel
            )
        }
    }
    let (gpg, armored) = checked_key(&args.key, &args.fingerprint)?;
    let request = Enable {
        host,
        args,
        gpg: &gpg,
        source: Source {
            package: &host.package,
            repo: &args.repo,
            channel: &args.channel,
            armored_key: &armored,
            window: window.as_ref(),
        },
    };
    let (plans, origin) = backend.plan_enable(&request)?;
    let changes = plan_changes(host, &plans, record.as_ref())?;
    let mut rec = record.unwrap_or_else(|| Record {
        package: host.package.clone(),
        family: backend.name().into(),
        repo: args.repo.clone(),
        channel: args.channel.clone(),
        origin: origin.clone(),
        ..Record::default()
    });
    // Files of an earlier enable that this one no longer writes (e.g. a window removed).
    let pin_paths = backend.pin_paths(&host.package);
    let stale: Vec<String> = rec
        .files
        .keys()
        .filter(|p| !pin_paths.contains(p) && !plans.iter().any(|pl| &pl.path == *p))
        .cloned()
        .collect();
    let mut out = Report::new();
    apply(host, &changes, &mut rec, args.dry_run, &mut out)?;
    for p in &stale {
        remove_recorded(host, &mut rec, p, args.dry_run, &mut out)?;
    }
    backend.trust_key(&request, &mut Edit::new(&mut rec, args.dry_run, &mut out))?;
    if !out.changed() {
        let _ = writeln!(
            out,
            "nothing to change: {} already follows {} channel {}",
            host.package, args.repo, args.channel
        );
        return Ok(out);
    }
    if args.dry_run {
        let _ = writeln!(out, "dry run: nothing was changed");
        return Ok(out);
    }
    rec.origin = origin.or(rec.origin);
    rec.window = args.window.clone();
    files::save_record(&host.root, &rec)?;
    daemon_reload(host, &mut out);
    backend.after_enable(host, &mut out);
    let _ = writeln!(
        out,
        "enabled: {} follows {} channel {} ({} automatic updates)",
        host.package,
        args.repo,
        args.channel,
        backend.name()
    );
    Ok(out)
}

pub fn disable(host: &Host, dry_run: bool) -> Result<Report> {
    let Some(mut rec) = host.record()? else {
        let mut out = Report::new();
        let _ = writeln!(
            out,
            "nothing to change: ferry channel is not enabled for {}",
            host.package
        );
        return Ok(out);
    };
    // Every refusal before any removal.
    not_migrating(host, "disable")?;
    for p in rec.files.keys() {
        check_removable(host, &rec, p)?;
    }
    let mut out = Report::new();
    host.backend
        .before_disable(host, &mut Edit::new(&mut rec, dry_run, &mut out))?;
    let paths: Vec<String> = rec.files.keys().cloned().collect();
    for p in &paths {
        remove_recorded(host, &mut rec, p, dry_run, &mut out)?;
    }
    host.backend
        .after_disable(host, &mut Edit::new(&mut rec, dry_run, &mut out))?;
    if dry_run {
        let _ = writeln!(out, "dry run: nothing was changed");
        return Ok(out);
    }
    for d in rec.dirs.iter().rev() {
        if fs::remove_dir(host.path(d)).is_ok() {
            let _ = writeln!(out, "removed directory {d}");
        }
    }
    files::remove_record(&host.root, &host.package)?;
    daemon_reload(host, &mut out);
    let _ = writeln!(
        out,
        "disabled: {} no longer follows {} channel {}",
        host.package, rec.repo, rec.channel
    );
    Ok(out)
}

fn enabled_record(host: &Host) -> Result<Record> {
    host.record()?.with_context(|| {
        format!(
            "ferry channel is not enabled for {}: run `ferry channel enable` first",
            host.package
        )
    })
}

/// While a migration is open it owns the package (docs/MIGRATION.md): a
/// pin, an unpin, a rollback or a disable would change what it holds or
/// undo its hold (on dnf both are versionlocks), and the migration's
/// `complete` would then undo theirs. Refused, also in a dry run, which
/// predicts the refusal.
fn not_migrating(host: &Host, verb: &str) -> Result<()> {
    match crate::migration::channel_reason(&host.root, &host.package) {
        Some(reason) => Err(crate::exit::refused(anyhow::anyhow!(
            "{reason}; `ferry channel {verb}` would change what it holds: run it after the \
             migration ends"
        ))),
        None => Ok(()),
    }
}

pub fn pin(host: &Host, version: &str, dry_run: bool) -> Result<Report> {
    let mut rec = enabled_record(host)?;
    not_migrating(host, "pin")?;
    let mut out = Report::new();
    let full = host.backend.resolve_version(host, version)?;
    let mut edit = Edit::new(&mut rec, dry_run, &mut out);
    if !host.backend.pin(host, &mut edit, &full)? {
        let _ = writeln!(
            out,
            "nothing to change: {} is already pinned to {full}",
            host.package
        );
        return Ok(out);
    }
    rec.pinned = Some(full);
    if dry_run {
        let _ = writeln!(out, "dry run: nothing was changed");
    } else {
        files::save_record(&host.root, &rec)?;
    }
    Ok(out)
}

pub fn unpin(host: &Host, dry_run: bool) -> Result<Report> {
    let mut rec = enabled_record(host)?;
    not_migrating(host, "unpin")?;
    let mut out = Report::new();
    if rec.pinned.is_none() {
        let _ = writeln!(out, "nothing to change: {} is not pinned", host.package);
        return Ok(out);
    }
    host.backend
        .unpin(host, &mut Edit::new(&mut rec, dry_run, &mut out))?;
    if dry_run {
        let _ = writeln!(out, "dry run: nothing was changed");
    } else {
        rec.pinned = None;
        files::save_record(&host.root, &rec)?;
        let _ = writeln!(out, "unpinned {}", host.package);
    }
    Ok(out)
}

pub fn rollback(host: &Host, to: Option<&str>, dry_run: bool) -> Result<Report> {
    enabled_record(host)?;
    not_migrating(host, "rollback")?;
    let mut out = Report::new();
    let version = host.backend.rollback(host, to, dry_run, &mut out)?;
    let pinned = pin(host, &version, dry_run)?;
    out.push_str(pinned.text());
    out.extend(pinned);
    Ok(out)
}
