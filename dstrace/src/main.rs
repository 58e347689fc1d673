//! The `dstrace` binary: parse the command line, run, print one error line on failure.

use std::process::ExitCode;

use clap::Parser as _;
use dstrace::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => dstrace::run::run(&args),
        Command::Snapshot(args) => dstrace::snapshot::snapshot(&args),
        Command::Record(args) => dstrace::recorder::record(&args),
        Command::Report(args) => dstrace::report::report(&args),
        Command::Daemon(args) => dstrace::daemon::daemon(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dstrace: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
