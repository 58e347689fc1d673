//! The mount table, from `/proc/self/mountinfo`: the only way dstrace learns about
//! mounts, since it never touches a path under a mount it may be diagnosing.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// One line of `/proc/PID/mountinfo` (proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Unique id of the mount.
    pub id: u32,
    /// Id of the parent mount.
    pub parent_id: u32,
    /// Device number of the filesystem (`st_dev`): major and minor.
    pub dev: (u32, u32),
    /// The directory of the filesystem that is mounted (`/` for the whole).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type (`nfs4`, `fuse.sshfs`, `ext4`, `cgroup2`, ...).
    pub fs_type: String,
    /// The source: `server:/export` for NFS, the device, or the daemon's name.
    pub source: String,
    /// Per-superblock options (`addr=10.0.0.5,...` for NFS).
    pub super_options: String,
}

/// Reads the mount table of this process.
pub fn read() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    Ok(parse(&text))
}

/// Parses the text of a `mountinfo` file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let id = fields.next()?.parse().ok()?;
    let parent_id = fields.next()?.parse().ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let root = PathBuf::from(unescape(fields.next()?));
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let mut after = after.split(' ');
    let fs_type = unescape(after.next()?);
    let source = unescape(after.next()?);
    let super_options = after.next().map(unescape).unwrap_or_default();
    Some(Mount { id, parent_id, dev, root, mount_point, fs_type, source, super_options })
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\012` for a newline,
/// `\134` for a backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid systems).
pub fn cgroup2_root(mounts: &[Mount]) -> Option<&Path> {
    mounts.iter().find(|mount| mount.fs_type == "cgroup2").map(|mount| mount.mount_point.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - tmpfs tmpfs rw,mode=755
36 25 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw
91 22 0:29 / /var/lib/nova/instances rw,relatime shared:40 - nfs4 10.0.0.5:/export rw,vers=4.2,addr=10.0.0.5
92 22 0:55 / /mnt/with\\040space rw - fuse.sshfs user@host:/ rw,user_id=0
bogus line
";

    #[test]
    fn parses_mountinfo() {
        let mounts = parse(FIXTURE);
        assert_eq!(mounts.len(), 5);
        let nfs = &mounts[3];
        assert_eq!((nfs.id, nfs.parent_id, nfs.dev), (91, 22, (0, 29)));
        assert_eq!(nfs.mount_point, Path::new("/var/lib/nova/instances"));
        assert_eq!((nfs.fs_type.as_str(), nfs.source.as_str()), ("nfs4", "10.0.0.5:/export"));
        assert!(nfs.super_options.contains("addr=10.0.0.5"));
        assert_eq!(mounts[4].mount_point, Path::new("/mnt/with space"));
        assert_eq!(cgroup2_root(&mounts), Some(Path::new("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\012c\\134d"), "a b\nc\\d");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn reads_this_machines_table() {
        let mounts = read().unwrap();
        assert!(mounts.iter().any(|mount| mount.mount_point == Path::new("/")));
    }
}
