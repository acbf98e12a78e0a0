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
//! Format 2 checksums files with BLAKE3; format 1 used SHA-256 and is still
//! read, verified and restored (see [`Checksum`]).

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{fchown, lchown, symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest;

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
const COPY_BUFFER: usize = 256 * 1024;

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
    let reuse = Reuse::new(earlier, manifest);
    create_reusing(source, dir, &label, exclude, reuse.as_ref())
}

fn create_reusing(
    source: &Path,
    dir: &Path,
    label: &Label,
    exclude: &[&str],
    reuse: Option<&Reuse>,
) -> Result<Snapshot> {
    make_private_dir(dir)?;
    let created_unix = now_unix();
    let name = free_name(dir, &format!("{created_unix}-{}", label.version));
    let partial = dir.join(format!("{PARTIAL}{name}"));
    remove_if_present(&partial)?;
    make_private_dir(&partial)?;
    let root = attrs_of(
        &fs::metadata(source)
            .with_context(|| format!("cannot snapshot {}: cannot read it", source.display()))?,
    );
    let entries = copy_tree(
        source,
        &partial.join(DATA),
        exclude,
        Checksum::CURRENT,
        reuse,
    )
    .with_context(|| format!("copying {} into {}", source.display(), partial.display()))?;
    let source_name = source.display().to_string();
    let manifest = Manifest::new(label, created_unix, source_name, root, entries);
    write_manifest(&partial, &manifest)?;
    seal(&partial, &dir.join(&name))?;
    Ok(Snapshot {
        path: dir.join(&name),
        name,
    })
}

/// Writes the manifest of a snapshot whose `data/` was copied by other
/// means (the shell fallback of a package upgrading a version that predates
/// ferry): from now on it is checked like any other.
pub fn adopt(path: &Path, label: &Label) -> Result<()> {
    let data = path.join(DATA);
    let root = attrs_of(
        &fs::metadata(&data)
            .with_context(|| format!("{} has no {DATA}/ directory", path.display()))?,
    );
    let entries = scan_tree(&data, Checksum::CURRENT)?;
    let manifest = Manifest::new(label, now_unix(), String::new(), root, entries);
    write_manifest(path, &manifest)
}

/// Reads a snapshot's manifest and checks every file against it. The error
/// lists what is damaged.
pub fn verify(path: &Path) -> Result<Manifest> {
    let manifest = read_manifest(path)?;
    let found = scan_tree(&path.join(DATA), manifest.checksum)
        .with_context(|| format!("snapshot {} is damaged", path.display()))?;
    let problems = differences(&manifest.entries, &found);
    if !problems.is_empty() {
        bail!(
            "snapshot {} is damaged: {}",
            path.display(),
            problems.join("; ")
        );
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
pub fn restore(path: &Path, target: &Path) -> Result<Manifest> {
    let manifest = verify(path).context("refusing to restore it; the state was not touched")?;
    let parent = target
        .parent()
        .with_context(|| format!("{} has no parent directory", target.display()))?;
    let base = target
        .file_name()
        .with_context(|| format!("{} has no name", target.display()))?
        .to_string_lossy()
        .into_owned();
    let incoming = parent.join(format!(".{base}.ferry-restore"));
    let outgoing = parent.join(format!(".{base}.ferry-replaced"));
    remove_if_present(&incoming)?;
    remove_if_present(&outgoing)?;
    let copied = copy_tree(&path.join(DATA), &incoming, &[], manifest.checksum, None)
        .with_context(|| format!("copying {} to {}", path.display(), incoming.display()))?;
    let problems = differences(&manifest.entries, &copied);
    if !problems.is_empty() {
        remove_if_present(&incoming)?;
        bail!(
            "snapshot {} changed while it was restored: {}; the state was not touched",
            path.display(),
            problems.join("; ")
        );
    }
    apply_attrs(&incoming, manifest.root)?;
    sync_filesystem(&incoming)?;
    if target.exists() {
        fs::rename(target, &outgoing)
            .with_context(|| format!("moving {} aside", target.display()))?;
    }
    fs::rename(&incoming, target)
        .with_context(|| format!("moving the restored state into {}", target.display()))?;
    sync_dir(parent)?;
    remove_if_present(&outgoing)?;
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
                snapshot: Snapshot { name, path },
                verified,
            }
        })
        .collect())
}

