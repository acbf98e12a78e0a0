//! `ferry channel`: the OS's own automatic update tool made to follow a
//! channel of a repository made by `ferry publish`, and undone exactly.
//!
//! Root is required (gpg keys, lab hosts booted with systemd-nspawn); these
//! tests never skip. Debian packages: ci/apt-packages.channel. What each test
//! proves is listed in docs/CHANNEL.md.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::agent::{agent, header, sorted_tree, version_running, wait_answering, AGENT, STATE};
use support::lab::{Host, HostKind};
use support::probe::{self, Variant};
use support::signing::Signer;
use support::Scratch;
#[path = "channel/helpers.rs"]
mod helpers;
use helpers::*;

/// An alternate root (`--root`) that looks like an apt host, with a
/// repository made by `ferry publish` inside it at /srv/repo: the file
/// handling, refusals, dry run, idempotency and exact undo, without booting.
#[test]
fn enable_disable_on_an_alternate_root_are_exact_idempotent_and_refuse_bad_input() {
    support::require_root();
    let scratch = Scratch::new("ferry-channel-root");
    let root = scratch.path().join("root");
    for d in [
        "usr/bin",
        "var/lib/dpkg",
        "etc/apt/apt.conf.d",
        "etc/apt/keyrings",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("usr/bin/apt-get"), "").unwrap();
    // The admin's own periodic settings: ferry must leave them alone.
    fs::write(
        root.join("etc/apt/apt.conf.d/20auto-upgrades"),
        "APT::Periodic::Unattended-Upgrade \"0\";\n",
    )
    .unwrap();
    let signer = Signer::new("channel");
    let other = Signer::new("other");
    let fpr = signer.fingerprint().to_string();
    let debs = scratch.path().join("debs");
    fs::create_dir_all(&debs).unwrap();
    let deb = probe::deb("1.0.0-1", &debs);
    let repo = root.join("srv/repo");
    publish(&signer, &repo, "stable", &[&deb]);
    let key = repo.join("signing-key.asc");
    let other_key = scratch.path().join("other.asc");
    fs::write(&other_key, other.public_key_armored()).unwrap();
    let r = root.to_str().unwrap();
    let k = key.to_str().unwrap();
    // `enable` with defaults for every flag that `extra` does not give.
    let enable = |extra: &[&str]| {
        let mut args = vec!["channel", "--root", r, "--package", probe::NAME, "enable"];
        for (flag, value) in [
            ("--repo", "file:///srv/repo"),
            ("--key", k),
            ("--fingerprint", fpr.as_str()),
            ("--window", "Mon..Fri 02:00-04:00"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend_from_slice(extra);
        ferry(&args)
    };
    let etc_before = listing(&root.join("etc"));
    let var_before = listing(&root.join("var"));

    // Bad input: refused, named, nothing changed.
    let other_k = other_key.to_str().unwrap();
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--channel", "nightly"],
            "channel \"nightly\" not found",
        ),
        (vec!["--channel", "a.b"], "channel name \"a.b\" is invalid"),
        (vec!["--window", "Mon..Fri 02:00"], "has no end"),
        (vec!["--window", "Funday 02:00-03:00"], "is not a day"),
        (vec!["--key", other_k], "refusing to trust it"),
        (vec!["--repo", "file:///srv/nothing"], "unreachable"),
    ];
    for (extra, message) in bad {
        let out = enable(&extra);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(text(&out).contains(message), "{extra:?}: {}", text(&out));
        assert_eq!(
            listing(&root.join("etc")),
            etc_before,
            "{extra:?} changed /etc"
        );
    }
    let wrong_package = ferry(&[
        "channel",
        "--root",
        r,
        "enable",
        "--repo",
        "file:///srv/repo",
        "--key",
        k,
        "--fingerprint",
        &fpr,
    ]);
    assert!(
        !wrong_package.status.success()
            && text(&wrong_package)
                .contains("has no package \"roboconf-agent\" (it has: ferry-lab-probe)"),
        "{}",
        text(&wrong_package)
    );
    let wrong_fpr = ferry(&[
        "channel",
        "--root",
        r,
        "--package",
        probe::NAME,
        "enable",
        "--repo",
        "file:///srv/repo",
        "--key",
        k,
        "--fingerprint",
        &"0".repeat(40),
    ]);
    assert!(!wrong_fpr.status.success() && text(&wrong_fpr).contains("refusing to trust it"));
    // Not an apt or dnf host.
    let out = ferry(&[
        "channel",
        "--root",
        scratch.path().to_str().unwrap(),
        "status",
    ]);
    assert!(!out.status.success() && text(&out).contains("neither an apt host"));

    // Dry run: a diff of every file, nothing written.
    let dry = enable(&["--dry-run"]);
    assert!(dry.status.success());
    let dry_text = text(&dry);
    for path in [
        "/etc/apt/keyrings/ferry-ferry-lab-probe.asc",
        "/etc/apt/sources.list.d/ferry-ferry-lab-probe.sources",
        "/etc/apt/apt.conf.d/52ferry-ferry-lab-probe",
        "/etc/apt/apt.conf.d/19ferry-ferry-lab-probe-periodic",
        "/etc/systemd/system/apt-daily-upgrade.timer.d/ferry-ferry-lab-probe.conf",
    ] {
        assert!(
            dry_text.contains(&format!("+++ {path}\n")),
            "{path} not in the diff"
        );
    }
    assert!(dry_text.contains("+Signed-By: /etc/apt/keyrings/ferry-ferry-lab-probe.asc"));
    assert!(dry_text.contains("+OnCalendar=Mon..Fri *-*-* 02:00:00"));
    assert_eq!(listing(&root.join("etc")), etc_before);
    assert_eq!(listing(&root.join("var")), var_before);

    // Enable writes; the Origin is the repository's own.
    assert!(enable(&[]).status.success());
    let release = fs::read_to_string(repo.join("apt/dists/stable/InRelease")).unwrap();
    let origin = release
        .lines()
        .find_map(|l| l.strip_prefix("Origin: "))
        .unwrap();
    let conf = fs::read_to_string(root.join("etc/apt/apt.conf.d/52ferry-ferry-lab-probe")).unwrap();
    assert!(
        conf.contains(&format!("\"origin={origin},archive=stable\"")),
        "{conf}"
    );
    let etc_enabled = listing(&root.join("etc"));
    // A second enable changes nothing, and says so.
    let again = enable(&[]);
    assert!(again.status.success() && text(&again).contains("nothing to change"));
    assert_eq!(listing(&root.join("etc")), etc_enabled);
    // The admin's file is untouched.
    assert!(etc_enabled.iter().any(|l| l.contains("20auto-upgrades")));

    // An admin edits a file ferry wrote: disable refuses, removes nothing.
    let sources = root.join("etc/apt/sources.list.d/ferry-ferry-lab-probe.sources");
    let original = fs::read(&sources).unwrap();
    fs::write(&sources, [&original[..], b"# mine\n"].concat()).unwrap();
    let refused = ferry(&["channel", "--root", r, "--package", probe::NAME, "disable"]);
    assert!(
        !refused.status.success() && text(&refused).contains("was changed since ferry wrote it")
    );
    let refused = enable(&[]);
    assert!(!refused.status.success() && text(&refused).contains("changed by someone else"));
    fs::write(&sources, &original).unwrap();
    assert_eq!(listing(&root.join("etc")), etc_enabled);

    // Disable: dry run first, then /etc exactly as before enable.
    let dry = ferry(&[
        "channel",
        "--root",
        r,
        "--package",
        probe::NAME,
        "disable",
        "--dry-run",
    ]);
    assert!(
        dry.status.success()
            && text(&dry).contains("would remove /etc/apt/apt.conf.d/52ferry-ferry-lab-probe")
    );
    assert_eq!(listing(&root.join("etc")), etc_enabled);
    assert!(
        ferry(&["channel", "--root", r, "--package", probe::NAME, "disable"])
            .status
            .success()
    );
    assert_eq!(diff_listing(&etc_before, &listing(&root.join("etc"))), "");
    let twice = ferry(&["channel", "--root", r, "--package", probe::NAME, "disable"]);
    assert!(twice.status.success() && text(&twice).contains("nothing to change"));
}

