//! File operations that never let a less trusted user steer root
//! (docs/SECURITY.md): the only module of this crate that touches the
//! filesystem (clippy's `disallowed-methods` keeps it so).
//!
//! The hook runs as root in directories the agent's user owns and can
//! change at any moment. Everything under such a directory is reached from
//! a directory file descriptor, one [`Dir`], with `openat2(2)`'s
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV` (or, on kernels older than 5.6, one `openat(2)` per
//! component with `O_NOFOLLOW` and a device check): no symlink is followed,
//! no mount point crossed, nothing outside the directory reached. Files are
//! opened with `O_NONBLOCK` and checked with `fstat` before use, so a FIFO
//! never blocks and a device is never read; names are replaced with
//! `renameat` and created with `O_EXCL`, so nothing is truncated or written
//! through a link.
//!
//! Paths that root alone controls (`/usr/lib/<name>`, `/var/lib/ferry`,
//! `/etc/<name>`, and the state directory's own name in `/var/lib`) are
//! opened as given: the links in them are root's own.

// The one module allowed to name paths (hook/clippy.toml); only the
// `_trusted` functions do, for paths root alone controls.
#![allow(clippy::disallowed_methods)]

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

mod walk;
pub use walk::{Found, Kind};

#[cfg(test)]
mod tests;
use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, SeekFrom, Stat, StatxAttributes, StatxFlags,
};
use rustix::io::Errno;

/// The flags every open here adds: close on exec, and no controlling
/// terminal from a planted tty.
const BASE: OFlags = OFlags::CLOEXEC.union(OFlags::NOCTTY);

/// Set once openat2 is known to be missing (or forced off by a test).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// How deep a tree the walks follow: far deeper than any agent's state, and
/// shallow enough that the descriptors held on the way stay few.
pub const MAX_DEPTH: usize = 256;

/// A directory, held open; every path given to its methods is relative to
/// it and resolved beneath it without following links.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// Where it is, for messages only: never opened again by this name.
    path: PathBuf,
}

impl Dir {
    /// Opens `path`, a directory whose name root alone controls.
    pub fn open_trusted(path: &Path) -> Result<Dir> {
        let fd = rustix::fs::open(
            path,
            BASE | OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .with_context(|| format!("opening the directory {}", path.display()))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens `path` if it is a directory; None if it does not exist.
    pub fn open_trusted_if_present(path: &Path) -> Result<Option<Dir>> {
        match rustix::fs::open(
            path,
            BASE | OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(Dir {
                fd,
                path: path.to_path_buf(),
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(std::io::Error::from(e))
                .with_context(|| format!("opening the directory {}", path.display())),
        }
    }

    /// Creates `path` and its missing parents (all root's: 0700 for ferry's
    /// own directories, 0755 for a log directory the package hands over
    /// later), then opens it.
    pub fn create_trusted(path: &Path, mode: u32) -> Result<Dir> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if Dir::open_trusted_if_present(parent)?.is_none() {
                Dir::create_trusted(parent, 0o755)?;
            }
        }
        match rustix::fs::mkdir(path, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("creating {}", path.display()))
            }
        }
        Dir::open_trusted(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `fstat` says of this directory.
    pub fn fstat(&self) -> Result<Stat> {
        rustix::fs::fstat(&self.fd)
            .map_err(std::io::Error::from)
            .with_context(|| format!("reading {}", self.path.display()))
    }

    /// Sets this directory's mode, its owner unchanged.
    pub fn set_mode(&self, mode: u32) -> Result<()> {
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode))
            .map_err(std::io::Error::from)
            .with_context(|| format!("chmod {mode:o} {}", self.path.display()))
    }

    /// The full path of `rel`, for messages (`{:?}`-quoted by callers where
    /// a name may hold a newline).
    pub fn show(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens `rel` beneath this directory, following no link and crossing
    /// no mount point on the way.
    fn resolve(&self, rel: &str, flags: OFlags, mode: u32) -> std::io::Result<OwnedFd> {
        let flags = flags | BASE | OFlags::NOFOLLOW;
        let mode = Mode::from_raw_mode(mode);
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how = ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV;
            match rustix::fs::openat2(&self.fd, rel, flags, mode, how) {
                // Older kernels, and seccomp filters that do not know it.
                Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // Some filesystems refuse RESOLVE_NO_XDEV-less lookups
                // through no fault of the path: retry the slow way.
                Err(Errno::AGAIN) => {}
                other => return other.map_err(Into::into),
            }
        }
        self.resolve_by_components(rel, flags, mode)
    }

    /// [`Dir::resolve`] without openat2: one `openat(O_NOFOLLOW)` per
    /// component, each checked not to be a mount point (its device, and
    /// `STATX_ATTR_MOUNT_ROOT` where the kernel reports it).
    fn resolve_by_components(
        &self,
        rel: &str,
        flags: OFlags,
        mode: Mode,
    ) -> std::io::Result<OwnedFd> {
        let device = rustix::fs::fstat(&self.fd)?.st_dev;
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        let walk_flags = BASE | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::RDONLY;
        let mut dir: Option<OwnedFd> = None;
        for (n, part) in parts.iter().enumerate() {
            if *part == ".." || *part == "." {
                return Err(Errno::XDEV.into());
            }
            let at = dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd());
            let last = n + 1 == parts.len();
            if mount_root(at, part) {
                return Err(Errno::XDEV.into());
            }
            let fd = if last {
                rustix::fs::openat(at, *part, flags, mode)?
            } else {
                rustix::fs::openat(at, *part, walk_flags, Mode::empty())?
            };
            if rustix::fs::fstat(&fd)?.st_dev != device {
                return Err(Errno::XDEV.into());
            }
            dir = Some(fd);
        }
        dir.ok_or_else(|| Errno::INVAL.into())
    }

    /// An error for `rel` that says what happened in words an admin acts on.
    fn refusal(&self, rel: &str, e: std::io::Error) -> anyhow::Error {
        let shown = self.show(rel);
        let why = match e.raw_os_error() {
            Some(libc::ELOOP) => "it is a symbolic link (or one is on its way), which root does not follow here".to_string(),
            Some(libc::EXDEV) => "it is on another filesystem (a mount point is on its way), which root does not cross here".to_string(),
            Some(libc::ENOTDIR) => "it, or a directory on its way, is not a directory (a symbolic link is not followed here)".to_string(),
            _ => e.to_string(),
        };
        anyhow::Error::new(e).context(format!("refusing {shown:?}: {why}"))
    }

    /// Opens the directory `rel` beneath this one.
    pub fn open_dir(&self, rel: &str) -> Result<Dir> {
        let fd = self
            .resolve(rel, OFlags::DIRECTORY | OFlags::RDONLY, 0)
            .map_err(|e| self.refusal(rel, e))?;
        Ok(Dir {
            fd,
            path: self.show(rel),
        })
    }

    /// Opens the regular file `rel` for reading and returns it with what
    /// `fstat` says of it. Refuses anything else (a FIFO, a device: neither
    /// blocks nor is read), and a hard link to a file its owner-to-be does
    /// not own (`owner`: the uid every linked file must have).
    pub fn open_file(&self, rel: &str, owner: Option<u32>) -> Result<(File, Stat)> {
        let fd = self
            .resolve(rel, OFlags::RDONLY | OFlags::NONBLOCK, 0)
            .map_err(|e| self.refusal(rel, e))?;
        let stat = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            bail!(
                "refusing {:?}: it is {}, not a regular file",
                self.show(rel),
                describe(kind)
            );
        }
        if let Some(uid) = owner.filter(|&uid| stat.st_nlink > 1 && stat.st_uid != uid) {
            bail!(
                "refusing {:?}: it is a hard link to a file owned by uid {}, not by uid {uid}",
                self.show(rel),
                stat.st_uid
            );
        }
        Ok((File::from(fd), stat))
    }

    /// Reads the whole regular file `rel`; None if it does not exist.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let mut file = match self.open_file(rel, None) {
            Ok((file, _)) => file,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading {:?}", self.show(rel)))?;
        Ok(Some(bytes))
    }

    /// What `rel` is, without following a link; None if it does not exist.
    pub fn stat(&self, rel: &str) -> Result<Option<Stat>> {
        let (parent, name) = self.parent_of(rel)?;
        match rustix::fs::statat(&parent.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.refusal(rel, e.into())),
        }
    }

    /// The directory holding `rel`, opened beneath this one, and the last
    /// component's name.
    fn parent_of<'r>(&self, rel: &'r str) -> Result<(std::borrow::Cow<'_, Dir>, &'r str)> {
        match rel.trim_end_matches('/').rsplit_once('/') {
            Some((dir, name)) => Ok((std::borrow::Cow::Owned(self.open_dir(dir)?), name)),
            None => Ok((std::borrow::Cow::Borrowed(self), rel)),
        }
    }

    /// Makes `name` a regular file holding `bytes`, whatever the name was
    /// (a symlink, a FIFO, a file): a new file is created beside it with
    /// `O_EXCL` and renamed over it, so nothing is followed or truncated.
    pub fn replace_file(&self, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let (tmp, mut file) = self.create_temp(name, mode)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                rustix::fs::renameat(&self.fd, &tmp, &self.fd, name)
                    .map_err(|e| self.refusal(name, e.into()))
            });
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
        }
        written.with_context(|| format!("writing {:?}", self.show(name)))
    }

    /// A new file `.NAME.ferry-N` beside `name`, created with `O_EXCL`.
    fn create_temp(&self, name: &str, mode: u32) -> Result<(String, File)> {
        for n in 0..100 {
            let tmp = format!(".{name}.ferry-{}-{n}", std::process::id());
            match self.create_file(&tmp, mode) {
                Ok(file) => return Ok((tmp, file)),
                // Someone else's name (the directory's owner may race us).
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.refusal(&tmp, e)),
            }
        }
        bail!(
            "cannot create a temporary file beside {:?}: every name is taken",
            self.show(name)
        )
    }

    /// Creates the new regular file `rel` (never an existing one).
    pub fn create_file(&self, rel: &str, mode: u32) -> std::io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        self.resolve(rel, flags, mode).map(File::from)
    }

    /// Appends `bytes` to the regular file `name`, created (mode `mode`) if
    /// missing; refuses a link, a FIFO or any other kind of file in its place.
    pub fn append(&self, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NONBLOCK;
        let fd = self
            .resolve(name, flags, mode)
            .map_err(|e| self.refusal(name, e))?;
        let stat = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile || stat.st_nlink != 1 {
            bail!(
                "refusing {:?}: it is {}, not a regular file of its own",
                self.show(name),
                if kind == FileType::RegularFile {
                    "a hard link".into()
                } else {
                    describe(kind)
                }
            );
        }
        File::from(fd)
            .write_all(bytes)
            .with_context(|| format!("appending to {:?}", self.show(name)))
    }

    /// Removes the file or symlink `name` (never following it); fine if it
    /// is not there.
    pub fn remove_file(&self, name: &str) -> Result<()> {
        let (parent, leaf) = self.parent_of(name)?;
        match rustix::fs::unlinkat(&parent.fd, leaf, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.refusal(name, e.into())).context("removing it"),
        }
    }

    /// Removes `rel` and everything under it, refusing to cross a mount
    /// point or follow a link; fine if it is not there.
    pub fn remove_tree(&self, rel: &str) -> Result<()> {
        let Some(stat) = self.stat(rel)? else {
            return Ok(());
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return self.remove_file(rel);
        }
        let dir = self.open_dir(rel)?;
        for entry in dir.names()? {
            dir.remove_tree(&entry)?;
        }
        let (parent, leaf) = self.parent_of(rel)?;
        rustix::fs::unlinkat(&parent.fd, leaf, AtFlags::REMOVEDIR)
            .map_err(|e| self.refusal(rel, e.into()))
            .context("removing it")
    }

    /// The names in this directory, sorted (bytes order), without `.`
    /// and `..`; a name that is not UTF-8 is refused.
    pub fn names(&self) -> Result<Vec<String>> {
        let listing = rustix::fs::Dir::read_from(&self.fd)
            .map_err(std::io::Error::from)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry
                .map_err(std::io::Error::from)
                .with_context(|| format!("reading {}", self.path.display()))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            names.push(utf8(&self.path, name)?);
        }
        names.sort();
        Ok(names)
    }

    /// Creates the directory `rel` (its parents exist), mode `mode`.
    pub fn mkdir(&self, rel: &str, mode: u32) -> Result<()> {
        let (parent, leaf) = self.parent_of(rel)?;
        rustix::fs::mkdirat(&parent.fd, leaf, Mode::from_raw_mode(mode))
            .map_err(|e| self.refusal(rel, e.into()))
            .context("creating it")
    }

    /// Creates the symlink `rel` pointing at `target` (not followed), owned
    /// by `uid:gid`.
    pub fn symlink(&self, rel: &str, target: &str, uid: u32, gid: u32) -> Result<()> {
        let (parent, leaf) = self.parent_of(rel)?;
        rustix::fs::symlinkat(target, &parent.fd, leaf)
            .and_then(|()| {
                rustix::fs::chownat(
                    &parent.fd,
                    leaf,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
            })
            .map_err(|e| self.refusal(rel, e.into()))
            .context("creating the symlink")
    }

    /// Hard-links each of `rels`, all in directory `parent` (`""` for this
    /// one), of `from` under the same name here, opening the two
    /// directories once; says for each whether it was linked (the caller
    /// copies the others).
    pub fn link_all_from(&self, from: &Dir, parent: &str, rels: &[&str]) -> Vec<bool> {
        let dirs = if parent.is_empty() {
            Ok((
                std::borrow::Cow::Borrowed(from),
                std::borrow::Cow::Borrowed(self),
            ))
        } else {
            from.open_dir(parent)
                .and_then(|src| Ok((src, self.open_dir(parent)?)))
                .map(|(src, dst)| (std::borrow::Cow::Owned(src), std::borrow::Cow::Owned(dst)))
        };
        let Ok((src, dst)) = dirs else {
            return vec![false; rels.len()];
        };
        rels.iter()
            .map(|rel| {
                let leaf = rel.rsplit_once('/').map_or(*rel, |(_, leaf)| leaf);
                rustix::fs::linkat(&src.fd, leaf, &dst.fd, leaf, AtFlags::empty()).is_ok()
            })
            .collect()
    }

    /// Gives this directory `uid:gid` and `mode` (the owner first, as chown
    /// clears the set-id bits).
    pub fn set_attrs(&self, uid: u32, gid: u32, mode: u32) -> Result<()> {
        set_attrs(&self.fd, uid, gid, mode)
            .with_context(|| format!("setting the owner and mode of {}", self.path.display()))
    }

    /// Renames `from` to `to`, both names in this directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to)
            .map_err(std::io::Error::from)
            .with_context(|| format!("renaming {:?} to {:?}", self.show(from), self.show(to)))
    }

    /// Moves `from`, a name in this directory, to `to` in `dir` (the same
    /// filesystem): a whole tree in one rename, nothing under it entered.
    pub fn rename_into(&self, from: &str, dir: &Dir, to: &str) -> Result<()> {
        rustix::fs::renameat(&self.fd, from, &dir.fd, to)
            .map_err(std::io::Error::from)
            .with_context(|| format!("moving {:?} to {:?}", self.show(from), dir.show(to)))
    }

    /// Flushes this directory's entries (a rename or creation in it).
    pub fn sync(&self) -> Result<()> {
        rustix::fs::fsync(&self.fd)
            .map_err(std::io::Error::from)
            .with_context(|| format!("fsync {}", self.path.display()))
    }

    /// Flushes the whole filesystem holding this directory.
    pub fn sync_filesystem(&self) -> Result<()> {
        rustix::fs::syncfs(&self.fd)
            .map_err(std::io::Error::from)
            .with_context(|| format!("syncfs {}", self.path.display()))
    }

    /// Bytes free for an unprivileged writer on this directory's filesystem.
    pub fn available_bytes(&self) -> Result<u64> {
        let st = rustix::fs::fstatvfs(&self.fd)
            .map_err(std::io::Error::from)
            .with_context(|| format!("statvfs {}", self.path.display()))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

impl Clone for Dir {
    fn clone(&self) -> Dir {
        Dir {
            fd: self.fd.try_clone().expect("dup of a directory descriptor"),
            path: self.path.clone(),
        }
    }
}

/// Whether `name` in `dir` is the root of a mount, as far as the kernel
/// tells (5.8 and later).
fn mount_root(dir: BorrowedFd, name: &str) -> bool {
    rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT,
        StatxFlags::empty(),
    )
    .is_ok_and(|st| {
        st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
            && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
    })
}

fn utf8(dir: &Path, name: &CStr) -> Result<String> {
    name.to_str().map(str::to_string).with_context(|| {
        format!(
            "refusing {:?}: its name is not UTF-8",
            dir.join(OsStr::from_bytes(name.to_bytes()))
        )
    })
}

/// True when the error chain holds "not found".
fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::NotFound)
    })
}

fn describe(kind: FileType) -> String {
    match kind {
        FileType::Fifo => "a FIFO".into(),
        FileType::CharacterDevice => "a character device".into(),
        FileType::BlockDevice => "a block device".into(),
        FileType::Socket => "a socket".into(),
        FileType::Symlink => "a symbolic link".into(),
        FileType::Directory => "a directory".into(),
        _ => "of an unknown kind".into(),
    }
}

/// Owner, then mode, on an open file or directory.
pub fn set_attrs(fd: impl AsFd, uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
    let st = rustix::fs::fstat(&fd)?;
    if (st.st_uid, st.st_gid) != (uid, gid) {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
    }
    if st.st_mode & 0o7777 != mode || (st.st_uid, st.st_gid) != (uid, gid) {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    }
    Ok(())
}

/// Whether the open regular file has a hole before `size` (a sparse file).
/// Filesystems without hole reporting say "no hole".
pub fn has_hole(file: &File, size: u64) -> std::io::Result<bool> {
    if size == 0 {
        return Ok(false);
    }
    let hole = rustix::fs::seek(file, SeekFrom::Hole(0))?;
    // Put the position back: the caller reads from the start.
    rustix::fs::seek(file, SeekFrom::Start(0))?;
    Ok(hole < size)
}

/// Whether the path exists, for paths root alone controls (`/etc/<name>/…`).
pub fn trusted_exists(path: &Path) -> bool {
    rustix::fs::stat(path).is_ok()
}

/// Reads a file root alone controls (the package manifest); None if absent.
pub fn read_trusted(path: &Path) -> Result<Option<Vec<u8>>> {
    let (dir, name) = split(path)?;
    let Some(dir) = Dir::open_trusted_if_present(dir)? else {
        return Ok(None);
    };
    dir.read(name)
}

/// The directory and the name of `path`, to reach the name through a
/// handle of the directory.
pub fn split(path: &Path) -> Result<(&Path, &str)> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => bail!("{} is not a path to a name in a directory", path.display()),
    }
}
