//! dnf hosts: the key imported into rpm, a .repo file with every signature
//! check on, and dnf-automatic run with a configuration of its own that sees
//! only this repository (SPEC §6), on a timer of its own.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::backend::{About, Backend, Edit, Enable, Source};
use super::fetch::{fetch, require_channel};
use super::files::{Planned, Record};
use super::gpg::{normalize_fingerprint, same_fingerprint, TempGpg};
use super::host::{output, Host};
use super::report::Report;
use super::status::Status;

pub fn key_path(pkg: &str) -> String {
    format!("/etc/pki/rpm-gpg/ferry-{pkg}.asc")
}
pub fn repo_path(pkg: &str) -> String {
    format!("/etc/yum.repos.d/ferry-{pkg}.repo")
}
/// The reposdir of ferry's dnf-automatic: this repository alone.
pub fn automatic_reposdir(pkg: &str) -> String {
    format!("/etc/ferry/channel/{pkg}/repos.d")
}
pub fn automatic_conf_path(pkg: &str) -> String {
    format!("/etc/dnf/ferry-{pkg}-automatic.conf")
}
pub fn unit(pkg: &str) -> String {
    format!("ferry-{pkg}-automatic")
}
fn timer(pkg: &str) -> String {
    format!("{}.timer", unit(pkg))
}

const HEADER: &str = "# Written by `ferry channel`; `ferry channel disable` removes it.\n";

/// The files `enable` writes on a dnf host.
pub fn render(source: &Source) -> Vec<Planned> {
    let (pkg, channel, window) = (source.package, source.channel, source.window);
    let repo = source.repo.trim_end_matches('/');
    let repo_file = |metadata_expire: &str| {
        format!(
            "{HEADER}[ferry-{pkg}]\nname={pkg} (ferry channel {channel})\nbaseurl={repo}/rpm/{channel}\nenabled=1\n\
             gpgcheck=1\nrepo_gpgcheck=1\ngpgkey=file://{}\nskip_if_unavailable=0\nmetadata_expire={metadata_expire}\n",
            key_path(pkg)
        )
    };
    let timer = match window {
        Some(w) => w.timer_lines(),
        None => "OnCalendar=*-*-* 6:00\nRandomizedDelaySec=3600\nPersistent=true\n".into(),
    };
    let u = unit(pkg);
    vec![
        Planned::new(key_path(pkg), source.armored_key.as_bytes(), 0o644),
        Planned::new(repo_path(pkg), repo_file("1h"), 0o644),
        // The automatic run checks the repository every time it runs: with
        // the hour of cache the admin's dnf gets, a release published in
        // the hour before the timer would wait a whole day.
        Planned::new(
            format!("{}/ferry-{pkg}.repo", automatic_reposdir(pkg)),
            repo_file("0"),
            0o644,
        ),
        Planned::new(
            automatic_conf_path(pkg),
            format!(
                "{HEADER}[commands]\nupgrade_type = default\nrandom_sleep = 0\nnetwork_online_timeout = 60\n\
                 download_updates = yes\napply_updates = yes\n\n[emitters]\nemit_via = stdio\n\n\
                 [base]\ndebuglevel = 1\n# This repository only: dnf-automatic upgrades everything it sees.\n\
                 reposdir = {}\nskip_if_unavailable = 0\n",
                automatic_reposdir(pkg)
            ),
            0o644,
        ),
        Planned::new(
            format!("/etc/systemd/system/{u}.service"),
            format!(
                "{HEADER}[Unit]\nDescription=dnf-automatic for {pkg} (ferry channel)\nWants=network-online.target\n\
                 After=network-online.target\n\n[Service]\nType=oneshot\nNice=19\n\
                 ExecStart=/usr/bin/dnf-automatic {} --timer\n",
                automatic_conf_path(pkg)
            ),
            0o644,
        ),
        Planned::new(
            format!("/etc/systemd/system/{u}.timer"),
            format!("{HEADER}[Unit]\nDescription=dnf-automatic for {pkg} (ferry channel)\n\n[Timer]\n{timer}\n[Install]\nWantedBy=timers.target\n"),
            0o644,
        ),
    ]
}

pub fn plan_enable(e: &Enable) -> Result<Vec<Planned>> {
    check_repomd(e.host, e.gpg, &e.args.repo, &e.args.channel)?;
    Ok(render(&e.source))
}

