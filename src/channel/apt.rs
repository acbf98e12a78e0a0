//! apt hosts: a deb822 source with Signed-By, unattended-upgrades told to
//! take the repository's origin, periodic runs turned on without overriding
//! an admin, a maintenance window, pins, rollback and status.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::backend::{About, Backend, Edit, Enable, Source};
use super::fetch::{fetch, require_channel};
use super::files::{Planned, Record};
use super::gpg::TempGpg;
use super::host::{output, Host};
use super::report::Report;
use super::status::Status;
use super::write::{apply, check_removable, plan_changes, remove_recorded};

pub fn key_path(pkg: &str) -> String {
    format!("/etc/apt/keyrings/ferry-{pkg}.asc")
}
pub fn sources_path(pkg: &str) -> String {
    format!("/etc/apt/sources.list.d/ferry-{pkg}.sources")
}
pub fn origins_path(pkg: &str) -> String {
    format!("/etc/apt/apt.conf.d/52ferry-{pkg}")
}
/// Read before `20auto-upgrades` (where `dpkg-reconfigure unattended-upgrades`
/// and admins set the periodic values): for scalars the later file wins, so
/// an admin's explicit "0" there wins over ferry's "1".
pub fn periodic_path(pkg: &str) -> String {
    format!("/etc/apt/apt.conf.d/19ferry-{pkg}-periodic")
}
pub fn timer_path(pkg: &str) -> String {
    format!("/etc/systemd/system/apt-daily-upgrade.timer.d/ferry-{pkg}.conf")
}
pub fn preferences_path(pkg: &str) -> String {
    format!("/etc/apt/preferences.d/ferry-{pkg}")
}
pub fn allow_downgrade_path(pkg: &str) -> String {
    format!("/etc/apt/apt.conf.d/53ferry-{pkg}-pin")
}
pub fn pin_paths(pkg: &str) -> Vec<String> {
    vec![preferences_path(pkg), allow_downgrade_path(pkg)]
}

const HEADER: &str = "# Written by `ferry channel`; `ferry channel disable` removes it.\n# Edit it and ferry will refuse to touch it (move it aside to undo).\n";

