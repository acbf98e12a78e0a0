//! The repository's own record, `DIR/ferry-repo.json`: the single source of
//! truth for what each channel holds. The apt and rpm trees are views of it,
//! rebuilt from it on every change; writing it (atomically) is the commit
//! point of a publish.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// File name of the record inside the repository directory.
pub const STATE_FILE: &str = "ferry-repo.json";
/// Schema of the record; a newer one is refused rather than misread.
const SCHEMA: u32 = 1;

pub use crate::format::Format;

/// One package file ever published. Entries are never removed, even when
/// retention prunes the file: a published version is immutable forever.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub format: Format,
    pub name: String,
    /// Full version: deb `[epoch:]upstream[-revision]`, rpm `[epoch:]version-release`.
    pub version: String,
    pub arch: String,
    /// Path of the pool file, relative to the repository directory.
    pub file: String,
    pub size: u64,
    /// SHA-256 of the pool file's bytes (for rpm: after ferry signed it).
    pub sha256: String,
    /// SHA-256 of what identifies the content: the whole .deb; for an rpm its
    /// header and payload, which signing does not touch.
    pub content: String,
    /// A .deb's control paragraph, kept so that `Packages` is rebuilt without
    /// reading a thousand pool files; empty for an rpm.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub control: String,
}

impl Published {
    /// Key of the entry: one content per format, name, version and architecture.
    pub fn id(&self) -> String {
        entry_id(self.format, &self.name, &self.version, &self.arch)
    }
}

pub fn entry_id(format: Format, name: &str, version: &str, arch: &str) -> String {
    format!("{format}/{name}/{version}/{arch}")
}

/// A channel: which published entries it holds, and which generation of its
/// indices is current (`DIR/apt/dists/.<channel>.g<N>`, `DIR/rpm/.<channel>.g<N>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub generation: u64,
    /// Formats whose index trees exist for this channel (those the repository
    /// held when the channel last changed).
    pub formats: BTreeSet<Format>,
    pub members: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    pub schema: u32,
    /// Release `Origin`: unique per repository, so unattended-upgrades can
    /// select it (SPEC §5).
    pub origin: String,
    pub label: String,
    /// Fingerprint of the key that signs the indices and the rpms; later
    /// publishes must sign with it or with one of `also_signed_by`.
    pub key: String,
    /// Fingerprints of the other keys that sign the indices, while the
    /// repository's key is rotated (docs/REPOSITORIES.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_signed_by: Vec<String>,
    /// The first package name published per format (the formats the
    /// repository holds); other packages may join it.
    pub names: BTreeMap<Format, String>,
    /// Architectures per format, fixed by the first publish of that format.
    pub architectures: BTreeMap<Format, BTreeSet<String>>,
    /// Versions (full or upstream) that retention never prunes.
    pub kept: BTreeSet<String>,
    pub published: BTreeMap<String, Published>,
    pub channels: BTreeMap<String, Channel>,
}

impl RepoState {
    pub fn new(origin: String, label: String, key: String) -> Self {
        RepoState {
            schema: SCHEMA,
            origin,
            label,
            key,
            also_signed_by: Vec::new(),
            names: BTreeMap::new(),
            architectures: BTreeMap::new(),
            kept: BTreeSet::new(),
            published: BTreeMap::new(),
            channels: BTreeMap::new(),
        }
    }

    pub fn load(repo: &Path) -> Result<Self> {
        let path = repo.join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let state: RepoState = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a valid ferry repository record", path.display())
        })?;
        if state.schema != SCHEMA {
            bail!(
                "{} has schema {}, this ferry knows schema {SCHEMA}: use the ferry that wrote it",
                path.display(),
                state.schema
            );
        }
        Ok(state)
    }

    /// Writes the record atomically: this is the commit point of a change.
    pub fn save(&self, repo: &Path) -> Result<()> {
        let text =
            serde_json::to_string_pretty(self).context("cannot serialize the repository record")?;
        fsutil::write_atomic(&repo.join(STATE_FILE), text.as_bytes())
    }

    /// Every key that signs, the rpms' first.
    pub fn keys(&self) -> Vec<&str> {
        std::iter::once(self.key.as_str())
            .chain(self.also_signed_by.iter().map(String::as_str))
            .collect()
    }

    /// The entries a channel holds, in a stable order.
    pub fn members(&self, channel: &str) -> Vec<&Published> {
        self.channels
            .get(channel)
            .map(|c| {
                c.members
                    .iter()
                    .filter_map(|id| self.published.get(id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every pool file some channel still references.
    pub fn referenced_files(&self) -> BTreeSet<&str> {
        self.channels
            .values()
            .flat_map(|c| c.members.iter())
            .filter_map(|id| self.published.get(id))
            .map(|p| p.file.as_str())
            .collect()
    }
}
