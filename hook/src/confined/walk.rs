//! Walking a directory the agent's user owns: everything under it, never
//! following a link or crossing a mount, refusing what a state must not
//! hold by name.

use std::os::fd::AsFd;

use anyhow::{bail, Result};
use rustix::fs::{AtFlags, FileType, Stat};

use super::{describe, mount_root, utf8, Dir, MAX_DEPTH};

/// What [`Dir::walk`] found, in the order of a sorted walk with a
/// directory after what it holds.
#[derive(Debug, Clone)]
pub struct Found {
    /// The path relative to the walked directory, `/`-separated.
    pub rel: String,
    pub stat: Stat,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink {
        target: String,
    },
    /// Not opened, not copied: a socket is a live endpoint, not state.
    Socket,
}

impl Dir {
    /// Everything under this directory, in the order of a sorted walk with a
    /// directory after what it holds, leaving out the top-level names in
    /// `exclude`. Refuses (naming it) a mount point, a FIFO, a device, a
    /// name that is not UTF-8, and a tree deeper than [`MAX_DEPTH`].
    pub fn walk(&self, exclude: &[&str]) -> Result<Vec<Found>> {
        let device = rustix::fs::fstat(&self.fd)
            .map_err(std::io::Error::from)?
            .st_dev;
        let mut found = Vec::new();
        self.walk_into("", exclude, device, 0, &mut found)?;
        Ok(found)
    }

    fn walk_into(
        &self,
        rel: &str,
        exclude: &[&str],
        device: u64,
        depth: usize,
        found: &mut Vec<Found>,
    ) -> Result<()> {
        if depth >= MAX_DEPTH {
            bail!(
                "refusing {:?}: the tree is deeper than {MAX_DEPTH} levels",
                self.path
            );
        }
        for name in self.names()? {
            if depth == 0 && exclude.contains(&name.as_str()) {
                continue;
            }
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let stat = rustix::fs::statat(&self.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.refusal(&name, e.into()))?;
            let kind = match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    if stat.st_dev != device || self.is_mount_root(&name) {
                        bail!(
                            "refusing {:?}: it is a mount point; snapshots never cross into another filesystem",
                            self.show(&name)
                        );
                    }
                    let child = self.open_dir(&name)?;
                    child.walk_into(&child_rel, &[], device, depth + 1, found)?;
                    // What was walked is what the open handle holds, even
                    // if the name was swapped meanwhile.
                    let stat = rustix::fs::fstat(&child.fd).map_err(std::io::Error::from)?;
                    found.push(Found {
                        rel: child_rel,
                        stat,
                        kind: Kind::Dir,
                    });
                    continue;
                }
                FileType::RegularFile => Kind::File,
                FileType::Symlink => Kind::Symlink {
                    target: self.read_link(&name)?,
                },
                FileType::Socket => Kind::Socket,
                other => bail!(
                    "refusing {:?}: it is {}; an agent's state holds only files, directories and symlinks. Remove it and retry",
                    self.show(&name),
                    describe(other)
                ),
            };
            found.push(Found {
                rel: child_rel,
                stat,
                kind,
            });
        }
        Ok(())
    }

    /// Whether `name` is the root of a mount (a bind mount of the same
    /// filesystem has the same device number, so that alone is not enough).
    fn is_mount_root(&self, name: &str) -> bool {
        mount_root(self.fd.as_fd(), name)
    }

    fn read_link(&self, name: &str) -> Result<String> {
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new())
            .map_err(|e| self.refusal(name, e.into()))?;
        utf8(&self.show(name), &target)
    }
}
