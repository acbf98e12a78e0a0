//! Signed apt and rpm repositories with channels and retention (`ferry
//! publish`, `ferry promote`). The layout is documented in
//! docs/REPOSITORIES.md.

mod apt;
pub mod inspect;
mod retention;
mod rpm;
mod sign;
mod state;
mod store;
pub(crate) mod version;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::exit::refused;
use serde::Serialize;

use inspect::Inspected;
use sign::Signer;
use state::{entry_id, Format, Published, RepoState};
use store::Store;

pub use state::STATE_FILE;
pub use store::PUBLIC_KEY_FILE;

/// Retention when `--keep` is not given.
pub const DEFAULT_KEEP: usize = 5;

/// Add .deb and .rpm packages to a channel of a signed repository.
///
/// One directory holds an apt repository (DIR/apt: `deb [signed-by=DIR/signing-key.asc]
/// file://DIR/apt CHANNEL main`) and an rpm repository (DIR/rpm/CHANNEL, for
/// `baseurl=`). Every index is signed with the repository's gpg key (two
/// while it is rotated); rpms are signed too.
/// A published version is immutable: publishing it again with the same
/// content changes nothing, with other content is refused. Each publish is
/// atomic: interrupted at any point, apt and dnf still read the repository.
#[derive(Debug, Clone)]
pub struct PublishArgs {
    /// Repository directory; created on first publish (must then be empty or absent).
    pub repo: PathBuf,

    /// Channel to publish into, e.g. `candidate` or `stable`: the apt suite and
    /// codename, and the rpm repository DIR/rpm/CHANNEL.
    pub channel: String,

    /// Keep the newest N versions of each package in the channel; older ones
    /// are pruned from it (kept versions excepted).
    pub keep: usize,
    pub signing: SigningArgs,

    /// Mark VERSION (upstream `1.2.0` or full `1.2.0-1`) as kept: retention never
    /// prunes it from any channel, now or later, so it stays a rollback target.
    /// Repeatable; recorded in the repository.
    pub keep_versions: Vec<String>,

    /// .deb and .rpm files to publish.
    pub packages: Vec<PathBuf>,
}

/// The key that signs the indices (and, on publish, the rpms).
#[derive(Debug, Clone, Default)]
pub struct SigningArgs {
    /// gpg keys that sign (id, fingerprint or user id of a secret key).
    /// Required on the first publish; later publishes and promotes default
    /// to the repository's keys, and refuse keys that share none with them.
    /// Several keys sign every index (the rpms: the first), so that a key
    /// can be rotated (docs/REPOSITORIES.md); a change of keys re-signs
    /// every channel.
    pub keys: Vec<String>,

    /// GnuPG home holding the secret key (default: gpg's own, $GNUPGHOME or ~/.gnupg).
    pub gnupghome: Option<PathBuf>,
}

/// Copy a published version from one channel to another, byte for byte.
///
/// Nothing is rebuilt or re-signed: the packages in the target channel are
/// the very files tested in the source channel. Retention (--keep) then
/// applies to the target channel.
#[derive(Debug, Clone)]
pub struct PromoteArgs {
    /// Repository directory made by `ferry publish`.
    pub repo: PathBuf,

    /// Channel that holds the version now.
    pub from: String,

    /// Channel to copy it into (created if new).
    pub to: String,

    /// Keep the newest N versions of each package in the target channel.
    pub keep: usize,
    pub signing: SigningArgs,

    /// Version to promote: upstream (`1.2.0`) or full (`1.2.0-1`); every
    /// package file of that version (deb and rpm, all architectures) is copied.
    pub version: String,

    /// Only this package's files of that version (a repository holding the
    /// agent and ferry's own package may have both at one version).
    pub package: Option<String>,
}

/// What a publish did.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub repo: PathBuf,
    pub channel: String,
    pub origin: String,
    /// Packages (`format/name/version/arch`) newly added to the channel.
    pub added: Vec<String>,
    /// Packages given that the channel already held with the same content.
    pub unchanged: Vec<String>,
    /// Packages retention removed from the channel.
    pub pruned: Vec<String>,
    /// Versions retention never prunes.
    pub kept_versions: Vec<String>,
    /// Index generation now current, None when nothing changed.
    pub generation: Option<u64>,
}

