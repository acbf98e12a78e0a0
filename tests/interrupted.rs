//! End to end, the upgrade paths that need a booted host of their own: an
//! upgrade from a version packaged without ferry (the shell fallback), the
//! package manager SIGKILLed at chosen moments inside its transaction (case
//! 11: dpkg during unpack and configure; dnf during `%pre`, between the new
//! version's install and the old one's erase, and rpm during `%posttrans`),
//! an installed hook of an older protocol, the admin's escape hatch, and a
//! new version's start that fails once.
//! Every recovery asserts the four things (support::upgrade::assert_four).
//! Root is required (the lab boots hosts with systemd-nspawn).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::agent::{
    copy_package, deploy_tree, header, install, log_len, log_since, status, wait_answering, AGENT,
    MARKER, RECORD, SNAPSHOTS, STATE,
};
use support::client::socket_activated;
use support::lab::{Host, HostKind};
use support::probe::{self, Variant};
use support::run;
use support::upgrade::{
    assert_four, before, installed, is_active, kill_when, scriptlet_rpm, upgrade_step, Before,
};

/// A state file of 256 MiB, owned by the agent's user: copying it takes
/// long enough for a kill to land inside the copy.
fn add_bulk(host: &Host) {
    host.sh_ok(&format!(
        "head -c 256M /dev/zero > {STATE}/bulk && chown roboconf-agent: {STATE}/bulk"
    ));
}

/// Whether a snapshot is being copied (its `.partial-` directory exists).
/// Read through the host's root directory, not by a command in the host:
/// polled every 10 ms, it must not miss a copy of a few hundred ms.
fn copying_snapshot(host: &Host) -> bool {
    fs::read_dir(host.path(SNAPSHOTS))
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            entry.file_name().to_string_lossy().starts_with(".partial-")
                && entry.path().join("data").is_dir()
        })
}

/// The moment inside `prepare` (preinst / `%pre`): the agent quiesced, the
/// first snapshot being copied.
fn in_prepare_copy(host: &Host, log: &str) -> bool {
    log.contains("prepare: asking the agent to quiesce") && copying_snapshot(host)
}

/// The moment inside `finish` (postinst configure / `%posttrans`): the
/// outgoing agent stopped, the snapshot being retaken (the bulk file,
/// changed since the first one, is copied again).
fn in_finish_retake(host: &Host, log: &str) -> bool {
    log.contains("finish: stopping the outgoing agent") && copying_snapshot(host)
}

/// What a kill inside `prepare` leaves: the record `preparing`, knowing the
/// agent ran and is left running; the agent still answers, quiesced, as
/// `version`.
fn assert_killed_in_prepare(host: &Host, version: &str) {
    let record: Value = serde_json::from_str(&host.read(RECORD)).unwrap();
    assert_eq!(record["status"], "preparing", "{record}");
    assert_eq!(record["was_running"], true, "{record}");
    assert_eq!(record["quiesced_only"], true, "{record}");
    let answer = status(host);
    assert_eq!(answer["version"], version, "{answer}");
    assert_eq!(answer["quiesced"], true, "{answer}");
    assert!(host.path(MARKER).exists());
}

/// What a kill inside `finish`'s retake leaves: the outgoing agent stopped
/// and not started again, behind the marker (nothing starts it, not even
/// systemd's restart policy), the record kept for the retry.
fn assert_killed_in_finish(host: &Host, before: &Before) {
    assert!(!is_active(host), "the agent stays stopped");
    assert!(host.path(MARKER).exists() && host.path(RECORD).exists());
    assert_eq!(support::upgrade::starts(host), before.starts, "not started");
}

