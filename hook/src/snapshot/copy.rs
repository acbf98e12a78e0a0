//! Copying a tree into a snapshot (or a snapshot back): directories and
//! symlinks first, then the files on a thread per core, hashing each byte
//! as it is copied, then the directories' owners and modes, deepest first.
//!
//! The source is read only through [`confined`]: each file is opened
//! beneath the source directory without following links and checked before
//! a byte is read. The destination is a directory only root can enter
//! until the last step gives each directory its recorded owner.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{attrs_of, file_size, Checksum, Entry, Reuse};
use crate::confined::{self, Dir, Found, Kind};

pub const COPY_BUFFER: usize = 256 * 1024;

/// At most this many threads copy files. On the 2-core VMs measured (see
/// docs/BENCHMARKS.md) one per core was best, a third did not help.
const MAX_COPY_THREADS: usize = 4;

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

/// What [`copy_tree`] made.
pub struct Copied {
    /// In the order of the walk (a directory after what it holds).
    pub entries: Vec<Entry>,
    /// Sockets not copied, by full path.
    pub skipped: Vec<String>,
}

/// A file to copy; its entry goes to `slot`.
struct FileCopy<'a> {
    rel: &'a str,
    slot: usize,
    /// As the walk saw it.
    stat: &'a rustix::fs::Stat,
}

/// Copies `tree` (walked from `src`) into the new directory `name` of
/// `parent`, hashing files with `checksum` (or linking those `reuse` holds
/// unchanged). `owner`: the only owner a hard-linked source file may have.
pub fn copy_tree(
    src: &Dir,
    tree: &[Found],
    parent: &Dir,
    name: &str,
    checksum: Checksum,
    reuse: Option<&Reuse>,
    owner: Option<u32>,
) -> Result<Copied> {
    parent.mkdir(name, 0o700)?;
    let dst = parent.open_dir(name)?;
    // Parents before children (a prefix sorts first), private while filled.
    let mut dirs: Vec<&str> = tree
        .iter()
        .filter(|f| f.kind == Kind::Dir)
        .map(|f| f.rel.as_str())
        .collect();
    dirs.sort_unstable();
    for rel in dirs {
        dst.mkdir(rel, 0o700)?;
    }
    let mut entries = Vec::with_capacity(tree.len());
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for found in tree {
        let path = found.rel.clone();
        let st = &found.stat;
        match &found.kind {
            Kind::Dir => entries.push(Some(Entry::Dir {
                path,
                attrs: attrs_of(st),
            })),
            Kind::Symlink { target } => {
                dst.symlink(&path, target, st.st_uid, st.st_gid)?;
                entries.push(Some(Entry::Symlink {
                    path,
                    target: target.clone(),
                    uid: st.st_uid,
                    gid: st.st_gid,
                }));
            }
            Kind::File => {
                files.push(FileCopy {
                    rel: &found.rel,
                    slot: entries.len(),
                    stat: &found.stat,
                });
                entries.push(None);
            }
            Kind::Socket => skipped.push(format!("{:?}", src.show(&found.rel))),
        }
    }
    if let Some(reuse) = reuse {
        files = link_unchanged(reuse, &dst, files, &mut entries);
    }
    for (slot, entry) in copy_files(src, &dst, &files, checksum, owner)? {
        entries[slot] = Some(entry);
    }
    // Deepest first (the walk's order), so a read-only directory is filled
    // before it gets its mode, and each is handed to its owner only once
    // all under it is done.
    for found in tree.iter().filter(|f| f.kind == Kind::Dir) {
        let attrs = attrs_of(&found.stat);
        dst.open_dir(&found.rel)?
            .set_attrs(attrs.uid, attrs.gid, attrs.mode)?;
    }
    Ok(Copied {
        entries: entries
            .into_iter()
            .map(|e| e.expect("every file was copied or linked"))
            .collect(),
        skipped,
    })
}