/// What a promote did.
#[derive(Debug, Clone, Serialize)]
pub struct PromoteReport {
    pub repo: PathBuf,
    pub from: String,
    pub to: String,
    pub version: String,
    /// Packages copied into the target channel.
    pub copied: Vec<String>,
    /// Packages the target channel already held.
    pub unchanged: Vec<String>,
    pub pruned: Vec<String>,
    pub generation: Option<u64>,
}

impl fmt::Display for PublishReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.generation {
            Some(g) => writeln!(
                f,
                "published to {} channel {} (generation {g})",
                self.repo.display(),
                self.channel
            )?,
            None => writeln!(
                f,
                "nothing to do: {} channel {} already holds these packages",
                self.repo.display(),
                self.channel
            )?,
        }
        write_list(f, "added", &self.added)?;
        write_list(f, "unchanged", &self.unchanged)?;
        write_list(f, "pruned", &self.pruned)?;
        write_list(f, "kept versions", &self.kept_versions)?;
        writeln!(f, "origin: {}", self.origin)
    }
}

impl fmt::Display for PromoteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.generation {
            Some(g) => writeln!(
                f,
                "promoted {} from {} to {} (generation {g})",
                self.version, self.from, self.to
            )?,
            None => writeln!(
                f,
                "nothing to do: {} already holds {}",
                self.to, self.version
            )?,
        }
        write_list(f, "copied", &self.copied)?;
        write_list(f, "unchanged", &self.unchanged)?;
        write_list(f, "pruned", &self.pruned)
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, title: &str, items: &[String]) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    writeln!(f, "{title}:")?;
    items.iter().try_for_each(|item| writeln!(f, "  {item}"))
}

/// Adds packages to a channel; see [`PublishArgs`].
pub fn publish(args: &PublishArgs) -> Result<PublishReport> {
    validate_channel(&args.channel).map_err(refused)?;
    validate_keep(args.keep).map_err(refused)?;
    let inputs = args
        .packages
        .iter()
        .map(|p| inspect::inspect(p))
        .collect::<Result<Vec<_>>>()?;
    let mut store = Store::open(&args.repo)?;
    let signer = resolve_signer(
        store.state.as_ref(),
        &args.signing.keys,
        args.signing.gnupghome.as_deref(),
    )?;
    let before = match &store.state {
        Some(state) => state.clone(),
        None => new_state(&inputs, &signer)?,
    };
    let (state, mut report) =
        plan_publish(&with_keys(before, &signer), &inputs, args).map_err(refused)?;
    // Finish what an interrupted run left, even when this one adds nothing:
    // the same publish, killed after its commit point, may have left the
    // channel's symlinks on the previous generation (or, on a first
    // publish, none).
    if let Some(committed) = &store.state {
        store.tidy(committed)?;
    }
    if store.state.as_ref() == Some(&state) {
        return Ok(report);
    }
    report.generation = Some(apply_publish(&mut store, state, &inputs, args, &signer)?);
    Ok(report)
}

/// The record after the publish, and its report; every refusal happens here,
/// before anything is written.
fn plan_publish(
    before: &RepoState,
    inputs: &[Inspected],
    args: &PublishArgs,
) -> Result<(RepoState, PublishReport)> {
    let mut state = before.clone();
    accept_inputs(&mut state, inputs)?;
    mark_kept(&mut state, inputs, &args.keep_versions)?;
    let ids: Vec<String> = inputs.iter().map(input_id).collect();
    let change = add_to_channel(&mut state, &args.channel, &ids, args.keep)?;
    let report = PublishReport {
        repo: args.repo.clone(),
        channel: args.channel.clone(),
        origin: state.origin.clone(),
        added: change.added,
        unchanged: change.unchanged,
        pruned: change.pruned,
        kept_versions: state.kept.iter().cloned().collect(),
        generation: None,
    };
    Ok((state, report))
}

