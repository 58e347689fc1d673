//! The settings of `dstrace daemon`, defined once for the command line and the
//! configuration file.
//!
//! [`Settings`] is both a clap `Args` (every key a `--flag`) and a serde
//! structure (every key a TOML key of the same name, `--max-size` is `max-size`),
//! so a key cannot exist in one and not the other, and both go through the same
//! parsers ([`crate::cli::parse::parse_duration`], [`crate::cli::parse::parse_size`]).
//! Every field is optional: [`Config::resolve`] takes a flag if given, else the
//! file's value, else the default ([`Config::default`]). An error in the file names
//! its line (from the span toml gives each error).
//!
//! On SIGHUP the daemon reads the file again; [`Config::reloadable_changes`] says
//! which of the changed keys take effect at once and which need a restart (those
//! that shape the eBPF programs, the listening socket or the metrics' labels).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Args;
use serde::{Deserialize, Deserializer};

use crate::{
    cli::parse::{parse_duration, parse_size},
    clock::duration_ns,
};

/// Where the daemon records by default.
pub const DEFAULT_RECORDING: &str = "/var/lib/dstrace/dstrace.rec";

/// `dstrace daemon`'s options: a configuration file, and every setting as a flag.
#[derive(Clone, Debug, Args)]
pub struct DaemonArgs {
    /// Read settings from this TOML file (keys as the flags below, without the
    /// dashes in front: `max-size = "64MiB"`); flags given on the command line win
    /// over the file. Read again on SIGHUP.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: Settings,
}

/// Every setting of the daemon, each optional: as a flag, as a key of the
/// configuration file (the flag's name), or its default.
#[derive(Clone, Debug, Default, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Address and port of the metrics endpoint (/metrics) [default:
    /// 127.0.0.1:9977]. Give another address only on a trusted network: the
    /// metrics name mounts and kernel functions.
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(default)]
    pub listen: Option<SocketAddr>,

    /// The recording file, rotated by --max-size and --rotate [default:
    /// /var/lib/dstrace/dstrace.rec]; read it with `dstrace report`.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub recording: Option<PathBuf>,

    /// Write the recording every this long: a crash loses at most one interval
    /// [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,

    /// Largest size of one recording file, past which it is rotated [default:
    /// 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, deserialize_with = "size")]
    pub max_size: Option<u64>,

    /// Full recording files kept besides the current one [default: 4]; 0: stop
    /// recording when the file is full.
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub rotate: Option<u32>,

    /// Waits at least this long are streamed and recorded one by one, and tasks in
    /// D at least this long count as in D; every wait is counted in the histogram
    /// and the recording's aggregation [default: 1s]. Lower costs more.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub min_duration: Option<Duration>,

    /// Also count TASK_IDLE waits (idle kernel threads); in the file:
    /// `include-idle = true`.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    #[serde(default)]
    pub include_idle: Option<bool>,

    /// Blocking functions with a label of their own, on each mount; later ones
    /// are labelled "other" [default: 20].
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub max_functions: Option<usize>,

    /// Mounts with a label of their own; later ones are labelled "other"
    /// [default: 32].
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub max_mounts: Option<usize>,

    /// Connections to the metrics endpoint served at once; past them, a new one
    /// takes the slot of the one waiting longest for its request (503 when all
    /// are answering) [default: 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    #[serde(default)]
    pub max_connections: Option<u32>,

    /// A client must send its request within this long, and a connection lasts at
    /// most ten times this long [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub request_timeout: Option<Duration>,

    /// Push a pprof profile of blocked time every --pyroscope-interval to this
    /// Pyroscope server (http://HOST:PORT, its /ingest API), labelled with the
    /// host name [default: none].
    #[arg(long, value_name = "URL")]
    #[serde(default)]
    pub pyroscope_url: Option<String>,

    /// How often profiles are pushed to --pyroscope-url [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub pyroscope_interval: Option<Duration>,

    /// Write a line to standard error (the journal, under systemd) when the
    /// oldest task in D on a mount has been in D this long: the mount, its tasks,
    /// what holds them, the advice; and one when it clears [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub stuck_after: Option<Duration>,

    /// While a mount stays stuck, say so again this often [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub stuck_repeat: Option<Duration>,

    /// Sample instead of tracing: no program on the scheduler or anywhere else;
    /// every this long, the BPF task iterator reads the tasks in D from kernel
    /// memory (Linux 5.8+), with their mount, lock, holder and chain, and their
    /// exact age (the kernel's time of their last run). The metrics and journal
    /// lines of the tasks in D are as when tracing, for tasks in D at least this
    /// long (and min-duration); what it cannot give: shorter waits, the
    /// histogram of completed waits, wakers [default: none, trace].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub sample: Option<Duration>,
}

