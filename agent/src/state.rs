//! The state store: one file, `state.json` in the state directory, written
//! atomically (temporary file, fsync, rename, fsync of the directory) so that a
//! crash at any point leaves either the old or the new state. The file is a
//! header line (format, schema, writer version, sha256 of the rest) followed
//! by the payload in that schema's layout.
use crate::build_info::VERSION;
use crate::exit::{Exit, BAD_STATE};
use crate::migrate::{Snapshot, WRITES};
use crate::model::Model;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const UPGRADE_MARKER: &str = "upgrade-in-progress";
const LOCK_FILE: &str = "agent.lock";
const FORMAT: &str = "roboconf-agent-state";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    schema: u32,
    written_by: String,
    sha256: String,
}

/// A verified state file.
#[derive(Debug)]
pub struct Stored {
    pub schema: u32,
    pub written_by: String,
    pub sha256: String,
    pub snapshot: Snapshot,
}

pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads and verifies the state file. Ok(None) when there is none yet (a
/// fresh install). Corruption and unknown schemas are `Exit` errors with
/// status 78 and say what to do.
pub fn read(state_dir: &Path) -> Result<Option<Stored>> {
    let path = state_file(state_dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the state file {}", path.display()))
        }
    };
    let corrupt = |why: String| {
        Exit::new(
            BAD_STATE,
            format!(
                "state file {} is corrupt: {why}. Restore it from the snapshot taken before the last \
                 upgrade, or move it away to start with an empty state",
                path.display()
            ),
        )
    };
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line".into()))?;
    let (head, payload) = (&bytes[..newline], &bytes[newline + 1..]);
    let header: Header = serde_json::from_slice(head)
        .map_err(|e| corrupt(format!("header line is not valid: {e}")))?;
    if header.format != FORMAT {
        return Err(corrupt(format!(
            "format is {:?}, expected {FORMAT:?}",
            header.format
        ))
        .into());
    }
    if header.schema == 0 || header.schema > WRITES {
        return Err(Exit::new(
            BAD_STATE,
            format!(
                "state file {} has schema {}, written by roboconf-agent {}; this roboconf-agent {VERSION} \
                 knows schemas 1 to {WRITES} only. Run roboconf-agent {} (or newer) instead, or migrate the \
                 state down with it first: `roboconf-agent state migrate --to {WRITES}`",
                path.display(),
                header.schema,
                header.written_by,
                header.written_by
            ),
        )
        .into());
    }
    let actual = sha256_hex(payload);
    if actual != header.sha256 {
        return Err(corrupt(format!(
            "sha256 of the payload is {actual}, the header says {}",
            header.sha256
        ))
        .into());
    }
    let snapshot = Snapshot::parse(header.schema, payload).map_err(corrupt)?;
    Ok(Some(Stored {
        schema: header.schema,
        written_by: header.written_by,
        sha256: actual,
        snapshot,
    }))
}

/// Reads the state and brings it to the in-memory model (migrating up in
/// memory if it is older than this build writes). Also returns what was read.
pub fn load_model(state_dir: &Path) -> Result<(Model, Option<Stored>)> {
    let Some(stored) = read(state_dir)? else {
        return Ok((Model::new(), None));
    };
    let model = stored.snapshot.clone().into_model().map_err(|e| {
        Exit::new(
            BAD_STATE,
            format!(
                "state file {} passed its checksum but is inconsistent: {e}. Restore it from the snapshot \
                 taken before the last upgrade",
                state_file(state_dir).display()
            ),
        )
    })?;
    Ok((model, Some(stored)))
}

/// Writes a snapshot as the state file, atomically.
pub fn write(state_dir: &Path, snapshot: &Snapshot) -> Result<()> {
    let payload = snapshot.to_payload();
    let header = Header {
        format: FORMAT.into(),
        schema: snapshot.schema(),
        written_by: VERSION.into(),
        sha256: sha256_hex(&payload),
    };
    let mut bytes = serde_json::to_vec(&header).expect("header serializes");
    bytes.push(b'\n');
    bytes.extend_from_slice(&payload);
    atomic_write(state_dir, STATE_FILE, &bytes)
}

/// Writes the model in the schema this build writes.
pub fn save_model(state_dir: &Path, model: &Model) -> Result<()> {
    let snapshot = Snapshot::from_model(model, WRITES)
        .map_err(|e| anyhow::anyhow!("cannot convert the state to schema {WRITES}: {e}"))?;
    write(state_dir, &snapshot)
}

/// Replaces `dir/name` so that a crash leaves either the old or the new file:
/// the data reaches the disk before the rename, and the rename reaches the
/// disk before we return. The temporary file is always a new one (`O_EXCL`,
/// which never follows a link left in its place), and the rename replaces
/// whatever the name was.
pub fn atomic_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let what = || format!("cannot write {}", target.display());
    refuse_root_in_users_dir(dir)?;
    // A leftover of a crash, or anything else under that name: its name
    // goes, whatever it points to stays untouched.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(what),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(what)?;
    f.write_all(bytes).with_context(what)?;
    f.sync_all().with_context(what)?;
    drop(f);
    fs::rename(&tmp, &target).with_context(what)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(what)?;
    Ok(())
}

