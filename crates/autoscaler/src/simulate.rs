//! `inferlb autoscale simulate`: a load trace replayed through the declared
//! file's policies by the [`engine`](crate::engine), minute by minute.
//!
//! The trace is CSV with a header: `time` (RFC 3339, or seconds from the
//! start) and one load column, `invocations` (per minute) or `concurrency`
//! (requests in flight); a `metric` column, when present, is what a
//! customized-metric policy sees. Each policy's metric is derived from the
//! load and the capacity *in service* at that minute (invocations per
//! instance, concurrent requests per copy). Load above what the in-service
//! capacity serves (`capacity_per_instance` each) is unserved.

use std::path::Path;

use serde::Serialize;

use crate::aas::{Activity, AlarmOverrides, Assumptions, Engine, Metrics};
use crate::model::{Target, BACKLOG_METRIC};

/// What the trace's load column counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadKind {
    /// Invocations per minute.
    Invocations,
    /// Requests in flight.
    Concurrency,
}

/// One row of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the start of the trace.
    pub at_s: i64,
    pub load: f64,
    /// A customized metric's value, when the trace gives one.
    pub metric: Option<f64>,
}

/// A parsed trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub kind: LoadKind,
    /// The wall-clock start (seconds since the epoch), for schedules: the
    /// first RFC 3339 time, or [`FIXED_START`] for a trace of seconds (never
    /// "now", so a replay is the same every time).
    pub start_epoch: i64,
    /// The start is a real time (RFC 3339 times, or `--start`): a target
    /// with scheduled actions needs one.
    pub absolute: bool,
    pub samples: Vec<Sample>,
}

/// Why a trace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read the trace {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("trace line {line}: {reason}")]
    Row { line: usize, reason: String },
    #[error("the trace needs a header with `time` and `invocations` or `concurrency`")]
    Header,
    #[error("the trace has no rows")]
    Empty,
}

impl Trace {
    /// Reads a CSV trace.
    pub fn load(path: &Path) -> Result<Self, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|e| TraceError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// Parses CSV text.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(text.as_bytes());
        let headers = reader.headers().map_err(|_| TraceError::Header)?.clone();
        let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
        let time = column("time").ok_or(TraceError::Header)?;
        let (kind, load) = match (column("invocations"), column("concurrency")) {
            (Some(i), _) => (LoadKind::Invocations, i),
            (None, Some(c)) => (LoadKind::Concurrency, c),
            (None, None) => return Err(TraceError::Header),
        };
        let metric = column("metric");
        let mut samples = Vec::new();
        let mut start_epoch = None;
        for (i, record) in reader.records().enumerate() {
            let line = i + 2;
            let record = record.map_err(|e| TraceError::Row {
                line,
                reason: e.to_string(),
            })?;
            let field = |at: usize| record.get(at).unwrap_or("");
            let number = |at: usize, what: &str| {
                field(at)
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| TraceError::Row {
                        line,
                        reason: format!("{what} {:?} is not a number of 0 or more", field(at)),
                    })
            };
            let at_s = match field(time).parse::<f64>() {
                Ok(s) => s as i64,
                Err(_) => {
                    let epoch =
                        crate::plan::epoch_seconds(field(time)).ok_or_else(|| TraceError::Row {
                            line,
                            reason: format!(
                                "time {:?} is neither RFC 3339 nor seconds",
                                field(time)
                            ),
                        })?;
                    let start = *start_epoch.get_or_insert(epoch);
                    epoch - start
                }
            };
            if samples.last().is_some_and(|s: &Sample| s.at_s > at_s) {
                return Err(TraceError::Row {
                    line,
                    reason: "times must not go backwards".into(),
                });
            }
            samples.push(Sample {
                at_s,
                load: number(load, "load")?,
                metric: metric.map(|m| number(m, "metric")).transpose()?,
            });
        }
        if samples.is_empty() {
            return Err(TraceError::Empty);
        }
        Ok(Self {
            kind,
            absolute: start_epoch.is_some(),
            start_epoch: start_epoch.unwrap_or(FIXED_START),
            samples,
        })
    }

    /// The sample in force at `at_s` (the latest at or before it).
    fn at(&self, at_s: i64) -> Sample {
        let i = self.samples.partition_point(|s| s.at_s <= at_s);
        self.samples[i.saturating_sub(1)]
    }

    /// Minutes the trace covers (its last time, rounded up, plus one).
    pub fn minutes(&self) -> i64 {
        self.samples.last().map_or(0, |s| s.at_s / 60 + 1)
    }
}