/// A duration in the file: a string such as "10s", as on the command line.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map(Some).map_err(|err| serde::de::Error::custom(format!("{text:?}: {err}")))
}

/// A size in the file: a string such as "64MiB", or a number of bytes.
fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let text = match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => bytes.to_string(),
        Size::Text(text) => text,
    };
    parse_size(&text).map(Some).map_err(serde::de::Error::custom)
}

/// The settings in force: each flag, else the file's value, else the default.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub recording: PathBuf,
    pub interval: Duration,
    pub max_size: u64,
    pub rotate: u32,
    pub min_duration: Duration,
    pub include_idle: bool,
    pub max_functions: usize,
    pub max_mounts: usize,
    pub max_connections: u32,
    pub request_timeout: Duration,
    pub pyroscope_url: Option<String>,
    pub pyroscope_interval: Duration,
    pub stuck_after: Duration,
    pub stuck_repeat: Duration,
    /// Sample every this long instead of tracing.
    pub sample: Option<Duration>,
}

impl Default for Config {
    /// The defaults, as documented on each [`Settings`] field.
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9977)),
            recording: PathBuf::from(DEFAULT_RECORDING),
            interval: Duration::from_secs(30),
            max_size: 64 << 20,
            rotate: 4,
            min_duration: Duration::from_secs(1),
            include_idle: false,
            max_functions: 20,
            max_mounts: 32,
            max_connections: 8,
            request_timeout: Duration::from_secs(5),
            pyroscope_url: None,
            pyroscope_interval: Duration::from_secs(60),
            stuck_after: Duration::from_secs(30),
            stuck_repeat: Duration::from_secs(600),
            sample: None,
        }
    }
}