/// The channel's `repomd.xml` must be signed by the key in `gpg`.
fn check_repomd(host: &Host, gpg: &TempGpg, repo: &str, channel: &str) -> Result<()> {
    let repomd = gpg.home.join("repomd.xml");
    let asc = gpg.home.join("repomd.xml.asc");
    let probe = format!("rpm/{channel}/repodata/repomd.xml");
    require_channel(host, repo, &probe, &repomd, channel)?;
    if !fetch(host, repo, &format!("{probe}.asc"), &asc)? {
        bail!("{repo}/{probe} is not signed (no repomd.xml.asc): refusing an unsigned repository")
    }
    gpg.verify(&format!("{repo}/{probe}"), &asc, Some(&repomd))
}

/// The channel checked now with the key the host trusts (the one in
/// `key_path`, which dnf's `gpgkey=` names); the keyring's home holds the
/// checked `repomd.xml`.
fn check_repo(host: &Host, rec: &Record) -> Result<TempGpg> {
    let gpg = TempGpg::new()?;
    output(
        gpg.gpg()
            .arg("--import")
            .arg(host.path(&key_path(&host.package))),
    )?;
    check_repomd(host, &gpg, &rec.repo, &rec.channel)?;
    Ok(gpg)
}

/// The package's versions the channel offers, newest last, read from the
/// repository itself: the primary index that the checked `repomd.xml` (in
/// `gpg`'s home) names, its checksum compared with the one `repomd.xml`
/// gives. What dnf-automatic (whose repository file has
/// `metadata_expire=0`) sees at its next run, without starting dnf.
fn published_versions(host: &Host, gpg: &TempGpg, rec: &Record) -> Result<Vec<String>> {
    let repomd = fs::read_to_string(gpg.home.join("repomd.xml"))?;
    let (href, kind, sum) = primary_location(&repomd)
        .context("repomd.xml names no primary index with a sha256 checksum")?;
    let file = gpg.home.join("primary");
    let rel = format!("rpm/{}/{href}", rec.channel);
    if !fetch(host, &rec.repo, &rel, &file)? {
        bail!("{}/{rel} is missing", rec.repo)
    }
    let bytes = fs::read(&file)?;
    if kind != "sha256" || crate::digest::sha256_hex(&bytes) != sum {
        bail!(
            "{}/{rel} does not match the checksum repomd.xml gives",
            rec.repo
        )
    }
    let xml = decompress(&href, bytes)?;
    // This machine's architecture as rpm names it, for the common ones;
    // for others nothing matches and dnf is asked instead.
    let mut v = primary_versions(&xml, &host.package, std::env::consts::ARCH);
    if v.is_empty() {
        bail!(
            "the primary index offers no {} for this machine",
            host.package
        )
    }
    v.sort_by(|a, b| rpm_order(a, b));
    v.dedup();
    Ok(v)
}

/// The primary index's location, checksum type and checksum in a
/// `repomd.xml`.
fn primary_location(repomd: &str) -> Option<(String, String, String)> {
    let start = repomd.find("<data type=\"primary\"")?;
    let data = &repomd[start..];
    let data = &data[..data.find("</data>")?];
    let href = attribute(&data[data.find("<location")?..], "href")?;
    let checksum = &data[data.find("<checksum ")?..];
    let kind = attribute(checksum, "type")?;
    let sum = checksum[checksum.find('>')? + 1..checksum.find("</checksum>")?].trim();
    Some((href, kind, sum.to_string()))
}

/// The `VERSION-RELEASE` of every entry of `package` for `arch` (or
/// `noarch`) in a primary index (`<name>`, `<arch>` and
/// `<version ver= rel=>` of each `<package>`), as
/// `dnf repoquery --qf %{version}-%{release}` prints them on that machine.
fn primary_versions(xml: &str, package: &str, arch: &str) -> Vec<String> {
    let name = format!("<name>{package}</name>");
    let arches = [format!("<arch>{arch}</arch>"), "<arch>noarch</arch>".into()];
    xml.split("<package ")
        .skip(1)
        .filter(|p| p.contains(&name) && arches.iter().any(|a| p.contains(a)))
        .filter_map(|p| {
            let version = &p[p.find("<version ")?..];
            Some(format!(
                "{}-{}",
                attribute(version, "ver")?,
                attribute(version, "rel")?
            ))
        })
        .collect()
}

