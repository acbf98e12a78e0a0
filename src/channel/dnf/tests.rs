//! Tests of the dnf backend: dnf history rows, and keys compared by full
//! fingerprint (with a real rpm database under a temporary root).

use super::*;
use crate::channel::gpg::primary_fingerprints;

#[test]
fn history_rows_read_as_date_action_and_command() {
    assert_eq!(
        history_row(
            "     5 | -q -y --disableplugin=ve | 2026-11-26 01:39 | Downgrade      |    1 EE"
        ),
        "2026-11-26 01:39: Downgrade (dnf transaction 5: -q -y --disableplugin=ve)"
    );
    assert_eq!(history_row("garbled"), "garbled");
}

/// Another key whose fingerprint ends in the same 8 (or 16) digits.
fn same_short_id(fpr: &str) -> String {
    let first = if fpr.starts_with('0') { "1" } else { "0" };
    format!("{first}{}", &fpr[1..])
}

#[test]
fn keys_are_compared_by_full_fingerprint_not_short_id() {
    let fpr = "BA3B96BBB528E89CEDA7681440DB1EFC176DC986";
    let keys = vec![("gpg-pubkey-176dc986-6b1616d5".to_string(), fpr.to_string())];
    assert_eq!(find_key(&keys, fpr), Some("gpg-pubkey-176dc986-6b1616d5"));
    assert_eq!(
        find_key(&keys, "ba3b 96bb b528 e89c eda7  6814 40db 1efc 176d c986"),
        Some("gpg-pubkey-176dc986-6b1616d5"),
        "spacing and case are the admin's"
    );
    // Same short id (176DC986) and long id (40DB1EFC176DC986): another key.
    assert_eq!(find_key(&keys, &same_short_id(fpr)), None);
    assert_eq!(
        find_key(&keys, "176DC986"),
        None,
        "a short id is no fingerprint"
    );
    assert_eq!(find_key(&keys, "40DB1EFC176DC986"), None);
    assert!(!same_fingerprint("176DC986", "176dc986"));
}

/// A root with an rpm database (for `rpm --root`) and /usr/bin/dnf.
fn rpm_root(name: &str) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("ferry-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("etc/pki/rpm-gpg")).unwrap();
    fs::write(root.join("usr/bin/dnf"), "").unwrap();
    output(Command::new("rpm").arg("--root").arg(&root).arg("--initdb")).unwrap();
    root
}

/// With real rpm and gpg: a key rpm already has is not imported again;
/// one whose fingerprint shares only the short id with it is not taken
/// for it (the key file, which holds the other key, is refused); a new
/// key is imported, recorded by its full package name and removed.
#[test]
fn rpm_import_checks_full_fingerprints() {
    let keys = TempGpg::new().unwrap();
    output(keys.gpg_with_agent().args([
        "--passphrase",
        "",
        "--quick-gen-key",
        "ferry test <test@example.org>",
        "ed25519",
        "sign",
        "never",
    ]))
    .unwrap();
    let listing = output(keys.gpg().args(["--with-colons", "--list-keys"])).unwrap();
    let fpr = primary_fingerprints(&listing).remove(0);
    let armored = output(keys.gpg().args(["--armor", "--export", &fpr])).unwrap();
    let pkg = "ferry-test-agent";

    // rpm already trusts the key.
    let root = rpm_root("rpm-key-present");
    let host = Host::open(&root, pkg, Some("dnf")).unwrap();
    fs::write(host.path(&key_path(pkg)), &armored).unwrap();
    output(rpm(&host).arg("--import").arg(host.path(&key_path(pkg)))).unwrap();
    let gpg = TempGpg::new().unwrap();
    let mut rec = Record::default();
    let mut out = Report::new();
    assert!(!import_key(&host, &gpg, &fpr, &armored, &mut rec, false, &mut out).unwrap());
    assert_eq!(
        rec.rpm_key, None,
        "a key ferry did not import is not ferry's"
    );
    // The admin's fingerprint shares the short id only: not that key,
    // and the key file (the same key) is refused, not imported.
    let other = same_short_id(&fpr);
    let err = import_key(&host, &gpg, &other, &armored, &mut rec, false, &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("not the one with fingerprint {other}")),
        "{err}"
    );
    assert_eq!(rec.rpm_key, None);
    fs::remove_dir_all(&root).unwrap();

    // rpm does not have it: dry run, import, remove.
    let root = rpm_root("rpm-key-absent");
    let host = Host::open(&root, pkg, Some("dnf")).unwrap();
    let mut out = Report::new();
    assert!(import_key(&host, &gpg, &fpr, &armored, &mut rec, true, &mut out).unwrap());
    assert!(
        out.text()
            .contains(&format!("would rpm --import {}", key_path(pkg))),
        "{}",
        out.text()
    );
    // --json's account of the dry run: the import it would do.
    assert_eq!(
        out.changes()
            .iter()
            .map(|c| (c.path.as_str(), c.action))
            .collect::<Vec<_>>(),
        [("rpm key", "import")]
    );
    assert!(
        installed_keys(&host, &gpg).unwrap().is_empty(),
        "a dry run imported"
    );
    fs::write(host.path(&key_path(pkg)), &armored).unwrap();
    assert!(import_key(&host, &gpg, &fpr, &armored, &mut rec, false, &mut out).unwrap());
    let short = fpr[fpr.len() - 8..].to_ascii_lowercase();
    let name = rec.rpm_key.clone().unwrap();
    assert!(name.starts_with(&format!("gpg-pubkey-{short}-")), "{name}");
    assert_eq!(
        installed_keys(&host, &gpg).unwrap(),
        vec![(name.clone(), fpr.clone())]
    );
    assert!(!import_key(&host, &gpg, &fpr, &armored, &mut rec, false, &mut out).unwrap());
    remove_key(&host, &mut rec, false, &mut out).unwrap();
    assert!(
        installed_keys(&host, &gpg).unwrap().is_empty(),
        "{}",
        out.text()
    );
    assert_eq!(out.changes().last().unwrap().before, name);
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_versionlock_line_names_its_package_only() {
    assert!(versionlocks("roboconf-agent-0:1.0.0-1.*", "roboconf-agent"));
    assert!(!versionlocks(
        "roboconf-agent-extra-0:1.0.0-1.*",
        "roboconf-agent"
    ));
    assert!(!versionlocks("# Added lock on Mon", "roboconf-agent"));
}

