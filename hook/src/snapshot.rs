//! Snapshots of an agent's state directory.
//!
//! A snapshot is a directory `<snapshots>/<unix time>-<version>/` holding
//! `data/` (a copy of the state directory: files, directories, symlinks,
//! with modes, owners and modification times) and `ferry-snapshot.json`
//! (what was copied, with the size and checksum of every file). It is built
//! under `.partial-<name>` and renamed into place once complete and flushed,
//! so a snapshot that exists under its final name is whole. Each file is
//! hashed while it is copied: one read per byte, no second pass.
//!
//! Restoring verifies the whole snapshot first and refuses a damaged one
//! (a file missing, added, resized or changed), so a rollback never puts
//! back part of the data.
//!
//! The state directory belongs to the agent's user, who is not trusted
//! (docs/SECURITY.md): it is read only through [`confined`], so a snapshot
//! never follows a symlink, crosses a mount point, opens a FIFO or expands
//! a sparse file, and refuses such a tree naming what it found.
//!
//! Format 2 checksums files with BLAKE3; format 1 used SHA-256 and is still
//! read, verified and restored (see [`Checksum`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::Stat;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::confined::{self, Dir, Found, Kind};

mod copy;
mod reuse;
use reuse::Reuse;

/// The manifest's file name inside a snapshot.
pub const MANIFEST: &str = "ferry-snapshot.json";
/// The copy of the state directory inside a snapshot.
pub const DATA: &str = "data";
const FORMAT: &str = "ferry-snapshot";
const FORMAT_VERSION: u32 = 2;
/// Prefix of snapshots being written (or left behind by a crash).
pub const PARTIAL: &str = ".partial-";

/// What a snapshot records about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub package: String,
    /// The package version whose state this is.
    pub version: String,
    /// The state schema at the time, when known.
    pub schema: Option<u32>,
    pub created_unix: u64,
    /// The directory that was copied.
    pub source: String,
    /// Why it was taken, e.g. `upgrade 1.0.0 -> 1.1.0`.
    pub reason: String,
    /// How `digest` of each file was computed (absent in format 1: SHA-256).
    #[serde(default = "Checksum::format_1")]
    pub checksum: Checksum,
    pub root: Attrs,
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// A manifest in the current format, described by `label`.
    fn new(
        label: &Label,
        created_unix: u64,
        source: String,
        root: Attrs,
        entries: Vec<Entry>,
    ) -> Self {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            package: label.package.clone(),
            version: label.version.clone(),
            schema: label.schema,
            created_unix,
            source,
            reason: label.reason.clone(),
            checksum: Checksum::CURRENT,
            root,
            entries,
        }
    }
}

/// The checksum of a snapshot's files. Hashing is most of a snapshot's CPU
/// time: BLAKE3 is as strong as SHA-256 and 3 to 5 times faster on the
/// machines measured (docs/BENCHMARKS.md), so format 2 uses it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Checksum {
    Sha256,
    Blake3,
}

impl Checksum {
    /// What new snapshots use.
    pub const CURRENT: Checksum = Checksum::Blake3;

    fn format_1() -> Checksum {
        Checksum::Sha256
    }

    fn hasher(self) -> Hasher {
        match self {
            Checksum::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Checksum::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    // Boxed: its state is 2 KiB.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// The digest in lowercase hex.
    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::Blake3(h) => hex(h.finalize().as_bytes()),
        }
    }
}

/// Mode and owner of a directory.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One thing under the state directory, by its path relative to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    Dir {
        path: String,
        #[serde(flatten)]
        attrs: Attrs,
    },
    File {
        path: String,
        #[serde(flatten)]
        attrs: Attrs,
        size: u64,
        /// The content's checksum, of the manifest's kind (format 1 called
        /// it `sha256`).
        #[serde(alias = "sha256")]
        digest: String,
        mtime: i64,
    },
    Symlink {
        path: String,
        target: String,
        uid: u32,
        gid: u32,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// Who the snapshot belongs to and why it is taken.
#[derive(Debug, Clone)]
pub struct Label {
    pub package: String,
    pub version: String,
    pub schema: Option<u32>,
    pub reason: String,
}

/// A snapshot on disk.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub path: PathBuf,
    /// Sockets found in the state and not copied (live endpoints, not state).
    pub skipped: Vec<String>,
}