/// An attribute's value in the first tag of `xml`.
fn attribute(xml: &str, name: &str) -> Option<String> {
    let tag = &xml[..xml.find('>')?];
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[at..].find('"')?;
    Some(tag[at..at + len].to_string())
}

/// A repository index, unpacked as its name says (createrepo_c writes
/// gzip by default; zstd and xz on request).
fn decompress(name: &str, bytes: Vec<u8>) -> Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut text)?;
    } else if name.ends_with(".zst") {
        text = String::from_utf8(zstd::decode_all(&bytes[..])?)?;
    } else if name.ends_with(".xz") {
        liblzma::read::XzDecoder::new(&bytes[..]).read_to_string(&mut text)?;
    } else {
        text = String::from_utf8(bytes)?;
    }
    Ok(text)
}

fn rpm(host: &Host) -> Command {
    let mut c = Command::new("rpm");
    if !host.is_live() {
        c.arg("--root").arg(&host.root);
    }
    c
}

fn dnf(host: &Host) -> Command {
    let mut c = Command::new("dnf");
    c.arg("-q");
    if !host.is_live() {
        c.arg("--installroot").arg(&host.root);
    }
    c
}

/// The keys rpm trusts: each `gpg-pubkey` package (as NAME-VERSION-RELEASE)
/// with the full fingerprint of the key it holds. rpm 4.18 names these
/// packages after the key's short id alone (VERSION: its last 8 hex digits)
/// and has no `rpmkeys --list`; the key itself is the package's DESCRIPTION,
/// armored, which gpg reads.
fn installed_keys(host: &Host, gpg: &TempGpg) -> Result<Vec<(String, String)>> {
    let names = output(rpm(host).args([
        "-qa",
        "gpg-pubkey",
        "--qf",
        "%{NAME}-%{VERSION}-%{RELEASE}\n",
    ]))?;
    let mut keys = Vec::new();
    for (i, nvr) in names
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let armored = output(rpm(host).args(["-q", nvr, "--qf", "%{DESCRIPTION}"]))?;
        let file = gpg.home.join(format!("rpm-key-{i}.asc"));
        fs::write(&file, armored).with_context(|| format!("cannot write {}", file.display()))?;
        // A key gpg cannot read cannot be the checked one: skip it.
        for fpr in gpg.show_keys(&file).unwrap_or_default() {
            keys.push((nvr.to_string(), fpr));
        }
    }
    Ok(keys)
}

/// The `gpg-pubkey` package holding the key with fingerprint `want`, if rpm
/// has it: the full fingerprints are compared, never the short id the
/// package is named after.
fn find_key<'a>(keys: &'a [(String, String)], want: &str) -> Option<&'a str> {
    keys.iter()
        .find(|(_, fpr)| same_fingerprint(fpr, want))
        .map(|(nvr, _)| nvr.as_str())
}

/// `rpm --import` of the checked key, unless rpm has it already (same full
/// fingerprint). The file imported must hold that key alone: it is listed
/// with gpg and compared with `fingerprint` in full before rpm reads it.
pub fn import_key(
    host: &Host,
    gpg: &TempGpg,
    fingerprint: &str,
    armored: &str,
    rec: &mut Record,
    dry_run: bool,
    out: &mut Report,
) -> Result<bool> {
    let want = normalize_fingerprint(fingerprint);
    if find_key(&installed_keys(host, gpg)?, &want).is_some() {
        return Ok(false);
    }
    let path = key_path(&host.package);
    // A dry run has not written the key file: check what it would write.
    let file = if dry_run {
        let file = gpg.home.join("to-import.asc");
        fs::write(&file, armored).with_context(|| format!("cannot write {}", file.display()))?;
        file
    } else {
        host.path(&path)
    };
    match gpg.show_keys(&file)?.as_slice() {
        [one] if same_fingerprint(one, &want) => {}
        found => bail!(
            "{path} holds the key(s) {}, not the one with fingerprint {want}: refusing to import it into rpm",
            found.join(", ")
        ),
    }
    out.change("rpm key", "import", "", format!("fingerprint {want}"));
    if dry_run {
        let _ = writeln!(out, "would rpm --import {path} (fingerprint {want})");
        return Ok(true);
    }
    output(rpm(host).arg("--import").arg(&file))?;
    let name = find_key(&installed_keys(host, gpg)?, &want)
        .with_context(|| {
            format!("rpm --import {path} succeeded, but rpm lists no key with fingerprint {want}")
        })?
        .to_string();
    if let Some(previous) = rec.rpm_key.replace(name.clone()) {
        // A rotation: the rpms already published keep the old signature.
        let _ = writeln!(
            out,
            "kept {previous}, the repository's previous key: the rpms published before the rotation are signed with it"
        );
        rec.rotated_rpm_keys.push(previous);
    }
    let _ = writeln!(out, "imported {name} (fingerprint {want}) into rpm");
    Ok(true)
}

