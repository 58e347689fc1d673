//! Kernel symbols, and the choice of the function a task blocked in.
//!
//! A stack taken when a task goes to sleep starts with the scheduler and the wait
//! or lock primitive it slept in (`schedule`, `io_schedule`, `rwsem_down_write_slowpath`,
//! `folio_wait_bit_common`, ...). What a person wants is the first frame below those:
//! the kernel function that decided to wait. [`WAIT_PRIMITIVES`] is the one list of
//! what counts as a primitive: the blocking function shown and grouped by everywhere,
//! and the leaf of every profile `dstrace report` writes ([`from_blocking_function`]),
//! both come from it.

use std::{collections::HashMap, rc::Rc};

use aya::maps::{MapData, StackTraceMap};

use anyhow::{Context as _, Result};

/// Name patterns of the scheduler, wait and lock primitives: a frame matching one is
/// never reported as the blocking function.
///
/// `Prefix` covers families (`schedule_timeout`, `schedule_preempt_disabled`, ...)
/// and compiler clones (`__mutex_lock.constprop.0`); `Contains` covers names that
/// put the family in the middle (`wait_for_completion_killable_timeout`).
pub const WAIT_PRIMITIVES: &[Pattern] = &[
    // The scheduler.
    Pattern::Prefix("__schedule"),
    Pattern::Prefix("schedule"),
    Pattern::Prefix("io_schedule"),
    Pattern::Prefix("preempt_schedule"),
    Pattern::Prefix("msleep"),
    Pattern::Prefix("usleep_range"),
    // Completions and generic waits.
    Pattern::Contains("wait_for_completion"),
    Pattern::Prefix("__wait_for_common"),
    Pattern::Prefix("wait_for_common"),
    Pattern::Prefix("do_wait_for_common"),
    Pattern::Exact("wait_woken"),
    Pattern::Prefix("__wait_rcu_gp"),
    Pattern::Prefix("wait_rcu_gp"),
    // Sleeping locks: rwsems, mutexes, rt-mutexes, semaphores, percpu rwsems.
    Pattern::Prefix("rwsem_down_"),
    Pattern::Prefix("down_read"),
    Pattern::Prefix("down_write"),
    Pattern::Prefix("__down"),
    Pattern::Exact("down"),
    Pattern::Prefix("down_killable"),
    Pattern::Prefix("down_interruptible"),
    Pattern::Prefix("down_timeout"),
    Pattern::Prefix("mutex_lock"),
    Pattern::Prefix("__mutex_lock"),
    Pattern::Prefix("rt_mutex"),
    Pattern::Prefix("__rt_mutex"),
    Pattern::Prefix("rwbase_"),
    Pattern::Prefix("percpu_rwsem_wait"),
    Pattern::Prefix("__percpu_down_read"),
    Pattern::Prefix("percpu_down_"),
    // Bit waits, page and folio locks, buffer heads.
    Pattern::Prefix("__wait_on_bit"),
    Pattern::Prefix("out_of_line_wait_on_bit"),
    Pattern::Prefix("wait_on_bit"),
    Pattern::Prefix("bit_wait"),
    Pattern::Prefix("folio_wait"),
    Pattern::Prefix("__folio_lock"),
    Pattern::Prefix("folio_lock"),
    Pattern::Prefix("wait_on_page"),
    Pattern::Prefix("__lock_page"),
    Pattern::Prefix("lock_page"),
    Pattern::Prefix("__wait_on_buffer"),
    Pattern::Prefix("wait_on_buffer"),
    Pattern::Prefix("__lock_buffer"),
];

/// The tracing machinery a stack taken in the `sched_switch` hook starts with (the
/// BPF program itself, the trampoline or `bpf_trace_run*`): not part of what the
/// task was doing, so left out of every stack shown: the run of these that starts
/// in the first [`PROGRAM_FRAMES_MAX`] frames, and the frames above it. Those are
/// the program's own (one per BPF function called: two on 5.10), which need not be
/// named: the symbols are read while the programs load ([`Kallsyms::read_soon`]),
/// before the kernel lists them, and the kernel's `bpf_trace_run*` is always right
/// below them.
pub const TRACING_FRAMES: &[Pattern] = &[
    Pattern::Prefix("bpf_prog_"),
    Pattern::Prefix("bpf_trampoline_"),
    Pattern::Prefix("bpf_trace_run"),
    Pattern::Prefix("__bpf_trace_"),
    Pattern::Prefix("__traceiter_"),
];

