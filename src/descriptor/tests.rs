//! Unit tests of the descriptor's parsing and validation.

use super::*;

#[test]
fn suggests_closest_key() {
    let text = "[package]\nname = \"a\"\nverison = \"1.0.0\"\n";
    let err = parse(Path::new("x.toml"), text).unwrap_err();
    assert_eq!(err.field, "verison");
    assert!(err.fix.contains("did you mean `version`"), "{err}");
    assert!(err.problem.contains("line 3"), "{err}");
}

#[test]
fn modes() {
    assert_eq!(parse_mode("0755"), Ok(0o755));
    assert!(parse_mode("0799").is_err());
    assert!(parse_mode("0777").is_err());
    assert!(parse_mode("4755").is_err());
}

const REFERENCE_UNIT: &str = include_str!("../../pkg/roboconf-agent.service");

/// A unit with exactly the hardening set, as ferry suggests it.
fn hardened_unit() -> String {
    let mut unit = String::from("[Unit]\nDescription=x\n\n[Service]\nUser=agent\n");
    for (directive, value) in HARDENING {
        unit.push_str(&format!("{directive}={value}\n"));
    }
    unit
}

#[test]
fn a_unit_with_the_hardening_set_gets_no_warning() {
    // hardened_unit() has `CapabilityBoundingSet=`: empty keeps no
    // capability, which is the hardening, not a reset.
    assert_eq!(missing_hardening(&hardened_unit()), Vec::<&str>::new());
    assert_eq!(missing_hardening(REFERENCE_UNIT), Vec::<&str>::new());
    assert_eq!(
        hardening_warning(Path::new("pkg/roboconf-agent.service"), REFERENCE_UNIT),
        None
    );
    // Spaces around `=`, continuation lines, several lines of a list.
    let spaced = hardened_unit()
        .replace("ProtectClock=yes", "ProtectClock = yes")
        .replace(
            "SystemCallFilter=@system-service",
            "SystemCallFilter=\nSystemCallFilter=@system-service \\\n  @network-io",
        );
    assert_eq!(missing_hardening(&spaced), Vec::<&str>::new(), "{spaced}");
}

#[test]
fn a_unit_missing_a_directive_is_warned_about_by_name() {
    let unit = hardened_unit().replace("ProtectClock=yes\n", "");
    let w = hardening_warning(Path::new("pkg/agent.service"), &unit).expect("a warning");
    assert_eq!(w.missing, vec!["ProtectClock"]);
    assert_eq!(w.file, Path::new("pkg/agent.service"));
    let shown = w.to_string();
    assert!(shown.starts_with("pkg/agent.service: warning: "), "{shown}");
    assert!(
        shown.contains("lacks 1 of ferry's hardening set: ProtectClock"),
        "{shown}"
    );
    assert!(
        shown.contains("fix: add to its [Service] section ProtectClock=yes "),
        "{shown}"
    );
    assert!(shown.contains("docs/SECURITY.md"), "{shown}");
    // Turned off, reset, or in another section: missing too.
    for (from, to, missing) in [
        (
            "ProtectHostname=yes",
            "ProtectHostname=no",
            "ProtectHostname",
        ),
        (
            "NoNewPrivileges=yes",
            "NoNewPrivileges=false",
            "NoNewPrivileges",
        ),
        (
            "ProtectProc=invisible",
            "ProtectProc=default",
            "ProtectProc",
        ),
        ("UMask=0027", "UMask=0022", "UMask"),
        (
            "RestrictAddressFamilies=AF_UNIX",
            "RestrictAddressFamilies=AF_UNIX\nRestrictAddressFamilies=",
            "RestrictAddressFamilies",
        ),
        (
            "LockPersonality=yes",
            "#LockPersonality=yes",
            "LockPersonality",
        ),
    ] {
        let unit = hardened_unit().replace(from, to);
        assert_eq!(missing_hardening(&unit), vec![missing], "{unit}");
    }
    let moved = hardened_unit()
        .replace("RemoveIPC=yes\n", "")
        .replace("[Unit]\n", "[Unit]\nRemoveIPC=yes\n");
    assert_eq!(missing_hardening(&moved), vec!["RemoveIPC"]);
    // A bare unit lacks all of it, in the table's order.
    let all: Vec<&str> = HARDENING.iter().map(|(d, _)| *d).collect();
    assert_eq!(missing_hardening("[Service]\nUser=agent\n"), all);
}

/// docs/SECURITY.md lists exactly the set the code checks.
#[test]
fn the_documented_hardening_set_is_the_checked_one() {
    let doc = include_str!("../../docs/SECURITY.md");
    let table = doc
        .split("### The hardening set ferry expects")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("docs/SECURITY.md has the hardening set's section");
    let documented: Vec<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(d, _)| d.to_string()))
        .collect();
    let checked: Vec<String> = HARDENING.iter().map(|(d, v)| format!("{d}={v}")).collect();
    assert_eq!(documented, checked);
}

#[test]
fn closest_needs_to_be_close() {
    let known = vec!["source".to_string(), "dest".to_string()];
    assert_eq!(closest("sorce", &known).as_deref(), Some("source"));
    assert_eq!(closest("banana", &known), None);
}

/// A descriptor in a directory of its own, loaded.
fn load_text(name: &str, text: &str) -> Result<Validated, DescriptorError> {
    let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, text).unwrap();
    load(&file, None)
}

const PLAIN: &str = r#"
[package]
name = "tool"
version = "1.0.0"
maintainer = "A Maintainer <a@example.org>"
summary = "a command-line tool"
description = "It does one thing."
license = "Apache-2.0"

[[asset]]
source = "tool"
dest = "/usr/bin/tool"
mode = "0755"
"#;

#[test]
fn a_plain_package_needs_no_service_state_or_hooks() {
    let v = load_text("plain", PLAIN).unwrap();
    assert!(v.descriptor.agent().is_none());
    assert_eq!(v.warnings, Vec::new());
}

#[test]
fn half_an_agent_is_refused_naming_the_missing_section() {
    for (section, missing, fix) in [
        (
            "[service]\nunit = \"tool.service\"\nuser = \"tool\"\ngroup = \"tool\"\n",
            "state",
            "add [state]",
        ),
        (
            "[state]\nschema = 1\ndirectories = [\"/var/lib/tool\"]\n",
            "service",
            "add [service]",
        ),
        ("[hooks]\nkeep_snapshots = 2\n", "hooks", "remove [hooks]"),
    ] {
        let err = load_text("half", &format!("{PLAIN}\n{section}")).unwrap_err();
        assert_eq!(err.field, missing, "{err}");
        assert!(err.fix.contains(fix), "{err}");
        assert!(err.to_string().contains("ferry.toml: field"), "{err}");
    }
}

#[test]
fn a_lintian_override_needs_a_tag_and_its_reason() {
    let with = |tag: &str, reason: &str| {
        format!("{PLAIN}\n[[lintian_override]]\ntag = \"{tag}\"\nreason = \"{reason}\"\n")
    };
    let v = load_text(
        "override",
        &with("uses-dpkg-database-directly [usr/bin/tool]", "why"),
    );
    assert_eq!(v.unwrap().descriptor.lintian_overrides.len(), 1);
    for (tag, reason, field) in [
        ("Not A Tag", "why", "lintian_override[0].tag"),
        ("", "why", "lintian_override[0].tag"),
        (
            "uses-dpkg-database-directly",
            " ",
            "lintian_override[0].reason",
        ),
    ] {
        let err = load_text("override", &with(tag, reason)).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
}
