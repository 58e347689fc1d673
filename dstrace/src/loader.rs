//! Loading the embedded eBPF object with the running kernel's settings, and
//! attaching it.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::BtfTracePoint,
    Btf, Ebpf, EbpfLoader,
};
use dstrace_common::{names, Config, Counter, CONFIG_INCLUDE_IDLE};

use crate::{clock::duration_ns, kernel_btf::KernelLayout};

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
    let flags = if options.include_idle { CONFIG_INCLUDE_IDLE } else { 0 };
    Config {
        min_duration_ns: duration_ns(options.min_duration),
        task_pid_offset: layout.task_pid_offset,
        task_state_offset: layout.task_state_offset,
        flags,
        _pad: 0,
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded object has every program and map userspace asks for by name,
    /// and the sections that hold the globals.
    #[test]
    fn object_has_every_name_userspace_uses() {
        let object = aya_obj::Object::parse(OBJECT).unwrap();
        for program in [names::PROG_SCHED_SWITCH, names::PROG_SCHED_SWITCH_PRE518] {
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
        let layout =
            KernelLayout { task_pid_offset: 2000, task_state_offset: 24, sched_switch_has_state_arg: true };
        let options = Options { min_duration: Duration::from_millis(5), include_idle: true };
        let config = config(&layout, &options);
        assert_eq!(config.min_duration_ns, 5_000_000);
        assert_eq!((config.task_pid_offset, config.task_state_offset), (2000, 24));
        assert_eq!(config.flags, CONFIG_INCLUDE_IDLE);
        let options = Options { include_idle: false, ..options };
        assert_eq!(super::config(&layout, &options).flags, 0);
    }
}