/// Writes a planned publish: pool files, then the channel's new generation.
/// On failure whatever was added is removed again.
fn apply_publish(
    store: &mut Store,
    mut state: RepoState,
    inputs: &[Inspected],
    args: &PublishArgs,
    signer: &Signer,
) -> Result<u64> {
    let first_publish = store.state.is_none();
    let created_dir = !args.repo.exists();
    if first_publish {
        store.create()?;
    }
    let mut pool = PoolAdditions::default();
    let committed = pool
        .add(&mut state, inputs, &args.repo, signer)
        .and_then(|()| store.commit(state, &args.channel, signer));
    let generation = match committed {
        Ok(generation) => generation,
        Err(e) => {
            drop(pool);
            store.abandon_new(first_publish && created_dir);
            return Err(e.context("publish failed; the repository is unchanged"));
        }
    };
    pool.committed();
    store.finish()?;
    Ok(generation)
}

/// How a channel's membership changed.
struct ChannelChange {
    added: Vec<String>,
    unchanged: Vec<String>,
    pruned: Vec<String>,
}

/// Adds `ids` to `channel` and applies retention, refusing when retention
/// would prune one of them at once (the user asked for it to be there).
fn add_to_channel(
    state: &mut RepoState,
    channel: &str,
    ids: &[String],
    keep: usize,
) -> Result<ChannelChange> {
    let members = &mut state
        .channels
        .entry(channel.to_string())
        .or_default()
        .members;
    let (unchanged, added): (Vec<String>, Vec<String>) =
        ids.iter().cloned().partition(|id| members.contains(id));
    members.extend(added.iter().cloned());
    let pruned = retention::pruned(state, channel, keep);
    if let Some(id) = ids.iter().find(|id| pruned.contains(*id)) {
        bail!(
            "{id} would be pruned at once: it is older than the newest {keep} versions of its package \
             in channel {channel}. Nothing was changed; mark it kept (ferry publish --keep-version) \
             or pass a larger --keep"
        );
    }
    let members = &mut state
        .channels
        .entry(channel.to_string())
        .or_default()
        .members;
    members.retain(|id| !pruned.contains(id));
    Ok(ChannelChange {
        added,
        unchanged,
        pruned: pruned.into_iter().collect(),
    })
}

/// Copies a version between channels; see [`PromoteArgs`].
pub fn promote(args: &PromoteArgs) -> Result<PromoteReport> {
    validate_channel(&args.from).map_err(refused)?;
    validate_channel(&args.to).map_err(refused)?;
    validate_keep(args.keep).map_err(refused)?;
    if args.from == args.to {
        return Err(refused(anyhow!(
            "--from and --to are both {}: name two different channels",
            args.from
        )));
    }
    let mut store = Store::open(&args.repo)?;
    let Some(before) = store.state.clone() else {
        bail!(
            "{} is not a ferry repository yet: publish into it first",
            args.repo.display()
        );
    };
    let signer = resolve_signer(
        Some(&before),
        &args.signing.keys,
        args.signing.gnupghome.as_deref(),
    )?;
    let ids = promoted_ids(&before, &args.from, &args.version, args.package.as_deref())
        .map_err(refused)?;
    let mut state = with_keys(before.clone(), &signer);
    let change = add_to_channel(&mut state, &args.to, &ids, args.keep).map_err(refused)?;
    let mut report = PromoteReport {
        repo: args.repo.clone(),
        from: args.from.clone(),
        to: args.to.clone(),
        version: args.version.clone(),
        copied: change.added,
        unchanged: change.unchanged,
        pruned: change.pruned,
        generation: None,
    };
    store.tidy(&before)?;
    if state == before {
        // Already there; the tidy finished the same promote if it was
        // killed after its commit point.
        return Ok(report);
    }
    report.generation = Some(store.commit(state, &args.to, &signer)?);
    store.finish()?;
    Ok(report)
}