pub fn remove_key(host: &Host, rec: &mut Record, dry_run: bool, out: &mut Report) -> Result<()> {
    let names: Vec<String> = rec
        .rpm_key
        .iter()
        .chain(&rec.rotated_rpm_keys)
        .cloned()
        .collect();
    for name in names {
        out.change("rpm key", "remove", name.as_str(), "");
        if dry_run {
            let _ = writeln!(out, "would rpm -e {name}");
        } else {
            let _ = output(rpm(host).args(["-e", &name]));
            let _ = writeln!(out, "removed {name} from rpm");
        }
    }
    if !dry_run {
        rec.rpm_key = None;
        rec.rotated_rpm_keys.clear();
    }
    Ok(())
}

/// `systemctl VERB` of ferry's dnf-automatic timer: with `--now` on a live
/// host under systemd, on the root's unit files (`--root`) otherwise.
fn timer_systemctl(host: &Host, verb: &str) -> Command {
    let timer = timer(&host.package);
    let mut c = Command::new("systemctl");
    if host.is_live() && std::path::Path::new("/run/systemd/system").is_dir() {
        c.args([verb, "--now", &timer]);
    } else {
        c.arg(format!("--root={}", host.root.display()))
            .args([verb, &timer]);
    }
    c
}

pub fn enable_timer(host: &Host, out: &mut Report) {
    let timer = timer(&host.package);
    match output(&mut timer_systemctl(host, "enable")) {
        Ok(_) => {
            let _ = writeln!(out, "enabled {timer}");
        }
        Err(e) => {
            let _ = writeln!(out, "warning: {e:#}");
        }
    }
}

pub fn disable_timer(host: &Host, dry_run: bool, out: &mut Report) {
    let timer = timer(&host.package);
    if dry_run {
        let _ = writeln!(out, "would disable {timer}");
        return;
    }
    let _ = output(&mut timer_systemctl(host, "disable"));
}

/// The repository's versions of the package, newest last.
fn available(host: &Host) -> Result<Vec<String>> {
    available_refreshed(host, false)
}

/// The repository's versions of the package, newest last; with `refresh`,
/// from its metadata read again (`dnf --refresh`), not from dnf's cache.
fn available_refreshed(host: &Host, refresh: bool) -> Result<Vec<String>> {
    let mut c = dnf(host);
    if refresh {
        c.arg("--refresh");
    }
    let text = output(c.args([
        "--disablerepo=*",
        &format!("--enablerepo=ferry-{}", host.package),
        "repoquery",
        "--qf",
        "%{version}-%{release}",
        &host.package,
    ]))?;
    let mut v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    v.sort_by(|a, b| rpm_order(a, b));
    v.dedup();
    Ok(v)
}

const VERSIONLOCK: &str = "/etc/dnf/plugins/versionlock.list";

/// Whether a line of `dnf versionlock list` (or of versionlock.list) locks `package`
/// (`roboconf-agent-0:1.0.0-1.*`), not another whose name begins the same.
pub fn versionlocks(line: &str, package: &str) -> bool {
    line.trim()
        .strip_prefix(package)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_digit())
}

