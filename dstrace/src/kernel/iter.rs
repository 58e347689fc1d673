//! The task iterator's reader: every task in D now and what it waits on, read from
//! kernel memory whenever its wait began (dstrace arrives after the hang), and the
//! `/dev/fuse` files of the machine with their connections.
//!
//! A [`Look`] runs the iterator programs (dstrace-ebpf/src/iter.rs) in passes, each
//! one read of an iterator's file, and keeps each task once:
//!
//! 1. every task in D (`TASK_UNINTERRUPTIBLE`, not `TASK_NOLOAD` unless asked),
//!    dstrace's own excepted;
//! 2. up to [`WANTED_PASSES`] passes over the tids the records so far name as lock
//!    owners (the blocker's, the walked directory's and the file's `i_rwsem`), with
//!    the caller's `extra_tids` in the first, whatever their state: a chain of owners
//!    several hops long;
//! 3. the tasks walking a directory that a task seen walks: the task that owns an
//!    in-lookup dentry (which others wait for in `d_alloc_parallel`) walks the same
//!    directory for the same last name and is not itself in `d_alloc_parallel`;
//! 4. every open `/dev/fuse` file: who serves which FUSE connection, and what is
//!    queued on it.
//!
//! A task that exits during the look is absent. The [`crate::kernel::loader::Tracer`]
//! loads the iterator programs with the rest ([`Tracer::look`]); a [`Looker`] loads
//! them alone, for `dstrace snapshot`.
//!
//! [`Tracer::look`]: crate::kernel::loader::Tracer::look

use std::{
    collections::{BTreeSet, HashSet},
    io::Read as _,
    path::Path,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::Iter,
    Btf, Ebpf,
};
use dstrace_common::{
    limits, names, Counter, FuseFileRecord, PeerRecord, TaskRecord, BLOCKER_TYPE_MASK, BLOCKER_TYPE_MUTEX,
    BLOCKER_TYPE_RWSEM_READER, BLOCKER_TYPE_SEM, CONFIG_INCLUDE_IDLE, FUSE_REQUESTS_KEPT, FUSE_REQUEST_READ,
    HAVE_BLOCKER, HAVE_BLOCKER_MUTEX_ONLY, HAVE_CONNECTION, HAVE_CPU, HAVE_CREATE_TIME, HAVE_EXEC_START,
    HAVE_FD_FILE, HAVE_PENDING, HAVE_PROCESSING, HAVE_SYSCALL, HAVE_WALK, NO_OFFSET, PEER_KNOWN,
    PEER_READER_HINT, PF_KTHREAD, TASK_DEAD, WAIT_LIST_READER, WAIT_LIST_WRITER,
};

use crate::kernel::{
    btf::{self, KernelLayout},
    decode::{comm_string, decode_records, path_string},
    object::{self, fill_syscall_args, take_map, OBJECT},
    preflight::{self, VMLINUX_BTF},
};

/// Passes over the owners the records name, at most (hops of a chain of owners).
pub const WANTED_PASSES: usize = 3;

/// A task another task waits for: the owner a lock's owner word names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Thread id.
    pub tid: u32,
    /// Thread group id.
    pub tgid: u32,
    /// `comm`.
    pub comm: String,
    /// Its `__state` when read: raw `TASK_*` bits (0: running).
    pub state: u32,
}

/// The file behind a syscall's file descriptor argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSeen {
    /// The file descriptor.
    pub fd: i32,
    /// Mount ID of the mount it was opened through (`/proc/PID/mountinfo`'s first
    /// field), 0 where this kernel's layout is unknown.
    pub mnt_id: u32,
    /// `s_dev` of its superblock (kernel encoding).
    pub dev: u32,
    /// Its inode number.
    pub ino: u64,
    /// Address of its inode's `i_rwsem` (compare with [`BlockerSeen::lock`]).
    pub rwsem: u64,
    /// Who holds that `i_rwsem`, if it is held.
    pub owner: Option<Peer>,
    /// The `i_rwsem` is held for reading: [`FileSeen::owner`] is only its last
    /// reader, a hint.
    pub owner_reader_hint: bool,
    /// The task is on that `i_rwsem`'s wait list ([`BlockerKind::RwsemWriter`] or
    /// [`BlockerKind::RwsemReader`], by its waiter's type): it waits for that lock.
    /// `None` where it is not among the first
    /// [`dstrace_common::ITER_RWSEM_WAITERS`] waiters, or where this kernel's BTF
    /// does not describe the list.
    pub waiting: Option<BlockerKind>,
}

/// The path walk a task is in (`task_struct.nameidata`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkSeen {
    /// The path as the kernel copied it from the task (maybe relative to its working
    /// directory or a directory descriptor); at most 255 bytes kept.
    pub path: String,
    /// The component being looked up.
    pub last: String,
    /// Mount ID of the directory being walked.
    pub mnt_id: u32,
    /// `s_dev` of that mount's superblock.
    pub dev: u32,
    /// Inode number of that directory.
    pub dir_ino: u64,
    /// Address of that directory's dentry: the same for every task walking it.
    pub dir_dentry: u64,
    /// Address of that directory inode's `i_rwsem` (compare with
    /// [`BlockerSeen::lock`]).
    pub dir_rwsem: u64,
    /// Who holds that `i_rwsem`, if it is held.
    pub dir_owner: Option<Peer>,
    /// The `i_rwsem` is held for reading: [`WalkSeen::dir_owner`] is only its last
    /// reader, a hint (a lookup takes it shared: every walker of a directory may be).
    pub dir_owner_reader_hint: bool,
    /// The task is on that `i_rwsem`'s wait list, as [`FileSeen::waiting`].
    pub dir_waiting: Option<BlockerKind>,
}

/// The kind of lock a task waits for (`BLOCKER_TYPE_*`, include/linux/hung_task.h;
/// or an rwsem's waiter type, `RWSEM_WAITING_FOR_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockerKind {
    /// A mutex.
    Mutex,
    /// A semaphore.
    Semaphore,
    /// An rwsem, to read (a `blocker` of 6.17+, or a waiter's type).
    RwsemReader,
    /// An rwsem, to write (a `blocker` of 6.17+, or a waiter's type).
    RwsemWriter,
}

