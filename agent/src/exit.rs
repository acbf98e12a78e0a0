//! Exit statuses that callers act on. The package's hooks and the systemd unit
//! (RestartPreventExitStatus=75) rely on these numbers; docs/PROTOCOL.md lists them.
use std::fmt;

/// An upgrade-in-progress marker is present: the agent refuses to start on
/// state that an upgrade is changing (EX_TEMPFAIL).
pub const UPGRADE_IN_PROGRESS: i32 = 75;
/// The state's schema is newer than this build knows, or the state is corrupt
/// (checksum, header or layout): EX_CONFIG, as a restart cannot help.
pub const BAD_STATE: i32 = 78;

/// An error that carries the exit status the process should end with.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    pub fn new(code: i32, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}
