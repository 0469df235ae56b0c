//! Value parsers shared by several subcommands.

use stamp_core::entitlement::{DeviceKeyType, RatePeriod};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Parses `N/minute`, `N/hour` or `N/day`.
pub fn parse_rate(s: &str) -> Result<(RatePeriod, u64), String> {
    let (n, period) = parse_per_period(s)?;
    if n == 0 {
        return Err("a rate limit must allow at least 1 device".into());
    }
    Ok((period, n))
}

/// `N/PERIOD` for `--renewals`: at most N renewals per device per minute, hour or day (0: none).
pub fn parse_renewals(s: &str) -> Result<stamp_core::entitlement::RenewalLimit, String> {
    let (n, period) = parse_per_period(s)?;
    let count = u32::try_from(n)
        .ok()
        .filter(|n| *n <= stamp_core::entitlement::MAX_RENEWALS_PER_PERIOD)
        .ok_or("at most 1000 renewals per device per period")?;
    Ok(stamp_core::entitlement::RenewalLimit { count, period })
}

fn parse_per_period(s: &str) -> Result<(u64, RatePeriod), String> {
    let (n, period) = s.split_once('/').ok_or("expected N/minute, N/hour or N/day")?;
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} is not a whole number"))?;
    let period = match period.trim() {
        "minute" | "min" | "m" => RatePeriod::Minute,
        "hour" | "h" => RatePeriod::Hour,
        "day" | "d" => RatePeriod::Day,
        other => return Err(format!("unknown period {other:?}: use minute, hour or day")),
    };
    Ok((n, period))
}

/// Parses an RFC 3339 time (`2026-12-01T08:00:00Z`) or a date (`2026-12-01`, midnight UTC).
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| {
            format!("{s:?} is not a time: use RFC 3339 (2026-12-01T08:00:00Z) or a date (2026-12-01)")
        })
}

/// Parses a duration: a whole number and a unit, `s`, `m`, `h` or `d` (`36h`, `7d`, `0s`).
pub fn parse_duration(s: &str) -> Result<time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .ok()
        .filter(|n| *n <= 100 * 365 * 86_400)
        .ok_or_else(|| format!("{s:?} is not a duration: use a whole number and s, m, h or d (e.g. 7d)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "{s:?} is not a duration: use a whole number and s, m, h or d (e.g. 7d)"
            ))
        }
    };
    Ok(time::Duration::seconds(secs))
}

/// Parses `KEY=VALUE`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    if k.is_empty() {
        return Err("empty key".into());
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Parses `NAME:BYTES` (a secret's name and length, 1 to 256 bytes).
pub fn parse_secret(s: &str) -> Result<(String, usize), String> {
    let (name, len) = s.rsplit_once(':').ok_or("expected NAME:BYTES")?;
    let len: usize = len
        .parse()
        .map_err(|_| format!("{len:?} is not a number of bytes"))?;
    if name.is_empty() || name.len() > 64 || !(1..=256).contains(&len) {
        return Err("a secret needs a name of 1-64 characters and 1 to 256 bytes".into());
    }
    Ok((name.to_owned(), len))
}

/// A device key type by its name: p256, p384, ed25519, rsa2048, rsa3072 or rsa4096 (the names of
/// [`DeviceKeyType::ALL`], the one list).
pub fn parse_key_type(s: &str) -> Result<DeviceKeyType, String> {
    DeviceKeyType::ALL
        .into_iter()
        .find(|k| k.name() == s.trim())
        .ok_or_else(|| {
            let names: Vec<&str> = DeviceKeyType::ALL.iter().map(|k| k.name()).collect();
            format!("unknown key type {s:?}: use {}", names.join(", "))
        })
}

/// A key type HQ can generate for devices that cannot make their own: p256, p384 or ed25519.
pub fn parse_hq_key_type(s: &str) -> Result<DeviceKeyType, String> {
    match parse_key_type(s)? {
        k @ (DeviceKeyType::P256 | DeviceKeyType::P384 | DeviceKeyType::Ed25519) => Ok(k),
        k => Err(format!(
            "HQ does not generate {} device keys: use p256, p384 or ed25519",
            k.name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), time::Duration::days(7));
        assert_eq!(parse_duration("36h").unwrap(), time::Duration::hours(36));
        assert_eq!(parse_duration("15m").unwrap(), time::Duration::minutes(15));
        assert_eq!(parse_duration("0s").unwrap(), time::Duration::ZERO);
        for bad in ["", "7", "d", "-1d", "1.5d", "7 days", "7w", "99999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_times_and_pairs() {
        assert_eq!(parse_rate("60/minute").unwrap(), (RatePeriod::Minute, 60));
        assert_eq!(parse_rate("5000/day").unwrap(), (RatePeriod::Day, 5000));
        assert!(parse_rate("0/day").is_err());
        assert!(parse_rate("10/week").is_err());
        assert!(parse_rate("ten/day").is_err());
        assert_eq!(parse_time("2026-12-01").unwrap().unix_timestamp(), 1_796_083_200);
        assert!(parse_time("2026-12-01T08:00:00Z").is_ok());
        assert!(parse_time("tomorrow").is_err());
        assert_eq!(parse_key_value("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_key_value("=x").is_err());
        assert_eq!(parse_secret("flash-key:32").unwrap(), ("flash-key".into(), 32));
        assert!(parse_secret("x:0").is_err() && parse_secret("x:257").is_err() && parse_secret("x").is_err());
    }

    #[test]
    fn key_types_are_parsed_by_their_names_and_hq_generates_only_what_it_can() {
        for k in DeviceKeyType::ALL {
            assert_eq!(parse_key_type(k.name()), Ok(k));
        }
        assert!(parse_key_type("rsa1024")
            .unwrap_err()
            .contains("p256, p384, ed25519"));
        assert_eq!(parse_hq_key_type("ed25519"), Ok(DeviceKeyType::Ed25519));
        assert!(parse_hq_key_type("rsa2048")
            .unwrap_err()
            .contains("does not generate rsa2048"));
    }
}
