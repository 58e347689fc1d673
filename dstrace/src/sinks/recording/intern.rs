//! Strings, stacks and descriptions of tasks in D numbered per session: the
//! writer's [`Interner`] defines each the first time a record uses it, the
//! reader's [`Table`] takes the definitions in as it reads, so a symbol is written
//! once per file, and a task that stays in D as it was is a number per interval.

use std::{collections::HashMap, path::PathBuf, time::SystemTime};

use crate::{
    kernel::syscalls,
    model::{
        aggregate::Totals,
        link::Link,
        wait::{lock_kind, Holder, LockInfo, Source, TaskState, Wait, WakerInfo},
    },
    resolve::{
        attribution::{Attribution, FileRef},
        file_locks::FileLock,
        mounts::Mount,
        symbols::{blocking_function, Stack},
    },
    sinks::recording::schema::{
        from_unix_ns, unix_ns, First, HolderRecord, InDRecord, Interval, IntervalData, LinkRecord,
        LockRecord, MountRecord, Row, RowData, TasksInD, WaitRecord, WakerRecord,
    },
};

/// Every this many records (intervals, lists of tasks in D) the writer forgets
/// its definitions and defines again what it uses, under new ids: a damaged frame
/// costs the names and descriptions it defined to the records after it until
/// then (they read as lost, never as another name), and the writer's memory
/// stays bounded over days.
pub const DEFINE_AGAIN: u32 = 60;

/// Descriptions of tasks in D the writer remembers at most between two
/// definitions again: past it they are forgotten, and a task still in D is
/// described again (under a new id).
const MAX_DESCRIBED: usize = 65_536;

/// Strings, stacks and descriptions of a session, as the writer numbers them.
/// Ids only grow: ids defined again are new ones, so no id ever names two things.
#[derive(Default)]
pub struct Interner {
    strings: HashMap<String, u32>,
    stacks: HashMap<Vec<u32>, u32>,
    described: HashMap<InDRecord, u32>,
    new_strings: Vec<String>,
    new_stacks: Vec<Vec<u32>>,
    /// The next ids.
    next: First,
    /// Records encoded since the definitions were last forgotten.
    records: u32,
}

impl Interner {
    /// Counts a record about to be encoded, forgetting every definition when it
    /// is time to define again.
    fn record(&mut self) {
        if self.records >= DEFINE_AGAIN {
            self.forget();
        }
        self.records += 1;
    }

    /// Forgets every definition now (a write failed: what the lost frame defined
    /// may not be in the file), so that the next record defines again, under new
    /// ids, everything it uses.
    pub fn forget(&mut self) {
        self.records = 0;
        self.strings.clear();
        self.stacks.clear();
        self.described.clear();
    }

    /// The ids the next definitions get.
    pub fn next_ids(&self) -> First {
        self.next
    }

    /// Gives the ids from `to` on again, after [`Interner::forget`]: for a record
    /// encoded but never written (nothing of it is in the file), so that no
    /// reader has seen them.
    pub fn rewind(&mut self, to: First) {
        self.next = to;
    }

    /// The id of a string, defining it if new.
    pub fn string(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.strings.get(text) {
            return id;
        }
        let id = self.next.string;
        self.next.string += 1;
        self.strings.insert(text.to_owned(), id);
        self.new_strings.push(text.to_owned());
        id
    }

    /// The id of a stack; `None` for an empty (lost) one.
    pub fn stack(&mut self, frames: &[String]) -> Option<u32> {
        if frames.is_empty() {
            return None;
        }
        let ids: Vec<u32> = frames.iter().map(|frame| self.string(frame)).collect();
        if let Some(&id) = self.stacks.get(&ids) {
            return Some(id);
        }
        let id = self.next.stack;
        self.next.stack += 1;
        self.stacks.insert(ids.clone(), id);
        self.new_stacks.push(ids);
        Some(id)
    }

