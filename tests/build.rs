//! `ferry build` of the reference agent and of ferry itself, checked with
//! the tools a Debian or RPM maintainer would use: lintian, rpmlint,
//! dpkg-deb, rpm, shellcheck.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const SOURCE_DATE_EPOCH: &str = "1700000000";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .current_dir(repo())
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        .output()
        .expect("ferry runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A descriptor's packages, built (its [build] command included) once for
/// every test here.
struct Built {
    deb: PathBuf,
    rpm: PathBuf,
    /// What `ferry build` printed.
    output: String,
}

/// `ferry build --json` with `args`, into a directory of its own, the
/// packages' paths read from its report.
fn build(name: &str, args: &[&str]) -> Built {
    let out = tempdir(name);
    let mut all = vec!["build", "--json", "--out", out.to_str().unwrap()];
    all.extend(args);
    let o = ferry(&all);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON report on stdout ({e}): {}", text(&o)));
    let path = |format: &str| {
        report["packages"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["format"] == format))
            .and_then(|p| p["path"].as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no {format} package in {report:#}"))
    };
    Built {
        deb: path("deb"),
        rpm: path("rpm"),
        output: text(&o),
    }
}

/// The reference agent's packages (pkg/ferry.toml).
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let built = build("build", &["--version", "1.2.0-rc.1"]);
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        assert!(built
            .deb
            .ends_with(format!("roboconf-agent_1.2.0~rc.1-1_{arch}.deb")));
        assert!(built.rpm.ends_with(format!(
            "roboconf-agent-1.2.0~rc.1-1.{}.rpm",
            std::env::consts::ARCH
        )));
        built
    })
}

/// The same packages with the small profile (xz payloads in both), built
/// from what the first build's command made.
fn built_small() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        built();
        build(
            "small",
            &[
                "--version",
                "1.2.0-rc.1",
                "--no-build-command",
                "--profile",
                "small",
            ],
        )
    })
}

/// ferry's own packages (pkg/ferry-cli.toml), at the version of its
/// Cargo.toml.
fn ferry_built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| build("ferry-cli", &["--descriptor", "pkg/ferry-cli.toml"]))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn assert_lintian_clean(deb: &Path) {
    let o = run(Command::new("lintian")
        .args(["--fail-on", "error,warning", "--allow-root"])
        .arg(deb));
    let flagged: Vec<&str> = std::str::from_utf8(&o.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(o.status.success() && flagged.is_empty(), "{}", text(&o));
}

fn assert_rpmlint_clean(rpm: &Path) {
    // ci/rpmlintrc filters exactly one check, with its reason.
    let o = run(Command::new("rpmlint")
        .arg("-r")
        .arg(repo().join("ci/rpmlintrc"))
        .arg(rpm));
    let errors: Vec<&str> = std::str::from_utf8(&o.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains(": E: "))
        .collect();
    assert!(errors.is_empty(), "{}", text(&o));
    assert!(text(&o).contains("0 errors"), "{}", text(&o));
}

#[test]
fn lintian_reports_no_error_and_no_warning() {
    for built in [built(), built_small()] {
        assert_lintian_clean(&built.deb);
    }
}

#[test]
fn rpmlint_reports_no_error() {
    for built in [built(), built_small()] {
        assert_rpmlint_clean(&built.rpm);
    }
}

#[test]
fn rpm_verifies_the_header_and_payload_digests() {
    use sha2::{Digest, Sha256};
    for built in [built(), built_small()] {
        // rpm's own check of what ferry rewrites after the rpm crate: the
        // compressed payload's digest and the header's.
        let o = run(Command::new("rpm").arg("-Kv").arg(&built.rpm));
        let report = text(&o);
        assert!(o.status.success(), "{report}");
        for line in ["Header SHA256 digest: OK", "Payload SHA256 digest: OK"] {
            assert!(report.contains(line), "no `{line}` in {report}");
        }
        assert!(!report.contains("NOT OK"), "{report}");
        // The uncompressed archive's digest, which the patched rpm crate
        // computes (vendor/README.md) and `rpm -K` does not report once
        // the payload's digest is good.
        let archive = run(Command::new("rpm2cpio").arg(&built.rpm)).stdout;
        let alt = run(Command::new("rpm")
            .args(["-qp", "--qf", "%{PAYLOADDIGESTALT}"])
            .arg(&built.rpm));
        assert_eq!(
            String::from_utf8_lossy(&alt.stdout),
            format!("{:x}", Sha256::digest(&archive)),
            "{}",
            built.rpm.display()
        );
    }
}

#[test]
fn both_profiles_pack_the_same_archives() {
    // rpm2cpio and dpkg-deb decompress with rpm's and dpkg's own code.
    let cpio = |rpm: &Path| run(Command::new("rpm2cpio").arg(rpm)).stdout;
    let tar = |deb: &Path| run(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb)).stdout;
    let (fast, small) = (built(), built_small());
    let small_cpio = cpio(&small.rpm);
    assert!(!small_cpio.is_empty());
    assert!(cpio(&fast.rpm) == small_cpio, "the rpm payloads differ");
    let small_tar = tar(&small.deb);
    assert!(!small_tar.is_empty());
    assert!(tar(&fast.deb) == small_tar, "the deb data members differ");
    // The fast .deb's data member is gzip in members of 1 MiB, which
    // dpkg-deb has just read as one stream: a reader of one member stops
    // after the first MiB.
    let data = run(Command::new("ar")
        .arg("p")
        .arg(&fast.deb)
        .arg("data.tar.gz"))
    .stdout;
    assert!(small_tar.len() > 2 << 20, "too small to span members");
    let mut first = Vec::new();
    flate2::read::GzDecoder::new(&data[..])
        .read_to_end(&mut first)
        .unwrap();
    assert_eq!(first.len(), 1 << 20);
}