/// Ids of the packages in channel `from` that `wanted` names; exactly one
/// full version per package, or the user must be precise.
fn promoted_ids(
    state: &RepoState,
    from: &str,
    wanted: &str,
    package: Option<&str>,
) -> Result<Vec<String>> {
    if !state.channels.contains_key(from) {
        let known: Vec<&String> = state.channels.keys().collect();
        bail!("channel {from} does not exist in this repository (channels: {known:?})");
    }
    let members: Vec<&Published> = state
        .members(from)
        .into_iter()
        .filter(|p| package.is_none_or(|name| p.name == name))
        .collect();
    if let (Some(name), true) = (package, members.is_empty()) {
        bail!("channel {from} holds no package {name}; nothing was changed");
    }
    let matching: Vec<&Published> = members
        .iter()
        .copied()
        .filter(|p| version::names(wanted, &p.version))
        .collect();
    if matching.is_empty() {
        let available: BTreeSet<&str> = members.iter().map(|p| p.version.as_str()).collect();
        bail!("channel {from} holds no version {wanted} (it holds: {available:?}); nothing was changed");
    }
    let full: BTreeSet<(Format, &str)> = matching
        .iter()
        .map(|p| (p.format, p.version.as_str()))
        .collect();
    let formats: BTreeSet<Format> = full.iter().map(|(f, _)| *f).collect();
    if full.len() > formats.len() {
        let versions: Vec<&str> = full.iter().map(|(_, v)| *v).collect();
        bail!("{wanted} names several versions in {from} ({versions:?}): pass the full version");
    }
    Ok(matching.iter().map(|p| p.id()).collect())
}

fn validate_channel(name: &str) -> Result<()> {
    match crate::names::channel_name_problem(name) {
        Some(problem) => bail!("{problem}"),
        None => Ok(()),
    }
}

fn validate_keep(keep: usize) -> Result<()> {
    if keep == 0 {
        bail!("--keep 0 would empty the channel: keep at least 1 version");
    }
    Ok(())
}

/// The signer: the keys given, or the repository's recorded keys. Keys that
/// share none with the recorded ones are refused: clients trust only those.
fn resolve_signer(
    state: Option<&RepoState>,
    keys: &[String],
    gnupghome: Option<&Path>,
) -> Result<Signer> {
    let recorded: Vec<String> = state.map_or_else(Vec::new, |s| {
        s.keys().into_iter().map(str::to_string).collect()
    });
    let keys = if keys.is_empty() { &recorded } else { keys };
    if keys.is_empty() {
        bail!(
            "refusing to create an unsigned repository: apt and dnf clients verify every index. \
             Pass --key KEYID naming a secret gpg key (and --gnupghome DIR if it is not in the default one)"
        );
    }
    let signer = Signer::find(keys, gnupghome)?;
    if state.is_some() && !signer.fingerprints.iter().any(|f| recorded.contains(f)) {
        bail!(
            "this repository is signed with key(s) {}, and clients trust only those; --key names {}. \
             Nothing was changed; publish with the repository's key, or to rotate it, with both \
             (--key OLD --key NEW; docs/REPOSITORIES.md, \"Rotating the signing key\")",
            recorded.join(", "),
            signer.fingerprints.join(", ")
        );
    }
    Ok(signer)
}

/// The record with the signer's keys: the rpms' key first.
fn with_keys(mut state: RepoState, signer: &Signer) -> RepoState {
    state.key = signer.package_key().to_string();
    state.also_signed_by = signer.fingerprints[1..].to_vec();
    state
}

/// A new repository's record: a unique Origin, so unattended-upgrades can
/// select exactly this repository.
fn new_state(inputs: &[Inspected], signer: &Signer) -> Result<RepoState> {
    let name = inputs.first().map_or("packages", |i| i.name.as_str());
    let origin = format!("ferry-{name}-{}", crate::fsutil::random_hex()?);
    let label = format!("{name} ({origin})");
    Ok(RepoState::new(
        origin,
        label,
        signer.package_key().to_string(),
    ))
}

fn input_id(input: &Inspected) -> String {
    entry_id(input.format, &input.name, &input.version, &input.arch)
}

/// Checks architectures and immutability; records the first name and the
/// architectures of a format the repository sees for the first time.
fn accept_inputs(state: &mut RepoState, inputs: &[Inspected]) -> Result<()> {
    let known_formats: BTreeSet<Format> = state.names.keys().copied().collect();
    for input in inputs {
        let what = || {
            format!(
                "{} ({} {} {})",
                input.path.display(),
                input.name,
                input.version,
                input.arch
            )
        };
        // The first name of a format labels the repository; other packages
        // join it (ferry's own package beside its agent), each with its own
        // retention.
        state
            .names
            .entry(input.format)
            .or_insert_with(|| input.name.clone());
        let arches = state.architectures.entry(input.format).or_default();
        if known_formats.contains(&input.format) && !arches.contains(&input.arch) {
            bail!(
                "{} has architecture {}, but the repository's {} packages are {arches:?} (fixed by its first publish). \
                 Nothing was changed; publish other architectures into a repository of their own",
                what(),
                input.arch,
                input.format
            );
        }
        arches.insert(input.arch.clone());
        check_immutable(state, input, &what())?;
        record_published(state, input);
    }
    Ok(())
}

