//! Fuzz target: the daemon's configuration file, [`dstrace::cli::daemon::parse`] (the
//! TOML text to its settings, at start-up and on every SIGHUP) and then
//! [`Config::resolve`] (the settings checked against each other and the defaults).
//! Whatever the text, the daemon must get settings or a one-line error naming the
//! file, never a panic: a bad edit followed by SIGHUP must not kill a running daemon.

#![no_main]

use std::path::Path;

use dstrace::cli::daemon::{self, Config, Settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // The daemon reads the file with `read_to_string`: text that is not UTF-8 never
    // reaches the parser.
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let path = Path::new("/etc/dstrace/daemon.toml");
    let settings = match daemon::parse(text, path) {
        Ok(settings) => settings,
        Err(err) => {
            let line = format!("{err:#}");
            assert!(!line.contains('\n'), "a parse error of more than one line: {line:?}");
            assert!(
                line.starts_with("/etc/dstrace/daemon.toml"),
                "a parse error not naming the file: {line:?}"
            );
            return;
        }
    };
    match Config::resolve(&Settings::default(), &settings) {
        Ok(config) => {
            let _ = config.describe();
            let _ = Config::default().reloadable_changes(&config);
        }
        Err(err) => {
            let line = format!("{err:#}");
            assert!(!line.contains('\n'), "a settings error of more than one line: {line:?}");
        }
    }
});
