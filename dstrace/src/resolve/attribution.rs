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
        decode::{kernel_dev, path_string},
        iter::TaskSeen,
        syscalls::{self, AT_FDCWD},
    },
    resolve::{
        file_locks::{self, FileLock},
        mounts::{Mount, MountTable},
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

/// Kernel functions a task blocks in while it waits for a file lock: a POSIX lock,
/// a flock, a lease (fs/locks.c).
const FILE_LOCK_FUNCTIONS: [&str; 6] = [
    "locks_lock_inode_wait",
    "posix_lock_inode_wait",
    "flock_lock_inode_wait",
    "fcntl_setlk",
    "__break_lease",
    "do_lock_file_wait",
];

impl Attribution {
    /// Whether the wait is one for a file lock: its syscall locks a file
    /// (`flock`, `fcntl`), or it blocks in a file lock function of the kernel.
    /// Only then is `/proc/locks` worth a read.
    pub fn is_file_lock_wait(&self, blocked_in: Option<&str>) -> bool {
        self.syscall.is_some_and(|name| LOCKING_SYSCALLS.contains(&name))
            || !self.file_locks.is_empty()
            || blocked_in.is_some_and(|function| FILE_LOCK_FUNCTIONS.contains(&function))
    }
}

/// The paths of file descriptors read lately: `readlink /proc/PID/fd/N` by pid,
/// fd, and the device and inode the kernel side saw behind the fd, so that waits
/// on one open file (thousands a second, under load) cost one `readlink` a second,
/// not one each. An entry is used for [`FD_PATH_TTL`] (a rename shows within
/// that), and the cache is emptied when it holds [`FD_PATHS`].
#[derive(Default)]
pub struct FilePaths {
    paths: HashMap<FdKey, (Instant, Option<String>)>,
}

/// A file descriptor and the file behind it: pid, fd, device, inode.
type FdKey = (u32, i32, u32, u64);

/// How long a file descriptor's path is reused.
const FD_PATH_TTL: Duration = Duration::from_secs(1);
/// The most file descriptor paths kept.
const FD_PATHS: usize = 4096;

impl FilePaths {
    /// The path of the file behind `fd` of `pid`, which the kernel side saw as
    /// inode `ino` of device `dev` (0: unknown, then it is read every time).
    fn path(&mut self, pid: u32, fd: i32, dev: u32, ino: u64) -> Option<String> {
        if ino == 0 {
            return fd_link(pid, fd);
        }
        let key = (pid, fd, dev, ino);
        if let Some((read, path)) = self.paths.get(&key) {
            if read.elapsed() < FD_PATH_TTL {
                return path.clone();
            }
        }
        if self.paths.len() >= FD_PATHS {
            self.paths.clear();
        }
        let path = fd_link(pid, fd);
        self.paths.insert(key, (Instant::now(), path.clone()));
        path
    }
}

/// Attributes a wait of task `pid` from what the kernel side noted when it entered
/// D: the kernel objects of its syscall ([`attribute_objects`]).
pub fn attribute(pid: u32, target: &Target, table: &mut MountTable, files: &mut FilePaths) -> Attribution {
    attribute_objects(pid, &objects_of(target), table, files)
}

/// The kernel objects the kernel side noted of a wait's syscall.
pub fn objects_of(target: &Target) -> Objects {
    let path = path_string(&target.path);
    let walk = &target.walk;
    Objects {
        syscall: syscalls::by_nr(target.syscall),
        fd: (target.fd >= 0 || target.fd == AT_FDCWD).then_some(target.fd),
        fd_file: (target.mnt_id != 0 || target.ino != 0).then_some((target.mnt_id, target.dev, target.ino)),
        walk: (walk.mnt_id != 0 || walk.dev != 0).then_some((path, walk.mnt_id, walk.dev)),
    }
}

/// What the kernel side read of a task's syscall: the kernel objects a wait is
/// attributed from (never a path string matched against mount points).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// The syscall in progress, when known and described (none for a kernel
    /// thread).
    pub syscall: Option<&'static syscalls::Syscall>,
    /// Its file descriptor argument (for an `*at` call, the directory a relative
    /// path starts from).
    pub fd: Option<i32>,
    /// The file behind that descriptor: mount ID, superblock device (kernel
    /// encoding), inode.
    pub fd_file: Option<(u32, u32, u64)>,
    /// The path walk in progress: the kernel's copy of the path the task passed
    /// (empty if it could not be read), and the mount ID and device of the
    /// directory being walked.
    pub walk: Option<(String, u32, u32)>,
}

