//! `ferry channel status`: what is installed and available, the pin, the
//! automatic tool's last run, and why the agent was not updated.

use std::path::Path;

use anyhow::Result;
use ferry_hook::confined;
use serde::Serialize;

use super::files::Record;
use super::host::Host;
use crate::holds::{self, Entry, Kind};

/// What `status` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub package: String,
    pub family: String,
    pub enabled: bool,
    pub repo: Option<String>,
    pub channel: Option<String>,
    pub installed: Option<String>,
    pub newest_available: Option<String>,
    pub pinned: Option<String>,
    /// The maintenance window of the automatic upgrade, if any.
    pub window: Option<String>,
    /// apt: Unattended-Upgrade::Allow-downgrade is set host-wide by the pin.
    pub allow_downgrade_host_wide: bool,
    pub held: bool,
    /// Everything that keeps the package where it is, each once with who
    /// set it, why, since when and what undoes it: the entries of ferry's
    /// record of holds (its pin, an open migration; crate::holds), then
    /// what holds it from outside ferry (the package manager's hold, an
    /// exclusion), read live.
    pub holds: Vec<Entry>,
    pub automatic_last_run: Option<String>,
    pub automatic_last_result: Vec<String>,
    pub last_package_change: Option<String>,
    pub repository_check: String,
    pub up_to_date: bool,
    pub not_updated_because: Vec<String>,
}

/// Who holds the package: the record of holds, a pin of the channel's
/// record that predates it (named from there), and what holds it from
/// outside ferry.
fn holders(root: &Path, s: &Status, rec: Option<&Record>) -> Result<Vec<Entry>> {
    let mut ferry = holds::load(root, &s.package)?;
    if let (Some(p), None) = (rec.and_then(|r| r.pinned.as_ref()), ferry.get(Kind::Pin)) {
        ferry.holds.push(Entry {
            kind: Kind::Pin,
            by: "ferry channel pin (set before the record of holds)".into(),
            why: format!("pinned to {p}"),
            since: None,
            undo: "ferry channel unpin".into(),
            version: Some(p.clone()),
        });
    }
    let outside = holds::outside(root, &s.package, &s.family, s.held, &ferry);
    ferry.holds.extend(outside);
    Ok(ferry.holds)
}

pub fn status(host: &Host) -> Result<Status> {
    let rec = host.record()?;
    let mut s = Status {
        package: host.package.clone(),
        family: host.backend.name().into(),
        enabled: rec.is_some(),
        repo: rec.as_ref().map(|r| r.repo.clone()),
        channel: rec.as_ref().map(|r| r.channel.clone()),
        pinned: rec.as_ref().and_then(|r| r.pinned.clone()),
        window: rec.as_ref().and_then(|r| r.window.clone()),
        ..Status::default()
    };
    host.backend.status(host, rec.as_ref(), &mut s)?;
    s.holds = holders(&host.root, &s, rec.as_ref())?;
    // A migration holds the package (`ferry migration`, docs/MIGRATION.md);
    // an exclusion hides it from the updater.
    for h in &s.holds {
        match h.kind {
            Kind::Migration => s.not_updated_because.push(format!(
                "a migration is open: held by {} ({}) until `{}`",
                h.by, h.why, h.undo
            )),
            Kind::Exclude => s
                .not_updated_because
                .push(format!("{}: {} ({})", h.by, h.why, h.undo)),
            Kind::Pin | Kind::Hold => {}
        }
    }
    // The agent's own upgrade log: a refused (deferred) upgrade.
    if !s.up_to_date {
        if let Some(line) = upgrade_log(host).as_deref().and_then(busy_refusal) {
            s.not_updated_because.push(format!(
                "the agent was busy and refused the upgrade (deferred to the next automatic run): {line}"
            ));
        }
    }
    Ok(s)
}

/// The hook's upgrade log, `/var/log/<package>/upgrades.log`, if it can be
/// read. Its directory belongs to the agent's user, and `status` runs as
/// root: the file is reached through a handle of the directory that never
/// follows a link and refuses anything but a regular file (a FIFO there
/// would otherwise block `status`), as the hook itself does
/// (docs/SECURITY.md).
fn upgrade_log(host: &Host) -> Option<String> {
    read_upgrade_log(&host.root, &host.package)
}

