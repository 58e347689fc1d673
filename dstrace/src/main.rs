//! The `dstrace` binary: parse the command line, run, print one error line on
//! failure. A closed pipe (`dstrace run | head`) is where the reader stopped
//! reading, not an error: it ends the command with status 0, whichever command
//! and whichever write met it. A value a flag's parser refuses (a duration too
//! long, a size that is not one) is one line too, naming the flag; clap's other
//! usage errors keep their usage text.

use std::{io, process::ExitCode};

use clap::{error::ErrorKind, Parser as _};
use dstrace::{
    cli::{Cli, Command},
    commands,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.kind() == ErrorKind::ValueValidation => {
            let text = err.render().to_string();
            let line = text.lines().next().unwrap_or_default();
            eprintln!("dstrace: {line}");
            return ExitCode::from(2);
        }
        Err(err) => err.exit(),
    };
    let result = match cli.command {
        Command::Run(args) => commands::run::run(&args),
        Command::Snapshot(args) => commands::snapshot::snapshot(&args),
        Command::Record(args) => commands::record::record(&args),
        Command::Report(args) => commands::report::report(&args),
        Command::Daemon(args) => commands::daemon::daemon(&args),
        Command::Completions { shell } => commands::docs::completions(shell),
        Command::Man { dir } => commands::docs::man(dir.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dstrace: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the error is, or was caused by, a write to a closed pipe.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|cause| cause.kind() == io::ErrorKind::BrokenPipe)
}