/// Attributes a wait of task `pid` from the kernel objects of its syscall: the
/// mount of the directory its path walk is in, or of the file behind its
/// descriptor, by mount ID as its own mount namespace names it; the path the
/// kernel copied (made absolute against the `*at` directory or the working
/// directory), or the descriptor's path.
pub fn attribute_objects(
    pid: u32,
    objects: &Objects,
    mounts: &mut MountTable,
    files: &mut FilePaths,
) -> Attribution {
    let syscall = objects.syscall.map(|syscall| syscall.name);
    let (mount, file) = match (&objects.walk, objects.fd_file) {
        (Some((path, mnt_id, dev)), _) => {
            let mount = match *mnt_id {
                0 => (*dev != 0).then(|| mounts.by_dev(pid, *dev)).flatten(),
                id => mounts.by_id(pid, id, *dev),
            };
            let path =
                (!path.is_empty()).then(|| absolute(pid, objects.fd.unwrap_or(AT_FDCWD), path)).flatten();
            (mount, path.map(|path| FileRef { path: Some(path), inode: None }))
        }
        (None, Some((mnt_id, dev, ino))) => {
            let mount = match mnt_id {
                0 => (dev != 0).then(|| mounts.by_dev(pid, dev)).flatten(),
                id => mounts.by_id(pid, id, dev),
            };
            let path = objects.fd.and_then(|fd| files.path(pid, fd, dev, ino));
            (mount, Some(FileRef { path, inode: (ino != 0).then_some(ino) }))
        }
        (None, None) => (None, None),
    };
    let file_locks = match (objects.fd_file, syscall) {
        (Some((_, dev, ino)), Some(name)) if ino != 0 && LOCKING_SYSCALLS.contains(&name) => {
            file_locks::holders(&file_locks::read(), kernel_dev(dev), ino, pid)
        }
        _ => Vec::new(),
    };
    Attribution { syscall, mount, file, file_locks }
}

