//! The flags of every subcommand, defined once: help, errors and defaults all
//! come from these definitions. `daemon`'s are in [`crate::cli::daemon`], where
//! each is a TOML key too.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    cli::parse::{cgroup_id, parse_duration, parse_ring_kib, parse_size, DEFAULT_MIN_DURATION},
    kernel::loader::{Capacity, Filters},
    sinks::{
        recording::FileOptions,
        report::{GroupBy, ReportFormat, Weight},
    },
};

/// What to show and how: the options `run` and `snapshot` share.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// Also show TASK_IDLE waits (idle kernel threads, not counted in the load).
    #[arg(long)]
    pub include_idle: bool,

    /// Print the kernel stacks under each wait.
    #[arg(long)]
    pub stacks: bool,

    /// Print JSON instead of text (`run`: one object per line; `snapshot`: one
    /// document).
    #[arg(long)]
    pub json: bool,

    /// Also say which programs this kernel refused (they are always listed in
    /// the `start` record).
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// Whether the waker is recorded: the option `run` and `record` share.
#[derive(Clone, Copy, Debug, Args)]
pub struct WakerArgs {
    /// Do not record who woke each wait: leaves the sched_waking tracepoint
    /// unattached, so that dstrace costs nothing on the machine's wake-ups, only on
    /// its context switches (BENCHMARKS.md measures both). The waker ("woken by"
    /// in the output) says who ended a wait: the holder that released a lock, the
    /// interrupt that completed an I/O. The daemon never records it.
    #[arg(long)]
    pub no_waker: bool,
}

/// Options of `dstrace snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub view: ViewArgs,
}

/// Options of `dstrace run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Show waits that lasted at least this long (e.g. 500us, 10ms, 2s).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_MIN_DURATION, value_parser = parse_duration)]
    pub min_duration: Duration,

    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C, SIGTERM or SIGHUP.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Without the full-screen view: every this long, print the tasks in D and
    /// the groups, and the blocked time of the interval by process and function
    /// (0: only at the end).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Print lines of text even on a terminal, instead of the full-screen view.
    #[arg(long, conflicts_with = "json")]
    pub plain: bool,

    #[command(flatten)]
    pub view: ViewArgs,

    /// Only these processes (thread group ids); repeat or separate with commas.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,

    /// Only these threads; repeat or separate with commas.
    #[arg(long, value_name = "TID", value_delimiter = ',')]
    pub tid: Vec<u32>,

    /// Only tasks with this command name (as in `ps -o comm`, at most 15
    /// characters are compared); repeat for several.
    #[arg(long, value_name = "COMM")]
    pub comm: Vec<String>,

    /// Only tasks in this cgroup (v2): a path such as system.slice/nfs.service or
    /// /sys/fs/cgroup/..., or a cgroup id; repeat for several.
    #[arg(long, value_name = "CGROUP")]
    pub cgroup: Vec<String>,

    /// Also record user stacks (shown as addresses: symbolizing them would read
    /// /proc/PID/maps of a task in D, which can hang).
    #[arg(long)]
    pub user_stacks: bool,

    #[command(flatten)]
    pub waker: WakerArgs,

    /// Tasks the kernel side tracks in D at once; more are counted as drops.
    #[arg(long, value_name = "N", default_value_t = dstrace_common::limits::INFLIGHT_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tasks: u32,

    /// Size of the ring buffer of completed waits, in KiB (a power of two, at least
    /// the page size); waits that do not fit are counted as drops.
    #[arg(long, value_name = "KIB", default_value_t = dstrace_common::limits::EVENTS_BYTES / 1024,
          value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,

    #[command(flatten)]
    pub recording: RunOutputArgs,
}

impl RunArgs {
    /// The map sizes asked for.
    pub fn capacity(&self) -> Capacity {
        Capacity { tasks: self.max_tasks, ring_buffer_bytes: self.ring_buffer_kib * 1024 }
    }

    /// The task filters, cgroup paths resolved to ids.
    pub fn filters(&self) -> anyhow::Result<Filters> {
        let cgroups = self.cgroup.iter().map(|cgroup| cgroup_id(cgroup)).collect::<anyhow::Result<_>>()?;
        Ok(Filters { tgids: self.pid.clone(), tids: self.tid.clone(), cgroups, comms: self.comm.clone() })
    }
}