/// 0.9.0 as a package made without ferry: ferry's 0.9.0 .deb (state
/// schema 1) taken apart with `dpkg-deb -R`, its maintainer scripts, hook
/// program and hook manifest removed, and the scripts of a hand-made package put in
/// (user, directories, `deb-systemd-helper enable`, `deb-systemd-invoke
/// start`, stop on remove), then rebuilt with `dpkg-deb`.
fn pre_ferry_deb() -> PathBuf {
    let ferry_built = probe::agent_variant("0.9.0", 1, Variant::Bound).deb;
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tree = tmp.join("pre-ferry-tree");
    let out = tmp.join("roboconf-agent_0.9.0-0_amd64.deb");
    let _ = fs::remove_dir_all(&tree);
    run(Command::new("dpkg-deb")
        .arg("-R")
        .arg(&ferry_built)
        .arg(&tree));
    for gone in [
        "DEBIAN/preinst",
        "DEBIAN/postinst",
        "DEBIAN/prerm",
        "DEBIAN/postrm",
        "DEBIAN/md5sums",
        "usr/libexec/roboconf-agent",
        "usr/lib/roboconf-agent",
    ] {
        let path = tree.join(gone);
        if path.is_dir() {
            fs::remove_dir_all(&path).unwrap();
        } else {
            fs::remove_file(&path).unwrap_or_else(|e| panic!("{gone}: {e}"));
        }
    }
    let postinst = "#!/bin/sh
set -e
if [ \"$1\" = configure ]; then
	getent group roboconf-agent >/dev/null || groupadd --system roboconf-agent
	getent passwd roboconf-agent >/dev/null || useradd --system --gid roboconf-agent \\
		--no-create-home --home-dir /var/lib/roboconf-agent --shell /usr/sbin/nologin roboconf-agent
	install -d -m 0750 -o roboconf-agent -g roboconf-agent /var/lib/roboconf-agent /var/log/roboconf-agent
	[ -e /etc/roboconf-agent/credentials ] || install -m 0640 -g roboconf-agent /dev/null /etc/roboconf-agent/credentials
	deb-systemd-helper enable roboconf-agent.service >/dev/null
	deb-systemd-invoke start roboconf-agent.service
fi
";
    let prerm = "#!/bin/sh
set -e
if [ \"$1\" = remove ]; then
	deb-systemd-invoke stop roboconf-agent.service
fi
";
    for (name, text) in [("postinst", postinst), ("prerm", prerm)] {
        let path = tree.join("DEBIAN").join(name);
        fs::write(&path, text).unwrap();
        run(Command::new("chmod").arg("0755").arg(&path));
    }
    let control = fs::read_to_string(tree.join("DEBIAN/control"))
        .unwrap()
        .replace("Version: 0.9.0-1", "Version: 0.9.0-0");
    fs::write(tree.join("DEBIAN/control"), control).unwrap();
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&tree)
        .arg(&out));
    out
}

/// Installs `v090`, a version packaged without ferry (schema 1), with a
/// tree; the admin enables lingering by hand, as docs/AGENT.md asks of
/// agents not packaged by ferry. Then upgrades to `v110`: the new preinst
/// / `%pre` finds no hook and falls back (stop, `cp -a` snapshot, marker,
/// record); 1.1.0's finish checksums that snapshot, migrates 1 -> 2,
/// starts once. `extra` is what `install` takes.
fn upgrade_from_pre_ferry(host: &Host, v090: &Path, v110: &Path, extra: &str) {
    let out = install(host, v090, extra);
    assert!(out.success(), "pre-ferry install: {out}");
    assert!(!host.path("/usr/libexec/roboconf-agent/ferry-hook").exists());
    host.sh_ok(
        "loginctl enable-linger roboconf-agent
        while [ ! -S /run/user/$(id -u roboconf-agent)/systemd/private ]; do sleep 0.2; done",
    );
    wait_answering(host);
    deploy_tree(host);
    assert_eq!(header(host)["schema"], 1);
    let from = log_len(host);
    upgrade_step(host, v110, "1.1.0", 2, extra);
    let log = log_since(host, from);
    assert!(
        log.contains("fallback prepare for 1.1.0")
            && log.contains("checksummed the fallback snapshot")
            && log.contains("migrating the state up from schema 1 to 2"),
        "the fallback path, in the log: {log}"
    );
    let fallback = host.sh_ok(&format!("ls -d {SNAPSHOTS}/*-fallback"));
    assert!(
        host.path(&format!("{}/ferry-snapshot.json", fallback.trim()))
            .exists(),
        "the fallback snapshot is kept and checksummed: {fallback}"
    );
}