#[test]
fn deb_carries_every_file_with_its_mode_and_owner() {
    let o = run(Command::new("dpkg-deb").arg("--contents").arg(&built().deb));
    let listing = String::from_utf8(o.stdout).unwrap();
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/roboconf-agent"),
        ("-rw-r--r--", "./etc/roboconf-agent/agent.toml"),
        ("-rw-r--r--", "./lib/systemd/system/roboconf-agent.service"),
        ("-rw-r--r--", "./usr/share/man/man1/roboconf-agent.1.gz"),
        ("-rw-r--r--", "./usr/share/doc/roboconf-agent/copyright"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(path))
            .unwrap_or_else(|| panic!("{path} missing from\n{listing}"));
        assert!(line.starts_with(mode), "{line}");
        assert!(line.contains("root/root"), "{line}");
    }
    assert!(
        !listing.contains("./var/"),
        "state is made by the scripts, never shipped"
    );
    let field = |name: &str| {
        let o = run(Command::new("dpkg-deb")
            .arg("--field")
            .arg(&built().deb)
            .arg(name));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    assert_eq!(field("Version"), "1.2.0~rc.1-1");
    assert!(
        field("Depends").contains("libc6 (>= 2."),
        "{}",
        field("Depends")
    );
    let conffiles = run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&built().deb)
        .arg("conffiles"));
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout),
        "/etc/roboconf-agent/agent.toml\n"
    );
}

#[test]
fn rpm_carries_every_file_with_its_mode_and_flags() {
    let o = run(Command::new("rpm")
        .args([
            "-qp",
            "--queryformat",
            "[%{FILENAMES} %{FILEMODES:octal} %{FILEUSERNAME} %{FILEFLAGS:fflags}\n]",
        ])
        .arg(&built().rpm));
    let listing = String::from_utf8(o.stdout).unwrap();
    for expected in [
        "/usr/bin/roboconf-agent 100755 root ",
        "/etc/roboconf-agent/agent.toml 100644 root cn",
        "/usr/lib/systemd/system/roboconf-agent.service 100644 root ",
        "/usr/share/man/man1/roboconf-agent.1.gz 100644 root d",
    ] {
        assert!(
            listing.lines().any(|l| l.starts_with(expected)),
            "{expected:?} missing from\n{listing}"
        );
    }
    let evr = run(Command::new("rpm")
        .args(["-qp", "--queryformat", "%{VERSION}-%{RELEASE}"])
        .arg(&built().rpm));
    assert_eq!(String::from_utf8_lossy(&evr.stdout), "1.2.0~rc.1-1");
}

