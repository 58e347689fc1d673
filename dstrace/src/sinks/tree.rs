//! The waits in words, as every text view shows them: the board's groups as the
//! rows of a tree (mount, then lock, then blocking function), a wait chain on one
//! line, where a wait is, how many tasks are in D. The plain text sink, the
//! full-screen view and the daemon's notes all say it the same way.
//!
//! Nothing here escapes: the sinks escape what they print ([`crate::escape`]).

use std::fmt::Write as _;

use dstrace_common::Counter;

use crate::{
    clock::human_duration,
    model::{
        board::BoardGroup,
        link::Link,
        rpc,
        wait::{Holder, LockInfo, Wait},
    },
};

/// One row of the groups drawn as a tree ([`rows`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeRow {
    /// 0: a mount; 1: a lock on it (or a function without a lock); 2: a function
    /// under a lock.
    pub depth: usize,
    /// The mount point, the lock's name or the function.
    pub label: String,
    /// The mount's type and source, the lock's holder, or the function's tasks.
    pub detail: String,
    /// Tasks in D now.
    pub in_d: u64,
    /// The age of the oldest of them, in nanoseconds.
    pub oldest_ns: u64,
    /// Blocked time in all (completed, and ongoing so far), in nanoseconds.
    pub blocked_ns: u64,
    /// Completed waits.
    pub done: u64,
    /// For a function row: the index of its group.
    pub group: Option<usize>,
}

/// Tasks named in a function row, at most.
const ROW_TASKS: usize = 4;

/// The groups (in [`Board::groups`] order) as the rows of a tree: a row per
/// mount and per lock, with the sums of the groups under it, then a row per group.
pub fn rows(groups: &[BoardGroup]) -> Vec<TreeRow> {
    let mut rows: Vec<TreeRow> = Vec::new();
    let mut mount_row = None;
    let mut lock_row = None;
    for (index, group) in groups.iter().enumerate() {
        let new_mount = index == 0 || groups[index - 1].key.mount != group.key.mount;
        if new_mount {
            let label = group.key.mount.clone().unwrap_or_else(|| "(no mount known)".to_owned());
            let detail =
                group.mount.as_ref().map(|m| format!("{} {}", m.fs_type, m.source)).unwrap_or_default();
            mount_row = Some(rows.len());
            rows.push(TreeRow::sum(0, label, detail));
        }
        if new_mount || groups[index - 1].key.lock != group.key.lock {
            lock_row = group.key.lock.as_ref().map(|name| {
                rows.push(TreeRow::sum(1, name.clone(), holder_text(group.lock.as_ref())));
                rows.len() - 1
            });
        }
        let mut row = TreeRow::sum(
            if lock_row.is_some() { 2 } else { 1 },
            group.key.function.clone(),
            tasks_text(group),
        );
        row.add(group);
        row.group = Some(index);
        for sum in [mount_row, lock_row].into_iter().flatten() {
            rows[sum].add(group);
        }
        rows.push(row);
    }
    rows
}

impl TreeRow {
    fn sum(depth: usize, label: String, detail: String) -> TreeRow {
        TreeRow { depth, label, detail, in_d: 0, oldest_ns: 0, blocked_ns: 0, done: 0, group: None }
    }

    fn add(&mut self, group: &BoardGroup) {
        self.in_d += group.tasks.len() as u64;
        self.oldest_ns = self.oldest_ns.max(group.oldest_ns());
        self.blocked_ns += group.blocked_ns();
        self.done += group.completed.count;
    }
}

/// `held by comm[tid] (S in function)`, or nothing when the holder is unknown.
pub fn holder_text(lock: Option<&LockInfo>) -> String {
    lock.and_then(|lock| lock.holder.as_ref())
        .map_or_else(String::new, |holder| format!("held by {}", holder_name(holder)))
}

/// A lock's holder for people: `stat[42] (S in request_wait_answer)`, as
/// [`holder_text`] says it.
pub fn holder_name(holder: &Holder) -> String {
    let mut text = format!("{}[{}]", holder.comm, holder.tid);
    if holder.reader_hint {
        text.push_str(" (a reader)");
    }
    match (holder.looked, holder.state, &holder.function) {
        // A completed wait's holder: what it does now says nothing of the wait.
        (false, _, _) => {}
        (true, Some(state), Some(function)) => text.push_str(&format!(" ({state} in {function})")),
        (true, Some(state), None) => text.push_str(&format!(" ({state})")),
        (true, None, _) => text.push_str(" (gone)"),
    }
    text
}

