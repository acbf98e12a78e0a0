//! The reference agent's packages installed with real dpkg and rpm into
//! clean lab roots (not booted: the scripts must also work without
//! systemd): every file where the descriptor says, with its mode and owner;
//! removal keeps configuration and state; only purge removes them.

mod support;

use support::lab::{Host, HostKind};
use support::probe;

/// `stat` of a path inside the host: "mode user group".
fn stat(host: &Host, path: &str) -> String {
    host.sh_ok(&format!("stat -c '%a %U %G' '{path}'"))
        .trim()
        .to_string()
}

/// Checks the installed files; `man_page` differs because cargo-generate-rpm
/// does not compress manual pages.
fn assert_installed_layout(host: &Host, unit_dir: &str, man_page: &str) {
    for (path, expected) in [
        ("/usr/bin/roboconf-agent", "755 root root"),
        ("/etc/roboconf-agent/agent.toml", "644 root root"),
        (man_page, "644 root root"),
        (
            &format!("{unit_dir}/roboconf-agent.service") as &str,
            "644 root root",
        ),
        (
            "/var/lib/roboconf-agent",
            "750 roboconf-agent roboconf-agent",
        ),
        (
            "/var/log/roboconf-agent",
            "750 roboconf-agent roboconf-agent",
        ),
        ("/etc/roboconf-agent/credentials", "640 root roboconf-agent"),
    ] {
        assert_eq!(stat(host, path), expected, "{path}");
    }
    // A system user without a login shell or a home of its own.
    let passwd = host.sh_ok("getent passwd roboconf-agent");
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    // The binary runs in the target system.
    let version = host.sh_ok("roboconf-agent --version");
    assert!(version.contains("1.0.0"), "{version}");
}

const DEB_UNITS: &str = "/lib/systemd/system";
const RPM_UNITS: &str = "/usr/lib/systemd/system";
const MAN_GZ: &str = "/usr/share/man/man1/roboconf-agent.1.gz";

/// What the admin wrote must survive removal; only purge takes it.
fn write_admin_files(host: &Host) {
    host.sh_ok(
        "echo 'application = \"mine\"' >> /etc/roboconf-agent/agent.toml
         echo 'secret' > /etc/roboconf-agent/credentials
         echo 'state' > /var/lib/roboconf-agent/keep-me",
    );
}

fn assert_admin_files_kept(host: &Host) {
    host.sh_ok(
        "grep -q mine /etc/roboconf-agent/agent.toml
         grep -q secret /etc/roboconf-agent/credentials
         grep -q state /var/lib/roboconf-agent/keep-me
         test ! -e /usr/bin/roboconf-agent
         getent passwd roboconf-agent >/dev/null",
    );
}

#[test]
fn deb_installs_removes_and_purges_with_dpkg() {
    let packages = probe::agent("1.0.0");
    let host = Host::new(HostKind::Debian);
    host.copy_in(&packages.deb, "/root/agent.deb");
    host.sh_ok("dpkg -i /root/agent.deb");
    assert_installed_layout(&host, DEB_UNITS, MAN_GZ);
    assert_eq!(
        host.sh_ok("dpkg-query -W -f '${Status}' roboconf-agent"),
        "install ok installed"
    );

    write_admin_files(&host);
    host.sh_ok("dpkg -r roboconf-agent");
    assert_admin_files_kept(&host);
    assert_eq!(
        host.sh_ok("dpkg-query -W -f '${Status}' roboconf-agent"),
        "deinstall ok config-files"
    );

    host.sh_ok("dpkg --purge roboconf-agent");
    host.sh_ok(
        "test ! -e /var/lib/roboconf-agent
         test ! -e /var/log/roboconf-agent
         test ! -e /etc/roboconf-agent/credentials
         test ! -e /etc/roboconf-agent/agent.toml",
    );
}

