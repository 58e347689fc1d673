//! The daemon's lines for the journal: a mount whose tasks stay in D.
//!
//! Why: under systemd the daemon's standard error is the journal, and an operator
//! who looks only at `journalctl -u dstrace` must see the incident there, not only
//! in the metrics or the recording. So when the oldest wait on a mount passes
//! `stuck-after` (30 s by default), one line says so, naming the mount, the tasks
//! in D on it and the oldest's age, what holds them (the holder of the lock they
//! wait for, or the FUSE daemon or NFS server at the end of the chain) and the
//! advice dstrace gives for them ([`crate::model::advice`]: the one definition of
//! it); while it stays, the line is said again at most every `stuck-repeat`
//! (10 min); once no task there has been in D that long, one line says it cleared.
//!
//! ```text
//! dstrace: stuck: mount /mnt/x (fuse.sshfs sshfs): 3 tasks in D, the oldest for 31.002s; holder: ...; advice: ...
//! dstrace: still stuck: mount /mnt/x (fuse.sshfs sshfs): 3 tasks in D, the oldest for 10m31s; ...
//! dstrace: cleared: mount /mnt/x (fuse.sshfs sshfs): no task in D there for 30.000s or more now (stuck for 12m04s at least)
//! ```
//!
//! Mounts are told apart by the label the metrics give them
//! ([`crate::sinks::metrics::mount_label`]: the mount point, or `none` for the
//! waits no mount is known for, which an incident has too: the `statfs` of `df`
//! on a dead NFS server), so a line and a series of `dstrace_uninterruptible_tasks`
//! speak of the same thing. The check is made at every look at the tasks in D
//! (scrapes, recording intervals) and at least every [`Watch::period`]. Each line
//! is one line, [`escape`]d as every text output is (a hostile mount or command
//! name cannot break it or reach a terminal), but for the advice, which escapes
//! its names and quotes its commands itself ([`crate::escape::shell_word`]), so
//! that they paste as they are.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{
    clock::{duration_ns, human_duration},
    escape::{controls, escape},
    model::{advice, link::Link, wait::Wait},
    resolve::file_locks::Queue,
    sinks::{
        metrics::mount_label,
        tree::{chain_text, holder_name, in_d_text},
    },
};

/// The shortest time between two checks of their own.
const MIN_PERIOD: Duration = Duration::from_millis(250);
/// The longest time between two checks of their own.
const MAX_PERIOD: Duration = Duration::from_secs(10);

/// The mounts whose tasks are stuck, and when each was last said to be.
#[derive(Debug)]
pub struct Watch {
    after: Duration,
    repeat: Duration,
    stuck: BTreeMap<String, Stuck>,
}

/// A mount said to be stuck.
#[derive(Debug)]
struct Stuck {
    /// The mount, as its lines name it.
    place: String,
    /// When its oldest wait began, as far as known (the check's time less its
    /// age: a lower bound for a task in D since before the daemon started).
    began: Instant,
    /// When its last line was written.
    said: Instant,
}

impl Watch {
    /// Lines when a mount's oldest wait passes `after`, again every `repeat`.
    pub fn new(after: Duration, repeat: Duration) -> Watch {
        Watch { after, repeat, stuck: BTreeMap::new() }
    }

    /// New settings (SIGHUP): the mounts said to be stuck stay so.
    pub fn set(&mut self, after: Duration, repeat: Duration) {
        self.after = after;
        self.repeat = repeat;
    }

    /// How often the daemon checks, besides its scrapes and intervals: a third
    /// of `after` (a line comes at most a third late), from 250 ms to 10 s.
    pub fn period(&self) -> Duration {
        (self.after / 3).clamp(MIN_PERIOD, MAX_PERIOD)
    }

    /// The lines to write for the tasks in D now (`in_d`, ongoing waits), looked
    /// at `now`; `queues` gives the file lock queues, read only when a line is
    /// written (their holders are in the advice).
    pub fn check(&mut self, in_d: &[Wait], now: Instant, queues: impl FnOnce() -> Vec<Queue>) -> Vec<String> {
        let mut by_mount: BTreeMap<String, Vec<&Wait>> = BTreeMap::new();
        for wait in in_d.iter().filter(|wait| wait.is_ongoing()) {
            by_mount.entry(mount_label(wait)).or_default().push(wait);
        }
        let after_ns = duration_ns(self.after);
        by_mount.retain(|_, waits| waits.iter().any(|wait| wait.duration_ns >= after_ns));

        let mut lines = Vec::new();
        let mut queues = Some(queues);
        let mut all_queues: Option<Vec<Queue>> = None;
        for (label, waits) in &by_mount {
            let heading = match self.stuck.get_mut(label) {
                None => "stuck",
                Some(stuck) if now.saturating_duration_since(stuck.said) >= self.repeat => "still stuck",
                Some(_) => continue,
            };
            let all = all_queues.get_or_insert_with(|| queues.take().map_or_else(Vec::new, |read| read()));
            let place = place(waits);
            let (text, advice) = stuck_text(waits, all);
            lines.push(format!(
                "{}; advice: {}",
                escape(&format!("{heading}: {place}: {text}")),
                controls(&advice)
            ));
            let oldest = waits.iter().map(|wait| wait.duration_ns).max().unwrap_or(0);
            let began = now.checked_sub(Duration::from_nanos(oldest)).unwrap_or(now);
            let stuck = self.stuck.entry(label.clone()).or_insert(Stuck { place, began, said: now });
            stuck.said = now;
        }
        let cleared: Vec<String> =
            self.stuck.keys().filter(|label| !by_mount.contains_key(*label)).cloned().collect();
        for label in cleared {
            let Some(stuck) = self.stuck.remove(&label) else { continue };
            lines.push(escape(&format!(
                "cleared: {}: no task in D there for {} or more now (stuck for {} at least)",
                stuck.place,
                human_duration(after_ns),
                human_duration(duration_ns(now.saturating_duration_since(stuck.began)))
            )));
        }
        lines
    }
}