/// The lock a task waits for, as the kernel notes it for the hung-task detector
/// (`task_struct.blocker`, 6.16+; `blocker_mutex`, 6.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockerSeen {
    /// The lock's address.
    pub lock: u64,
    /// Its kind.
    pub kind: BlockerKind,
    /// Its owner (a mutex's or rwsem's; a semaphore's last holder), if known.
    pub owner: Option<Peer>,
    /// The owner named is only a hint: the last reader of an rwsem held for reading,
    /// or a semaphore's last holder.
    pub reader_hint: bool,
}

/// One task, as the task iterator read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSeen {
    /// Thread id.
    pub tid: u32,
    /// Thread group id.
    pub tgid: u32,
    /// `comm`.
    pub comm: String,
    /// `__state`: raw `TASK_*` bits.
    pub state: u32,
    /// A kernel thread (`PF_KTHREAD`): it has no syscall.
    pub kernel_thread: bool,
    /// `se.exec_start`: when it last began to run, in nanoseconds of its runqueue's
    /// task clock (the clock of `se.exec_start` in `/proc/PID/sched`, not
    /// CLOCK_MONOTONIC).
    pub last_ran_ns: Option<u64>,
    /// The CPU it last ran on.
    pub cpu: Option<u32>,
    /// Its cgroup v2 id (0: unknown).
    pub cgroup_id: u64,
    /// Its kernel stack, innermost first (at most 64 frames).
    pub stack: Vec<u64>,
    /// The syscall in progress and its six arguments (number -1: not in a syscall,
    /// a page fault say); `None` for a kernel thread, or where the kernel could not
    /// give it ([`TaskSeen::syscall_from_proc`]).
    pub syscall: Option<(i64, [u64; 6])>,
    /// This kernel cannot give the syscall (`bpf_task_pt_regs`, Linux 5.15): read it
    /// from `/proc/PID/syscall`, under the `/proc` deadline. False for a kernel thread.
    pub syscall_from_proc: bool,
    /// The file behind the syscall's file descriptor argument.
    pub fd_file: Option<FileSeen>,
    /// The path walk in progress.
    pub walk: Option<WalkSeen>,
    /// The lock it waits for, where the kernel notes it (6.15+).
    pub blocker: Option<BlockerSeen>,
}

#[cfg(test)]
impl TaskSeen {
    /// A user task `tid` in `state` of which nothing else was read: what the unit
    /// tests of the model start from.
    pub fn bare(tid: u32, state: u32) -> Self {
        Self {
            tid,
            tgid: tid,
            comm: format!("t{tid}"),
            state,
            kernel_thread: false,
            last_ran_ns: None,
            cpu: None,
            cgroup_id: 0,
            stack: Vec::new(),
            syscall: None,
            syscall_from_proc: false,
            fd_file: None,
            walk: None,
            blocker: None,
        }
    }
}

/// A request of a FUSE connection not answered yet: queued, or read by its daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseRequestSeen {
    /// `FUSE_LOOKUP` = 1, ... (include/uapi/linux/fuse.h).
    pub opcode: u32,
    /// Its unique id.
    pub unique: u64,
    /// The inode it is about.
    pub nodeid: u64,
    /// The thread that sent it, as the connection's pid namespace numbers it.
    pub pid: u32,
    /// How long it had been queued when read: `fuse_req.create_time` (6.14+) and
    /// `jiffies` then, in ticks, made nanoseconds with the kernel's HZ (`CONFIG_HZ` of
    /// `/proc/config.gz`, else inferred from `jiffies` and CLOCK_MONOTONIC read
    /// together; `None` when neither says).
    pub age_ns: Option<u64>,
    /// The daemon has read it (it is on the file's processing queue) and not
    /// answered; else it is queued on the connection, not read yet.
    pub read: bool,
}

/// An open `/dev/fuse` file: a process serving a FUSE connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseFileSeen {
    /// The process holding it.
    pub tgid: u32,
    /// The thread the iterator met it in (the iterator skips threads that share
    /// their leader's file table).
    pub tid: u32,
    /// That thread's `comm`.
    pub comm: String,
    /// That thread's `__state`.
    pub state: u32,
    /// The file descriptor.
    pub fd: u32,
    /// The FUSE mount's `s_dev` (its minor is the connection's number in
    /// /sys/fs/fuse/connections); 0: not mounted yet, or unknown.
    pub dev: u32,
    /// The connection is up.
    pub connected: bool,
    /// Requests sent and not answered yet (`fuse_conn.num_waiting`).
    pub num_waiting: u32,
    /// Requests queued and not read by the daemon (`fc->iq.pending`, the
    /// connection's: every file of it says the same), counted up to
    /// [`dstrace_common::FUSE_PENDING_MAX`] (one more: more than that). Those of
    /// io_uring FUSE are not counted.
    pub pending: u32,
    /// Requests the daemon read from this file and has not answered (its
    /// `fud->pq.processing`, this file's own): the hash buckets that hold any, so a
    /// lower bound (two in one bucket count once). 0 where this kernel's BTF does
    /// not describe the queue.
    pub processing: u32,
    /// Its `struct fuse_dev`'s address: the same for every process holding this
    /// open file (its processing queue is counted once), another for a cloned one.
    pub fuse_dev: u64,
    /// The first requests queued, then the first of each processing bucket
    /// ([`FuseRequestSeen::read`]), at most eight in all.
    pub requests: Vec<FuseRequestSeen>,
}

/// What the task iterator saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Look {
    /// The tasks in D, then the tasks the passes after looked for; each once.
    pub tasks: Vec<TaskSeen>,
    /// Every open `/dev/fuse` file.
    pub fuse_files: Vec<FuseFileSeen>,
}

/// Which iterator programs fit this kernel, and what it cannot give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The programs to load; `None`: no task iterator on this kernel.
    programs: Option<Programs>,
    /// What the iterator cannot give here, one line each with the oldest kernel or
    /// the kernel option that has it.
    pub skipped: Vec<String>,
}

/// The names of the iterator programs a kernel gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Programs {
    in_d: &'static str,
    wanted: &'static str,
    walking: &'static str,
    fuse_files: Option<&'static str>,
    /// The task programs read syscalls (`bpf_task_pt_regs`).
    pt_regs: bool,
}