/// How many frames of a BPF program's own may stand above the kernel's tracing
/// frames ([`TRACING_FRAMES`]) at the top of a stack its hook took.
pub const PROGRAM_FRAMES_MAX: usize = 4;

/// Frames that only run in interrupt context (hard or soft): a wake-up with one of
/// them on the waker's stack came from an interrupt.
pub const INTERRUPT_FRAMES: &[Pattern] = &[
    Pattern::Prefix("asm_common_interrupt"),
    Pattern::Prefix("asm_sysvec_"),
    Pattern::Prefix("sysvec_"),
    Pattern::Prefix("common_interrupt"),
    Pattern::Prefix("irq_exit"),
    Pattern::Prefix("__irq_exit"),
    Pattern::Prefix("handle_softirqs"),
    Pattern::Prefix("__do_softirq"),
    Pattern::Prefix("do_softirq"),
    Pattern::Prefix("handle_irq_event"),
    Pattern::Prefix("__handle_irq_event"),
    Pattern::Prefix("el1_interrupt"),
    Pattern::Prefix("el0_interrupt"),
];

/// A pattern on a symbol name (without its `.constprop.0`-style suffix).
#[derive(Clone, Copy, Debug)]
pub enum Pattern {
    /// The whole name.
    Exact(&'static str),
    /// The start of the name.
    Prefix(&'static str),
    /// Anywhere in the name.
    Contains(&'static str),
}

impl Pattern {
    fn matches(self, name: &str) -> bool {
        match self {
            Pattern::Exact(text) => name == text,
            Pattern::Prefix(text) => name.starts_with(text),
            Pattern::Contains(text) => name.contains(text),
        }
    }
}

/// Whether a frame is a scheduler, wait or lock primitive.
pub fn is_wait_primitive(symbol: &str) -> bool {
    matches_any(WAIT_PRIMITIVES, symbol)
}

/// Whether a frame belongs to the tracing machinery ([`TRACING_FRAMES`]).
pub fn is_tracing_frame(symbol: &str) -> bool {
    matches_any(TRACING_FRAMES, symbol)
}

/// Whether a frame runs only in interrupt context ([`INTERRUPT_FRAMES`]).
pub fn is_interrupt_frame(symbol: &str) -> bool {
    matches_any(INTERRUPT_FRAMES, symbol)
}

fn matches_any(patterns: &[Pattern], symbol: &str) -> bool {
    let base = symbol.split_once('.').map_or(symbol, |(base, _)| base);
    patterns.iter().any(|pattern| pattern.matches(base))
}

/// The blocking function of a stack (innermost frame first): the first frame that
/// is not a primitive, or `None` if every frame is one.
pub fn blocking_function<'a>(frames: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    frames.into_iter().find(|frame| !is_wait_primitive(frame))
}

/// A stack (innermost frame first) from its blocking function on: the scheduler and
/// primitive frames below [`blocking_function`] cut, so that a profile's leaf is the
/// function that decided to wait. A stack of primitives only is kept whole: there is
/// nothing else to show.
pub fn from_blocking_function<S: AsRef<str>>(stack: &[S]) -> &[S] {
    match stack.iter().position(|frame| !is_wait_primitive(frame.as_ref())) {
        Some(first) => &stack[first..],
        None => stack,
    }
}

/// The kernel's text symbols, from `/proc/kallsyms`, sorted by address.
pub struct Kallsyms {
    /// Start addresses, sorted.
    addrs: Vec<u64>,
    /// `(start, end)` of each name in `names`, parallel to `addrs`.
    spans: Vec<(u32, u32)>,
    /// All names, one after the other: one allocation instead of 100,000.
    names: String,
}

impl Kallsyms {
    /// Reads `/proc/kallsyms`.
    pub fn from_proc() -> Result<Kallsyms> {
        let text = std::fs::read_to_string("/proc/kallsyms").context("cannot read /proc/kallsyms")?;
        Ok(Kallsyms::parse(&text))
    }

    /// Starts reading `/proc/kallsyms` on a thread of its own: the kernel prints
    /// 100,000 lines or more, a sixth of the time to start, which can pass while
    /// the programs load. Where no thread can be started, it is read when asked.
    pub fn read_soon() -> PendingKallsyms {
        PendingKallsyms(std::thread::Builder::new().name("kallsyms".into()).spawn(Kallsyms::from_proc).ok())
    }

    /// Parses the text of `/proc/kallsyms`, keeping text symbols (`t`, `T`, `w`, `W`).
    pub fn parse(text: &str) -> Kallsyms {
        let mut entries: Vec<(u64, &str)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_ascii_whitespace();
                let addr = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                matches!(kind, "t" | "T" | "w" | "W").then_some((addr, name))
            })
            .collect();
        entries.sort_by_key(|&(addr, _)| addr);
        let mut kallsyms = Kallsyms {
            addrs: Vec::with_capacity(entries.len()),
            spans: Vec::with_capacity(entries.len()),
            names: String::with_capacity(entries.iter().map(|(_, name)| name.len()).sum()),
        };
        for (addr, name) in entries {
            let start = kallsyms.names.len() as u32;
            kallsyms.names.push_str(name);
            kallsyms.addrs.push(addr);
            kallsyms.spans.push((start, kallsyms.names.len() as u32));
        }
        kallsyms
    }