    /// Encodes an interval: what it refers to is defined in it or before it; its
    /// definitions start at the ids returned.
    pub fn interval(&mut self, data: &IntervalData) -> (First, Interval) {
        self.record();
        let first = self.next;
        let rows = data
            .rows
            .iter()
            .map(|row| Row {
                pid: row.pid,
                comm: self.string(&row.comm),
                stack: self.stack(&row.stack),
                mount: row.mount.as_deref().map(|mount| self.string(mount)),
                lock: row.lock.as_deref().map(|lock| self.string(lock)),
                count: row.totals.count,
                total_ns: row.totals.total_ns,
                max_ns: row.totals.max_ns,
                hist: {
                    let used = row.totals.hist.iter().rposition(|&n| n != 0).map_or(0, |i| i + 1);
                    row.totals.hist[..used].to_vec()
                },
            })
            .collect();
        let waits = data.waits.iter().map(|wait| self.wait(wait)).collect();
        let counters = data.counters.iter().map(|(name, n)| (self.string(name), *n)).collect();
        let interval = Interval {
            start_ns: unix_ns(data.start),
            end_ns: unix_ns(data.end),
            strings: std::mem::take(&mut self.new_strings),
            stacks: std::mem::take(&mut self.new_stacks),
            rows,
            waits,
            counters,
        };
        (first, interval)
    }

    /// Encodes the tasks in D at `end` (ongoing waits): each described once while
    /// it stays as it was, then referred to by number with its age.
    pub fn tasks_in_d(&mut self, end: SystemTime, waits: &[Wait]) -> TasksInD {
        let end_ns = unix_ns(end);
        self.record();
        let first = self.next;
        let mut described = Vec::new();
        let mut tasks = Vec::with_capacity(waits.len());
        for wait in waits {
            let record = self.in_d_record(wait, end_ns);
            let id = match self.described.get(&record) {
                Some(&id) => id,
                None => {
                    if self.described.len() >= MAX_DESCRIBED {
                        self.described.clear();
                    }
                    let id = self.next.described;
                    self.next.described += 1;
                    self.described.insert(record.clone(), id);
                    described.push(record);
                    id
                }
            };
            // Its age at the end, from its start when known: read back, the start
            // is the same to the millisecond at every interval end.
            let age_ns = wait.start.map_or(wait.duration_ns, |start| end_ns.saturating_sub(unix_ns(start)));
            tasks.push((id, age_ns / 1_000_000));
        }
        TasksInD {
            end_ns,
            first,
            strings: std::mem::take(&mut self.new_strings),
            stacks: std::mem::take(&mut self.new_stacks),
            described,
            tasks,
        }
    }