/// The last paths of both tests, from the agent at 1.2.0 or later (schema
/// 3): an installed hook of protocol 1 (the real one behind a wrapper that
/// answers `protocol` with 1), whose prepare then stops the agent before
/// the unpack (a downgrade to 1.1.0 migrating 3 -> 2); the admin's escape
/// hatch on the upgrade back to 1.2.0; and a reinstall whose first start
/// fails once and is waited through. `downgrade`, `upgrade` and `reinstall`
/// are what `install` takes for each.
fn older_protocol_escape_hatch_and_a_failing_start(
    host: &Host,
    v110: &Path,
    v120: &Path,
    downgrade: &str,
    upgrade: &str,
    reinstall: &str,
) {
    host.sh_ok(
        "cd /usr/libexec/roboconf-agent && mv ferry-hook ferry-hook.real
        printf '#!/bin/sh\nif [ \"$1\" = protocol ]; then echo 1; else exec /usr/libexec/roboconf-agent/ferry-hook.real \"$@\"; fi\n' > ferry-hook
        chmod 0755 ferry-hook",
    );
    let from = log_len(host);
    upgrade_step(host, v110, "1.1.0", 2, downgrade);
    let log = log_since(host, from);
    assert!(
        log.contains("prepare: stopping the agent for upgrade")
            && !log.contains("prepare: prepared: the agent answers, quiesced"),
        "a protocol-1 hook stops the agent in prepare: {log}"
    );
    host.sh_ok("rm /usr/libexec/roboconf-agent/ferry-hook.real");

    // The escape hatch: with /etc/roboconf-agent/ferry-skip-migration the
    // hooks migrate nothing and say so. The admin who sets it lets the
    // agent migrate itself at start (migrate_on_start = true), and the
    // upgrade keeps the state.
    host.sh_ok(
        "touch /etc/roboconf-agent/ferry-skip-migration
         sed -i 's/^migrate_on_start = false$/migrate_on_start = true/' /etc/roboconf-agent/agent.toml",
    );
    let from = log_len(host);
    upgrade_step(host, v120, "1.2.0", 3, upgrade);
    let log = log_since(host, from);
    assert!(
        log.contains("ferry-skip-migration exists: the state is NOT migrated (escape hatch)")
            && !log.contains("migrating the state"),
        "the escape hatch, in the log: {log}"
    );
    host.sh_ok("rm /etc/roboconf-agent/ferry-skip-migration");

    // A start of the new version that fails once (a drop-in whose
    // `ExecStartPre` fails the first time, as a transient failure would) is
    // restarted by systemd (`Restart=on-failure`) and waited through: the
    // upgrade completes instead of rolling back on one failure (SPEC §13),
    // and the log says what happened.
    host.sh_ok(
        "mkdir -p /etc/systemd/system/roboconf-agent.service.d
         printf '[Service]\\nExecStartPre=+/bin/sh -c \"[ -e /run/failed-once ] || { touch /run/failed-once; exit 1; }\"\\n' \
             > /etc/systemd/system/roboconf-agent.service.d/fail-once.conf
         systemctl daemon-reload",
    );
    let from = log_len(host);
    upgrade_step(host, v120, "1.2.0", 3, reinstall);
    let log = log_since(host, from);
    let journal = host.sh_ok("journalctl --no-pager -o cat -u roboconf-agent.service");
    assert!(
        journal.contains("Scheduled restart job"),
        "the first start failed and systemd restarted it: {journal}"
    );
    // A socket-activated agent may fail that start before finish starts it:
    // the client's connection started it (support::client), and finish
    // found it restarting. Either way the upgrade waited it through.
    assert!(
        log.contains("did not come up at once") || socket_activated(host),
        "{log}"
    );
    assert!(log.contains("1.2.0 is running"), "{log}");
    assert!(!log.contains("FAILED"), "{log}");
}