/// Copies `source` into a new snapshot under `dir`, leaving out the
/// top-level names in `exclude` (e.g. the upgrade marker).
pub fn create(source: &Path, dir: &Path, label: &Label, exclude: &[&str]) -> Result<Snapshot> {
    create_reusing(source, dir, label, exclude, None)
}

/// A new snapshot of `source` beside `earlier`, with its label but `reason`:
/// files unchanged since `earlier` was taken are hard links to its copies
/// (see `reuse`), the rest is copied. `earlier` is left as it is.
pub fn retake(earlier: &Path, source: &Path, reason: &str, exclude: &[&str]) -> Result<Snapshot> {
    let manifest = read_manifest(earlier)?;
    let label = Label {
        package: manifest.package.clone(),
        version: manifest.version.clone(),
        schema: manifest.schema,
        reason: reason.into(),
    };
    let dir = earlier
        .parent()
        .with_context(|| format!("{} has no parent directory", earlier.display()))?;
    let reuse = Reuse::new(earlier, manifest)?;
    create_reusing(source, dir, &label, exclude, reuse.as_ref())
}

fn create_reusing(
    source: &Path,
    dir: &Path,
    label: &Label,
    exclude: &[&str],
    reuse: Option<&Reuse>,
) -> Result<Snapshot> {
    let cannot = || format!("cannot snapshot {}", source.display());
    let state = Dir::open_trusted(source).with_context(cannot)?;
    let root = attrs_of(&state.fstat()?);
    let tree = state.walk(exclude).with_context(cannot)?;
    let snapshots = private_dir(dir)?;
    check_room(&tree, &snapshots, source)?;
    let created_unix = now_unix();
    let name = free_name(&snapshots, &format!("{created_unix}-{}", label.version))?;
    let partial = format!("{PARTIAL}{name}");
    snapshots.remove_tree(&partial)?;
    snapshots.mkdir(&partial, 0o700)?;
    let part = snapshots.open_dir(&partial)?;
    // Hard links are accepted only to files of the state's own owner.
    let owner = Some(root.uid);
    let copied = copy::copy_tree(&state, &tree, &part, DATA, Checksum::CURRENT, reuse, owner)
        .with_context(|| {
            format!(
                "copying {} into {}",
                source.display(),
                part.path().display()
            )
        })?;
    let source_name = source.display().to_string();
    let manifest = Manifest::new(label, created_unix, source_name, root, copied.entries);
    write_manifest(&part, &manifest)?;
    // One syncfs for the whole tree, as cheap as it gets, then the rename
    // that makes it whole.
    part.sync_filesystem()?;
    snapshots.rename(&partial, &name)?;
    snapshots.sync()?;
    Ok(Snapshot {
        path: dir.join(&name),
        name,
        skipped: copied.skipped,
    })
}

/// Writes the manifest of a snapshot whose `data/` was copied by other
/// means (the shell fallback of a package upgrading a version that predates
/// ferry): from now on it is checked like any other.
pub fn adopt(path: &Path, label: &Label) -> Result<()> {
    let snapshot = Dir::open_trusted(path)?;
    let data = snapshot
        .open_dir(DATA)
        .with_context(|| format!("{} has no {DATA}/ directory", path.display()))?;
    let root = attrs_of(&data.fstat()?);
    let entries = scan(&data, Checksum::CURRENT)?;
    let manifest = Manifest::new(label, now_unix(), String::new(), root, entries);
    write_manifest(&snapshot, &manifest)
}

/// Reads a snapshot's manifest and checks every file against it. The error
/// lists what is damaged.
pub fn verify(path: &Path) -> Result<Manifest> {
    let manifest = read_manifest(path)?;
    let damaged = || format!("snapshot {} is damaged", path.display());
    let data = Dir::open_trusted(path)
        .and_then(|s| s.open_dir(DATA))
        .with_context(damaged)?;
    let found = scan(&data, manifest.checksum).with_context(damaged)?;
    let problems = differences(&manifest.entries, &found);
    if !problems.is_empty() {
        bail!("{}: {}", damaged(), problems.join("; "));
    }
    Ok(manifest)
}

