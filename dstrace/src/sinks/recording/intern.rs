//! Strings and stacks numbered per session: the writer's [`Interner`] defines each
//! the first time an interval uses it, the reader's [`Table`] takes the
//! definitions in as it reads, so a symbol is written once per file.

use std::{collections::HashMap, path::PathBuf};

use crate::{
    kernel::syscalls,
    model::{
        aggregate::Totals,
        wait::{lock_kind, Holder, LockInfo, Source, TaskState, Wait, WakerInfo},
    },
    resolve::{
        attribution::{Attribution, FileRef},
        mounts::Mount,
        symbols::{blocking_function, Stack},
    },
    sinks::recording::schema::{
        from_unix_ns, unix_ns, HolderRecord, Interval, IntervalData, LockRecord, MountRecord, Row, RowData,
        WaitRecord, WakerRecord,
    },
};

/// Strings and stacks of a session, as the writer numbers them.
#[derive(Default)]
pub struct Interner {
    strings: HashMap<String, u32>,
    stacks: HashMap<Vec<u32>, u32>,
    new_strings: Vec<String>,
    new_stacks: Vec<Vec<u32>>,
}

impl Interner {
    /// The id of a string, defining it if new.
    pub fn string(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.strings.get(text) {
            return id;
        }
        let id = self.strings.len() as u32;
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
        let id = self.stacks.len() as u32;
        self.stacks.insert(ids.clone(), id);
        self.new_stacks.push(ids);
        Some(id)
    }

    /// Encodes an interval: what it refers to is defined in it or before it.
    pub fn interval(&mut self, data: &IntervalData) -> Interval {
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
        Interval {
            start_ns: unix_ns(data.start),
            end_ns: unix_ns(data.end),
            strings: std::mem::take(&mut self.new_strings),
            stacks: std::mem::take(&mut self.new_stacks),
            rows,
            waits,
            counters,
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

/// Strings and stacks of a session, as the reader has them so far.
#[derive(Default)]
pub struct Table {
    strings: Vec<String>,
    stacks: Vec<Stack>,
}

impl Table {
    fn string(&self, id: u32) -> String {
        self.strings.get(id as usize).cloned().unwrap_or_else(|| format!("<lost string {id}>"))
    }

    fn stack(&self, id: Option<u32>) -> Stack {
        match id {
            None => Stack::from([]),
            Some(id) => self
                .stacks
                .get(id as usize)
                .cloned()
                .unwrap_or_else(|| Stack::from([format!("<lost stack {id}>")])),
        }
    }

    /// Takes in the definitions of an interval and resolves it.
    pub fn interval(&mut self, interval: &Interval) -> IntervalData {
        self.strings.extend(interval.strings.iter().cloned());
        for ids in &interval.stacks {
            let stack: Stack = ids.iter().map(|&id| self.string(id)).collect();
            self.stacks.push(stack);
        }
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