/// Removes all but the newest `keep` snapshots, and any partial ones, except
/// `protect` (the snapshot an unfinished upgrade may still need).
pub fn prune(dir: &Path, keep: usize, protect: Option<&str>) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if !dir.is_dir() {
        return Ok(removed);
    }
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(PARTIAL) {
            remove_if_present(&dir.join(&name))?;
        }
    }
    let all = names(dir)?;
    let excess = all.len().saturating_sub(keep);
    for name in all.into_iter().take(excess) {
        if Some(name.as_str()) != protect {
            remove_if_present(&dir.join(&name))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Complete snapshot names, oldest first (names start with the time).
pub fn names(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.file_type()?.is_dir() {
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

/// Refuses when the filesystem holding `dir` has less room than `source`
/// takes, plus a margin, so a snapshot never fills the disk mid-upgrade.
pub fn check_free_space(source: &Path, dir: &Path) -> Result<()> {
    let needed = tree_size(source)? + 16 * 1024 * 1024;
    // The snapshot directory may not exist yet: its filesystem is that of
    // its nearest existing ancestor.
    let existing = dir
        .ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/"));
    let available = available_bytes(existing)?;
    if available < needed {
        bail!(
            "not enough free space for a snapshot of {} in {}: {} MiB needed, {} MiB available; free some space and retry",
            source.display(),
            dir.display(),
            needed / (1024 * 1024) + 1,
            available / (1024 * 1024)
        );
    }
    Ok(())
}

fn tree_size(path: &Path) -> Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        total += tree_size(&entry?.path())?;
    }
    Ok(total)
}

fn available_bytes(dir: &Path) -> Result<u64> {
    let c = cstring(dir)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable struct.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Copies `src` to `dst` recursively, hashing files as they are copied with
/// `checksum` (or linking those `reuse` holds unchanged; its checksums are of
/// the same kind), and records what it copied, by paths relative to `src`, in
/// the order of a sorted walk (a directory after what it holds).
///
/// In two passes: the walk creates the directories and symlinks and lists
/// the files, which [`copy_files`] then copies on a few threads (copying and
/// hashing are the work); the directories get their modes last, so that a
/// read-only one is filled first.
fn copy_tree(
    src: &Path,
    dst: &Path,
    exclude: &[&str],
    checksum: Checksum,
    reuse: Option<&Reuse>,
) -> Result<Vec<Entry>> {
    let mut walk = Walk::default();
    walk_tree(src, dst, "", exclude, &mut walk)?;
    for (slot, entry) in copy_files(dst, &walk.files, checksum, reuse)? {
        walk.entries[slot] = Some(entry);
    }
    for (dir, attrs) in &walk.dirs {
        apply_attrs(dir, *attrs)?;
    }
    Ok(walk
        .entries
        .into_iter()
        .map(|e| e.expect("every file was copied or linked"))
        .collect())
}

/// What the walk of [`copy_tree`] found and made.
#[derive(Default)]
struct Walk {
    /// The entries in manifest order, a file's empty until it is copied.
    entries: Vec<Option<Entry>>,
    files: Vec<FileCopy>,
    /// The directories created, each after those it holds, and the
    /// attributes they get once filled.
    dirs: Vec<(PathBuf, Attrs)>,
}

/// A file to copy from `from` to `to`; its entry goes to `slot`.
struct FileCopy {
    from: PathBuf,
    to: PathBuf,
    rel: String,
    slot: usize,
}

/// The first pass of [`copy_tree`].
fn walk_tree(src: &Path, dst: &Path, rel: &str, exclude: &[&str], walk: &mut Walk) -> Result<()> {
    fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut children: Vec<_> = fs::read_dir(src)
        .with_context(|| format!("reading {}", src.display()))?
        .collect::<std::io::Result<_>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let name = child.file_name();
        let name_str = name
            .to_str()
            .with_context(|| format!("{} is not UTF-8", child.path().display()))?;
        if rel.is_empty() && exclude.contains(&name_str) {
            continue;
        }
        let child_rel = join_rel(rel, name_str);
        let from = child.path();
        let to = dst.join(&name);
        // The type comes with the listing; a file is not stat'ed here: its
        // copying thread reads its attributes from the file it opened.
        let ft = child.file_type()?;
        if ft.is_dir() {
            // DirEntry::metadata does not follow symlinks.
            let attrs = attrs_of(&child.metadata()?);
            walk_tree(&from, &to, &child_rel, &[], walk)?;
            walk.entries.push(Some(Entry::Dir {
                path: child_rel,
                attrs,
            }));
            walk.dirs.push((to, attrs));
        } else if ft.is_symlink() {
            let meta = child.metadata()?;
            let target = fs::read_link(&from)?;
            symlink(&target, &to).with_context(|| format!("creating {}", to.display()))?;
            lchown(&to, Some(meta.uid()), Some(meta.gid()))?;
            walk.entries.push(Some(Entry::Symlink {
                path: child_rel,
                target: target.to_string_lossy().into_owned(),
                uid: meta.uid(),
                gid: meta.gid(),
            }));
        } else if ft.is_file() {
            walk.files.push(FileCopy {
                from,
                to,
                rel: child_rel,
                slot: walk.entries.len(),
            });
            walk.entries.push(None);
        }
        // Sockets and fifos are runtime objects, not state: not copied.
    }
    Ok(())
}

/// At most this many threads copy files. On the 2-core VMs measured (see
/// docs/BENCHMARKS.md) one per core was best, a third did not help.
const MAX_COPY_THREADS: usize = 4;

/// Copies `files` (into the filesystem of `dst`) on a thread per core,
/// each taking the next file not yet taken, so big and small files spread
/// evenly; returns each file's slot and entry. Meanwhile this thread starts
/// the writeback of the small files copied so far, a batch at a time.
/// Stops at the first error.
fn copy_files(
    dst: &Path,
    files: &[FileCopy],
    checksum: Checksum,
    reuse: Option<&Reuse>,
) -> Result<Vec<(usize, Entry)>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_COPY_THREADS)
        .min(files.len());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let unflushed = AtomicU64::new(0);
    let copy = || -> Result<Vec<(usize, Entry)>> {
        let mut buf = vec![0; COPY_BUFFER];
        let mut copied = Vec::new();
        while let Some(file) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            match copy_file(file, checksum, reuse, &mut buf, &unflushed) {
                Ok(entry) => copied.push((file.slot, entry)),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(copied)
    };
    let this = std::thread::current();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let copied = copy();
                    this.unpark();
                    copied
                })
            })
            .collect();
        let mut flushed = 0;
        let mut flush_failed = None;
        while !threads.iter().all(|t| t.is_finished()) {
            std::thread::park_timeout(Duration::from_millis(1));
            let small = unflushed.load(Ordering::Relaxed);
            if small - flushed >= FLUSH_BATCH && flush_failed.is_none() {
                flushed = small;
                // Its error must be reported here: a later syncfs (on a
                // file opened later) does not report it again.
                if let Err(e) = sync_filesystem(dst) {
                    failed.store(true, Ordering::Relaxed);
                    flush_failed = Some(e);
                }
            }
        }
        let mut copied = Vec::with_capacity(files.len());
        for thread in threads {
            copied.extend(thread.join().expect("a copying thread panicked")?);
        }
        flush_failed.map_or(Ok(copied), Err)
    })
}

