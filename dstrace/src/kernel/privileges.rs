//! Dropping the capabilities a long-running dstrace no longer needs, once its
//! programs are loaded and attached ([`drop_after_attach`]).
//!
//! dstrace runs as root on machines in trouble; a bug reached by hostile input (a
//! process name, a mount table, a recording) must not hand over the whole machine.
//! Loading and attaching take CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); after
//! that, what the process still does and what the kernel (5.8 and later) asks for
//! each is:
//!
//! * reading its maps through the file descriptors it holds: nothing from Linux
//!   5.19; before, CAP_BPF (or CAP_SYS_ADMIN) while `kernel.unprivileged_bpf_disabled`
//!   is set. This is probed, not guessed: CAP_BPF is lowered, a map is read, and it
//!   is kept only if the read fails;
//! * `/proc/PID/stack` of other tasks (the tasks in D that only `/proc` knows, the
//!   holders in wait chains): CAP_SYS_ADMIN (`proc_pid_stack` checks it on the
//!   opener) and ptrace access (`lock_trace`);
//! * `/proc/PID/syscall`, `wchan`, the `fd/N` and `cwd` links and `fdinfo` of other
//!   tasks: ptrace access in `*_FSCREDS` mode, which a process whose effective set
//!   no longer covers the target's permitted set gets only with CAP_SYS_PTRACE
//!   (`cap_ptrace_access_check`);
//! * listing `/proc/PID/fd` of another user's task (mode 0500): CAP_DAC_READ_SEARCH;
//! * rotating a recording in a directory root does not own (`sudo dstrace record -o
//!   ~/incident.rec`): CAP_DAC_OVERRIDE, kept only while a recording is written.
//!
//! Everything else (CAP_NET_ADMIN, CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SETUID,
//! CAP_KILL, CAP_PERFMON, ...) leaves every set: effective, permitted, inheritable,
//! ambient and, where CAP_SETPCAP allows, bounding; and `no_new_privs` is set, so
//! no `execve` can give any of it back.
//!
//! Capabilities belong to threads: the call changes the calling thread, and the
//! threads it starts afterwards inherit the result. Call it before starting other
//! threads; [`Dropped::privileged_threads`] counts those that kept more.

use std::path::Path;

use anyhow::{Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

use crate::kernel::loader::Tracer;

/// What the process will still do after the drop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// It writes (and rotates) recording files.
    pub write_files: bool,
}

/// The outcome of [`drop_after_attach`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// The capabilities kept, by name (`CAP_SYS_PTRACE`, ...).
    pub kept: Vec<String>,
    /// Other threads of the process whose effective set is larger than this
    /// thread's (started before the drop; they keep what they had).
    pub privileged_threads: usize,
}

/// The capabilities the later reads need (see the module's documentation), but
/// CAP_BPF, which is probed.
fn needed(needs: Needs) -> CapsHashSet {
    let mut wanted: CapsHashSet =
        [Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH].into();
    if needs.write_files {
        wanted.insert(Capability::CAP_DAC_OVERRIDE);
    }
    wanted
}

/// Drops every capability `tracer`'s process no longer needs (see the module's
/// documentation); returns what it kept.
pub fn drop_after_attach(tracer: &Tracer, needs: Needs) -> Result<Dropped> {
    let permitted = caps::read(None, CapSet::Permitted).context("cannot read the capabilities")?;
    let mut keep: CapsHashSet = needed(needs).intersection(&permitted).copied().collect();
    // CAP_SYS_ADMIN allows what CAP_BPF does; without it, a map read tells
    // whether this kernel still wants CAP_BPF for file descriptors already held.
    if permitted.contains(&Capability::CAP_BPF) && !keep.contains(&Capability::CAP_SYS_ADMIN) {
        caps::set(None, CapSet::Effective, &keep).context("cannot lower the effective capabilities")?;
        if tracer.counters().is_err() {
            keep.insert(Capability::CAP_BPF);
        }
    }

    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointer.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot set no_new_privs");
    }
    // The bounding set first: dropping from it takes CAP_SETPCAP, still effective
    // here if permitted at all.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP)
            .context("cannot raise CAP_SETPCAP to drop the bounding set")?;
        let bounding = caps::read(None, CapSet::Bounding).context("cannot read the bounding set")?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)
                .with_context(|| format!("cannot drop {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("cannot clear the ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("cannot clear the inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &keep).context("cannot set the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("cannot set the permitted capabilities")?;

    let mut kept: Vec<String> = keep.iter().map(ToString::to_string).collect();
    kept.sort();
    Ok(Dropped { kept, privileged_threads: privileged_threads(mask(&keep)) })
}

/// What `run`, `record` and `daemon` do once their programs are attached and
/// their symbols read: drop the capabilities nothing later needs, and give back
/// the heap start-up used (parsing the kernel's BTF peaks near 55 MiB; what it
/// freed would otherwise stay in the process). Returns the notes to show.
pub fn settle_after_attach(tracer: &Tracer, needs: Needs) -> Vec<String> {
    let dropped = drop_after_attach(tracer, needs);
    crate::kernel::loader::release_start_up_memory();
    notes(&dropped)
}

/// What to tell about a drop: nothing when it went as it should, else one
/// warning line (dstrace goes on: tracing matters more than the drop).
pub fn notes(dropped: &Result<Dropped>) -> Vec<String> {
    match dropped {
        Ok(Dropped { privileged_threads: 0, .. }) => Vec::new(),
        Ok(Dropped { privileged_threads, .. }) => vec![format!(
            "warning: {privileged_threads} thread(s) started before the capabilities were dropped keep theirs"
        )],
        Err(err) => vec![format!("warning: the capabilities not needed after loading stay: {err:#}")],
    }
}

/// A capability set as the bit mask `/proc/PID/status` prints.
fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |mask, cap| mask | cap.bitmask())
}

/// Threads of this process whose effective set has more than `mine`.
fn privileged_threads(mine: u64) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(Path::new(&task.path()).join("status")).ok())
        .filter_map(|status| crate::kernel::preflight::parse_cap_eff(&status))
        .filter(|caps| caps & !mine != 0)
        .count()
}

/// The names of the capabilities in a `CapEff`-style mask, for messages and tests.
pub fn names(mask: u64) -> Vec<String> {
    let mut names: Vec<String> =
        caps::all().into_iter().filter(|cap| mask & cap.bitmask() != 0).map(|cap| cap.to_string()).collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_needed_set_is_small() {
        let reads = needed(Needs::default());
        assert_eq!(
            names(mask(&reads)),
            ["CAP_DAC_READ_SEARCH", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"],
            "a new capability kept must be argued for in the module's documentation"
        );
        let writes: HashSet<_> = needed(Needs { write_files: true }).difference(&reads).copied().collect();
        assert_eq!(writes, [Capability::CAP_DAC_OVERRIDE].into());
    }
}
