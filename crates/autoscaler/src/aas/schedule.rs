//! When a scheduled action fires: `at`, `rate` and `cron` expressions in
//! their time zone, within their start and end time.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};

use crate::model::Scheduled;

/// Parses an RFC 3339 time to seconds since the epoch.
pub(super) fn epoch(text: &str) -> Option<i64> {
    crate::plan::epoch_seconds(text)
}

/// Whether a scheduled action fires in `(from, to]` (seconds since the
/// epoch), in its time zone and within its start and end time.
pub fn fires(action: &Scheduled, from: i64, to: i64) -> bool {
    let start = action.start_time.as_deref().and_then(epoch);
    let end = action.end_time.as_deref().and_then(epoch);
    let zone: chrono_tz::Tz = action
        .timezone
        .as_deref()
        .and_then(|z| z.parse().ok())
        .unwrap_or(chrono_tz::UTC);
    let inner = |prefix: &str| {
        action
            .schedule
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(')'))
    };
    let in_window = |t: i64| start.is_none_or(|s| t >= s) && end.is_none_or(|e| t <= e);
    if let Some(at) = inner("at(") {
        let Ok(local) = chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%S") else {
            return false;
        };
        let Some(t) = zone.from_local_datetime(&local).earliest() else {
            return false;
        };
        let t = t.timestamp();
        return t > from && t <= to && in_window(t);
    }
    if let Some(rate) = inner("rate(") {
        let mut parts = rate.split_whitespace();
        let (Some(n), Some(unit)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(n) = n.parse::<i64>() else {
            return false;
        };
        let every = n * match unit.trim_end_matches('s') {
            "minute" => 60,
            "hour" => 3600,
            "day" => 86_400,
            _ => return false,
        };
        // From the start time, or the epoch when there is none.
        let origin = start.unwrap_or(0);
        if every <= 0 || to < origin {
            return false;
        }
        let k = (to - origin) / every;
        let t = origin + k * every;
        return t > from && in_window(t);
    }
    if let Some(cron) = inner("cron(") {
        // AAS's six fields (minutes hours day-of-month month day-of-week
        // year) with a seconds field in front, as the cron crate reads them.
        let Ok(schedule) = cron::Schedule::from_str(&format!("0 {cron}")) else {
            return false;
        };
        let Some(after) = DateTime::<Utc>::from_timestamp(from, 0) else {
            return false;
        };
        let after = after.with_timezone(&zone);
        return schedule
            .after(&after)
            .next()
            .map(|t| t.timestamp())
            .is_some_and(|t| t <= to && in_window(t));
    }
    false
}
