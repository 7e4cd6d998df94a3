//! The time, as the provider writes it: milliseconds since 1970 and RFC 3339 (UTC).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now, in milliseconds since 1970.
#[must_use]
pub fn now_ms() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// RFC 3339 (UTC) of a time in milliseconds since 1970.
#[must_use]
pub fn rfc3339_ms(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(rfc3339)
        .unwrap_or_default()
}

/// RFC 3339 in UTC, e.g. `2026-12-10T09:33:04Z`.
#[must_use]
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_in_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_765_359_184_000), "2025-12-10T09:33:04Z");
        let offset = time::macros::datetime!(2026-12-10 10:33:04 +01:00);
        assert_eq!(rfc3339(offset), "2026-12-10T09:33:04Z");
    }
}