/// What differs between the manifest and the data found, at most 5 items.
fn differences(expected: &[Entry], found: &[Entry]) -> Vec<String> {
    let mut problems = Vec::new();
    for e in expected {
        match found.iter().find(|f| f.path() == e.path()) {
            None => problems.push(format!("{} is missing", e.path())),
            Some(f) if !same_content(e, f) => problems.push(format!("{} was changed", e.path())),
            Some(_) => {}
        }
    }
    for f in found {
        if !expected.iter().any(|e| e.path() == f.path()) {
            problems.push(format!("{} is not in the manifest", f.path()));
        }
    }
    problems.truncate(5);
    problems
}

/// Content, not metadata: a snapshot whose file modes were touched is still
/// restorable, since the manifest puts the recorded modes back.
fn same_content(a: &Entry, b: &Entry) -> bool {
    match (a, b) {
        (
            Entry::File {
                size: s1,
                digest: h1,
                ..
            },
            Entry::File {
                size: s2,
                digest: h2,
                ..
            },
        ) => s1 == s2 && h1 == h2,
        (Entry::Dir { .. }, Entry::Dir { .. }) => true,
        (Entry::Symlink { target: t1, .. }, Entry::Symlink { target: t2, .. }) => t1 == t2,
        _ => false,
    }
}

/// Puts a verified snapshot back as `target`: the copy is made beside it and
/// swapped in with renames, so `target` is either the old or the restored
/// tree, never a mix. Refuses a damaged snapshot and changes nothing then.
/// `target`'s name is root's (its parent directory is); what is under it
/// is not trusted, and is moved aside whole, never entered.
pub fn restore(path: &Path, target: &Path) -> Result<Manifest> {
    let manifest = verify(path).context("refusing to restore it; the state was not touched")?;
    let (parent_path, base) = confined::split(target)?;
    let parent = Dir::open_trusted(parent_path)?;
    let incoming = format!(".{base}.ferry-restore");
    let outgoing = format!(".{base}.ferry-replaced");
    parent.remove_tree(&incoming)?;
    parent.remove_tree(&outgoing)?;
    let data = Dir::open_trusted(path)?.open_dir(DATA)?;
    let tree = data.walk(&[])?;
    let copied = copy::copy_tree(
        &data,
        &tree,
        &parent,
        &incoming,
        manifest.checksum,
        None,
        None,
    )
    .with_context(|| {
        format!(
            "copying {} to {}",
            path.display(),
            parent.show(&incoming).display()
        )
    })?;
    let problems = differences(&manifest.entries, &copied.entries);
    if !problems.is_empty() {
        parent.remove_tree(&incoming)?;
        bail!(
            "snapshot {} changed while it was restored: {}; the state was not touched",
            path.display(),
            problems.join("; ")
        );
    }
    let restored = parent.open_dir(&incoming)?;
    let Attrs { uid, gid, mode } = manifest.root;
    restored.set_attrs(uid, gid, mode)?;
    restored.sync_filesystem()?;
    if parent.stat(base)?.is_some() {
        parent.rename(base, &outgoing)?;
    }
    parent.rename(&incoming, base)?;
    parent.sync()?;
    // The state is back; what the agent's software may still write into the
    // replaced tree can keep it from going now: the next restore removes it.
    if let Err(e) = parent.remove_tree(&outgoing) {
        eprintln!(
            "ferry-hook: warning: the replaced state stays in {}: {e:#}",
            parent.show(&outgoing).display()
        );
    }
    Ok(manifest)
}

/// A snapshot as listed: its manifest, or why it cannot be used.
#[derive(Debug)]
pub struct Listed {
    pub snapshot: Snapshot,
    pub verified: Result<Manifest, String>,
}

/// Every complete snapshot under `dir`, oldest first, each verified.
pub fn list(dir: &Path) -> Result<Vec<Listed>> {
    Ok(names(dir)?
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let verified = verify(&path).map_err(|e| format!("{e:#}"));
            Listed {
                snapshot: Snapshot {
                    name,
                    path,
                    skipped: Vec::new(),
                },
                verified,
            }
        })
        .collect())
}