/// Lists what is under `dir` as entries, hashing every file with `checksum`
/// through one buffer for the whole walk.
fn scan_tree(dir: &Path, checksum: Checksum) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    scan_into(dir, "", checksum, &mut vec![0; COPY_BUFFER], &mut entries)?;
    Ok(entries)
}

/// [`scan_tree`] of `dir`, whose entries are named under `rel`.
fn scan_into(
    dir: &Path,
    rel: &str,
    checksum: Checksum,
    buf: &mut [u8],
    entries: &mut Vec<Entry>,
) -> Result<()> {
    for child in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let child = child?;
        let name = child.file_name();
        let name = name
            .to_str()
            .with_context(|| format!("{} is not UTF-8", child.path().display()))?;
        let child_rel = join_rel(rel, name);
        let meta = fs::symlink_metadata(child.path())?;
        let ft = meta.file_type();
        if ft.is_dir() {
            scan_into(&child.path(), &child_rel, checksum, buf, entries)?;
            entries.push(Entry::Dir {
                path: child_rel,
                attrs: attrs_of(&meta),
            });
        } else if ft.is_symlink() {
            entries.push(Entry::Symlink {
                path: child_rel,
                target: fs::read_link(child.path())?.to_string_lossy().into_owned(),
                uid: meta.uid(),
                gid: meta.gid(),
            });
        } else if ft.is_file() {
            let (size, digest) = hash_file(&child.path(), checksum, buf)?;
            entries.push(Entry::File {
                path: child_rel,
                attrs: attrs_of(&meta),
                size,
                digest,
                mtime: meta.mtime(),
            });
        }
    }
    Ok(())
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Copies one file, hashing it as it is read (once), and gives the copy the
/// original's owner, mode and modification time; or links the earlier
/// snapshot's copy when `reuse` holds the file unchanged.
fn copy_file(
    file: &FileCopy,
    checksum: Checksum,
    reuse: Option<&Reuse>,
    buf: &mut [u8],
    unflushed: &AtomicU64,
) -> Result<Entry> {
    let (from, to) = (&file.from, &file.to);
    // Not following a symlink that replaced the file since the walk.
    let mut input = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
        .with_context(|| format!("opening {}", from.display()))?;
    let meta = input
        .metadata()
        .with_context(|| format!("reading {}", from.display()))?;
    if let Some(linked) = reuse.and_then(|r| r.link(&file.rel, &meta, to)) {
        // The earlier copy already has these attributes and time.
        return Ok(linked);
    }
    let attrs = attrs_of(&meta);
    // With its mode less the set-id bits (which must follow the owner) and
    // what the umask takes: most often right already.
    let mut output = File::options()
        .write(true)
        .create_new(true)
        .mode(attrs.mode & 0o777)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    let (size, digest) = hash_into(&mut input, checksum, buf, &mut output)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    if size >= EARLY_WRITEBACK {
        start_writeback(&output).with_context(|| format!("writing {}", to.display()))?;
    } else {
        unflushed.fetch_add(size, Ordering::Relaxed);
    }
    // Owner and mode set on the open file (no path lookups), and only when
    // not right already: two syscalls fewer for most files. The owner
    // first, as chown clears the set-id bits.
    let made = output
        .metadata()
        .with_context(|| format!("reading {}", to.display()))?;
    if (made.uid(), made.gid()) != (attrs.uid, attrs.gid) {
        fchown(&output, Some(attrs.uid), Some(attrs.gid))
            .with_context(|| format!("chown {}", to.display()))?;
    }
    if made.mode() & 0o7777 != attrs.mode {
        output
            .set_permissions(fs::Permissions::from_mode(attrs.mode))
            .with_context(|| format!("chmod {}", to.display()))?;
    }
    set_mtime(&output, meta.mtime(), meta.mtime_nsec())
        .with_context(|| format!("setting the time of {}", to.display()))?;
    Ok(Entry::File {
        path: file.rel.clone(),
        attrs,
        size,
        digest,
        mtime: meta.mtime(),
    })
}