/// Debian: the upgrade from a version packaged without ferry, dpkg
/// SIGKILLed while unpacking and while configuring (case 11), then the
/// paths of `older_protocol_escape_hatch_and_a_failing_start`.
#[test]
fn debian_pre_ferry_killed_dpkg_and_escape_hatch() {
    let v090 = pre_ferry_deb();
    let v110 = probe::agent_variant("1.1.0", 2, Variant::Good).deb;
    let v120 = probe::agent_variant("1.2.0", 3, Variant::Good).deb;
    let v140 = probe::agent_variant("1.4.0", 3, Variant::Good).deb;
    let mut host = Host::new(HostKind::Debian);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));

    upgrade_from_pre_ferry(&host, &v090, &v110, "");

    // 11a. dpkg SIGKILLed during unpack, inside 1.1.0's prepare (the agent
    // quiesced, the state being copied into the snapshot): half-installed,
    // the agent still answers. apt first asks for `dpkg --configure -a`
    // (dpkg's journal), which leaves it half-installed; installing 1.2.0
    // again completes the upgrade: the four things.
    add_bulk(&host);
    let b = before(&host);
    let guest = copy_package(&host, &v120);
    kill_when(
        &host,
        &format!("dpkg --force-confdef --force-confold --unpack {guest}"),
        in_prepare_copy,
    );
    assert_eq!(installed(&host), "1.1.0-1 half-installed");
    assert_killed_in_prepare(&host, "1.1.0");
    let out = install(&host, &v120, "");
    assert!(
        !out.success() && out.stderr.contains("dpkg --configure -a"),
        "apt asks for dpkg --configure -a first: {out}"
    );
    host.sh_ok("dpkg --force-confdef --force-confold --configure -a");
    assert_eq!(installed(&host), "1.1.0-1 half-installed");
    let out = install(&host, &v120, "");
    assert!(out.success(), "installing 1.2.0 again: {out}");
    assert_four(&host, &b, &b.tree, "1.2.0", 3);
    assert!(!host.path(RECORD).exists());

    // 11b. dpkg SIGKILLed during configure, inside 1.4.0's finish: the
    // outgoing 1.2.0 agent stopped, the snapshot being retaken (the bulk
    // file changed after the unpack). Half-configured, the agent stopped
    // behind the marker; `dpkg --configure -a` runs finish again: the four
    // things.
    let b = before(&host);
    let guest = copy_package(&host, &v140);
    host.sh_ok(&format!(
        "dpkg --force-confdef --force-confold --unpack {guest}"
    ));
    host.sh_ok(&format!("echo changed >> {STATE}/bulk"));
    kill_when(
        &host,
        "dpkg --force-confdef --force-confold --configure roboconf-agent",
        in_finish_retake,
    );
    assert_eq!(installed(&host), "1.4.0-1 half-configured");
    assert_killed_in_finish(&host, &b);
    host.sh_ok("dpkg --force-confdef --force-confold --configure -a");
    assert_eq!(installed(&host), "1.4.0-1 installed");
    assert_four(&host, &b, &b.tree, "1.4.0", 3);
    assert!(!host.path(RECORD).exists());
    host.sh_ok(&format!("rm {STATE}/bulk"));

    older_protocol_escape_hatch_and_a_failing_start(
        &host,
        &v110,
        &v120,
        "--allow-downgrades",
        "",
        "--reinstall",
    );
    host.poweroff();
}

