//! Wall-clock helpers: Unix timestamps and the two text formats the fakes emit
//! (ISO 8601 `Z` for AWS `Expiration`, kubelet's `2006_01_02_15_04_05` directory stamps).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whole seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    since_epoch(SystemTime::now()).as_secs()
}

/// Seconds since the Unix epoch with sub-second precision (used in request logs).
pub(crate) fn unix_now_f64() -> f64 {
    since_epoch(SystemTime::now()).as_secs_f64()
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// `(year, month, day, hour, minute, second)` in UTC for a Unix timestamp.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm; 719_468 shifts the epoch to 0000-03-01,
    // 146_097 is the number of days in a 400-year Gregorian cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the format STS uses for `Expiration`.
pub(crate) fn iso8601(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// kubelet's AtomicWriter directory stamp, `2026_11_22_08_30_00.123456789` (UTC, nanoseconds).
pub(crate) fn kubelet_stamp(t: SystemTime) -> String {
    let since = since_epoch(t);
    let (y, mo, d, h, mi, s) = civil(since.as_secs());
    format!(
        "{y:04}_{mo:02}_{d:02}_{h:02}_{mi:02}_{s:02}.{:09}",
        since.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_653_479_117), "2022-05-25T11:45:17Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(1_795_336_200, 123_456_789);
        assert_eq!(kubelet_stamp(t), "2026_11_22_08_30_00.123456789");
    }
}