/// The programs for this kernel's layout, and what it cannot give.
pub fn plan(layout: &KernelLayout) -> Plan {
    let iter = &layout.iter;
    let mut skipped = Vec::new();
    let no_iterator =
        |why: String| Plan { programs: None, skipped: vec![format!("tasks already in D: {why}")] };
    if !iter.has_task_iterators {
        return no_iterator("the task iterator needs Linux 5.8".to_owned());
    }
    if !iter.has_get_task_stack {
        return no_iterator(
            "the task iterator's kernel stacks (bpf_get_task_stack) need Linux 5.9".to_owned(),
        );
    }
    if let Err(why) = &layout.lock_offsets {
        return no_iterator(why.clone());
    }
    let pt_regs = iter.has_task_pt_regs && layout.target_offsets.is_ok();
    match &layout.target_offsets {
        Err(why) => skipped.push(format!("the syscall of a task already in D and its file: {why}")),
        Ok(_) if !iter.has_task_pt_regs => skipped.push(
            "the syscall of a task already in D and the file of its fd argument, from the kernel: \
             bpf_task_pt_regs needs Linux 5.15 (its syscall is read from /proc/PID/syscall)"
                .to_owned(),
        ),
        Ok(_) => {}
    }
    if let Err(why) = &layout.vfs_offsets {
        skipped.push(format!("the path walk of a task already in D: {why}"));
    }
    let offsets = &iter.offsets;
    let missing = |fields: &[(&str, u32)]| -> Vec<String> {
        fields.iter().filter(|(_, offset)| *offset == NO_OFFSET).map(|(name, _)| (*name).to_owned()).collect()
    };
    let wait_lists = missing(&[
        ("rw_semaphore.wait_list", offsets.rwsem_wait_list),
        ("rwsem_waiter.list", offsets.waiter_list),
        ("rwsem_waiter.task", offsets.waiter_task),
        ("rwsem_waiter.type (or enum rwsem_waiter_type)", offsets.waiter_type),
    ]);
    if offsets.task_blocker == NO_OFFSET {
        let but = if offsets.task_blocker_mutex != NO_OFFSET { ", but a mutex" } else { "" };
        let instead = if wait_lists.is_empty() {
            "the walked directory's or the file's i_rwsem is named when the task is on its wait list"
        } else {
            "the owners of the walked directory's and the file's i_rwsem are read"
        };
        skipped.push(format!(
            "the lock a task already in D waits for{but}: task_struct.blocker needs Linux 6.16 with \
             CONFIG_DETECT_HUNG_TASK_BLOCKER ({instead})"
        ));
        if !wait_lists.is_empty() {
            skipped.push(format!(
                "which i_rwsem a task already in D waits for (its wait list): this kernel's BTF has no {}",
                wait_lists.join(", ")
            ));
        }
    } else if offsets.sem_last_holder == NO_OFFSET {
        skipped.push(
            "the last holder of a semaphore a task already in D waits for: semaphore.last_holder needs \
             Linux 6.16 with CONFIG_DETECT_HUNG_TASK_BLOCKER"
                .to_owned(),
        );
    }
    for (what, fields) in [
        ("the CPU a task already in D last ran on", &[("task_struct.cpu", offsets.task_cpu)][..]),
        ("when a task already in D last ran", &[("task_struct.se.exec_start", offsets.task_exec_start)][..]),
        (
            "the cgroup of a task already in D",
            &[
                ("task_struct.cgroups", offsets.task_cgroups),
                ("css_set.dfl_cgrp", offsets.css_set_dfl_cgrp),
                ("cgroup.kn", offsets.cgroup_kn),
                ("kernfs_node.id", offsets.kernfs_node_id),
            ][..],
        ),
        ("whether an i_rwsem is held", &[("rw_semaphore.count", offsets.rwsem_count)][..]),
    ] {
        let missing = missing(fields);
        if !missing.is_empty() {
            skipped.push(format!("{what}: this kernel's BTF has no {}", missing.join(", ")));
        }
    }
    let fuse_files = match (&layout.target_offsets, &iter.fuse_types, &layout.fuse_offsets) {
        (Err(why), _, _) => {
            skipped.push(format!("the /dev/fuse files: {why}"));
            None
        }
        (Ok(_), Err(why), _) | (Ok(_), Ok(_), Err(why)) => {
            skipped.push(format!("the FUSE connections of /dev/fuse files: {why}"));
            Some(names::PROG_ITER_FUSE_FILES)
        }
        (Ok(_), Ok(_), Ok(_)) => {
            let missing = missing(&[
                ("fuse_dev.fc", offsets.fud_fc),
                ("fuse_conn.connected", offsets.fc_connected),
                ("fuse_conn.num_waiting", offsets.fc_num_waiting),
                ("fuse_conn.iq.pending", offsets.fc_iq_pending),
                ("fuse_req.list", offsets.req_list),
                ("fuse_req.in.h.pid", offsets.req_pid),
            ]);
            if !missing.is_empty() {
                skipped.push(format!(
                    "the FUSE connections of /dev/fuse files and their pending requests: this kernel's BTF \
                     has no {}",
                    missing.join(", ")
                ));
            }
            if offsets.fud_processing == NO_OFFSET {
                skipped.push(
                    "the FUSE requests a daemon has read and not answered: this kernel's BTF has no \
                     fuse_dev.pq.processing that is a pointer (to the FUSE_PQ_HASH_SIZE list heads)"
                        .to_owned(),
                );
            }
            if offsets.req_create_time == NO_OFFSET {
                skipped.push(
                    "the age of the FUSE requests pending on a connection: fuse_req.create_time needs Linux \
                     6.14"
                        .to_owned(),
                );
            }
            Some(names::PROG_ITER_FUSE_FILES)
        }
    };
    let programs = if pt_regs {
        Programs {
            in_d: names::PROG_ITER_IN_D,
            wanted: names::PROG_ITER_WANTED,
            walking: names::PROG_ITER_WALKING,
            fuse_files,
            pt_regs,
        }
    } else {
        Programs {
            in_d: names::PROG_ITER_IN_D_PRE515,
            wanted: names::PROG_ITER_WANTED_PRE515,
            walking: names::PROG_ITER_WALKING_PRE515,
            fuse_files,
            pt_regs,
        }
    };
    Plan { programs: Some(programs), skipped }
}

/// The iterator programs of a loaded object, loaded in the kernel, and the maps the
/// passes fill.
pub struct Iterators {
    programs: Programs,
    wanted_tids: HashMap<MapData, u32, u8>,
    wanted_dirs: HashMap<MapData, u64, u8>,
    /// The kernel's HZ, from its configuration, if it says.
    hz: Option<u64>,
}

