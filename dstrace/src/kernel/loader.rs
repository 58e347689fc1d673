//! Loading the embedded eBPF object with the running kernel's settings, and
//! attaching it.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{BtfTracePoint, FEntry, FExit, TracePoint},
    Btf, Ebpf, EbpfLoader, Pod,
};
use dstrace_common::{
    limits, names, AggKey, AggValue, Config, Counter, FuseKey, FuseRequest, InFlight, RpcCall, RpcKey,
    COMM_LEN, CONFIG_FILTER_CGROUP, CONFIG_FILTER_COMM, CONFIG_FILTER_TGID, CONFIG_FILTER_TID,
    CONFIG_FUSE_REQUESTS, CONFIG_INCLUDE_IDLE, CONFIG_LOCK_OWNERS, CONFIG_RPC, CONFIG_SYSCALL_TARGET,
    CONFIG_USER_STACKS, CONFIG_VFS,
};

use crate::{
    clock::duration_ns,
    kernel::{
        btf::{self, KernelLayout},
        iter::{self, Iterators, Look},
        object::{self, fill_syscall_args, take_map, OBJECT},
        sunrpc,
    },
};

/// What the kernel side should record.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Completed waits shorter than this are aggregated but not streamed.
    pub min_duration: Duration,
    /// Also record `TASK_IDLE` waits.
    pub include_idle: bool,
    /// Also record user stacks.
    pub user_stacks: bool,
    /// Leave `sched_waking` unattached: no waker is recorded, and no program runs
    /// on the machine's wake-ups.
    pub no_waker: bool,
    /// Attach nothing: the tasks in D are only looked at, by the task iterator
    /// ([`Tracer::look`]), when asked (`--sample`). No wait is seen to begin or
    /// end, so none is streamed or aggregated.
    pub sample: bool,
    /// Which tasks to record; empty filters let every task in.
    pub filters: Filters,
    /// Sizes of the kernel side's maps.
    pub capacity: Capacity,
}

/// Sizes of the kernel side's maps: what it can hold before it counts drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Tasks tracked in D at once (`INFLIGHT`).
    pub tasks: u32,
    /// Bytes of the ring buffer of completed waits (`EVENTS`): a power of two, at
    /// least a page.
    pub ring_buffer_bytes: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity { tasks: limits::INFLIGHT_ENTRIES, ring_buffer_bytes: limits::EVENTS_BYTES }
    }
}

/// Task filters applied in the kernel, before a wait costs anything: a task is
/// recorded when it matches every non-empty set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Thread group ids (`--pid`).
    pub tgids: Vec<u32>,
    /// Thread ids (`--tid`).
    pub tids: Vec<u32>,
    /// cgroup v2 ids (`--cgroup`).
    pub cgroups: Vec<u64>,
    /// Command names (`--comm`), at most 15 bytes each as the kernel keeps them.
    pub comms: Vec<String>,
}

impl Filters {
    /// The `CONFIG_FILTER_*` bits of the non-empty sets.
    pub fn flags(&self) -> u32 {
        [
            (!self.tgids.is_empty(), CONFIG_FILTER_TGID),
            (!self.tids.is_empty(), CONFIG_FILTER_TID),
            (!self.cgroups.is_empty(), CONFIG_FILTER_CGROUP),
            (!self.comms.is_empty(), CONFIG_FILTER_COMM),
        ]
        .into_iter()
        .filter(|&(set, _)| set)
        .fold(0, |flags, (_, bit)| flags | bit)
    }
}

/// A command name as the kernel's `comm`: cut to 15 bytes, NUL-padded.
pub fn comm_key(comm: &str) -> [u8; COMM_LEN] {
    let mut key = [0u8; COMM_LEN];
    let bytes = comm.as_bytes();
    let len = bytes.len().min(COMM_LEN - 1);
    key[..len].copy_from_slice(&bytes[..len]);
    key
}

