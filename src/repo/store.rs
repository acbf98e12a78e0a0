//! The repository directory as a whole: opening and locking it, detecting a
//! broken one, finishing an interrupted change, and committing a new
//! generation of a channel crash-safely.
//!
//! A change (1) adds pool files under new names, (2) builds the channel's new
//! index generation beside the current one, (3) writes `ferry-repo.json`
//! atomically — the commit point — and (4) swaps the channel's symlinks. A
//! crash before (3) leaves unreferenced files that the next run removes; a
//! crash after it leaves symlinks on the previous, complete generation until
//! the next run rolls them forward. Readers always follow a complete
//! generation.

use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::state::{Format, RepoState, STATE_FILE};
use super::{apt, rpm, Signer};
use crate::fsutil;

/// Lock file: one publisher at a time; also marks the directory as ferry's
/// before its first record exists.
const LOCK_FILE: &str = ".ferry-lock";
/// Armored public key for clients, refreshed on every change.
pub const PUBLIC_KEY_FILE: &str = "signing-key.asc";

/// An opened repository directory, locked for this process.
pub struct Store {
    pub dir: PathBuf,
    /// The committed record; None for a repository that is being created.
    pub state: Option<RepoState>,
    _lock: Option<File>,
}

impl Store {
    /// Opens `dir`: an existing ferry repository (checked), or a missing or
    /// empty directory (to be created), or the leftovers of a first publish
    /// that was interrupted. Anything else is refused.
    pub fn open(dir: &Path) -> Result<Store> {
        let dir = dir.to_path_buf();
        if !dir.join(STATE_FILE).exists() {
            return Store::open_new(dir);
        }
        let lock = lock(&dir)?;
        let state = RepoState::load(&dir).map_err(|e| broken(&dir, &format!("{e:#}")))?;
        check(&dir, &state).map_err(|e| broken(&dir, &format!("{e:#}")))?;
        Ok(Store {
            dir,
            state: Some(state),
            _lock: Some(lock),
        })
    }

    fn open_new(dir: PathBuf) -> Result<Store> {
        let empty = match fs::read_dir(&dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        if !empty && !dir.join(LOCK_FILE).exists() {
            bail!(
                "{} is not a ferry repository (no {STATE_FILE}) and not empty: \
                 nothing was changed; pass an empty or new directory to create a repository",
                dir.display()
            );
        }
        // The lock is taken when the first change is made (`create`), so that
        // a refused first publish leaves no trace.
        Ok(Store {
            dir,
            state: None,
            _lock: None,
        })
    }

    /// Creates the directory of a new repository (or clears what an
    /// interrupted first publish left) and locks it.
    pub fn create(&mut self) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        self._lock = Some(lock(&self.dir)?);
        for leftover in ["apt", "rpm", PUBLIC_KEY_FILE] {
            fsutil::remove_any(&self.dir.join(leftover))?;
        }
        remove_temp_files(&self.dir)
    }

    /// Finishes what an interrupted change left: symlinks rolled forward to
    /// the committed generation, unreferenced files and old generations removed.
    pub fn tidy(&self, state: &RepoState) -> Result<()> {
        for (name, channel) in &state.channels {
            for format in &channel.formats {
                let (link, target) = link_and_target(&self.dir, *format, name, channel.generation);
                if fs::read_link(&link).ok().as_deref() != Some(Path::new(&target)) {
                    fsutil::swap_symlink(&target, &link)?;
                }
            }
        }
        remove_temp_files(&self.dir)?;
        remove_stale_generations(&self.dir.join("apt/dists"), state)?;
        remove_stale_generations(&self.dir.join("rpm"), state)?;
        remove_unreferenced(&self.dir, "apt/pool", state)?;
        remove_unreferenced(&self.dir, "rpm/pool", state)
    }

    /// Builds the next generation of `channel` from `state` beside the
    /// current one and commits `state` (the symlinks move in `finish`).
    /// When the signing keys changed, every channel gets a new generation,
    /// signed with the new keys: clients of each channel must find the
    /// signature they trust. Returns `channel`'s new generation number.
    pub fn commit(&mut self, mut state: RepoState, channel: &str, signer: &Signer) -> Result<u64> {
        let rekeyed = self
            .state
            .as_ref()
            .is_some_and(|committed| committed.keys() != state.keys());
        let channels: Vec<String> = if rekeyed {
            state.channels.keys().cloned().collect()
        } else {
            vec![channel.to_string()]
        };
        let formats: Vec<Format> = state.names.keys().copied().collect();
        for name in &channels {
            let entry = state.channels.entry(name.clone()).or_default();
            entry.generation += 1;
            entry.formats = formats.iter().copied().collect();
        }
        let generation_of =
            |state: &RepoState, name: &str| state.channels.get(name).map_or(0, |c| c.generation);
        let mut built_dirs = Vec::new();
        let built = channels
            .iter()
            .flat_map(|name| formats.iter().map(move |format| (name, *format)))
            .try_for_each(|(name, format)| {
                let generation = generation_of(&state, name);
                let (link, target) = link_and_target(&self.dir, format, name, generation);
                built_dirs.push(link.with_file_name(target));
                self.build_generation(&state, format, name, generation, signer)
            })
            .and_then(|()| signer.export_public())
            .and_then(|key| fsutil::write_atomic(&self.dir.join(PUBLIC_KEY_FILE), &key));
        if let Err(e) = built {
            for dir in &built_dirs {
                let _ = fsutil::remove_any(dir);
            }
            return Err(e);
        }
        let generation = generation_of(&state, channel);
        state.save(&self.dir)?;
        self.state = Some(state);
        Ok(generation)
    }