impl Iterators {
    /// Loads the iterator programs `plan` names into the kernel (the object `ebpf`
    /// loaded with its `CONFIG`): `None` when the plan has none. A `/dev/fuse` file
    /// program the kernel refuses is noted in `skipped`; a task program refused is an
    /// error.
    pub fn load(
        ebpf: &mut Ebpf,
        btf: &Btf,
        plan: &Plan,
        skipped: &mut Vec<String>,
    ) -> Result<Option<Iterators>> {
        let Some(mut programs) = plan.programs else { return Ok(None) };
        for program in [programs.in_d, programs.wanted, programs.walking] {
            load(ebpf, btf, program, "task")?;
        }
        if let Some(program) = programs.fuse_files {
            if let Err(err) = load(ebpf, btf, program, "task_file") {
                skipped.push(format!("the /dev/fuse files: {err:#}"));
                programs.fuse_files = None;
            }
        }
        let wanted_tids = HashMap::try_from(take_map(ebpf, names::MAP_ITER_WANTED_TIDS)?)?;
        let wanted_dirs = HashMap::try_from(take_map(ebpf, names::MAP_ITER_WANTED_DIRS)?)?;
        Ok(Some(Iterators { programs, wanted_tids, wanted_dirs, hz: configured_hz() }))
    }

    /// Runs the passes (see the module's documentation) with the programs of `ebpf`.
    pub fn look(&mut self, ebpf: &mut Ebpf, extra_tids: &[u32]) -> Result<Look> {
        let mut look = Look::default();
        let mut seen = HashSet::new();
        let pt_regs = self.programs.pt_regs;
        let mut keep = |look: &mut Look, records: Vec<TaskRecord>| {
            for record in records {
                // An exiting task (its last switch-out done) is not described.
                if record.state & TASK_DEAD == 0 && seen.insert(record.tid) {
                    look.tasks.push(task_seen(&record, pt_regs));
                }
            }
        };
        keep(&mut look, read_records(ebpf, self.programs.in_d)?);
        let mut wanted: BTreeSet<u32> = owners(&look.tasks).chain(extra_tids.iter().copied()).collect();
        for _ in 0..WANTED_PASSES {
            wanted.retain(|tid| look.tasks.iter().all(|task| task.tid != *tid));
            if wanted.is_empty() {
                break;
            }
            let first = look.tasks.len();
            let records = read_with_keys(ebpf, self.programs.wanted, &mut self.wanted_tids, &wanted)?;
            keep(&mut look, records);
            wanted = owners(&look.tasks[first..]).collect();
        }
        let dirs: BTreeSet<u64> = look
            .tasks
            .iter()
            .filter_map(|task| task.walk.as_ref().map(|walk| walk.dir_dentry).filter(|&dentry| dentry != 0))
            .collect();
        if !dirs.is_empty() {
            let records = read_with_keys(ebpf, self.programs.walking, &mut self.wanted_dirs, &dirs)?;
            keep(&mut look, records);
        }
        if let Some(program) = self.programs.fuse_files {
            let records: Vec<FuseFileRecord> = read_records(ebpf, program)?;
            look.fuse_files = records.iter().map(|record| fuse_file_seen(record, self.hz)).collect();
        }
        Ok(look)
    }
}

/// Runs the task iterator program `program` with `keys` in `map` (the tids or the
/// directories it looks for), in as many reads as the map's size needs, and takes
/// them out of the map again, whatever happened.
fn read_with_keys<K: aya::Pod + Ord>(
    ebpf: &mut Ebpf,
    program: &str,
    map: &mut HashMap<MapData, K, u8>,
    keys: &BTreeSet<K>,
) -> Result<Vec<TaskRecord>> {
    let keys: Vec<K> = keys.iter().copied().collect();
    let mut records = Vec::new();
    for chunk in keys.chunks(limits::ITER_WANTED_ENTRIES as usize) {
        let inserted: Result<()> = chunk
            .iter()
            .try_for_each(|key| map.insert(key, 1, 0).context("cannot fill a task iterator's map"));
        let read = inserted.and_then(|()| read_records::<TaskRecord>(ebpf, program));
        for key in chunk {
            // Not there: its insert failed.
            let _ = map.remove(key);
        }
        records.extend(read?);
    }
    Ok(records)
}

/// The tids the tasks name as lock owners (but themselves).
fn owners(tasks: &[TaskSeen]) -> impl Iterator<Item = u32> + '_ {
    tasks.iter().flat_map(|task| {
        let blocker = task.blocker.as_ref().and_then(|blocker| blocker.owner.as_ref());
        let file = task.fd_file.as_ref().and_then(|file| file.owner.as_ref());
        let dir = task.walk.as_ref().and_then(|walk| walk.dir_owner.as_ref());
        [blocker, file, dir].into_iter().flatten().map(|peer| peer.tid).filter(move |&tid| tid != task.tid)
    })
}

/// Loads iterator program `program` for the iterator kind `kind` (`task`,
/// `task_file`).
fn load(ebpf: &mut Ebpf, btf: &Btf, program: &str, kind: &str) -> Result<()> {
    let prog: &mut Iter = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("the eBPF object has no program {program}"))?
        .try_into()?;
    prog.load(kind, btf).with_context(|| format!("the kernel refused the iterator program {program}"))
}

/// Runs iterator program `program` once over the machine and decodes what it wrote.
/// Each read takes a new link (a loaded program is reused).
fn read_records<T: aya::Pod>(ebpf: &mut Ebpf, program: &str) -> Result<Vec<T>> {
    let prog: &mut Iter = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("the eBPF object has no program {program}"))?
        .try_into()?;
    let link = prog.attach().with_context(|| format!("cannot attach the iterator program {program}"))?;
    let mut file =
        prog.take_link(link)?.into_file().with_context(|| format!("cannot open the iterator {program}"))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("cannot read the iterator {program}"))?;
    decode_records(&bytes).ok_or_else(|| {
        anyhow!(
            "the iterator {program} wrote {} bytes: not whole {}-byte records",
            bytes.len(),
            size_of::<T>()
        )
    })
}

