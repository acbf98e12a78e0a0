//! ferry: state-safe `.deb` and `.rpm` packages of VM agents, built from one
//! descriptor, published to signed repositories and followed by the OS's own
//! automatic update tools.
//!
//! The flow is one-way: [`descriptor`] is parsed and validated once,
//! [`plan`] resolves it into files and rendered [`hooks`], and each
//! [`build`] packager lays the plan out in its format.

pub mod bench;
pub mod build;
pub mod channel;
pub mod date;
pub mod descriptor;
pub mod exit;
pub mod hooks;
pub mod plan;
pub mod repo;
pub mod state;
pub mod version;