/// `dnf versionlock add NAME-VERSION` (Some) or `delete NAME` (None). The
/// file as it was before ferry's first lock is kept in the record; after a
/// delete that left only dnf's "# Added lock" comments, it is put back.
pub fn versionlock(
    host: &Host,
    rec: &mut Record,
    version: Option<&str>,
    dry_run: bool,
    out: &mut Report,
) -> Result<()> {
    let (verb, spec) = match version {
        Some(v) => ("add", format!("{}-{v}", host.package)),
        None => ("delete", host.package.clone()),
    };
    let (action, before, after) = match version {
        Some(_) => ("lock", String::new(), spec.clone()),
        None => (
            "unlock",
            rec.pinned.clone().unwrap_or_default(),
            String::new(),
        ),
    };
    out.change("dnf versionlock", action, before, after);
    if dry_run {
        let _ = writeln!(out, "would run dnf versionlock {verb} {spec}");
        return Ok(());
    }
    let path = host.path(VERSIONLOCK);
    if version.is_some() && rec.versionlock_before.is_none() {
        rec.versionlock_before = Some(fs::read_to_string(&path).unwrap_or_default());
    }
    output(dnf(host).args(["versionlock", verb, &spec]))
        .context("dnf versionlock (needs the versionlock plugin: python3-dnf-plugin-versionlock or dnf-plugins-core)")?;
    let _ = writeln!(out, "dnf versionlock {verb} {spec}");
    if version.is_none() {
        if let Some(before) = rec.versionlock_before.take() {
            let now = fs::read_to_string(&path).unwrap_or_default();
            let extra = |t: &str| {
                t.lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect::<Vec<_>>()
            };
            if extra(&now) == extra(&before) && now != before {
                super::files::write_atomic(
                    &host.root,
                    VERSIONLOCK,
                    before.as_bytes(),
                    0o644,
                    &mut Vec::new(),
                )?;
            }
        }
    }
    Ok(())
}

/// The full version among `available` (newest last) that `version`
/// (upstream or full) names.
fn resolve_in(available: &[String], version: &str, package: &str) -> Result<String> {
    available
        .iter()
        .rev()
        .find(|x| *x == version || x.rsplit_once('-').map(|(u, _)| u) == Some(version))
        .cloned()
        .with_context(|| {
            format!(
                "version {version} of {package} is not in the channel (there: {})",
                available.join(", ")
            )
        })
}

/// `dnf VERB PACKAGE-FULL` (`install` or `downgrade`), with the
/// versionlock plugin off: a pin's lock would hide the target, and the
/// caller pins the target right after. dnf's output goes into the report.
fn dnf_to(host: &Host, verb: &str, full: &str, out: &mut Report) -> Result<()> {
    out.push_str(&output(dnf(host).args([
        "-y",
        "--disableplugin=versionlock",
        verb,
        &format!("{}-{full}", host.package),
    ]))?);
    Ok(())
}

fn installed(host: &Host) -> Option<String> {
    output(rpm(host).args(["-q", "--qf", "%{VERSION}-%{RELEASE}", &host.package])).ok()
}

/// dnf's log of the rpm transactions it runs (dnf-automatic's included).
const RPM_LOG: &str = "/var/log/dnf.rpm.log";

/// The last change of `package` in dnf's rpm log (`2026-12-07T17:14:49+0000
/// SUBDEBUG Upgrade: NAME-VERSION-RELEASE.ARCH`, then `Upgraded:` with the
/// version replaced) as "DATE: ACTION [OLD ->] NEW (dnf.rpm.log)".
fn last_rpm_change(log: &str, package: &str) -> Option<String> {
    // NAME-VERSION-RELEASE.ARCH of the package (not of another whose name
    // begins the same) as VERSION-RELEASE.
    let version_of = |nevra: &str| -> Option<String> {
        let rest = nevra.trim().strip_prefix(package)?.strip_prefix('-')?;
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        Some(rest.rsplit_once('.').map_or(rest, |(vr, _)| vr).to_string())
    };
    let entry = |line: &str| -> Option<(String, String, String)> {
        let (stamp, rest) = line.split_once(' ')?;
        let rest = rest.trim_start().strip_prefix("SUBDEBUG ")?;
        let (action, nevra) = rest.split_once(": ")?;
        Some((stamp.to_string(), action.to_string(), version_of(nevra)?))
    };
    let lines: Vec<&str> = log.lines().collect();
    let (at, (stamp, action, new)) = lines.iter().enumerate().rev().find_map(|(i, l)| {
        entry(l)
            .filter(|(_, a, _)| !a.ends_with("ed") || a == "Installed" || a == "Erased")
            .map(|e| (i, e))
    })?;
    let replaced = lines[at + 1..]
        .iter()
        .filter_map(|l| entry(l))
        .find(|(_, a, _)| *a == format!("{action}d"))
        .map(|(_, _, old)| format!("{old} -> "))
        .unwrap_or_default();
    Some(format!("{stamp}: {action} {replaced}{new} (dnf.rpm.log)"))
}

