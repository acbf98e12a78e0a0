//! Retention: a channel keeps the newest N versions of each package (per
//! format and architecture, ordered as that format's package manager orders
//! them), plus every version marked kept, so that a rollback target is never
//! pruned.

use std::collections::{BTreeMap, BTreeSet};

use super::state::{Format, Published, RepoState};
use super::version;

/// Ids of the channel's members that retention removes.
pub fn pruned(state: &RepoState, channel: &str, keep: usize) -> BTreeSet<String> {
    let mut groups: BTreeMap<(Format, &str, &str), Vec<&Published>> = BTreeMap::new();
    for package in state.members(channel) {
        groups
            .entry((package.format, package.name.as_str(), package.arch.as_str()))
            .or_default()
            .push(package);
    }
    let mut pruned = BTreeSet::new();
    for ((format, _, _), mut versions) in groups {
        // Newest first.
        versions.sort_by(|a, b| version::compare(format, &b.version, &a.version));
        for package in versions.into_iter().skip(keep) {
            if !is_kept(state, &package.version) {
                pruned.insert(package.id());
            }
        }
    }
    pruned
}

pub fn is_kept(state: &RepoState, full_version: &str) -> bool {
    state
        .kept
        .iter()
        .any(|kept| version::names(kept, full_version))
}
