//! The syscalls whose arguments name a file, by architecture: the one table the
//! kernel side's `SYSCALL_ARGS` map is filled from and syscall names are printed
//! from.
//!
//! Only syscalls that can block on a filesystem are described: for each, which
//! argument is a path and which a file descriptor (for `*at` calls the directory
//! descriptor, which `AT_FDCWD` leaves out).

/// One described syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    /// Its number on this architecture.
    pub nr: u32,
    /// Its name.
    pub name: &'static str,
    /// The argument (0-5) that is a path.
    pub path_arg: Option<u8>,
    /// The argument (0-5) that is a file descriptor.
    pub fd_arg: Option<u8>,
}

const fn fd(nr: u32, name: &'static str) -> Syscall {
    Syscall { nr, name, path_arg: None, fd_arg: Some(0) }
}

const fn path(nr: u32, name: &'static str) -> Syscall {
    Syscall { nr, name, path_arg: Some(0), fd_arg: None }
}

const fn at(nr: u32, name: &'static str) -> Syscall {
    Syscall { nr, name, path_arg: Some(1), fd_arg: Some(0) }
}

/// x86-64 (arch/x86/entry/syscalls/syscall_64.tbl).
#[cfg(target_arch = "x86_64")]
pub const TABLE: &[Syscall] = &[
    fd(0, "read"),
    fd(1, "write"),
    path(2, "open"),
    fd(3, "close"),
    path(4, "stat"),
    fd(5, "fstat"),
    path(6, "lstat"),
    fd(8, "lseek"),
    Syscall { nr: 9, name: "mmap", path_arg: None, fd_arg: Some(4) },
    fd(16, "ioctl"),
    fd(17, "pread64"),
    fd(18, "pwrite64"),
    fd(19, "readv"),
    fd(20, "writev"),
    path(21, "access"),
    path(59, "execve"),
    fd(72, "fcntl"),
    fd(73, "flock"),
    fd(74, "fsync"),
    fd(75, "fdatasync"),
    path(76, "truncate"),
    fd(77, "ftruncate"),
    fd(78, "getdents"),
    path(80, "chdir"),
    fd(81, "fchdir"),
    path(82, "rename"),
    path(83, "mkdir"),
    path(84, "rmdir"),
    path(85, "creat"),
    path(86, "link"),
    path(87, "unlink"),
    Syscall { nr: 88, name: "symlink", path_arg: Some(1), fd_arg: None },
    path(89, "readlink"),
    path(90, "chmod"),
    fd(91, "fchmod"),
    path(92, "chown"),
    fd(93, "fchown"),
    path(94, "lchown"),
    path(133, "mknod"),
    path(137, "statfs"),
    fd(138, "fstatfs"),
    path(161, "chroot"),
    Syscall { nr: 165, name: "mount", path_arg: Some(1), fd_arg: None },
    path(166, "umount2"),
    fd(187, "readahead"),
    path(188, "setxattr"),
    path(191, "getxattr"),
    fd(217, "getdents64"),
    fd(221, "fadvise64"),
    at(257, "openat"),
    at(258, "mkdirat"),
    at(259, "mknodat"),
    at(260, "fchownat"),
    at(262, "newfstatat"),
    at(263, "unlinkat"),
    at(264, "renameat"),
    at(265, "linkat"),
    Syscall { nr: 266, name: "symlinkat", path_arg: Some(2), fd_arg: Some(1) },
    at(267, "readlinkat"),
    at(268, "fchmodat"),
    at(269, "faccessat"),
    fd(277, "sync_file_range"),
    fd(285, "fallocate"),
    fd(295, "preadv"),
    fd(296, "pwritev"),
    fd(306, "syncfs"),
    at(316, "renameat2"),
    at(322, "execveat"),
    fd(326, "copy_file_range"),
    fd(327, "preadv2"),
    fd(328, "pwritev2"),
    at(332, "statx"),
    at(437, "openat2"),
    at(439, "faccessat2"),
];

/// arm64 (include/uapi/asm-generic/unistd.h).
#[cfg(target_arch = "aarch64")]
pub const TABLE: &[Syscall] = &[
    fd(17, "getcwd"),
    at(34, "mkdirat"),
    at(35, "unlinkat"),
    at(37, "linkat"),
    at(38, "renameat"),
    Syscall { nr: 40, name: "mount", path_arg: Some(1), fd_arg: None },
    path(43, "statfs"),
    fd(44, "fstatfs"),
    path(45, "truncate"),
    fd(46, "ftruncate"),
    fd(47, "fallocate"),
    at(48, "faccessat"),
    path(49, "chdir"),
    fd(50, "fchdir"),
    at(56, "openat"),
    fd(57, "close"),
    fd(61, "getdents64"),
    fd(62, "lseek"),
    fd(63, "read"),
    fd(64, "write"),
    fd(65, "readv"),
    fd(66, "writev"),
    fd(67, "pread64"),
    fd(68, "pwrite64"),
    at(78, "readlinkat"),
    at(79, "newfstatat"),
    fd(80, "fstat"),
    fd(82, "fsync"),
    fd(83, "fdatasync"),
    fd(29, "ioctl"),
    fd(25, "fcntl"),
    fd(32, "flock"),
    at(276, "renameat2"),
    at(291, "statx"),
    at(437, "openat2"),
    at(439, "faccessat2"),
];

/// Other architectures: no syscall is described, so none is attributed.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const TABLE: &[Syscall] = &[];

/// The described syscall with this number.
pub fn by_nr(nr: i32) -> Option<&'static Syscall> {
    let nr = u32::try_from(nr).ok()?;
    TABLE.iter().find(|syscall| syscall.nr == nr)
}

/// The described syscall with this name (names read back from a recording).
pub fn by_name(name: &str) -> Option<&'static Syscall> {
    TABLE.iter().find(|syscall| syscall.name == name)
}

/// `AT_FDCWD`: a `*at` call relative to the working directory.
pub const AT_FDCWD: i32 = -100;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn numbers_and_names_are_unique_and_in_range() {
        let numbers: HashSet<u32> = TABLE.iter().map(|s| s.nr).collect();
        let names: HashSet<&str> = TABLE.iter().map(|s| s.name).collect();
        assert_eq!(numbers.len(), TABLE.len());
        assert_eq!(names.len(), TABLE.len());
        assert!(TABLE.iter().all(|s| s.nr < dstrace_common::limits::SYSCALLS));
        assert!(TABLE.iter().all(|s| s.path_arg.is_some() || s.fd_arg.is_some()));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn well_known_x86_64_numbers() {
        assert_eq!(by_nr(332).map(|s| s.name), Some("statx"));
        assert_eq!(by_nr(74).map(|s| (s.name, s.fd_arg)), Some(("fsync", Some(0))));
        assert_eq!(by_nr(257).map(|s| (s.path_arg, s.fd_arg)), Some((Some(1), Some(0))));
        assert!(by_nr(-1).is_none() && by_nr(202).is_none());
    }
}