    fn in_d_record(&mut self, wait: &Wait, end_ns: u64) -> InDRecord {
        let mut record = self.wait(wait);
        (record.start_ns, record.end_ns, record.duration_ns) = (None, None, 0);
        // An age becomes the whole second it counts from, so that it stays the
        // same while nothing changes.
        let since =
            |age_ns: Option<u64>| age_ns.map(|age| end_ns.saturating_sub(age).div_ceil(1_000_000_000));
        let chain = wait
            .chain
            .iter()
            .map(|link| match link {
                Link::Task { tid, pid, comm, state, function } => LinkRecord::Task(
                    *tid,
                    *pid,
                    self.string(comm),
                    *state,
                    function.as_deref().map(|f| self.string(f)),
                ),
                Link::Lock { name } => LinkRecord::Lock(self.string(name)),
                Link::FileLock { kind } => LinkRecord::FileLock(self.string(kind)),
                Link::Mount { mountpoint, fstype, source } => {
                    LinkRecord::Mount(self.string(mountpoint), self.string(fstype), self.string(source))
                }
                Link::FuseRequests {
                    in_flight,
                    oldest_ns,
                    oldest_opcode,
                    oldest_tid,
                    oldest_comm,
                    read_by_daemon,
                } => LinkRecord::FuseRequests(
                    *in_flight,
                    since(*oldest_ns),
                    self.string(oldest_opcode),
                    *oldest_tid,
                    self.string(oldest_comm),
                    *read_by_daemon,
                ),
                Link::FuseDaemon { pid, comm, state, waiting } => {
                    LinkRecord::FuseDaemon(*pid, self.string(comm), *state, *waiting)
                }
                Link::Rpc {
                    program,
                    version,
                    procedure,
                    xid,
                    age_ns,
                    transmits,
                    timeouts,
                    not_responding_ns,
                    others,
                } => LinkRecord::Rpc(
                    self.string(program),
                    *version,
                    self.string(procedure),
                    *xid,
                    since(*age_ns),
                    *transmits,
                    *timeouts,
                    since(*not_responding_ns),
                    *others,
                ),
                Link::NfsServer { address, nfs_version } => LinkRecord::NfsServer(
                    self.string(address),
                    nfs_version.as_deref().map(|v| self.string(v)),
                ),
            })
            .collect();
        let file_locks = wait
            .on
            .file_locks
            .iter()
            .map(|lock| {
                (self.string(&lock.kind), self.string(&lock.access), lock.pid, lock.range.0, lock.range.1)
            })
            .collect();
        InDRecord {
            wait: record,
            cgroup: wait.cgroup.as_deref().map(|cgroup| self.string(cgroup)),
            mount_id: wait.on.mount.as_ref().map_or((0, 0), |mount| (mount.id, mount.namespace)),
            source: match wait.source {
                Source::Traced => 0,
                Source::Proc => 1,
                Source::Iterator => 2,
            },
            chain,
            file_locks,
        }
    }

    fn wait(&mut self, wait: &Wait) -> WaitRecord {
        WaitRecord {
            start_ns: wait.start.map(unix_ns),
            end_ns: wait.end.map(unix_ns),
            duration_ns: wait.duration_ns,
            tid: wait.tid,
            pid: wait.pid,
            comm: self.string(&wait.comm),
            cgroup_id: wait.cgroup_id,
            state: match wait.state {
                TaskState::Uninterruptible => 0,
                TaskState::Killable => 1,
                TaskState::Idle => 2,
            },
            stack: self.stack(&wait.stack),
            waker: wait.waker.as_ref().map(|waker| WakerRecord {
                tid: waker.tid,
                pid: waker.pid,
                comm: self.string(&waker.comm),
                interrupt: waker.interrupt,
                stack: self.stack(&waker.stack),
            }),
            syscall: wait.on.syscall.map(|name| self.string(name)),
            mount: wait.on.mount.as_ref().map(|mount| MountRecord {
                mount_point: self.string(&mount.mount_point.to_string_lossy()),
                fs_type: self.string(&mount.fs_type),
                source: self.string(&mount.source),
                dev: mount.dev,
            }),
            file: wait
                .on
                .file
                .as_ref()
                .map(|file| (file.path.as_deref().map(|p| self.string(p)), file.inode)),
            lock: wait.lock.as_ref().map(|lock| LockRecord {
                kind: self.string(lock.kind),
                addr: lock.addr,
                inode: lock.inode,
                holder: lock.holder.as_ref().map(|holder| HolderRecord {
                    tid: holder.tid,
                    pid: holder.pid,
                    comm: self.string(&holder.comm),
                    reader_hint: holder.reader_hint,
                    state: holder.state,
                    function: holder.function.as_deref().map(|f| self.string(f)),
                }),
            }),
        }
    }
}

/// The most bytes of text one record's stacks, or the tasks in D at one
/// interval's end, resolve to when read: far above what dstrace writes (a task
/// in D is a few hundred bytes of text; 10,000 of them some megabytes), far below
/// what would exhaust memory.
const MAX_RESOLVED: usize = 32 << 20;

/// What a frame or a link costs beside its texts, in [`MAX_RESOLVED`]'s account.
const FRAME_COST: usize = 32;