/// Files of at least this size start their writeback as soon as they are
/// copied. Smaller ones are written in batches, by a syncfs once
/// [`FLUSH_BATCH`] bytes of them were copied: a disk request each (one
/// `sync_file_range` each) was measured slower, the batches faster than
/// leaving them all to the final syncfs.
const EARLY_WRITEBACK: u64 = 64 * 1024;
/// The small files are flushed each time this many bytes of them were
/// copied, by the thread that waits for the copying ones: a syncfs flushes
/// the whole filesystem (other programs' writes too) and waits for it.
const FLUSH_BATCH: u64 = 8 * 1024 * 1024;

/// Starts writing `file` to disk without waiting for it: the disk works
/// while the next files are copied, and the final syncfs (which alone makes
/// the snapshot durable) finds little left to write.
fn start_writeback(file: &File) -> Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: a valid open file descriptor; no memory is passed.
    if unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) } != 0 {
        let e = std::io::Error::last_os_error();
        // A failure to write the data fails the snapshot; any other error
        // means the call is not available here (a seccomp filter, an odd
        // filesystem), and the final syncfs writes the file all the same.
        if matches!(
            e.raw_os_error(),
            Some(libc::EIO | libc::ENOSPC | libc::EDQUOT)
        ) {
            return Err(e.into());
        }
    }
    Ok(())
}

