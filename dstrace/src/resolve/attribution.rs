//! Which mount and which file a D wait concerns.
//!
//! The kernel side notes what the task's syscall names when it enters D: the
//! device and inode behind its file descriptor argument, and its path argument as
//! the task passed it. This module turns that into a mount (from the mount table,
//! by device number or by the longest mount point that prefixes the path) and a
//! file path. It reads only `/proc` (`mountinfo`, and `readlink` of
//! `/proc/PID/fd/N` and `/proc/PID/cwd`, which the kernel answers from its dentry
//! cache): it never stats, opens or lists anything under a mount it may be
//! diagnosing.

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use dstrace_common::Target;

use crate::{
    kernel::{
        decode::kernel_dev,
        syscalls::{self, AT_FDCWD},
    },
    resolve::{
        file_locks::{self, FileLock},
        mounts::{self, Mount},
    },
};

/// The file a wait concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    /// Its path, when known (absolute when it could be made so).
    pub path: Option<String>,
    /// Its inode number, when known.
    pub inode: Option<u64>,
}

/// What a wait is attributed to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// The syscall in progress, when described.
    pub syscall: Option<&'static str>,
    /// The mount concerned.
    pub mount: Option<Mount>,
    /// The file concerned.
    pub file: Option<FileRef>,
    /// For a wait to lock that file (`flock`, `fcntl`): the file locks others hold
    /// on it now (`/proc/locks`).
    pub file_locks: Vec<FileLock>,
}

/// Syscalls that wait for a file lock.
const LOCKING_SYSCALLS: [&str; 2] = ["flock", "fcntl"];

/// The mount table, read again when a device number is not in it, or when the
/// kernel says it changed ([`MountTable::refresh_if_changed`]); and the paths of
/// file descriptors read lately.
pub struct MountTable {
    mounts: Vec<Mount>,
    /// `/proc/self/mountinfo`, kept open: the kernel flags it (`POLLPRI`) when a
    /// mount is made or removed.
    watch: Option<std::fs::File>,
    /// `readlink /proc/PID/fd/N` by pid, fd, and the device and inode the kernel
    /// side saw behind the fd: waits on one open file (thousands a second, under
    /// load) cost one `readlink` a second, not one each. An entry is used for
    /// [`FD_PATH_TTL`] (a rename shows within that), and the cache is emptied when
    /// it holds [`FD_PATHS`].
    fd_paths: HashMap<FdKey, (Instant, Option<String>)>,
}

/// A file descriptor and the file behind it: pid, fd, device, inode.
type FdKey = (u32, i32, u32, u64);

/// How long a file descriptor's path is reused.
const FD_PATH_TTL: Duration = Duration::from_secs(1);
/// The most file descriptor paths kept.
const FD_PATHS: usize = 4096;

impl MountTable {
    /// Reads `/proc/self/mountinfo` (an empty table if it cannot be read).
    pub fn read() -> MountTable {
        let watch = std::fs::File::open("/proc/self/mountinfo").ok();
        MountTable { mounts: mounts::read().unwrap_or_default(), watch, fd_paths: HashMap::new() }
    }

    /// A table of these mounts (tests).
    pub fn of(mounts: Vec<Mount>) -> MountTable {
        MountTable { mounts, watch: None, fd_paths: HashMap::new() }
    }