/// Removes all but the newest `keep` snapshots, and any partial ones, except
/// `protect` (the snapshot an unfinished upgrade may still need).
pub fn prune(dir: &Path, keep: usize, protect: Option<&str>) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let Some(snapshots) = Dir::open_trusted_if_present(dir)? else {
        return Ok(removed);
    };
    for name in snapshots.names()? {
        if name.starts_with(PARTIAL) {
            snapshots.remove_tree(&name)?;
        }
    }
    let all = names_in(&snapshots)?;
    let excess = all.len().saturating_sub(keep);
    for name in all.into_iter().take(excess) {
        if Some(name.as_str()) != protect {
            snapshots.remove_tree(&name)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Complete snapshot names, oldest first (names start with the time).
pub fn names(dir: &Path) -> Result<Vec<String>> {
    match Dir::open_trusted_if_present(dir)? {
        Some(snapshots) => names_in(&snapshots),
        None => Ok(Vec::new()),
    }
}

fn names_in(snapshots: &Dir) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for name in snapshots.names()? {
        if !name.starts_with('.') && snapshots.stat(&name)?.is_some_and(|st| is_dir(&st)) {
            names.push(name);
        }
    }
    names.sort_by_key(|n| {
        (
            n.split('-').next().and_then(|t| t.parse::<u64>().ok()),
            n.clone(),
        )
    });
    Ok(names)
}

/// Room kept free beyond the snapshot itself.
const MARGIN: u64 = 16 * 1024 * 1024;

/// Refuses when the filesystem holding `dir` has less room than `source`
/// takes, plus a margin, so a snapshot never fills the disk mid-upgrade.
/// Also refuses, naming it, anything in `source` a snapshot would refuse.
pub fn check_free_space(source: &Path, dir: &Path) -> Result<()> {
    let Some(state) = Dir::open_trusted_if_present(source)? else {
        return Ok(());
    };
    let tree = state
        .walk(&[])
        .with_context(|| format!("cannot snapshot {}", source.display()))?;
    // The snapshot directory may not exist yet: its filesystem is that of
    // its nearest existing ancestor.
    for ancestor in dir.ancestors() {
        if let Some(existing) = Dir::open_trusted_if_present(ancestor)? {
            return check_room(&tree, &existing, source);
        }
    }
    bail!("none of {}'s parent directories exists", dir.display())
}

/// What the copy of `tree` takes on disk: the blocks its files hold, so a
/// sparse file counts for what it holds (it is refused, not expanded).
fn check_room(tree: &[Found], dir: &Dir, source: &Path) -> Result<()> {
    let needed = tree
        .iter()
        .map(|f| u64::try_from(f.stat.st_blocks).unwrap_or(0) * 512)
        .sum::<u64>()
        + MARGIN;
    let available = dir.available_bytes()?;
    if available < needed {
        bail!(
            "not enough free space for a snapshot of {} in {}: {} MiB needed, {} MiB available; free some space and retry",
            source.display(),
            dir.path().display(),
            needed / (1024 * 1024) + 1,
            available / (1024 * 1024)
        );
    }
    Ok(())
}

/// Lists what is under `dir` as entries, hashing every file with `checksum`
/// through one buffer for the whole walk.
fn scan(dir: &Dir, checksum: Checksum) -> Result<Vec<Entry>> {
    let mut buf = vec![0; copy::COPY_BUFFER];
    let mut entries = Vec::new();
    for found in dir.walk(&[])? {
        let Found { rel, stat, kind } = found;
        entries.push(match kind {
            Kind::Dir => Entry::Dir {
                path: rel,
                attrs: attrs_of(&stat),
            },
            Kind::Symlink { target } => Entry::Symlink {
                path: rel,
                target,
                uid: stat.st_uid,
                gid: stat.st_gid,
            },
            Kind::File => {
                let (file, stat) = dir.open_file(&rel, None)?;
                let (size, digest) = copy::hash_into(
                    &mut (&file).take(file_size(&stat)),
                    checksum,
                    &mut buf,
                    &mut std::io::sink(),
                )
                .with_context(|| format!("reading {:?}", dir.show(&rel)))?;
                Entry::File {
                    path: rel,
                    attrs: attrs_of(&stat),
                    size,
                    digest,
                    mtime: stat.st_mtime,
                }
            }
            Kind::Socket => continue,
        });
    }
    Ok(entries)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    text
}

fn attrs_of(st: &Stat) -> Attrs {
    Attrs {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
    }
}

fn is_dir(st: &Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
}

fn file_size(st: &Stat) -> u64 {
    u64::try_from(st.st_size).unwrap_or(0)
}

fn write_manifest(snapshot: &Dir, manifest: &Manifest) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(manifest)?;
    text.push(b'\n');
    snapshot.replace_file(MANIFEST, &text, 0o600)
}