/// The hook's upgrade log of `package` under `root`, read as `upgrade_log`
/// says (`ferry info` shows its last line).
pub fn read_upgrade_log(root: &std::path::Path, package: &str) -> Option<String> {
    let dir = root.join(format!("var/log/{package}"));
    let dir = confined::Dir::open_trusted_if_present(&dir).ok()??;
    let bytes = dir.read("upgrades.log").ok()??;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The hook's refusal of the last upgrade attempt (`prepare` found the
/// agent busy), unless an upgrade finished after it; without the line's
/// stamp and process ("1795656693.123 ferry-hook[951] prepare: ").
fn busy_refusal(log: &str) -> Option<&str> {
    for line in log.lines().rev() {
        if line.contains(" finish: done") {
            return None;
        }
        if line.contains("refusing to upgrade") {
            return Some(line.split_once(": ").map_or(line, |(_, message)| message));
        }
    }
    None
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "package:          {} ({})", self.package, self.family)?;
        if self.enabled {
            writeln!(
                f,
                "follows:          {} channel {}",
                o(&self.repo),
                o(&self.channel)
            )?;
        } else {
            writeln!(
                f,
                "follows:          nothing (ferry channel enable was not run)"
            )?;
        }
        writeln!(f, "installed:        {}", o(&self.installed))?;
        writeln!(f, "newest available: {}", o(&self.newest_available))?;
        writeln!(
            f,
            "pinned:           {}{}",
            o(&self.pinned),
            if self.allow_downgrade_host_wide {
                " (Allow-downgrade is host-wide)"
            } else {
                ""
            }
        )?;
        if let Some(w) = &self.window {
            writeln!(f, "window:           {w}")?;
        }
        writeln!(
            f,
            "held:             {}",
            if self.held { "yes" } else { "no" }
        )?;
        for h in &self.holds {
            let since = h
                .since
                .map(|t| format!(", since {}", crate::date::rfc2822(t, "UTC")))
                .unwrap_or_default();
            writeln!(
                f,
                "  {} by {}: {}{since} (undo: {})",
                h.kind.name(),
                h.by,
                h.why,
                h.undo
            )?;
        }
        writeln!(f, "repository:       {}", self.repository_check)?;
        writeln!(f, "last automatic run: {}", o(&self.automatic_last_run))?;
        for l in &self.automatic_last_result {
            writeln!(f, "  {l}")?;
        }
        writeln!(f, "last change:      {}", o(&self.last_package_change))?;
        if self.up_to_date {
            writeln!(f, "up to date")?;
        }
        for r in &self.not_updated_because {
            writeln!(f, "not updated because: {r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each holder once: the record's entries, a pin of the channel's
    /// record from before the record of holds, an outside hold only when no
    /// entry explains it.
    #[test]
    fn each_hold_is_listed_once_with_who_set_it_and_its_undo() {
        let root = std::env::temp_dir().join(format!("ferry-status-holds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let status = |family: &str, held: bool| Status {
            package: "roboconf-agent".into(),
            family: family.into(),
            held,
            ..Status::default()
        };
        let pinned = Record {
            pinned: Some("1.0.0-1".into()),
            ..Record::default()
        };
        let kinds = |h: Vec<Entry>| h.into_iter().map(|h| h.kind).collect::<Vec<_>>();
        // A hold nobody in ferry set: named as such, with apt's undo.
        let outside = holders(&root, &status("apt", true), None).unwrap();
        assert_eq!(outside[0].by, "outside ferry");
        assert_eq!(outside[0].undo, "apt-mark unhold roboconf-agent");
        // On dnf a pin is a versionlock: not a second, unknown hold.
        let old_pin = holders(&root, &status("dnf", true), Some(&pinned)).unwrap();
        assert_eq!(kinds(old_pin.clone()), [Kind::Pin]);
        assert_eq!(old_pin[0].version.as_deref(), Some("1.0.0-1"));
        // The migration's entry explains apt's hold.
        holds::put(
            &root,
            "roboconf-agent",
            Entry {
                kind: Kind::Migration,
                by: "alice (ferry migration `mig-7` of application shop)".into(),
                why: "new DM".into(),
                since: Some(1),
                undo: "ferry migration complete, or cancel".into(),
                version: None,
            },
        )
        .unwrap();
        assert_eq!(
            kinds(holders(&root, &status("apt", true), Some(&pinned)).unwrap()),
            [Kind::Migration, Kind::Pin]
        );
        assert!(holders(&root, &status("apt", false), None).unwrap().len() == 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The log's directory is the agent's user's: a link planted in the
    /// log's place is not followed, and a FIFO does not block `status`.
    #[test]
    fn the_upgrade_log_is_read_without_following_what_the_agent_planted() {
        use std::os::unix::fs::symlink;
        let root = std::env::temp_dir().join(format!("ferry-status-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        std::fs::write(root.join("usr/bin/apt-get"), "").unwrap();
        let dir = root.join("var/log/roboconf-agent");
        std::fs::create_dir_all(&dir).unwrap();
        let host = Host::open(&root, "roboconf-agent", None).unwrap();
        let line = "1 ferry-hook[9] prepare: refusing to upgrade roboconf-agent: busy\n";
        std::fs::write(dir.join("upgrades.log"), line).unwrap();
        assert_eq!(upgrade_log(&host).as_deref(), Some(line));

        std::fs::remove_file(dir.join("upgrades.log")).unwrap();
        std::fs::write(root.join("secret"), line).unwrap();
        symlink(root.join("secret"), dir.join("upgrades.log")).unwrap();
        assert_eq!(upgrade_log(&host), None, "a link is not followed");

        std::fs::remove_file(dir.join("upgrades.log")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("upgrades.log").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a valid, NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(upgrade_log(&host), None, "a FIFO is refused, not waited on");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_busy_refusal_counts_until_an_upgrade_finishes() {
        let refused =
            "1 ferry-hook[9] prepare: refusing to upgrade roboconf-agent: the agent is busy\n";
        let done = "2 ferry-hook[10] finish: done\n";
        assert_eq!(
            busy_refusal(refused),
            Some("refusing to upgrade roboconf-agent: the agent is busy")
        );
        assert!(busy_refusal(&format!("{refused}{done}")).is_none());
        assert!(busy_refusal(&format!("{done}{refused}")).is_some());
        assert!(busy_refusal(done).is_none());
    }
}
