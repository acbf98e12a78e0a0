//! The agent's system account, and running its program as that account:
//! what the agent does to its own state it does with its own rights, never
//! root's (docs/SECURITY.md), so the files it writes are its own without
//! any `chown` by root, and a link it planted leads it nowhere it could not
//! already go.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};
use nix::unistd::{getgrouplist, Group, User};

/// A user, its group and its supplementary groups, as `initgroups(3)` and
/// systemd's `User=`/`Group=` give them to the agent's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

impl Account {
    /// Looks up `user` and `group` in the system's databases (NSS).
    pub fn lookup(user: &str, group: &str) -> Result<Account> {
        let found = User::from_name(user)
            .with_context(|| format!("looking up the user `{user}`"))?
            .with_context(|| format!("the agent's user `{user}` does not exist"))?;
        let gid = if group.is_empty() {
            found.gid
        } else {
            Group::from_name(group)
                .with_context(|| format!("looking up the group `{group}`"))?
                .with_context(|| format!("the agent's group `{group}` does not exist"))?
                .gid
        };
        let c_user = CString::new(user).context("a user name holds a NUL byte")?;
        let groups = getgrouplist(&c_user, gid)
            .with_context(|| format!("listing the groups of `{user}`"))?;
        Ok(Account {
            name: user.to_string(),
            uid: found.uid.as_raw(),
            gid: gid.as_raw(),
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
            home: found.dir.display().to_string(),
        })
    }

    /// Makes `command` run as this account: supplementary groups, group,
    /// then user, in that order (each step needs the rights the next one
    /// drops), in the child between fork and exec. Only root can do it;
    /// anyone else runs the command as they are.
    pub fn run_as(&self, command: &mut Command) {
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        command
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            // The package manager's directory may be closed to the user.
            .current_dir("/");
        // SAFETY: the closure runs in the forked child and calls only
        // async-signal-safe functions (setgroups, setgid, setuid) on memory
        // allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_with_its_groups() {
        let root = Account::lookup("root", "root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0), "{:?}", root.groups);
    }

    #[test]
    fn an_unknown_user_is_named() {
        let err = Account::lookup("no-such-ferry-user", "").unwrap_err();
        assert!(format!("{err:#}").contains("`no-such-ferry-user` does not exist"));
    }

    /// The command runs with the account's ids, all of them (real,
    /// effective, saved) and no other group.
    #[test]
    fn a_command_runs_as_the_account() {
        let nobody = Account::lookup("nobody", "nogroup").unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "id -u; id -g; id -G; echo $HOME"]);
        nobody.run_as(&mut command);
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "run as root, as ci/test does"
        );
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], nobody.uid.to_string(), "{text}");
        assert_eq!(lines[1], nobody.gid.to_string(), "{text}");
        assert!(!lines[2].split(' ').any(|g| g == "0"), "{text}");
        assert_eq!(lines[3], nobody.home, "{text}");
    }
}