    /// Reads the table again if a mount was made or removed since it was read (a
    /// `poll` of `mountinfo`, which costs one system call): a path is attributed
    /// to the longest mount point that prefixes it, so a table that misses a newer
    /// mount would name the one below it.
    pub fn refresh_if_changed(&mut self) {
        use std::os::fd::AsRawFd as _;
        let Some(watch) = &self.watch else { return };
        let mut fds = [libc::pollfd { fd: watch.as_raw_fd(), events: libc::POLLPRI, revents: 0 }];
        // SAFETY: one valid pollfd whose fd stays open for the call; no wait.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        if ready > 0 && fds[0].revents & (libc::POLLPRI | libc::POLLERR) != 0 {
            *self = MountTable::read();
        }
    }

    /// The path of the file behind `fd` of `pid`, which the kernel side saw as
    /// inode `ino` of device `dev` (0: unknown, then it is read every time).
    fn fd_path(&mut self, pid: u32, fd: i32, dev: u32, ino: u64) -> Option<String> {
        if ino == 0 {
            return fd_link(pid, fd);
        }
        let key = (pid, fd, dev, ino);
        if let Some((read, path)) = self.fd_paths.get(&key) {
            if read.elapsed() < FD_PATH_TTL {
                return path.clone();
            }
        }
        if self.fd_paths.len() >= FD_PATHS {
            self.fd_paths.clear();
        }
        let path = fd_link(pid, fd);
        self.fd_paths.insert(key, (Instant::now(), path.clone()));
        path
    }

    /// The mount of a device number in the kernel's encoding (`s_dev`: major in the
    /// high 12 bits, minor in the low 20), read again once if missing.
    pub fn by_dev(&mut self, dev: u32) -> Option<Mount> {
        let wanted = kernel_dev(dev);
        if let Some(found) = self.find_dev(wanted) {
            return Some(found);
        }
        *self = MountTable::read();
        self.find_dev(wanted)
    }

    fn find_dev(&self, dev: (u32, u32)) -> Option<Mount> {
        // Bind mounts share a device: prefer the one of the whole filesystem.
        let mut candidates = self.mounts.iter().filter(|mount| mount.dev == dev);
        let first = candidates.next()?;
        Some(
            std::iter::once(first)
                .chain(candidates)
                .find(|mount| mount.root == Path::new("/"))
                .unwrap_or(first)
                .clone(),
        )
    }

    /// The mount with this mount id, read again once if missing.
    pub fn by_id(&mut self, id: u32) -> Option<Mount> {
        if let Some(found) = self.mounts.iter().find(|mount| mount.id == id) {
            return Some(found.clone());
        }
        *self = MountTable::read();
        self.mounts.iter().find(|mount| mount.id == id).cloned()
    }

    /// The mount an absolute path lies on: the longest mount point that prefixes it
    /// (the last such mount, when several are stacked on one point).
    pub fn by_path(&self, path: &Path) -> Option<Mount> {
        self.mounts
            .iter()
            .filter(|mount| path.starts_with(&mount.mount_point))
            .max_by_key(|mount| mount.mount_point.components().count())
            .cloned()
    }
}

/// Attributes a wait of task `pid` from what the kernel side noted.
pub fn attribute(pid: u32, target: &Target, table: &mut MountTable) -> Attribution {
    let Some(syscall) = syscalls::by_nr(target.syscall) else {
        return Attribution::default();
    };
    let given = path_arg(target);
    // The file: the descriptor's, or the path made absolute.
    let fd_path = (target.fd >= 0).then(|| table.fd_path(pid, target.fd, target.dev, target.ino)).flatten();
    let path = match (&given, syscall.path_arg.is_some()) {
        (Some(given), true) => absolute(pid, target.fd, given),
        _ => fd_path.clone(),
    };
    let inode = (target.ino != 0 && (given.is_none() || syscall.path_arg.is_none())).then_some(target.ino);
    // The mount: by the path when there is one (the descriptor of an `*at` call
    // is only the directory it starts from), else by the descriptor's device.
    let mount = match &path {
        Some(path) if given.is_some() => table.by_path(Path::new(path)),
        _ => None,
    }
    .or_else(|| (target.dev != 0).then(|| table.by_dev(target.dev)).flatten());
    let file = (path.is_some() || inode.is_some()).then_some(FileRef { path, inode });
    let file_locks = match inode {
        Some(ino) if LOCKING_SYSCALLS.contains(&syscall.name) => {
            file_locks::holders(&file_locks::read(), kernel_dev(target.dev), ino, pid)
        }
        _ => Vec::new(),
    };
    Attribution { syscall: Some(syscall.name), mount, file, file_locks }
}

/// Attributes the wait of a task seen in `/proc` (it began before tracing): its
/// syscall (from `/proc/PID/syscall`) and, for a file descriptor argument, the
/// file (`readlink /proc/PID/fd/N`) and mount (`mnt_id` in `/proc/PID/fdinfo/N`).
/// A path argument is a pointer into the task's memory, which is not read.
pub fn attribute_proc(pid: u32, nr: i64, args: &[u64; 6], table: &mut MountTable) -> Attribution {
    let Some(syscall) = i32::try_from(nr).ok().and_then(syscalls::by_nr) else {
        return Attribution::default();
    };
    let fd = syscall.fd_arg.map(|i| args[usize::from(i)] as i32).filter(|&fd| fd >= 0);
    let (Some(fd), None) = (fd, syscall.path_arg) else {
        return Attribution { syscall: Some(syscall.name), ..Attribution::default() };
    };
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    let mount = fdinfo_field(&fdinfo, "mnt_id:").and_then(|id| table.by_id(id as u32));
    let inode = fdinfo_field(&fdinfo, "ino:");
    let file_locks = match (&mount, inode) {
        (Some(mount), Some(ino)) if LOCKING_SYSCALLS.contains(&syscall.name) => {
            file_locks::holders(&file_locks::read(), mount.dev, ino, pid)
        }
        _ => Vec::new(),
    };
    let file = Some(FileRef { path: fd_link(pid, fd), inode });
    Attribution { syscall: Some(syscall.name), mount, file, file_locks }
}

