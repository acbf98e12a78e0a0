//! `ferry channel`: make the OS's own automatic update tool
//! (unattended-upgrades on apt hosts, dnf-automatic on dnf hosts) follow one
//! channel of a repository made by `ferry publish`, and undo it exactly.
//!
//! Everything ferry writes is listed, with checksums, in
//! `/var/lib/ferry/channel/<package>.json`; `disable` removes exactly those
//! files and refuses to delete one somebody changed. See docs/CHANNEL.md.

//!
//! `backend` says what an updater backend does and lists them (`apt`,
//! `dnf`); `commands` and `status` drive any backend; `host`, `gpg`,
//! `fetch`, `files`, `write` and `window` are what they share.

pub mod apt;
pub mod backend;
mod commands;
pub mod dnf;
mod fetch;
pub mod files;
pub(crate) mod gpg;
pub mod host;
pub mod report;
mod status;
pub mod window;
mod write;

use std::path::PathBuf;

pub use backend::{Backend, BACKENDS};
pub use commands::{disable, enable, install, pin, pin_after_migration, rollback, unpin};
pub use host::Host;
pub use report::Report;
pub use status::{read_upgrade_log, status, Status};

/// What `enable` is asked to do (`ferry channel enable`'s options).
#[derive(Debug, Clone)]
pub struct EnableArgs {
    /// The repository made by `ferry publish`: file:///srv/repo or https://…
    /// (the directory holding apt/ and rpm/).
    pub repo: String,
    /// The repository's public key (DIR/signing-key.asc).
    pub key: PathBuf,
    /// The key's full fingerprint, obtained out of band; a key with another
    /// fingerprint is refused.
    pub fingerprint: String,
    /// The channel to follow; it must exist in the repository.
    pub channel: String,
    /// The repository's Origin (read from its Release file by default).
    pub origin: Option<String>,
    /// Maintenance window for the automatic upgrade, `[DAYS] HH:MM-HH:MM`
    /// in local time, e.g. `Mon..Fri 02:00-04:00`.
    pub window: Option<String>,
    /// Print a unified diff of every file it would write; change nothing.
    pub dry_run: bool,
}
