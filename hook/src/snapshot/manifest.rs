//! What a snapshot records about itself (`ferry-snapshot.json`): every
//! entry with its attributes, size and checksum, and the checksums of both
//! formats.

use serde::{Deserialize, Serialize};
use sha2::Digest;

pub(super) const FORMAT: &str = "ferry-snapshot";
pub(super) const FORMAT_VERSION: u32 = 2;

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
    pub(super) fn new(
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

    pub(super) fn format_1() -> Checksum {
        Checksum::Sha256
    }

    pub(super) fn hasher(self) -> Hasher {
        match self {
            Checksum::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Checksum::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }
}

pub(super) enum Hasher {
    Sha256(sha2::Sha256),
    // Boxed: its state is 2 KiB.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub(super) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// The digest in lowercase hex.
    pub(super) fn finish(self) -> String {
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
    pub(super) fn path(&self) -> &str {
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

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    text
}