/// Strings and stacks of a session, as the reader has them so far.
#[derive(Default)]
///
/// Definitions are kept by id: a record of format 2 says which ids its own start
/// at ([`First`]), so the definitions of a damaged frame are lost and no other
/// id is shifted (format 1 numbered on from the last definition read).
pub struct Table {
    strings: HashMap<u32, String>,
    stacks: HashMap<u32, Stack>,
    described: HashMap<u32, InDRecord>,
    /// Where format 1's definitions go on.
    next: First,
}

impl Table {
    fn string(&self, id: u32) -> String {
        self.strings.get(&id).cloned().unwrap_or_else(|| format!("<lost string {id}>"))
    }

    fn stack(&self, id: Option<u32>) -> Stack {
        match id {
            None => Stack::from([]),
            Some(id) => {
                self.stacks.get(&id).cloned().unwrap_or_else(|| Stack::from([format!("<lost stack {id}>")]))
            }
        }
    }

    /// The length of string `id` as it is resolved (a lost one too).
    fn text_len(&self, id: u32) -> usize {
        self.strings.get(&id).map_or(24, String::len)
    }

    fn define(&mut self, first: Option<First>, strings: &[String], stacks: &[Vec<u32>]) {
        let first = first.unwrap_or(self.next);
        for (id, text) in (first.string..).zip(strings) {
            self.strings.insert(id, text.clone());
        }
        // A stack is its frames' texts: a few ids of a long string would make
        // much of little, so a record's stacks resolve to at most MAX_RESOLVED
        // bytes; past it they are lost (read as `<lost stack N>`).
        let mut budget = MAX_RESOLVED;
        for (id, ids) in (first.stack..).zip(stacks) {
            let cost: usize = ids.iter().map(|&id| self.text_len(id) + FRAME_COST).sum();
            if cost > budget {
                break;
            }
            budget -= cost;
            let stack: Stack = ids.iter().map(|&id| self.string(id)).collect();
            self.stacks.insert(id, stack);
        }
        self.next = First {
            string: first.string.saturating_add(strings.len() as u32),
            stack: first.stack.saturating_add(stacks.len() as u32),
            described: self.next.described,
        };
    }

    /// Takes in the definitions of the tasks in D at an interval's end and
    /// resolves them; also returns how many referred to a description lost (in a
    /// damaged frame), and how many would have made more text than
    /// [`MAX_RESOLVED`] allows, which are left out.
    pub fn tasks_in_d(&mut self, in_d: &TasksInD) -> (Vec<Wait>, usize, usize) {
        self.define(Some(in_d.first), &in_d.strings, &in_d.stacks);
        for (id, record) in (in_d.first.described..).zip(&in_d.described) {
            self.described.insert(id, record.clone());
        }
        let (mut lost, mut too_big) = (0, 0);
        let mut waits = Vec::with_capacity(in_d.tasks.len().min(1 << 16));
        // Each task resolves its description's texts again: a record of a few
        // bytes per task must not make gigabytes of them (a description with a
        // long chain of a long string, named by many tasks), so the tasks of one
        // interval's end resolve to at most MAX_RESOLVED bytes; the rest are lost.
        let mut budget = MAX_RESOLVED;
        for &(id, ms) in &in_d.tasks {
            let Some(record) = self.described.get(&id) else {
                lost += 1;
                continue;
            };
            let cost = self.resolved_len(record);
            if cost > budget {
                too_big += 1;
                continue;
            }
            budget -= cost;
            waits.push(self.in_d_wait(record, in_d.end_ns, ms));
        }
        (waits, lost, too_big)
    }