/// The channel's versions come from the repository's own primary index,
/// which the checked repomd.xml names with its checksum.
#[test]
fn the_primary_index_is_found_and_read() {
    let repomd = r#"<repomd xmlns="http://linux.duke.edu/metadata/repo">
  <data type="filelists">
    <checksum type="sha256">aaaa</checksum>
    <location href="repodata/aaaa-filelists.xml.gz"/>
  </data>
  <data type="primary">
    <checksum type="sha256">bb5b</checksum>
    <open-checksum type="sha256">11db</open-checksum>
    <location href="repodata/bb5b-primary.xml.gz"/>
  </data>
</repomd>"#;
    assert_eq!(
        primary_location(repomd),
        Some((
            "repodata/bb5b-primary.xml.gz".into(),
            "sha256".into(),
            "bb5b".into()
        ))
    );
    assert_eq!(primary_location("<repomd></repomd>"), None);
    let entry_for = |name: &str, arch: &str, ver: &str| {
        format!(
            "<package type=\"rpm\">\n  <name>{name}</name>\n  <arch>{arch}</arch>\n  \
             <version epoch=\"0\" ver=\"{ver}\" rel=\"1\"/>\n  <format>\n    \
             <rpm:entry name=\"roboconf-agent\" flags=\"EQ\" epoch=\"0\" ver=\"9.9.9\" rel=\"1\"/>\n  \
             </format>\n</package>\n"
        )
    };
    let entry = |name: &str, ver: &str| entry_for(name, "x86_64", ver);
    let xml = format!(
        "<metadata packages=\"6\">\n{}{}{}{}{}{}</metadata>",
        entry("ferry", "1.0.0"),
        entry("roboconf-agent", "1.1.0"),
        entry("roboconf-agent-extras", "2.0.0"),
        entry("roboconf-agent", "1.0.0"),
        entry_for("roboconf-agent", "aarch64", "1.2.0"),
        entry_for("roboconf-agent", "noarch", "0.9.0"),
    );
    assert_eq!(
        primary_versions(&xml, "roboconf-agent", "x86_64"),
        vec!["1.1.0-1", "1.0.0-1", "0.9.0-1"],
        "another architecture's version is not this machine's"
    );
    assert_eq!(
        primary_versions(&xml, "roboconf-agent", "aarch64"),
        vec!["1.2.0-1", "0.9.0-1"]
    );
}

/// dnf's rpm log says the last change of the package, and which version
/// it replaced, without starting dnf.
#[test]
fn the_last_change_is_read_from_dnfs_rpm_log() {
    let log = "\
2026-12-07T17:10:01+0000 SUBDEBUG Installed: roboconf-agent-1.0.0-1.x86_64
2026-12-07T17:10:01+0000 INFO ferry-hook: finish: done
2026-12-07T17:14:49+0000 SUBDEBUG Upgrade: roboconf-agent-1.1.0-1.x86_64
2026-12-07T17:14:49+0000 INFO ferry-hook: prepare: prepared
2026-12-07T17:14:49+0000 SUBDEBUG Upgraded: roboconf-agent-1.0.0-1.x86_64
2026-12-07T17:15:09+0000 SUBDEBUG Upgrade: roboconf-agent-extras-2.0.0-1.x86_64
2026-12-07T17:15:09+0000 SUBDEBUG Upgraded: roboconf-agent-extras-1.0.0-1.x86_64
2026-12-07T17:15:10+0000 INFO --- logging initialized ---
";
    assert_eq!(
        last_rpm_change(log, "roboconf-agent").as_deref(),
        Some("2026-12-07T17:14:49+0000: Upgrade 1.0.0-1 -> 1.1.0-1 (dnf.rpm.log)")
    );
    let down = format!(
        "{log}2026-12-07T18:00:00+0000 SUBDEBUG Downgrade: roboconf-agent-1.0.0-1.x86_64\n\
         2026-12-07T18:00:00+0000 SUBDEBUG Downgraded: roboconf-agent-1.1.0-1.x86_64\n"
    );
    assert_eq!(
        last_rpm_change(&down, "roboconf-agent").as_deref(),
        Some("2026-12-07T18:00:00+0000: Downgrade 1.1.0-1 -> 1.0.0-1 (dnf.rpm.log)")
    );
    assert_eq!(
        last_rpm_change(log.lines().next().unwrap(), "roboconf-agent").as_deref(),
        Some("2026-12-07T17:10:01+0000: Installed 1.0.0-1 (dnf.rpm.log)")
    );
    assert_eq!(last_rpm_change(log, "other-agent"), None);
    assert_eq!(last_rpm_change("", "roboconf-agent"), None);
}
