//! Tests of the confined file operations, as root and as `nobody`.

use super::*;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// A fresh directory `name` under `base`.
fn fresh(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn message(e: anyhow::Error) -> String {
    format!("{e:#}")
}

/// Every hostile object the agent's user can plant, against every
/// operation root makes in its directories, in `base` (a directory of
/// the user running this). `canary` is a file outside it that must not
/// change.
fn hostile_cases(base: &Path) {
    let outside = fresh(base, "outside");
    let canary = outside.join("canary");
    std::fs::write(&canary, "canary\n").unwrap();
    std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::metadata(&canary).unwrap();
    let dir_path = fresh(base, "agent");
    let dir = Dir::open_trusted(&dir_path).unwrap();

    // A symlink where root writes a file: replaced, not followed.
    symlink(&canary, dir_path.join("marker")).unwrap();
    dir.replace_file("marker", b"upgrade\n", 0o644).unwrap();
    let marker = std::fs::symlink_metadata(dir_path.join("marker")).unwrap();
    assert!(marker.file_type().is_file());
    assert_eq!(
        std::fs::read(dir_path.join("marker")).unwrap(),
        b"upgrade\n"
    );

    // A symlink, a FIFO or a hard link where root appends: refused,
    // naming it; a FIFO does not block.
    symlink(&canary, dir_path.join("log")).unwrap();
    let err = message(dir.append("log", b"line\n", 0o640).unwrap_err());
    assert!(
        err.contains("log") && err.contains("symbolic link"),
        "{err}"
    );
    mkfifo(&dir_path.join("fifo"));
    let started = Instant::now();
    let err = message(dir.append("fifo", b"line\n", 0o640).unwrap_err());
    assert!(err.contains("fifo"), "{err}");
    let err = message(dir.open_file("fifo", None).unwrap_err());
    assert!(err.contains("a FIFO, not a regular file"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "a FIFO blocked");
    std::fs::write(dir_path.join("own"), "x").unwrap();
    std::fs::hard_link(dir_path.join("own"), dir_path.join("linked")).unwrap();
    let err = message(dir.append("linked", b"line\n", 0o640).unwrap_err());
    assert!(err.contains("hard link"), "{err}");
    dir.append("new.log", b"one\n", 0o640).unwrap();
    dir.append("new.log", b"two\n", 0o640).unwrap();
    assert_eq!(
        std::fs::read(dir_path.join("new.log")).unwrap(),
        b"one\ntwo\n"
    );

    // A directory on the way replaced by a symlink: nothing beneath it
    // is reached, for reading, creating or removing.
    symlink(&outside, dir_path.join("work")).unwrap();
    for err in [
        message(dir.open_file("work/canary", None).unwrap_err()),
        message(dir.open_dir("work").unwrap_err()),
        message(dir.refusal("work/new", dir.create_file("work/new", 0o644).unwrap_err())),
        message(dir.remove_file("work/canary").unwrap_err()),
    ] {
        assert!(
            err.contains("symbolic link") || err.contains("link"),
            "{err}"
        );
    }
    dir.remove_tree("work").unwrap();
    assert!(
        outside.join("canary").exists(),
        "remove_tree followed a link"
    );

    // A walk refuses a FIFO by name, lists sockets without opening
    // them, copes with a newline in a name and 200 levels.
    std::fs::remove_file(dir_path.join("log")).unwrap();
    let err = message(dir.walk(&[]).unwrap_err());
    assert!(err.contains("fifo") && err.contains("a FIFO"), "{err}");
    std::fs::remove_file(dir_path.join("fifo")).unwrap();
    std::fs::write(dir_path.join("two\nlines"), "x").unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(dir_path.join("sock")).unwrap();
    let deep: PathBuf = (0..200).map(|_| "d").collect();
    std::fs::create_dir_all(dir_path.join(&deep)).unwrap();
    std::fs::write(dir_path.join(&deep).join("leaf"), "deep").unwrap();
    let found = dir.walk(&[]).unwrap();
    let kind_of = |rel: &str| found.iter().find(|f| f.rel == rel).map(|f| f.kind.clone());
    assert_eq!(kind_of("two\nlines"), Some(Kind::File));
    assert_eq!(kind_of("sock"), Some(Kind::Socket));
    let leaf = format!("{}/leaf", deep.display());
    assert_eq!(kind_of(&leaf), Some(Kind::File));
    assert_eq!(dir.read(&leaf).unwrap().unwrap(), b"deep");
    let too_deep: PathBuf = (0..MAX_DEPTH + 1).map(|_| "e").collect();
    std::fs::create_dir_all(dir_path.join(&too_deep)).unwrap();
    let err = message(dir.walk(&[]).unwrap_err());
    assert!(err.contains(&format!("deeper than {MAX_DEPTH}")), "{err}");
    dir.remove_tree("e").unwrap();
    dir.remove_tree("d").unwrap();

    // A sparse file is seen as one, at once, whatever its size.
    let sparse = std::fs::File::create(dir_path.join("sparse")).unwrap();
    sparse.set_len(100 << 30).unwrap();
    let (file, stat) = dir.open_file("sparse", None).unwrap();
    assert!(has_hole(&file, stat.st_size as u64).unwrap());
    let (file, stat) = dir.open_file("own", None).unwrap();
    assert!(!has_hole(&file, stat.st_size as u64).unwrap());

    let after = std::fs::metadata(&canary).unwrap();
    assert_eq!(std::fs::read(&canary).unwrap(), b"canary\n");
    assert_eq!(
        (before.uid(), before.gid(), before.mode(), before.ino()),
        (after.uid(), after.gid(), after.mode(), after.ino())
    );
}

fn scratch(name: &str) -> PathBuf {
    fresh(
        &std::env::temp_dir(),
        &format!("ferry-confined-{name}-{}", std::process::id()),
    )
}

#[test]
fn hostile_objects_as_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root, as ci/test does"
    );
    let base = scratch("root");
    hostile_cases(&base);
    std::fs::remove_dir_all(&base).unwrap();
}