/// The tasks in D of a group: `df[12] stat[13] +3 more`; the processes seen when
/// none is in D now.
fn tasks_text(group: &BoardGroup) -> String {
    if group.tasks.is_empty() {
        let pids: Vec<String> = group.pids.iter().take(ROW_TASKS).map(|pid| format!("pid {pid}")).collect();
        return format!("done by {}", pids.join(" "));
    }
    let mut names: Vec<String> =
        group.tasks.iter().take(ROW_TASKS).map(|wait| format!("{}[{}]", wait.comm, wait.tid)).collect();
    if group.tasks.len() > ROW_TASKS {
        names.push(format!("+{} more", group.tasks.len() - ROW_TASKS));
    }
    names.join(" ")
}

/// The chain as one line: `stat[7] D in d_alloc_parallel -> i_rwsem of ... -> ...`.
pub fn chain_text(links: &[Link]) -> String {
    links
        .iter()
        .map(|link| match link {
            Link::Task { tid, comm, state, function, .. } => {
                let mut text = format!("{comm}[{tid}]");
                match (state, function) {
                    (Some(state), Some(function)) => text.push_str(&format!(" {state} in {function}")),
                    (Some(state), None) => text.push_str(&format!(" {state}")),
                    (None, _) => text.push_str(" (gone)"),
                }
                text
            }
            Link::Lock { name } => name.clone(),
            Link::FileLock { kind } => format!("{kind} file lock"),
            Link::Mount { mountpoint, fstype, source } => format!("{fstype} {mountpoint} ({source})"),
            Link::FuseRequests {
                in_flight,
                oldest_ns,
                oldest_opcode,
                oldest_tid,
                oldest_comm,
                read_by_daemon,
            } => {
                let read = match read_by_daemon {
                    Some(read) if *read > 0 => format!(" ({read} read by the daemon)"),
                    _ => String::new(),
                };
                match oldest_ns {
                    Some(age) => format!(
                        "{} unanswered{read}, the oldest for {} ({oldest_opcode} from \
                         {oldest_comm}[{oldest_tid}])",
                        fuse_requests(*in_flight),
                        human_duration(*age)
                    ),
                    None => format!(
                        "{} unanswered{read}, the first {oldest_opcode} from \
                         {oldest_comm}[{oldest_tid}]",
                        fuse_requests(*in_flight)
                    ),
                }
            }
            Link::FuseDaemon { pid, comm, state, waiting } => {
                let mut text = format!("FUSE daemon {comm}[{pid}]");
                match state {
                    Some('T') => text.push_str(" STOPPED"),
                    Some(state) => text.push_str(&format!(" {state}")),
                    None => text.push_str(" (gone)"),
                }
                if let Some(waiting) = waiting {
                    text.push_str(&format!(
                        ", {waiting} {} waiting",
                        if *waiting == 1 { "request" } else { "requests" }
                    ));
                }
                text
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
            } => {
                let mut text = rpc::call_name(program, *version, procedure);
                if let Some(xid) = xid {
                    text.push_str(&format!(" xid 0x{xid:08x}"));
                }
                if let Some(age) = age_ns {
                    text.push_str(&format!(" unanswered for {}", human_duration(*age)));
                }
                if *transmits > 1 {
                    text.push_str(&format!(", sent {transmits} times"));
                }
                match (timeouts, not_responding_ns) {
                    (0, _) => {}
                    (n, Some(since)) => text.push_str(&format!(
                        ", {n} major timeout{}: server NOT RESPONDING for {}",
                        if *n == 1 { "" } else { "s" },
                        human_duration(*since)
                    )),
                    (n, None) => text.push_str(&format!(", {n} major timeouts: server NOT RESPONDING")),
                }
                if *others > 0 {
                    text.push_str(&format!(" (and {others} more RPCs)"));
                }
                text
            }
            Link::NfsServer { address, nfs_version } => match nfs_version {
                Some(version) => format!("NFS server {address} (v{version})"),
                None => format!("NFS server {address}"),
            },
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// `1 FUSE request`, `3 FUSE requests`.
fn fuse_requests(n: u64) -> String {
    match n {
        1 => "1 FUSE request".to_owned(),
        n => format!("{n} FUSE requests"),
    }
}

/// `3 tasks in D, the oldest for 4.100s`, or `no task in D`.
pub fn in_d_text(waits: &[Wait]) -> String {
    let oldest = waits.iter().map(|wait| wait.duration_ns).max().unwrap_or(0);
    match waits.len() {
        0 => "no task in D".to_owned(),
        1 => format!("1 task in D, for {}", human_duration(oldest)),
        n => format!("{n} tasks in D, the oldest for {}", human_duration(oldest)),
    }
}

/// Where a wait is, for people: `fuse.sshfs /mnt/x: /mnt/x/file (statx)`, then
/// the lock it waits for and its holder, then the task's cgroup; `-` when nothing
/// is known.
pub fn on_text(wait: &Wait) -> String {
    let (on, lock) = (&wait.on, wait.lock.as_ref());
    let mut text = String::new();
    if let Some(mount) = &on.mount {
        let _ = write!(text, "{} {}", mount.fs_type, mount.mount_point.display());
    }
    if let Some(file) = &on.file {
        if !text.is_empty() {
            text.push_str(": ");
        }
        match (&file.path, file.inode) {
            (Some(path), _) => text.push_str(path),
            (None, Some(inode)) => {
                let _ = write!(text, "inode {inode}");
            }
            (None, None) => text.push('?'),
        }
    }
    if let Some(syscall) = on.syscall {
        if !text.is_empty() {
            text.push(' ');
        }
        let _ = write!(text, "({syscall})");
    }
    for held in &on.file_locks {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "file locked ({} {})", held.kind, held.access);
        if let Some(pid) = held.pid {
            let _ = write!(text, " by pid {pid}");
        }
    }
    if let Some(lock) = lock {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "waits for {}", lock.name());
        let holder = holder_text(Some(lock));
        if !holder.is_empty() {
            let _ = write!(text, " {holder}");
        }
    }
    if let Some(cgroup) = &wait.cgroup {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "cgroup {cgroup}");
    }
    if text.is_empty() {
        text.push('-');
    }
    text
}