/// The mount as the lines name it: `mount /mnt/x (fuse.sshfs sshfs)`, or `no
/// mount known`.
fn place(waits: &[&Wait]) -> String {
    match waits.iter().find_map(|wait| wait.on.mount.as_ref()) {
        Some(mount) => {
            format!("mount {} ({} {})", mount.mount_point.to_string_lossy(), mount.fs_type, mount.source)
        }
        None => "no mount known".to_owned(),
    }
}

/// The tasks in D and the holder of one mount's waits (the oldest first), and
/// their advice (its names escaped and its commands quoted already).
fn stuck_text(waits: &[&Wait], all_queues: &[Queue]) -> (String, String) {
    let mut waits: Vec<Wait> = waits.iter().map(|&wait| wait.clone()).collect();
    waits.sort_by_key(|wait| std::cmp::Reverse(wait.duration_ns));
    // The file lock queues of this mount's device, or that its tasks wait in.
    let devs: Vec<(u32, u32)> = waits.iter().filter_map(|wait| Some(wait.on.mount.as_ref()?.dev)).collect();
    let pids: Vec<u32> = waits.iter().map(|wait| wait.pid).collect();
    let queues: Vec<Queue> = all_queues
        .iter()
        .filter(|queue| {
            devs.contains(&queue.held.dev)
                || queue.waiters.iter().any(|waiter| waiter.pid.is_some_and(|pid| pids.contains(&pid)))
        })
        .cloned()
        .collect();
    let advice = advice::advise_with(&waits, &queues);
    let advice =
        if advice.is_empty() { "none (no pattern dstrace knows)".to_owned() } else { advice.join(" | ") };
    (format!("{}; holder: {}", in_d_text(&waits), holder(&waits)), advice)
}