/// A numeric field of a `/proc/PID/fdinfo/FD` text (`mnt_id:`, `ino:`).
fn fdinfo_field(fdinfo: &str, name: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| line.strip_prefix(name)).and_then(|value| value.trim().parse().ok())
}

/// The path argument, when the task passed one.
fn path_arg(target: &Target) -> Option<String> {
    let len = target.path.iter().position(|&b| b == 0).unwrap_or(target.path.len());
    (len > 0).then(|| String::from_utf8_lossy(&target.path[..len]).into_owned())
}

/// `readlink /proc/PID/fd/FD`: the kernel prints the path from its dentry cache.
fn fd_link(pid: u32, fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// A path argument made absolute: against the directory descriptor of an `*at`
/// call, or the task's working directory; lexically normalized (`.` and `..`),
/// never resolved on the filesystem.
fn absolute(pid: u32, dir_fd: i32, given: &str) -> Option<String> {
    if given.starts_with('/') {
        return Some(normalize(Path::new(given)));
    }
    let base = if dir_fd == AT_FDCWD || dir_fd < 0 {
        std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?
    } else {
        PathBuf::from(fd_link(pid, dir_fd)?)
    };
    Some(normalize(&base.join(given)))
}

fn normalize(path: &Path) -> String {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use dstrace_common::PATH_LEN;

    use super::*;

    fn table() -> MountTable {
        MountTable::of(mounts::parse(
            "22 1 252:1 / / rw - ext4 /dev/vda1 rw\n\
             91 22 0:29 / /var/lib/nova rw - nfs4 10.0.0.5:/export rw,addr=10.0.0.5\n\
             92 22 0:55 / /tmp/fuse rw - fuse.dstrace-test dstrace-test rw\n\
             93 22 0:29 /sub /srv/bind rw - nfs4 10.0.0.5:/export rw\n",
        ))
    }

    fn target(syscall: i32, fd: i32, dev: u32, ino: u64, path: &str) -> Target {
        let mut bytes = [0u8; PATH_LEN];
        bytes[..path.len()].copy_from_slice(path.as_bytes());
        Target { syscall, fd, dev, _pad: 0, ino, path: bytes }
    }

    #[test]
    fn mounts_by_device_prefer_the_whole_filesystem() {
        let mut table = table();
        let mount = table.by_dev(29).unwrap();
        assert_eq!(mount.mount_point, Path::new("/var/lib/nova"));
        assert_eq!(mount.source, "10.0.0.5:/export");
    }

    #[test]
    fn mounts_by_path_take_the_longest_prefix() {
        let table = table();
        assert_eq!(table.by_path(Path::new("/tmp/fuse/missing")).unwrap().fs_type, "fuse.dstrace-test");
        assert_eq!(table.by_path(Path::new("/tmp/fusex")).unwrap().fs_type, "ext4");
        assert_eq!(table.by_path(Path::new("/")).unwrap().fs_type, "ext4");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn an_absolute_path_argument_names_mount_and_file() {
        // statx(AT_FDCWD, "/tmp/fuse/./a/../missing", ...)
        let attribution =
            attribute(1, &target(332, AT_FDCWD, 0, 0, "/tmp/fuse/./a/../missing"), &mut table());
        assert_eq!(attribution.syscall, Some("statx"));
        assert_eq!(attribution.mount.unwrap().mount_point, Path::new("/tmp/fuse"));
        let file = attribution.file.unwrap();
        assert_eq!(file.path.as_deref(), Some("/tmp/fuse/missing"));
        assert_eq!(file.inode, None, "the inode noted is the directory's, not the file's");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_descriptor_names_mount_and_inode() {
        // fsync(fd) on a file of the NFS mount, in a task that no longer exists.
        let attribution = attribute(u32::MAX, &target(74, 3, 29, 2199054015793, ""), &mut table());
        assert_eq!(attribution.syscall, Some("fsync"));
        assert_eq!(attribution.mount.unwrap().fs_type, "nfs4");
        assert_eq!(attribution.file.unwrap(), FileRef { path: None, inode: Some(2199054015793) });
    }

    #[test]
    fn nothing_without_a_described_syscall() {
        assert_eq!(attribute(1, &Target::NONE, &mut table()), Attribution::default());
    }

    #[test]
    fn normalization_is_lexical() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), "/a/c/d");
        assert_eq!(normalize(Path::new("/../..")), "/");
    }
}