/// A task record, for people.
fn task_seen(record: &TaskRecord, pt_regs: bool) -> TaskSeen {
    let have = |bit: u32| record.have & bit != 0;
    let kernel_thread = record.flags & PF_KTHREAD != 0;
    let frames = usize::try_from(record.stack_bytes).map_or(0, |bytes| bytes / 8).min(record.stack.len());
    TaskSeen {
        tid: record.tid,
        tgid: record.tgid,
        comm: comm_string(&record.comm),
        state: record.state,
        kernel_thread,
        last_ran_ns: (have(HAVE_EXEC_START) && record.exec_start_ns != 0).then_some(record.exec_start_ns),
        cpu: have(HAVE_CPU).then_some(record.cpu),
        cgroup_id: record.cgroup_id,
        stack: record.stack[..frames].to_vec(),
        syscall: (have(HAVE_SYSCALL) && !kernel_thread).then_some((record.syscall_nr, record.args)),
        syscall_from_proc: !pt_regs && !kernel_thread,
        fd_file: have(HAVE_FD_FILE).then(|| FileSeen {
            fd: record.fd,
            mnt_id: record.fd_mnt_id,
            dev: record.fd_dev,
            ino: record.fd_ino,
            rwsem: record.fd_rwsem,
            owner: peer(&record.fd_owner),
            owner_reader_hint: reader_hint(&record.fd_owner),
            waiting: waiter_kind(record.fd_waiting),
        }),
        walk: have(HAVE_WALK).then(|| WalkSeen {
            path: path_string(&record.walk_path),
            last: comm_string(&record.walk_last),
            mnt_id: record.walk.mnt_id,
            dev: record.walk.dev,
            dir_ino: record.walk.dir_ino,
            dir_dentry: record.walk_dir_dentry,
            dir_rwsem: record.walk_dir_rwsem,
            dir_owner: peer(&record.walk_dir_owner),
            dir_owner_reader_hint: reader_hint(&record.walk_dir_owner),
            dir_waiting: waiter_kind(record.walk_dir_waiting),
        }),
        blocker: have(HAVE_BLOCKER).then(|| blocker_seen(record)),
    }
}

/// The lock of a record's `blocker` word.
fn blocker_seen(record: &TaskRecord) -> BlockerSeen {
    let (lock, kind) = if record.have & HAVE_BLOCKER_MUTEX_ONLY != 0 {
        (record.blocker, BlockerKind::Mutex)
    } else {
        let kind = match record.blocker & BLOCKER_TYPE_MASK {
            BLOCKER_TYPE_MUTEX => BlockerKind::Mutex,
            BLOCKER_TYPE_SEM => BlockerKind::Semaphore,
            BLOCKER_TYPE_RWSEM_READER => BlockerKind::RwsemReader,
            _ => BlockerKind::RwsemWriter,
        };
        (record.blocker & !BLOCKER_TYPE_MASK, kind)
    };
    BlockerSeen {
        lock,
        kind,
        owner: peer(&record.blocker_owner),
        reader_hint: reader_hint(&record.blocker_owner),
    }
}

/// What a task waits for on an rwsem's wait list (`WAIT_LIST_*`), if it is on it.
fn waiter_kind(waiting: u32) -> Option<BlockerKind> {
    match waiting {
        WAIT_LIST_WRITER => Some(BlockerKind::RwsemWriter),
        WAIT_LIST_READER => Some(BlockerKind::RwsemReader),
        _ => None,
    }
}

/// The task a peer record names, if it names one.
fn peer(record: &PeerRecord) -> Option<Peer> {
    (record.flags & PEER_KNOWN != 0).then(|| Peer {
        tid: record.tid,
        tgid: record.tgid,
        comm: comm_string(&record.comm),
        state: record.state,
    })
}

/// Whether the peer named is only a hint.
fn reader_hint(record: &PeerRecord) -> bool {
    record.flags & (PEER_KNOWN | PEER_READER_HINT) == PEER_KNOWN | PEER_READER_HINT
}

/// A `/dev/fuse` file record, for people; `configured_hz` the kernel's HZ if its
/// configuration says (else it is inferred from the record's clocks).
fn fuse_file_seen(record: &FuseFileRecord, configured_hz: Option<u64>) -> FuseFileSeen {
    let have = |bit: u32| record.have & bit != 0;
    let hz = configured_hz.or_else(|| hz_from_jiffies(record.now_jiffies, record.now_ns));
    let kept = (record.kept as usize).min(FUSE_REQUESTS_KEPT);
    let requests = record.requests[..kept]
        .iter()
        .map(|request| FuseRequestSeen {
            opcode: request.opcode,
            unique: request.unique,
            nodeid: request.nodeid,
            pid: request.pid,
            age_ns: (have(HAVE_CREATE_TIME) && request.create_jiffies != 0)
                .then(|| {
                    hz.map(|hz| jiffies_ns(record.now_jiffies.saturating_sub(request.create_jiffies), hz))
                })
                .flatten(),
            read: request.flags & FUSE_REQUEST_READ != 0,
        })
        .collect();
    FuseFileSeen {
        tgid: record.tgid,
        tid: record.tid,
        comm: comm_string(&record.comm),
        state: record.state,
        fd: record.fd,
        dev: if have(HAVE_CONNECTION) { record.dev } else { 0 },
        connected: have(HAVE_CONNECTION) && record.connected != 0,
        num_waiting: record.num_waiting,
        pending: if have(HAVE_PENDING) { record.pending } else { 0 },
        processing: if have(HAVE_PROCESSING) { record.processing } else { 0 },
        fuse_dev: record.fuse_dev,
        requests,
    }
}

/// `jiffies` ticks of a kernel at `hz`, in nanoseconds.
fn jiffies_ns(jiffies: u64, hz: u64) -> u64 {
    u64::try_from(u128::from(jiffies) * 1_000_000_000 / u128::from(hz.max(1))).unwrap_or(u64::MAX)
}

/// The kernel's HZ (ticks of `jiffies` a second): `CONFIG_HZ` of its configuration
/// in `/proc/config.gz`, where the kernel has one (`CONFIG_IKCONFIG_PROC`).
///
/// `fuse_req.create_time` is in jiffies, and only the kernel's HZ makes them time.
/// Where the configuration is not there (Debian does not build it in), HZ is
/// inferred from `jiffies` itself ([`hz_from_jiffies`]).
fn configured_hz() -> Option<u64> {
    let file = std::fs::File::open("/proc/config.gz").ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text).ok()?;
    config_hz(&text)
}

/// `CONFIG_HZ` of a kernel configuration's text.
fn config_hz(config: &str) -> Option<u64> {
    config.lines().find_map(|line| line.strip_prefix("CONFIG_HZ=")).and_then(|hz| hz.trim().parse().ok())
}

