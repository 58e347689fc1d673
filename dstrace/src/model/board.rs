//! The incident board: waits grouped by mount, then by the kernel lock they wait
//! for, then by the kernel function they block in, with the tasks of each group.
//!
//! This is the shape of everything `dstrace run` shows a person (the full-screen
//! view, the periodic plain tables, the final summary) and of the `groups` JSON
//! records: "what is stuck, on what, since when" is one look down the tree. It is
//! built from the records userspace sees: completed waits of at least
//! `--min-duration`, kept as counters, and the waits going on now, given afresh
//! at each look so that their ages grow. "By mount" and "by lock" are sums of it;
//! drawn as a tree of rows, it is [`crate::sinks::tree`]'s.

use std::collections::{BTreeMap, HashMap};

use crate::{
    model::{
        aggregate::Totals,
        link::Link,
        wait::{LockInfo, Wait},
    },
    resolve::mounts::Mount,
};

/// Distinct processes kept per group, at most.
pub const MAX_PIDS: usize = 32;

/// Where a group of waits is: mount, lock, blocking function.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// The mount point, when the wait concerns a known mount.
    pub mount: Option<String>,
    /// The kernel lock's name ([`crate::model::wait::LockInfo::name`]), when it waits
    /// for one.
    pub lock: Option<String>,
    /// The blocking function (`?` when the stack was lost).
    pub function: String,
}

impl GroupKey {
    /// The group a wait belongs to.
    pub fn of(wait: &Wait) -> GroupKey {
        GroupKey {
            mount: wait.on.mount.as_ref().map(|mount| mount.mount_point.to_string_lossy().into_owned()),
            lock: wait.lock.as_ref().map(|lock| lock.name()),
            function: wait.blocked_in.clone().unwrap_or_else(|| "?".to_owned()),
        }
    }
}

/// What is known of a group beside its key, from its latest wait.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Labels {
    mount: Option<Mount>,
    lock: Option<LockInfo>,
}

impl Labels {
    fn of(wait: &Wait) -> Labels {
        Labels { mount: wait.on.mount.clone(), lock: wait.lock.clone() }
    }
}

/// The completed waits of one group.
#[derive(Clone, Debug, Default)]
struct Completed {
    totals: Totals,
    labels: Labels,
    pids: Vec<u32>,
}

/// Completed waits by group, kept for the whole run.
#[derive(Clone, Debug, Default)]
pub struct Board {
    completed: HashMap<GroupKey, Completed>,
}

/// One group as shown: its completed waits and the tasks in it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoardGroup {
    /// Mount, lock and function.
    pub key: GroupKey,
    /// The mount, when the waits concern one.
    pub mount: Option<Mount>,
    /// The kernel lock they wait for, with its holder when known (as the latest
    /// wait saw it).
    pub lock: Option<LockInfo>,
    /// The tasks in D now in this group, the oldest first.
    pub tasks: Vec<Wait>,
    /// Its completed waits.
    pub completed: Totals,
    /// Distinct processes seen in it, completed and ongoing (at most [`MAX_PIDS`]).
    pub pids: Vec<u32>,
}

impl BoardGroup {
    /// The age of its oldest task in D now, in nanoseconds (0 if none).
    pub fn oldest_ns(&self) -> u64 {
        self.tasks.first().map_or(0, |wait| wait.duration_ns)
    }

    /// Blocked time in all: completed waits, and the ongoing ones so far.
    pub fn blocked_ns(&self) -> u64 {
        self.completed.total_ns + self.tasks.iter().map(|wait| wait.duration_ns).sum::<u64>()
    }

    /// The wait chain of its oldest task, when it has more than the task itself.
    pub fn chain(&self) -> Option<&[Link]> {
        self.tasks.first().map(|wait| wait.chain.as_slice()).filter(|chain| chain.len() > 1)
    }
}

/// The order of groups (and of the mounts and locks above them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    /// The most tasks in D now first.
    #[default]
    InD,
    /// The oldest wait first.
    Oldest,
    /// The most blocked time first.
    Blocked,
}