impl Config {
    /// The settings of `flags` over those of `file` over the defaults, checked.
    pub fn resolve(flags: &Settings, file: &Settings) -> Result<Config> {
        let default = Config::default();
        let config = Config {
            listen: flags.listen.or(file.listen).unwrap_or(default.listen),
            recording: flags
                .recording
                .clone()
                .or_else(|| file.recording.clone())
                .unwrap_or(default.recording),
            interval: flags.interval.or(file.interval).unwrap_or(default.interval),
            max_size: flags.max_size.or(file.max_size).unwrap_or(default.max_size),
            rotate: flags.rotate.or(file.rotate).unwrap_or(default.rotate),
            min_duration: flags.min_duration.or(file.min_duration).unwrap_or(default.min_duration),
            include_idle: flags.include_idle.or(file.include_idle).unwrap_or(default.include_idle),
            max_functions: flags.max_functions.or(file.max_functions).unwrap_or(default.max_functions),
            max_mounts: flags.max_mounts.or(file.max_mounts).unwrap_or(default.max_mounts),
            max_connections: flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(default.max_connections),
            request_timeout: flags
                .request_timeout
                .or(file.request_timeout)
                .unwrap_or(default.request_timeout),
            pyroscope_url: flags.pyroscope_url.clone().or_else(|| file.pyroscope_url.clone()),
            pyroscope_interval: flags
                .pyroscope_interval
                .or(file.pyroscope_interval)
                .unwrap_or(default.pyroscope_interval),
            stuck_after: flags.stuck_after.or(file.stuck_after).unwrap_or(default.stuck_after),
            stuck_repeat: flags.stuck_repeat.or(file.stuck_repeat).unwrap_or(default.stuck_repeat),
            sample: flags.sample.or(file.sample),
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if self.interval.is_zero() {
            anyhow::bail!("interval 0: give a recording interval such as 30s");
        }
        if self.request_timeout.is_zero() {
            anyhow::bail!("request-timeout 0: give a timeout such as 5s");
        }
        if !(1..=1024).contains(&self.max_connections) {
            anyhow::bail!("max-connections {}: give 1 to 1024", self.max_connections);
        }
        if self.pyroscope_interval < Duration::from_secs(1) {
            anyhow::bail!("pyroscope-interval: give at least 1s");
        }
        if self.stuck_after.is_zero() {
            anyhow::bail!("stuck-after 0: give the age of a wait worth a line, such as 30s");
        }
        if self.stuck_repeat.is_zero() {
            anyhow::bail!("stuck-repeat 0: give how often a stuck mount is said again, such as 10m");
        }
        if self.sample.is_some_and(|sample| sample < Duration::from_millis(100)) {
            anyhow::bail!("sample: give at least 100ms, such as 1s");
        }
        if let Some(url) = &self.pyroscope_url {
            crate::sinks::pyroscope::Target::parse(url, "")?;
        }
        Ok(())
    }

    /// The keys that differ from `self` in `new`: those applied at once (the
    /// recording's, Pyroscope's, the stuck lines'), and those that need a restart.
    pub fn reloadable_changes(&self, new: &Config) -> (Vec<&'static str>, Vec<&'static str>) {
        let mut now = Vec::new();
        let mut restart = Vec::new();
        let mut differ = |changed: bool, key: &'static str, reloadable: bool| {
            if changed {
                if reloadable {
                    now.push(key);
                } else {
                    restart.push(key);
                }
            }
        };
        differ(self.recording != new.recording, "recording", true);
        differ(self.interval != new.interval, "interval", true);
        differ(self.max_size != new.max_size, "max-size", true);
        differ(self.rotate != new.rotate, "rotate", true);
        differ(self.pyroscope_url != new.pyroscope_url, "pyroscope-url", true);
        differ(self.pyroscope_interval != new.pyroscope_interval, "pyroscope-interval", true);
        differ(self.stuck_after != new.stuck_after, "stuck-after", true);
        differ(self.stuck_repeat != new.stuck_repeat, "stuck-repeat", true);
        differ(self.listen != new.listen, "listen", false);
        differ(self.min_duration != new.min_duration, "min-duration", false);
        differ(self.include_idle != new.include_idle, "include-idle", false);
        differ(self.max_functions != new.max_functions, "max-functions", false);
        differ(self.max_mounts != new.max_mounts, "max-mounts", false);
        differ(self.max_connections != new.max_connections, "max-connections", false);
        differ(self.request_timeout != new.request_timeout, "request-timeout", false);
        differ(self.sample != new.sample, "sample", false);
        (now, restart)
    }

    /// One line saying what is in force.
    pub fn describe(&self) -> String {
        let human = |duration: Duration| crate::clock::human_duration(duration_ns(duration));
        let waits = match self.sample {
            None => format!("waits of at least {} one by one", human(self.min_duration)),
            Some(every) => format!(
                "sampling the tasks in D every {} (no hook: no completed wait is counted)",
                human(every)
            ),
        };
        format!(
            "metrics on http://{}/metrics; recording to {} every {} (max-size {} bytes, rotate {}); \
             {waits}; a line when a mount's oldest wait passes {} (again every {})",
            self.listen,
            self.recording.display(),
            human(self.interval),
            self.max_size,
            self.rotate,
            human(self.stuck_after),
            human(self.stuck_repeat),
        )
    }

    /// The least age of a task in D that counts: min-duration, and with
    /// `sample` at least one sampling interval.
    pub fn least_age(&self) -> Duration {
        self.sample.map_or(self.min_duration, |every| every.max(self.min_duration))
    }
}

/// Parses a configuration file's text; an error names the line.
pub fn parse(text: &str, path: &Path) -> Result<Settings> {
    toml::from_str(text).map_err(|err| {
        let line = err.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = err.message().trim().replace('\n', "; ");
        match line {
            Some(line) => anyhow::anyhow!("{}, line {line}: {message}", path.display()),
            None => anyhow::anyhow!("{}: {message}", path.display()),
        }
    })
}

