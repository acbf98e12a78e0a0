//! ferry's upgrade hook: the program every ferry package ships at
//! `/usr/libexec/<name>/ferry-hook`, and the formats it shares with ferry
//! (the package manifest, snapshots). See docs/UPGRADES.md.

pub mod package;
pub mod snapshot;