    /// Whether the addresses are hidden (all zero: `kernel.kptr_restrict`, or no
    /// privilege to see them).
    pub fn is_hidden(&self) -> bool {
        self.addrs.last().is_none_or(|&last| last == 0)
    }

    /// The symbol containing `addr`: the last one that starts at or below it.
    pub fn resolve(&self, addr: u64) -> Option<&str> {
        let index = self.addrs.partition_point(|&start| start <= addr).checked_sub(1)?;
        let (start, end) = self.spans[index];
        self.names.get(start as usize..end as usize)
    }

    /// Names of a stack's frames, innermost first, without the leading tracing
    /// frames; an unknown address shows as hex.
    pub fn symbolize(&self, ips: impl IntoIterator<Item = u64>) -> Vec<String> {
        let mut frames: Vec<String> = ips
            .into_iter()
            .map(|ip| self.resolve(ip).map_or_else(|| format!("{ip:#x}"), str::to_owned))
            .collect();
        // The machinery starts at the top, or right below the program's frames.
        if let Some(first) = frames.iter().take(PROGRAM_FRAMES_MAX).position(|name| is_tracing_frame(name)) {
            let run = frames[first..].iter().take_while(|name| is_tracing_frame(name)).count();
            frames.drain(..first + run);
        }
        frames
    }
}

/// `/proc/kallsyms` being read ([`Kallsyms::read_soon`]).
pub struct PendingKallsyms(Option<std::thread::JoinHandle<Result<Kallsyms>>>);

impl PendingKallsyms {
    /// The symbols, once read.
    pub fn wait(self) -> Result<Kallsyms> {
        match self.0 {
            Some(reader) => reader.join().unwrap_or_else(|_| Kallsyms::from_proc()),
            None => Kallsyms::from_proc(),
        }
    }
}

/// A symbolized stack, innermost frame first; shared, since many waits have the
/// same one.
pub type Stack = Rc<[String]>;

/// Kernel symbols and the stacks resolved so far, by stack id: an id always names
/// the same stack (the kernel side never lets one be replaced), so each is read
/// from the map and resolved once.
pub struct Stacks {
    kallsyms: Kallsyms,
    kernel: HashMap<i32, Stack>,
    user: HashMap<i32, Stack>,
}

impl Stacks {
    /// Resolves with these symbols.
    pub fn new(kallsyms: Kallsyms) -> Stacks {
        Stacks { kallsyms, kernel: HashMap::new(), user: HashMap::new() }
    }

    /// The kernel stack `id` of `map`, symbolized; empty when the id is an error
    /// (the stack was lost, and counted so) or the map no longer has it.
    pub fn kernel(&mut self, map: &StackTraceMap<MapData>, id: i32) -> Stack {
        self.kernel_with(id, || read_ips(map, id))
    }