/// The loaded and attached programs, and the maps userspace reads.
///
/// Dropping it detaches the programs and frees the maps.
pub struct Tracer {
    /// Owns the programs, their links and the maps not taken out.
    ebpf: Ebpf,
    /// Name of the `sched_switch` variant in use.
    pub program: &'static str,
    /// What this kernel lacks and dstrace therefore does not record, one line each
    /// (what the task iterator cannot give included: [`Tracer::iterator_skipped`]).
    /// The `start` record lists them all; its last `refused.len()` are the
    /// programs the kernel refused.
    pub skipped: Vec<String>,
    /// The programs this kernel refused to load or attach, one short line each
    /// (`d_alloc_parallel lookups: not traced (...)`): said only with `--verbose`,
    /// their whole reasons being in `skipped`.
    pub refused: Vec<String>,
    /// The task iterator programs, where the kernel has them.
    iterators: Option<Iterators>,
    /// What the task iterator cannot give on this kernel, one line each.
    iterator_skipped: Vec<String>,
    /// Kernel stacks by id.
    pub stacks: StackTraceMap<MapData>,
    /// Per-CPU counters, indexed by [`Counter`].
    pub counters: PerCpuArray<MapData, u64>,
    /// Tasks in D now, by tid.
    pub inflight: HashMap<MapData, u32, InFlight>,
    /// Completed waits aggregated in the kernel.
    pub agg: HashMap<MapData, AggKey, AggValue>,
    /// FUSE requests not answered yet.
    pub fuse_inflight: HashMap<MapData, FuseKey, FuseRequest>,
    /// RPC tasks in flight.
    pub rpc_inflight: HashMap<MapData, RpcKey, RpcCall>,
    /// The totals of aggregation entries moved out of the kernel's map
    /// ([`Tracer::keep_ended_processes`]), still counted by [`Tracer::aggregates`].
    kept: std::collections::HashMap<AggKey, AggValue>,
}

/// The aggregation map is pruned once it holds this many entries: half of it, so
/// that a burst of new processes finds room before the next pruning.
pub const PRUNE_AT: usize = limits::AGG_ENTRIES as usize / 2;

/// The most entries of ended processes kept apart, each under its own process;
/// past it, an ended process's entry is added to the one of the same command,
/// stack and cause under pid 0 (about 300 bytes each: at most some 30 MiB).
pub const KEPT_MAX: usize = 100_000;

/// What `start.skipped` says where the kernel side cannot read the syscall of a
/// wait it sees begin, nor so the file of its file descriptor (the path walk's
/// mount and file do not need it).
pub const NO_SYSCALLS: &str = "the syscall of each wait and the file of its fd argument";

impl Tracer {
    /// Loads the object, configured for the running kernel, and attaches it.
    pub fn load(options: &Options) -> Result<Tracer> {
        Tracer::load_with_floors(options, None)
    }

    /// The floor alone, for the benchmarks' paired runs of a workload: the empty
    /// `sched_switch` and `sched_waking` programs attached, nothing else (what any
    /// tracer on these two hooks costs at least). Detached when dropped.
    pub fn floor_only() -> Result<Ebpf> {
        let btf = Btf::from_sys_fs().context("cannot read the kernel's BTF")?;
        let mut ebpf =
            EbpfLoader::new().btf(Some(&btf)).load(OBJECT).context("cannot load the eBPF object")?;
        attach_floors(&mut ebpf, &btf)?;
        Ok(ebpf)
    }