fn deb_version(host: &Host) -> String {
    host.sh_ok(&format!("dpkg-query -W -f '${{Version}}' {AGENT}"))
}

/// `find /etc` with types, modes and checksums, inside the host.
fn etc_listing(host: &Host) -> Vec<String> {
    listing(&host.path("/etc"))
}

/// An /etc listing without the agent's agent.toml: each version ships its
/// own (a conffile the admin did not change, so upgrades replace it); the
/// rest of /etc is the channel's to restore.
fn without_agent_conffile(listing: Vec<String>) -> Vec<String> {
    listing
        .into_iter()
        .filter(|e| !e.contains(" roboconf-agent/agent.toml "))
        .collect()
}

/// The automatic run, as the timers start it (stamps removed: a day
/// passed). Whether it succeeded is for the caller to judge by what is
/// installed: a refused upgrade fails the service.
fn automatic_run(host: &Host) {
    let out = host.sh(
        "rm -f /var/lib/apt/periodic/*; systemctl start apt-daily.service && \
         systemctl start apt-daily-upgrade.service",
    );
    eprintln!("automatic run: {out}");
}

/// A tree the agent holds: a VM with an application, the VM deployed.
fn make_tree(host: &Host) -> Vec<(String, String, String)> {
    for step in [
        "add --name vm --component VM",
        "add --name app --component App --parent /vm",
        "deploy /vm",
    ] {
        agent(host, &format!("ctl apply --wait 30 {step}"));
    }
    sorted_tree(host)
}

