//! `dstrace completions SHELL` and `dstrace man`: the shell completions and the
//! man pages, generated from the one clap definition of the command line
//! ([`crate::cli`]) by `clap_complete` and `clap_mangen`, so that neither can
//! drift from `--help`. They need no privileges and touch nothing but standard
//! output (or, for `man --dir`, the directory named).

use std::{
    io::{self, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::cli::Cli;

/// Writes the completion script for `shell` to standard output.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut out = io::stdout().lock();
    clap_complete::generate(shell, &mut Cli::command(), "dstrace", &mut out);
    out.flush()?;
    Ok(())
}

/// Writes `dstrace.1` to standard output, or every page (`dstrace.1`,
/// `dstrace-run.1`, ...) into `dir`.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let command = Cli::command();
    match dir {
        Some(dir) => clap_mangen::generate_to(command, dir)
            .with_context(|| format!("cannot write the man pages to {}", dir.display())),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            let mut out = io::stdout().lock();
            out.write_all(&page)?;
            out.flush()?;
            Ok(())
        }
    }
}