/// The agent's state is written by the agent's user: the package's hook
/// runs this program as that user. Root writing here would leave files the
/// agent cannot use, and would act on names the agent's user controls
/// (docs/SECURITY.md): refused, with the command to use instead.
fn refuse_root_in_users_dir(dir: &Path) -> Result<()> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let owner = match fs::metadata(dir) {
        Ok(meta) => meta.uid(),
        Err(_) => return Ok(()),
    };
    if owner != 0 {
        anyhow::bail!(
            "refusing to write the state in {} as root: it belongs to uid {owner}. Run this as the \
             agent's user, e.g. `runuser -u roboconf-agent -- roboconf-agent ...`",
            dir.display()
        );
    }
    Ok(())
}

/// Exclusive hold on a state directory: the running agent keeps it for its
/// lifetime, `state migrate` for its duration, so they never write at once.
/// The kernel drops the lock when the process dies, even by SIGKILL.
pub struct StateLock {
    _file: File,
}

pub fn lock(state_dir: &Path) -> Result<StateLock> {
    refuse_root_in_users_dir(state_dir)?;
    let path = state_dir.join(LOCK_FILE);
    let mut file = open_lock_file(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        anyhow::bail!(
            "another roboconf-agent process (pid {}) is using the state directory {} (it holds {}); \
             stop it first (`roboconf-agent ctl stop-for-upgrade`, or stop the service)",
            holder.trim(),
            state_dir.display(),
            path.display()
        );
    }
    file.set_len(0)
        .and_then(|_| write!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot record our pid in {}", path.display()))?;
    Ok(StateLock { _file: file })
}

/// Opens the lock file, a regular file of its own: never through a link,
/// never a FIFO (which would block). Anything else under its name is
/// removed first: the name is ours, what it points to is not.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
    };
    let file = match open() {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            fs::remove_file(path)?;
            open()?
        }
        other => other?,
    };
    if file.metadata()?.file_type().is_file() {
        return Ok(file);
    }
    drop(file);
    fs::remove_file(path)?;
    open()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Instruction;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("roboconf-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn write_then_read_verifies() {
        let dir = tempdir("rw");
        let mut m = Model::new();
        m.enqueue(Instruction::Add {
            path: "/vm".into(),
            component: "VM".into(),
        });
        save_model(&dir, &m).unwrap();
        let (back, stored) = load_model(&dir).unwrap();
        assert_eq!(back, m);
        assert_eq!(stored.unwrap().schema, WRITES);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_changed_byte_is_caught() {
        let dir = tempdir("flip");
        save_model(&dir, &Model::new()).unwrap();
        let path = state_file(&dir);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        fs::write(&path, bytes).unwrap();
        let err = read(&dir).unwrap_err().downcast::<Exit>().unwrap();
        assert_eq!(err.code, BAD_STATE);
        assert!(err.message.contains("sha256"), "{}", err.message);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_lock_is_exclusive() {
        let dir = tempdir("lock");
        let held = lock(&dir).unwrap();
        let err = lock(&dir).err().unwrap().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        lock(&dir).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    /// Links and FIFOs the agent's user (or anyone with its rights) left
    /// under the names the state code writes: nothing is followed or
    /// blocked on, the state is written, and the link's target is intact.
    #[test]
    fn planted_names_are_replaced_not_followed() {
        let dir = tempdir("planted");
        let canary = dir.join("canary");
        fs::write(&canary, "canary").unwrap();
        let state_dir = dir.join("state");
        fs::create_dir(&state_dir).unwrap();
        std::os::unix::fs::symlink(&canary, state_dir.join(".state.json.tmp")).unwrap();
        std::os::unix::fs::symlink(&canary, state_dir.join(LOCK_FILE)).unwrap();
        save_model(&state_dir, &Model::new()).unwrap();
        let held = lock(&state_dir).unwrap();
        assert!(fs::symlink_metadata(state_dir.join(LOCK_FILE))
            .unwrap()
            .is_file());
        drop(held);
        fs::remove_file(state_dir.join(LOCK_FILE)).unwrap();
        let fifo = std::ffi::CString::new(state_dir.join(LOCK_FILE).as_os_str().as_encoded_bytes())
            .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        drop(lock(&state_dir).unwrap());
        assert_eq!(fs::read_to_string(&canary).unwrap(), "canary");
        assert!(read(&state_dir).unwrap().is_some());
        fs::remove_dir_all(dir).unwrap();
    }

    /// Root does not write a state directory that belongs to someone else.
    #[test]
    fn root_is_refused_in_the_users_directory() {
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "run as root, as ci/test does"
        );
        let dir = tempdir("not-roots");
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let err = format!("{:#}", save_model(&dir, &Model::new()).unwrap_err());
        assert!(err.contains("as root") && err.contains("runuser"), "{err}");
        let err = format!("{:#}", lock(&dir).err().unwrap());
        assert!(err.contains("as root"), "{err}");
        assert!(fs::read_dir(&dir).unwrap().next().is_none());
        fs::remove_dir_all(dir).unwrap();
    }
}