/// Where a trace of seconds starts when nothing says: Monday 2026-01-05
/// 00:00 UTC, printed with the results.
pub const FIXED_START: i64 = 1_767_571_200;

/// How far back a replay looks for the scheduled actions in force at its
/// start.
const SCHEDULE_LOOKBACK_S: i64 = 400 * 86_400;

fn is_provisioned(target: &Target) -> bool {
    target.dimension().as_deref() == Some(crate::model::PROVISIONED_CONCURRENCY_DIMENSION)
}

/// Why a trace cannot be replayed through a target.
pub fn replay_problem(target: &Target, trace: &Trace) -> Option<String> {
    if is_provisioned(target) && trace.kind != LoadKind::Concurrency {
        return Some(format!(
            "{} scales provisioned concurrency, which counts concurrent invocations: give the trace a `concurrency` column",
            target.resource_id
        ));
    }
    if !target.scheduled.is_empty() && !trace.absolute {
        return Some(format!(
            "{} has scheduled actions, which fire at wall-clock times: give the trace RFC 3339 times or --start",
            target.resource_id
        ));
    }
    target.scheduled.iter().find_map(crate::aas::model_problem)
}

/// How the simulation runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Options {
    /// What one instance or copy serves: invocations per minute, or
    /// concurrent requests (the trace's kind).
    pub capacity_per_instance: f64,
    /// Time from a scale-out until the new capacity serves.
    pub provision_delay_s: i64,
    /// Capacity at the start (clamped into [min, max]).
    pub start_capacity: i32,
    /// Changes to the target-tracking alarms' defaults.
    pub alarms: AlarmOverrides,
    /// What the model assumes where AWS publishes no rule.
    pub assumptions: Assumptions,
}

impl Options {
    /// The settings and assumptions a result rests on, one per line, for
    /// the top of a report.
    pub fn describe(&self, target: &Target) -> String {
        let engine = Engine::new(target, 1, 0).with_alarms(self.alarms);
        let alarms = engine.tracking_alarms();
        let mut out = format!(
            "capacity per instance: {}\nprovisioning delay: {} s\nstart capacity: {}\n",
            self.capacity_per_instance, self.provision_delay_s, self.start_capacity
        );
        for (name, a) in alarms {
            out.push_str(&format!(
                "policy {name:?}: scale out after {} datapoints of {} s above target; scale in after {} datapoints of {} s below {} x target\n",
                a.scale_out_datapoints,
                a.scale_out_period_s,
                a.scale_in_datapoints,
                a.scale_in_period_s,
                a.scale_in_ratio
            ));
        }
        let a = &self.assumptions;
        out.push_str("assumptions (AWS publishes no rule for these):\n");
        out.push_str(&format!(
            "  scale-in step: {}\n",
            a.scale_in_step.map_or(
                "none: straight to ceil(in service x metric / target)".to_owned(),
                |n| format!("at most {n} per scale-in")
            )
        ));
        out.push_str(&format!(
            "  scale-in waits for a scale-out cooldown: {}\n",
            if a.scale_in_waits_for_scale_out_cooldown {
                "yes"
            } else {
                "no"
            }
        ));
        out.push_str(&format!(
            "  busy (no dynamic scaling) while capacity provisions: {}\n",
            if a.busy_while_provisioning {
                "yes (SageMaker endpoint Updating)"
            } else {
                "no"
            }
        ));
        out
    }
}

/// One minute of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Seconds from the start.
    pub t: i64,
    pub load: f64,
    /// The first target-tracking policy's metric (or the recipe's); `None`
    /// when it has no datapoint (nothing in service).
    pub metric: Option<f64>,
    pub desired: i32,
    pub in_service: i32,
    pub unserved: f64,
    /// Load above a serverless endpoint's provisioned concurrency: served,
    /// with cold starts (it is not unserved).
    pub cold_start: f64,
    /// What AAS did, with its reasons; empty when nothing.
    pub activity: String,
}