/// A Release file's field.
pub fn release_field(release: &str, field: &str) -> Option<String> {
    release.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// Quotes a value for an Origins-Pattern (commas are escaped).
fn pattern_value(v: &str) -> String {
    v.replace(',', "\\,").replace('"', "")
}

/// The files `enable` writes on an apt host, for the repository's Origin.
pub fn render(source: &Source, origin: &str) -> Vec<Planned> {
    let (pkg, channel, window) = (source.package, source.channel, source.window);
    let repo = source.repo.trim_end_matches('/');
    let mut plans = vec![
        Planned::new(key_path(pkg), source.armored_key.as_bytes(), 0o644),
        Planned::new(
            sources_path(pkg),
            format!(
                "{HEADER}Types: deb\nURIs: {repo}/apt\nSuites: {channel}\nComponents: main\nSigned-By: {}\n",
                key_path(pkg)
            ),
            0o644,
        ),
        Planned::new(
            origins_path(pkg),
            format!(
                "{HEADER}// unattended-upgrades takes {pkg} from this repository and channel only.\n\
                 Unattended-Upgrade::Origins-Pattern {{ \"origin={},archive={}\"; }};\n\
                 // Never stop at a configuration-file prompt: keep the admin's version.\n\
                 Dpkg::Options {{ \"--force-confdef\"; \"--force-confold\"; }};\n",
                pattern_value(origin),
                pattern_value(channel)
            ),
            0o644,
        ),
        Planned::new(
            periodic_path(pkg),
            format!(
                "{HEADER}// Read before 20auto-upgrades: a value set there (or in any later file) wins.\n\
                 APT::Periodic::Update-Package-Lists \"1\";\n\
                 APT::Periodic::Unattended-Upgrade \"1\";\n"
            ),
            0o644,
        ),
    ];
    if let Some(w) = window {
        plans.push(Planned::new(
            timer_path(pkg),
            format!(
                "{HEADER}# Maintenance window {}-{:02}:{:02} for unattended-upgrades.\n[Timer]\n{}",
                w.on_calendar(),
                w.end_min / 60,
                w.end_min % 60,
                w.timer_lines()
            ),
            0o644,
        ));
    }
    plans
}

/// Checks the repository (channel present, InRelease signed by the checked
/// key), reads its Origin, and renders the files.
pub fn plan_enable(e: &Enable) -> Result<(Vec<Planned>, Option<String>)> {
    let (host, args, gpg) = (e.host, e.args, e.gpg);
    let inrelease = gpg.home.join("InRelease");
    let probe = format!("apt/dists/{}/InRelease", args.channel);
    require_channel(host, &args.repo, &probe, &inrelease, &args.channel)?;
    gpg.verify(&format!("{}/{probe}", args.repo), &inrelease, None)?;
    let release = fs::read_to_string(&inrelease)?;
    let origin = match &args.origin {
        Some(o) => o.clone(),
        None => release_field(&release, "Origin").with_context(|| {
            format!("{}/{probe} has no Origin: field; give --origin", args.repo)
        })?,
    };
    if release_field(&release, "Suite").as_deref() != Some(args.channel.as_str()) {
        bail!(
            "{}/{probe} does not describe suite {:?}: is this a `ferry publish` repository?",
            args.repo,
            args.channel
        )
    }
    // The channel must carry the package (a wrong --package would follow nothing).
    let mut names = std::collections::BTreeSet::new();
    let mut read_any = false;
    let archs = release_field(&release, "Architectures").unwrap_or_default();
    for arch in archs.split_whitespace() {
        let packages = gpg.home.join(format!("Packages-{arch}"));
        let index = format!("apt/dists/{}/main/binary-{arch}/Packages", args.channel);
        if fetch(host, &args.repo, &index, &packages)? {
            read_any = true;
            for l in fs::read_to_string(&packages)?.lines() {
                if let Some(n) = l.strip_prefix("Package: ") {
                    names.insert(n.trim().to_string());
                }
            }
        }
    }
    if read_any && !names.contains(&host.package) {
        bail!(
            "channel {:?} of {} has no package {:?} (it has: {}); give --package NAME",
            args.channel,
            args.repo,
            host.package,
            names.into_iter().collect::<Vec<_>>().join(", ")
        )
    }
    Ok((render(&e.source, &origin), Some(origin)))
}

pub fn plan_pin(pkg: &str, version: &str) -> Vec<Planned> {
    vec![
        Planned::new(
            preferences_path(pkg),
            format!("{HEADER}Package: {pkg}\nPin: version {version}\nPin-Priority: 1001\n"),
            0o644,
        ),
        Planned::new(
            allow_downgrade_path(pkg),
            format!(
                "{HEADER}// Needed for unattended-upgrades to go down to a pinned version.\n\
                 // Host-wide: it applies to every package pinned at 1000 or more.\n\
                 Unattended-Upgrade::Allow-downgrade \"true\";\n"
            ),
            0o644,
        ),
    ]
}

/// apt-get / apt-cache, on the root.
fn apt(host: &Host, prog: &str) -> Command {
    let mut c = Command::new(prog);
    if !host.is_live() {
        c.arg("-o").arg(format!("Dir={}/", host.root.display()));
    }
    c
}

/// `apt-get install PACKAGE=FULL`, up or down, keeping the admin's
/// configuration files; apt-get's output goes into the report.
fn apt_install(host: &Host, full: &str, out: &mut Report) -> Result<()> {
    let mut c = apt(host, "apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive").args([
        "install",
        "-y",
        "--allow-downgrades",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        &format!("{}={full}", host.package),
    ]);
    out.push_str(&output(&mut c)?);
    Ok(())
}

/// `apt-cache policy`: installed, candidate, and every version newest
/// first with whether a repository (not only dpkg's status) offers it.
pub type Policy = (Option<String>, Option<String>, Vec<(String, bool)>);

/// The versions apt knows of the package, newest first, each with whether
/// a repository (not only dpkg's status) offers it.
pub fn policy(host: &Host) -> Result<Policy> {
    let text = output(apt(host, "apt-cache").args(["policy", &host.package]))?;
    Ok(parse_policy(&text))
}

/// Parses `apt-cache policy PKG`: (installed, candidate, [(version, from a repository)]).
pub fn parse_policy(text: &str) -> Policy {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .filter(|v| v != "(none)")
    };
    let mut versions: Vec<(String, bool)> = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.trim() == "Version table:" {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        let t = line.trim_start_matches(" *** ").trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        let indent = line.len() - line.trim_start().len();
        if line.contains(" *** ") || (indent <= 5 && words.len() == 2) {
            versions.push((words[0].to_string(), false));
        } else if let Some(last) = versions.last_mut() {
            if !t.contains("/var/lib/dpkg/status") {
                last.1 = true;
            }
        }
    }
    (field("Installed:"), field("Candidate:"), versions)
}