/// `; drops: none`, or the drops by kind: the kernel side's drop counters that are
/// not zero, and records userspace could not decode.
pub fn drops_text(counters: &[(Counter, u64)], bad_records: u64) -> String {
    let drops: Vec<(Counter, u64)> =
        counters.iter().copied().filter(|&(counter, n)| counter.is_drop() && n > 0).collect();
    if drops.is_empty() && bad_records == 0 {
        return "; drops: none".to_owned();
    }
    let mut text = "; drops:".to_owned();
    for (counter, n) in drops {
        let _ = write!(text, " {}={n}", counter.name());
    }
    if bad_records > 0 {
        let _ = write!(text, " undecodable_records={bad_records}");
    }
    text
}

/// `text` broken at spaces into lines of at most `width` characters: the first
/// line indented by `first` spaces, the others by `rest`; a word longer than a
/// line is cut where the line ends. Nothing is left out: the lines hold every word.
pub fn wrap(text: &str, width: usize, first: usize, rest: usize) -> Vec<String> {
    let width = width.max(1);
    // A line holds at least one character after its indentation.
    let (first, rest) = (first.min(width - 1), rest.min(width - 1));
    let mut lines = Vec::new();
    let mut line = " ".repeat(first);
    let mut len = first;
    // Whether the line has no word yet.
    let mut bare = true;
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        if word.is_empty() && bare {
            continue;
        }
        if !bare {
            if len + 1 + word.len() > width {
                lines.push(std::mem::replace(&mut line, " ".repeat(rest)));
                len = rest;
            } else {
                line.push(' ');
                len += 1;
            }
        }
        while len + word.len() > width {
            let room = width - len;
            line.extend(word.drain(..room));
            lines.push(std::mem::replace(&mut line, " ".repeat(rest)));
            len = rest;
        }
        len += word.len();
        line.extend(word);
        bare = false;
    }
    if !bare || lines.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::board::{tests::wait, Board, SortBy};

    #[test]
    fn rows_sum_the_groups_under_them() {
        let mut board = Board::default();
        board.add_completed(&wait(1, Some("/a"), false, "f", false, 5_000));
        let ongoing = [
            wait(2, Some("/b"), true, "g", true, 9_000),
            wait(3, Some("/b"), true, "h", true, 4_000),
            wait(4, Some("/a"), false, "f", true, 50),
        ];
        let rows = rows(&board.groups(&ongoing, SortBy::InD));
        let shape: Vec<(usize, &str, u64, u64)> =
            rows.iter().map(|r| (r.depth, r.label.as_str(), r.in_d, r.done)).collect();
        assert_eq!(
            shape,
            [
                (0, "/b", 2, 0),
                (1, "mutex 0x10", 2, 0),
                (2, "g", 1, 0),
                (2, "h", 1, 0),
                (0, "/a", 1, 1),
                (1, "f", 1, 1)
            ]
        );
        assert_eq!((rows[0].oldest_ns, rows[0].blocked_ns), (9_000, 13_000));
        assert_eq!(rows[0].detail, "fuse.sshfs sshfs");
        assert_eq!(rows[2].detail, "x[2]");
        assert_eq!(rows.iter().filter_map(|r| r.group).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn chains_read_as_one_line() {
        let links = vec![
            Link::Task {
                tid: 7,
                pid: 7,
                comm: "touch".into(),
                state: Some('D'),
                function: Some("path_openat".into()),
            },
            Link::Lock { name: "i_rwsem of inode 1 (0:55)".into() },
            Link::Task { tid: 6, pid: 6, comm: "touch".into(), state: Some('S'), function: None },
            Link::Mount { mountpoint: "/mnt/x".into(), fstype: "fuse.sshfs".into(), source: "sshfs".into() },
            Link::FuseDaemon { pid: 5, comm: "sshfs".into(), state: Some('T'), waiting: Some(3) },
        ];
        assert_eq!(
            chain_text(&links),
            "touch[7] D in path_openat -> i_rwsem of inode 1 (0:55) -> touch[6] S -> fuse.sshfs /mnt/x (sshfs) \
             -> FUSE daemon sshfs[5] STOPPED, 3 requests waiting"
        );
        let requests = |oldest_ns, read_by_daemon| Link::FuseRequests {
            in_flight: 3,
            oldest_ns,
            oldest_opcode: "LOOKUP".into(),
            oldest_tid: 6,
            oldest_comm: "touch".into(),
            read_by_daemon,
        };
        assert_eq!(
            chain_text(&[requests(Some(4_000_000_000), Some(2))]),
            "3 FUSE requests unanswered (2 read by the daemon), the oldest for 4.000s (LOOKUP from touch[6])"
        );
        assert_eq!(
            chain_text(&[requests(None, Some(0))]),
            "3 FUSE requests unanswered, the first LOOKUP from touch[6]"
        );
        assert_eq!(
            chain_text(&[requests(None, None)]),
            "3 FUSE requests unanswered, the first LOOKUP from touch[6]"
        );
        let mut one = requests(None, None);
        if let Link::FuseRequests { in_flight, .. } = &mut one {
            *in_flight = 1;
        }
        assert_eq!(chain_text(&[one]), "1 FUSE request unanswered, the first LOOKUP from touch[6]");
        let daemon = |waiting| Link::FuseDaemon { pid: 5, comm: "sshfs".into(), state: Some('S'), waiting };
        assert_eq!(chain_text(&[daemon(Some(1))]), "FUSE daemon sshfs[5] S, 1 request waiting");
        assert_eq!(chain_text(&[daemon(Some(2))]), "FUSE daemon sshfs[5] S, 2 requests waiting");
    }

    #[test]
    fn wrapping_keeps_every_word_within_the_width() {
        let text = "stat[12] D in d_alloc_parallel -> stat[11] S in request_wait_answer";
        let lines = wrap(text, 30, 2, 6);
        assert_eq!(
            lines,
            [
                "  stat[12] D in",
                "      d_alloc_parallel ->",
                "      stat[11] S in",
                "      request_wait_answer"
            ]
        );
        assert!(lines.iter().all(|line| line.chars().count() <= 30));
        let words: Vec<&str> = lines.iter().flat_map(|line| line.split_whitespace()).collect();
        assert_eq!(words, text.split_whitespace().collect::<Vec<_>>(), "no word lost");
        // A word longer than a line is cut, not dropped; double spaces stay.
        assert_eq!(wrap("abcdefghij", 4, 0, 1), ["abcd", " efg", " hij"]);
        assert_eq!(wrap("a  b", 10, 0, 0), ["a  b"]);
        assert_eq!(wrap("", 10, 3, 0), ["   "]);
        assert_eq!(wrap("x y", 0, 5, 5), ["x", "y"], "no width still shows everything");
    }

    #[test]
    fn a_holder_is_gone_only_when_it_was_looked_for_and_not_found() {
        let holder = crate::model::wait::Holder {
            tid: 7,
            pid: 7,
            comm: "x".into(),
            reader_hint: false,
            looked: false,
            state: None,
            function: None,
        };
        let lock = |holder| LockInfo { kind: "mutex", addr: 1, inode: None, holder: Some(holder) };
        assert_eq!(holder_text(Some(&lock(holder.clone()))), "held by x[7]", "a completed wait's holder");
        let looked = crate::model::wait::Holder { looked: true, ..holder.clone() };
        assert_eq!(holder_text(Some(&lock(looked.clone()))), "held by x[7] (gone)");
        let there = crate::model::wait::Holder { state: Some('S'), ..looked };
        assert_eq!(holder_text(Some(&lock(there))), "held by x[7] (S)");
    }
}
