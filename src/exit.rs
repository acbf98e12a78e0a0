//! What `ferry` exits with, so that scripts can tell a refusal (fix the
//! input and run again) from a failure (something broke; nothing changed)
//! and from a partial result (some of the work landed). README.md
//! ("Exit statuses") and `ferry --help` list them.

use std::fmt;

/// Everything asked was done.
pub const OK: u8 = 0;
/// The command failed; what it had begun was undone, nothing changed.
pub const FAILED: u8 = 1;
/// The command line is wrong (clap's own status for usage errors).
pub const USAGE: u8 = 2;
/// The request was refused before anything changed: an invalid descriptor,
/// channel name or version, or a rule of the repository (retention, a
/// version that does not exist). The message names what to fix.
pub const REFUSED: u8 = 3;
/// Some of the work landed before a failure (e.g. `ferry build` wrote the
/// .deb, then the .rpm failed); the message lists what was done.
pub const PARTIAL: u8 = 4;

/// The table printed at the end of `ferry --help`.
pub const HELP: &str = "Exit statuses: 0 done; 1 failed (nothing changed); 2 usage error; \
3 refused before anything changed (fix what the message names); 4 partially done (the message \
lists what landed).";

/// A refusal: the request breaks a rule or names something invalid, and
/// nothing was changed.
#[derive(Debug)]
pub struct Refused(pub anyhow::Error);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Refused {}

/// Marks an error as a refusal (exit status 3).
pub fn refused(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Refused(e))
}

/// Part of the work landed: `done` says what, the source says what failed.
#[derive(Debug)]
pub struct PartiallyDone {
    pub done: Vec<String>,
}

impl fmt::Display for PartiallyDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partially done: {}", self.done.join(", "))
    }
}

impl std::error::Error for PartiallyDone {}

/// The status an error exits with: the most specific kind found in it
/// (partially done, then refused), else failed.
pub fn status_of(e: &anyhow::Error) -> u8 {
    if has::<PartiallyDone>(e) {
        PARTIAL
    } else if has::<Refused>(e) || has::<crate::descriptor::DescriptorError>(e) {
        REFUSED
    } else {
        FAILED
    }
}

/// Whether `e` holds a `T`, as its error, as a context added to it, or as
/// a source in its chain.
fn has<T: std::error::Error + Send + Sync + 'static>(e: &anyhow::Error) -> bool {
    e.downcast_ref::<T>().is_some() || e.chain().any(|c| c.downcast_ref::<T>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    #[test]
    fn the_most_specific_kind_wins() {
        assert_eq!(status_of(&anyhow!("disk full")), FAILED);
        assert_eq!(status_of(&refused(anyhow!("bad channel"))), REFUSED);
        assert_eq!(
            status_of(&refused(anyhow!("bad")).context("publishing")),
            REFUSED
        );
        let partial = anyhow!("no space left").context(PartiallyDone {
            done: vec!["dist/a.deb".into()],
        });
        assert_eq!(status_of(&partial), PARTIAL);
        assert_eq!(status_of(&partial.context("building")), PARTIAL);
    }
}