    /// As [`Tracer::load`], and also attaches the empty `sched_switch` and
    /// `sched_waking` programs, the floors the benchmarks compare with (the cost of
    /// being called at all), before or after the real ones: programs on one hook run
    /// in the order they were attached, and the first pays for the cold caches.
    pub fn load_with_floors(options: &Options, floors: Option<FloorOrder>) -> Result<Tracer> {
        let (layout, btf, mut loader) = btf::running_kernel()?;
        let mut skipped = Vec::new();
        let mut config = config(&layout, options);
        match (&layout.target_offsets, layout.sched_switch_has_state_arg) {
            (Ok(_), true) => config.flags |= CONFIG_SYSCALL_TARGET,
            (Err(why), _) => skipped.push(format!("{NO_SYSCALLS}: {why}")),
            (Ok(_), false) => skipped.push(format!(
                "{NO_SYSCALLS}: needs Linux 5.18 or later (a path walk's mount and file are named on any kernel)"
            )),
        }
        match (&layout.vfs_offsets, &layout.target_offsets) {
            (Ok(_), Ok(_)) => config.flags |= CONFIG_VFS,
            (Err(why), _) | (_, Err(why)) => {
                skipped.push(format!("the path walk and mount ID of each wait: {why}"))
            }
        }
        let locks = match (&layout.lock_offsets, &layout.target_offsets, layout.has_lock_tracepoints) {
            (_, _, false) => {
                skipped
                    .push("kernel locks: the lock:contention_begin tracepoint needs Linux 5.19".to_owned());
                false
            }
            (Ok(_), Ok(_), true) => {
                config.flags |= CONFIG_LOCK_OWNERS;
                true
            }
            (Err(why), _, true) | (_, Err(why), true) => {
                skipped.push(format!("owners of kernel locks: {why}"));
                true
            }
        };
        let rpc = if layout.has_sunrpc {
            match sunrpc::offsets() {
                Ok(offsets) => {
                    config.flags |= CONFIG_RPC;
                    config.rpc = offsets;
                    true
                }
                Err(why) => {
                    skipped.push(format!("NFS and sunrpc RPCs: {why}"));
                    false
                }
            }
        } else {
            skipped.push(
                "NFS and sunrpc RPCs: this kernel has no sunrpc tracepoints (the sunrpc module is not \
                 loaded: no NFS mount yet; start dstrace after mounting)"
                    .to_owned(),
            );
            false
        };
        let fuse = match (&layout.fuse_offsets, layout.has_fuse_tracepoints) {
            (Ok(_), true) => {
                config.flags |= CONFIG_FUSE_REQUESTS;
                true
            }
            (_, false) => {
                skipped.push(
                    "FUSE requests in flight: the fuse tracepoints need Linux 6.13 and FUSE built in"
                        .to_owned(),
                );
                false
            }
            (Err(why), true) => {
                skipped.push(format!("FUSE requests in flight: {why}"));
                false
            }
        };
        let lookups = (config.flags & CONFIG_LOCK_OWNERS != 0) && layout.has_dlookup_functions;
        if !lookups {
            skipped.push(
                "who looks up the name a task waits for in d_alloc_parallel: needs fentry on \
                 d_alloc_parallel and __d_lookup_unhash_wake (Linux 6.x) and lock owners"
                    .to_owned(),
            );
        }
        let mut ebpf = loader
            .btf(Some(&btf))
            .override_global(names::GLOBAL_CONFIG, &config, true)
            .map_max_entries(names::MAP_INFLIGHT, options.capacity.tasks)
            .map_max_entries(names::MAP_EVENTS, options.capacity.ring_buffer_bytes)
            .load(OBJECT)
            .context("cannot load the eBPF object")?;
        fill_filters(&mut ebpf, &options.filters)?;
        fill_syscall_args(&mut ebpf)?;
        let plan = iter::plan(&layout);
        let mut iterator_skipped = plan.skipped.clone();
        let iterators = match Iterators::load(&mut ebpf, &btf, &plan, &mut iterator_skipped) {
            Ok(iterators) => iterators,
            Err(err) => {
                iterator_skipped.push(format!("tasks already in D: {err:#}"));
                None
            }
        };
        if options.sample {
            // Nothing else is attached: what the hooks would lack does not apply.
            if iterators.is_none() {
                anyhow::bail!(
                    "--sample looks at the tasks in D with the BPF task iterator, which this kernel \
                     cannot run: {}; trace instead (leave out --sample)",
                    iterator_skipped.join("; ")
                );
            }
            skipped.clear();
        }
        skipped.extend(iterator_skipped.iter().cloned());
        let hooks = !options.sample;

        let program = if layout.sched_switch_has_state_arg {
            names::PROG_SCHED_SWITCH
        } else {
            names::PROG_SCHED_SWITCH_PRE518
        };
        if floors == Some(FloorOrder::First) {
            attach_floors(&mut ebpf, &btf)?;
        }
        if hooks {
            attach::<BtfTracePoint>(&mut ebpf, &btf, program, "sched_switch")?;
        }
        if hooks && !options.no_waker {
            attach::<BtfTracePoint>(&mut ebpf, &btf, names::PROG_SCHED_WAKING, "sched_waking")?;
        }
        if hooks && locks {
            attach::<BtfTracePoint>(&mut ebpf, &btf, names::PROG_CONTENTION_BEGIN, "contention_begin")?;
            attach::<BtfTracePoint>(&mut ebpf, &btf, names::PROG_CONTENTION_END, "contention_end")?;
        }
        if hooks && fuse {
            attach::<BtfTracePoint>(&mut ebpf, &btf, names::PROG_FUSE_SEND, "fuse_request_send")?;
            attach::<BtfTracePoint>(&mut ebpf, &btf, names::PROG_FUSE_END, "fuse_request_end")?;
        }
        // The refusals last: they are the end of `skipped` (see `Tracer::refused`).
        let mut refused = Vec::new();
        if hooks && rpc {
            if let Err(err) = attach_rpc(&mut ebpf, &btf) {
                skipped.push(format!("NFS and sunrpc RPCs: {err:#}"));
                refused.push(refused_line("NFS and sunrpc RPCs", "tracepoint", &err));
            }
        }
        if hooks && lookups {
            if let Err(err) = attach_lookups(&mut ebpf, &btf) {
                skipped.push(format!("who looks up the name a task waits for in d_alloc_parallel: {err:#}"));
                refused.push(refused_line("d_alloc_parallel lookups", "fentry", &err));
            }
        }
        if floors == Some(FloorOrder::Last) {
            attach_floors(&mut ebpf, &btf)?;
        }

        let stacks = StackTraceMap::try_from(take_map(&mut ebpf, names::MAP_STACKS)?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, names::MAP_COUNTERS)?)?;
        let inflight = HashMap::try_from(take_map(&mut ebpf, names::MAP_INFLIGHT)?)?;
        let agg = HashMap::try_from(take_map(&mut ebpf, names::MAP_AGG)?)?;
        let fuse_inflight = HashMap::try_from(take_map(&mut ebpf, names::MAP_FUSE_INFLIGHT)?)?;
        let rpc_inflight = HashMap::try_from(take_map(&mut ebpf, names::MAP_RPC_INFLIGHT)?)?;
        Ok(Tracer {
            ebpf,
            program,
            skipped,
            refused,
            iterators,
            iterator_skipped,
            stacks,
            counters,
            inflight,
            agg,
            fuse_inflight,
            rpc_inflight,
            kept: std::collections::HashMap::new(),
        })
    }

    /// Total run time and run count of a loaded program, as the kernel accounts them
    /// while BPF statistics are enabled (`BPF_ENABLE_STATS`, or the
    /// `kernel.bpf_stats_enabled` sysctl); zero otherwise.
    pub fn program_stats(&self, program: &str) -> Result<ProgramStats> {
        let info = self
            .ebpf
            .program(program)
            .ok_or_else(|| anyhow!("the eBPF object has no program {program}"))?
            .info()
            .with_context(|| format!("no information on the program {program}"))?;
        Ok(ProgramStats { run_time_ns: duration_ns(info.run_time()), run_count: info.run_count() })
    }

    /// Takes the ring buffer of completed waits (once) for a reader that owns it.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(take_map(&mut self.ebpf, names::MAP_EVENTS)?)?)
    }

    /// The sum over CPUs of every counter, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        object::counters(&self.counters)
    }

    /// Every task in D now, and the tasks their waits lead to, read from kernel
    /// memory by the task iterator (see [`crate::kernel::iter`]); `extra_tids` are
    /// read too, whatever their state. An error where this kernel has no iterator
    /// ([`Tracer::iterator_skipped`] says why).
    pub fn look(&mut self, extra_tids: &[u32]) -> Result<Look> {
        match &mut self.iterators {
            Some(iterators) => iterators.look(&mut self.ebpf, extra_tids),
            None => Err(anyhow!("the task iterator is not loaded: {}", self.iterator_skipped.join("; "))),
        }
    }

    /// What the task iterator cannot give on this kernel, one line each with the
    /// oldest kernel that has it (also in [`Tracer::skipped`]).
    pub fn iterator_skipped(&self) -> &[String] {
        &self.iterator_skipped
    }

    /// Tasks in D now, as the kernel side tracks them (tid, wait).
    pub fn inflight(&self) -> Vec<(u32, InFlight)> {
        // An entry removed while iterating ends that key's read: skip it.
        self.inflight.iter().filter_map(Result::ok).collect()
    }

    /// FUSE requests not answered yet (empty where the kernel lacks the tracepoints).
    pub fn fuse_requests(&self) -> Vec<(FuseKey, FuseRequest)> {
        self.fuse_inflight.iter().filter_map(Result::ok).collect()
    }

    /// RPC tasks in flight (empty where the kernel lacks the sunrpc tracepoints).
    pub fn rpc_calls(&self) -> Vec<(RpcKey, RpcCall)> {
        self.rpc_inflight.iter().filter_map(Result::ok).collect()
    }

    /// The aggregation since tracing began: the kernel's map as it is now, and the
    /// entries [`Tracer::keep_ended_processes`] moved out of it (so the counters of
    /// every key only grow).
    pub fn aggregates(&self) -> Vec<(AggKey, AggValue)> {
        let mut all: Vec<(AggKey, AggValue)> = self.agg.iter().filter_map(Result::ok).collect();
        if self.kept.is_empty() {
            return all;
        }
        let mut in_map = std::collections::HashSet::with_capacity(all.len());
        for (key, value) in &mut all {
            if let Some(kept) = self.kept.get(key) {
                add_to(value, kept);
            }
            in_map.insert(*key);
        }
        all.extend(self.kept.iter().filter(|(key, _)| !in_map.contains(key)).map(|(k, v)| (*k, *v)));
        all
    }

    /// For `run` and `record`, which read the aggregation for as long as they
    /// trace: once the kernel's map holds [`PRUNE_AT`] entries, moves those of
    /// processes that have ended out of it into userspace, so that process churn
    /// cannot fill it (a full map drops every new key's waits: counted as
    /// `aggregation_map_full`). Their totals stay in [`Tracer::aggregates`].
    /// Returns how many entries were moved. (The daemon, which runs for weeks,
    /// forgets them instead once it has read them: [`Tracer::remove_aggregates`].)
    pub fn keep_ended_processes(&mut self) -> usize {
        let keys: Vec<AggKey> = self.agg.keys().filter_map(Result::ok).collect();
        if keys.len() < PRUNE_AT {
            return 0;
        }
        let mut moved = 0;
        for key in keys {
            if key.tgid == 0 || std::path::Path::new(&format!("/proc/{}", key.tgid)).exists() {
                continue;
            }
            let Ok(value) = self.agg.get(&key, 0) else { continue };
            if self.agg.remove(&key).is_err() {
                continue;
            }
            let kept_key = if self.kept.len() < KEPT_MAX || self.kept.contains_key(&key) {
                key
            } else {
                AggKey { tgid: 0, ..key }
            };
            match self.kept.get_mut(&kept_key) {
                Some(kept) => add_to(kept, &value),
                None => {
                    self.kept.insert(kept_key, value);
                }
            }
            moved += 1;
        }
        moved
    }

    /// Removes entries from the aggregation map (those of processes that have
    /// ended, already read), so that a tracer that runs for weeks does not fill it
    /// with the keys of processes long gone. Returns how many were removed.
    pub fn remove_aggregates(&mut self, keys: &[AggKey]) -> usize {
        keys.iter().filter(|key| self.agg.remove(key).is_ok()).count()
    }
}