/// Builds again with `args` into another directory and compares each
/// package byte for byte with `first`'s.
fn assert_rebuilt_identically(name: &str, first: &Built, args: &[&str]) {
    let again = build(name, args);
    for (one, two) in [(&first.deb, &again.deb), (&first.rpm, &again.rpm)] {
        assert_eq!(one.file_name(), two.file_name());
        assert!(
            std::fs::read(one).unwrap() == std::fs::read(two).unwrap(),
            "{} and {} differ",
            one.display(),
            two.display()
        );
    }
}

#[test]
fn two_builds_with_the_same_source_date_are_byte_identical() {
    assert_rebuilt_identically(
        "again",
        built(),
        &["--no-build-command", "--version", "1.2.0-rc.1"],
    );
}

#[test]
fn rendered_scripts_pass_shellcheck() {
    let out = tempdir("hooks");
    let o = ferry(&["hooks", "render", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // Every path printed but the hook's manifest is a script.
    let scripts: Vec<PathBuf> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.ends_with("ferry-package.json"))
        .map(PathBuf::from)
        .collect();
    assert!(scripts.len() >= 8, "{scripts:?}");
    let check = run(Command::new("shellcheck").args(["-s", "sh"]).args(&scripts));
    assert!(check.status.success(), "{}", text(&check));
    for script in &scripts {
        let body = std::fs::read_to_string(script).unwrap();
        assert!(
            body.contains("\nset -e\n"),
            "{} lacks set -e",
            script.display()
        );
        assert!(!body.contains("eval "), "{} uses eval", script.display());
    }
}

/// The enrolment script `ferry enroll cloud-config` embeds (docs/CLOUD-INIT.md)
/// is held to the maintainer scripts' rules: shellcheck clean, `set -eu`,
/// no eval.
#[test]
fn enrolment_script_passes_shellcheck() {
    let script = repo().join("pkg/cloud-init/ferry-enroll");
    let check = run(Command::new("shellcheck").args(["-s", "sh"]).arg(&script));
    assert!(check.status.success(), "{}", text(&check));
    let body = std::fs::read_to_string(&script).unwrap();
    assert!(body.starts_with("#!/bin/sh\n") && body.contains("\nset -eu\n"));
    assert!(!body.contains("eval "), "{} uses eval", script.display());
}

/// A copy of pkg/ with `file` (the descriptor or the unit) edited.
fn edited_pkg(name: &str, file: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let dir = tempdir(name);
    for entry in std::fs::read_dir(repo().join("pkg")).unwrap() {
        let path = entry.unwrap().path();
        // The descriptors and units; pkg/cloud-init/ is not the agent's.
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let path = dir.join(file);
    let original = std::fs::read_to_string(&path).unwrap();
    let edited = edit(&original);
    assert_ne!(edited, original, "the edit for {name} changed nothing");
    std::fs::write(&path, edited).unwrap();
    // The payload already exists; point at it without rebuilding.
    let descriptor = dir.join("ferry.toml");
    let text = std::fs::read_to_string(&descriptor).unwrap();
    let text = text.replace("\"../", &format!("\"{}/", repo().display()));
    std::fs::write(&descriptor, text).unwrap();
    dir
}

/// A copy of pkg/ with the descriptor edited, for the refusal tests.
fn broken_descriptor(name: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    edited_pkg(name, "ferry.toml", edit)
}

fn assert_refused(dir: &Path, field: &str, words: &[&str]) {
    let out = dir.join("dist");
    let o = ferry(&[
        "build",
        "--no-build-command",
        "--descriptor",
        dir.join("ferry.toml").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let all = text(&o);
    assert_eq!(
        o.status.code(),
        Some(3),
        "not refused (exit status 3): {all}"
    );
    assert!(all.contains("ferry.toml"), "no file named: {all}");
    assert!(
        all.contains(&format!("field `{field}`")),
        "field {field} not named: {all}"
    );
    assert!(all.contains("fix:"), "no fix offered: {all}");
    for w in words {
        assert!(all.contains(w), "{w:?} missing: {all}");
    }
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
        "a package was written"
    );
}

#[test]
fn bad_descriptors_are_refused_with_file_field_and_fix() {
    // The copies point at the payload the shared build made.
    let _ = built();
    // (name, text replaced once, replacement, field named, words shown)
    let cases: &[(&str, &str, &str, &str, &[&str])] = &[
        (
            "typo",
            "revision =",
            "revison =",
            "revison",
            &["did you mean `revision`", "line"],
        ),
        (
            "version",
            "revision = \"1\"",
            "revision = \"1\"\nversion = \"1.0\"",
            "package.version",
            &["not a semantic version"],
        ),
        (
            "prerelease",
            "revision = \"1\"",
            "revision = \"1\"\nversion = \"1.0.0-alpha.beta\"",
            "package.version",
            &["rpm"],
        ),
        (
            "asset",
            "source = \"agent.toml\"",
            "source = \"agnet.toml\"",
            "asset[1].source",
            &["does not exist"],
        ),
        (
            "root",
            "dest = \"/usr/bin/roboconf-agent\"",
            "dest = \"/srv/roboconf-agent\"",
            "asset[0].dest",
            &["outside the usual roots"],
        ),
        (
            "mode",
            "mode = \"0755\"",
            "mode = \"0799\"",
            "asset[0].mode",
            &["not an octal mode"],
        ),
        (
            "world",
            "mode = \"0755\"",
            "mode = \"0777\"",
            "asset[0].mode",
            &["world-writable"],
        ),
        (
            "arch",
            "architecture = \"auto\"",
            "architecture = \"amd46\"",
            "package.architecture",
            &["did you mean `amd64`"],
        ),
        (
            "user",
            "user = \"roboconf-agent\"",
            "user = \"root\"",
            "service.user",
            &["must not run as root"],
        ),
        (
            "unit",
            "directories = [",
            "directories = [\"/var/lib/other\", ",
            "service.unit",
            &["ReadWritePaths", "/var/lib/other"],
        ),
        (
            "socket",
            "socket = \"roboconf-agent.socket\"",
            "socket = \"roboconf-agent.service\"",
            "service.socket",
            &["not named after the service", "roboconf-agent.socket"],
        ),
        (
            "live",
            "live = [\"work\", \"spawn\"]",
            "live = [\"work\", \"work/logs\"]",
            "state.live[1]",
            &["`work/logs` is not a plain name", "top-level entries"],
        ),
        // Checked with the rest: before, a bad rpm requirement failed while
        // the rpm was written, and the .deb built beside it landed.
        (
            "rpm-dependency",
            "rpm = [\"shadow-utils\"]",
            "rpm = [\"shadow-utils >== 4\"]",
            "dependencies.rpm[0]",
            &["`>==` is not a comparison", "NAME OP VERSION"],
        ),
        (
            "deb-dependency",
            "\"passwd\"",
            "\"passwd (> 1)\"",
            "dependencies.deb[1]",
            &["`>` is not a comparison", "(OP VERSION)"],
        ),
    ];
    for (name, from, to, field, words) in cases {
        let dir = broken_descriptor(name, |s| s.replacen(from, to, 1));
        assert_refused(&dir, field, words);
    }
    // A socket-activated agent whose runtime directory, and the socket in
    // it, systemd would remove at each stop.
    let dir = edited_pkg("preserve", "roboconf-agent.service", |s| {
        s.replace("RuntimeDirectoryPreserve=yes\n", "")
    });
    assert_refused(&dir, "service.unit", &["RuntimeDirectoryPreserve=yes"]);
}

/// The exit statuses README.md documents (`ferry::exit`): 2 for a usage
/// error, 3 for a refusal (bad descriptors above, a bad channel name here),
/// 1 for a failure, 4 when a build wrote one package and failed the other,
/// naming the one written.
#[test]
fn exit_statuses_tell_usage_refusal_failure_and_partial_work() {
    let o = ferry(&["build", "--no-such-option"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    let repo_dir = tempdir("exit-refused");
    let o = ferry(&[
        "publish",
        "--repo",
        repo_dir.to_str().unwrap(),
        "--channel",
        "no/slashes",
        "--key",
        "nobody@example.org",
        "missing.deb",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("channel name"), "{}", text(&o));

    let o = ferry(&[
        "state",
        "list",
        "--package",
        "no-such-agent",
        "--root",
        repo_dir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // The rpm's name is taken by a directory with something in it: the rpm
    // cannot be renamed into place, the .deb is.
    let _ = built();
    let out = tempdir("exit-partial");
    let rpm_name = built().rpm.file_name().unwrap();
    std::fs::create_dir_all(out.join(rpm_name).join("occupied")).unwrap();
    let o = ferry(&[
        "build",
        "--no-build-command",
        "--version",
        "1.2.0-rc.1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(4), "{all}");
    let deb = out.join(built().deb.file_name().unwrap());
    assert!(deb.is_file(), "{all}");
    assert!(
        all.contains("partially done") && all.contains(&format!("wrote {}", deb.display())),
        "{all}"
    );

    let help = text(&ferry(&["--help"]));
    assert!(help.contains("Exit statuses: 0 done; 1 failed"), "{help}");
}

/// The reference agent's unit is sandboxed (docs/SECURITY.md, "The unit's
/// sandbox"): `systemd-analyze security` rates its exposure at most 2.0.
/// Offline, the rating counts only what the file says; a booted lab host
/// rates the installed unit the same (0.3 with systemd 252).
#[test]
fn the_agents_unit_is_exposed_at_most_2_0() {
    let unit = repo().join("pkg/roboconf-agent.service");
    let o = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&unit));
    let all = text(&o);
    let exposure: f64 = all
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for roboconf-agent.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in {all}"));
    eprintln!("exposure of {}: {exposure}", unit.display());
    assert!(exposure <= 2.0, "exposure {exposure} is above 2.0: {all}");
    assert!(o.status.success(), "above --threshold=20: {all}");
}

/// The reference agent's unit has ferry's whole hardening set: its build
/// warns about nothing.
#[test]
fn the_reference_build_warns_about_nothing() {
    let output = &built().output;
    assert!(output.contains("ferry: packaging"), "{output}");
    // The [build] command (cargo) prints to the same stream: only ferry's
    // own lines count.
    let warnings: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("ferry: ") && l.contains("warning"))
        .collect();
    assert!(warnings.is_empty(), "{output}");
}

/// A unit without part of the hardening set is built, with a warning that
/// names the file, the directive and the fix, on stderr and in --json.
#[test]
fn a_unit_without_the_hardening_set_is_built_with_a_warning() {
    let _ = built();
    let dir = edited_pkg("unhardened", "roboconf-agent.service", |unit| {
        unit.replace("ProtectClock=yes\n", "")
    });
    let o = ferry(&[
        "build",
        "--no-build-command",
        "--format",
        "deb",
        "--json",
        "--descriptor",
        dir.join("ferry.toml").to_str().unwrap(),
        "--out",
        dir.join("dist").to_str().unwrap(),
    ]);
    let all = text(&o);
    assert!(o.status.success(), "a warning stopped the build: {all}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("roboconf-agent.service: warning: the unit lacks 1 of ferry's hardening set: ProtectClock")
            && stderr.contains("fix: add to its [Service] section ProtectClock=yes"),
        "{all}"
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(
        json["packages"].as_array().map(Vec::len),
        Some(1),
        "{json:#}"
    );
    let warnings = json["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{json:#}");
    assert_eq!(warnings[0]["missing"], serde_json::json!(["ProtectClock"]));
    assert_eq!(
        warnings[0]["file"],
        dir.join("roboconf-agent.service").to_str().unwrap()
    );
    assert!(warnings[0]["fix"]
        .as_str()
        .unwrap()
        .contains("ProtectClock=yes"));
}

/// Debian's piuparts installs, removes and purges the .deb in a clean
/// bookworm chroot (debootstrapped from the Debian mirror, with the
/// package's dependencies) and fails on anything left behind. Ignored:
/// only what systemd itself leaves in any chroot where it is installed
/// (its coredump, pstore and DynamicUser directories, and the .ssh
/// directory of root's home its tmpfiles create).
#[test]
fn piuparts_installs_removes_and_purges_cleanly() {
    const SYSTEMD_LEAVES: [&str; 6] = [
        "/var/lib/systemd/coredump/",
        "/var/lib/systemd/pstore/",
        "/var/cache/private/",
        "/var/lib/private/",
        "/var/log/private/",
        "/root/.ssh/",
    ];
    let mirror =
        std::env::var("FERRY_LAB_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let mut piuparts = Command::new("piuparts");
    piuparts.args(["-d", "bookworm", "-m", &mirror, "--no-upgrade-test"]);
    piuparts.arg("--tmpdir=/var/tmp");
    for ignored in SYSTEMD_LEAVES {
        piuparts.args(["-i", ignored]);
    }
    let o = run(piuparts.arg(&built().deb));
    let log = text(&o);
    let failures: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("FAIL"))
        .take(20)
        .collect();
    assert!(
        o.status.success() && log.contains("PASS: All tests."),
        "piuparts failed:\n{}",
        failures.join("\n")
    );
}

/// ferry's own package: lintian and rpmlint clean, the binary, a manual
/// page for every command (the ones `ferry generate` writes), the three
/// completions and the docs; no maintainer script, since there is no
/// agent; and a second build, [build] command included, byte-identical.
#[test]
fn ferrys_own_packages_carry_every_manual_page_and_completion() {
    let built = ferry_built();
    assert_lintian_clean(&built.deb);
    assert_rpmlint_clean(&built.rpm);

    let generated = tempdir("generated");
    let o = ferry(&["generate", "--out", generated.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let mut expected = vec![
        "/usr/bin/ferry".to_string(),
        "/usr/share/bash-completion/completions/ferry".into(),
        "/usr/share/zsh/vendor-completions/_ferry".into(),
        "/usr/share/fish/vendor_completions.d/ferry.fish".into(),
        "/usr/share/doc/ferry/README.md".into(),
    ];
    for page in std::fs::read_dir(generated.join("man")).unwrap() {
        let page = page.unwrap().file_name();
        expected.push(format!("/usr/share/man/man1/{}.gz", page.to_string_lossy()));
    }
    assert!(expected.len() > 20, "{expected:?}");

    let deb =
        String::from_utf8(run(Command::new("dpkg-deb").arg("--contents").arg(&built.deb)).stdout)
            .unwrap();
    let rpm =
        String::from_utf8(run(Command::new("rpm").arg("-qlp").arg(&built.rpm)).stdout).unwrap();
    for path in &expected {
        assert!(
            deb.lines().any(|l| l.ends_with(&format!(".{path}"))),
            "{path} missing from\n{deb}"
        );
        assert!(rpm.lines().any(|l| l == path), "{path} missing from\n{rpm}");
    }
    assert!(deb.contains("./usr/share/doc/ferry/copyright"), "{deb}");
    let info = text(&run(Command::new("dpkg-deb").arg("--info").arg(&built.deb)));
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        assert!(!info.contains(script), "a {script} in\n{info}");
    }
    let scripts = run(Command::new("rpm")
        .args(["-qp", "--scripts"])
        .arg(&built.rpm));
    assert!(scripts.stdout.is_empty(), "{}", text(&scripts));

    assert_rebuilt_identically(
        "ferry-cli-again",
        built,
        &["--descriptor", "pkg/ferry-cli.toml"],
    );
}
