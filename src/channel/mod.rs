//! `ferry channel`: make the OS's own automatic update tool
//! (unattended-upgrades on apt hosts, dnf-automatic on dnf hosts) follow one
//! channel of a repository made by `ferry publish`, and undo it exactly.
//!
//! Everything ferry writes is listed, with checksums, in
//! `/var/lib/ferry/channel/<package>.json`; `disable` removes exactly those
//! files and refuses to delete one somebody changed. See docs/CHANNEL.md.

pub mod apt;
pub mod dnf;
pub mod files;
pub mod window;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use files::{Change, FileRecord, Planned, Record};
use window::Window;

/// Which automatic update tool a host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Apt,
    Dnf,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Apt => "apt",
            Family::Dnf => "dnf",
        }
    }
}

/// apt: /usr/bin/apt-get and /var/lib/dpkg; dnf: /usr/bin/dnf. A host with
/// both (e.g. Debian with dnf installed) is ambiguous: `--family` decides.
pub fn detect(root: &Path, family: Option<Family>) -> Result<Family> {
    let apt = root.join("usr/bin/apt-get").exists() && root.join("var/lib/dpkg").is_dir();
    let dnf = root.join("usr/bin/dnf").exists();
    match (family, apt, dnf) {
        (Some(Family::Apt), true, _) | (None, true, false) => Ok(Family::Apt),
        (Some(Family::Dnf), _, true) | (None, false, true) => Ok(Family::Dnf),
        (None, true, true) => bail!(
            "{} has both apt (/usr/bin/apt-get, /var/lib/dpkg) and dnf (/usr/bin/dnf): \
             say which one updates the agent with --family apt or --family dnf",
            root.display()
        ),
        (Some(f), _, _) => bail!(
            "--family {}: {} has no {} (see docs/CHANNEL.md)",
            f.name(),
            root.display(),
            if f == Family::Apt {
                "/usr/bin/apt-get and /var/lib/dpkg"
            } else {
                "/usr/bin/dnf"
            }
        ),
        (None, false, false) => bail!(
            "{} is neither an apt host (/usr/bin/apt-get and /var/lib/dpkg) nor a dnf host \
             (/usr/bin/dnf): ferry channel supports unattended-upgrades and dnf-automatic only; \
             give --root the system's root directory",
            root.display()
        ),
    }
}