impl SortBy {
    /// The next order, for a key that cycles through them.
    pub fn next(self) -> SortBy {
        match self {
            SortBy::InD => SortBy::Oldest,
            SortBy::Oldest => SortBy::Blocked,
            SortBy::Blocked => SortBy::InD,
        }
    }

    /// Its name, for a status line.
    pub fn name(self) -> &'static str {
        match self {
            SortBy::InD => "tasks in D",
            SortBy::Oldest => "oldest wait",
            SortBy::Blocked => "blocked time",
        }
    }

    /// The sort key of a set of groups (larger first): stuck first (any task in
    /// D now), whatever the order, so that a pile-up is never under finished
    /// waits; then the order's own key.
    fn rank(self, groups: &[&BoardGroup]) -> Rank {
        let in_d: u64 = groups.iter().map(|g| g.tasks.len() as u64).sum();
        let oldest = groups.iter().map(|g| g.oldest_ns()).max().unwrap_or(0);
        let blocked = groups.iter().map(|g| g.blocked_ns()).sum();
        let stuck = in_d > 0;
        match self {
            SortBy::InD => (stuck, in_d, oldest, blocked),
            SortBy::Oldest => (stuck, oldest, in_d, blocked),
            SortBy::Blocked => (stuck, blocked, in_d, oldest),
        }
    }
}

impl Board {
    /// Counts a completed wait.
    pub fn add_completed(&mut self, wait: &Wait) {
        let entry = self.completed.entry(GroupKey::of(wait)).or_default();
        entry.totals.record(wait.duration_ns);
        entry.labels = Labels::of(wait);
        add_pid(&mut entry.pids, wait.pid);
    }

    /// The groups with the tasks in D now (`ongoing`), as a tree in `sort` order:
    /// the groups of one mount together, within it those of one lock together.
    pub fn groups(&self, ongoing: &[Wait], sort: SortBy) -> Vec<BoardGroup> {
        let mut groups: BTreeMap<GroupKey, BoardGroup> = self
            .completed
            .iter()
            .map(|(key, completed)| {
                let group = BoardGroup {
                    key: key.clone(),
                    mount: completed.labels.mount.clone(),
                    lock: completed.labels.lock.clone(),
                    tasks: Vec::new(),
                    completed: completed.totals,
                    pids: completed.pids.clone(),
                };
                (key.clone(), group)
            })
            .collect();
        for wait in ongoing.iter().filter(|wait| wait.is_ongoing()) {
            let key = GroupKey::of(wait);
            let labels = Labels::of(wait);
            let group = groups.entry(key.clone()).or_insert_with(|| BoardGroup {
                key,
                mount: None,
                lock: None,
                tasks: Vec::new(),
                completed: Totals::default(),
                pids: Vec::new(),
            });
            // What is true now beats what was true of a completed wait.
            group.mount = labels.mount.or(group.mount.take());
            group.lock = labels.lock.or(group.lock.take());
            add_pid(&mut group.pids, wait.pid);
            group.tasks.push(wait.clone());
        }
        let mut groups: Vec<BoardGroup> = groups.into_values().collect();
        for group in &mut groups {
            group.tasks.sort_by(|a, b| b.duration_ns.cmp(&a.duration_ns).then(a.tid.cmp(&b.tid)));
        }
        sort_groups(&mut groups, sort);
        groups
    }
}

/// A sort key of groups ([`SortBy::rank`]).
type Rank = (bool, u64, u64, u64);

fn add_pid(pids: &mut Vec<u32>, pid: u32) {
    if !pids.contains(&pid) && pids.len() < MAX_PIDS {
        pids.push(pid);
    }
}

