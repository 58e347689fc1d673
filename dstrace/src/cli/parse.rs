//! The value parsers of the command line (and of the daemon's TOML file, which
//! goes through the same ones): durations, sizes, the ring buffer's size, cgroups,
//! and the times of `report --since`.

use std::time::{Duration, SystemTime};

/// The default `--min-duration` of `dstrace run`.
pub const DEFAULT_MIN_DURATION: &str = "1ms";

/// The longest duration any flag or key takes: ten years. Far past any use, and
/// far below what breaks the arithmetic that follows (a deadline `now + d`, a
/// connection's lifetime of ten request timeouts, nanoseconds in a `u64`: 584
/// years), so no duration given can overflow it.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// [`MAX_DURATION`] as the errors say it.
pub const MAX_DURATION_TEXT: &str = "3650d (10 years)";

/// Parses durations such as `1ms`, `250us`, `2s`, `1m30s`, or a bare `0`, at most
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("{err} (examples: 500us, 10ms, 2s, 1m; at most {MAX_DURATION_TEXT})"))?;
    if duration > MAX_DURATION {
        return Err(format!("too long: give at most {MAX_DURATION_TEXT}"));
    }
    Ok(duration)
}

/// Parses `--ring-buffer-kib`: a power of two, at least one page, at most 1 GiB.
pub fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text.parse().map_err(|_| format!("{text:?} is not a number of KiB"))?;
    // SAFETY: sysconf has no preconditions.
    let page_kib = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) / 1024) as u32;
    if !kib.is_power_of_two() || kib < page_kib || kib > 1 << 20 {
        return Err(format!(
            "{kib} KiB: the ring buffer takes a power of two from {page_kib} to 1048576 KiB"
        ));
    }
    Ok(kib)
}

/// Parses a size: bytes, or with a unit (k, M, G: powers of 1024; KiB, MiB, GiB
/// and KB, MB, GB alike).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a size (examples: 100MiB, 1GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?}: unknown unit (examples: 100MiB, 1GiB, 500k)")),
    };
    let size = number.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))?;
    if size < 4096 {
        return Err(format!("{text:?}: a recording file needs at least 4 KiB"));
    }
    Ok(size)
}

/// A cgroup v2 id: a number as is, or the inode number of a cgroup directory given
/// by its path, absolute or relative to where cgroup v2 is mounted (cgroupfs is
/// never a filesystem under diagnosis, so it may be looked at).
pub fn cgroup_id(cgroup: &str) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(id) = cgroup.parse() {
        return Ok(id);
    }
    let mounts = crate::resolve::mounts::read()?;
    let Some(root) = crate::resolve::mounts::cgroup2_root(&mounts) else {
        anyhow::bail!("--cgroup {cgroup}: cgroup v2 is not mounted; give a cgroup id instead");
    };
    let path = if cgroup.starts_with('/') { std::path::PathBuf::from(cgroup) } else { root.join(cgroup) };
    if !path.starts_with(root) {
        anyhow::bail!("--cgroup {cgroup}: not under {}, where cgroup v2 is mounted", root.display());
    }
    let meta = std::fs::metadata(&path)
        .map_err(|err| anyhow::anyhow!("--cgroup {cgroup}: {}: {err}", path.display()))?;
    Ok(meta.ino())
}

/// Parses `--since`/`--until`: RFC 3339, or a duration before `end`.
pub fn parse_time(text: &str, end: SystemTime) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    match parse_duration(text) {
        Ok(ago) => Ok(end.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)),
        Err(_) => Err(format!(
            "{text:?} is neither a time (e.g. 2026-11-22T03:14:00Z) nor a duration before the end of the \
             recording (e.g. 10m)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
        for huge in
            ["3651d", "9223372036854775808s", "18446744073709551615s", "1e400s", "99999999999999999999999s"]
        {
            let err = parse_duration(huge).unwrap_err();
            assert!(err.contains(MAX_DURATION_TEXT) && !err.contains('\n'), "{huge}: {err}");
        }
    }

    #[test]
    fn ring_buffer_sizes() {
        assert_eq!(parse_ring_kib("2048"), Ok(2048));
        assert_eq!(parse_ring_kib("4"), Ok(4));
        assert!(parse_ring_kib("3").unwrap_err().contains("power of two"));
        assert!(parse_ring_kib("1").is_err());
        assert!(parse_ring_kib("lots").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("500k"), Ok(500 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("12").unwrap_err().contains("at least 4 KiB"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999G").unwrap_err().contains("too large"));
    }

    #[test]
    fn times_are_rfc3339_or_before_the_end() {
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_time("10m", end), Ok(end - Duration::from_secs(600)));
        assert_eq!(
            parse_time("1970-01-12T13:46:40Z", end),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        );
        assert!(parse_time("yesterday", end).unwrap_err().contains("neither a time"));
    }
}
