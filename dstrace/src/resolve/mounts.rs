//! Mount tables, one per mount namespace, from `/proc/PID/mountinfo`: the only
//! way dstrace learns about mounts, since it never touches a path under a mount it
//! may be diagnosing.
//!
//! A task sees mounts through its own mount namespace (every container has one),
//! so a mount is named as the task's namespace names it: the table of a namespace
//! is read from a task in it, under the deadline of every `/proc` read that could
//! wait ([`crate::resolve::procfs::read_text_bounded`]), and read again when the
//! kernel says it changed. Mounts are found by what the kernel gives of them: a
//! mount ID (unique on the machine, whatever the namespace) or the device number
//! of a superblock; a mount that goes away (`umount -l`) keeps its name for the
//! waits that began on it.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::ffi::OsStringExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{kernel::decode::kernel_dev, resolve::procfs};

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
    /// The mount namespace it was seen in (the inode number of `/proc/PID/ns/mnt`;
    /// 0 when unknown).
    pub namespace: u64,
}

/// Reads the mount table of this process.
pub fn read() -> Result<Vec<Mount>> {
    let bytes = procfs::read_bounded(Path::new("/proc/self/mountinfo"), procfs::BOUNDED_READ)
        .context("cannot read /proc/self/mountinfo")?;
    Ok(parse_bytes(&bytes))
}

/// Parses the text of a `mountinfo` file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    parse_bytes(text.as_bytes())
}

/// Parses a `mountinfo` file as read: a line whose mount point is not UTF-8 is
/// that mount's own business, the others are read as usual.
pub fn parse_bytes(bytes: &[u8]) -> Vec<Mount> {
    bytes.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<Mount> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let at = line.windows(3).position(|w| w == b" - ")?;
    let (before, after) = (&line[..at], &line[at + 3..]);
    let mut fields = before.split(|&b| b == b' ');
    let number = |field: &[u8]| std::str::from_utf8(field).ok()?.parse().ok();
    let id = number(fields.next()?)?;
    let parent_id = number(fields.next()?)?;
    let dev_field = fields.next()?;
    let colon = dev_field.iter().position(|&b| b == b':')?;
    let dev = (number(&dev_field[..colon])?, number(&dev_field[colon + 1..])?);
    let root = path(fields.next()?);
    let mount_point = path(fields.next()?);
    let mut after = after.split(|&b| b == b' ');
    let fs_type = text(after.next()?);
    let source = text(after.next()?);
    let super_options = after.next().map(text).unwrap_or_default();
    Some(Mount { id, parent_id, dev, root, mount_point, fs_type, source, super_options, namespace: 0 })
}

/// A path field: its bytes as they are (a mount point may hold any byte but NUL,
/// and a command on it must name it exactly).
fn path(field: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(unescape(field)))
}