fn read_manifest(snapshot: &Path) -> Result<Manifest> {
    let damaged = |why: &str| format!("snapshot {} is damaged: {why}", snapshot.display());
    let text = confined::read_trusted(&snapshot.join(MANIFEST))
        .with_context(|| damaged(&format!("cannot read its manifest {MANIFEST}")))?
        .with_context(|| damaged(&format!("it has no manifest {MANIFEST}")))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).with_context(|| damaged("its manifest is not valid"))?;
    if manifest.format != FORMAT || manifest.format_version > FORMAT_VERSION {
        bail!(
            "snapshot {} has format {} version {}, this program reads {FORMAT} version {FORMAT_VERSION} or older",
            snapshot.display(),
            manifest.format,
            manifest.format_version
        );
    }
    Ok(manifest)
}

/// `dir`, created if needed, root's alone (0700).
fn private_dir(dir: &Path) -> Result<Dir> {
    let snapshots = Dir::create_trusted(dir, 0o700)?;
    snapshots.set_mode(0o700)?;
    Ok(snapshots)
}

/// Removes the snapshot (or anything) at `path`; fine if it is not there.
pub fn remove_if_present(path: &Path) -> Result<()> {
    let (parent, name) = confined::split(path)?;
    match Dir::open_trusted_if_present(parent)? {
        Some(dir) => dir.remove_tree(name),
        None => Ok(()),
    }
}

