//! Names for what the kernel side gives: symbols for stack addresses, mounts for
//! device numbers and mount IDs, files for descriptors, holders for file locks,
//! and the tasks in D that `/proc` lists. Everything is read from `/proc` and
//! `/sys` (files the kernel answers itself), never from under a mount dstrace may
//! be diagnosing, and every read that could wait is bounded.
//!
//! * [`procfs`]: tasks in D now, from `/proc`, without hanging;
//! * [`symbols`]: `/proc/kallsyms`, and the choice of the blocking function;
//! * [`mounts`]: the mount table (`mountinfo`);
//! * [`attribution`]: which syscall, mount and file a wait concerns;
//! * [`file_locks`]: `/proc/locks`: who holds the file lock a task waits for;
//! * [`cgroups`]: the cgroup (container, service) of a task, by path;
//! * [`Names`]: all of them together, as a command keeps them.

pub mod attribution;
pub mod cgroups;
pub mod file_locks;
pub mod mounts;
pub mod procfs;
pub mod symbols;

use crate::{
    clock::Clock,
    resolve::{
        attribution::FilePaths,
        cgroups::Cgroups,
        mounts::MountTable,
        symbols::{Kallsyms, PendingKallsyms, Stacks},
    },
};

/// What waits are named with: kernel symbols, mounts, file paths, cgroups, the
/// clock. A command keeps one for its life, so that what it learnt is reused.
pub struct Names {
    /// Symbols and resolved stacks.
    pub stacks: Stacks,
    /// The mount tables.
    pub mounts: MountTable,
    /// The paths of file descriptors read lately.
    pub files: FilePaths,
    /// Cgroup paths.
    pub cgroups: Cgroups,
    /// Monotonic to wall-clock time.
    pub clock: Clock,
}

impl Names {
    /// Names without kernel symbols yet: they are read while the programs load
    /// ([`Kallsyms::read_soon`], then [`Names::read_symbols`]); until then the
    /// only stacks are the kernel's text in `/proc`.
    pub fn new() -> Names {
        Names {
            stacks: Stacks::new(Kallsyms::parse("")),
            mounts: MountTable::read(),
            files: FilePaths::default(),
            cgroups: Cgroups::default(),
            clock: Clock::now(),
        }
    }

    /// Takes the kernel's symbols (`/proc/kallsyms`) once read; returns whether
    /// they hide the addresses (`kernel.kptr_restrict`: stacks are raw addresses).
    pub fn read_symbols(&mut self, pending: PendingKallsyms) -> anyhow::Result<bool> {
        let kallsyms = pending.wait()?;
        let hidden = kallsyms.is_hidden();
        self.stacks = Stacks::new(kallsyms);
        Ok(hidden)
    }
}

impl Default for Names {
    fn default() -> Names {
        Names::new()
    }
}