/// Adds the waits of `more` to `total` (two entries of the same key).
fn add_to(total: &mut AggValue, more: &AggValue) {
    total.count += more.count;
    total.total_ns += more.total_ns;
    total.max_ns = total.max_ns.max(more.max_ns);
    for (bucket, n) in total.hist.iter_mut().zip(more.hist) {
        *bucket += n;
    }
}

/// Gives the memory freed after start-up back to the system: parsing the kernel's
/// BTF twice (offsets, then loading) and `/proc/kallsyms` takes tens of MiB for a
/// moment, which the allocator would otherwise keep for the whole run. Call it once
/// tracing is set up.
pub fn release_start_up_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it has no
    // preconditions and leaves every live allocation as it is.
    unsafe { libc::malloc_trim(0) };
}

/// Where the benchmarks' empty programs go among the programs of a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloorOrder {
    /// Attached before the real programs: they run first.
    First,
    /// Attached after the real programs: they run last.
    Last,
}

/// Run time and count of a program, from the kernel's BPF statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Total time spent in the program, in nanoseconds.
    pub run_time_ns: u64,
    /// Number of runs.
    pub run_count: u64,
}

impl ProgramStats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &ProgramStats) -> ProgramStats {
        ProgramStats {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_count: self.run_count.saturating_sub(earlier.run_count),
        }
    }

    /// Mean nanoseconds per run (0 without runs).
    pub fn ns_per_run(&self) -> f64 {
        if self.run_count == 0 {
            0.0
        } else {
            self.run_time_ns as f64 / self.run_count as f64
        }
    }
}