/// The `ferry channel` command line.
#[derive(clap::Args, Debug)]
pub struct ChannelArgs {
    /// The root of the system to configure (every path is under it).
    #[arg(long, global = true, default_value = "/")]
    pub root: PathBuf,
    /// The agent's package name.
    #[arg(long, global = true, default_value = "roboconf-agent")]
    pub package: String,
    /// apt or dnf; detected, and needed only on a host that has both.
    #[arg(long, global = true, value_enum)]
    pub family: Option<Family>,
    #[command(subcommand)]
    pub command: ChannelCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ChannelCommand {
    /// Trust the repository's key (after checking its fingerprint), add the
    /// repository, and turn the automatic update tool on for it.
    Enable(EnableArgs),
    /// Remove exactly what enable, pin and rollback wrote.
    Disable {
        /// Print what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Installed and available versions, pin, the automatic tool's last run,
    /// and why the agent was not updated.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Keep the agent at VERSION (downgrading to it on the next automatic run).
    Pin {
        version: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the pin.
    Unpin {
        #[arg(long)]
        dry_run: bool,
    },
    /// Install the previous (or given) version through the package manager,
    /// so the upgrade hooks carry the state down, then pin it.
    Rollback {
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct EnableArgs {
    /// The repository made by `ferry publish`: file:///srv/repo or https://…
    /// (the directory holding apt/ and rpm/).
    #[arg(long, value_name = "URL")]
    pub repo: String,
    /// The repository's public key (DIR/signing-key.asc).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The key's full fingerprint, obtained out of band; a key with another
    /// fingerprint is refused.
    #[arg(long, value_name = "FPR")]
    pub fingerprint: String,
    /// The channel to follow; it must exist in the repository.
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// The repository's Origin (read from its Release file by default).
    #[arg(long)]
    pub origin: Option<String>,
    /// Maintenance window for the automatic upgrade, `[DAYS] HH:MM-HH:MM`
    /// in local time, e.g. `Mon..Fri 02:00-04:00`.
    #[arg(long, value_name = "SPEC")]
    pub window: Option<String>,
    /// Print a unified diff of every file it would write; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs one `ferry channel` command, printing its report.
pub fn run(args: ChannelArgs) -> Result<()> {
    let host = Host::open(&args.root, &args.package, args.family)?;
    let text = match args.command {
        ChannelCommand::Enable(e) => enable(&host, &e)?,
        ChannelCommand::Disable { dry_run } => disable(&host, dry_run)?,
        ChannelCommand::Status { json } => {
            let s = status(&host)?;
            if json {
                serde_json::to_string_pretty(&s)? + "\n"
            } else {
                s.to_string()
            }
        }
        ChannelCommand::Pin { version, dry_run } => pin(&host, &version, dry_run)?,
        ChannelCommand::Unpin { dry_run } => unpin(&host, dry_run)?,
        ChannelCommand::Rollback { to } => rollback(&host, to.as_deref())?,
    };
    print!("{text}");
    Ok(())
}

/// The system being configured.
pub struct Host {
    pub root: PathBuf,
    pub package: String,
    pub family: Family,
}

impl Host {
    pub fn open(root: &Path, package: &str, family: Option<Family>) -> Result<Host> {
        // apt ignores apt.conf.d files whose names hold other characters.
        if package.is_empty()
            || !package
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            bail!("package name {package:?}: use lowercase letters, digits, '-' and '.' only")
        }
        Ok(Host {
            root: root.to_path_buf(),
            package: package.to_string(),
            family: detect(root, family)?,
        })
    }

    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    pub fn path(&self, p: &str) -> PathBuf {
        files::under(&self.root, p)
    }

    fn record(&self) -> Result<Option<Record>> {
        files::load_record(&self.root, &self.package)
    }
}

/// Runs a command; its stdout, or an error naming it with its output.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A temporary GNUPGHOME holding only the checked key.
pub struct TempGpg {
    pub home: PathBuf,
}

impl TempGpg {
    fn new() -> Result<TempGpg> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        for n in 0..1000 {
            let home = base.join(format!("ferry-channel-gpg-{}-{n}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&home) {
                Ok(()) => return Ok(TempGpg { home }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("cannot create a temporary GNUPGHOME"),
            }
        }
        bail!("cannot create a temporary GNUPGHOME")
    }

    pub fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--no-tty"]);
        c
    }

    /// Verifies a detached (`sig` given) or clear-signed file with the key.
    pub fn verify(&self, what: &str, signed: &Path, data: Option<&Path>) -> Result<()> {
        let mut c = self.gpg();
        c.arg("--verify").arg(signed);
        if let Some(d) = data {
            c.arg(d);
        }
        output(&mut c).map(drop).with_context(|| {
            format!("{what} is not signed by the checked key: the repository or the key is wrong")
        })
    }

    /// The primary fingerprints of the keys in `file`, as gpg prints them
    /// (upper-case hex, in full), without importing anything.
    pub fn show_keys(&self, file: &Path) -> Result<Vec<String>> {
        let listing = output(self.gpg().args(["--with-colons", "--show-keys"]).arg(file))
            .with_context(|| format!("{} is not an OpenPGP public key", file.display()))?;
        Ok(primary_fingerprints(&listing))
    }
}

/// The primary keys' fingerprints in a `gpg --with-colons` listing: the
/// `fpr:` record right after each `pub:` (subkeys' follow `sub:`).
pub(crate) fn primary_fingerprints(listing: &str) -> Vec<String> {
    let mut primaries = Vec::new();
    let mut after_pub = false;
    for line in listing.lines() {
        if line.starts_with("pub:") {
            after_pub = true;
        } else if after_pub && line.starts_with("fpr:") {
            primaries.push(line.split(':').nth(9).unwrap_or("").to_string());
            after_pub = false;
        }
    }
    primaries
}

/// A fingerprint as gpg prints it: hex digits in upper case, no spaces.
pub(crate) fn normalize_fingerprint(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// A whole fingerprint (40 hex digits for a v4 key, 64 for v5 and v6), not
/// a key id: ids of 8 or 16 digits are cheap to collide.
pub(crate) fn is_full_fingerprint(fingerprint: &str) -> bool {
    fingerprint.len() >= 40 && fingerprint.chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether two fingerprints name the same key: every digit compared, so a
/// key that shares only its short (last 8 digits) or long id is another key.
pub(crate) fn same_fingerprint(a: &str, b: &str) -> bool {
    let (a, b) = (normalize_fingerprint(a), normalize_fingerprint(b));
    is_full_fingerprint(&a) && a == b
}

impl Drop for TempGpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "all"])
            .output();
        let _ = fs::remove_dir_all(&self.home);
    }
}

/// Checks that FILE holds exactly one key whose primary fingerprint is
/// `fingerprint`; returns a keyring holding it and its armored export.
pub(crate) fn checked_key(key: &Path, fingerprint: &str) -> Result<(TempGpg, String)> {
    let want = normalize_fingerprint(fingerprint);
    if !is_full_fingerprint(&want) {
        bail!(
            "--fingerprint {fingerprint:?} is not a full fingerprint (40 or more hex digits); \
             `gpg --show-keys {}` prints it: compare it with the one the repository's owner published",
            key.display()
        )
    }
    if !key.is_file() {
        bail!("key file {} does not exist", key.display())
    }
    let gpg = TempGpg::new()?;
    let primaries = gpg.show_keys(key)?;
    match primaries.as_slice() {
        [one] if same_fingerprint(one, &want) => {}
        [one] => bail!(
            "the key in {} has fingerprint {one}, not {want}: refusing to trust it. \
             Get the right key (the repository's signing-key.asc) or check the fingerprint you were given",
            key.display()
        ),
        [] => bail!("{} holds no public key", key.display()),
        many => bail!(
            "{} holds {} keys ({}); give a file with the repository's key alone",
            key.display(),
            many.len(),
            many.join(", ")
        ),
    }
    output(gpg.gpg().arg("--import").arg(key))?;
    let armored = output(gpg.gpg().args(["--armor", "--export", &want]))?;
    Ok((gpg, armored))
}

/// Reads `rel` (relative to the repository URL): from the disk (under the
/// root) for file://, with curl for http(s)://.
pub(crate) fn fetch(host: &Host, repo: &str, rel: &str, into: &Path) -> Result<bool> {
    let url = format!("{}/{rel}", repo.trim_end_matches('/'));
    if let Some(path) = repo.strip_prefix("file://") {
        let local = host.path(&format!("{}/{rel}", path.trim_end_matches('/')));
        match fs::copy(&local, into) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", local.display())),
        }
    } else if repo.starts_with("https://") || repo.starts_with("http://") {
        if Path::new(APT_HELPER).is_file() {
            download_with_apt(repo, &url, into)
        } else {
            download_with_curl(repo, &url, into)
        }
    } else {
        bail!("--repo {repo:?}: give a file://, http:// or https:// URL of the directory `ferry publish` made")
    }
}

/// apt's own downloader: on every Debian and Ubuntu VM, where curl is not.
const APT_HELPER: &str = "/usr/lib/apt/apt-helper";

/// `apt-helper download-file`: true when fetched, false on a 404.
fn download_with_apt(repo: &str, url: &str, into: &Path) -> Result<bool> {
    let out = Command::new(APT_HELPER)
        .args(["-o", "Acquire::http::Timeout=30", "download-file", url])
        .arg(into)
        .output()
        .with_context(|| format!("cannot run {APT_HELPER}"))?;
    if out.status.success() {
        return Ok(true);
    }
    let said = String::from_utf8_lossy(&out.stderr);
    if said.contains(" 404 ") {
        return Ok(false);
    }
    let error = said
        .lines()
        .filter(|l| l.starts_with("E: "))
        .collect::<Vec<_>>()
        .join("; ");
    bail!("repository {repo} is unreachable: {url}: {error}; check the URL and the network")
}

/// curl, where apt is not (Fedora, RHEL and kin ship it): true when
/// fetched, false on a 404.
fn download_with_curl(repo: &str, url: &str, into: &Path) -> Result<bool> {
    let out = Command::new("curl")
        .args(["-sSL", "--max-time", "30", "-w", "%{http_code}", "-o"])
        .arg(into)
        .arg(url)
        .output()
        .context("cannot run curl (needed for an http(s) repository where apt is not installed)")?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if code == "404" {
        return Ok(false);
    }
    if !out.status.success() || code != "200" {
        bail!(
            "repository {repo} is unreachable: {url}: {} (HTTP {code}); check the URL and the network",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
    Ok(true)
}

/// Checks the repository is there and the channel exists (`probe` is the
/// file whose presence means the channel exists, e.g.
/// `apt/dists/stable/InRelease`).
pub(crate) fn require_channel(
    host: &Host,
    repo: &str,
    probe: &str,
    into: &Path,
    channel: &str,
) -> Result<()> {
    if fetch(host, repo, probe, into)? {
        return Ok(());
    }
    let mut known = String::new();
    if let Some(path) = repo.strip_prefix("file://") {
        let root = host.path(path.trim_end_matches('/'));
        if !root.is_dir() {
            bail!(
                "repository {repo} is unreachable: {} does not exist",
                root.display()
            )
        }
        let dists = host.path(&format!("{}/apt/dists", path.trim_end_matches('/')));
        if let Ok(entries) = fs::read_dir(&dists) {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            names.sort();
            known = format!(" (channels there: {})", names.join(", "));
        }
    }
    bail!("channel {channel:?} not found in repository {repo}: no {probe}{known}; publish to it first or pick another --channel")
}

/// What applying a list of planned files would change, refusals first.
fn plan_changes(
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
fn apply(
    host: &Host,
    changes: &[(Planned, Change)],
    record: &mut Record,
    dry_run: bool,
    out: &mut String,
) -> Result<usize> {
    let mut changed = 0;
    for (plan, change) in changes {
        let (old, verb) = match change {
            Change::Unchanged => continue,
            Change::Create => (Vec::new(), "create"),
            Change::Update { old } => (old.clone(), "update"),
        };
        changed += 1;
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
fn daemon_reload(host: &Host, out: &mut String) {
    if host.is_live() && Path::new("/run/systemd/system").is_dir() {
        if let Err(e) = output(Command::new("systemctl").arg("daemon-reload")) {
            let _ = writeln!(out, "warning: systemctl daemon-reload: {e:#}");
        }
    }
}

pub fn enable(host: &Host, args: &EnableArgs) -> Result<String> {
    if args.channel.is_empty()
        || !args
            .channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "--channel {:?}: a channel name is letters, digits, '-', '_' and '.'",
            args.channel
        )
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
    let (plans, origin) = match host.family {
        Family::Apt => apt::plan_enable(host, args, &gpg, &armored, window.as_ref())?,
        Family::Dnf => (
            dnf::plan_enable(host, args, &gpg, &armored, window.as_ref())?,
            None,
        ),
    };
    let changes = plan_changes(host, &plans, record.as_ref())?;
    let mut rec = record.unwrap_or_else(|| Record {
        package: host.package.clone(),
        family: host.family.name().into(),
        repo: args.repo.clone(),
        channel: args.channel.clone(),
        origin: origin.clone(),
        ..Record::default()
    });
    // Files of an earlier enable that this one no longer writes (e.g. a window removed).
    let stale: Vec<String> = rec
        .files
        .keys()
        .filter(|p| is_enable_file(host, p) && !plans.iter().any(|pl| &pl.path == *p))
        .cloned()
        .collect();
    let mut out = String::new();
    let mut changed = apply(host, &changes, &mut rec, args.dry_run, &mut out)?;
    for p in &stale {
        changed += 1;
        remove_recorded(host, &mut rec, p, args.dry_run, &mut out)?;
    }
    let key_changed = match host.family {
        Family::Dnf => dnf::import_key(
            host,
            &gpg,
            &args.fingerprint,
            &armored,
            &mut rec,
            args.dry_run,
            &mut out,
        )?,
        Family::Apt => false,
    };
    if changed == 0 && !key_changed {
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
    files::save_record(&host.root, &rec)?;
    daemon_reload(host, &mut out);
    if host.family == Family::Dnf {
        dnf::enable_timer(host, &mut out);
    }
    let _ = writeln!(
        out,
        "enabled: {} follows {} channel {} ({} automatic updates)",
        host.package,
        args.repo,
        args.channel,
        host.family.name()
    );
    Ok(out)
}

/// Whether a recorded file belongs to enable (not to pin).
fn is_enable_file(host: &Host, path: &str) -> bool {
    !apt::pin_paths(&host.package).iter().any(|p| p == path)
}

/// Removes one recorded file unless somebody changed it.
fn remove_recorded(
    host: &Host,
    rec: &mut Record,
    path: &str,
    dry_run: bool,
    out: &mut String,
) -> Result<()> {
    check_removable(host, rec, path)?;
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

fn check_removable(host: &Host, rec: &Record, path: &str) -> Result<()> {
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

pub fn disable(host: &Host, dry_run: bool) -> Result<String> {
    let Some(mut rec) = host.record()? else {
        return Ok(format!(
            "nothing to change: ferry channel is not enabled for {}\n",
            host.package
        ));
    };
    // Every refusal before any removal.
    for p in rec.files.keys() {
        check_removable(host, &rec, p)?;
    }
    let mut out = String::new();
    if host.family == Family::Dnf {
        dnf::disable_timer(host, dry_run, &mut out);
        if rec.pinned.is_some() {
            dnf::versionlock(host, &mut rec, None, dry_run, &mut out)?;
        }
    }
    let paths: Vec<String> = rec.files.keys().cloned().collect();
    for p in &paths {
        remove_recorded(host, &mut rec, p, dry_run, &mut out)?;
    }
    if host.family == Family::Dnf {
        dnf::remove_key(host, &mut rec, dry_run, &mut out)?;
    }
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

pub fn pin(host: &Host, version: &str, dry_run: bool) -> Result<String> {
    let mut rec = enabled_record(host)?;
    let mut out = String::new();
    match host.family {
        Family::Apt => {
            let full = apt::resolve_version(host, version)?;
            let plans = apt::plan_pin(&host.package, &full);
            let changes = plan_changes(host, &plans, Some(&rec))?;
            let changed = apply(host, &changes, &mut rec, dry_run, &mut out)?;
            if changed == 0 {
                let _ = writeln!(
                    out,
                    "nothing to change: {} is already pinned to {full}",
                    host.package
                );
                return Ok(out);
            }
            rec.pinned = Some(full.clone());
            let _ = writeln!(
                out,
                "pinned {} to {full} (Pin-Priority 1001); note: Unattended-Upgrade::Allow-downgrade \
                 \"true\" is host-wide: unattended-upgrades may now downgrade any package pinned above 1000",
                host.package
            );
        }
        Family::Dnf => {
            let full = dnf::resolve_version(host, version)?;
            if rec.pinned.as_deref() == Some(full.as_str()) {
                let _ = writeln!(
                    out,
                    "nothing to change: {} is already pinned to {full}",
                    host.package
                );
                return Ok(out);
            }
            if rec.pinned.is_some() {
                dnf::versionlock(host, &mut rec, None, dry_run, &mut out)?;
            }
            dnf::versionlock(host, &mut rec, Some(&full), dry_run, &mut out)?;
            rec.pinned = Some(full.clone());
            let _ = writeln!(out, "pinned {} to {full} (dnf versionlock; dnf-automatic never downgrades: use rollback)", host.package);
        }
    }
    if dry_run {
        let _ = writeln!(out, "dry run: nothing was changed");
    } else {
        files::save_record(&host.root, &rec)?;
    }
    Ok(out)
}

pub fn unpin(host: &Host, dry_run: bool) -> Result<String> {
    let mut rec = enabled_record(host)?;
    let mut out = String::new();
    if rec.pinned.is_none() {
        let _ = writeln!(out, "nothing to change: {} is not pinned", host.package);
        return Ok(out);
    }
    match host.family {
        Family::Apt => {
            for p in apt::pin_paths(&host.package) {
                check_removable(host, &rec, &p)?;
            }
            for p in apt::pin_paths(&host.package) {
                remove_recorded(host, &mut rec, &p, dry_run, &mut out)?;
            }
        }
        Family::Dnf => dnf::versionlock(host, &mut rec, None, dry_run, &mut out)?,
    }
    if dry_run {
        let _ = writeln!(out, "dry run: nothing was changed");
    } else {
        rec.pinned = None;
        files::save_record(&host.root, &rec)?;
        let _ = writeln!(out, "unpinned {}", host.package);
    }
    Ok(out)
}

pub fn rollback(host: &Host, to: Option<&str>) -> Result<String> {
    enabled_record(host)?;
    let mut out = String::new();
    let version = match host.family {
        Family::Apt => apt::rollback(host, to, &mut out)?,
        Family::Dnf => dnf::rollback(host, to, &mut out)?,
    };
    out.push_str(&pin(host, &version, false)?);
    Ok(out)
}

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
    /// apt: Unattended-Upgrade::Allow-downgrade is set host-wide by the pin.
    pub allow_downgrade_host_wide: bool,
    pub held: bool,
    pub automatic_last_run: Option<String>,
    pub automatic_last_result: Vec<String>,
    pub last_package_change: Option<String>,
    pub repository_check: String,
    pub up_to_date: bool,
    pub not_updated_because: Vec<String>,
}

pub fn status(host: &Host) -> Result<Status> {
    let rec = host.record()?;
    let mut s = Status {
        package: host.package.clone(),
        family: host.family.name().into(),
        enabled: rec.is_some(),
        repo: rec.as_ref().map(|r| r.repo.clone()),
        channel: rec.as_ref().map(|r| r.channel.clone()),
        pinned: rec.as_ref().and_then(|r| r.pinned.clone()),
        ..Status::default()
    };
    match host.family {
        Family::Apt => apt::status(host, rec.as_ref(), &mut s)?,
        Family::Dnf => dnf::status(host, rec.as_ref(), &mut s)?,
    }
    // The agent's own upgrade log: a refused (deferred) upgrade.
    if !s.up_to_date {
        if let Ok(log) =
            fs::read_to_string(host.path(&format!("/var/log/{}/upgrades.log", host.package)))
        {
            if let Some(line) = busy_refusal(&log) {
                s.not_updated_because.push(format!(
                    "the agent was busy and refused the upgrade (deferred to the next automatic run): {line}"
                ));
            }
        }
    }
    Ok(s)
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
        writeln!(
            f,
            "held:             {}",
            if self.held { "yes" } else { "no" }
        )?;
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

    #[test]
    fn the_host_family_is_detected_and_ambiguity_refused() {
        let root = std::env::temp_dir().join(format!("ferry-detect-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        let err = |f| detect(&root, f).unwrap_err().to_string();
        assert!(err(None).contains("neither an apt host"));
        fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        fs::write(root.join("usr/bin/apt-get"), "").unwrap();
        assert_eq!(detect(&root, None).unwrap(), Family::Apt);
        assert!(err(Some(Family::Dnf)).contains("has no /usr/bin/dnf"));
        fs::write(root.join("usr/bin/dnf"), "").unwrap();
        assert!(err(None).contains("--family apt or --family dnf"));
        assert_eq!(detect(&root, Some(Family::Dnf)).unwrap(), Family::Dnf);
        assert!(Host::open(&root, "Bad+Name", None).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