/// Sorts groups as a tree (as [`Board::groups`] gives them): mounts by the rank
/// of all their groups, locks within a mount by theirs, then the groups; ties by
/// name, so the order is stable. Mounts, locks and groups with a task in D come
/// before those without, in every order.
pub fn sort_groups(groups: &mut [BoardGroup], sort: SortBy) {
    let mut mount_rank: HashMap<Option<String>, Rank> = HashMap::new();
    let mut lock_rank: HashMap<(Option<String>, Option<String>), Rank> = HashMap::new();
    {
        let mut by_mount: HashMap<&Option<String>, Vec<&BoardGroup>> = HashMap::new();
        let mut by_lock: HashMap<(&Option<String>, &Option<String>), Vec<&BoardGroup>> = HashMap::new();
        for group in groups.iter() {
            by_mount.entry(&group.key.mount).or_default().push(group);
            by_lock.entry((&group.key.mount, &group.key.lock)).or_default().push(group);
        }
        for (mount, members) in by_mount {
            mount_rank.insert(mount.clone(), sort.rank(&members));
        }
        for ((mount, lock), members) in by_lock {
            lock_rank.insert((mount.clone(), lock.clone()), sort.rank(&members));
        }
    }
    let rank_of = |group: &BoardGroup| {
        let mount = mount_rank.get(&group.key.mount).copied().unwrap_or_default();
        let lock =
            lock_rank.get(&(group.key.mount.clone(), group.key.lock.clone())).copied().unwrap_or_default();
        (mount, lock, sort.rank(&[group]))
    };
    groups.sort_by(|a, b| {
        let (ra, rb) = (rank_of(a), rank_of(b));
        rb.0.cmp(&ra.0)
            .then_with(|| a.key.mount.cmp(&b.key.mount))
            .then_with(|| rb.1.cmp(&ra.1))
            .then_with(|| a.key.lock.cmp(&b.key.lock))
            .then_with(|| rb.2.cmp(&ra.2))
            .then_with(|| a.key.function.cmp(&b.key.function))
    });
}

/// Waits on one mount or one lock: a sum of board groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CauseGroup {
    /// The mount point, or the lock's name.
    pub key: String,
    /// For a mount: its type and source; for a lock: its holder (`comm[tid]`).
    pub detail: String,
    /// Completed waits.
    pub completed: Totals,
    /// Waits still going on.
    pub ongoing: u64,
    /// The age of the oldest one still going on, in nanoseconds.
    pub oldest_ns: u64,
    /// Distinct processes seen waiting (at most [`MAX_PIDS`] kept).
    pub pids: Vec<u32>,
}

/// The groups summed by mount, the most tasks in D now first, then the oldest,
/// then the most blocked time.
pub fn by_mount(groups: &[BoardGroup]) -> Vec<CauseGroup> {
    by_cause(groups, |group| {
        let mount = group.mount.as_ref()?;
        Some((group.key.mount.clone()?, format!("{} {}", mount.fs_type, mount.source)))
    })
}

/// The groups summed by kernel lock, in the same order.
pub fn by_lock(groups: &[BoardGroup]) -> Vec<CauseGroup> {
    by_cause(groups, |group| {
        let holder = group.lock.as_ref()?.holder.as_ref().map(|h| format!("{}[{}]", h.comm, h.tid));
        Some((group.key.lock.clone()?, holder.unwrap_or_default()))
    })
}

