//! PLACEHOLDER (the lead's side of a merge): the types of the task iterator's look,
//! as agreed; the reader itself lands from the `iter` branch, which replaces this
//! file.

/// A task a lock's owner word or a record names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
    pub state: u32,
}

/// The file behind a task's fd argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSeen {
    pub fd: i32,
    pub mnt_id: u32,
    pub dev: u32,
    pub ino: u64,
    pub rwsem: u64,
    pub owner: Option<Peer>,
}

/// The path walk a task is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkSeen {
    pub path: String,
    pub last: String,
    pub mnt_id: u32,
    pub dev: u32,
    pub dir_ino: u64,
    pub dir_dentry: u64,
    pub dir_rwsem: u64,
    pub dir_owner: Option<Peer>,
}

/// What `task_struct.blocker` says a lock is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockerKind {
    Mutex,
    Semaphore,
    RwsemReader,
    RwsemWriter,
}

/// The lock a task waits for, per `task_struct.blocker`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockerSeen {
    pub lock: u64,
    pub kind: BlockerKind,
    pub owner: Option<Peer>,
    pub reader_hint: bool,
}

/// A task as the iterator read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSeen {
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
    pub state: u32,
    pub kernel_thread: bool,
    pub last_ran_ns: Option<u64>,
    pub cpu: Option<u32>,
    pub cgroup_id: u64,
    pub stack: Vec<u64>,
    pub syscall: Option<(i64, [u64; 6])>,
    pub fd_file: Option<FileSeen>,
    pub walk: Option<WalkSeen>,
    pub blocker: Option<BlockerSeen>,
}

/// A FUSE request pending on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseRequestSeen {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub pid: u32,
    pub age_ns: Option<u64>,
}

/// A `/dev/fuse` file open in a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseFileSeen {
    pub tgid: u32,
    pub tid: u32,
    pub comm: String,
    pub state: u32,
    pub fd: u32,
    pub dev: u32,
    pub connected: bool,
    pub num_waiting: u32,
    pub pending: u32,
    pub requests: Vec<FuseRequestSeen>,
}

/// One look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Look {
    pub tasks: Vec<TaskSeen>,
    pub fuse_files: Vec<FuseFileSeen>,
}