/// Enters a new input in the ledger (so retention counts it); its size and
/// digest are filled in when it is placed in the pool.
fn record_published(state: &mut RepoState, input: &Inspected) {
    let file = match input.format {
        Format::Deb => apt::pool_path(&input.name, &input.version, &input.arch),
        Format::Rpm => rpm::pool_path(&input.name, &input.version, &input.arch),
    };
    state
        .published
        .entry(input_id(input))
        .or_insert_with(|| Published {
            format: input.format,
            name: input.name.clone(),
            version: input.version.clone(),
            arch: input.arch.clone(),
            file,
            size: 0,
            sha256: String::new(),
            content: input.content.clone(),
            control: input.control.clone(),
        });
}

/// A published version is immutable: same content is fine, other content is refused.
fn check_immutable(state: &RepoState, input: &Inspected, what: &str) -> Result<()> {
    if let Some(published) = state.published.get(&input_id(input)) {
        if published.content != input.content {
            bail!(
                "{what} is already published with different content: a published version is immutable \
                 (clients may have installed it). Nothing was changed; build it with a new version \
                 (or a new Debian revision / rpm Release) and publish that"
            );
        }
    }
    Ok(())
}

/// Records `--keep-version` values; each must name a version this repository
/// has or this publish adds (a typo must not silently protect nothing).
fn mark_kept(state: &mut RepoState, inputs: &[Inspected], wanted: &[String]) -> Result<()> {
    for version in wanted {
        let known = state
            .published
            .values()
            .any(|p| version::names(version, &p.version))
            || inputs.iter().any(|i| version::names(version, &i.version));
        if !known {
            bail!("--keep-version {version}: no package of that version is published or being published");
        }
        state.kept.insert(version.clone());
    }
    Ok(())
}

/// Pool files added by this publish; removed again unless the publish commits,
/// so a failed publish leaves the repository as it was.
#[derive(Default)]
struct PoolAdditions {
    files: Vec<PathBuf>,
}

impl PoolAdditions {
    /// Puts each input not already in the pool there (rpms signed on the
    /// way) and records it as published.
    fn add(
        &mut self,
        state: &mut RepoState,
        inputs: &[Inspected],
        repo: &Path,
        signer: &Signer,
    ) -> Result<()> {
        for input in inputs {
            let entry = state
                .published
                .get_mut(&input_id(input))
                .context("input missing from the ledger")?;
            let destination = repo.join(&entry.file);
            if std::fs::metadata(&destination).is_ok_and(|m| m.len() == entry.size) {
                continue;
            }
            self.files.push(destination.clone());
            place_in_pool(input, &destination, signer)?;
            entry.size = std::fs::metadata(&destination)?.len();
            entry.sha256 = crate::fsutil::sha256_file(&destination)?;
        }
        Ok(())
    }

    /// The record now references the files: they stay.
    fn committed(&mut self) {
        self.files.clear();
    }
}

impl Drop for PoolAdditions {
    fn drop(&mut self) {
        for file in &self.files {
            let _ = crate::fsutil::remove_any(file);
        }
    }
}

/// Copies a package into the pool atomically; an rpm is signed on a temporary
/// copy first, so the pool only ever holds signed rpms.
fn place_in_pool(input: &Inspected, destination: &Path, signer: &Signer) -> Result<()> {
    let parent = destination.parent().context("pool path without parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    match input.format {
        Format::Deb => crate::fsutil::copy_atomic(&input.path, destination),
        Format::Rpm => {
            let unsigned = parent.join(format!(".ferry-tmp.{}.unsigned.rpm", std::process::id()));
            std::fs::copy(&input.path, &unsigned)
                .with_context(|| format!("cannot copy {} into the pool", input.path.display()))?;
            let signed = signer
                .sign_rpm(&unsigned)
                .and_then(|()| crate::fsutil::copy_atomic(&unsigned, destination));
            let _ = std::fs::remove_file(&unsigned);
            signed
        }
    }
}
