//! `dstrace snapshot`: one look at the tasks in D now, from `/proc` alone.
//!
//! No BPF: it works where BPF is locked down or without privileges (then it says
//! what it could not see), and it starts in milliseconds. What only live tracing
//! knows (kernel locks and their holders, the path a task looks up, FUSE requests
//! in flight) is left to `dstrace run`, and the output says so.

use std::{io, path::Path, time::SystemTime};

use anyhow::{Context as _, Result};

use crate::{
    cli::args::SnapshotArgs,
    kernel::preflight,
    model::{
        advice::advise,
        board::{Board, SortBy},
        chain,
        wait::{ProcNow, Wait},
    },
    resolve::{procfs, Names},
    sinks::{self, Format, Snapshot},
};

/// Runs `dstrace snapshot`.
pub fn snapshot(args: &SnapshotArgs) -> Result<()> {
    let states: &[char] = if args.view.include_idle { &['D', 'I'] } else { &['D'] };
    let tasks = procfs::tasks_in_states(Path::new("/proc"), states).context("cannot list /proc")?;
    let now = ProcNow::read();
    let mut names = Names::new();
    let context = chain::Context::default();
    let mut waits: Vec<Wait> = tasks
        .iter()
        .filter(|task| task.pid != std::process::id())
        .map(|task| Wait::from_proc(task, &now, &mut names).with_chain(&context))
        .collect();
    waits.sort_by_key(|wait| std::cmp::Reverse(wait.duration_ns));
    let snapshot = Snapshot {
        advice: advise(&waits),
        time: SystemTime::now(),
        groups: Board::default().groups(&waits, SortBy::InD),
        waits,
        cannot_see: cannot_see(&tasks),
    };
    let format = if args.view.json { Format::Json } else { Format::Text { stacks: args.view.stacks } };
    sinks::lines(io::stdout().lock(), format).snapshot(&snapshot).context("cannot write to standard output")
}

/// What this look could not see, one sentence each.
fn cannot_see(tasks: &[procfs::ProcTask]) -> Vec<String> {
    let mut missing =
        vec!["kernel locks and their holders, the paths tasks look up, FUSE requests and NFS RPCs in \
         flight: they need live tracing (dstrace run)"
            .to_owned()];
    if !preflight::may_load_bpf() || tasks.iter().any(|task| task.stack.is_none()) {
        missing.push(
            "the kernel stacks of some tasks (/proc/PID/stack needs root): their blocking function \
             comes from wchan"
                .to_owned(),
        );
    }
    missing
}
