//! `ferry channel status`: what is installed and available, the pin, the
//! automatic tool's last run, and why the agent was not updated.

use anyhow::Result;
use ferry_hook::confined;
use serde::Serialize;

use super::host::Host;

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
    /// Everything that keeps the package where it is, each with who set it,
    /// why, and what undoes it: ferry's pin, an open migration's hold, a
    /// hold set outside ferry.
    pub holds: Vec<Holder>,
    pub automatic_last_run: Option<String>,
    pub automatic_last_result: Vec<String>,
    pub last_package_change: Option<String>,
    pub repository_check: String,
    pub up_to_date: bool,
    pub not_updated_because: Vec<String>,
}

/// One thing that keeps the package where it is.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Holder {
    /// `pin`, `migration` or `hold`.
    pub kind: String,
    pub by: String,
    pub why: String,
    pub undo: String,
}

/// Who holds the package: ferry's pin (the record), the open migration
/// (its journal), or, when the package manager holds it and neither is
/// the cause, someone outside ferry.
fn holders(s: &Status, migration: Option<&crate::migration::Journal>) -> Vec<Holder> {
    let mut out = Vec::new();
    if let Some(p) = &s.pinned {
        out.push(Holder {
            kind: "pin".into(),
            by: "ferry channel pin (or rollback)".into(),
            why: format!("kept at {p}"),
            undo: "ferry channel unpin".into(),
        });
    }
    if let Some(j) = migration {
        out.push(Holder {
            kind: "migration".into(),
            by: format!(
                "{} (ferry migration `{}` of application {})",
                j.by, j.id, j.app
            ),
            why: if j.reason.is_empty() {
                "a migration is open".into()
            } else {
                j.reason.clone()
            },
            undo: "ferry migration complete, or cancel".into(),
        });
    }
    let dnf_pin = s.family == "dnf" && s.pinned.is_some();
    if s.held && migration.is_none() && !dnf_pin {
        out.push(Holder {
            kind: "hold".into(),
            by: "outside ferry".into(),
            why: "unknown".into(),
            undo: match s.family.as_str() {
                "dnf" => format!("dnf versionlock delete {}", s.package),
                _ => format!("apt-mark unhold {}", s.package),
            },
        });
    }
    out
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
    // A migration holds the package (`ferry migration`, docs/MIGRATION.md).
    if let Some(why) = crate::migration::channel_reason(&host.root, &host.package) {
        s.not_updated_because.push(why);
    }
    let migration = crate::migration::journal::Store::new(&host.root, &host.package)
        .open()
        .ok()
        .flatten();
    s.holds = holders(&s, migration.as_ref());
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
            writeln!(f, "  {} by {}: {} (undo: {})", h.kind, h.by, h.why, h.undo)?;
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

    #[test]
    fn each_hold_is_listed_once_with_who_set_it_and_its_undo() {
        let status = |family: &str, pinned: Option<&str>, held: bool| Status {
            package: "roboconf-agent".into(),
            family: family.into(),
            pinned: pinned.map(String::from),
            held,
            ..Status::default()
        };
        let kinds = |h: Vec<Holder>| h.into_iter().map(|h| h.kind).collect::<Vec<_>>();
        let j = crate::migration::Journal::begin(
            &crate::migration::Request {
                id: Some("mig-7".into()),
                app: "shop".into(),
                by: "alice".into(),
                reason: "new DM".into(),
                package: "roboconf-agent".into(),
            },
            1,
            "1.0.0",
            4,
        );
        // A hold nobody in ferry set: named as such, with apt's undo.
        let outside = holders(&status("apt", None, true), None);
        assert_eq!(outside[0].by, "outside ferry");
        assert_eq!(outside[0].undo, "apt-mark unhold roboconf-agent");
        // The migration's hold is the migration's, not someone else's.
        let m = holders(&status("dnf", None, true), Some(&j));
        assert_eq!(kinds(m.clone()), ["migration"]);
        assert_eq!(
            m[0].by,
            "alice (ferry migration `mig-7` of application shop)"
        );
        assert_eq!(m[0].why, "new DM");
        // On dnf a pin is a versionlock: not a second, unknown hold.
        assert_eq!(
            kinds(holders(&status("dnf", Some("1.0.0-1"), true), None)),
            ["pin"]
        );
        assert_eq!(
            kinds(holders(&status("apt", Some("1.0.0-1"), true), Some(&j))),
            ["pin", "migration"]
        );
        assert!(holders(&status("apt", None, false), None).is_empty());
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
