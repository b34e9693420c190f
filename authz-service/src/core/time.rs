//! RFC 3339 UTC timestamps without a date crate (AuditEvent `recorded`, the `/connections`
//! status page).

/// `2026-12-01T19:53:23Z` for seconds since the Unix epoch.
pub fn rfc3339(unix_secs: u64) -> String {
    let (date, time) = civil(unix_secs);
    format!("{date}T{time}Z")
}

/// `2026-12-01T19:53:23.123Z` for milliseconds since the Unix epoch.
pub fn rfc3339_millis(unix_ms: u64) -> String {
    let (date, time) = civil(unix_ms / 1000);
    format!("{date}T{time}.{:03}Z", unix_ms % 1000)
}

/// (`YYYY-MM-DD`, `hh:mm:ss`) in UTC.
fn civil(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_763_464_000), "2025-11-18T11:06:40Z");
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339_millis(1_796_154_803_007),
            "2026-12-01T19:53:23.007Z"
        );
        // The last second of a leap day and the first of the next year.
        assert_eq!(rfc3339(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339(1_798_761_600), "2027-01-01T00:00:00Z");
    }
}
