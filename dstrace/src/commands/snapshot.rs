//! `dstrace snapshot`: one look at the tasks in D now, no live tracing.
//!
//! With the privileges to load BPF programs (root, or CAP_BPF and CAP_PERFMON) it
//! runs the task iterator once ([`crate::kernel::iter`]): every task in D is read
//! from kernel memory (its stack, the path walk it is in, the file behind its
//! descriptor, the lock it waits for and that lock's holder, the processes serving
//! each FUSE connection), however long it has waited. Without them, or where the
//! kernel cannot run the iterator, it falls back on `/proc` alone and says what it
//! could not see. Either way it never touches the mounts it looks at, and what
//! only live tracing knows (NFS RPCs in flight, who wakes a task) is left to
//! `dstrace run`, and the output says so.

use std::{io, path::Path, time::SystemTime};

use anyhow::{Context as _, Result};

use crate::{
    cli::args::SnapshotArgs,
    clock::monotonic_ns,
    kernel::{iter::Looker, object::own_tgid, preflight},
    model::{
        advice::advise_once,
        board::{Board, SortBy},
        chain,
        seen::Seen,
        wait::{ProcNow, Wait},
    },
    resolve::{procfs, symbols::Kallsyms, Names},
    sinks::{self, Format, Snapshot},
};

/// Runs `dstrace snapshot`.
pub fn snapshot(args: &SnapshotArgs) -> Result<()> {
    let include_idle = args.view.include_idle;
    let mut names = Names::new();
    let (mut waits, cannot_see, source) = match look(include_idle, &mut names) {
        Ok((seen, skipped)) => {
            let now = ProcNow::read();
            let context = chain::Context { now_ns: monotonic_ns(), seen, ..chain::Context::default() };
            let waits: Vec<Wait> = context
                .seen
                .in_d(include_idle)
                .map(|seen| Wait::from_seen(seen, &context.seen, &now, &mut names).with_chain(&context))
                .collect();
            let mut cannot_see = vec![
                "NFS and sunrpc RPCs in flight, who wakes a task, FUSE requests' send times: they need live \
                 tracing (dstrace run)"
                    .to_owned(),
            ];
            cannot_see.extend(skipped);
            (waits, cannot_see, "iterator")
        }
        Err(why) => {
            let states: &[char] = if include_idle { &['D', 'I'] } else { &['D'] };
            let tasks = procfs::tasks_in_states(Path::new("/proc"), states).context("cannot list /proc")?;
            let now = ProcNow::read();
            let context = chain::Context::default();
            let own = own_tgid();
            let waits: Vec<Wait> = tasks
                .iter()
                .filter(|task| task.pid != own)
                .map(|task| Wait::from_proc(task, &now, &mut names).with_chain(&context))
                .collect();
            (waits, proc_cannot_see(&tasks, &why), "proc")
        }
    };
    waits.sort_by_key(|wait: &Wait| std::cmp::Reverse(wait.duration_ns));
    let snapshot = Snapshot {
        advice: advise_once(&waits),
        time: SystemTime::now(),
        groups: Board::default().groups(&waits, SortBy::InD),
        waits,
        cannot_see,
        source,
    };
    let format = if args.view.json { Format::Json } else { Format::Text { stacks: args.view.stacks } };
    sinks::lines(io::stdout().lock(), format).snapshot(&snapshot).context("cannot write to standard output")
}

/// One look of the task iterator, with what this kernel cannot give; why not,
/// when it cannot be run here.
fn look(include_idle: bool, names: &mut Names) -> Result<(Seen, Vec<String>), String> {
    if !preflight::may_load_bpf() {
        return Err("the task iterator needs root, or CAP_BPF and CAP_PERFMON".to_owned());
    }
    let symbols = Kallsyms::read_soon();
    let mut looker = Looker::load(include_idle).map_err(|err| format!("{err:#}"))?;
    let look = looker.look(&[]).map_err(|err| format!("{err:#}"))?;
    names.read_symbols(symbols).map_err(|err| format!("{err:#}"))?;
    Ok((Seen::of(look, &mut names.stacks), looker.skipped().to_vec()))
}

/// What a look at `/proc` alone could not see, one sentence each (`why`: why the
/// task iterator did not run).
fn proc_cannot_see(tasks: &[procfs::ProcTask], why: &str) -> Vec<String> {
    let mut missing = vec![format!(
        "what only kernel memory says of a task in D (the path it walks, the lock it waits for and its \
         holder, the daemon of a FUSE mount): {why}"
    )];
    missing.push(
        "NFS and sunrpc RPCs in flight, who wakes a task: they need live tracing (dstrace run)".to_owned(),
    );
    let no_stack: Vec<&procfs::ProcTask> = tasks.iter().filter(|task| task.stack.is_none()).collect();
    if !preflight::may_load_bpf() || !no_stack.is_empty() {
        // `wchan` of another user's task is "0" without ptrace rights: then the
        // blocking function is unknown too.
        let from_wchan = no_stack.iter().any(|task| task.wchan.is_some());
        let unknown = no_stack.iter().any(|task| task.wchan.is_none());
        let then = match (from_wchan, unknown) {
            (true, false) => "their blocking function comes from /proc/PID/wchan",
            (true, true) => {
                "their blocking function comes from /proc/PID/wchan where it is readable, else it is \
                 unknown (?)"
            }
            (false, _) => "their blocking function is unknown (?): /proc/PID/wchan needs the same rights",
        };
        missing.push(format!("the kernel stacks of some tasks (/proc/PID/stack needs root): {then}"));
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(wchan: Option<&str>) -> procfs::ProcTask {
        procfs::ProcTask {
            pid: 7,
            tid: 7,
            comm: "dd".into(),
            state: 'D',
            ppid: 1,
            kernel_thread: false,
            wchan: wchan.map(str::to_owned),
            stack: None,
            syscall: None,
            last_ran_ns: None,
            cpu: None,
        }
    }

    /// Unprivileged, neither the stack nor wchan is readable: the function is
    /// said unknown, not said to come from wchan.
    #[test]
    fn without_wchan_the_function_is_said_unknown() {
        let missing = proc_cannot_see(&[task(None)], "no BPF");
        let stacks = missing.iter().find(|line| line.contains("kernel stacks")).unwrap();
        assert!(stacks.contains("unknown") && !stacks.contains("comes from"), "{stacks}");
        let missing = proc_cannot_see(&[task(Some("d_alloc_parallel"))], "no BPF");
        let stacks = missing.iter().find(|line| line.contains("kernel stacks")).unwrap();
        assert!(stacks.ends_with("comes from /proc/PID/wchan"), "{stacks}");
    }
}