/// The largest configuration file read: a few lines of TOML are a few hundred
/// bytes; past this it is the wrong file.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads and parses a configuration file: a regular file of at most
/// [`MAX_CONFIG_BYTES`]. It is opened without blocking (a FIFO would wait for a
/// writer) and checked on the descriptor opened, so that `/dev/zero`, a FIFO or a
/// directory is refused in one line instead of read forever or waited on.
pub fn read(path: &Path) -> Result<Settings> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot read the configuration file {shown}"))?;
    let kind =
        file.metadata().with_context(|| format!("cannot read the configuration file {shown}"))?.file_type();
    if !kind.is_file() {
        anyhow::bail!(
            "the configuration file {shown} is {}, not a regular file: give --config the path of a TOML file",
            file_kind(kind)
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the configuration file {shown}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        anyhow::bail!(
            "the configuration file {shown} is larger than 1 MiB, the most read: give --config the daemon's \
             TOML file (a few lines)"
        );
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("the configuration file {shown} is not UTF-8 text: give a TOML file"))?;
    parse(&text, path)
}

/// What a file that is not a regular one is, for an error.
fn file_kind(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "of another kind"
    }
}

/// The settings in force for these arguments: the file read (if any) and the flags.
pub fn load(args: &DaemonArgs) -> Result<Config> {
    let file = match &args.config {
        Some(path) => read(path)?,
        None => Settings::default(),
    };
    let config = Config::resolve(&args.settings, &file);
    match &args.config {
        Some(path) => config.with_context(|| format!("in {} or the flags", path.display())),
        None => config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Settings> {
        parse(text, Path::new("daemon.toml"))
    }

    #[test]
    fn every_key_parses_like_its_flag() {
        let file = parsed(
            r#"
listen = "127.0.0.1:9100"
recording = "/var/tmp/d.rec"
interval = "10s"
max-size = "1MiB"
rotate = 2
min-duration = "100ms"
include-idle = true
max-functions = 5
max-mounts = 3
max-connections = 4
request-timeout = "2s"
pyroscope-url = "http://127.0.0.1:4040"
pyroscope-interval = "15s"
stuck-after = "45s"
stuck-repeat = "1h"
"#,
        )
        .unwrap();
        let config = Config::resolve(&Settings::default(), &file).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(config.recording, Path::new("/var/tmp/d.rec"));
        assert_eq!(config.interval, Duration::from_secs(10));
        assert_eq!(config.max_size, 1 << 20);
        assert_eq!(config.rotate, 2);
        assert_eq!(config.min_duration, Duration::from_millis(100));
        assert!(config.include_idle);
        assert_eq!((config.max_functions, config.max_mounts, config.max_connections), (5, 3, 4));
        assert_eq!(config.request_timeout, Duration::from_secs(2));
        assert_eq!(config.pyroscope_url.as_deref(), Some("http://127.0.0.1:4040"));
        assert_eq!(config.pyroscope_interval, Duration::from_secs(15));
        assert_eq!(
            (config.stuck_after, config.stuck_repeat),
            (Duration::from_secs(45), Duration::from_secs(3600))
        );
        // A size may be a plain number of bytes.
        assert_eq!(parsed("max-size = 65536").unwrap().max_size, Some(65536));
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file = parsed("interval = \"10s\"\nrotate = 2").unwrap();
        let flags = Settings { rotate: Some(7), ..Settings::default() };
        let config = Config::resolve(&flags, &file).unwrap();
        assert_eq!((config.interval, config.rotate), (Duration::from_secs(10), 7));
        assert_eq!(config.max_size, Config::default().max_size);
    }

    #[test]
    fn errors_name_the_line() {
        let err = parsed("rotate = 2\n\ninterval = \"soon\"\n").unwrap_err().to_string();
        assert!(err.starts_with("daemon.toml, line 3: "), "{err}");
        assert!(err.contains("examples: 500us"), "{err}");
        let err = parsed("rotate = 2\nmax_size = 5\n").unwrap_err().to_string();
        assert!(err.starts_with("daemon.toml, line 2: ") && err.contains("max_size"), "{err}");
        let err = parsed("rotate = \"two\"\n").unwrap_err().to_string();
        assert!(err.starts_with("daemon.toml, line 1: "), "{err}");
        let err = parsed("listen = \n").unwrap_err().to_string();
        assert!(err.starts_with("daemon.toml, line 1: "), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn bad_values_are_refused() {
        let zero = Settings { interval: Some(Duration::ZERO), ..Settings::default() };
        assert!(Config::resolve(&zero, &Settings::default()).is_err());
        for zero in [
            Settings { stuck_after: Some(Duration::ZERO), ..Settings::default() },
            Settings { stuck_repeat: Some(Duration::ZERO), ..Settings::default() },
        ] {
            assert!(Config::resolve(&zero, &Settings::default()).unwrap_err().to_string().contains("stuck-"));
        }
        let url = Settings { pyroscope_url: Some("ftp://x".into()), ..Settings::default() };
        assert!(Config::resolve(&url, &Settings::default()).unwrap_err().to_string().contains("http://"));
    }

    #[test]
    fn reload_says_what_needs_a_restart() {
        let old = Config::default();
        let new = Config { rotate: 9, listen: "127.0.0.1:1".parse().unwrap(), ..Config::default() };
        assert_eq!(old.reloadable_changes(&new), (vec!["rotate"], vec!["listen"]));
        let new = Config { stuck_after: Duration::from_secs(5), ..Config::default() };
        assert_eq!(old.reloadable_changes(&new), (vec!["stuck-after"], vec![]));
    }

    /// The defaults written in `--help` are the ones in force.
    #[test]
    fn documented_defaults_are_the_defaults() {
        use clap::CommandFactory as _;
        let mut command = crate::cli::Cli::command();
        let daemon = command.find_subcommand_mut("daemon").unwrap();
        let help = daemon.render_long_help().to_string().replace('\n', " ");
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let default = Config::default();
        for expected in [
            format!("[default: {}]", default.listen),
            format!("[default: {}]", default.recording.display()),
            "[default: 30s]".to_owned(),
            "[default: 64MiB]".to_owned(),
            format!("[default: {}]", default.rotate),
            "[default: 1s]".to_owned(),
            format!("[default: {}]", default.max_functions),
            format!("[default: {}]", default.max_mounts),
            format!("[default: {}]", default.max_connections),
            "[default: 5s]".to_owned(),
            "[default: 60s]".to_owned(),
            "[default: 10m]".to_owned(),
        ] {
            assert!(help.contains(&expected), "--help does not say {expected}: {help}");
        }
        assert_eq!(default.interval, Duration::from_secs(30));
        assert_eq!(default.max_size, 64 << 20);
        assert_eq!(default.min_duration, Duration::from_secs(1));
        assert_eq!(default.request_timeout, Duration::from_secs(5));
        assert_eq!(default.pyroscope_interval, Duration::from_secs(60));
        assert_eq!(
            (default.stuck_after, default.stuck_repeat),
            (Duration::from_secs(30), Duration::from_secs(600))
        );
    }

    /// dist/daemon.toml documents every key, with its default: uncommented, it
    /// parses to the defaults.
    #[test]
    fn the_example_file_has_every_key_with_its_default() {
        let example = include_str!("../../../dist/daemon.toml");
        let uncommented: String = example
            .lines()
            .filter_map(|line| line.strip_prefix('#').filter(|rest| rest.contains(" = ")))
            .map(|line| format!("{line}\n"))
            .collect();
        let file = parsed(&uncommented).unwrap();
        let mut config = Config::resolve(&Settings::default(), &file).unwrap();
        assert_eq!(config.pyroscope_url.take().as_deref(), Some("http://127.0.0.1:4040"));
        assert_eq!(config.sample.take(), Some(Duration::from_secs(1)));
        assert_eq!(config, Config::default());
        let keys: Vec<&str> =
            uncommented.lines().filter_map(|line| line.split_once(" = ")).map(|(key, _)| key).collect();
        use clap::CommandFactory as _;
        let mut command = crate::cli::Cli::command();
        let daemon = command.find_subcommand_mut("daemon").unwrap();
        for arg in daemon.get_arguments() {
            let Some(flag) = arg.get_long() else { continue };
            if flag != "config" && flag != "help" {
                assert!(keys.contains(&flag), "dist/daemon.toml does not document {flag}");
            }
        }
    }
}