/// The program kinds loaded and attached by the name of a kernel tracepoint or
/// function.
trait AttachByName {
    fn load_and_attach(&mut self, target: &str, btf: &Btf) -> Result<()>;
    fn unload_program(&mut self) -> Result<()>;
}

macro_rules! attach_by_name {
    ($($kind:ty),*) => {$(
        impl AttachByName for $kind {
            fn load_and_attach(&mut self, target: &str, btf: &Btf) -> Result<()> {
                self.load(target, btf)?;
                self.attach()?;
                Ok(())
            }

            fn unload_program(&mut self) -> Result<()> {
                Ok(self.unload()?)
            }
        }
    )*};
}

attach_by_name!(BtfTracePoint, FEntry, FExit);

/// A classic tracepoint, by `category:name`; it needs no BTF.
impl AttachByName for TracePoint {
    fn load_and_attach(&mut self, target: &str, _btf: &Btf) -> Result<()> {
        let (category, name) =
            target.split_once(':').ok_or_else(|| anyhow!("{target}: not a category:name tracepoint"))?;
        self.load()?;
        self.attach(category, name)?;
        Ok(())
    }

    fn unload_program(&mut self) -> Result<()> {
        Ok(self.unload()?)
    }
}

/// Loads program `program` of the object as a `P` and attaches it to `target` (a
/// tracepoint for `tp_btf`, a function for fentry/fexit).
fn attach<P>(ebpf: &mut Ebpf, btf: &Btf, program: &str, target: &str) -> Result<()>
where
    P: AttachByName,
    for<'p> &'p mut P: TryFrom<&'p mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog: &mut P = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("the eBPF object has no program {program}"))?
        .try_into()?;
    prog.load_and_attach(target, btf)
        .with_context(|| format!("the kernel refused the program {program} (on {target})"))
}