/// RPM: the upgrade from a version packaged without ferry (the incoming
/// `%pre` falls back; the old package's `%postun` try-restart finds the
/// unit stopped), then dnf or rpm SIGKILLed inside the transaction at
/// three moments, each with what the rpm database holds afterwards and
/// what recovers it; then the paths of
/// `older_protocol_escape_hatch_and_a_failing_start`. Its versions are
/// built without the socket unit (`Variant::Bound`): agents that bind
/// their control socket themselves keep working as before.
#[test]
fn rpm_pre_ferry_upgrade_and_killed_transactions() {
    let v090 = pre_ferry_rpm();
    let v110 = probe::agent_variant("1.1.0", 2, Variant::Bound).rpm;
    let v120 = probe::agent_variant("1.2.0", 3, Variant::Bound).rpm;
    let v140 = probe::agent_variant("1.4.0", 3, Variant::Bound).rpm;
    let mut host = Host::new(HostKind::Rpm);
    assert!(matches!(host.boot().as_str(), "running" | "degraded"));
    upgrade_from_pre_ferry(&host, &v090, &v110, "install");

    // 11a (rpm). dnf SIGKILLed inside 1.2.0's %pre (1.1.0's prepare
    // copying the state): rpm had not added 1.2.0's header yet, so the
    // database holds 1.1.0 alone; the agent answers, quiesced. `dnf
    // install` of 1.2.0 again inherits the record: the four things.
    add_bulk(&host);
    let b = before(&host);
    let guest = copy_package(&host, &v120);
    kill_when(&host, &format!("dnf -y install {guest}"), in_prepare_copy);
    assert_eq!(installed(&host), "1.1.0-1");
    assert_killed_in_prepare(&host, "1.1.0");
    let out = install(&host, &v120, "install");
    assert!(out.success(), "dnf install of 1.2.0 again: {out}");
    assert_four(&host, &b, &b.tree, "1.2.0", 3);
    assert!(!host.path(RECORD).exists());

    // 11c (rpm). dnf SIGKILLed between 1.4.0's install and 1.2.0's erase
    // (inside the %post of a package that requires the agent, in the same
    // transaction): the database holds both versions, 1.4.0's files are on
    // disk, %posttrans never ran, the 1.2.0 agent answers, quiesced. `dnf
    // remove --duplicates` erases the older header (its %preun/%postun with
    // $1 = 1 do nothing); `dnf reinstall` of 1.4.0 runs prepare (inheriting
    // the record) and finish: the four things.
    let b = before(&host);
    let pause = scriptlet_rpm(
        "ferry-transaction-pause",
        "touch /root/ferry-paused\nsleep 600\n",
    );
    let pause = copy_package(&host, &pause);
    let guest = copy_package(&host, &v140);
    kill_when(
        &host,
        &format!("dnf -y install {guest} {pause}"),
        |host, _| host.path("/root/ferry-paused").exists(),
    );
    assert_eq!(installed(&host), "1.2.0-1\n1.4.0-1");
    let answer = status(&host);
    assert_eq!(
        (answer["version"].as_str(), answer["quiesced"].as_bool()),
        (Some("1.2.0"), Some(true)),
        "{answer}"
    );
    let said = host.sh_ok("dnf -y remove --duplicates");
    assert_eq!(installed(&host), "1.4.0-1", "{said}");
    host.sh_ok("rpm -e --noscripts ferry-transaction-pause");
    let out = install(&host, &v140, "reinstall");
    assert!(out.success(), "dnf reinstall of 1.4.0: {out}");
    assert_four(&host, &b, &b.tree, "1.4.0", 3);
    assert!(!host.path(RECORD).exists());

    // 11b (rpm). rpm SIGKILLed inside 1.2.0's %posttrans (a downgrade,
    // same schema: 1.2.0's finish stopped the outgoing agent and retakes
    // the snapshot; the bulk file changed inside the transaction, by a
    // package's %post): the database holds 1.2.0 (the erase of 1.4.0 came
    // before %posttrans), the agent is stopped behind the marker. rpm never
    // runs a %posttrans again, so `dnf reinstall` of 1.2.0 does: its
    // prepare inherits the record, its finish completes: the four things.
    let b = before(&host);
    let touch = scriptlet_rpm(
        "ferry-bulk-toucher",
        &format!("echo changed >> {STATE}/bulk\n"),
    );
    let touch = copy_package(&host, &touch);
    let guest = copy_package(&host, &v120);
    kill_when(
        &host,
        &format!("rpm -Uvh --oldpackage {guest} {touch}"),
        in_finish_retake,
    );
    assert_eq!(installed(&host), "1.2.0-1");
    assert_killed_in_finish(&host, &b);
    let out = install(&host, &v120, "reinstall");
    assert!(out.success(), "dnf reinstall of 1.2.0: {out}");
    assert_four(&host, &b, &b.tree, "1.2.0", 3);
    assert!(!host.path(RECORD).exists());
    host.sh_ok(&format!("rm {STATE}/bulk && rpm -e ferry-bulk-toucher"));

    older_protocol_escape_hatch_and_a_failing_start(
        &host,
        &v110,
        &v120,
        "downgrade",
        "install",
        "reinstall",
    );
    host.poweroff();
}