/// The agent runs `version` on a state of `schema` holding `expected`.
fn assert_agent(host: &Host, version: &str, schema: u32, expected: &[(String, String, String)]) {
    wait_answering(host);
    assert_eq!(version_running(host), version);
    assert_eq!(header(host)["schema"], schema, "{}", header(host));
    assert_eq!(sorted_tree(host), expected, "the tree under {version}");
}

/// Makes the agent busy: a deploy recipe that waits for `{STATE}/gate`.
fn keep_busy(host: &Host) {
    host.sh_ok(&format!(
        "mkdir -p {STATE}/recipes/Slow
         printf '#!/bin/sh\\nwhile [ ! -e {STATE}/gate ]; do sleep 0.2; done\\n' > {STATE}/recipes/Slow/deploy
         chmod 0755 {STATE}/recipes/Slow/deploy"
    ));
    agent(
        host,
        "ctl apply add --name slow --component Slow --parent /vm",
    );
    agent(host, "ctl apply deploy /vm/slow");
}

/// From 1.2.0: `rollback --to 1.1.0` (same schema), then `rollback` (the
/// next older version, 1.0.0, migrating 3 -> 2); `channel` is the command
/// with its family options.
fn roll_back_twice(host: &Host, channel: &str, expected: &[(String, String, String)]) {
    let out = host.sh_ok(&format!("{channel} rollback --to 1.1.0"));
    assert!(out.contains("to 1.1.0-1"), "{out}");
    assert_agent(host, "1.1.0", 3, expected);
    let out = host.sh_ok(&format!("{channel} rollback"));
    assert!(out.contains("to 1.0.0-1"), "{out}");
    assert_agent(host, "1.0.0", 2, expected);
}