/// The totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub scale_outs: usize,
    pub scale_ins: usize,
    pub peak: i32,
    /// Desired capacity over time (provisioning units are billed too).
    pub instance_hours: f64,
    pub unserved_minutes: usize,
    /// Unserved load over all load.
    pub unserved_share: f64,
    /// Load served with cold starts (above provisioned concurrency) over
    /// all load.
    pub cold_start_share: f64,
    /// From the first minute with unserved load to the first minute after it
    /// with enough capacity; `None` when there was none, or it never came.
    pub time_to_capacity_s: Option<i64>,
    /// Load went unserved and capacity never caught up before the trace
    /// ended; `capped`: the capacity was at its max then.
    pub never_caught_up: bool,
    pub capped: bool,
}

/// The result of a simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Simulation {
    pub timeline: Vec<Row>,
    pub summary: Summary,
    /// What the model assumed (see [`Assumptions`]).
    pub assumptions: Assumptions,
}

/// Replays `trace` through `target`'s policies: one row a minute, the
/// engine stepped as often as its finest alarm period needs (every 10
/// seconds for a high-resolution metric).
pub fn run(target: &Target, trace: &Trace, options: Options) -> Simulation {
    let engine = Engine::new(target, options.start_capacity, options.provision_delay_s)
        .with_alarms(options.alarms)
        .with_assumptions(options.assumptions);
    let tick_s = engine.finest_period_s().clamp(1, 60);
    let tick_s = if 60 % tick_s == 0 { tick_s } else { 1 };
    let mut engine = engine.with_tick(tick_s);
    // The min/max the schedule's last firings before the trace set.
    if !target.scheduled.is_empty() {
        let (min, max) = crate::aas::bounds_at(target, trace.start_epoch, SCHEDULE_LOOKBACK_S);
        engine.set_bounds(trace.start_epoch, min, max, String::new());
    }
    let ticks = 60 / tick_s;
    let mut timeline = Vec::new();
    let mut activities: Vec<Activity> = Vec::new();
    let recipe_metric = target.alarm().map(|a| a.metric_name);
    let share = tick_s as f64 / 60.0;
    // A serverless variant's provisioned concurrency: each unit serves one
    // concurrent invocation, and invocations above it are served on demand,
    // with a cold start ("Automatically scale Provisioned Concurrency for a
    // serverless endpoint", SageMaker developer guide).
    let provisioned = is_provisioned(target);
    for minute in 0..trace.minutes() {
        let mut row = Row {
            t: minute * 60,
            load: 0.0,
            metric: None,
            desired: 0,
            in_service: 0,
            unserved: 0.0,
            cold_start: 0.0,
            activity: String::new(),
        };
        let mut acts = Vec::new();
        for tick in 0..ticks {
            let t = minute * 60 + tick * tick_s;
            let sample = trace.at(t);
            let in_service = engine.in_service();
            // With nothing in service a per-instance metric has no value
            // (CloudWatch reports INSUFFICIENT_DATA): no alarm moves on it.
            let per = if in_service == 0 {
                f64::NAN
            } else {
                sample.load / f64::from(in_service)
            };
            let tracking: Vec<f64> = target
                .target_tracking
                .iter()
                .map(|p| match (&p.predefined_metric, sample.metric) {
                    (None, Some(metric)) => metric,
                    (Some(name), _) if name.ends_with("Utilization") => {
                        per / options.capacity_per_instance.max(f64::MIN_POSITIVE)
                    }
                    // Otherwise the per-instance load, whichever kind the
                    // trace counts.
                    _ => per,
                })
                .collect();
            // Requests that found no capacity in this tick.
            let failed = match trace.kind {
                LoadKind::Invocations => sample.load * share,
                LoadKind::Concurrency => sample.load,
            };
            let recipe = match recipe_metric {
                Some(BACKLOG_METRIC) => f64::from(u8::from(in_service == 0 && sample.load > 0.0)),
                Some(_) if in_service == 0 => failed,
                _ => 0.0,
            };
            acts.extend(engine.step(
                trace.start_epoch + t,
                &Metrics {
                    tracking: tracking.clone(),
                    recipe,
                },
            ));
            let served = f64::from(engine.in_service()) * options.capacity_per_instance;
            row.load += sample.load / ticks as f64;
            let excess = (sample.load - served).max(0.0) / ticks as f64;
            if provisioned {
                row.cold_start += excess;
            } else {
                row.unserved += excess;
            }
            row.metric = tracking
                .first()
                .copied()
                .or(Some(recipe))
                .filter(|m| m.is_finite());
        }
        row.desired = engine.desired();
        row.in_service = engine.in_service();
        row.activity = acts
            .iter()
            .map(|a| format!("{} -> {}: {}", a.from, a.to, a.reason))
            .collect::<Vec<_>>()
            .join("; ");
        timeline.push(row);
        activities.extend(acts);
    }
    let summary = summarize(&timeline, &activities, engine.bounds().1);
    Simulation {
        timeline,
        summary,
        assumptions: options.assumptions,
    }
}

