//! What ferry reads of the agent's systemd unit: the `[Service]` section's
//! settings, and whether the unit carries ferry's hardening set.

use std::path::Path;

use super::DescriptorWarning;

/// The hardening set ferry expects of an agent's unit, with the value it
/// suggests for each: the list in docs/SECURITY.md ("The unit's sandbox"),
/// kept here once. `ferry build` warns when the unit lacks any of them.
pub const HARDENING: &[(&str, &str)] = &[
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("RestrictSUIDSGID", "yes"),
    ("ProtectSystem", "strict"),
    ("PrivateTmp", "yes"),
    ("ProtectHome", "read-only"),
    ("PrivateMounts", "yes"),
    ("UMask", "0027"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("LockPersonality", "yes"),
    ("RemoveIPC", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("RestrictAddressFamilies", "AF_UNIX"),
];

/// Every assignment of the unit's `[Service]` section, in order
/// (`Key=value`, spaces around `=` allowed, `\` continuations joined,
/// comments left out).
pub(super) fn service_assignments(unit: &str) -> Vec<(String, String)> {
    let mut assignments = Vec::new();
    let mut in_service = false;
    let mut pending = String::new();
    for raw in unit.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(rest) = line.strip_suffix('\\') {
            pending.push_str(rest);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if let (true, Some((key, value))) = (in_service, line.split_once('=')) {
            assignments.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    assignments
}

/// The last value each key of the unit's `[Service]` section is assigned.
pub(super) fn service_settings(unit: &str) -> std::collections::BTreeMap<String, String> {
    service_assignments(unit).into_iter().collect()
}

/// Whether `value` leaves `directive` off: not set, reset (empty, but for
/// CapabilityBoundingSet, where empty keeps no capability), turned off, or a
/// UMask that lets others read.
fn weak_setting(directive: &str, value: Option<&String>) -> bool {
    let Some(value) = value else {
        return true;
    };
    if value.is_empty() {
        return directive != "CapabilityBoundingSet";
    }
    if ["no", "false", "off", "0", "default"].contains(&value.to_ascii_lowercase().as_str()) {
        return true;
    }
    directive == "UMask" && u32::from_str_radix(value, 8).map_or(true, |m| m & 0o007 != 0o007)
}

/// The directives of [`HARDENING`] the unit lacks (or turns off).
pub fn missing_hardening(unit: &str) -> Vec<&'static str> {
    let settings = service_settings(unit);
    HARDENING
        .iter()
        .filter(|(directive, _)| weak_setting(directive, settings.get(*directive)))
        .map(|(directive, _)| *directive)
        .collect()
}

/// The warning for a unit that lacks part of the hardening set, if it does.
pub fn hardening_warning(unit_file: &Path, unit: &str) -> Option<DescriptorWarning> {
    let missing = missing_hardening(unit);
    if missing.is_empty() {
        return None;
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|m| {
            let value = HARDENING
                .iter()
                .find(|(d, _)| d == m)
                .map_or("", |(_, v)| *v);
            format!("{m}={value}")
        })
        .collect();
    Some(DescriptorWarning {
        file: unit_file.to_path_buf(),
        problem: format!(
            "the unit lacks {} of ferry's hardening set: {}",
            missing.len(),
            missing.join(", ")
        ),
        missing: missing.iter().map(|m| m.to_string()).collect(),
        fix: format!(
            "add to its [Service] section {} (ferry's docs/SECURITY.md, \"The unit's sandbox\", \
             says what each forbids the agent and its recipes; RestrictAddressFamilies= lists \
             AF_INET AF_INET6 too if the agent talks to the network)",
            lines.join(" ")
        ),
    })
}