    /// About how many bytes a task described by `record` resolves to: its
    /// chain's texts (the stacks are shared, not copied).
    fn resolved_len(&self, record: &InDRecord) -> usize {
        let texts = |ids: &[u32]| ids.iter().map(|&id| self.text_len(id)).sum::<usize>();
        let chain: usize = record
            .chain
            .iter()
            .map(|link| {
                FRAME_COST
                    + match *link {
                        LinkRecord::Task(_, _, comm, _, function) => {
                            texts(&[comm]) + function.map_or(0, |f| texts(&[f]))
                        }
                        LinkRecord::Lock(name) => texts(&[name]),
                        LinkRecord::FileLock(kind) => texts(&[kind]),
                        LinkRecord::Mount(mountpoint, fstype, source) => texts(&[mountpoint, fstype, source]),
                        LinkRecord::FuseRequests(_, _, opcode, _, comm, _) => texts(&[opcode, comm]),
                        LinkRecord::FuseDaemon(_, comm, _, _) => texts(&[comm]),
                        LinkRecord::Rpc(program, _, procedure, ..) => texts(&[program, procedure]),
                        LinkRecord::NfsServer(address, version) => {
                            texts(&[address]) + version.map_or(0, |v| texts(&[v]))
                        }
                    }
            })
            .sum();
        FRAME_COST * 16 + chain + texts(&[record.wait.comm])
    }

    fn in_d_wait(&self, record: &InDRecord, end_ns: u64, ms: u64) -> Wait {
        let duration_ns = ms.saturating_mul(1_000_000);
        let mut wait = self.wait(&record.wait);
        wait.start = Some(from_unix_ns(end_ns.saturating_sub(duration_ns)));
        wait.duration_ns = duration_ns;
        wait.cgroup = record.cgroup.map(|id| self.string(id));
        if let Some(mount) = wait.on.mount.as_mut() {
            (mount.id, mount.namespace) = record.mount_id;
        }
        wait.source = match record.source {
            1 => Source::Proc,
            2 => Source::Iterator,
            _ => Source::Traced,
        };
        let age =
            |since_s: Option<u64>| since_s.map(|s| end_ns.saturating_sub(s.saturating_mul(1_000_000_000)));
        wait.chain = record
            .chain
            .iter()
            .map(|link| match *link {
                LinkRecord::Task(tid, pid, comm, state, function) => Link::Task {
                    tid,
                    pid,
                    comm: self.string(comm),
                    state,
                    function: function.map(|id| self.string(id)),
                },
                LinkRecord::Lock(name) => Link::Lock { name: self.string(name) },
                LinkRecord::FileLock(kind) => Link::FileLock { kind: self.string(kind) },
                LinkRecord::Mount(mountpoint, fstype, source) => Link::Mount {
                    mountpoint: self.string(mountpoint),
                    fstype: self.string(fstype),
                    source: self.string(source),
                },
                LinkRecord::FuseRequests(in_flight, oldest, opcode, oldest_tid, comm, read_by_daemon) => {
                    Link::FuseRequests {
                        in_flight,
                        oldest_ns: age(oldest),
                        oldest_opcode: self.string(opcode),
                        oldest_tid,
                        oldest_comm: self.string(comm),
                        read_by_daemon,
                    }
                }
                LinkRecord::FuseDaemon(pid, comm, state, waiting) => {
                    Link::FuseDaemon { pid, comm: self.string(comm), state, waiting }
                }
                LinkRecord::Rpc(
                    program,
                    version,
                    procedure,
                    xid,
                    began,
                    transmits,
                    timeouts,
                    since,
                    others,
                ) => Link::Rpc {
                    program: self.string(program),
                    version,
                    procedure: self.string(procedure),
                    xid,
                    age_ns: age(began),
                    transmits,
                    timeouts,
                    not_responding_ns: age(since),
                    others,
                },
                LinkRecord::NfsServer(address, nfs_version) => Link::NfsServer {
                    address: self.string(address),
                    nfs_version: nfs_version.map(|id| self.string(id)),
                },
            })
            .collect();
        let (dev, ino) = (
            wait.on.mount.as_ref().map_or((0, 0), |mount| mount.dev),
            wait.on.file.as_ref().and_then(|file| file.inode).unwrap_or(0),
        );
        wait.on.file_locks = record
            .file_locks
            .iter()
            .map(|&(kind, access, pid, start, end)| FileLock {
                id: 0,
                kind: self.string(kind),
                access: self.string(access),
                pid,
                dev,
                ino,
                range: (start, end),
                waiting: false,
            })
            .collect();
        wait
    }

