//! One link of a wait chain ([`crate::model::chain`]): a task, a lock, a mount,
//! the FUSE requests and daemon of a mount, an RPC, an NFS server. The JSON of a
//! chain is these links serialized as they are (`link` names the kind).

/// One link of a chain (in JSON: an object whose `link` names the kind).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "link", rename_all = "snake_case")]
pub enum Link {
    /// A task and what it does now.
    Task {
        /// Thread id.
        tid: u32,
        /// Process id (`tgid` in JSON, as everywhere).
        #[serde(rename = "tgid")]
        pid: u32,
        /// Command name.
        comm: String,
        /// State letter (`D`, `S`, `T`, ...), `None` once it is gone.
        state: Option<char>,
        /// Where it is blocked, if it is.
        function: Option<String>,
    },
    /// A kernel lock (by its name, e.g. `i_rwsem of inode 1 (0:55)`).
    Lock {
        /// What the lock is.
        name: String,
    },
    /// A file lock someone holds on the file.
    FileLock {
        /// `POSIX`, `FLOCK`, ...
        kind: String,
    },
    /// The mount it all happens on.
    Mount {
        /// Mount point.
        mountpoint: String,
        /// Filesystem type.
        fstype: String,
        /// Source (`server:/export`, FUSE daemon name, device).
        source: String,
    },
    /// The FUSE requests of the mount not answered yet: the daemon has been
    /// silent at least as long as the oldest has waited.
    FuseRequests {
        /// How many are in flight.
        in_flight: u64,
        /// The oldest one's age, in nanoseconds (`oldest_ms` in JSON), when the
        /// kernel says when it was sent.
        #[serde(rename = "oldest_ms", serialize_with = "crate::clock::serialize_opt_ms")]
        oldest_ns: Option<u64>,
        /// The oldest one's operation (`LOOKUP`, ...).
        oldest_opcode: String,
        /// Who sent the oldest one: thread id.
        oldest_tid: u32,
        /// Its command name.
        oldest_comm: String,
        /// How many of them the daemon has read and not answered (the rest are
        /// queued, not read yet), from the task iterator's look of its `/dev/fuse`
        /// files; `None` (`null`) where the requests are the live path's, which
        /// does not see the daemon read them.
        read_by_daemon: Option<u64>,
    },
    /// A FUSE daemon: a process holding a `/dev/fuse` file of this mount's own
    /// connection (each such process is listed; one serving another mount never).
    FuseDaemon {
        /// Its process id.
        #[serde(rename = "tgid")]
        pid: u32,
        /// Its command name.
        comm: String,
        /// Its state letter now (`T`: stopped).
        state: Option<char>,
        /// Requests of this mount's connection waiting for an answer
        /// (`/sys/fs/fuse/connections/N/waiting`), when fusectl is mounted.
        waiting: Option<u64>,
    },
    /// The RPCs the task began that are still in flight (NFS, NLM, ...), from the
    /// sunrpc tracepoints: the one with the most major timeouts is described.
    Rpc {
        /// The RPC program (`nfs`, `lockd`, ...; empty when not seen).
        program: String,
        /// The program's version (0 when not seen).
        version: u32,
        /// The procedure (`GETATTR`, `LOCK`, `WRITE`, ...; empty when not seen).
        procedure: String,
        /// The transaction id of its last transmission, when one was seen.
        xid: Option<u32>,
        /// How long ago it began (`age_ms` in JSON); `None` if before tracing.
        #[serde(rename = "age_ms", serialize_with = "crate::clock::serialize_opt_ms")]
        age_ns: Option<u64>,
        /// Transmissions seen (more than one: retransmitted).
        transmits: u32,
        /// Major timeouts seen: the server has not answered in the mount's
        /// `timeo` and `retrans` (the kernel logs "not responding").
        timeouts: u32,
        /// Since the first major timeout (`not_responding_ms` in JSON).
        #[serde(rename = "not_responding_ms", serialize_with = "crate::clock::serialize_opt_ms")]
        not_responding_ns: Option<u64>,
        /// Other RPCs of the task in flight.
        others: u32,
    },
    /// The NFS server of the mount.
    NfsServer {
        /// Its address (`addr=` of the mount options, or the host of the source).
        address: String,
        /// The NFS version of the mount (`vers=` of its options).
        nfs_version: Option<String>,
    },
}
