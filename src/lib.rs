//! ferry: state-safe `.deb` and `.rpm` packages of VM agents, built from one
//! descriptor, published to signed repositories and followed by the OS's own
//! automatic update tools.
//!
//! The flow is one-way (docs/ARCHITECTURE.md): [`descriptor`] is parsed
//! and validated once, [`manifest`] derives the package manifest from it
//! once, [`scripts`] renders the maintainer scripts from both, [`plan`]
//! gathers files, metadata and scripts, and each [`build`] packager lays
//! the plan out in its format.

pub mod bench;
pub mod build;
pub mod channel;
pub mod date;
pub mod descriptor;
pub mod digest;
pub mod enroll;
pub mod exit;
pub mod format;
pub mod fsutil;
pub mod holds;
pub mod info;
pub mod manifest;
pub mod migration;
pub mod names;
pub mod plan;
pub mod repo;
pub mod scripts;
pub mod state;
pub mod version;
