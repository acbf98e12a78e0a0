//! ferry's upgrade hook: the program every ferry package ships at
//! `/usr/libexec/<name>/ferry-hook`, and the formats it shares with ferry
//! (the package manifest, snapshots, and how the agent is asked things as its
//! own user). See docs/UPGRADES.md.

// Tests build their fixtures by path, as the agent's user would.
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod account;
pub mod confined;
pub mod package;
pub mod snapshot;
pub mod system;
