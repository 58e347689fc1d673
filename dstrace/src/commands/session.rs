//! The tracing session `run`, `record` and `daemon` share: the runtime, the
//! signals that end it, loading and attaching the programs, the ring buffer of
//! completed waits and its draining, the tasks in D now, and the settling of
//! privileges once attached. The commands differ only in what they do with the
//! waits and in their own inputs (keys, ticks, scrapes).
//!
//! Each command's loop is the same shape:
//!
//! ```text
//! let signals = Signals::catch()?;                    // first: a signal while loading counts
//! let mut session = Session::start(options, names, signals, duration)?;
//! notes(session.settle(needs));                       // after its own pre-drop work
//! loop {
//!     match session.next(command_inputs()).await? {   // stop, waits, or an input
//!         Wake::Stop => break,
//!         Wake::Waits => session.drain(|wait| ...)?,  // each completed wait, resolved
//!         Wake::Input(input) => ...,
//!     }
//! }
//! session.drain(|wait| ...)?;                          // what came before the stop
//! ```

use std::{
    collections::HashSet,
    future::Future,
    io,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use dstrace_common::CAUSE_HOLDER_KNOWN;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, Signal, SignalKind},
    time::Instant,
};

use crate::{
    clock::{monotonic_ns, ticks},
    kernel::{
        decode::decode_wait,
        iter::Peer,
        loader::{comm_key, Filters, Options, Tracer},
        object::own_tgid,
        privileges::{self, Needs},
    },
    model::{
        chain,
        seen::{Seen, SeenTask},
        wait::{ProcNow, Resolver, Wait},
    },
    resolve::{procfs, symbols::Kallsyms, Names},
};

/// The single-threaded runtime every command runs in (the capabilities are
/// dropped per thread: one thread keeps it simple).
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// The signals that end a session: SIGINT and SIGTERM; for `run` and `record`,
/// SIGHUP too.
///
/// SIGHUP is what a process gets when its terminal goes (an ssh session that
/// drops during the incident): `run` and `record` then end as on SIGTERM, with
/// what they owe written (the recording's last interval, the summary), rather
/// than die with it unwritten. They do not carry on unseen: a tracer nobody can
/// see or stop from its terminal would be a surprise. Started under `nohup`
/// (SIGHUP ignored), SIGHUP stays ignored and they go on. The daemon reads SIGHUP
/// as "read the configuration again" instead.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Option<Signal>,
}

impl Signals {
    /// Catches SIGINT and SIGTERM from now on: one that comes while loading then
    /// ends the session as soon as it is loaded, with what it owes written (a
    /// summary, a recording's last interval).
    pub fn catch() -> io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: None,
        })
    }

    /// As [`Signals::catch`], and SIGHUP ends the session too, unless it was
    /// ignored when dstrace started (`nohup`).
    pub fn catch_with_hangup() -> io::Result<Signals> {
        let mut signals = Signals::catch()?;
        if !hangup_ignored() {
            signals.hangup = Some(signal(SignalKind::hangup())?);
        }
        Ok(signals)
    }
}

