//! Retaking a snapshot cheaply: the files of the state that did not change
//! since an earlier snapshot are hard links to its copies and keep its
//! checksums; only the others are copied and hashed again.
//!
//! Unchanged means: same size and modification time as the earlier
//! manifest recorded, and an inode change time (ctime, which no program can
//! set) at least [`RACY_SECS`] before the earlier snapshot began. Any write,
//! rename, chmod or chown sets the ctime to the present, so a file changed
//! while or after the earlier snapshot copied it is always copied again
//! (git calls such files "racily clean"). A damaged copy in the earlier
//! snapshot stays damaged in the new one and its restore refuses it. An
//! earlier snapshot checksummed another way (format 1) is not reused.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use rustix::fs::Stat;

use super::{attrs_of, Checksum, Entry, Manifest, DATA};
use crate::confined::Dir;

/// How long before the earlier snapshot began a file must have last
/// changed: covers the manifest's whole-second time and the kernel's coarse
/// clock for ctime.
pub const RACY_SECS: i64 = 2;

/// The earlier snapshot's files, by path.
pub struct Reuse {
    data: Dir,
    files: HashMap<String, Entry>,
    changed_before: i64,
}

impl Reuse {
    /// The snapshot at `earlier`, whose manifest is `manifest`; None when
    /// its checksums are not of the kind new snapshots record.
    pub fn new(earlier: &Path, manifest: Manifest) -> Result<Option<Reuse>> {
        if manifest.checksum != Checksum::CURRENT {
            return Ok(None);
        }
        let changed_before = manifest.created_unix as i64 - RACY_SECS;
        let files = manifest
            .entries
            .into_iter()
            .filter(|e| matches!(e, Entry::File { .. }))
            .map(|e| (e.path().to_string(), e))
            .collect();
        Ok(Some(Reuse {
            data: Dir::open_trusted(earlier)?.open_dir(DATA)?,
            files,
            changed_before,
        }))
    }

    /// The earlier snapshot's copies, for `Dir::link_all_from`.
    pub fn data(&self) -> &Dir {
        &self.data
    }

    /// The earlier entry of `rel`, to link, when the live file (`st`, as
    /// the walk saw it) did not change since; None when it must be copied.
    /// The live file is not opened: its inode change time is older than the
    /// earlier snapshot, so no link to it was made since the earlier
    /// snapshot refused or accepted it, and what is linked is root's copy.
    pub fn unchanged(&self, rel: &str, st: &Stat) -> Option<Entry> {
        let Some(Entry::File {
            size,
            digest,
            mtime,
            ..
        }) = self.files.get(rel)
        else {
            return None;
        };
        let unchanged = u64::try_from(st.st_size) == Ok(*size)
            && st.st_mtime == *mtime
            && st.st_ctime < self.changed_before;
        if !unchanged {
            return None;
        }
        Some(Entry::File {
            path: rel.to_string(),
            attrs: attrs_of(st),
            size: *size,
            digest: digest.clone(),
            mtime: *mtime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{as_format_1, sample_and_snapshot};
    use super::super::{now_unix, read_manifest, restore, retake, verify, write_manifest};
    use super::*;
    use crate::package::MARKER;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn inode(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    /// As if `snapshot` had begun at `unix` (a test cannot set a file's
    /// ctime back, so it moves the snapshot's time instead).
    fn taken_at(snapshot: &Path, unix: u64) {
        let mut manifest = read_manifest(snapshot).unwrap();
        manifest.created_unix = unix;
        write_manifest(&Dir::open_trusted(snapshot).unwrap(), &manifest).unwrap();
    }

    #[test]
    fn retake_links_unchanged_files_and_copies_changed_ones() {
        let (base, state, earlier) = sample_and_snapshot("retake");
        // The changes land in a later second than the sample's files, and
        // the snapshot is made to look as if it began between the two.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        fs::write(state.join("state.json"), "{\"schema\":3}\n").unwrap();
        fs::write(state.join("queued"), "new\n").unwrap();
        let changed = fs::metadata(state.join("state.json")).unwrap().ctime();
        taken_at(&earlier.path, (changed + RACY_SECS) as u64);
        let retaken = retake(&earlier.path, &state, "retaken", &[MARKER]).unwrap();
        let (old, new) = (earlier.path.join(DATA), retaken.path.join(DATA));
        let log = "work/vm1/app/out.log";
        assert_eq!(inode(&old.join(log)), inode(&new.join(log)), "linked");
        assert_ne!(
            inode(&old.join("state.json")),
            inode(&new.join("state.json"))
        );
        let manifest = verify(&retaken.path).unwrap();
        assert_eq!(
            (manifest.version.as_str(), manifest.schema),
            ("1.0.0", Some(2))
        );
        assert_eq!(manifest.reason, "retaken");
        let restored = base.join("restored");
        restore(&retaken.path, &restored).unwrap();
        assert_eq!(
            fs::read_to_string(restored.join("state.json")).unwrap(),
            "{\"schema\":3}\n"
        );
        assert_eq!(
            fs::read_to_string(restored.join("queued")).unwrap(),
            "new\n"
        );
        assert_eq!(fs::read(restored.join(log)).unwrap(), vec![7u8; 300_000]);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn files_changed_around_the_earlier_snapshot_are_copied_again() {
        let (base, state, earlier) = sample_and_snapshot("retake-racy");
        let retaken = retake(&earlier.path, &state, "retaken", &[MARKER]).unwrap();
        let log = format!("{DATA}/work/vm1/app/out.log");
        assert_ne!(
            inode(&earlier.path.join(&log)),
            inode(&retaken.path.join(&log)),
            "changed within {RACY_SECS} s of the earlier snapshot: copied"
        );
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_format_1_snapshot_is_copied_not_linked() {
        let (base, state, earlier) = sample_and_snapshot("retake-format-1");
        as_format_1(&earlier.path);
        taken_at(&earlier.path, now_unix() + 10);
        let retaken = retake(&earlier.path, &state, "retaken", &[MARKER]).unwrap();
        let log = format!("{DATA}/work/vm1/app/out.log");
        assert_ne!(
            inode(&earlier.path.join(&log)),
            inode(&retaken.path.join(&log)),
            "SHA-256 digests cannot stand for BLAKE3 ones"
        );
        assert_eq!(verify(&retaken.path).unwrap().checksum, Checksum::CURRENT);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_damaged_linked_copy_is_refused_on_restore() {
        let (base, state, earlier) = sample_and_snapshot("retake-damaged");
        taken_at(&earlier.path, now_unix() + 10);
        let log = "work/vm1/app/out.log";
        fs::write(earlier.path.join(DATA).join(log), "damage").unwrap();
        let retaken = retake(&earlier.path, &state, "retaken", &[MARKER]).unwrap();
        let err = format!("{:#}", restore(&retaken.path, &state).unwrap_err());
        assert!(err.contains(&format!("{log} was changed")), "{err}");
        assert_eq!(fs::read(state.join(log)).unwrap(), vec![7u8; 300_000]);
        fs::remove_dir_all(&base).unwrap();
    }
}