/// While a migration is open on the host it owns the agent's package: `ferry
/// channel pin|unpin|rollback|install|disable` are refused (status 3) naming it,
/// and on dnf its versionlock is reported as held, not as a pin. The
/// migration's entry is written in the record of holds as `ferry migration
/// initialize` writes it (these agents' schemas predate the lock, so
/// initialize itself cannot run).
fn channel_refused_while_a_migration_is_open(host: &Host, ferry_channel: &str) {
    let record = "/var/lib/ferry/holds/roboconf-agent.json";
    let before = host.sh_ok(&format!("cat {record} 2>/dev/null || true"));
    host.sh_ok("install -d -m 0755 /var/lib/ferry/holds");
    host.write(
        record,
        serde_json::json!({
            "package": AGENT,
            "holds": [{
                "kind": "migration",
                "by": "lab (ferry migration `mig-channel` of application my-application)",
                "why": "under test", "since": 1765115000u64,
                "undo": "ferry migration complete, or cancel"
            }]
        })
        .to_string(),
    );
    let dnf = ferry_channel.contains("dnf");
    if dnf {
        host.sh_ok(&format!("dnf -q versionlock add {AGENT}"));
    }
    for verb in ["pin 1.0.0", "unpin", "rollback", "install 1.0.0", "disable"] {
        let out = host.sh(&format!("{ferry_channel} {verb}"));
        assert!(
            out.code == 3 && out.stderr.contains("ferry migration `mig-channel`"),
            "`{verb}` during a migration: {out}"
        );
    }
    let status = channel_status_with(host, ferry_channel);
    assert_eq!(status["pinned"], serde_json::Value::Null, "{status:#}");
    assert!(
        reasons(&status).contains("ferry migration `mig-channel`"),
        "{status:#}"
    );
    assert!(!reasons(&status).contains("unpin"), "{status:#}");
    // One holder, the migration, with who set it and what undoes it.
    let holds = status["holds"].as_array().unwrap();
    assert_eq!(holds.len(), 1, "{status:#}");
    assert_eq!(holds[0]["kind"], "migration", "{status:#}");
    assert!(
        holds[0]["by"]
            .as_str()
            .unwrap()
            .starts_with("lab (ferry migration `mig-channel`")
            && holds[0]["undo"]
                .as_str()
                .unwrap()
                .contains("ferry migration complete"),
        "{status:#}"
    );
    if dnf {
        assert_eq!(status["held"], true, "{status:#}");
        host.sh_ok(&format!("dnf -q versionlock delete {AGENT}"));
    }
    host.write(record, before);
}