/// HZ inferred from `jiffies` and CLOCK_MONOTONIC read together: the kernel starts
/// `jiffies` at `INITIAL_JIFFIES`, `(unsigned long)(unsigned int)(-300 * HZ)`
/// (include/linux/jiffies.h), and advances it HZ times a second of CLOCK_MONOTONIC
/// (from the same clock, with NO_HZ), so `jiffies = 2^32 - 300 HZ + HZ * uptime`.
/// Of the HZ values Linux offers (100, 250, 300, 1000), the one that fits within a
/// second of ticks, where no other fits within four: `None` otherwise (an uptime
/// close to 300 s, where every HZ gives the same `jiffies`).
fn hz_from_jiffies(jiffies: u64, monotonic_ns: u64) -> Option<u64> {
    let errors: Vec<(u64, i128)> = [100u64, 250, 300, 1000]
        .into_iter()
        .map(|hz| {
            let hz_wide = i128::from(hz);
            let predicted =
                (1i128 << 32) - 300 * hz_wide + hz_wide * i128::from(monotonic_ns) / 1_000_000_000;
            (hz, (i128::from(jiffies) - predicted).abs())
        })
        .collect();
    let (best, error) = errors.iter().copied().min_by_key(|&(_, error)| error)?;
    let alone = errors.iter().all(|&(hz, other)| hz == best || other > 4 * i128::from(hz.max(best)));
    (error <= i128::from(best) && alone).then_some(best)
}

/// The task iterators alone, for `dstrace snapshot`: the object loaded with its
/// other maps at their smallest and no other program, which needs only what loading
/// the iterators needs (root, or CAP_BPF and CAP_PERFMON).
pub struct Looker {
    ebpf: Ebpf,
    iterators: Iterators,
    counters: PerCpuArray<MapData, u64>,
    skipped: Vec<String>,
}

/// The maps the iterator programs do not use, and the smallest size each can have.
const UNUSED_MAPS: &[(&str, u32)] = &[
    (names::MAP_INFLIGHT, 1),
    (names::MAP_STACKS, 1),
    (names::MAP_EVENTS, 4096),
    (names::MAP_AGG, 1),
    (names::MAP_FUSE_INFLIGHT, 1),
    (names::MAP_RPC_INFLIGHT, 1),
    (names::MAP_DLOOKUP_WAITING, 1),
    (names::MAP_DLOOKUP_OWNERS, 1),
    (names::MAP_CONTENDING, 1),
    (names::MAP_FILTER_TGIDS, 1),
    (names::MAP_FILTER_TIDS, 1),
    (names::MAP_FILTER_CGROUPS, 1),
    (names::MAP_FILTER_COMMS, 1),
];

impl Looker {
    /// Loads the task iterator programs for the running kernel; `include_idle`:
    /// the pass of tasks in D takes `TASK_IDLE` tasks too. An error where this kernel
    /// has no task iterator, saying why.
    pub fn load(include_idle: bool) -> Result<Looker> {
        if !preflight::may_load_bpf() {
            bail!("reading the tasks in D from kernel memory needs root, or CAP_BPF and CAP_PERFMON");
        }
        if !Path::new(VMLINUX_BTF).exists() {
            bail!(
                "reading the tasks in D from kernel memory needs the kernel's BTF ({VMLINUX_BTF} is missing)"
            );
        }
        preflight::raise_memlock_limit();
        let (layout, btf, mut loader) = btf::running_kernel()?;
        let plan = plan(&layout);
        let mut skipped = plan.skipped.clone();
        let mut config = object::kernel_config(&layout);
        if include_idle {
            config.flags |= CONFIG_INCLUDE_IDLE;
        }
        loader.btf(Some(&btf)).override_global(names::GLOBAL_CONFIG, &config, true);
        for &(map, entries) in UNUSED_MAPS {
            loader.map_max_entries(map, entries);
        }
        let mut ebpf = loader.load(OBJECT).context("cannot load the eBPF object")?;
        fill_syscall_args(&mut ebpf)?;
        let iterators = Iterators::load(&mut ebpf, &btf, &plan, &mut skipped)?
            .ok_or_else(|| anyhow!("{}", skipped.join("; ")))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, names::MAP_COUNTERS)?)?;
        Ok(Looker { ebpf, iterators, counters, skipped })
    }

    /// Every task in D now and the tasks their waits lead to (`extra_tids` too,
    /// whatever their state), and the `/dev/fuse` files: see the module's
    /// documentation.
    pub fn look(&mut self, extra_tids: &[u32]) -> Result<Look> {
        self.iterators.look(&mut self.ebpf, extra_tids)
    }

    /// What the task iterator cannot give on this kernel, one line each with the
    /// oldest kernel that has it.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The kernel side's counters (failed reads of the looks so far, ...), summed
    /// over CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        object::counters(&self.counters)
    }
}

#[cfg(test)]
mod tests {
    use dstrace_common::{
        FuseRequestRecord, IterOffsets, LockOffsets, Offsets, VfsOffsets, Walk, BLOCKER_TYPE_RWSEM_WRITER,
        COMM_LEN, ITER_NAME_LEN, ITER_PATH_LEN, ITER_STACK_FRAMES, WAIT_LIST_NONE,
    };

    use super::*;
    use crate::kernel::btf::FuseTypes;

    /// A 6.18-like kernel: everything there.
    fn full() -> KernelLayout {
        let mut layout = KernelLayout::sample();
        layout.target_offsets = Ok(Offsets::UNSET);
        layout.vfs_offsets = Ok(VfsOffsets::UNSET);
        layout.lock_offsets = Ok(LockOffsets::UNSET);
        layout.fuse_offsets = Ok(dstrace_common::FuseOffsets::UNSET);
        layout.iter.has_task_iterators = true;
        layout.iter.has_get_task_stack = true;
        layout.iter.has_task_pt_regs = true;
        layout.iter.fuse_types = Ok(FuseTypes::BuiltIn);
        layout.iter.offsets = IterOffsets { task_blocker_mutex: NO_OFFSET, ..all_offsets() };
        layout
    }

