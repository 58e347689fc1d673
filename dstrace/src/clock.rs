//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time, and
//! durations as people read them and as the JSON schema writes them: shared by
//! every stage, so it depends on none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds of a clock, from `clock_gettime`.
fn clock_ns(clock: libc::clockid_t) -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec that outlives the call.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec.max(0) as u128) * 1_000_000_000 + ts.tv_nsec.max(0) as u128
}

/// CLOCK_MONOTONIC now, in the kernel side's unit.
pub fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(u64::MAX)
}

/// Converts monotonic timestamps to wall-clock time, with the offset between the
/// two clocks taken once.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    /// Takes the offset now.
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC) as i128;
        let real = clock_ns(libc::CLOCK_REALTIME) as i128;
        Clock { offset_ns: real - mono }
    }

    /// A clock whose wall time is `offset_ns` ahead of the monotonic one (tests).
    pub fn with_offset(offset_ns: i128) -> Clock {
        Clock { offset_ns }
    }

    /// The wall-clock time of a monotonic timestamp.
    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        let ns = (monotonic_ns as i128 + self.offset_ns).max(0);
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// `HH:MM:SS.uuuuuu` in the local time zone.
pub fn local_time_of_day(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs() as libc::time_t;
    // SAFETY: `tm` is plain data, zero is a valid value for it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to initialized values that outlive the call;
    // localtime_r is the thread-safe variant.
    let converted = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    let (h, m, s) = if converted {
        (tm.tm_hour as u64, tm.tm_min as u64, tm.tm_sec as u64)
    } else {
        let day = since_epoch.as_secs() % 86_400;
        (day / 3600, day / 60 % 60, day % 60)
    };
    format!("{h:02}:{m:02}:{s:02}.{:06}", since_epoch.subsec_micros())
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-22T03:14:07.123456Z`.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_micros()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration in nanoseconds, saturating (for the kernel side's `u64` fields).
pub fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A duration for people: `850us`, `12.3ms`, `2.004s`, `4m03s`, `2h05m`.
pub fn human_duration(ns: u64) -> String {
    match ns {
        0..1_000_000 => format!("{}us", ns / 1000),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        1_000_000_000..60_000_000_000 => format!("{:.3}s", ns as f64 / 1e9),
        60_000_000_000..3_600_000_000_000 => {
            format!("{}m{:02}s", ns / 60_000_000_000, ns / 1_000_000_000 % 60)
        }
        _ => format!("{}h{:02}m", ns / 3_600_000_000_000, ns / 60_000_000_000 % 60),
    }
}

/// Nanoseconds as the milliseconds of the JSON schema (microsecond precision).
pub fn json_ms(ns: u64) -> f64 {
    (ns / 1_000) as f64 / 1_000.0
}

/// Serializes nanoseconds as [`json_ms`] (for `#[serde(serialize_with)]`).
pub fn serialize_ms<S: serde::Serializer>(ns: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(json_ms(*ns))
}

/// As [`serialize_ms`], `null` for `None`.
pub fn serialize_opt_ms<S: serde::Serializer>(ns: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match ns {
        Some(ns) => serializer.serialize_f64(json_ms(*ns)),
        None => serializer.serialize_none(),
    }
}

/// An interval whose first tick comes after one period, and that does not catch
/// up on ticks it missed (a recording interval, a screen refresh).
pub fn ticks(period: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456);
        assert_eq!(rfc3339_utc(t), "2026-11-18T11:06:40.123456Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn wall_clock_from_monotonic() {
        let clock = Clock::with_offset(1_000_000_000);
        assert_eq!(clock.wall(500), UNIX_EPOCH + Duration::from_nanos(1_000_000_500));
        let now = Clock::now();
        let drift = now.wall(monotonic_ns()).duration_since(SystemTime::now()).unwrap_or_default();
        assert!(drift < Duration::from_secs(1));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(850_000), "850us");
        assert_eq!(human_duration(12_340_000), "12.3ms");
        assert_eq!(human_duration(2_004_000_000), "2.004s");
        assert_eq!(human_duration(243_000_000_000), "4m03s");
        assert_eq!(human_duration(7_500_000_000_000), "2h05m");
    }

    #[test]
    fn time_of_day_shape() {
        let text = local_time_of_day(SystemTime::now());
        assert_eq!(text.len(), 15, "{text}");
        assert_eq!(&text[2..3], ":");
    }
}
