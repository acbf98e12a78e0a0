//! File-system steps that survive a crash at any instant: write beside,
//! fsync, rename, fsync the directory. Shared by the repository (`ferry
//! publish`) and `ferry channel`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Name of a temporary sibling of `path`, recognisable as ferry's leftovers.
fn temp_sibling(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".ferry-tmp.{}.{name}", std::process::id()))
}

/// Takes the exclusive `flock` of the lock file `path` (created 0600, never
/// opened through a link), held while the returned file is open: waiting
/// for it when `wait`, else `None` when another process holds it.
pub fn lock_file(path: &Path, wait: bool) -> Result<Option<File>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let how = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        return Ok(Some(file));
    }
    let e = std::io::Error::last_os_error();
    if !wait && e.kind() == std::io::ErrorKind::WouldBlock {
        return Ok(None);
    }
    Err(e).with_context(|| format!("cannot lock {}", path.display()))
}

/// True for names that only an interrupted ferry leaves behind.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(".ferry-tmp.")
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Replaces `path` with `bytes` so that a reader sees the old or the new file, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, None)
}

/// [`write_atomic`], the new file getting `mode` when given (else the
/// umask's default). A temporary file left by a failure is removed.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let tmp = temp_sibling(path);
    let written = (|| -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        if let Some(mode) = mode {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    rename_durably(&tmp, path)
}

/// Copies `from` to `to` atomically (no partial `to` is ever visible).
pub fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = temp_sibling(to);
    fs::copy(from, &tmp)
        .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot fsync {}", tmp.display()))?;
    rename_durably(&tmp, to)
}

pub fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))?;
    fsync_dir(parent(to))
}

/// Points the symlink `link` at `target` in one rename: readers follow either
/// the old target or the new one.
pub fn swap_symlink(target: &str, link: &Path) -> Result<()> {
    let tmp = temp_sibling(link);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("cannot create symlink {}", tmp.display()))?;
    rename_durably(&tmp, link)
}

fn entry_metadata(path: &Path) -> Result<fs::Metadata> {
    fs::symlink_metadata(path).with_context(|| format!("cannot stat {}", path.display()))
}

/// Flushes every file and directory under `dir` to disk (children first), so
/// that a generation is complete on disk before the record points at it.
pub fn fsync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let meta = entry_metadata(&path)?;
        if meta.is_dir() {
            fsync_tree(&path)?;
        } else if meta.nlink() > 1 {
            // A hard link into a pool: that file was synced when it was placed.
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot fsync {}", path.display()))?;
        }
    }
    fsync_dir(dir)
}

pub use crate::digest::{hex, sha256_hex};

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

/// Removes a file or a directory tree; a missing one is not an error.
pub fn remove_any(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.with_context(|| format!("cannot remove {}", path.display()))
}

/// 16 random hex digits, for the repository's unique Origin.
pub fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(hex(&bytes))
}