fn by_cause(groups: &[BoardGroup], key: impl Fn(&BoardGroup) -> Option<(String, String)>) -> Vec<CauseGroup> {
    let mut causes: HashMap<String, CauseGroup> = HashMap::new();
    for group in groups {
        let Some((key, detail)) = key(group) else { continue };
        let cause = causes.entry(key.clone()).or_insert_with(|| CauseGroup { key, ..CauseGroup::default() });
        if cause.detail.is_empty() {
            cause.detail = detail;
        }
        cause.completed.add(&group.completed);
        cause.ongoing += group.tasks.len() as u64;
        cause.oldest_ns = cause.oldest_ns.max(group.oldest_ns());
        for &pid in &group.pids {
            add_pid(&mut cause.pids, pid);
        }
    }
    let mut causes: Vec<CauseGroup> = causes.into_values().collect();
    causes.sort_by(|a, b| {
        (b.ongoing, b.oldest_ns, b.completed.total_ns)
            .cmp(&(a.ongoing, a.oldest_ns, a.completed.total_ns))
            .then_with(|| a.key.cmp(&b.key))
    });
    causes
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        model::wait::{Source, TaskState},
        resolve::attribution::Attribution,
    };

    /// A wait of `pid` on a FUSE mount at `mount`, waiting for a mutex or not (the
    /// tests of the board's drawing use it too).
    pub(crate) fn wait(
        pid: u32,
        mount: Option<&str>,
        lock: bool,
        function: &str,
        ongoing: bool,
        ns: u64,
    ) -> Wait {
        let mount = mount.and_then(|point| {
            crate::resolve::mounts::parse(&format!("92 22 0:55 / {point} rw - fuse.sshfs sshfs rw\n")).pop()
        });
        Wait {
            start: None,
            end: (!ongoing).then(std::time::SystemTime::now),
            duration_ns: ns,
            tid: pid,
            pid,
            comm: "x".into(),
            cgroup_id: 0,
            cgroup: None,
            state: TaskState::Uninterruptible,
            blocked_in: Some(function.into()),
            stack: [].into(),
            user_stack: [].into(),
            waker: None,
            on: Attribution { mount, ..Attribution::default() },
            lock: lock.then_some(LockInfo { kind: "mutex", addr: 0x10, inode: None, holder: None }),
            chain: Vec::new(),
            source: Source::Traced,
        }
    }

    #[test]
    fn groups_form_a_tree_by_mount_lock_function() {
        let mut board = Board::default();
        board.add_completed(&wait(1, Some("/a"), false, "f", false, 5_000));
        board.add_completed(&wait(1, Some("/a"), false, "f", false, 7_000));
        board.add_completed(&wait(9, None, false, "jbd2", false, 1_000_000));
        let ongoing = [
            wait(2, Some("/b"), true, "g", true, 9_000),
            wait(3, Some("/b"), true, "g", true, 4_000),
            wait(4, Some("/b"), false, "h", true, 100),
            wait(5, Some("/a"), false, "f", true, 50),
        ];
        let groups = board.groups(&ongoing, SortBy::InD);
        let keys: Vec<(Option<&str>, bool, &str)> = groups
            .iter()
            .map(|g| (g.key.mount.as_deref(), g.key.lock.is_some(), g.key.function.as_str()))
            .collect();
        // /b has 3 tasks in D, its lock 2 of them; /a one; no mount none.
        assert_eq!(
            keys,
            [
                (Some("/b"), true, "g"),
                (Some("/b"), false, "h"),
                (Some("/a"), false, "f"),
                (None, false, "jbd2")
            ]
        );
        assert_eq!(groups[0].tasks.iter().map(|w| w.tid).collect::<Vec<_>>(), [2, 3], "oldest first");
        assert_eq!(groups[0].oldest_ns(), 9_000);
        assert_eq!(groups[2].completed.count, 2);
        assert_eq!(groups[2].blocked_ns(), 12_050);
        assert_eq!(groups[2].pids, [1, 5]);
        assert_eq!(groups[2].mount.as_ref().map(|m| m.source.as_str()), Some("sshfs"));

        let by_blocked = board.groups(&ongoing, SortBy::Blocked);
        assert_eq!(
            by_blocked.iter().map(|g| g.key.function.as_str()).collect::<Vec<_>>(),
            ["g", "h", "f", "jbd2"],
            "stuck first: 1 ms blocked of finished waits comes after every task in D"
        );

        let mounts = by_mount(&groups);
        assert_eq!(
            mounts.iter().map(|m| (m.key.as_str(), m.ongoing)).collect::<Vec<_>>(),
            [("/b", 3), ("/a", 1)]
        );
        assert_eq!((mounts[1].completed.count, mounts[1].oldest_ns), (2, 50));
        let locks = by_lock(&groups);
        assert_eq!((locks.len(), locks[0].key.as_str(), locks[0].ongoing), (1, "mutex 0x10", 2));
    }

    #[test]
    fn ages_grow_with_each_look() {
        let board = Board::default();
        let first = board.groups(&[wait(2, Some("/b"), false, "g", true, 1_000)], SortBy::Oldest);
        let later = board.groups(&[wait(2, Some("/b"), false, "g", true, 3_000)], SortBy::Oldest);
        assert_eq!((first[0].oldest_ns(), later[0].oldest_ns()), (1_000, 3_000));
        assert!(
            board.groups(&[], SortBy::Oldest).is_empty(),
            "a wait that ended and was not counted leaves nothing"
        );
    }
}