/// A name not yet taken under `dir` (two snapshots in one second).
fn free_name(dir: &Dir, wanted: &str) -> Result<String> {
    let mut name = wanted.to_string();
    let mut n = 2;
    while dir.stat(&name)?.is_some() {
        name = format!("{wanted}.{n}");
        n += 1;
    }
    Ok(name)
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::MARKER;
    use std::fs;
    use std::os::unix::fs::symlink;

    pub(super) fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-hook-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(super) fn label() -> Label {
        Label {
            package: "agent".into(),
            version: "1.0.0".into(),
            schema: Some(2),
            reason: "test".into(),
        }
    }

    pub(super) fn sample_state(dir: &Path) {
        fs::create_dir_all(dir.join("work/vm1/app")).unwrap();
        fs::write(dir.join("state.json"), "{\"schema\":2}\n").unwrap();
        fs::write(dir.join("work/vm1/app/out.log"), vec![7u8; 300_000]).unwrap();
        fs::write(dir.join(MARKER), "x").unwrap();
        symlink("state.json", dir.join("link")).unwrap();
    }

    /// A scratch directory, a sample state in it, and a snapshot of that
    /// (without the marker).
    pub(super) fn sample_and_snapshot(name: &str) -> (PathBuf, PathBuf, Snapshot) {
        let base = scratch(name);
        let state = base.join("state");
        sample_state(&state);
        let exclude = [MARKER];
        let snapshot = create(&state, &base.join("snaps"), &label(), &exclude).unwrap();
        (base, state, snapshot)
    }

    #[test]
    fn snapshot_restores_exactly_and_excludes_the_marker() {
        let base = scratch("roundtrip");
        let state = base.join("state");
        sample_state(&state);
        let snap = create(&state, &base.join("snaps"), &label(), &[MARKER]).unwrap();
        assert!(!snap.path.join(DATA).join(MARKER).exists());
        fs::write(state.join("state.json"), "changed").unwrap();
        fs::remove_dir_all(state.join("work")).unwrap();
        let m = restore(&snap.path, &state).unwrap();
        assert_eq!(m.schema, Some(2));
        assert_eq!(
            fs::read_to_string(state.join("state.json")).unwrap(),
            "{\"schema\":2}\n"
        );
        assert_eq!(
            fs::read(state.join("work/vm1/app/out.log")).unwrap().len(),
            300_000
        );
        assert_eq!(
            fs::read_link(state.join("link")).unwrap(),
            Path::new("state.json")
        );
        let recorded = m.entries.iter().find_map(|e| match e {
            Entry::File { path, digest, .. } if path == "state.json" => Some(digest.clone()),
            _ => None,
        });
        let blake3 = blake3::hash(b"{\"schema\":2}\n").to_hex().to_string();
        assert_eq!((m.checksum, recorded), (Checksum::Blake3, Some(blake3)));
        fs::remove_dir_all(&base).unwrap();
    }

    /// Rewrites the manifest of `snapshot` as format 1 wrote it: SHA-256
    /// digests in a field named `sha256`, no `checksum` field.
    pub(super) fn as_format_1(snapshot: &Path) {
        let mut manifest = read_manifest(snapshot).unwrap();
        let data = Dir::open_trusted(&snapshot.join(DATA)).unwrap();
        manifest.entries = scan(&data, Checksum::Sha256).unwrap();
        let mut json = serde_json::to_value(&manifest).unwrap();
        json["format_version"] = 1.into();
        json.as_object_mut().unwrap().remove("checksum");
        for entry in json["entries"].as_array_mut().unwrap() {
            let entry = entry.as_object_mut().unwrap();
            if let Some(digest) = entry.remove("digest") {
                entry.insert("sha256".into(), digest);
            }
        }
        fs::write(snapshot.join(MANIFEST), json.to_string()).unwrap();
    }

    #[test]
    fn format_1_snapshots_are_verified_and_restored() {
        let (base, state, snap) = sample_and_snapshot("format-1");
        as_format_1(&snap.path);
        assert_eq!(verify(&snap.path).unwrap().checksum, Checksum::Sha256);
        fs::write(state.join("state.json"), "changed").unwrap();
        restore(&snap.path, &state).unwrap();
        assert_eq!(
            fs::read_to_string(state.join("state.json")).unwrap(),
            "{\"schema\":2}\n"
        );
        fs::write(snap.path.join(DATA).join("state.json"), "{\"schema\":3}\n").unwrap();
        let err = format!("{:#}", verify(&snap.path).unwrap_err());
        assert!(err.contains("state.json was changed"), "{err}");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn damaged_snapshot_is_refused_and_state_untouched() {
        let (base, state, snap) = sample_and_snapshot("damaged");
        fs::write(snap.path.join(DATA).join("state.json"), "{\"schema\":3}\n").unwrap();
        fs::write(state.join("state.json"), "current").unwrap();
        let err = format!("{:#}", restore(&snap.path, &state).unwrap_err());
        assert!(
            err.contains("damaged") && err.contains("state.json was changed"),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(state.join("state.json")).unwrap(),
            "current"
        );
        let listed = list(&base.join("snaps")).unwrap();
        assert!(listed[0].verified.is_err());
        fs::remove_dir_all(&base).unwrap();
    }

    /// Every entry under `dir` with its kind, mode, owner, time and
    /// content (a symlink's target), by relative path.
    fn listing(dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let path = e.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let content = if meta.is_dir() {
                    stack.push(path.clone());
                    String::new()
                } else if meta.file_type().is_symlink() {
                    fs::read_link(&path).unwrap().display().to_string()
                } else {
                    blake3::hash(&fs::read(&path).unwrap()).to_hex().to_string()
                };
                use std::os::unix::fs::MetadataExt;
                let mtime = if meta.is_dir() { 0 } else { meta.mtime() };
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                let what = format!(
                    "{:o} {}:{} {mtime} {content}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid()
                );
                out.push((rel, what));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn round_trip_keeps_modes_owners_times_and_contents() {
        let base = scratch("exact");
        let state = base.join("state");
        sample_state(&state);
        fs::remove_file(state.join(MARKER)).unwrap();
        let odd = state.join("work/vm1/app/out.log");
        std::os::unix::fs::chown(&odd, Some(65534), Some(65534)).unwrap();
        fs::set_permissions(&odd, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        fs::set_permissions(
            state.join("work/vm1"),
            std::os::unix::fs::PermissionsExt::from_mode(0o710),
        )
        .unwrap();
        std::os::unix::fs::lchown(state.join("link"), Some(65534), Some(65534)).unwrap();
        let before = listing(&state);
        let snap = create(&state, &base.join("snaps"), &label(), &[]).unwrap();
        fs::remove_dir_all(&state).unwrap();
        fs::create_dir(&state).unwrap();
        restore(&snap.path, &state).unwrap();
        assert_eq!(listing(&state), before);
        fs::remove_dir_all(&base).unwrap();
    }

    /// A FIFO, a sparse file and a hard link to someone else's file make a
    /// snapshot refuse, naming them, at once; the state is not changed.
    #[test]
    fn hostile_objects_are_refused_by_name() {
        let base = scratch("hostile");
        let state = base.join("state");
        type Plant<'a> = &'a dyn Fn(&Path);
        let cases: [(&str, Plant); 3] = [
            ("a FIFO", &|p| {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            }),
            ("a sparse file", &|p| {
                fs::File::create(p).unwrap().set_len(100 << 30).unwrap();
            }),
            ("a hard link to a file owned by uid 0", &|p| {
                fs::hard_link(base.join("root-only"), p).unwrap();
            }),
        ];
        fs::write(base.join("root-only"), "secret").unwrap();
        for (what, plant) in cases {
            let _ = fs::remove_dir_all(&state);
            sample_state(&state);
            // The state's owner is the agent's user, here nobody.
            std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
            let planted = state.join("work/vm1/planted");
            plant(&planted);
            let started = std::time::Instant::now();
            let err = format!(
                "{:#}",
                create(&state, &base.join("snaps"), &label(), &[MARKER]).unwrap_err()
            );
            assert!(
                err.contains(&format!("{planted:?}"))
                    && err.contains(what.split(' ').nth(1).unwrap()),
                "{what}: {err}"
            );
            assert!(
                started.elapsed().as_secs() < 5,
                "{what} took {:?}",
                started.elapsed()
            );
            assert!(names(&base.join("snaps")).unwrap().is_empty());
        }
        fs::remove_dir_all(&base).unwrap();
    }

    /// Symlinks are copied as symlinks; a directory swapped for a symlink
    /// to somewhere else while snapshots are taken is never entered: each
    /// snapshot is refused naming it, or holds the link itself.
    #[test]
    fn symlinks_are_copied_never_followed_even_in_a_race() {
        let base = scratch("links");
        let (state, outside) = (base.join("state"), base.join("outside"));
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("canary"), "CANARY-CONTENT").unwrap();
        sample_state(&state);
        symlink(outside.join("canary"), state.join("state.json.tmp")).unwrap();
        let snap = create(&state, &base.join("snaps"), &label(), &[MARKER]).unwrap();
        let copied = snap.path.join(DATA).join("state.json.tmp");
        assert_eq!(fs::read_link(&copied).unwrap(), outside.join("canary"));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let swapped = state.join("work/vm1/app");
        std::thread::scope(|s| {
            s.spawn(|| {
                let aside = state.join("work/vm1/aside");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    fs::rename(&swapped, &aside).unwrap();
                    symlink(&outside, &swapped).unwrap();
                    fs::remove_file(&swapped).unwrap();
                    fs::rename(&aside, &swapped).unwrap();
                }
            });
            for _ in 0..50 {
                match create(&state, &base.join("snaps"), &label(), &[MARKER]) {
                    Ok(snap) => remove_if_present(&snap.path).unwrap(),
                    Err(e) => {
                        let err = format!("{e:#}");
                        assert!(err.contains("work/vm1"), "{err}");
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let found = std::process::Command::new("grep")
            .args(["-r", "CANARY-CONTENT"])
            .arg(base.join("snaps"))
            .output()
            .unwrap();
        assert!(
            found.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&found.stdout)
        );
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn prune_keeps_the_newest_and_the_protected() {
        let base = scratch("prune");
        for n in [
            "100-1.0.0",
            "200-1.1.0",
            "300-1.2.0",
            "1000-2.0.0",
            ".partial-5-x",
        ] {
            fs::create_dir_all(base.join(n)).unwrap();
        }
        let removed = prune(&base, 2, Some("100-1.0.0")).unwrap();
        assert_eq!(removed, vec!["200-1.1.0"]);
        assert_eq!(
            names(&base).unwrap(),
            vec!["100-1.0.0", "300-1.2.0", "1000-2.0.0"]
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