fn summarize(timeline: &[Row], activities: &[Activity], max: i32) -> Summary {
    let total_load: f64 = timeline.iter().map(|r| r.load).sum();
    let total_unserved: f64 = timeline.iter().map(|r| r.unserved).sum();
    let first_short = timeline.iter().position(|r| r.unserved > 0.0);
    let time_to_capacity_s = first_short.and_then(|i| {
        timeline[i..]
            .iter()
            .find(|r| r.unserved == 0.0)
            .map(|r| r.t - timeline[i].t)
    });
    Summary {
        scale_outs: activities.iter().filter(|a| a.to > a.from).count(),
        scale_ins: activities.iter().filter(|a| a.to < a.from).count(),
        peak: timeline.iter().map(|r| r.desired).max().unwrap_or(0),
        instance_hours: timeline.iter().map(|r| f64::from(r.desired)).sum::<f64>() / 60.0,
        unserved_minutes: timeline.iter().filter(|r| r.unserved > 0.0).count(),
        unserved_share: if total_load > 0.0 {
            total_unserved / total_load
        } else {
            0.0
        },
        cold_start_share: if total_load > 0.0 {
            timeline.iter().map(|r| r.cold_start).sum::<f64>() / total_load
        } else {
            0.0
        },
        time_to_capacity_s,
        never_caught_up: first_short.is_some() && time_to_capacity_s.is_none(),
        capped: first_short.is_some()
            && time_to_capacity_s.is_none()
            && timeline.last().is_some_and(|r| r.desired >= max),
    }
}