/// A field shown as text (type, source, options): not UTF-8 is replaced.
fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\012` for a newline,
/// `\134` for a backslash).
fn unescape(bytes: &[u8]) -> Vec<u8> {
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
    out
}

/// How long the namespace of a process is taken as known.
const NAMESPACE_TTL: Duration = Duration::from_secs(1);
/// The most processes whose namespace is remembered.
const NAMESPACE_PIDS: usize = 4096;
/// The most namespaces whose tables are kept (past it, all but dstrace's own are
/// forgotten and read again when needed).
const SPACES: usize = 256;
/// The most mounts gone kept per namespace.
const GONE: usize = 1024;

/// The mounts of one namespace.
struct Space {
    mounts: Vec<Mount>,
    /// Mounts that went away since they were read, newest last: their waits may
    /// still go on (`umount -l` detaches a mount its waiters keep).
    gone: Vec<Mount>,
    /// Its `mountinfo`, kept open: the kernel flags it (`POLLPRI`) when a mount is
    /// made or removed in the namespace.
    watch: Option<File>,
    /// A process in it, whose `mountinfo` is read (`None`: dstrace itself).
    reader: Option<u32>,
}

impl Space {
    /// Reads the table of the namespace `namespace` from `reader`'s `mountinfo`.
    fn read(namespace: u64, reader: Option<u32>) -> Space {
        let path = mountinfo_path(reader);
        let watch = File::open(&path).ok();
        let bytes = procfs::read_bounded(&path, procfs::BOUNDED_READ).unwrap_or_default();
        let mut mounts = parse_bytes(&bytes);
        for mount in &mut mounts {
            mount.namespace = namespace;
        }
        Space { mounts, gone: Vec::new(), watch, reader }
    }

    /// Reads the table again, keeping what went away among the mounts gone.
    fn reread(&mut self, namespace: u64) {
        let fresh = Space::read(namespace, self.reader);
        if fresh.watch.is_none() {
            // The reader is gone: keep what is known.
            return;
        }
        let mut gone = std::mem::take(&mut self.gone);
        gone.extend(self.mounts.drain(..).filter(|old| !fresh.mounts.iter().any(|new| same(old, new))));
        let excess = gone.len().saturating_sub(GONE);
        gone.drain(..excess);
        *self = Space { gone, ..fresh };
    }

    /// Whether the kernel says the table changed since it was read (a `poll` of
    /// `mountinfo`: one system call, no wait).
    fn changed(&self) -> bool {
        use std::os::fd::AsRawFd as _;
        let Some(watch) = &self.watch else { return false };
        let mut fds = [libc::pollfd { fd: watch.as_raw_fd(), events: libc::POLLPRI, revents: 0 }];
        // SAFETY: one valid pollfd whose fd stays open for the call; no wait.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        ready > 0 && fds[0].revents & (libc::POLLPRI | libc::POLLERR) != 0
    }

    fn by_id(&self, id: u32) -> Option<&Mount> {
        self.mounts.iter().find(|mount| mount.id == id)
    }

    /// The mount of a device: bind mounts share one, so the one of the whole
    /// filesystem (root `/`) first.
    fn by_dev(&self, dev: (u32, u32)) -> Option<&Mount> {
        let mut candidates = self.mounts.iter().filter(|mount| mount.dev == dev);
        let first = candidates.next()?;
        Some(
            std::iter::once(first)
                .chain(candidates)
                .find(|mount| mount.root == Path::new("/"))
                .unwrap_or(first),
        )
    }
}

/// Two lines of a table naming the same mount.
fn same(a: &Mount, b: &Mount) -> bool {
    a.id == b.id && a.dev == b.dev && a.mount_point == b.mount_point
}

/// `/proc/PID/mountinfo`, or dstrace's own.
fn mountinfo_path(pid: Option<u32>) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/mountinfo")),
        None => PathBuf::from("/proc/self/mountinfo"),
    }
}

/// The mount namespace of a process: the inode number `/proc/PID/ns/mnt` names
/// (`mnt:[4026531841]`), which the kernel answers from the task itself.
pub fn namespace_of(pid: Option<u32>) -> Option<u64> {
    let link = match pid {
        Some(pid) => std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?,
        None => std::fs::read_link("/proc/self/ns/mnt").ok()?,
    };
    link.to_str()?.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

/// The mount tables of the namespaces of the tasks seen, dstrace's own first.
pub struct MountTable {
    /// dstrace's own namespace (0 when unknown).
    own: u64,
    spaces: HashMap<u64, Space>,
    /// The namespace of each process looked up lately, and when.
    namespaces: HashMap<u32, (u64, Instant)>,
}

impl MountTable {
    /// dstrace's own table (empty if `/proc/self/mountinfo` cannot be read).
    pub fn read() -> MountTable {
        let own = namespace_of(None).unwrap_or(0);
        MountTable { own, spaces: [(own, Space::read(own, None))].into(), namespaces: HashMap::new() }
    }

    /// A table of these mounts, as dstrace's own namespace (tests).
    pub fn of(mounts: Vec<Mount>) -> MountTable {
        let space = Space { mounts, gone: Vec::new(), watch: None, reader: None };
        MountTable { own: 0, spaces: [(0, space)].into(), namespaces: HashMap::new() }
    }

    /// dstrace's own namespace.
    pub fn own_namespace(&self) -> u64 {
        self.own
    }

    /// Reads again the tables the kernel says changed since they were read.
    pub fn refresh_if_changed(&mut self) {
        for (&namespace, space) in &mut self.spaces {
            if space.changed() {
                space.reread(namespace);
            }
        }
    }

    /// The namespace of process `pid` (remembered for a second); dstrace's own
    /// when it cannot be read (the process is gone, or hides it).
    fn namespace(&mut self, pid: u32) -> u64 {
        if let Some(&(namespace, seen)) = self.namespaces.get(&pid) {
            if seen.elapsed() < NAMESPACE_TTL {
                return namespace;
            }
        }
        let Some(namespace) = namespace_of(Some(pid)) else { return self.own };
        if self.namespaces.len() >= NAMESPACE_PIDS {
            self.namespaces.clear();
        }
        self.namespaces.insert(pid, (namespace, Instant::now()));
        namespace
    }

    /// The table of the namespace of process `pid`, read from it if new.
    fn space(&mut self, pid: u32) -> (u64, &mut Space) {
        let namespace = self.namespace(pid);
        if !self.spaces.contains_key(&namespace) && self.spaces.len() >= SPACES {
            let own = self.own;
            self.spaces.retain(|&namespace, _| namespace == own);
        }
        let space = self.spaces.entry(namespace).or_insert_with(|| Space::read(namespace, Some(pid)));
        (namespace, space)
    }

    /// The mount with this mount ID, as process `pid` sees it: from its
    /// namespace's table (read again once if missing), else among the mounts gone
    /// from it with the same device (`dev`, kernel encoding, 0 if unknown), else
    /// from any table known (mount IDs are unique on the machine).
    pub fn by_id(&mut self, pid: u32, id: u32, dev: u32) -> Option<Mount> {
        let wanted = (dev != 0).then(|| kernel_dev(dev));
        let fits = move |mount: &Mount| mount.id == id && wanted.is_none_or(|dev| mount.dev == dev);
        let (namespace, space) = self.space(pid);
        if let Some(found) = space.by_id(id).filter(|mount| fits(mount)) {
            return Some(found.clone());
        }
        space.reread(namespace);
        if let Some(found) = space.by_id(id).filter(|mount| fits(mount)) {
            return Some(found.clone());
        }
        if let Some(found) = space.gone.iter().rev().find(|mount| fits(mount)) {
            return Some(found.clone());
        }
        self.spaces.values().find_map(|space| space.by_id(id).filter(|mount| fits(mount))).cloned()
    }

    /// The mount of a device number in the kernel's encoding (`s_dev`: major in the
    /// high 12 bits, minor in the low 20) as process `pid` sees it, read again once
    /// if missing, else among the mounts gone.
    pub fn by_dev(&mut self, pid: u32, dev: u32) -> Option<Mount> {
        let wanted = kernel_dev(dev);
        let (namespace, space) = self.space(pid);
        if let Some(found) = space.by_dev(wanted) {
            return Some(found.clone());
        }
        space.reread(namespace);
        if let Some(found) = space.by_dev(wanted) {
            return Some(found.clone());
        }
        space.gone.iter().rev().find(|mount| mount.dev == wanted).cloned()
    }
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
    fn a_mount_point_not_utf8_is_kept_as_bytes_and_spoils_no_other() {
        use std::os::unix::ffi::OsStrExt as _;
        let mut text = b"36 35 0:40 / /mnt/bad\xff\\134 rw - tmpfs no\xfene rw\n".to_vec();
        text.extend_from_slice(b"37 35 0:42 / /mnt/x rw - fuse.x x rw\n");
        let mounts = parse_bytes(&text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].mount_point.as_os_str().as_bytes(), b"/mnt/bad\xff\\");
        assert_eq!(mounts[0].source, "no\u{fffd}ne");
        assert_eq!(mounts[1].mount_point, Path::new("/mnt/x"));
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(b"a\\040b\\012c\\134d"), b"a b\nc\\d");
        assert_eq!(unescape(b"trailing\\04"), b"trailing\\04");
    }

    /// A pid no task has: its namespace is dstrace's own, the table's.
    const NO_TASK: u32 = u32::MAX;

    fn table() -> MountTable {
        MountTable::of(parse(
            "22 1 252:1 / / rw - ext4 /dev/vda1 rw\n\
             91 22 0:29 / /var/lib/nova rw - nfs4 10.0.0.5:/export rw,addr=10.0.0.5\n\
             92 22 0:55 / /tmp/fuse rw - fuse.dstrace-test dstrace-test rw\n\
             93 22 0:29 /sub /srv/bind rw - nfs4 10.0.0.5:/export rw\n",
        ))
    }

    #[test]
    fn mounts_by_device_prefer_the_whole_filesystem() {
        let mut table = table();
        let mount = table.by_dev(NO_TASK, 29).unwrap();
        assert_eq!(mount.mount_point, Path::new("/var/lib/nova"));
        assert_eq!(mount.source, "10.0.0.5:/export");
    }

    #[test]
    fn mounts_by_id_check_the_device_and_keep_those_gone() {
        let mut table = table();
        assert_eq!(table.by_id(NO_TASK, 93, 29).unwrap().mount_point, Path::new("/srv/bind"));
        assert_eq!(table.by_id(NO_TASK, 93, 55), None, "another superblock: not that mount");
        assert_eq!(table.by_id(NO_TASK, 92, 0).unwrap().fs_type, "fuse.dstrace-test");
        // `umount -l /tmp/fuse`: the mount leaves the table, its waits keep its name.
        let space = table.spaces.get_mut(&0).unwrap();
        let gone = space.mounts.remove(2);
        space.gone.push(gone);
        assert_eq!(table.by_id(NO_TASK, 92, 55).unwrap().mount_point, Path::new("/tmp/fuse"));
        assert_eq!(table.by_dev(NO_TASK, 55).unwrap().mount_point, Path::new("/tmp/fuse"));
    }

    #[test]
    fn namespaces_are_read_from_proc() {
        let own = namespace_of(None).unwrap();
        assert_eq!(namespace_of(Some(std::process::id())), Some(own));
        assert_eq!(namespace_of(Some(NO_TASK)), None);
        let table = MountTable::read();
        assert_eq!(table.own_namespace(), own);
    }

    #[test]
    fn reads_this_machines_table() {
        let mounts = read().unwrap();
        assert!(mounts.iter().any(|mount| mount.mount_point == Path::new("/")));
    }
}