    fn all_offsets() -> IterOffsets {
        IterOffsets {
            task_exec_start: 1,
            task_cpu: 2,
            task_blocker: 3,
            task_blocker_mutex: 4,
            task_cgroups: 5,
            css_set_dfl_cgrp: 6,
            cgroup_kn: 7,
            kernfs_node_id: 8,
            inode_mode: 9,
            inode_rdev: 10,
            rwsem_count: 11,
            sem_last_holder: 12,
            file_private_data: 13,
            fud_fc: 14,
            fc_connected: 15,
            fc_num_waiting: 16,
            fc_iq_pending: 17,
            req_list: 18,
            req_pid: 19,
            req_create_time: 20,
            rwsem_wait_list: 21,
            waiter_list: 0,
            waiter_task: 22,
            waiter_type: 23,
            waiting_for_read: 1,
            fud_processing: 24,
        }
    }

    #[test]
    fn a_kernel_with_everything_skips_nothing() {
        let plan = plan(&full());
        assert_eq!(plan.skipped, Vec::<String>::new());
        let programs = plan.programs.unwrap();
        assert_eq!(
            (programs.in_d, programs.fuse_files),
            (names::PROG_ITER_IN_D, Some(names::PROG_ITER_FUSE_FILES))
        );
        assert!(programs.pt_regs);
    }

    /// What Debian's 5.10 lacks: `bpf_task_pt_regs`, `blocker`, `thread_info.cpu`
    /// (it has `task_struct.cpu`), `create_time`; FUSE a module not loaded.
    #[test]
    fn an_old_kernel_gets_the_pre_5_15_programs_and_says_what_it_lacks() {
        let mut layout = full();
        layout.iter.has_task_pt_regs = false;
        layout.iter.offsets.task_blocker = NO_OFFSET;
        layout.iter.offsets.sem_last_holder = NO_OFFSET;
        layout.iter.offsets.req_create_time = NO_OFFSET;
        layout.iter.fuse_types = Err("FUSE is a module that is not loaded".into());
        let said = super::plan(&layout).skipped.join("\n");
        assert!(said.contains("is named when the task is on its wait list"), "{said}");
        let plan = plan(&layout);
        let programs = plan.programs.unwrap();
        assert_eq!(
            (programs.in_d, programs.wanted),
            (names::PROG_ITER_IN_D_PRE515, names::PROG_ITER_WANTED_PRE515)
        );
        assert!(!programs.pt_regs);
        let said = plan.skipped.join("\n");
        for needs in ["bpf_task_pt_regs needs Linux 5.15", "task_struct.blocker needs Linux 6.16", "module"] {
            assert!(said.contains(needs), "{needs}: {said}");
        }
        assert_eq!(plan.skipped.len(), 3, "{said}");
    }

    #[test]
    fn no_iterator_before_5_8_nor_without_task_identity() {
        let mut layout = full();
        layout.iter.has_task_iterators = false;
        let plan = plan(&layout);
        assert_eq!(plan.programs, None);
        assert_eq!(plan.skipped, ["tasks already in D: the task iterator needs Linux 5.8"]);
        let mut layout = full();
        layout.lock_offsets = Err("BTF has no struct rw_semaphore".into());
        assert_eq!(super::plan(&layout).programs, None);
    }

    /// Without the wait list in BTF (`PREEMPT_RT`) nor `blocker`, the owners alone;
    /// without the processing queue, the requests a daemon read are not counted.
    #[test]
    fn a_kernel_without_wait_lists_or_processing_queues_says_so() {
        let mut layout = full();
        layout.iter.offsets.task_blocker = NO_OFFSET;
        layout.iter.offsets.rwsem_wait_list = NO_OFFSET;
        layout.iter.offsets.fud_processing = NO_OFFSET;
        let said = plan(&layout).skipped.join("\n");
        for says in [
            "(the owners of the walked directory's and the file's i_rwsem are read)",
            "which i_rwsem a task already in D waits for (its wait list): this kernel's BTF has no \
             rw_semaphore.wait_list",
            "the FUSE requests a daemon has read and not answered: this kernel's BTF has no \
             fuse_dev.pq.processing",
        ] {
            assert!(said.contains(says), "{says}: {said}");
        }
        // With `blocker`, the wait list is not needed.
        layout.iter.offsets.task_blocker = 3;
        assert!(!plan(&layout).skipped.join("\n").contains("wait list"));
    }

    #[test]
    fn a_6_15_kernel_names_mutexes_only() {
        let mut layout = full();
        layout.iter.offsets.task_blocker = NO_OFFSET;
        layout.iter.offsets.task_blocker_mutex = 40;
        let plan = plan(&layout);
        assert_eq!(plan.skipped.len(), 1);
        assert!(plan.skipped[0].starts_with("the lock a task already in D waits for, but a mutex"));
    }

    fn peer_record(tid: u32, flags: u32) -> PeerRecord {
        let mut comm = [0; COMM_LEN];
        comm[..2].copy_from_slice(b"sh");
        PeerRecord { tid, tgid: tid, state: 1, flags, comm }
    }

