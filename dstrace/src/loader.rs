//! Loading the embedded eBPF object with the running kernel's settings, and
//! attaching it.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::BtfTracePoint,
    Btf, Ebpf, EbpfLoader,
};
use dstrace_common::{names, Config, Counter, CONFIG_INCLUDE_IDLE, CONFIG_STATE_IN_ARG};

use crate::kernel_btf::KernelLayout;

/// The eBPF object, built by `dstrace/build.rs` (never empty: the build checks it).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dstrace.bpf.o"));

/// What the kernel side should record.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Completed waits shorter than this are counted but not streamed.
    pub min_duration: Duration,
    /// Also record `TASK_IDLE` waits.
    pub include_idle: bool,
}

/// The loaded and attached programs, and the maps userspace reads.
///
/// Dropping it detaches the programs and frees the maps.
pub struct Tracer {
    /// Owns the programs, their links and the maps not taken out.
    ebpf: Ebpf,
    /// Name of the `sched_switch` variant in use.
    pub program: &'static str,
    /// Kernel stacks by id.
    pub stacks: StackTraceMap<MapData>,
    /// Per-CPU counters, indexed by [`Counter`].
    pub counters: PerCpuArray<MapData, u64>,
}

impl Tracer {
    /// Loads the object, configured for the running kernel, and attaches it.
    pub fn load(options: &Options) -> Result<Tracer> {
        let layout = KernelLayout::from_running_kernel()?;
        let btf = Btf::from_sys_fs().context("cannot read the kernel's BTF")?;
        let config = config(&layout, options);
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global(names::GLOBAL_CONFIG, &config, true)
            .load(OBJECT)
            .context("cannot load the eBPF object")?;

        let program = if layout.sched_switch_has_state_arg {
            names::PROG_SCHED_SWITCH
        } else {
            names::PROG_SCHED_SWITCH_PRE518
        };
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("the eBPF object has no program {program}"))?
            .try_into()?;
        prog.load("sched_switch", &btf)
            .with_context(|| format!("the kernel refused the program {program}"))?;
        prog.attach().context("cannot attach to the sched_switch tracepoint")?;

        let stacks = StackTraceMap::try_from(take_map(&mut ebpf, names::MAP_STACKS)?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, names::MAP_COUNTERS)?)?;
        Ok(Tracer { ebpf, program, stacks, counters })
    }

    /// Takes the ring buffer of completed waits (once) for a reader that owns it.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(take_map(&mut self.ebpf, names::MAP_EVENTS)?)?)
    }

    /// The sum over CPUs of every counter, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let values = self.counters.get(&(counter as u32), 0)?;
                Ok((counter, values.iter().sum()))
            })
            .collect()
    }
}

/// The `CONFIG` global for this kernel and these options.
pub fn config(layout: &KernelLayout, options: &Options) -> Config {
    let mut flags = 0;
    if options.include_idle {
        flags |= CONFIG_INCLUDE_IDLE;
    }
    if layout.sched_switch_has_state_arg {
        flags |= CONFIG_STATE_IN_ARG;
    }
    Config {
        min_duration_ns: u64::try_from(options.min_duration.as_nanos()).unwrap_or(u64::MAX),
        task_pid_offset: layout.task_pid_offset,
        task_state_offset: layout.task_state_offset,
        flags,
        _pad: 0,
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
}