/// The kernel objects of a task the task iterator read.
pub fn objects_seen(task: &TaskSeen) -> Objects {
    let (syscall, fd) = match task.syscall {
        Some((nr, args)) => {
            let syscall = i32::try_from(nr).ok().and_then(syscalls::by_nr);
            let fd = syscall.and_then(|syscall| syscall.fd_arg).map(|i| args[usize::from(i)] as i32);
            (syscall, fd)
        }
        None => (None, None),
    };
    Objects {
        syscall,
        fd: task.fd_file.as_ref().map(|file| file.fd).or(fd),
        fd_file: task.fd_file.as_ref().map(|file| (file.mnt_id, file.dev, file.ino)),
        walk: task.walk.as_ref().map(|walk| (walk.path.clone(), walk.mnt_id, walk.dev)),
    }
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
    let mount = fdinfo_field(&fdinfo, "mnt_id:").and_then(|id| table.by_id(pid, id as u32, 0));
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
    use crate::resolve::mounts;

    /// A pid no task has: its namespace is dstrace's own, the table's.
    const NO_TASK: u32 = u32::MAX;

    fn table() -> MountTable {
        MountTable::of(mounts::parse(
            "22 1 252:1 / / rw - ext4 /dev/vda1 rw\n\
             91 22 0:29 / /var/lib/nova rw - nfs4 10.0.0.5:/export rw,addr=10.0.0.5\n\
             92 22 0:55 / /tmp/fuse rw - fuse.dstrace-test dstrace-test rw\n\
             93 22 0:29 /sub /srv/bind rw - nfs4 10.0.0.5:/export rw\n",
        ))
    }

    /// What the kernel side notes of a syscall on a file descriptor.
    fn on_file(syscall: i32, fd: i32, mnt_id: u32, dev: u32, ino: u64) -> Target {
        Target { syscall, fd, dev, mnt_id, ino, ..Target::NONE }
    }

    /// What it notes of a path walk: the kernel's copy of the path and the mount of
    /// the directory being walked.
    fn in_walk(syscall: i32, mnt_id: u32, dev: u32, path: &str) -> Target {
        let mut bytes = [0u8; PATH_LEN];
        bytes[..path.len()].copy_from_slice(path.as_bytes());
        let walk = dstrace_common::Walk { mnt_id, dev, dir_ino: 1 };
        Target { syscall, fd: AT_FDCWD, walk, path: bytes, ..Target::NONE }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_path_walk_names_its_mount_by_id_and_the_path_the_kernel_copied() {
        // statx(AT_FDCWD, "/tmp/fuse/./a/../missing", ...), walking mount 92 (0:55).
        let attribution = attribute(
            NO_TASK,
            &in_walk(332, 92, 55, "/tmp/fuse/./a/../missing"),
            &mut table(),
            &mut FilePaths::default(),
        );
        assert_eq!(attribution.syscall, Some("statx"));
        assert_eq!(attribution.mount.unwrap().mount_point, Path::new("/tmp/fuse"));
        let file = attribution.file.unwrap();
        assert_eq!(file.path.as_deref(), Some("/tmp/fuse/missing"));
        assert_eq!(file.inode, None, "the inode noted is the directory's, not the file's");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_path_string_never_chooses_the_mount() {
        // The path says /tmp/fuse, the kernel says the walk is on mount 22 (the
        // root): a path is for display, the mount is the kernel's.
        let attribution = attribute(
            NO_TASK,
            &in_walk(332, 22, (252 << 20) | 1, "/tmp/fuse/missing"),
            &mut table(),
            &mut FilePaths::default(),
        );
        assert_eq!(attribution.mount.unwrap().fs_type, "ext4");
        // No walk, no file: no mount, whatever the path.
        let mut target = in_walk(332, 0, 0, "/tmp/fuse/missing");
        target.walk = dstrace_common::Walk::NONE;
        let attribution = attribute(NO_TASK, &target, &mut table(), &mut FilePaths::default());
        assert_eq!((attribution.syscall, attribution.mount, attribution.file), (Some("statx"), None, None));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_descriptor_names_mount_and_inode() {
        // fsync(fd) on a file of the NFS mount, in a task that no longer exists.
        let attribution = attribute(
            NO_TASK,
            &on_file(74, 3, 91, 29, 2199054015793),
            &mut table(),
            &mut FilePaths::default(),
        );
        assert_eq!(attribution.syscall, Some("fsync"));
        assert_eq!(attribution.mount.unwrap().mount_point, Path::new("/var/lib/nova"));
        assert_eq!(attribution.file.unwrap(), FileRef { path: None, inode: Some(2199054015793) });
        // Through the bind mount (93, same superblock): that mount, not the other.
        let attribution = attribute(
            NO_TASK,
            &on_file(74, 3, 93, 29, 2199054015793),
            &mut table(),
            &mut FilePaths::default(),
        );
        assert_eq!(attribution.mount.unwrap().mount_point, Path::new("/srv/bind"));
    }

    #[test]
    fn nothing_without_a_described_syscall() {
        let attribution = attribute(NO_TASK, &Target::NONE, &mut table(), &mut FilePaths::default());
        assert_eq!(attribution, Attribution::default());
    }

    #[test]
    fn normalization_is_lexical() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), "/a/c/d");
        assert_eq!(normalize(Path::new("/../..")), "/");
    }
}