/// Links the earlier snapshot's copy of every file `reuse` holds unchanged,
/// a directory at a time (each opened once: a retake of a large state is
/// mostly this, and it keeps the agent down); returns the files left to
/// copy.
fn link_unchanged<'a>(
    reuse: &Reuse,
    dst: &Dir,
    files: Vec<FileCopy<'a>>,
    entries: &mut [Option<Entry>],
) -> Vec<FileCopy<'a>> {
    let mut by_parent: std::collections::BTreeMap<&str, Vec<(FileCopy<'a>, Option<Entry>)>> =
        std::collections::BTreeMap::new();
    for file in files {
        let parent = file.rel.rsplit_once('/').map_or("", |(parent, _)| parent);
        let earlier = reuse.unchanged(file.rel, file.stat);
        by_parent.entry(parent).or_default().push((file, earlier));
    }
    let mut left = Vec::new();
    for (parent, group) in by_parent {
        let (candidates, changed): (Vec<_>, Vec<_>) = group
            .into_iter()
            .partition(|(_, earlier)| earlier.is_some());
        left.extend(changed.into_iter().map(|(file, _)| file));
        let rels: Vec<&str> = candidates.iter().map(|(f, _)| f.rel).collect();
        let linked = dst.link_all_from(reuse.data(), parent, &rels);
        for ((file, earlier), linked) in candidates.into_iter().zip(linked) {
            match earlier {
                // The earlier copy already has the attributes and time.
                Some(entry) if linked => entries[file.slot] = Some(entry),
                _ => left.push(file),
            }
        }
    }
    left
}

/// Copies `files` on a thread per core, each taking the next file not yet
/// taken, so big and small files spread evenly; returns each file's slot
/// and entry. Meanwhile this thread starts the writeback of the small files
/// copied so far, a batch at a time. Stops at the first error.
fn copy_files(
    src: &Dir,
    dst: &Dir,
    files: &[FileCopy],
    checksum: Checksum,
    owner: Option<u32>,
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
            let one = OneCopy {
                src,
                dst,
                rel: file.rel,
                checksum,
                owner,
            };
            match one.run(&mut buf, &unflushed) {
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
                if let Err(e) = dst.sync_filesystem() {
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

/// One file to copy from `src` to `dst`, both by `rel`.
struct OneCopy<'a> {
    src: &'a Dir,
    dst: &'a Dir,
    rel: &'a str,
    checksum: Checksum,
    owner: Option<u32>,
}

impl OneCopy<'_> {
    /// Copies the file, hashing it as it is read (once), and gives the copy
    /// the original's owner, mode and modification time.
    fn run(&self, buf: &mut [u8], unflushed: &AtomicU64) -> Result<Entry> {
        let (src, dst, rel) = (self.src, self.dst, self.rel);
        let (input, st) = src.open_file(rel, self.owner)?;
        let size = file_size(&st);
        if confined::has_hole(&input, size)
            .with_context(|| format!("reading {:?}", src.show(rel)))?
        {
            bail!(
                "refusing {:?}: it is a sparse file ({size} bytes, {} allocated), which a snapshot would expand. Remove it, or write it out whole, and retry",
                src.show(rel),
                st.st_blocks * 512
            );
        }
        let attrs = attrs_of(&st);
        // With its mode less the set-id bits (which must follow the owner)
        // and what the umask takes: most often right already.
        let mut output = dst
            .create_file(rel, attrs.mode & 0o777)
            .with_context(|| format!("creating {:?}", dst.show(rel)))?;
        // No more than the size seen at open: a file that keeps growing
        // cannot keep the copy going.
        let (size, digest) =
            hash_into(&mut (&input).take(size), self.checksum, buf, &mut output)
                .with_context(|| format!("copying {:?} to {:?}", src.show(rel), dst.show(rel)))?;
        if size >= EARLY_WRITEBACK {
            start_writeback(&output).with_context(|| format!("writing {:?}", dst.show(rel)))?;
        } else {
            unflushed.fetch_add(size, Ordering::Relaxed);
        }
        confined::set_attrs(&output, attrs.uid, attrs.gid, attrs.mode)
            .with_context(|| format!("setting the owner and mode of {:?}", dst.show(rel)))?;
        set_mtime(&output, st.st_mtime, st.st_mtime_nsec)
            .with_context(|| format!("setting the time of {:?}", dst.show(rel)))?;
        Ok(Entry::File {
            path: rel.to_string(),
            attrs,
            size,
            digest,
            mtime: st.st_mtime,
        })
    }
}

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

/// Reads `input` to its end once, through `buf`, hashing every byte and
/// writing it to `output`; returns the size and checksum.
pub fn hash_into(
    input: &mut dyn Read,
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

fn set_mtime(file: &File, secs: i64, nsecs: u64) -> std::io::Result<()> {
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: nsecs as _,
        },
    };
    rustix::fs::futimens(file, &times).map_err(Into::into)
}