    /// The user stack `id` of `map`, as hex addresses: symbolizing it would read
    /// `/proc/PID/maps` of a task in D, which can hang.
    pub fn user(&mut self, map: &StackTraceMap<MapData>, id: i32) -> Stack {
        if let Some(stack) = self.user.get(&id) {
            return stack.clone();
        }
        let stack: Stack =
            read_ips(map, id).unwrap_or_default().iter().map(|ip| format!("{ip:#x}")).collect();
        self.user.insert(id, stack.clone());
        stack
    }

    /// A kernel stack given as addresses (the task iterator's), symbolized.
    pub fn addresses(&self, ips: &[u64]) -> Stack {
        self.kallsyms.symbolize(ips.iter().copied()).into()
    }

    /// As [`Stacks::kernel`], with the instruction pointers from `read`.
    pub fn kernel_with(&mut self, id: i32, read: impl FnOnce() -> Option<Vec<u64>>) -> Stack {
        if let Some(stack) = self.kernel.get(&id) {
            return stack.clone();
        }
        let Some(ips) = read() else { return Stack::from([]) };
        let stack: Stack = self.kallsyms.symbolize(ips).into();
        self.kernel.insert(id, stack.clone());
        stack
    }
}

/// The instruction pointers of stack `id`, if it is one.
fn read_ips(map: &StackTraceMap<MapData>, id: i32) -> Option<Vec<u64>> {
    let id = u32::try_from(id).ok()?;
    let trace = map.get(&id, 0).ok()?;
    Some(trace.frames().iter().map(|frame| frame.ip).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
ffffffff81000000 T _text
ffffffff81010000 T bpf_trace_run4
ffffffffa0000000 t bpf_prog_4f3af15852a0d987_sched_switch
ffffffff81100000 T d_alloc_parallel
ffffffff81100400 t d_wait_lookup
ffffffff81200000 T __schedule
ffffffff81200800 T schedule
ffffffff81300000 D some_data
ffffffffc0001000 t nfs_file_fsync\t[nfs]
";

    #[test]
    fn resolves_addresses_to_the_enclosing_symbol() {
        let syms = Kallsyms::parse(FIXTURE);
        assert_eq!(syms.resolve(0xffffffff81100010), Some("d_alloc_parallel"));
        assert_eq!(syms.resolve(0xffffffff81100400), Some("d_wait_lookup"));
        assert_eq!(syms.resolve(0xffffffff81200900), Some("schedule"));
        assert_eq!(syms.resolve(0xffffffffc0001008), Some("nfs_file_fsync"));
        assert_eq!(syms.resolve(0x1000), None);
        assert!(!syms.is_hidden());
        assert_eq!(syms.symbolize([0xffffffff81200001, 0x10]), ["__schedule", "0x10"]);
        // The hook's own frames are left out, only at the top of the stack.
        let stack = [0xffffffffa0000010, 0xffffffff81010020, 0xffffffff81200001, 0xffffffff81010020];
        assert_eq!(syms.symbolize(stack), ["__schedule", "bpf_trace_run4"]);
        // Also when the program is not in the symbols (loaded after they were
        // read): its address falls in a module's last function.
        let unlisted = [0xffffffffc0002000, 0xffffffff81010020, 0xffffffff81200001];
        assert_eq!(syms.symbolize(unlisted), ["__schedule"]);
        // And when it called a BPF function of its own (5.10: two frames).
        let nested = [0xffffffffc0002000, 0xffffffffc0002100, 0xffffffff81010020, 0xffffffff81200001];
        assert_eq!(syms.symbolize(nested), ["__schedule"]);
    }

    #[test]
    fn stacks_are_resolved_once_per_id() {
        let mut stacks = Stacks::new(Kallsyms::parse(FIXTURE));
        let first = stacks.kernel_with(3, || Some(vec![0xffffffff81200001, 0xffffffff81100010]));
        assert_eq!(&*first, ["__schedule", "d_alloc_parallel"]);
        let again = stacks.kernel_with(3, || panic!("read twice"));
        assert!(Rc::ptr_eq(&first, &again));
        assert!(stacks.kernel_with(-14, || None).is_empty());
    }

    #[test]
    fn hidden_addresses_are_detected() {
        let syms = Kallsyms::parse("0000000000000000 T _text\n0000000000000000 T schedule\n");
        assert!(syms.is_hidden());
        assert!(Kallsyms::parse("").is_hidden());
    }

    /// Stacks seen at `sched_switch` on Linux 6.18, innermost frame first.
    #[test]
    fn blocking_function_skips_scheduler_and_primitives() {
        let lookup = ["__schedule", "schedule", "d_alloc_parallel", "lookup_slow"];
        assert_eq!(blocking_function(lookup), Some("d_alloc_parallel"));

        let open = [
            "__schedule",
            "schedule",
            "schedule_preempt_disabled",
            "rwsem_down_write_slowpath",
            "down_write",
            "path_openat",
            "do_filp_open",
        ];
        assert_eq!(blocking_function(open), Some("path_openat"));

        let fsync = [
            "__schedule",
            "schedule",
            "io_schedule",
            "folio_wait_bit_common",
            "folio_wait_writeback",
            "__filemap_fdatawait_range",
            "file_write_and_wait_range",
        ];
        assert_eq!(blocking_function(fsync), Some("__filemap_fdatawait_range"));

        let jbd2 = ["__schedule", "schedule", "jbd2_log_wait_commit", "ext4_sync_file"];
        assert_eq!(blocking_function(jbd2), Some("jbd2_log_wait_commit"));

        let completion = [
            "__schedule",
            "schedule",
            "schedule_timeout",
            "__wait_for_common",
            "wait_for_completion_io",
            "submit_bio_wait",
        ];
        assert_eq!(blocking_function(completion), Some("submit_bio_wait"));

        let mutex = [
            "__schedule",
            "schedule_preempt_disabled",
            "__mutex_lock.constprop.0",
            "mutex_lock",
            "fuse_lock_inode",
        ];
        assert_eq!(blocking_function(mutex), Some("fuse_lock_inode"));

        let nfs =
            ["__schedule", "schedule", "rpc_wait_bit_killable", "__wait_on_bit", "out_of_line_wait_on_bit"];
        assert_eq!(blocking_function(nfs), Some("rpc_wait_bit_killable"));

        assert_eq!(blocking_function(["__schedule", "schedule"]), None);
    }

    #[test]
    fn stacks_for_reports_start_at_their_blocking_function() {
        let open = ["__schedule", "schedule", "rwsem_down_write_slowpath", "down_write", "path_openat"];
        assert_eq!(from_blocking_function(&open), ["path_openat"]);
        // The same cut as blocking_function's, whatever the stack.
        let lookup = ["__schedule", "schedule", "d_alloc_parallel", "lookup_slow"];
        assert_eq!(from_blocking_function(&lookup)[0], blocking_function(lookup).unwrap());
        // Stacks from the task iterator may lack the scheduler: nothing to cut.
        assert_eq!(
            from_blocking_function(&["d_alloc_parallel", "lookup_slow"]),
            ["d_alloc_parallel", "lookup_slow"]
        );
        // Nothing but primitives: kept whole, not emptied.
        assert_eq!(from_blocking_function(&["__schedule", "schedule"]), ["__schedule", "schedule"]);
        assert!(from_blocking_function::<&str>(&[]).is_empty());
    }

    #[test]
    fn interrupt_frames() {
        assert!(is_interrupt_frame("handle_softirqs"));
        assert!(is_interrupt_frame("asm_sysvec_apic_timer_interrupt"));
        assert!(!is_interrupt_frame("fuse_dev_do_write"));
    }

    #[test]
    fn primitives_are_matched_without_clone_suffixes() {
        assert!(is_wait_primitive("__mutex_lock.constprop.0"));
        assert!(is_wait_primitive("wait_for_completion_killable_timeout"));
        assert!(is_wait_primitive("down"));
        assert!(!is_wait_primitive("download_firmware"));
        assert!(!is_wait_primitive("d_alloc_parallel"));
        assert!(!is_wait_primitive("fuse_simple_request"));
    }
}