/// The same, and a bind mount, with the resolution kernels before 5.6
/// get (one component at a time): the two paths refuse alike. Run in a
/// child process, where switching openat2 off touches no other test.
#[test]
fn hostile_objects_without_openat2() {
    const CHILD: &str = "FERRY_CONFINED_NO_OPENAT2";
    if std::env::var_os(CHILD).is_some() {
        NO_OPENAT2.store(true, Ordering::Relaxed);
        let base = scratch("no-openat2");
        hostile_cases(&base);
        std::fs::remove_dir_all(&base).unwrap();
        return mount_case("no-openat2-mount");
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "confined::tests::hostile_objects_without_openat2",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same cases in a child process that runs as `nobody`, in a
/// directory of its own: the helpers need no privilege.
#[test]
fn hostile_objects_as_an_unprivileged_user() {
    const CHILD: &str = "FERRY_CONFINED_CHILD_DIR";
    if let Ok(dir) = std::env::var(CHILD) {
        // SAFETY: getuid cannot fail.
        assert_ne!(unsafe { libc::getuid() }, 0, "the child runs unprivileged");
        return hostile_cases(Path::new(&dir));
    }
    let base = scratch("nobody");
    let nobody = 65534;
    std::os::unix::fs::chown(&base, Some(nobody), Some(nobody)).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "confined::tests::hostile_objects_as_an_unprivileged_user",
        ])
        .env(CHILD, &base);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        child.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(nobody) != 0
                || libc::setuid(nobody) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = child.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&base).unwrap();
}

/// A bind mount inside the walked tree is refused, not crossed.
#[test]
fn a_mount_point_is_not_crossed() {
    mount_case("mount");
}

fn mount_case(name: &str) {
    let base = scratch(name);
    let (tree, elsewhere) = (base.join("tree"), base.join("elsewhere"));
    std::fs::create_dir_all(tree.join("mnt")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("secret"), "x").unwrap();
    let run = |program: &str, args: &[&str]| {
        let ok = Command::new(program).args(args).status().unwrap().success();
        assert!(ok, "{program} {args:?}");
    };
    let mnt = tree.join("mnt");
    run(
        "mount",
        &["--bind", elsewhere.to_str().unwrap(), mnt.to_str().unwrap()],
    );
    let dir = Dir::open_trusted(&tree).unwrap();
    let walked = dir.walk(&[]).map_err(message);
    let opened = dir.open_file("mnt/secret", None).map_err(message);
    run("umount", &[mnt.to_str().unwrap()]);
    let err = walked.unwrap_err();
    assert!(err.contains("mount point"), "{err}");
    let err = opened.unwrap_err();
    assert!(err.contains("another filesystem"), "{err}");
    std::fs::remove_dir_all(&base).unwrap();
}