/// 0.9.0 as an rpm made without ferry: the files of ferry's 0.9.0 rpm
/// (state schema 1) but its hook program and hook manifest, with the
/// scriptlets of a hand-made package: user in `%pre`; directories, enable
/// and start in `%post`; `%preun` stops on erase; `%postun` restarts on
/// upgrade, as `%systemd_postun_with_restart` does (it runs after the new
/// version's `%post`, before its `%posttrans`).
fn pre_ferry_rpm() -> PathBuf {
    let ferry_built = rpm::Package::open(probe::agent_variant("0.9.0", 1, Variant::Bound).rpm)
        .expect("ferry's 0.9.0 rpm");
    let mut package = rpm::PackageBuilder::new(
        AGENT,
        "0.9.0",
        "MIT",
        "x86_64",
        "roboconf-agent packaged without ferry (ferry's tests)",
    );
    package.release("0");
    for file in ferry_built.files().unwrap() {
        let file = file.unwrap();
        let path = file.metadata.path().to_string_lossy().into_owned();
        let ferrys = ["/usr/libexec/roboconf-agent/", "/usr/lib/roboconf-agent/"];
        let (Some(content), rpm::FileType::Regular) = (file.content(), file.metadata.file_type())
        else {
            continue;
        };
        if ferrys.iter().any(|dir| path.starts_with(dir)) {
            continue;
        }
        let mut options = rpm::FileOptions::new(&path)
            .mode(file.metadata.mode())
            .user(file.metadata.user())
            .group(file.metadata.group());
        if file.metadata.flags().contains(rpm::FileFlags::CONFIG) {
            options = options.config().noreplace();
        }
        package
            .with_file_contents(content.to_vec(), options)
            .unwrap();
    }
    package
        .pre_install_script(
            "getent group roboconf-agent >/dev/null || groupadd --system roboconf-agent
getent passwd roboconf-agent >/dev/null || useradd --system --gid roboconf-agent \\
	--no-create-home --home-dir /var/lib/roboconf-agent --shell /sbin/nologin roboconf-agent
",
        )
        .post_install_script(
            "install -d -m 0750 -o roboconf-agent -g roboconf-agent /var/lib/roboconf-agent /var/log/roboconf-agent
systemctl daemon-reload
if [ $1 -eq 1 ]; then systemctl enable --now roboconf-agent.service; fi
",
        )
        .pre_uninstall_script(
            "if [ $1 -eq 0 ]; then systemctl disable --now roboconf-agent.service; fi
",
        )
        .post_uninstall_script(
            "systemctl daemon-reload
if [ $1 -ge 1 ]; then systemctl try-restart roboconf-agent.service; fi
",
        );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("roboconf-agent-0.9.0-0.x86_64.rpm");
    package.build().unwrap().write_file(&out).unwrap();
    out
}
