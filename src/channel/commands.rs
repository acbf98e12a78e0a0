//! `ferry channel enable|disable|pin|unpin|rollback|install`, the same for every
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
use crate::holds::{self, Entry, Kind};

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
    holds::remove(&host.root, &host.package, Kind::Pin)?;
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
/// pin, an unpin, a rollback, an install (`perform` moves the package under
/// a migration) or a disable would change what it holds or
/// undo its hold (on dnf both are versionlocks), and the migration's
/// `complete` would then undo theirs. Refused, also in a dry run, which
/// predicts the refusal. The open migration is read from the one record of
/// holds (crate::holds), where `ferry migration initialize` puts it.
fn not_migrating(host: &Host, verb: &str) -> Result<()> {
    let holds = holds::load(&host.root, &host.package)?;
    match holds.get(Kind::Migration) {
        Some(m) => Err(crate::exit::refused(anyhow::anyhow!(
            "{} is held by {} ({}) until `{}`; `ferry channel {verb}` would change what it \
             holds: run it after the migration ends",
            host.package,
            m.by,
            m.why,
            m.undo
        ))),
        None => Ok(()),
    }
}

/// Why a pin is set, for the record of holds: the command that set it and
/// the reason given (`--reason`; by default, what the command did).
struct Reason<'a> {
    command: &'a str,
    given: Option<&'a str>,
}

impl Reason<'_> {
    fn entry(&self, full: &str, did: &str) -> Entry {
        Entry {
            kind: Kind::Pin,
            by: holds::by(self.command),
            why: match self.given.filter(|g| !g.is_empty()) {
                Some(g) => g.to_string(),
                None => format!("{did} {full}"),
            },
            since: Some(crate::date::now_unix()),
            undo: "ferry channel unpin".into(),
            version: Some(full.to_string()),
        }
    }
}

pub fn pin(host: &Host, version: &str, dry_run: bool, reason: Option<&str>) -> Result<Report> {
    let rec = enabled_record(host)?;
    not_migrating(host, "pin")?;
    let full = host.backend.resolve_version(host, version)?;
    let why = Reason {
        command: "ferry channel pin",
        given: reason,
    };
    pin_full(host, rec, &full, dry_run, why.entry(&full, "pinned to"))
}

/// Pins the full version `full`, already resolved, and records `entry` as
/// the pin's holder.
fn pin_full(
    host: &Host,
    mut rec: Record,
    full: &str,
    dry_run: bool,
    entry: Entry,
) -> Result<Report> {
    let mut out = Report::new();
    let mut edit = Edit::new(&mut rec, dry_run, &mut out);
    if !host.backend.pin(host, &mut edit, full)? {
        let _ = writeln!(
            out,
            "nothing to change: {} is already pinned to {full}",
            host.package
        );
        // A pin set before the record of holds existed gets its entry.
        if !dry_run
            && holds::load(&host.root, &host.package)?
                .get(Kind::Pin)
                .is_none()
        {
            holds::put(&host.root, &host.package, entry)?;
        }
        return Ok(out);
    }
    rec.pinned = Some(full.to_string());
    if dry_run {
        let _ = writeln!(out, "dry run: nothing was changed");
    } else {
        files::save_record(&host.root, &rec)?;
        holds::put(&host.root, &host.package, entry)?;
    }
    Ok(out)
}

/// After `ferry migration complete` of a migration that moved the package
/// to `full`: a host that follows a channel is pinned to it, since its
/// updater would otherwise move it again (down to an older pin, or up to
/// the channel's newest) and undo the migration. None when the host
/// follows no channel.
pub fn pin_after_migration(host: &Host, full: &str, entry: Entry) -> Result<Option<Report>> {
    let Some(rec) = host.record()? else {
        return Ok(None);
    };
    pin_full(host, rec, full, false, entry).map(Some)
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
        holds::remove(&host.root, &host.package, Kind::Pin)?;
        let _ = writeln!(out, "unpinned {}", host.package);
    }
    Ok(out)
}

pub fn rollback(
    host: &Host,
    to: Option<&str>,
    dry_run: bool,
    reason: Option<&str>,
) -> Result<Report> {
    let rec = enabled_record(host)?;
    not_migrating(host, "rollback")?;
    let mut out = Report::new();
    let version = host.backend.rollback(host, to, dry_run, &mut out)?;
    let why = Reason {
        command: "ferry channel rollback",
        given: reason,
    };
    let pinned = pin_full(
        host,
        rec,
        &version,
        dry_run,
        why.entry(&version, "rolled back to"),
    )?;
    out.push_str(pinned.text());
    out.extend(pinned);
    Ok(out)
}

/// `ferry channel install VERSION`, the push path (the rollout playbook of
/// docs/FLEET.md runs it on each host): the repositories' metadata read
/// again, VERSION installed through apt or dnf, up or down, so the hooks
/// carry the state, and a pinned agent pinned to it, so its updater agrees
/// afterwards. A host that follows the channel without a pin is refused
/// before anything changes: its updater takes the channel's newest version
/// and would race the push. A host that follows no channel just gets the
/// version (from whatever repository offers it).
pub fn install(host: &Host, version: &str, dry_run: bool, reason: Option<&str>) -> Result<Report> {
    not_migrating(host, "install")?;
    let rec = host.record()?;
    if let Some(r) = rec.as_ref().filter(|r| r.pinned.is_none()) {
        return Err(crate::exit::refused(anyhow::anyhow!(
            "{} follows {} channel {} without a pin: its {} would race this install. \
             Pin it (`ferry channel pin`) or disable its channel (`ferry channel disable`), then run again",
            host.package,
            r.repo,
            r.channel,
            host.backend.about().updater
        )));
    }
    let mut out = Report::new();
    // A dry run reads the metadata as it is: refreshing it is a change too.
    let full = host
        .backend
        .install(host, version, !dry_run, dry_run, &mut out)?;
    if let Some(rec) = rec {
        let why = Reason {
            command: "ferry channel install",
            given: reason,
        };
        let pinned = pin_full(host, rec, &full, dry_run, why.entry(&full, "installed"))?;
        out.push_str(pinned.text());
        out.extend(pinned);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `install` refuses a host that follows the channel unpinned before
    /// anything runs (the root has no package manager to run), with the
    /// refusal's exit status.
    #[test]
    fn install_refuses_a_host_whose_updater_would_race_it() {
        let root = std::env::temp_dir().join(format!("ferry-install-race-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        fs::write(root.join("usr/bin/apt-get"), "").unwrap();
        let pkg = "roboconf-agent";
        let mut rec = Record {
            package: pkg.into(),
            family: "apt".into(),
            repo: "file:///srv/repo".into(),
            channel: "stable".into(),
            ..Record::default()
        };
        files::save_record(&root, &rec).unwrap();
        let host = Host::open(&root, pkg, None).unwrap();
        let err = install(&host, "1.1.0", false, None).unwrap_err();
        assert_eq!(
            crate::exit::status_of(&err),
            crate::exit::REFUSED,
            "{err:#}"
        );
        let said = format!("{err:#}");
        assert!(said.contains("without a pin"), "{said}");
        assert!(said.contains("unattended-upgrades would race"), "{said}");

        // Pinned, it goes on to ask apt (which this root cannot answer).
        rec.pinned = Some("1.0.0-1".into());
        files::save_record(&root, &rec).unwrap();
        let err = install(&host, "1.1.0", false, None).unwrap_err();
        assert_ne!(
            crate::exit::status_of(&err),
            crate::exit::REFUSED,
            "{err:#}"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