    fn task_record() -> TaskRecord {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"stat");
        let mut walk_path = [0; ITER_PATH_LEN];
        walk_path[..10].copy_from_slice(b"/m/missing");
        let mut walk_last = [0; ITER_NAME_LEN];
        walk_last[..7].copy_from_slice(b"missing");
        let mut stack = [0; ITER_STACK_FRAMES];
        stack[..3].copy_from_slice(&[10, 11, 12]);
        TaskRecord {
            tid: 42,
            tgid: 41,
            state: 2,
            flags: 0x40_0000,
            cpu: 1,
            have: HAVE_CPU | HAVE_EXEC_START | HAVE_SYSCALL | HAVE_WALK | HAVE_BLOCKER,
            exec_start_ns: 77,
            cgroup_id: 9,
            comm,
            stack_bytes: 24,
            stack,
            syscall_nr: 332,
            args: [1, 2, 3, 4, 5, 6],
            fd: -100,
            fd_mnt_id: 0,
            fd_dev: 0,
            fd_waiting: WAIT_LIST_NONE,
            fd_ino: 0,
            fd_rwsem: 0,
            fd_owner: PeerRecord::NONE,
            walk: Walk { mnt_id: 45, dev: 40, dir_ino: 1 },
            walk_dir_dentry: 0xd0,
            walk_dir_rwsem: 0x1000,
            walk_dir_waiting: WAIT_LIST_WRITER,
            _pad: 0,
            walk_dir_owner: peer_record(43, PEER_KNOWN | PEER_READER_HINT),
            blocker: 0x1000 | BLOCKER_TYPE_RWSEM_WRITER,
            blocker_owner: peer_record(44, PEER_KNOWN),
            walk_last,
            walk_path,
        }
    }

    #[test]
    fn a_task_record_reads_as_it_was_written() {
        let seen = task_seen(&task_record(), true);
        assert_eq!((seen.tid, seen.tgid, seen.comm.as_str(), seen.state), (42, 41, "stat", 2));
        assert_eq!((seen.last_ran_ns, seen.cpu, seen.cgroup_id), (Some(77), Some(1), 9));
        assert_eq!(seen.stack, [10, 11, 12]);
        assert_eq!(seen.syscall, Some((332, [1, 2, 3, 4, 5, 6])));
        assert!(!seen.kernel_thread && !seen.syscall_from_proc && seen.fd_file.is_none());
        let walk = seen.walk.unwrap();
        assert_eq!((walk.path.as_str(), walk.last.as_str()), ("/m/missing", "missing"));
        assert_eq!((walk.mnt_id, walk.dev, walk.dir_ino, walk.dir_dentry), (45, 40, 1, 0xd0));
        assert_eq!(walk.dir_owner.map(|owner| owner.tid), Some(43));
        assert!(walk.dir_owner_reader_hint);
        assert_eq!(walk.dir_waiting, Some(BlockerKind::RwsemWriter));
        let blocker = seen.blocker.unwrap();
        assert_eq!(
            (blocker.lock, blocker.kind, blocker.reader_hint),
            (0x1000, BlockerKind::RwsemWriter, false)
        );
        assert_eq!(blocker.owner.map(|owner| (owner.tid, owner.comm)), Some((44, "sh".to_owned())));
    }

    #[test]
    fn a_kernel_thread_has_no_syscall_and_an_old_kernel_sends_to_proc() {
        let mut record = task_record();
        record.flags |= PF_KTHREAD;
        let seen = task_seen(&record, false);
        assert!(seen.kernel_thread && seen.syscall.is_none() && !seen.syscall_from_proc);
        record.flags &= !PF_KTHREAD;
        record.have &= !HAVE_SYSCALL;
        let seen = task_seen(&record, false);
        assert!(seen.syscall.is_none() && seen.syscall_from_proc);
        // A mutex named by `blocker_mutex` (6.15) has no type bits.
        record.have |= HAVE_BLOCKER_MUTEX_ONLY;
        record.blocker = 0x2003;
        assert_eq!(
            task_seen(&record, true).blocker.map(|b| (b.lock, b.kind)),
            Some((0x2003, BlockerKind::Mutex))
        );
        // Its file's i_rwsem, waited for to read; the directory's not.
        record.have |= HAVE_FD_FILE;
        record.fd_waiting = WAIT_LIST_READER;
        record.walk_dir_waiting = WAIT_LIST_NONE;
        let seen = task_seen(&record, true);
        assert_eq!(seen.fd_file.and_then(|file| file.waiting), Some(BlockerKind::RwsemReader));
        assert_eq!(seen.walk.and_then(|walk| walk.dir_waiting), None);
    }

    #[test]
    fn owners_are_the_locks_holders_but_the_task_itself() {
        let seen = task_seen(&task_record(), true);
        let mut own = seen.clone();
        own.tid = 43; // the reader hint names the task itself
        assert_eq!(owners(&[seen, own]).collect::<Vec<_>>(), [44, 43, 44]);
    }

    #[test]
    fn a_fuse_record_reads_with_its_requests_ages() {
        let request = FuseRequestRecord {
            opcode: 1,
            pid: 7,
            unique: 16,
            nodeid: 1,
            create_jiffies: 1000,
            flags: 0,
            _pad: 0,
        };
        let mut record = FuseFileRecord {
            tgid: 5,
            tid: 5,
            fd: 3,
            state: 0x104,
            comm: [0; COMM_LEN],
            dev: 42,
            connected: 1,
            num_waiting: 2,
            pending: 2,
            have: HAVE_CONNECTION | HAVE_PENDING | HAVE_PROCESSING | HAVE_CREATE_TIME,
            processing: 1,
            kept: 3,
            _pad: 0,
            fuse_dev: 0xf0,
            now_jiffies: 1500,
            now_ns: 0,
            requests: [request; FUSE_REQUESTS_KEPT],
        };
        record.requests[2].flags = FUSE_REQUEST_READ;
        let seen = fuse_file_seen(&record, Some(250));
        assert_eq!((seen.dev, seen.connected, seen.num_waiting, seen.pending), (42, true, 2, 2));
        assert_eq!((seen.processing, seen.fuse_dev), (1, 0xf0));
        assert_eq!(
            seen.requests.iter().map(|request| request.read).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert_eq!(seen.requests[0].age_ns, Some(2_000_000_000), "500 ticks at 250 Hz");
        record.have &= !HAVE_CREATE_TIME;
        assert_eq!(fuse_file_seen(&record, Some(250)).requests[0].age_ns, None);
        record.pending = 65;
        record.kept = FUSE_REQUESTS_KEPT as u32;
        assert_eq!(fuse_file_seen(&record, Some(250)).requests.len(), FUSE_REQUESTS_KEPT);
        record.have = 0;
        record.kept = 0;
        let seen = fuse_file_seen(&record, Some(250));
        assert_eq!((seen.dev, seen.connected, seen.requests.len()), (0, false, 0), "not mounted yet");
        assert_eq!((seen.pending, seen.processing), (0, 0));
    }

    #[test]
    fn hz_comes_from_the_configuration_or_from_jiffies() {
        assert_eq!(config_hz("CONFIG_HZ_250=y\nCONFIG_HZ=250\n"), Some(250));
        assert_eq!(config_hz("# CONFIG_HZ is not set\n"), None);
        // `jiffies = 2^32 - 300 HZ + HZ * uptime`, a quarter of a second off.
        for hz in [100u64, 250, 300, 1000] {
            for uptime in [3u64, 60, 3600, 40 * 86_400] {
                let jiffies = (1u64 << 32) - 300 * hz + hz * uptime + hz / 4;
                assert_eq!(hz_from_jiffies(jiffies, uptime * 1_000_000_000), Some(hz), "{hz} Hz, {uptime} s");
            }
        }
        // At 300 s of uptime every HZ gives the same jiffies.
        assert_eq!(hz_from_jiffies(1 << 32, 300_000_000_000), None);
        // Nothing fits: a clock that is not what it seems.
        assert_eq!(hz_from_jiffies(5, 3_600_000_000_000), None);
        assert_eq!(jiffies_ns(3, 1000), 3_000_000);
    }
}