/// A row of `dnf history list` (ID | command line | date | action |
/// altered) as "DATE: ACTION (dnf transaction ID: COMMAND LINE)"; dnf cuts
/// the command line short.
fn history_row(row: &str) -> String {
    match row.split('|').map(str::trim).collect::<Vec<_>>().as_slice() {
        [id, command, date, action, ..] => {
            format!("{date}: {action} (dnf transaction {id}: {command})")
        }
        _ => row.trim().to_string(),
    }
}

/// rpm's order of two `[epoch:]version-release` strings: the one the
/// repository's retention uses (`repo::version::compare`).
fn rpm_order(a: &str, b: &str) -> std::cmp::Ordering {
    crate::repo::version::compare(crate::format::Format::Rpm, a, b)
}

/// dnf with dnf-automatic.
pub struct Dnf;

impl Backend for Dnf {
    fn about(&self) -> &'static About {
        &About {
            name: "dnf",
            updater: "dnf-automatic",
            requires: &["/usr/bin/dnf"],
        }
    }

    fn plan_enable(&self, e: &Enable) -> Result<(Vec<Planned>, Option<String>)> {
        Ok((plan_enable(e)?, None))
    }

    fn trust_key(&self, e: &Enable, edit: &mut Edit) -> Result<()> {
        let fingerprint = &e.args.fingerprint;
        import_key(
            e.host,
            e.gpg,
            fingerprint,
            e.source.armored_key,
            edit.rec,
            edit.dry_run,
            edit.out,
        )
        .map(drop)
    }

    fn after_enable(&self, host: &Host, out: &mut Report) {
        enable_timer(host, out);
    }

    fn before_disable(&self, host: &Host, edit: &mut Edit) -> Result<()> {
        disable_timer(host, edit.dry_run, edit.out);
        if edit.rec.pinned.is_some() {
            versionlock(host, edit.rec, None, edit.dry_run, edit.out)?;
        }
        Ok(())
    }

    fn after_disable(&self, host: &Host, edit: &mut Edit) -> Result<()> {
        remove_key(host, edit.rec, edit.dry_run, edit.out)
    }

    fn pin(&self, host: &Host, edit: &mut Edit, full: &str) -> Result<bool> {
        if edit.rec.pinned.as_deref() == Some(full) {
            return Ok(false);
        }
        if edit.rec.pinned.is_some() {
            versionlock(host, edit.rec, None, edit.dry_run, edit.out)?;
        }
        versionlock(host, edit.rec, Some(full), edit.dry_run, edit.out)?;
        let _ = writeln!(
            edit.out,
            "pinned {} to {full} (dnf versionlock; dnf-automatic never downgrades: use rollback)",
            host.package
        );
        Ok(true)
    }

    fn unpin(&self, host: &Host, edit: &mut Edit) -> Result<()> {
        versionlock(host, edit.rec, None, edit.dry_run, edit.out)
    }

    fn resolve_version(&self, host: &Host, version: &str) -> Result<String> {
        resolve_in(&available(host)?, version, &host.package)
    }

    fn install(
        &self,
        host: &Host,
        version: &str,
        refresh: bool,
        dry_run: bool,
        out: &mut Report,
    ) -> Result<String> {
        let avail = available_refreshed(host, refresh)?;
        let target = resolve_in(&avail, version, &host.package)?;
        let inst = installed(host);
        if out.install(&host.package, inst.as_deref(), &target, "dnf", dry_run) {
            // Down with `downgrade`; up, or onto a host without it, with
            // `install` of that very version.
            let verb = match &inst {
                Some(i) if rpm_order(&target, i).is_lt() => "downgrade",
                _ => "install",
            };
            dnf_to(host, verb, &target, out)?;
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
        let inst = installed(host)
            .with_context(|| format!("{} is not installed: nothing to roll back", host.package))?;
        let avail = available(host)?;
        let target = match to {
            Some(v) => self.resolve_version(host, v)?,
            None => avail
                .iter()
                .rev()
                .find(|v| rpm_order(v, &inst).is_lt())
                .cloned()
                .with_context(|| {
                    format!(
                        "no version of {} older than {inst} in the channel; give --to VERSION",
                        host.package
                    )
                })?,
        };
        if out.rollback(&host.package, &inst, &target, "dnf", dry_run) {
            dnf_to(host, "downgrade", &target, out)?;
        }
        Ok(target)
    }

    fn status(&self, host: &Host, rec: Option<&Record>, s: &mut Status) -> Result<()> {
        s.installed = installed(host);
        // The repository, checked now with the trusted key; the channel's
        // newest version read from it, or, when it cannot be, from dnf's
        // cache (`dnf repoquery`).
        let checked = rec.map(|r| (r, check_repo(host, r)));
        s.newest_available = match &checked {
            None => None,
            Some((r, Ok(gpg))) => published_versions(host, gpg, r)
                .or_else(|_| available(host))
                .ok(),
            Some((_, Err(_))) => available(host).ok(),
        }
        .and_then(|v| v.last().cloned());
        let lock = fs::read_to_string(host.path(VERSIONLOCK)).unwrap_or_default();
        // A lock of ferry's pin or anyone's (`ferry migration` holds with it).
        s.held = lock.lines().any(|l| versionlocks(l, &host.package));
        // Not a pin when it is the open migration's hold (the record has
        // no pin, and `not_updated_because` names the migration).
        let migration_holds = rec.is_none_or(|r| r.pinned.is_none())
            && crate::holds::load(&host.root, &host.package)?
                .get(crate::holds::Kind::Migration)
                .is_some();
        if let Some(l) = lock
            .lines()
            .find(|l| l.starts_with(&format!("{}-", host.package)))
            .filter(|_| !migration_holds)
        {
            s.pinned.get_or_insert_with(|| l.trim().to_string());
        }
        // dnf's own log of rpm transactions says the last change without
        // starting dnf; `dnf history` when it has no line of the package.
        s.last_package_change = fs::read_to_string(host.path(RPM_LOG))
            .ok()
            .and_then(|log| last_rpm_change(&log, &host.package))
            .or_else(|| {
                let h = output(dnf(host).args(["history", "list", &host.package])).ok()?;
                let row = h.lines().find(|l| {
                    l.trim_start()
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_digit())
                })?;
                Some(history_row(row))
            });
        if host.is_live() {
            if let Ok(j) = output(Command::new("journalctl").args([
                "-u",
                &format!("{}.service", unit(&host.package)),
                "-n",
                "50",
                "--no-pager",
                "-o",
                "short-iso",
            ])) {
                let lines: Vec<&str> = j.lines().filter(|l| !l.starts_with("--")).collect();
                // The last run: from its last "Starting" line on.
                let start = lines
                    .iter()
                    .rposition(|l| l.contains("Starting "))
                    .unwrap_or(0);
                if let Some(first) = lines.get(start) {
                    s.automatic_last_run = first.split_whitespace().next().map(String::from);
                }
                s.automatic_last_result = lines[start.min(lines.len())..]
                    .iter()
                    .filter_map(|l| l.split_once("]: ").map(|(_, m)| m.to_string()))
                    .collect();
            }
        }
        s.repository_check = match checked {
            None => "not configured".into(),
            Some((_, check)) => check.map_or_else(
                |e| format!("error: {e:#}"),
                |_| "ok (repomd.xml signed by the trusted key)".into(),
            ),
        };
        let newer = match (&s.installed, &s.newest_available) {
            (Some(i), Some(n)) => rpm_order(n, i).is_gt(),
            _ => false,
        };
        // What dnf's cache says is newest is not known to be the channel's.
        let check_failed = s.repository_check.starts_with("error");
        s.up_to_date =
            s.installed.is_some() && s.newest_available.is_some() && !newer && !check_failed;
        let why = &mut s.not_updated_because;
        if s.installed.is_none() {
            why.push(format!("{} is not installed", host.package));
        } else if s.newest_available.is_none() {
            why.push("the channel cannot be read (dnf failed) or is empty".into());
        } else if !newer && !check_failed {
            why.push("no newer version on the channel".into());
        }
        if let Some(p) = &s.pinned {
            why.push(format!(
                "locked with dnf versionlock ({p}); undo: `ferry channel unpin`"
            ));
        }
        if check_failed {
            why.push(format!(
                "the repository failed its check: {}",
                s.repository_check
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