/// An exclusion set outside ferry (a negative apt pin, a dnf
/// `excludepkgs=`) is listed among the holds and in the reasons, naming
/// its file; removed, it is gone from both.
fn exclusion_is_reported(host: &Host, ferry_channel: &str, file: &str, line: &str) {
    host.sh_ok(&format!(
        "cp -a {file} /root/saved 2>/dev/null || touch /root/saved.none"
    ));
    host.sh_ok(&format!("printf '%s\\n' '{line}' >> {file}"));
    let status = channel_status_with(host, ferry_channel);
    let excluded: Vec<&serde_json::Value> = status["holds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["kind"] == "exclude")
        .collect();
    assert_eq!(excluded.len(), 1, "{status:#}");
    assert_eq!(
        excluded[0]["by"],
        format!("outside ferry ({file})"),
        "{status:#}"
    );
    assert!(reasons(&status).contains(file), "{status:#}");
    host.sh_ok(&format!(
        "if [ -e /root/saved.none ]; then rm {file} /root/saved.none; else mv /root/saved {file}; fi"
    ));
    let status = channel_status_with(host, ferry_channel);
    assert!(
        !status["holds"].to_string().contains("exclude"),
        "{status:#}"
    );
}

fn channel_status_with(host: &Host, ferry_channel: &str) -> serde_json::Value {
    serde_json::from_str(&host.sh_ok(&format!("{ferry_channel} status --json"))).unwrap()
}

fn channel_status(host: &Host) -> serde_json::Value {
    let status = serde_json::from_str(&host.sh_ok("ferry channel status --json")).unwrap();
    eprintln!("status: {status:#}");
    status
}

fn reasons(status: &serde_json::Value) -> String {
    status["not_updated_because"].to_string()
}

/// A booted Debian host with the agent 1.0.0 (state schema 2) installed and
/// holding a tree. `ferry channel enable` (the ferry binary inside the
/// host) makes unattended-upgrades take 1.1.0 (schema 3) once it is
/// published; a busy agent defers 1.2.0 and `status` says why; a hold is
/// reported; a pin takes the automatic run down to 1.0.0 and unpin back up;
/// `rollback --to` and `rollback` go down through the hooks, migrating the
/// state; a tampered repository is reported; disable leaves /etc as before
/// enable. The tree is checked after every move.
#[test]
fn debian_host_follows_the_channel_pins_rolls_back_and_is_restored() {
    support::require_root();
    let started = std::time::Instant::now();
    let v100 = probe::agent_variant("1.0.0", 2, Variant::Good);
    let v110 = probe::agent_variant("1.1.0", 3, Variant::Good);
    let v120 = probe::agent_variant("1.2.0", 3, Variant::Good);
    let signer = Signer::new("channel-e2e");
    let fpr = signer.fingerprint().to_string();
    let scratch = Scratch::new("ferry-channel-e2e");
    let repo: PathBuf = scratch.path().join("repo");
    publish(&signer, &repo, "stable", &[&v100.deb]);

    let mut host = Host::new(HostKind::Debian);
    host.bind_ro(&repo, "/srv/repo");
    assert_eq!(host.boot(), "running");
    host.copy_in(FERRY, "/usr/local/sbin/ferry");
    host.copy_in(&v100.deb, "/root/agent-1.0.0.deb");
    host.sh_ok("apt-get install -y /root/agent-1.0.0.deb && rm /root/agent-1.0.0.deb");
    assert_eq!(deb_version(&host), "1.0.0-1");
    let before = etc_listing(&host);
    let mut expected = make_tree(&host);
    assert_agent(&host, "1.0.0", 2, &expected);
    eprintln!("channel e2e: host ready after {:.0?}", started.elapsed());

    let enable = format!(
        "ferry channel enable --repo file:///srv/repo --key /srv/repo/signing-key.asc \
         --fingerprint {fpr} --channel stable --window 'Mon..Fri 02:00-04:00'"
    );
    let out = host.sh_ok(&enable);
    assert!(out.contains("enabled:"), "{out}");
    // The timer drop-in took effect (reset, then the window).
    let timer = host.sh_ok("systemctl show -p TimersCalendar apt-daily-upgrade.timer");
    assert!(
        timer.contains("Mon..Fri *-*-* 02:00:00") && !timer.contains("06:00"),
        "{timer}"
    );
    let enabled = etc_listing(&host);
    let again = host.sh_ok(&enable);
    assert!(again.contains("nothing to change"), "{again}");
    assert_eq!(etc_listing(&host), enabled, "a second enable changed /etc");

    // 1.1.0 published; the automatic run takes it, migrating 2 -> 3.
    publish(&signer, &repo, "stable", &[&v110.deb]);
    automatic_run(&host);
    let log = host.sh("cat /var/log/unattended-upgrades/unattended-upgrades.log");
    assert_eq!(deb_version(&host), "1.1.0-1", "unattended-upgrades: {log}");
    assert_agent(&host, "1.1.0", 3, &expected);
    let status = channel_status(&host);
    assert_eq!(status["installed"], "1.1.0-1");
    assert_eq!(status["newest_available"], "1.1.0-1");
    assert_eq!(status["up_to_date"], true);
    assert!(status["last_package_change"]
        .as_str()
        .unwrap()
        .contains("upgraded 1.0.0-1 -> 1.1.0-1"));
    assert!(reasons(&status).contains("no newer version"));
    eprintln!("channel e2e: upgraded after {:.0?}", started.elapsed());

    // 1.2.0 published while the agent is busy: the hook refuses, the
    // automatic run leaves 1.1.0 running, status says the upgrade was
    // deferred and why; once idle, the next run takes it.
    publish(&signer, &repo, "stable", &[&v120.deb]);
    keep_busy(&host);
    automatic_run(&host);
    assert_eq!(deb_version(&host), "1.1.0-1");
    assert_eq!(version_running(&host), "1.1.0");
    let status = channel_status(&host);
    assert_eq!(status["up_to_date"], false);
    assert!(
        reasons(&status).contains("busy") && reasons(&status).contains("/vm/slow"),
        "{status:#}"
    );
    host.sh_ok(&format!("touch {STATE}/gate"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while support::agent::status(&host)["busy"] == true {
        assert!(std::time::Instant::now() < deadline, "still busy");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    expected = sorted_tree(&host);
    automatic_run(&host);
    assert_eq!(deb_version(&host), "1.2.0-1");
    assert_agent(&host, "1.2.0", 3, &expected);
    let status = channel_status(&host);
    assert!(!reasons(&status).contains("busy"), "{status:#}");

    // A hold is reported, with its undo.
    host.sh_ok(&format!("apt-mark hold {AGENT}"));
    let status = channel_status(&host);
    assert_eq!(status["held"], true);
    assert!(reasons(&status).contains("apt-mark unhold"), "{status:#}");
    host.sh_ok(&format!("apt-mark unhold {AGENT}"));

    // Pin 1.0.0: the next automatic run goes down to it, the hooks
    // migrating 3 -> 2; a further run keeps it; status says why.
    let out = host.sh_ok("ferry channel pin 1.0.0 --reason 'kept for the audit'");
    assert!(out.contains("host-wide"), "{out}");
    automatic_run(&host);
    let log = host.sh("cat /var/log/unattended-upgrades/unattended-upgrades.log");
    assert_eq!(deb_version(&host), "1.0.0-1", "unattended-upgrades: {log}");
    assert_agent(&host, "1.0.0", 2, &expected);
    let status = channel_status(&host);
    assert_eq!(status["pinned"], "1.0.0-1");
    assert_eq!(status["allow_downgrade_host_wide"], true);
    assert!(status["last_package_change"]
        .as_str()
        .unwrap()
        .contains("downgraded 1.2.0-1 -> 1.0.0-1"));
    assert!(reasons(&status).contains("pinned to 1.0.0-1"));
    // The pin in the record of holds: who set it, with what, why, its undo.
    let pin = &status["holds"][0];
    assert!(
        status["holds"].as_array().unwrap().len() == 1
            && pin["kind"] == "pin"
            && pin["version"] == "1.0.0-1"
            && pin["why"] == "kept for the audit"
            && pin["by"]
                .as_str()
                .unwrap()
                .ends_with(" (ferry channel pin)")
            && pin["since"].is_u64()
            && pin["undo"] == "ferry channel unpin",
        "{status:#}"
    );
    automatic_run(&host);
    assert_eq!(deb_version(&host), "1.0.0-1");
    eprintln!("channel e2e: pinned after {:.0?}", started.elapsed());

    // Unpin: the next automatic run takes the newest again, 2 -> 3; the
    // pin leaves the record of holds.
    host.sh_ok("ferry channel unpin");
    assert_eq!(channel_status(&host)["holds"], serde_json::json!([]));
    channel_refused_while_a_migration_is_open(&host, "ferry channel");
    exclusion_is_reported(
        &host,
        "ferry channel",
        "/etc/apt/preferences.d/site",
        "Package: roboconf-agent\nPin: release *\nPin-Priority: -1",
    );
    let status = channel_status(&host);
    assert_eq!(status["pinned"], serde_json::Value::Null);
    assert_eq!(status["allow_downgrade_host_wide"], false);
    automatic_run(&host);
    assert_eq!(deb_version(&host), "1.2.0-1");
    assert_agent(&host, "1.2.0", 3, &expected);

    // rollback --to 1.1.0 (same schema), then rollback (the next older
    // version, 1.0.0: 3 -> 2); each pins what it installed.
    roll_back_twice(&host, "ferry channel", &expected);
    assert_eq!(channel_status(&host)["pinned"], "1.0.0-1");
    automatic_run(&host);
    assert_eq!(deb_version(&host), "1.0.0-1", "the rollback's pin holds");

    // A repository whose InRelease no longer verifies is reported.
    let inrelease = repo.join("apt/dists/stable/InRelease");
    let good = fs::read(&inrelease).unwrap();
    fs::write(
        &inrelease,
        String::from_utf8_lossy(&good).replacen("Suite: stable", "Suite: stab1e", 1),
    )
    .unwrap();
    let status = channel_status(&host);
    assert!(
        status["repository_check"]
            .as_str()
            .unwrap()
            .starts_with("error")
            && reasons(&status).contains("failed its check"),
        "{status:#}"
    );
    fs::write(&inrelease, good).unwrap();

    // Disable: /etc as before enable.
    host.sh_ok("ferry channel disable");
    assert_eq!(
        diff_listing(&before, &etc_listing(&host)),
        "",
        "disable left /etc changed"
    );

    // The same repository over http, served on the host's loopback: enable
    // checks it with apt's own downloader, the automatic run takes the
    // newest over http (2 -> 3); with the server gone, status and enable
    // say it is unreachable.
    host.sh_ok(
        "setsid --fork python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/repo \
         >/dev/null 2>&1
         for _ in $(seq 50); do
             /usr/lib/apt/apt-helper download-file http://127.0.0.1:8080/signing-key.asc \
                 /root/key.asc >/dev/null 2>&1 && break
             sleep 0.1
         done",
    );
    let http_enable = format!(
        "ferry channel enable --repo http://127.0.0.1:8080 --key /srv/repo/signing-key.asc \
         --fingerprint {fpr} --channel stable"
    );
    let out = host.sh_ok(&http_enable);
    assert!(out.contains("enabled:"), "{out}");
    automatic_run(&host);
    assert_eq!(deb_version(&host), "1.2.0-1", "over http");
    assert_agent(&host, "1.2.0", 3, &expected);
    host.sh_ok("pkill -f '^python3 -m http.server'");
    let status = channel_status(&host);
    assert!(reasons(&status).contains("unreachable"), "{status:#}");
    host.sh_ok("ferry channel disable");
    let out = host.sh(&http_enable);
    assert!(
        !out.success()
            && out.stderr.contains("unreachable")
            && out.stderr.contains("Connection refused"),
        "{out}"
    );
    assert_eq!(
        diff_listing(
            &without_agent_conffile(before),
            &without_agent_conffile(etc_listing(&host))
        ),
        "",
        "a refused enable or the second disable left /etc changed"
    );
    host.poweroff();
    eprintln!("channel e2e: done in {:.0?}", started.elapsed());
}

fn rpm_version(host: &Host) -> String {
    host.sh_ok(&format!("rpm -q --qf '%{{VERSION}}-%{{RELEASE}}' {AGENT}"))
}

/// dnf-automatic's run, as ferry's timer starts it; dnf's cache age counts
/// whole seconds, so a repository published in the same second looks
/// unchanged (SPEC §6).
fn dnf_automatic_run(host: &Host) {
    std::thread::sleep(std::time::Duration::from_secs(1));
    let out = host.sh("systemctl start ferry-roboconf-agent-automatic.service");
    eprintln!("automatic run: {out}");
}

/// The same on a booted RPM host, from 1.0.0 (schema 2) holding a tree:
/// dnf-automatic with ferry's own configuration and timer takes 1.1.0 and
/// 1.2.0 (schema 3); `rollback --to 1.1.0` and `rollback` go down with dnf
/// (dnf-automatic never downgrades), the hooks migrating 3 -> 2, and lock
/// what they installed; the next automatic run keeps it; `unpin` lets it
/// take 1.2.0 again; disable leaves /etc as before enable. The tree is
/// checked after every move.
#[test]
fn rpm_host_follows_the_channel_rolls_back_and_is_restored() {
    support::require_root();
    let started = std::time::Instant::now();
    let v100 = probe::agent_variant("1.0.0", 2, Variant::Good);
    let v110 = probe::agent_variant("1.1.0", 3, Variant::Good);
    let v120 = probe::agent_variant("1.2.0", 3, Variant::Good);
    let signer = Signer::new("channel-rpm");
    let fpr = signer.fingerprint().to_string();
    let scratch = Scratch::new("ferry-channel-rpm");
    let repo: PathBuf = scratch.path().join("repo");
    publish(&signer, &repo, "stable", &[&v100.deb, &v100.rpm]);

    let mut host = Host::new(HostKind::Rpm);
    host.bind_ro(&repo, "/srv/repo");
    assert_eq!(host.boot(), "running");
    host.copy_in(FERRY, "/usr/local/sbin/ferry");
    host.copy_in(&v100.rpm, "/root/agent-1.0.0.rpm");
    host.sh_ok("dnf -y install /root/agent-1.0.0.rpm && rm /root/agent-1.0.0.rpm");
    assert_eq!(rpm_version(&host), "1.0.0-1");
    let before = etc_listing(&host);
    let expected = make_tree(&host);
    assert_agent(&host, "1.0.0", 2, &expected);

    let enable = format!(
        "ferry channel --family dnf enable --repo file:///srv/repo \
         --key /srv/repo/signing-key.asc --fingerprint {fpr} --channel stable --window '02:00-04:00'"
    );
    let out = host.sh_ok(&enable);
    assert!(out.contains("enabled:"), "{out}");
    host.sh_ok("systemctl is-enabled ferry-roboconf-agent-automatic.timer");
    let enabled = etc_listing(&host);
    let again = host.sh_ok(&enable);
    assert!(again.contains("nothing to change"), "{again}");
    assert_eq!(etc_listing(&host), enabled, "a second enable changed /etc");

    publish(&signer, &repo, "stable", &[&v110.deb, &v110.rpm]);
    dnf_automatic_run(&host);
    let journal = host.sh("journalctl -u ferry-roboconf-agent-automatic.service --no-pager");
    assert_eq!(rpm_version(&host), "1.1.0-1", "dnf-automatic: {journal}");
    assert_agent(&host, "1.1.0", 3, &expected);
    publish(&signer, &repo, "stable", &[&v120.deb, &v120.rpm]);
    dnf_automatic_run(&host);
    assert_eq!(rpm_version(&host), "1.2.0-1");
    assert_agent(&host, "1.2.0", 3, &expected);
    eprintln!("channel rpm: upgraded after {:.0?}", started.elapsed());

    roll_back_twice(&host, "ferry channel --family dnf", &expected);
    dnf_automatic_run(&host);
    assert_eq!(rpm_version(&host), "1.0.0-1", "the lock did not hold");
    let status: serde_json::Value =
        serde_json::from_str(&host.sh_ok("ferry channel --family dnf status --json")).unwrap();
    eprintln!("status after rollback: {status:#}");
    assert_eq!(status["installed"], "1.0.0-1");
    assert_eq!(status["pinned"], "1.0.0-1");
    assert_eq!(status["newest_available"], "1.2.0-1");
    assert!(
        reasons(&status).contains("versionlock (1.0.0-1)")
            && status["last_package_change"]
                .as_str()
                .unwrap()
                .contains("Downgrade"),
        "{status:#}"
    );

    host.sh_ok("ferry channel --family dnf unpin");
    channel_refused_while_a_migration_is_open(&host, "ferry channel --family dnf");
    exclusion_is_reported(
        &host,
        "ferry channel --family dnf",
        "/etc/dnf/dnf.conf",
        "excludepkgs=roboconf-*",
    );
    dnf_automatic_run(&host);
    assert_eq!(
        rpm_version(&host),
        "1.2.0-1",
        "unpinned, the automatic run upgrades"
    );
    assert_agent(&host, "1.2.0", 3, &expected);

    host.sh_ok("ferry channel --family dnf disable");
    assert_eq!(
        diff_listing(
            &without_agent_conffile(before),
            &without_agent_conffile(etc_listing(&host))
        ),
        "",
        "disable left /etc changed"
    );
    host.sh_ok(
        "! rpm -q gpg-pubkey-$(echo {fpr} | tail -c 9 | tr A-F a-f)"
            .replace("{fpr}", &fpr)
            .as_str(),
    );
    host.poweroff();
    eprintln!("channel rpm: done in {:.0?}", started.elapsed());
}