/// The timeline as a fixed-width table, then the summary.
pub fn render(simulation: &Simulation) -> String {
    let mut out = format!(
        "{:>7}  {:>10}  {:>9}  {:>7}  {:>10}  {:>9}  ACTIVITY\n",
        "MINUTE", "LOAD", "METRIC", "DESIRED", "IN SERVICE", "UNSERVED"
    );
    for r in &simulation.timeline {
        out.push_str(&format!(
            "{:>7}  {:>10.1}  {:>9}  {:>7}  {:>10}  {:>9.1}  {}\n",
            r.t / 60,
            r.load,
            r.metric.map_or("-".to_owned(), |m| format!("{m:.2}")),
            r.desired,
            r.in_service,
            r.unserved,
            r.activity
        ));
    }
    let s = &simulation.summary;
    out.push_str(&format!(
        "\nscale-outs {}, scale-ins {}, peak {}, instance-hours {:.2}, unserved minutes {} ({:.2}% of load), time to capacity {}\n",
        s.scale_outs,
        s.scale_ins,
        s.peak,
        s.instance_hours,
        s.unserved_minutes,
        s.unserved_share * 100.0,
        match (s.time_to_capacity_s, s.never_caught_up, s.capped) {
            (Some(t), _, _) => format!("{t} s"),
            (None, true, true) => "never (capped at max)".to_owned(),
            (None, true, false) => "never (the trace ended first)".to_owned(),
            (None, false, _) => "- (no shortfall)".to_owned(),
        }
    ));
    if s.cold_start_share > 0.0 {
        out.push_str(&format!(
            "served with cold starts (above provisioned concurrency): {:.2}% of load\n",
            s.cold_start_share * 100.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AutoscalingFile;

    const FILE: &str = r#"
[[targets]]
resource_id = "endpoint/ep/variant/v"
min_capacity = 1
max_capacity = 10
[[targets.target_tracking]]
name = "tt"
predefined_metric = "SageMakerVariantInvocationsPerInstance"
target_value = 100.0
scale_in_cooldown_s = 300
"#;

    fn options() -> Options {
        Options {
            capacity_per_instance: 120.0,
            provision_delay_s: 300,
            start_capacity: 1,
            alarms: AlarmOverrides::default(),
            assumptions: Assumptions::default(),
        }
    }

    #[test]
    fn a_spike_is_unserved_until_capacity_arrives() {
        let target = AutoscalingFile::from_toml(FILE).unwrap().targets.remove(0);
        let trace = Trace::parse("time,invocations\n0,50\n600,800\n3000,50\n3600,50\n").unwrap();
        let sim = run(&target, &trace, options());
        assert_eq!(sim.timeline.len() as i64, trace.minutes());
        let s = &sim.summary;
        assert!(s.scale_outs >= 1 && s.scale_ins >= 1, "{s:?}");
        assert!(s.unserved_minutes > 0);
        // Three datapoints (the spike's first minute and two more), then
        // five minutes of provisioning.
        assert_eq!(s.time_to_capacity_s, Some(7 * 60), "{s:?}");
        assert!(s.peak >= 7, "800 per minute at 100 per instance: {s:?}");
        let json = serde_json::to_value(&sim).unwrap();
        for key in [
            "t",
            "load",
            "metric",
            "desired",
            "in_service",
            "unserved",
            "activity",
        ] {
            assert!(json["timeline"][0].get(key).is_some(), "{key}");
        }
        for key in [
            "scale_outs",
            "scale_ins",
            "peak",
            "instance_hours",
            "unserved_minutes",
            "unserved_share",
            "time_to_capacity_s",
        ] {
            assert!(json["summary"].get(key).is_some(), "{key}");
        }
        assert!(render(&sim).contains("scale-outs"));
    }

    // "Define a scaling policy" (SageMaker): a high-resolution metric scales
    // out on 10-second datapoints. The same spike on the same target value
    // triggers at 20 s instead of 120 s into it (3 × 10 s instead of 3 × 60 s
    // datapoints), so capacity arrives a whole minute row sooner.
    #[test]
    fn a_high_resolution_policy_reaches_capacity_sooner() {
        let high = FILE
            .replace(
                "SageMakerVariantInvocationsPerInstance",
                "SageMakerVariantConcurrentRequestsPerModelHighResolution",
            )
            .replace("100.0", "4.0");
        let target = AutoscalingFile::from_toml(&high).unwrap().targets.remove(0);
        let trace = Trace::parse("time,concurrency\n0,2\n600,20\n1800,2\n").unwrap();
        let options = Options {
            capacity_per_instance: 5.0,
            provision_delay_s: 60,
            ..options()
        };
        let fast = run(&target, &trace, options);
        let slow = run(
            &target,
            &trace,
            Options {
                alarms: AlarmOverrides {
                    scale_out_period_s: Some(60),
                    ..AlarmOverrides::default()
                },
                ..options
            },
        );
        assert_eq!(fast.timeline.len(), slow.timeline.len());
        let (fast, slow) = (
            fast.summary.time_to_capacity_s.unwrap(),
            slow.summary.time_to_capacity_s.unwrap(),
        );
        assert_eq!((fast, slow), (120, 180));
    }

    #[test]
    fn traces_are_checked_line_by_line() {
        assert!(matches!(
            Trace::parse("when,load\n0,1\n"),
            Err(TraceError::Header)
        ));
        let err = Trace::parse("time,invocations\n0,1\n60,x\n").unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        let err = Trace::parse("time,invocations\n60,1\n0,1\n").unwrap_err();
        assert!(err.to_string().contains("backwards"), "{err}");
        let t = Trace::parse("time,concurrency\n2026-11-30T07:00:00Z,3\n2026-11-30T07:10:00Z,5\n")
            .unwrap();
        assert_eq!(
            (t.kind, t.samples[1].at_s, t.start_epoch),
            (LoadKind::Concurrency, 600, 1_796_022_000)
        );
    }

    /// A replay starts with the min/max the schedule's last firings before
    /// the trace set; a trace of seconds through such a target is refused.
    #[test]
    fn a_replay_starts_inside_the_schedule_in_force() {
        let file = format!(
            "{FILE}[[targets.scheduled]]\nname = \"day\"\nschedule = \"cron(0 8 * * ? *)\"\nmin_capacity = 3\n"
        );
        let target = AutoscalingFile::from_toml(&file).unwrap().targets.remove(0);
        let relative = Trace::parse("time,invocations\n0,50\n600,50\n").unwrap();
        assert!(replay_problem(&target, &relative).is_some());
        let morning =
            Trace::parse("time,invocations\n2026-01-05T09:00:00Z,50\n2026-01-05T09:10:00Z,50\n")
                .unwrap();
        assert!(replay_problem(&target, &morning).is_none());
        let sim = run(&target, &morning, options());
        assert_eq!(sim.timeline[0].desired, 3, "the 08:00 action's min");
        let night =
            Trace::parse("time,invocations\n2026-01-05T07:00:00Z,50\n2026-01-05T07:10:00Z,50\n")
                .unwrap();
        // Before 08:00 that day, the previous day's firing is in force too.
        assert_eq!(run(&target, &night, options()).timeline[0].desired, 3);
    }

    /// "Automatically scale Provisioned Concurrency for a serverless
    /// endpoint" (SageMaker developer guide): provisioned concurrency counts
    /// concurrent invocations; those above it are served on demand, with a
    /// cold start, not left unserved.
    #[test]
    fn provisioned_concurrency_serves_the_excess_with_cold_starts() {
        let file = r#"
[[targets]]
resource_id = "endpoint/sl/variant/AllTraffic"
scalable_dimension = "sagemaker:variant:DesiredProvisionedConcurrency"
min_capacity = 2
max_capacity = 20
[[targets.target_tracking]]
name = "pc"
predefined_metric = "SageMakerVariantProvisionedConcurrencyUtilization"
target_value = 0.7
"#;
        let target = AutoscalingFile::from_toml(file).unwrap().targets.remove(0);
        let invocations = Trace::parse("time,invocations\n0,5\n").unwrap();
        assert!(replay_problem(&target, &invocations).is_some());
        let trace = Trace::parse("time,concurrency\n0,2\n300,10\n1800,10\n").unwrap();
        assert!(replay_problem(&target, &trace).is_none());
        let sim = run(
            &target,
            &trace,
            Options {
                capacity_per_instance: 1.0,
                start_capacity: 2,
                ..options()
            },
        );
        let s = &sim.summary;
        assert_eq!(s.unserved_minutes, 0, "{s:?}");
        assert!(s.cold_start_share > 0.0, "{s:?}");
        assert!(
            s.peak >= 10,
            "utilization 10 / 2 over 0.7 scales out: {s:?}"
        );
        assert!(render(&sim).contains("cold starts"));
    }

    /// A shortfall the capacity never catches up with says so, and says
    /// whether the max held it back.
    #[test]
    fn time_to_capacity_says_never_when_capped() {
        let target =
            AutoscalingFile::from_toml(&FILE.replace("max_capacity = 10", "max_capacity = 2"))
                .unwrap()
                .targets
                .remove(0);
        let trace = Trace::parse("time,invocations\n0,900\n3600,900\n").unwrap();
        let sim = run(&target, &trace, options());
        assert!(
            sim.summary.never_caught_up && sim.summary.capped,
            "{:?}",
            sim.summary
        );
        assert!(render(&sim).contains("time to capacity never (capped at max)"));
    }
}