/// unattended-upgrades' log (`2026-11-25 23:30:47,046 INFO message`): when
/// it last ran, what it said (origins and lists left out), and whether it
/// kept the package back.
pub fn parse_uu_log(log: &str, package: &str) -> (Option<String>, Vec<String>, bool) {
    let split = |l: &str| -> (String, String) {
        match (l.get(..19), l.get(19..)) {
            (Some(ts), Some(rest)) if rest.starts_with(',') => {
                let msg = rest.split_once(' ').map_or("", |(_, m)| m);
                (ts.to_string(), msg.to_string())
            }
            _ => (String::new(), l.to_string()),
        }
    };
    let lines: Vec<&str> = log.lines().collect();
    let Some(start) = lines
        .iter()
        .rposition(|l| l.contains("Starting unattended upgrades script"))
    else {
        return (None, Vec::new(), false);
    };
    let mut kept_back = false;
    let mut result = Vec::new();
    for l in &lines[start + 1..] {
        let (_, msg) = split(l);
        let msg = msg.strip_prefix("INFO ").unwrap_or(&msg).trim().to_string();
        if msg.contains("kept back") && msg.split_whitespace().any(|w| w == package) {
            kept_back = true;
        }
        if !msg.starts_with("Allowed origins") && !msg.starts_with("Initial ") && !msg.is_empty() {
            result.push(msg);
        }
    }
    (Some(split(lines[start]).0), result, kept_back)
}

/// Whether Debian version `a` is newer than `b`, as dpkg orders them
/// (`repo::version::compare_deb`, whose unit tests check it against
/// `dpkg --compare-versions`).
fn dpkg_newer(a: &str, b: &str) -> bool {
    crate::repo::version::compare_deb(a, b) == std::cmp::Ordering::Greater
}

/// InRelease of the recorded channel, verified with the key apt trusts.
fn check_repo(host: &Host, rec: &Record) -> Result<()> {
    let gpg = TempGpg::new()?;
    output(
        gpg.gpg()
            .arg("--import")
            .arg(host.path(&key_path(&host.package))),
    )?;
    let inrelease = gpg.home.join("InRelease");
    let probe = format!("apt/dists/{}/InRelease", rec.channel);
    require_channel(host, &rec.repo, &probe, &inrelease, &rec.channel)?;
    gpg.verify(&format!("{}/{probe}", rec.repo), &inrelease, None)
}

/// apt with unattended-upgrades.
pub struct Apt;

