//! The caller's deadline, from the `grpc-timeout` request header. tonic already drops a
//! handler whose deadline passed and answers the client; the deadline is also handed to
//! the store so that the *database* stops working for a caller that is gone (a
//! transition waiting on a row lock would otherwise wait on after the client left).

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

/// When the call must be answered by, if the client set a deadline.
pub(super) fn from_metadata(metadata: &MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_timeout(value).map(|timeout| Instant::now() + timeout)
}

/// `grpc-timeout` is 1–8 ASCII digits and a unit: H, M, S, m (milli), u (micro), n (nano).
/// Anything else is ignored (tonic itself refuses a malformed value before the handler).
pub(crate) fn parse_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_timeout;
    use std::time::Duration;

    #[test]
    fn every_unit_of_grpc_timeout_is_understood() {
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(
            parse_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_timeout("5n"), Some(Duration::from_nanos(5)));
    }

    #[test]
    fn malformed_timeouts_are_ignored() {
        for bad in ["", "m", "10", "10x", "-1m", "123456789m", "1.5S", " 1S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }
}
