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

use crate::confined::{self, Dir, Found, Kind};

mod copy;
mod manifest;
mod reuse;
#[cfg(test)]
mod tests;

pub use manifest::{Attrs, Checksum, Entry, Label, Manifest};
use manifest::{FORMAT, FORMAT_VERSION};
use reuse::Reuse;

/// The manifest's file name inside a snapshot.
pub const MANIFEST: &str = "ferry-snapshot.json";
/// The copy of the state directory inside a snapshot.
pub const DATA: &str = "data";
/// Prefix of snapshots being written (or left behind by a crash).
pub const PARTIAL: &str = ".partial-";

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
    create_reusing(source, dir, label, exclude, None, None)
}

/// A new snapshot of `source` beside `earlier`, with its label but `reason`:
/// files unchanged since `earlier` was taken are hard links to its copies
/// (see `reuse`), the rest is copied. `earlier` is left as it is.
pub fn retake(earlier: &Path, source: &Path, reason: &str, exclude: &[&str]) -> Result<Snapshot> {
    let (manifest, label, dir) = retake_of(earlier, reason)?;
    let reuse = Reuse::new(earlier, manifest)?;
    create_reusing(source, dir, &label, exclude, reuse.as_ref(), None)
}

/// What a retake of `earlier` starts from: its manifest, the label of the
/// new snapshot (the earlier one's, with `reason`), and the directory both
/// are in.
fn retake_of<'a>(earlier: &'a Path, reason: &str) -> Result<(Manifest, Label, &'a Path)> {
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
    Ok((manifest, label, dir))
}

/// A retake in which the top-level entries `moved` of the state are not
/// read again: they are moved, as they are, out of `earlier` into the new
/// snapshot, one rename each, with their manifest entries. For the data of
/// the software an agent deployed, which runs on through an upgrade
/// (`[state] live`): `earlier` must be the upgrade's own snapshot, taken
/// moments before and named in no record, since it is left without them
/// (the caller removes it). A name `earlier` does not hold is read from
/// `source` as usual.
pub fn retake_moving(
    earlier: &Path,
    source: &Path,
    reason: &str,
    exclude: &[&str],
    moved: &[&str],
) -> Result<Snapshot> {
    let (manifest, label, dir) = retake_of(earlier, reason)?;
    let from = Dir::open_trusted(earlier)?.open_dir(DATA)?;
    let mut present = Vec::new();
    for name in moved {
        if from.stat(name)?.is_some() {
            present.push(*name);
        }
    }
    let entries: Vec<Entry> = manifest
        .entries
        .iter()
        .filter(|e| present.iter().any(|n| under_name(e.path(), n)))
        .cloned()
        .collect();
    let taken = Taken {
        from: &from,
        names: &present,
        entries,
    };
    let reuse = Reuse::new(earlier, manifest)?;
    let excluded: Vec<&str> = exclude.iter().chain(&present).copied().collect();
    create_reusing(source, dir, &label, &excluded, reuse.as_ref(), Some(taken))
}

/// Whether `path` is `name` or beneath it.
fn under_name(path: &str, name: &str) -> bool {
    path.strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Top-level entries moved from an earlier snapshot (`retake_moving`).
struct Taken<'a> {
    from: &'a Dir,
    names: &'a [&'a str],
    entries: Vec<Entry>,
}

fn create_reusing(
    source: &Path,
    dir: &Path,
    label: &Label,
    exclude: &[&str],
    reuse: Option<&Reuse>,
    taken: Option<Taken>,
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
    let mut entries = copied.entries;
    if let Some(t) = taken {
        let data = part.open_dir(DATA)?;
        for name in t.names {
            t.from.rename_into(name, &data, name)?;
        }
        entries.extend(t.entries);
    }
    let source_name = source.display().to_string();
    let manifest = Manifest::new(label, created_unix, source_name, root, entries);
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

/// One line per snapshot, oldest first: name, version, schema, how many
/// entries, and whether it verifies. What `ferry-hook snapshot list` and
/// `ferry state list` print.
pub fn listing(dir: &Path) -> Result<String> {
    let mut text = String::new();
    for listed in list(dir)? {
        text.push_str(&match &listed.verified {
            Ok(m) => format!(
                "{}\tversion {}\tschema {}\t{} entries\tok\n",
                listed.snapshot.name,
                m.version,
                m.schema.map_or("?".into(), |s| s.to_string()),
                m.entries.len()
            ),
            Err(e) => format!("{}\tDAMAGED: {e}\n", listed.snapshot.name),
        });
    }
    Ok(text)
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