/// What holds the tasks: the holder of the lock the oldest wait naming one
/// waits for (`stat[42] (S in request_wait_answer) holds lookup of a name in
/// dentry 0x...`), else the FUSE daemon or NFS server its chain ends at, else
/// `unknown`.
fn holder(waits: &[Wait]) -> String {
    let held = waits
        .iter()
        .filter_map(|wait| wait.lock.as_ref())
        .find_map(|lock| Some((lock, lock.holder.as_ref()?)));
    if let Some((lock, holder)) = held {
        return format!("{} holds {}", holder_name(holder), lock.name());
    }
    let end = waits
        .iter()
        .flat_map(|wait| wait.chain.iter())
        .find(|link| matches!(link, Link::FuseDaemon { .. } | Link::NfsServer { .. }));
    match end {
        Some(link) => chain_text(std::slice::from_ref(link)),
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::wait::{fake, Holder, LockInfo};

    const FUSE: &str = "92 22 0:55 / /mnt/x rw - fuse.sshfs sshfs rw\n";
    const HOSTILE: &str = "93 22 0:56 / /mnt/a\\012b\\040c rw - fuse.x x\x1b[1m rw\n";

    /// A task in D in `d_alloc_parallel` whose chain ends at a stopped FUSE daemon.
    fn wait(pid: u32, mountinfo: &str, age: Duration) -> Wait {
        let mut wait = fake::ongoing(pid, mountinfo, duration_ns(age));
        wait.comm = "stat".into();
        wait.blocked_in = Some("d_alloc_parallel".into());
        wait.chain =
            vec![Link::FuseDaemon { pid: 77, comm: "sshfs".into(), state: Some('T'), waiting: None }];
        wait
    }

    fn pileup(age: Duration) -> Vec<Wait> {
        (1..=3).map(|pid| wait(pid, FUSE, age + Duration::from_millis(u64::from(pid)))).collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Once when it passes the threshold, again only after the repeat, once when
    /// it clears.
    #[test]
    fn once_per_threshold_then_every_repeat_then_cleared() {
        let mut watch = Watch::new(secs(30), secs(600));
        let t0 = Instant::now();
        let none = Vec::new;
        // Young waits: nothing.
        assert!(watch.check(&pileup(secs(29)), t0, none).is_empty());
        let lines = watch.check(&pileup(secs(30)), t0 + secs(1), none);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "stuck: mount /mnt/x (fuse.sshfs sshfs): 3 tasks in D, the oldest for 30.003s; "
            ),
            "{lines:?}"
        );
        assert!(lines[0].contains("; holder: FUSE daemon sshfs[77] STOPPED; "), "{lines:?}");
        assert!(
            lines[0].contains("; advice: 3 tasks wait on the FUSE mount /mnt/x (sshfs) for up to 30.003s: its daemon sshfs[77] is stopped, `kill -CONT 77` resumes it; `umount -l /mnt/x` detaches"),
            "{lines:?}"
        );
        // Checked again and again: said once.
        for s in [2, 10, 300, 600] {
            assert!(watch.check(&pileup(secs(30 + s)), t0 + secs(s), none).is_empty(), "at {s} s");
        }
        // Ten minutes after the line: said again.
        let lines = watch.check(&pileup(secs(631)), t0 + secs(601), none);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with(
            "still stuck: mount /mnt/x (fuse.sshfs sshfs): 3 tasks in D, the oldest for 10m31s"
        ));
        assert!(watch.check(&pileup(secs(640)), t0 + secs(610), none).is_empty());
        // Gone: one line, then nothing.
        let lines = watch.check(&[], t0 + secs(620), none);
        assert_eq!(
            lines,
            ["cleared: mount /mnt/x (fuse.sshfs sshfs): no task in D there for 30.000s or more now (stuck for 10m49s at least)"]
        );
        assert!(watch.check(&[], t0 + secs(621), none).is_empty());
        // Tasks still in D there, but none for 30 s: cleared too; stuck again later.
        assert_eq!(watch.check(&pileup(secs(40)), t0 + secs(700), none).len(), 1);
        assert!(watch.check(&pileup(secs(5)), t0 + secs(701), none)[0].starts_with("cleared: "));
        assert!(watch.check(&pileup(secs(31)), t0 + secs(702), none)[0].starts_with("stuck: "));
    }

    /// Each mount on its own; the waits with no mount known are one more.
    #[test]
    fn mounts_are_told_apart_by_their_metrics_label() {
        let mut watch = Watch::new(secs(30), secs(600));
        let t0 = Instant::now();
        let mut waits = pileup(secs(31));
        waits.push(wait(9, "", secs(45)));
        waits[3].chain.clear();
        waits.push(wait(10, HOSTILE, secs(1)));
        let lines = watch.check(&waits, t0, Vec::new);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("stuck: mount /mnt/x "), "{lines:?}");
        assert!(
            lines[1].starts_with(
                "stuck: no mount known: 1 task in D, for 45.000s; holder: unknown; advice: none"
            ),
            "{lines:?}"
        );
        let lines = watch.check(&waits[3..], t0 + secs(1), Vec::new);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("cleared: mount /mnt/x "), "{lines:?}");
    }

    /// A hostile mount or command name stays on one line, escaped; the command
    /// to paste is the advice's, quoted for the shell.
    #[test]
    fn hostile_names_stay_on_one_line() {
        let mut watch = Watch::new(secs(30), secs(600));
        let mut waits = vec![wait(1, HOSTILE, secs(31))];
        waits[0].comm = "x\n\x1b]0;owned\x07".into();
        waits[0].lock = Some(LockInfo {
            kind: "dentry-lookup",
            addr: 0x1234,
            inode: None,
            holder: Some(Holder {
                tid: 42,
                pid: 42,
                comm: "evil\ncomm".into(),
                reader_hint: false,
                looked: true,
                state: Some('S'),
                function: Some("request_wait_answer".into()),
            }),
        });
        let lines = watch.check(&waits, Instant::now(), Vec::new);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with(r"stuck: mount /mnt/a\x0ab c (fuse.x x\x1b[1m): 1 task in D"), "{line:?}");
        assert!(
            line.contains(r"; holder: evil\x0acomm[42] (S in request_wait_answer) holds lookup of a name in dentry 0x1234; "),
            "{line:?}"
        );
        // The mount point quoted for the shell as it is: its newline as bash
        // reads it back, not escaped once more.
        assert!(line.contains(r"`umount -l $'/mnt/a\x0ab c'`"), "{line:?}");
    }

    #[test]
    fn the_period_is_a_third_of_the_threshold_within_bounds() {
        assert_eq!(Watch::new(secs(30), secs(600)).period(), secs(10));
        assert_eq!(Watch::new(secs(3), secs(600)).period(), secs(1));
        assert_eq!(Watch::new(Duration::from_millis(300), secs(1)).period(), MIN_PERIOD);
        assert_eq!(Watch::new(secs(3600), secs(1)).period(), MAX_PERIOD);
    }
}
