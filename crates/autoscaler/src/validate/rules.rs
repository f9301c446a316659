//! Field-level rules of Application Auto Scaling: names, schedule
//! expressions, times, time zones, steps.

use super::*;

/// Policy and scheduled-action names: 1 to 256 printable characters, no
/// `:`, `/` or `|`, no leading or trailing space (Application Auto Scaling's
/// rules; the ARN uses `:` and `/` as separators).
pub(super) fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.chars().count() > 256 {
        return Some(format!("{name:?} must be 1 to 256 characters long"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, ':' | '/' | '|'))
    {
        return Some(format!(
            "{name:?} may not contain ':', '/', '|' or control characters"
        ));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Some(format!("{name:?} may not start or end with a space"));
    }
    None
}

pub(super) fn is_rfc3339(text: &str) -> bool {
    humantime::parse_rfc3339_weak(text).is_ok()
}

/// `at(...)`, `rate(...)` or `cron(...)` as Application Auto Scaling reads them.
pub fn schedule_problem(schedule: &str) -> Option<String> {
    let inner = |prefix: &str| {
        schedule
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(')'))
    };
    if let Some(at) = inner("at(") {
        let ok = at.len() == 19 && at.as_bytes()[10] == b'T' && is_rfc3339(&format!("{at}Z"));
        return (!ok).then(|| format!("{schedule:?}: at() takes yyyy-mm-ddThh:mm:ss"));
    }
    if let Some(rate) = inner("rate(") {
        let mut parts = rate.split_whitespace();
        let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
            return Some(format!(
                "{schedule:?}: rate() takes a number and a unit, e.g. rate(5 minutes)"
            ));
        };
        let Ok(n) = n.parse::<u32>() else {
            return Some(format!(
                "{schedule:?}: the rate must be a positive whole number"
            ));
        };
        let expected = match (n, unit) {
            (0, _) => return Some(format!("{schedule:?}: the rate must be above 0")),
            (1, "minute" | "hour" | "day") => true,
            (n, "minutes" | "hours" | "days") if n > 1 => true,
            _ => false,
        };
        return (!expected).then(|| {
            format!("{schedule:?}: the unit must be minute, hour or day (plural above 1), e.g. rate(1 hour), rate(5 minutes)")
        });
    }
    if let Some(cron) = inner("cron(") {
        let fields: Vec<&str> = cron.split_whitespace().collect();
        if fields.len() != 6 {
            return Some(format!(
                "{schedule:?}: cron() takes six fields: minutes hours day-of-month month day-of-week year"
            ));
        }
        let allowed = |f: &str| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || ",-*/?LW#".contains(c))
        };
        if let Some(bad) = fields.iter().find(|f| !allowed(f)) {
            return Some(format!("{schedule:?}: {bad:?} is not a cron field"));
        }
        // Day-of-month and day-of-week cannot both be given: exactly one
        // of them is '?' (EventBridge cron rules, which AAS follows).
        if (fields[2] == "?") == (fields[4] == "?") {
            return Some(format!(
                "{schedule:?}: exactly one of day-of-month and day-of-week must be '?'"
            ));
        }
        return None;
    }
    Some(format!(
        "{schedule:?} is not at(...), rate(...) or cron(...)"
    ))
}

/// Steps must cover one contiguous range: sorted, no overlaps, no gaps, at
/// most one open end on each side; and the sign rules of Application Auto
/// Scaling's `StepAdjustment` (API reference): a step with neither bound is
/// refused, a negative lower bound needs a step whose lower bound is null,
/// a positive upper bound needs a step whose upper bound is null, and
/// `ExactCapacity` takes no negative adjustment.
pub(super) fn steps_problem(steps: &[Step], adjustment_type: &str) -> Option<String> {
    if steps.is_empty() {
        return Some("at least one step is needed".into());
    }
    if steps
        .iter()
        .any(|s| s.lower_bound.is_none() && s.upper_bound.is_none())
    {
        return Some(
            "a step needs a lower or an upper bound (relative to the alarm threshold)".into(),
        );
    }
    if steps.iter().any(|s| s.lower_bound.is_some_and(|l| l < 0.0))
        && !steps.iter().any(|s| s.lower_bound.is_none())
    {
        return Some(
            "a negative lower bound needs a step whose lower bound is absent (minus infinity)"
                .into(),
        );
    }
    if steps.iter().any(|s| s.upper_bound.is_some_and(|u| u > 0.0))
        && !steps.iter().any(|s| s.upper_bound.is_none())
    {
        return Some(
            "a positive upper bound needs a step whose upper bound is absent (plus infinity)"
                .into(),
        );
    }
    if adjustment_type == "ExactCapacity" && steps.iter().any(|s| s.adjustment < 0) {
        return Some("ExactCapacity sets a capacity: adjustments cannot be negative".into());
    }
    let mut sorted: Vec<&Step> = steps.iter().collect();
    sorted.sort_by(|a, b| {
        let (a, b) = (
            a.lower_bound.unwrap_or(f64::NEG_INFINITY),
            b.lower_bound.unwrap_or(f64::NEG_INFINITY),
        );
        a.total_cmp(&b)
    });
    for (i, step) in sorted.iter().enumerate() {
        let lower = step.lower_bound.unwrap_or(f64::NEG_INFINITY);
        let upper = step.upper_bound.unwrap_or(f64::INFINITY);
        if lower >= upper {
            return Some(format!(
                "step [{lower}, {upper}) is empty: the lower bound must be below the upper"
            ));
        }
        if step.lower_bound.is_none() && i > 0 {
            return Some("only one step may omit its lower bound".into());
        }
        if let Some(next) = sorted.get(i + 1) {
            let next_lower = next.lower_bound.unwrap_or(f64::NEG_INFINITY);
            if next_lower < upper {
                return Some(format!(
                    "steps overlap: [{lower}, {upper}) and one from {next_lower}"
                ));
            }
            if next_lower > upper {
                return Some(format!(
                    "steps leave a gap between {upper} and {next_lower}"
                ));
            }
            if step.upper_bound.is_none() {
                return Some("only the last step may omit its upper bound".into());
            }
        }
    }
    None
}

/// An IANA time zone name (the tz database Application Auto Scaling reads
/// `Timezone` from: "Scheduled scaling", user guide), e.g. `Europe/Berlin`
/// or `UTC`; a misspelt one is refused rather than read as UTC.
pub(super) fn is_time_zone(tz: &str) -> bool {
    tz.parse::<chrono_tz::Tz>().is_ok()
}