    /// Takes in the definitions of an interval (starting at `first`, or for
    /// format 1 after the last ones read) and resolves it.
    pub fn interval(&mut self, first: Option<First>, interval: &Interval) -> IntervalData {
        self.define(first, &interval.strings, &interval.stacks);
        let rows = interval
            .rows
            .iter()
            .map(|row| {
                let mut totals = Totals {
                    count: row.count,
                    total_ns: row.total_ns,
                    max_ns: row.max_ns,
                    ..Totals::default()
                };
                for (slot, n) in totals.hist.iter_mut().zip(&row.hist) {
                    *slot = *n;
                }
                RowData {
                    pid: row.pid,
                    comm: self.string(row.comm),
                    stack: self.stack(row.stack),
                    mount: row.mount.map(|id| self.string(id)),
                    lock: row.lock.map(|id| self.string(id)),
                    totals,
                }
            })
            .collect();
        let waits = interval.waits.iter().map(|wait| self.wait(wait)).collect();
        let counters = interval.counters.iter().map(|&(name, n)| (self.string(name), n)).collect();
        IntervalData {
            start: from_unix_ns(interval.start_ns),
            end: from_unix_ns(interval.end_ns),
            rows,
            waits,
            counters,
            in_d: Vec::new(),
        }
    }

    fn wait(&self, record: &WaitRecord) -> Wait {
        let stack = self.stack(record.stack);
        Wait {
            start: record.start_ns.map(from_unix_ns),
            end: record.end_ns.map(from_unix_ns),
            duration_ns: record.duration_ns,
            tid: record.tid,
            pid: record.pid,
            comm: self.string(record.comm),
            cgroup_id: record.cgroup_id,
            // Not recorded: the cgroup id stands for it.
            cgroup: None,
            state: match record.state {
                1 => TaskState::Killable,
                2 => TaskState::Idle,
                _ => TaskState::Uninterruptible,
            },
            blocked_in: blocking_function(stack.iter().map(String::as_str)).map(str::to_owned),
            stack,
            user_stack: Stack::from([]),
            waker: record.waker.as_ref().map(|waker| WakerInfo {
                tid: waker.tid,
                pid: waker.pid,
                comm: self.string(waker.comm),
                interrupt: waker.interrupt,
                stack: self.stack(waker.stack),
            }),
            on: Attribution {
                syscall: record
                    .syscall
                    .and_then(|id| syscalls::by_name(&self.string(id)).map(|syscall| syscall.name)),
                mount: record.mount.as_ref().map(|mount| Mount {
                    id: 0,
                    parent_id: 0,
                    dev: mount.dev,
                    root: PathBuf::from("/"),
                    mount_point: PathBuf::from(self.string(mount.mount_point)),
                    fs_type: self.string(mount.fs_type),
                    source: self.string(mount.source),
                    super_options: String::new(),
                    namespace: 0,
                }),
                file: record
                    .file
                    .map(|(path, inode)| FileRef { path: path.map(|id| self.string(id)), inode }),
                file_locks: Vec::new(),
            },
            lock: record.lock.as_ref().map(|lock| LockInfo {
                kind: lock_kind(&self.string(lock.kind)),
                addr: lock.addr,
                inode: lock.inode,
                holder: lock.holder.as_ref().map(|holder| Holder {
                    tid: holder.tid,
                    pid: holder.pid,
                    comm: self.string(holder.comm),
                    reader_hint: holder.reader_hint,
                    // A state is recorded only for a holder looked at.
                    looked: holder.state.is_some(),
                    state: holder.state,
                    function: holder.function.map(|id| self.string(id)),
                }),
            }),
            chain: Vec::new(),
            source: Source::Traced,
        }
    }
}