    /// After a commit: switches the symlinks and removes what is no longer referenced.
    pub fn finish(&self) -> Result<()> {
        match &self.state {
            Some(state) => self.tidy(state),
            None => Ok(()),
        }
    }

    /// Undoes the creation of a repository whose first publish failed.
    pub fn abandon_new(&self, created_dir: bool) {
        if self.state.is_some() {
            return;
        }
        if created_dir {
            let _ = fsutil::remove_any(&self.dir);
            return;
        }
        for leftover in ["apt", "rpm", PUBLIC_KEY_FILE, LOCK_FILE] {
            let _ = fsutil::remove_any(&self.dir.join(leftover));
        }
    }

    fn build_generation(
        &self,
        state: &RepoState,
        format: Format,
        channel: &str,
        generation: u64,
        signer: &Signer,
    ) -> Result<()> {
        let (link, target) = link_and_target(&self.dir, format, channel, generation);
        let gen_dir = link.with_file_name(&target);
        fsutil::remove_any(&gen_dir)?;
        fs::create_dir_all(&gen_dir)
            .with_context(|| format!("cannot create {}", gen_dir.display()))?;
        let built = match format {
            Format::Deb => apt::write_generation(&gen_dir, state, channel, signer),
            Format::Rpm => {
                let current = fs::canonicalize(&link).ok();
                rpm::write_generation(
                    &self.dir,
                    &gen_dir,
                    current.as_deref(),
                    state,
                    channel,
                    signer,
                )
            }
        };
        // A failed generation is removed at once: the repository stays as it was.
        if let Err(e) = built.and_then(|()| fsutil::fsync_tree(&gen_dir)) {
            let _ = fsutil::remove_any(&gen_dir);
            return Err(e.context(format!(
                "cannot build the {format} indices of channel {channel}"
            )));
        }
        Ok(())
    }
}

/// Holds an exclusive `flock` on the repository for the life of the File; the
/// kernel releases it when the process dies, so a killed publish leaves no lock.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // Wait a little: another publish may be finishing (and a process forked
    // meanwhile holds a copy of the descriptor until it execs).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // SAFETY: flock on a valid open descriptor has no memory-safety conditions.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{} is locked by another ferry publish or promote: wait for it to finish and retry",
                dir.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn broken(dir: &Path, what: &str) -> anyhow::Error {
    anyhow!(
        "repository {} is in a broken state: {what}. Nothing was changed. \
         Restore the directory from a backup, or publish the versions you need into a new repository",
        dir.display()
    )
}

/// Path of a channel's symlink and the name of the generation it should point at.
pub fn link_and_target(
    dir: &Path,
    format: Format,
    channel: &str,
    generation: u64,
) -> (PathBuf, String) {
    let link = match format {
        Format::Deb => dir.join("apt/dists").join(channel),
        Format::Rpm => dir.join("rpm").join(channel),
    };
    (link, generation_name(channel, generation))
}

fn generation_name(channel: &str, generation: u64) -> String {
    format!(".{channel}.g{generation}")
}

/// Checks that every channel has a complete committed generation and every
/// pool file it references is present with its recorded size.
fn check(dir: &Path, state: &RepoState) -> Result<()> {
    for (name, channel) in &state.channels {
        for format in &channel.formats {
            let (link, target) = link_and_target(dir, *format, name, channel.generation);
            if let Ok(meta) = fs::symlink_metadata(&link) {
                if !meta.file_type().is_symlink() {
                    bail!(
                        "{} should be a symlink to a generation directory",
                        link.display()
                    );
                }
            }
            let generation = link.with_file_name(&target);
            let marker = match format {
                Format::Deb => "InRelease",
                Format::Rpm => "repodata/repomd.xml.asc",
            };
            if !generation.join(marker).is_file() {
                bail!("channel {name}: {} lacks {marker}", generation.display());
            }
        }
    }
    for channel in state.channels.keys() {
        for package in state.members(channel) {
            let actual = fs::metadata(dir.join(&package.file)).ok().map(|m| m.len());
            if actual != Some(package.size) {
                bail!(
                    "pool file {} of channel {channel} is missing or has the wrong size",
                    package.file
                );
            }
        }
    }
    Ok(())
}

/// Removes generation directories other than each channel's current and
/// previous one, and temporary files of interrupted runs.
fn remove_stale_generations(parent: &Path, state: &RepoState) -> Result<()> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = if fsutil::is_temp_name(&name) {
            true
        } else if let Some((channel, generation)) = parse_generation_name(&name) {
            state
                .channels
                .get(channel)
                .is_none_or(|c| generation + 1 < c.generation || generation > c.generation)
        } else {
            false
        };
        if stale {
            fsutil::remove_any(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes the temporary files an interrupted run left directly in `dir`.
fn remove_temp_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        if fsutil::is_temp_name(&entry.file_name().to_string_lossy()) {
            fsutil::remove_any(&entry.path())?;
        }
    }
    Ok(())
}

fn parse_generation_name(name: &str) -> Option<(&str, u64)> {
    let (channel, generation) = name.strip_prefix('.')?.rsplit_once(".g")?;
    Some((channel, generation.parse().ok()?))
}

/// Removes pool files that no channel references (pruned, or left by an
/// interrupted run).
fn remove_unreferenced(dir: &Path, pool: &str, state: &RepoState) -> Result<()> {
    let referenced = state.referenced_files();
    let mut stack = vec![dir.join(pool)];
    while let Some(current) = stack.pop() {
        let Ok(entries) = fs::read_dir(&current) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if !referenced.contains(relative.as_str()) {
                fsutil::remove_any(&path)?;
            }
        }
    }
    Ok(())
}