/// Attaches the empty `sched_switch` and `sched_waking` programs: the floors the
/// benchmarks compare with.
fn attach_floors(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    attach::<BtfTracePoint>(ebpf, btf, names::PROG_SCHED_SWITCH_EMPTY, "sched_switch")?;
    attach::<BtfTracePoint>(ebpf, btf, names::PROG_SCHED_WAKING_EMPTY, "sched_waking")
}

/// Unloads (and so detaches) program `program`, if it was loaded.
fn unload<P>(ebpf: &mut Ebpf, program: &str)
where
    P: AttachByName,
    for<'p> &'p mut P: TryFrom<&'p mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    if let Some(prog) = ebpf.program_mut(program).and_then(|prog| <&mut P>::try_from(prog).ok()) {
        let _ = prog.unload_program();
    }
}

/// Attaches the three name-lookup programs, or none: with only some of them, the
/// maps they share would fill with entries nothing removes.
fn attach_lookups(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    let attached = attach::<FEntry>(ebpf, btf, names::PROG_DALLOC_ENTRY, "d_alloc_parallel")
        .and_then(|()| attach::<FExit>(ebpf, btf, names::PROG_DALLOC_EXIT, "d_alloc_parallel"))
        .and_then(|()| attach::<FEntry>(ebpf, btf, names::PROG_DLOOKUP_DONE, "__d_lookup_unhash_wake"));
    if attached.is_err() {
        unload::<FEntry>(ebpf, names::PROG_DALLOC_ENTRY);
        unload::<FExit>(ebpf, names::PROG_DALLOC_EXIT);
        unload::<FEntry>(ebpf, names::PROG_DLOOKUP_DONE);
    }
    attached
}

/// The one line said of a program the kernel refused: what is not traced and the
/// kernel's answer, its root cause only (`Operation not permitted`; the verifier
/// log, empty or long, is for the `start` record).
fn refused_line(what: &str, kind: &str, err: &anyhow::Error) -> String {
    format!("{what}: not traced (this kernel refuses its {kind} programs: {})", err.root_cause())
}