#[test]
fn rpm_installs_and_erases_keeping_config_and_state() {
    let packages = probe::agent("1.0.0");
    let host = Host::new(HostKind::Rpm);
    host.copy_in(&packages.rpm, "/root/agent.rpm");
    host.sh_ok("rpm -i /root/agent.rpm");
    assert_installed_layout(&host, RPM_UNITS, MAN_GZ);
    host.sh_ok("rpm -V roboconf-agent");

    write_admin_files(&host);
    host.sh_ok("rpm -e roboconf-agent");
    // rpm has no purge: the erase keeps state, and the modified %config
    // file is saved as .rpmsave.
    host.sh_ok(
        "grep -q mine /etc/roboconf-agent/agent.toml.rpmsave
         grep -q secret /etc/roboconf-agent/credentials
         grep -q state /var/lib/roboconf-agent/keep-me
         test ! -e /usr/bin/roboconf-agent",
    );
}

/// Packages of the same agent made by the real cargo-deb and
/// cargo-generate-rpm from agent/Cargo.toml's metadata, with the scripts
/// `ferry hooks render` wrote, install and remove the same way.
mod cargo_tools {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use support::{run, Scratch};

    fn repo() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// Renders the scripts where the metadata points and builds with both
    /// tools (the binaries come from `probe::agent`'s build, version 1.0.0, in
    /// target/package like every packaging build).
    fn build(out: &Path) -> (PathBuf, PathBuf) {
        let _ = probe::agent("1.0.0");
        run(Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "hooks",
                "render",
                "--version",
                "1.0.0",
                "--out",
                "target/ferry-hooks",
            ])
            .current_dir(repo()));
        run(Command::new("cargo")
            .args([
                "deb",
                "-p",
                "roboconf-agent",
                "--no-build",
                "--deb-version",
                "1.0.0-1",
                "--output",
            ])
            .arg(out)
            // cargo-deb has no --target-dir; it follows cargo's variable.
            .env("CARGO_TARGET_DIR", "target/package")
            .current_dir(repo()));
        run(Command::new("cargo")
            .args([
                "generate-rpm",
                "-p",
                "agent",
                "--target-dir",
                "target/package",
                "-s",
                "version = \"1.0.0\"",
                "-o",
            ])
            .arg(out)
            .current_dir(repo()));
        (
            out.join("roboconf-agent_1.0.0-1_amd64.deb"),
            out.join("roboconf-agent-1.0.0-1.x86_64.rpm"),
        )
    }

    /// Every scriptlet `ferry hooks render` writes is named in the agent's
    /// generate-rpm metadata (cargo-deb takes the whole directory): a
    /// scriptlet added to hooks/ cannot be silently left out.
    fn assert_metadata_names_every_scriptlet() {
        let manifest = std::fs::read_to_string(repo().join("agent/Cargo.toml")).unwrap();
        for entry in std::fs::read_dir(repo().join("target/ferry-hooks/rpm")).unwrap() {
            let key = entry.unwrap().file_name().to_string_lossy().into_owned();
            let line = format!("{key} = \"../target/ferry-hooks/rpm/{key}\"");
            assert!(manifest.contains(&line), "agent/Cargo.toml lacks `{line}`");
        }
    }

    #[test]
    fn cargo_deb_and_cargo_generate_rpm_packages_install_with_ferry_scripts() {
        let scratch = Scratch::new("ferry-cargo-tools");
        let (deb, rpm) = build(scratch.path());
        assert_metadata_names_every_scriptlet();
        // The tools carried ferry's scripts, not their own.
        let scripts = run(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
        assert!(scripts.contains("Generated by ferry"), "{scripts}");
        let postinst = run(Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("postinst"));
        assert!(postinst.contains("Generated by ferry"), "{postinst}");

        let debian = Host::new(HostKind::Debian);
        debian.copy_in(&deb, "/root/agent.deb");
        debian.sh_ok("dpkg -i /root/agent.deb");
        assert_installed_layout(&debian, DEB_UNITS, MAN_GZ);
        write_admin_files(&debian);
        debian.sh_ok("dpkg -r roboconf-agent");
        assert_admin_files_kept(&debian);

        let rpm_host = Host::new(HostKind::Rpm);
        rpm_host.copy_in(&rpm, "/root/agent.rpm");
        rpm_host.sh_ok("rpm -i /root/agent.rpm");
        assert_installed_layout(&rpm_host, RPM_UNITS, "/usr/share/man/man1/roboconf-agent.1");
    }
}
