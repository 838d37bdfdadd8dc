//! The container user's passwd entry, read from the image.
//!
//! The agent never asks NSS (a static binary must not, and the guest's own
//! files are not the container's): it parses the image's `/etc/passwd`
//! itself. Only HOME comes from it, as runc does when the environment has
//! none. Supplementary groups are exactly the request's `additional_gids`,
//! also as runc does for a numeric `uid:gid` user: the client (containerd,
//! nerdctl) already resolved the image's `/etc/group` into that list.

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// runc's HOME for a uid without a passwd entry.
pub const DEFAULT_HOME: &str = "/";

/// The first entry of `passwd` (the file's text) with this uid.
pub fn by_uid(passwd: &str, uid: u32) -> Option<PasswdEntry> {
    passwd.lines().find_map(|line| {
        let line = line.trim_end();
        if line.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 6 {
            return None;
        }
        let entry = PasswdEntry {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
        };
        (entry.uid == uid).then_some(entry)
    })
}

/// HOME for `uid`: its passwd home directory, else [`DEFAULT_HOME`].
pub fn home(passwd: Option<&str>, uid: u32) -> String {
    passwd
        .and_then(|p| by_uid(p, uid))
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_HOME.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        broken line\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        dup:x:1000:5::/elsewhere:/bin/sh\n\
        nohome:x:7:7:::\n";

    #[test]
    fn finds_first_entry_by_uid() {
        let e = by_uid(PASSWD, 1000).unwrap();
        assert_eq!(e.name, "app");
        assert_eq!(e.home, "/home/app");
        assert_eq!(by_uid(PASSWD, 0).unwrap().home, "/root");
        assert!(by_uid(PASSWD, 4242).is_none());
    }

    #[test]
    fn home_falls_back_to_root_dir() {
        assert_eq!(home(Some(PASSWD), 1), "/usr/sbin");
        assert_eq!(home(Some(PASSWD), 4242), "/");
        assert_eq!(home(Some(PASSWD), 7), "/");
        assert_eq!(home(None, 0), "/");
    }
}