impl Backend for Apt {
    fn about(&self) -> &'static About {
        &About {
            name: "apt",
            updater: "unattended-upgrades",
            requires: &["/usr/bin/apt-get", "/var/lib/dpkg"],
        }
    }

    fn plan_enable(&self, e: &Enable) -> Result<(Vec<Planned>, Option<String>)> {
        plan_enable(e)
    }

    fn pin_paths(&self, package: &str) -> Vec<String> {
        pin_paths(package)
    }

    fn pin(&self, host: &Host, edit: &mut Edit, full: &str) -> Result<bool> {
        let plans = plan_pin(&host.package, full);
        let changes = plan_changes(host, &plans, Some(edit.rec))?;
        if apply(host, &changes, edit.rec, edit.dry_run, edit.out)? == 0 {
            return Ok(false);
        }
        let _ = writeln!(
            edit.out,
            "pinned {} to {full} (Pin-Priority 1001); note: Unattended-Upgrade::Allow-downgrade \
             \"true\" is host-wide: unattended-upgrades may now downgrade any package pinned above 1000",
            host.package
        );
        Ok(true)
    }

    fn unpin(&self, host: &Host, edit: &mut Edit) -> Result<()> {
        for p in pin_paths(&host.package) {
            check_removable(host, edit.rec, &p)?;
        }
        for p in pin_paths(&host.package) {
            remove_recorded(host, edit.rec, &p, edit.dry_run, edit.out)?;
        }
        Ok(())
    }

    fn resolve_version(&self, host: &Host, version: &str) -> Result<String> {
        let (_, _, versions) = policy(host)?;
        let found = versions.iter().find(|(v, _)| {
            v == version
                || v.split_once('-').map(|(u, _)| u) == Some(version)
                || v.rsplit_once('-').map(|(u, _)| u) == Some(version)
        });
        match found {
            Some((v, _)) => Ok(v.clone()),
            None => bail!(
                "version {version} of {} is not known to apt (known: {}); run `apt-get update`, or pick a version the channel keeps",
                host.package,
                versions.iter().map(|v| v.0.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn install(
        &self,
        host: &Host,
        version: &str,
        refresh: bool,
        dry_run: bool,
        out: &mut Report,
    ) -> Result<String> {
        if refresh {
            // Every source, as `apt-get update` does: the package's
            // dependencies may come from the others.
            output(apt(host, "apt-get").arg("-q").arg("update"))?;
        }
        let (installed, _, versions) = policy(host)?;
        let target = self.resolve_version(host, version)?;
        if !versions.iter().any(|(v, repo)| *v == target && *repo) {
            bail!("{} {target} is not offered by any repository", host.package)
        }
        if out.install(
            &host.package,
            installed.as_deref(),
            &target,
            "apt-get",
            dry_run,
        ) {
            apt_install(host, &target, out)?;
        }
        Ok(target)
    }

    fn rollback(
        &self,
        host: &Host,
        to: Option<&str>,
        dry_run: bool,
        out: &mut Report,
    ) -> Result<String> {
        let (installed, _, versions) = policy(host)?;
        let installed = installed
            .with_context(|| format!("{} is not installed: nothing to roll back", host.package))?;
        let target = match to {
            Some(v) => self.resolve_version(host, v)?,
            None => {
                // Newest first: the first repository version below the installed one.
                let pos = versions.iter().position(|(v, _)| *v == installed);
                pos.and_then(|p| versions[p + 1..].iter().find(|(_, repo)| *repo))
                    .map(|(v, _)| v.clone())
                    .with_context(|| {
                        format!(
                            "no version of {} older than {installed} is available; give --to VERSION",
                            host.package
                        )
                    })?
            }
        };
        if !versions.iter().any(|(v, repo)| *v == target && *repo) {
            bail!("{} {target} is not offered by any repository", host.package)
        }
        if out.rollback(&host.package, &installed, &target, "apt-get", dry_run) {
            apt_install(host, &target, out)?;
        }
        Ok(target)
    }

    fn status(&self, host: &Host, rec: Option<&Record>, s: &mut Status) -> Result<()> {
        let (installed, _candidate, versions) = policy(host)?;
        s.installed = installed.clone();
        s.newest_available = versions
            .iter()
            .find(|(_, repo)| *repo)
            .map(|(v, _)| v.clone());
        s.allow_downgrade_host_wide = host.path(&allow_downgrade_path(&host.package)).exists();
        let mut sel = Command::new("dpkg");
        if !host.is_live() {
            sel.arg(format!("--admindir={}/var/lib/dpkg", host.root.display()));
        }
        s.held = output(sel.args(["--get-selections", &host.package]))
            .map(|o| o.split_whitespace().nth(1) == Some("hold"))
            .unwrap_or(false);
        // unattended-upgrades' last run.
        let log =
            fs::read_to_string(host.path("/var/log/unattended-upgrades/unattended-upgrades.log"))
                .unwrap_or_default();
        let (last_run, result, kept_back) = parse_uu_log(&log, &host.package);
        s.automatic_last_run = last_run;
        s.automatic_last_result = result;
        // dpkg's log shows the direction (unattended-upgrades says "upgraded" for a downgrade too).
        let dpkg = fs::read_to_string(host.path("/var/log/dpkg.log")).unwrap_or_default();
        let pkg_colon = format!(" {}:", host.package);
        if let Some(l) = dpkg.lines().rev().find(|l| {
            (l.contains(" upgrade ") || l.contains(" install ")) && l.contains(&pkg_colon)
        }) {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() >= 6 {
                let dir = if w[4] == "<none>" {
                    "installed"
                } else if dpkg_newer(w[4], w[5]) {
                    "downgraded"
                } else if w[4] == w[5] {
                    "reinstalled"
                } else {
                    "upgraded"
                };
                s.last_package_change =
                    Some(format!("{} {}: {dir} {} -> {}", w[0], w[1], w[4], w[5]));
            }
        }
        // The repository, checked now with the trusted key.
        s.repository_check = match rec {
            None => "not configured".into(),
            Some(r) => check_repo(host, r).map_or_else(
                |e| format!("error: {e:#}"),
                |()| "ok (InRelease signed by the trusted key)".into(),
            ),
        };
        let newest = s.newest_available.clone();
        // What apt's lists say is newest is not known to be the channel's.
        let check_failed = s.repository_check.starts_with("error");
        s.up_to_date = !check_failed
            && matches!((&installed, &newest), (Some(i), Some(n)) if !dpkg_newer(n, i));
        if s.pinned.is_some() && installed != s.pinned {
            s.up_to_date = false;
        }
        let why = &mut s.not_updated_because;
        match (&installed, &newest) {
            (None, _) => why.push(format!("{} is not installed (unattended-upgrades only upgrades installed packages)", host.package)),
            (_, None) => why.push("the channel is not in apt's lists yet (apt-daily.service has not run since enable), or it is empty".into()),
            (Some(i), Some(n)) if !dpkg_newer(n, i) && s.pinned.is_none() && !check_failed => why.push("no newer version on the channel".into()),
            _ => {}
        }
        if let Some(p) = &s.pinned {
            why.push(format!(
                "pinned to {p} by `ferry channel pin` (undo: `ferry channel unpin`)"
            ));
        }
        if s.held {
            why.push(format!(
                "held with apt-mark hold (undo: apt-mark unhold {})",
                host.package
            ));
        }
        if kept_back {
            why.push("kept back by unattended-upgrades' last run (see its log)".into());
        }
        if check_failed {
            why.push(format!(
                "the repository failed its check: {}",
                s.repository_check
            ));
        }
        if !s.up_to_date && why.is_empty() {
            why.push("a newer version is available; the automatic run has not happened since (`systemctl list-timers apt-daily-upgrade.timer`)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::window::Window;

    #[test]
    fn policy_parses_installed_candidate_and_sources() {
        let text = "roboconf-agent:\n  Installed: 1.0.0-1\n  Candidate: 1.1.0-1\n  Version table:\n     1.1.0-1 500\n        500 file:/srv/repo/apt stable/main amd64 Packages\n *** 1.0.0-1 1001\n        500 file:/srv/repo/apt stable/main amd64 Packages\n        100 /var/lib/dpkg/status\n     0.9.0-1 100\n        100 /var/lib/dpkg/status\n";
        let (i, c, v) = parse_policy(text);
        assert_eq!(i.as_deref(), Some("1.0.0-1"));
        assert_eq!(c.as_deref(), Some("1.1.0-1"));
        assert_eq!(
            v,
            vec![
                ("1.1.0-1".into(), true),
                ("1.0.0-1".into(), true),
                ("0.9.0-1".into(), false)
            ]
        );
        let (i, _, _) =
            parse_policy("x:\n  Installed: (none)\n  Candidate: 1.0\n  Version table:\n");
        assert_eq!(i, None);
    }

    #[test]
    fn the_last_unattended_run_is_read_from_its_log() {
        let log = "2026-11-24 06:00:01,001 INFO Starting unattended upgrades script\n\
                   2026-11-24 06:00:02,002 INFO No packages found that can be upgraded unattended and no pending auto-removals\n\
                   2026-11-25 06:10:01,046 INFO Starting unattended upgrades script\n\
                   2026-11-25 06:10:01,047 INFO Allowed origins are: origin=x\n\
                   2026-11-25 06:10:01,048 INFO Initial blacklist:\n\
                   2026-11-25 06:10:02,205 INFO Packages that are kept back: roboconf-agent\n";
        let (run, result, kept) = parse_uu_log(log, "roboconf-agent");
        assert_eq!(run.as_deref(), Some("2026-11-25 06:10:01"));
        assert_eq!(
            result,
            vec!["Packages that are kept back: roboconf-agent".to_string()]
        );
        assert!(kept);
        assert_eq!(parse_uu_log("", "x"), (None, Vec::new(), false));
    }

    #[test]
    fn files_name_the_origin_the_key_and_the_window() {
        let w = Window::parse("Mon..Fri 02:00-04:00").unwrap();
        let plans = render(
            &Source {
                package: "roboconf-agent",
                repo: "file:///srv/repo/",
                channel: "stable",
                armored_key: "KEY\n",
                window: Some(&w),
            },
            "ferry-roboconf-agent-0123",
        );
        let paths: Vec<&str> = plans.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/apt/keyrings/ferry-roboconf-agent.asc",
                "/etc/apt/sources.list.d/ferry-roboconf-agent.sources",
                "/etc/apt/apt.conf.d/52ferry-roboconf-agent",
                "/etc/apt/apt.conf.d/19ferry-roboconf-agent-periodic",
                "/etc/systemd/system/apt-daily-upgrade.timer.d/ferry-roboconf-agent.conf",
            ]
        );
        let text = |i: usize| String::from_utf8(plans[i].contents.clone()).unwrap();
        assert!(text(1).contains("URIs: file:///srv/repo/apt\nSuites: stable\nComponents: main\nSigned-By: /etc/apt/keyrings/ferry-roboconf-agent.asc\n"));
        assert!(text(2).contains("Unattended-Upgrade::Origins-Pattern { \"origin=ferry-roboconf-agent-0123,archive=stable\"; };"));
        assert!(text(2).contains("Dpkg::Options { \"--force-confdef\"; \"--force-confold\"; };"));
        assert!(text(3).contains("APT::Periodic::Unattended-Upgrade \"1\";"));
        assert!(text(4).contains(
            "[Timer]\nOnCalendar=\nOnCalendar=Mon..Fri *-*-* 02:00:00\nRandomizedDelaySec=6300\n"
        ));
        assert!(plans.iter().all(|p| p.mode == 0o644));
        // The periodic drop-in sorts before the admin's 20auto-upgrades
        // (apt reads apt.conf.d in name order; the admin's file wins).
        let periodic = periodic_path("roboconf-agent");
        let name = periodic.rsplit('/').next().unwrap();
        assert!(name < "20auto-upgrades", "{name}");
        let pin = plan_pin("roboconf-agent", "1.0.0-1");
        assert!(String::from_utf8_lossy(&pin[0].contents)
            .contains("Package: roboconf-agent\nPin: version 1.0.0-1\nPin-Priority: 1001\n"));
        assert!(String::from_utf8_lossy(&pin[1].contents)
            .contains("Unattended-Upgrade::Allow-downgrade \"true\";"));
        assert_eq!(
            release_field("Origin: o-1\nLabel: l (x)\n", "Label").as_deref(),
            Some("l (x)")
        );
    }
}