/// The size cap and rotation of recording files (`record` and `run --output`).
#[derive(Clone, Debug, Args)]
pub struct FileCapArgs {
    /// Largest size of one recording file (e.g. 100MiB, 1GiB, 500k); past it the
    /// file is rotated.
    #[arg(long, value_name = "SIZE", default_value = "100MiB", value_parser = parse_size)]
    pub max_size: u64,

    /// Full files kept besides the current one (FILE.1 is the newest); 0: stop
    /// recording when the file is full.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub rotate: u32,
}

/// `dstrace run`'s options for writing a recording beside the live view.
#[derive(Clone, Debug, Args)]
pub struct RunOutputArgs {
    /// Also write a recording to FILE (as `dstrace record` does), every --interval
    /// or every 10s; read it with `dstrace report`.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub caps: FileCapArgs,
}

/// Options of `dstrace record`.
#[derive(Clone, Debug, Args)]
pub struct RecordArgs {
    /// The recording file: created with mode 0600, or appended to if it is a
    /// recording already; never a symbolic link.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,

    /// Write what was aggregated every this long (a crash loses at most one).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Record waits at least this long one by one (all are aggregated).
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_duration)]
    pub min_duration: Duration,

    /// Stop after this long (e.g. 1h); default: until Ctrl-C, SIGTERM or SIGHUP.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Also record TASK_IDLE waits (idle kernel threads).
    #[arg(long)]
    pub include_idle: bool,

    #[command(flatten)]
    pub waker: WakerArgs,

    /// Sample instead of tracing: no program on the scheduler or anywhere else;
    /// at the end of each interval the BPF task iterator reads the tasks in D from
    /// kernel memory (Linux 5.8+) with their mount, lock, holder, chain and exact
    /// age, and they are recorded as when tracing. Not recorded: completed waits
    /// (the folded, SVG and pprof reports are empty), wakers.
    #[arg(long, conflicts_with = "no_waker")]
    pub sample: bool,

    #[command(flatten)]
    pub caps: FileCapArgs,
}

impl FileCapArgs {
    /// The file options of a recording at `path` with this cap and rotation.
    pub fn file(&self, path: PathBuf) -> FileOptions {
        FileOptions { path, max_size: self.max_size, rotate: self.rotate }
    }
}

impl RunOutputArgs {
    /// The recording asked for with `--output`, if any.
    pub fn file(&self) -> Option<FileOptions> {
        self.output.clone().map(|path| self.caps.file(path))
    }
}

/// Options of `dstrace report`.
#[derive(Clone, Debug, Args)]
pub struct ReportArgs {
    /// Recording files (e.g. rec.2 rec.1 rec), read in the order given.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,

    /// What to write.
    #[arg(long, value_enum, default_value_t = ReportFormat::Folded)]
    pub format: ReportFormat,

    /// Weight stacks by blocked time (microseconds) or by number of waits.
    #[arg(long, value_enum, default_value_t = Weight::Time)]
    pub weight: Weight,

    /// Leading frames, in this order, so the graph splits by them at its root
    /// (folded, svg, speedscope; pprof has them as labels). The command is a frame
    /// of every stack: the root by default (as in perf's and offcputime's), right
    /// after the frames given here unless `comm` is among them (then where it is
    /// listed). Every stack ends at the function that blocked: the scheduler and
    /// wait primitives below it are left out.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "mount,lock,comm")]
    pub group_by: Vec<GroupBy>,

    /// Leave the command's frame out of the stacks (folded, svg, speedscope): the
    /// kernel stack alone, under any --group-by frames.
    #[arg(long)]
    pub no_comm: bool,

    /// Only intervals that ended at or after this time: RFC 3339 (2026-11-22T03:14:00Z,
    /// or without Z for UTC), or a duration such as 10m: that long before the end of
    /// the recording.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,

    /// Only intervals that ended at or before this time (as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,

    /// Only waits on this mount point (e.g. /mnt/nfs).
    #[arg(long, value_name = "MOUNT")]
    pub mount: Vec<String>,

    /// Only these commands; repeat for several.
    #[arg(long, value_name = "COMM")]
    pub comm: Vec<String>,

    /// Only these processes; repeat or separate with commas.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,

    /// List the tasks in D at this time instead (the recorded moment nearest it):
    /// what was stuck, for how long, on what, behind whom. A time as --since
    /// takes; text, or JSON with --format json.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,

    /// Write to this file (created with mode 0600) instead of standard output.
    #[arg(long, short = 'o', value_name = "OUT")]
    pub output: Option<PathBuf>,
}