/// Attaches the sunrpc programs (classic tracepoints, each named after its event),
/// or none: without `rpc_task_end`, entries would stay in `RPC_INFLIGHT` for ever.
fn attach_rpc(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    let attached = sunrpc::EVENTS
        .iter()
        .try_for_each(|event| attach::<TracePoint>(ebpf, btf, event, &format!("sunrpc:{event}")));
    if attached.is_err() {
        for event in sunrpc::EVENTS {
            unload::<TracePoint>(ebpf, event);
        }
    }
    attached
}

/// Writes the filter sets into their maps.
fn fill_filters(ebpf: &mut Ebpf, filters: &Filters) -> Result<()> {
    fill(ebpf, names::MAP_FILTER_TGIDS, &filters.tgids, "--pid")?;
    fill(ebpf, names::MAP_FILTER_TIDS, &filters.tids, "--tid")?;
    fill(ebpf, names::MAP_FILTER_CGROUPS, &filters.cgroups, "--cgroup")?;
    let comms: Vec<[u8; COMM_LEN]> = filters.comms.iter().map(|comm| comm_key(comm)).collect();
    fill(ebpf, names::MAP_FILTER_COMMS, &comms, "--comm")
}

fn fill<K: Pod>(ebpf: &mut Ebpf, map: &str, keys: &[K], flag: &str) -> Result<()> {
    if keys.len() > limits::FILTER_ENTRIES as usize {
        anyhow::bail!("at most {} values of {flag}", limits::FILTER_ENTRIES);
    }
    let mut set: HashMap<_, K, u8> =
        HashMap::try_from(ebpf.map_mut(map).ok_or_else(|| anyhow!("the eBPF object has no map {map}"))?)?;
    for key in keys {
        set.insert(key, 1, 0).with_context(|| format!("cannot set the {flag} filter"))?;
    }
    Ok(())
}

/// The `CONFIG` global for this kernel and these options, no program enabled yet.
pub fn config(layout: &KernelLayout, options: &Options) -> Config {
    let mut flags = options.filters.flags();
    if options.include_idle {
        flags |= CONFIG_INCLUDE_IDLE;
    }
    if options.user_stacks {
        flags |= CONFIG_USER_STACKS;
    }
    Config { min_duration_ns: duration_ns(options.min_duration), flags, ..object::kernel_config(layout) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded object has every program and map userspace asks for by name,
    /// and the sections that hold the globals.
    #[test]
    fn object_has_every_name_userspace_uses() {
        let object = aya_obj::Object::parse(OBJECT).unwrap();
        for program in names::PROGRAMS {
            assert!(object.programs.contains_key(program), "no program {program}");
        }
        for map in names::MAPS {
            assert!(object.maps.contains_key(map), "no map {map}");
        }
        // CONFIG lives in .rodata, INFLIGHT_COUNT in .bss.
        for section in [".rodata", ".bss"] {
            assert!(object.maps.contains_key(section), "no {section} section");
        }
        assert!(
            object.license.to_bytes().ends_with(b"GPL"),
            "the probe helpers need a GPL-compatible license"
        );
    }

    #[test]
    fn config_carries_layout_and_options() {
        let layout = KernelLayout::sample();
        let options =
            Options { min_duration: Duration::from_millis(5), include_idle: true, ..Options::default() };
        let config = config(&layout, &options);
        assert_eq!(config.min_duration_ns, 5_000_000);
        assert_eq!((config.task_pid_offset, config.task_state_offset), (2000, 24));
        assert_eq!(config.flags, CONFIG_INCLUDE_IDLE);
        assert_eq!(config.self_tgid, crate::kernel::object::own_tgid(), "dstrace's own waits are left out");
        assert_eq!(config.offsets, dstrace_common::Offsets::UNSET, "a group the kernel lacks stays unset");
        let options = Options { include_idle: false, ..options };
        assert_eq!(super::config(&layout, &options).flags, 0);
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn filter_flags_follow_the_sets() {
        assert_eq!(Filters::default().flags(), 0);
        let filters = Filters { tgids: vec![1], comms: vec!["x".into()], ..Filters::default() };
        assert_eq!(filters.flags(), CONFIG_FILTER_TGID | CONFIG_FILTER_COMM);
    }

    #[test]
    fn comm_keys_are_cut_like_the_kernel_does() {
        assert_eq!(&comm_key("stat")[..5], b"stat\0");
        let long = comm_key("a-very-long-command-name");
        assert_eq!(&long[..15], b"a-very-long-com");
        assert_eq!(long[15], 0);
    }
}
