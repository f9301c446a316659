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
        // A cron action with a start time also runs at the start time.
        if start.is_some_and(|s| s > from && s <= to && in_window(s)) {
            return true;
        }
        let Some(schedule) = parse_cron(cron) else {
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

/// AAS's six cron fields (minutes hours day-of-month month day-of-week
/// year) with a seconds field in front, as the cron crate reads them.
fn parse_cron(cron: &str) -> Option<cron::Schedule> {
    cron::Schedule::from_str(&format!("0 {cron}")).ok()
}

/// Why the model cannot replay an action that AWS would run: a cron
/// expression with `L`, `W` or `#` (last day, nearest weekday, nth weekday),
/// which the model's cron reader does not know. `simulate` and local pools
/// refuse such an action rather than never firing it.
pub fn model_problem(action: &Scheduled) -> Option<String> {
    let cron = action
        .schedule
        .strip_prefix("cron(")
        .and_then(|s| s.strip_suffix(')'))?;
    parse_cron(cron).is_none().then(|| {
        format!(
            "scheduled action {:?}: {:?} cannot be replayed (the model reads no L, W or #); AWS runs it, simulate cannot",
            action.name, action.schedule
        )
    })
}

/// The last time `action` fired at or before `now`, looking back at most
/// `lookback_s`.
pub fn last_firing(action: &Scheduled, now: i64, lookback_s: i64) -> Option<i64> {
    const DAY: i64 = 86_400;
    let mut to = now;
    while to > now - lookback_s {
        let from = to - DAY;
        if fires(action, from, to) {
            // The latest firing t in (from, to]: `fires(x, to)` holds for
            // every x below t and for none from t on.
            let (mut lo, mut hi) = (from, to);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fires(action, mid, to) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            return Some(hi);
        }
        to = from;
    }
    None
}

/// The min and max in force at `now`: the declared ones, changed by each
/// scheduled action's last firing (in the order they fired) over the past
/// `lookback_s`, as a target registered now should get them.
pub fn bounds_at(target: &crate::model::Target, now: i64, lookback_s: i64) -> (i32, i32) {
    let mut fired: Vec<(i64, &Scheduled)> = target
        .scheduled
        .iter()
        .filter_map(|a| last_firing(a, now, lookback_s).map(|t| (t, a)))
        .collect();
    fired.sort_by_key(|(t, _)| *t);
    let (mut min, mut max) = (target.min_capacity, target.max_capacity);
    for (_, action) in fired {
        if let Some(m) = action.min_capacity {
            min = m;
        }
        if let Some(m) = action.max_capacity {
            max = m;
        }
        if min > max {
            max = min;
        }
    }
    (min, max)
}