/// Whether SIGHUP is ignored (`nohup`, or a parent that set it so before exec).
fn hangup_ignored() -> bool {
    // SAFETY: sigaction(2) with a null new action only reads the current one into
    // `old`, a zeroed `sigaction` (a valid value for every field) owned here.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The next SIGHUP, or never when it is not caught.
async fn hangup(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// What woke a session up ([`Session::next`]).
pub enum Wake<I> {
    /// SIGINT, SIGTERM, SIGHUP (`run`, `record`) or the end of `--duration`: the
    /// session is over.
    Stop,
    /// Completed waits are in the ring buffer: [`Session::drain`] them.
    Waits,
    /// One of the command's own inputs.
    Input(I),
}

/// A tracing session: the programs attached, their ring buffer watched.
pub struct Session {
    /// The loaded and attached programs.
    pub tracer: Tracer,
    /// What waits are named with.
    pub names: Names,
    /// What the kernel side records.
    pub options: Options,
    /// Records of the ring buffer that could not be decoded.
    pub bad_records: u64,
    /// Whether `/proc/kallsyms` hides the kernel's addresses (stacks are raw).
    pub hidden_symbols: bool,
    /// When tracing began.
    pub since: Instant,
    /// Why the last look at the tasks in D fell back on `/proc`, once said.
    look_failed: Option<String>,
    /// When each task in D since before tracing was first found so.
    first_seen: FirstSeen,
    /// Notes not yet shown.
    notes: Vec<String>,
    ring: AsyncFd<RingBuf<MapData>>,
    signals: Signals,
    deadline: Option<Instant>,
    /// When the aggregation map is looked at for ended processes
    /// ([`Session::keep_ended_processes`]).
    prune: Option<tokio::time::Interval>,
}

/// How often `run` and `record` look whether the aggregation map needs pruning:
/// process churn fills its 10,240 entries within seconds.
const PRUNE_CHECK: Duration = Duration::from_secs(1);

impl Session {
    /// Loads and attaches the programs for `options`, takes their ring buffer and
    /// reads the kernel's symbols; it ends after `duration`, if given, or at a
    /// signal. Runs inside [`runtime`] (the ring buffer is registered with it).
    pub fn start(
        options: Options,
        mut names: Names,
        signals: Signals,
        duration: Option<Duration>,
    ) -> Result<Session> {
        let symbols = Kallsyms::read_soon();
        let mut tracer = Tracer::load(&options)?;
        let events = tracer.take_events()?;
        let hidden_symbols = names.read_symbols(symbols)?;
        // SAFETY: the ring buffer owns its map fd, which stays open and the same for
        // as long as the `AsyncFd` owns the ring buffer.
        let ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
            .map_err(io::Error::from)?;
        let since = Instant::now();
        Ok(Session {
            tracer,
            names,
            options,
            bad_records: 0,
            hidden_symbols,
            since,
            look_failed: None,
            first_seen: FirstSeen::default(),
            notes: Vec::new(),
            ring,
            signals,
            deadline: duration.map(|d| since + d),
            prune: None,
        })
    }

    /// From now on, every [`PRUNE_CHECK`], moves the aggregation entries of ended
    /// processes out of the kernel's map once it is half full, their totals kept
    /// ([`Tracer::keep_ended_processes`]): for `run` and `record`, whose summary
    /// and recording count every wait since tracing began.
    pub fn keep_ended_processes(&mut self) {
        self.prune = Some(ticks(PRUNE_CHECK));
    }

    /// Drops the capabilities nothing later needs and gives back the start-up
    /// heap ([`privileges::settle_after_attach`]); call it once the command has
    /// done what needs them (created its files). Returns the notes to show.
    pub fn settle(&self, needs: Needs) -> Vec<String> {
        privileges::settle_after_attach(&self.tracer, needs)
    }

    /// What this kernel cannot record, one note each; the programs it refused
    /// only with `verbose`, one short line each (the `start` record lists them
    /// all, whole).
    pub fn skipped_notes(&self, verbose: bool) -> Vec<String> {
        let tracer = &self.tracer;
        let lacks = &tracer.skipped[..tracer.skipped.len().saturating_sub(tracer.refused.len())];
        let notes = lacks.iter().map(|what| format!("not recorded on this kernel: {what}"));
        let refused = tracer.refused.iter().filter(|_| verbose).cloned();
        notes.chain(refused).collect()
    }

    /// Waits until the session is over, completed waits arrive, or `input` (the
    /// command's own: keys, ticks, scrapes) is ready.
    pub async fn next<I>(&mut self, input: impl Future<Output = I>) -> io::Result<Wake<I>> {
        tokio::pin!(input);
        loop {
            tokio::select! {
                _ = self.signals.interrupt.recv() => return Ok(Wake::Stop),
                _ = self.signals.terminate.recv() => return Ok(Wake::Stop),
                () = hangup(&mut self.signals.hangup) => return Ok(Wake::Stop),
                _ = sleep_until(self.deadline) => return Ok(Wake::Stop),
                ready = self.ring.readable_mut() => {
                    // Cleared before the records are read: one that arrives while
                    // they are drained wakes the session again, and is never missed.
                    ready?.clear_ready();
                    return Ok(Wake::Waits);
                }
                input = &mut input => return Ok(Wake::Input(input)),
                () = next_tick(self.prune.as_mut()) => {
                    self.tracer.keep_ended_processes();
                }
            }
        }
    }

    /// Hands every completed wait waiting in the ring buffer to `each`, resolved
    /// (symbols, mount, file, lock); counts the records that cannot be decoded.
    ///
    /// An error from `each` stops the drain and is returned: only for an error
    /// that ends the session, since the kernel wakes a reader only once it has
    /// read everything (records left behind would hold back the next wake-ups).
    pub fn drain(&mut self, mut each: impl FnMut(&Wait) -> Result<()>) -> Result<()> {
        // Mounts made since the last look are named, not the mount below them.
        self.names.mounts.refresh_if_changed();
        let Session { tracer, names, ring, bad_records, .. } = self;
        let ring = ring.get_mut();
        while let Some(item) = ring.next() {
            let Ok(event) = decode_wait(&item) else {
                *bad_records += 1;
                continue;
            };
            let wait = Wait::completed(&event, &mut Resolver { names, stack_map: &tracer.stacks });
            each(&wait)?;
        }
        Ok(())
    }

    /// The tasks in D now for at least `min_duration_ns` ([`in_d_now`]). A look
    /// that fails (the task iterator refused) falls back on `/proc`, and says why
    /// once ([`Session::notes`]).
    pub fn in_d_now(&mut self, min_duration_ns: u64) -> Vec<Wait> {
        let (waits, failed) = in_d_now(
            Some(&mut self.tracer),
            &self.options,
            min_duration_ns,
            &mut self.names,
            &mut self.first_seen,
        );
        if let Some(why) = failed {
            if self.look_failed.as_deref() != Some(why.as_str()) {
                self.notes.push(format!("warning: the look at the tasks in D fell back on /proc: {why}"));
                self.look_failed = Some(why);
            }
        }
        waits
    }

    /// What the session has to say since the last call, one line each.
    pub fn notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}

/// The tasks in D now for at least `min_duration_ns`, the longest first: those the
/// kernel side tracks, then those in D since before tracing began, read from
/// kernel memory by the task iterator (or from `/proc` where it cannot run), with
/// their chains. Without a tracer (before loading), `/proc`'s only. Returns why
/// the iterator's look failed, if it did. A wait found before is at least as old
/// as the time since (`first_seen`), whatever its task clock says.
pub fn in_d_now(
    tracer: Option<&mut Tracer>,
    options: &Options,
    min_duration_ns: u64,
    names: &mut Names,
    first_seen: &mut FirstSeen,
) -> (Vec<Wait>, Option<String>) {
    // Mounts made since the last look are named, not the mount below them.
    names.mounts.refresh_if_changed();
    let now_ns = monotonic_ns();
    let Some(tracer) = tracer else {
        let context = chain::Context { now_ns, ..chain::Context::default() };
        let mut waits = waits_in_proc(options, names, &context, first_seen);
        first_seen.forget_the_others();
        waits.sort_by_key(|wait| std::cmp::Reverse(wait.duration_ns));
        return (waits, None);
    };
    let inflight = tracer.inflight();
    // The look: every task in D, and the holders of the traced waits' locks, so
    // that what each does now comes from kernel memory too.
    let holders: Vec<u32> = inflight
        .iter()
        .filter(|(_, wait)| wait.cause.flags & CAUSE_HOLDER_KNOWN != 0)
        .map(|(_, wait)| wait.cause.holder_tid)
        .collect();
    let (seen, failed) = match tracer.look(&holders) {
        Ok(look) => (Seen::of(look, &mut names.stacks), None),
        Err(err) => (Seen::default(), Some(format!("{err:#}"))),
    };
    let context = chain::Context { fuse: tracer.fuse_requests(), rpc: tracer.rpc_calls(), now_ns, seen };
    let mut resolver = Resolver { names, stack_map: &tracer.stacks };
    let mut waits: Vec<Wait> = inflight
        .iter()
        .map(|(tid, wait)| {
            let mut wait = Wait::ongoing(*tid, wait, now_ns, &mut resolver);
            // A lock the live path could not name (a lookup whose owner began
            // before tracing), as the look's kernel objects prove it.
            if wait.lock.is_none() {
                wait.lock = context.seen.task(*tid).and_then(|seen| context.seen.lock_of(seen));
            }
            // What the holder does now, from the look when it read it.
            if let Some(holder) = wait.lock.as_mut().and_then(|lock| lock.holder.as_mut()) {
                if context.seen.task(holder.tid).is_some() {
                    let peer =
                        Peer { tid: holder.tid, tgid: holder.pid, comm: holder.comm.clone(), state: 0 };
                    *holder = context.seen.holder(&peer, holder.reader_hint);
                }
            }
            wait.with_chain(&context)
        })
        .filter(|wait| wait.duration_ns >= min_duration_ns)
        .collect();
    let traced: HashSet<u32> = waits.iter().map(|wait| wait.tid).collect();
    if context.seen.looked {
        let now = ProcNow::read();
        let filters = &options.filters;
        let before: Vec<Wait> = context
            .seen
            .in_d(options.include_idle)
            .filter(|seen| !traced.contains(&seen.task.tid))
            .filter(|seen| seen_task_wanted(filters, seen))
            .map(|seen| {
                let wait = Wait::from_seen(seen, &context.seen, &now, names);
                first_seen.bound(wait, seen.task.last_ran_ns, now_ns, now.wall).with_chain(&context)
            })
            .collect();
        waits.extend(before);
    } else {
        waits.extend(
            waits_in_proc(options, names, &context, first_seen)
                .into_iter()
                .filter(|wait| !traced.contains(&wait.tid)),
        );
    }
    first_seen.forget_the_others();
    waits.sort_by_key(|wait| std::cmp::Reverse(wait.duration_ns));
    (waits, failed)
}

/// Whether a task the iterator read passes the filters, as the kernel side
/// applies them.
fn seen_task_wanted(filters: &Filters, seen: &SeenTask) -> bool {
    let task = &seen.task;
    proc_task_wanted(filters, task.tgid, task.tid, &task.comm)
        && (filters.cgroups.is_empty() || filters.cgroups.contains(&task.cgroup_id))
}

/// The tasks in D now according to `/proc`, as ongoing waits, filtered like the
/// kernel side filters (but for cgroups, which `/proc/PID/stat` does not name).
fn waits_in_proc(
    options: &Options,
    names: &mut Names,
    context: &chain::Context,
    first_seen: &mut FirstSeen,
) -> Vec<Wait> {
    let states: &[char] = if options.include_idle { &['D', 'I'] } else { &['D'] };
    let tasks = procfs::tasks_in_states(Path::new("/proc"), states).unwrap_or_default();
    // After the listing: each task listed last ran before.
    let now = ProcNow::read();
    let filters = &options.filters;
    let own = own_tgid();
    tasks
        .iter()
        .filter(|task| task.pid != own)
        .filter(|task| proc_task_wanted(filters, task.pid, task.tid, &task.comm))
        .map(|task| {
            let wait = Wait::from_proc(task, &now, names);
            first_seen.bound(wait, task.last_ran_ns, context.now_ns, now.wall).with_chain(context)
        })
        .collect()
}

/// When a session first found each task in D whose wait it did not see begin, by
/// thread and the task's last-run stamp (a task that ran since is in another
/// wait). Its wait is at least as old as the time since: a lower bound that holds
/// where the task clock gives none (a stamp the scheduler reset when it moved the
/// sleeping task to another CPU) or too little.
#[derive(Debug, Default)]
pub struct FirstSeen {
    at: std::collections::HashMap<u32, (Option<u64>, u64)>,
    /// The tasks found by the look under way, to forget the others after it.
    now: HashSet<u32>,
}

impl FirstSeen {
    /// `wait`, found now (`now_ns`, monotonic; `wall`, the look's wall clock) with
    /// last-run stamp `stamp`, its age raised to the time since it was first found
    /// so, if that is more.
    fn bound(&mut self, mut wait: Wait, stamp: Option<u64>, now_ns: u64, wall: SystemTime) -> Wait {
        let first = self.at.entry(wait.tid).or_insert((stamp, now_ns));
        // A stamp that changed to 0 is the scheduler's reset, not a run.
        if first.0 != stamp && stamp.is_some_and(|stamp| stamp != 0) {
            *first = (stamp, now_ns);
        }
        self.now.insert(wait.tid);
        let since = now_ns.saturating_sub(first.1);
        if since > wait.duration_ns {
            wait.duration_ns = since;
            wait.start = wall.checked_sub(Duration::from_nanos(since));
        }
        wait
    }

    /// Forgets the tasks the last look did not find in D.
    fn forget_the_others(&mut self) {
        let now = std::mem::take(&mut self.now);
        self.at.retain(|tid, _| now.contains(tid));
    }
}

/// Whether a task seen in `/proc` passes the pid, tid and comm filters.
fn proc_task_wanted(filters: &Filters, pid: u32, tid: u32, comm: &str) -> bool {
    (filters.tgids.is_empty() || filters.tgids.contains(&pid))
        && (filters.tids.is_empty() || filters.tids.contains(&tid))
        && (filters.comms.is_empty() || filters.comms.iter().any(|wanted| comm_key(wanted) == comm_key(comm)))
}

/// The next tick of an optional interval; never, without one.
pub async fn next_tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until the deadline, if there is one; forever, otherwise.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::wait::fake::ongoing;

    #[test]
    fn a_wait_found_before_is_at_least_as_old_as_the_time_since() {
        const S: u64 = 1_000_000_000;
        let mut first = FirstSeen::default();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        // First found with no age the task clock could give: 0, then 2 s later 2 s.
        assert_eq!(first.bound(ongoing(7, "", 0), Some(5), 10 * S, wall).duration_ns, 0);
        first.forget_the_others();
        assert_eq!(first.bound(ongoing(7, "", 0), Some(5), 12 * S, wall).duration_ns, 2 * S);
        // The task clock's age stands where it says more.
        let wait = first.bound(ongoing(7, "", 9 * S), Some(5), 12 * S, wall);
        assert_eq!(wait.duration_ns, 9 * S);
        // A stamp the scheduler reset to 0 is the same wait.
        assert_eq!(first.bound(ongoing(7, "", 0), Some(0), 13 * S, wall).duration_ns, 3 * S);
        first.forget_the_others();
        // A task that ran since (another stamp) is in another wait.
        assert_eq!(first.bound(ongoing(7, "", 0), Some(6), 14 * S, wall).duration_ns, 0);
        first.forget_the_others();
        // Not found by a look: forgotten, found again later from nothing.
        first.forget_the_others();
        let wait = first.bound(ongoing(7, "", 0), Some(6), 20 * S, wall);
        assert_eq!(wait.duration_ns, 0);
        assert!(wait.start.is_none());
    }

    #[test]
    fn proc_tasks_are_filtered_like_the_kernel_side() {
        let none = Filters::default();
        assert!(proc_task_wanted(&none, 1, 2, "a"));
        let pids = Filters { tgids: vec![1], ..Filters::default() };
        assert!(proc_task_wanted(&pids, 1, 2, "a"));
        assert!(!proc_task_wanted(&pids, 3, 3, "a"));
        let comms = Filters { comms: vec!["a-very-long-command-name".into()], ..Filters::default() };
        assert!(
            proc_task_wanted(&comms, 1, 1, "a-very-long-com"),
            "comm is cut to 15 bytes as the kernel does"
        );
        assert!(!proc_task_wanted(&comms, 1, 1, "other"));
    }
}