/// The size and checksum of one file, read through `buf`.
fn hash_file(path: &Path, checksum: Checksum, buf: &mut [u8]) -> Result<(u64, String)> {
    let mut input = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    hash_into(&mut input, checksum, buf, &mut std::io::sink())
        .with_context(|| format!("reading {}", path.display()))
}

/// Reads `input` to its end once, through `buf`, hashing every byte and
/// writing it to `output`; returns the size and checksum.
fn hash_into(
    input: &mut File,
    checksum: Checksum,
    buf: &mut [u8],
    output: &mut dyn Write,
) -> std::io::Result<(u64, String)> {
    let mut hasher = checksum.hasher();
    let mut size = 0u64;
    loop {
        let n = input.read(buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, hasher.finish()))
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

fn attrs_of(meta: &fs::Metadata) -> Attrs {
    Attrs {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    }
}

fn apply_attrs(path: &Path, attrs: Attrs) -> Result<()> {
    lchown(path, Some(attrs.uid), Some(attrs.gid))
        .with_context(|| format!("chown {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(attrs.mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn set_mtime(file: &File, secs: i64, nsecs: i64) -> std::io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsecs,
        },
    ];
    // SAFETY: a valid open file descriptor and two initialized timespecs.
    if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn write_manifest(snapshot: &Path, manifest: &Manifest) -> Result<()> {
    let path = snapshot.join(MANIFEST);
    let mut text = serde_json::to_vec_pretty(manifest)?;
    text.push(b'\n');
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn read_manifest(snapshot: &Path) -> Result<Manifest> {
    let path = snapshot.join(MANIFEST);
    let text = fs::read(&path).with_context(|| {
        format!(
            "snapshot {} is damaged: cannot read its manifest {MANIFEST}",
            snapshot.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(&text).with_context(|| {
        format!(
            "snapshot {} is damaged: its manifest is not valid",
            snapshot.display()
        )
    })?;
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

/// Flushes the snapshot (one syncfs for the whole tree, as cheap as it gets)
/// and renames it to its final name.
fn seal(partial: &Path, done: &Path) -> Result<()> {
    sync_filesystem(partial)?;
    fs::rename(partial, done)
        .with_context(|| format!("renaming {} to {}", partial.display(), done.display()))?;
    sync_dir(done.parent().unwrap_or(Path::new("/")))
}

fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid open file descriptor.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("syncfs {}", path.display()));
    }
    Ok(())
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", path.display()))
}

fn make_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))
}

pub fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// A name not yet taken under `dir` (two snapshots in one second).
fn free_name(dir: &Path, wanted: &str) -> String {
    let mut name = wanted.to_string();
    let mut n = 2;
    while dir.join(&name).exists() {
        name = format!("{wanted}.{n}");
        n += 1;
    }
    name
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
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
        manifest.entries = scan_tree(&snapshot.join(DATA), Checksum::Sha256).unwrap();
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
