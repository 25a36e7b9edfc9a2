//! When rotations may happen: a cron schedule in a time zone (croner, which follows the Open Cron
//! Pattern Specification and vixie-cron across DST changes), with stable jitter, and maintenance
//! windows (a cron expression for when each window opens, and how long it stays open). Pure: the
//! state machine asks it about instants.

use crate::crd::{ApiKeyRotationSpec, MaintenanceWindow, Schedule};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use sha2::{Digest, Sha256};

/// A parsed `spec.schedule` and `spec.maintenanceWindows`.
#[derive(Clone, Debug, Default)]
pub struct Calendar {
    schedule: Option<Recurring>,
    jitter_seconds: u32,
    windows: Vec<(Recurring, SignedDuration)>,
}

#[derive(Clone, Debug)]
struct Recurring {
    cron: Cron,
    tz: TimeZone,
}

fn parse_cron(expression: &str, field: &str) -> Result<Cron, String> {
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| format!("{field}: {expression:?} is not a five-field cron expression: {e}"))?;
    if let Some(year) = a_year_without(&cron) {
        return Err(format!(
            "{field}: {expression:?} does not occur in every year (none in {year}); it must run at least once a year"
        ));
    }
    Ok(cron)
}

/// The years checked for an occurrence: 28 consecutive years hold every kind of year (the
/// weekday of January 1st, leap or not) until 2100, so an expression that occurs in each of them
/// occurs in every year.
const CHECKED_YEARS: std::ops::RangeInclusive<i16> = 2001..=2028;

/// A year in which `cron` never occurs (`0 0 30 2 *` never does, `0 0 29 2 *` only in leap
/// years), if any. croner would search up to the year 5000 (and back to year 1 for a window) on
/// each lookup for such an expression; one that occurs every year is always found within two
/// years, so every lookup of a parsed [`Calendar`] is short. Only dates are checked (at the
/// first hour and minute the expression allows): hours and minutes occur every day.
fn a_year_without(cron: &Cron) -> Option<i16> {
    let p = &cron.pattern;
    let hour = (0..24).find(|h| p.hour_match(*h).unwrap_or(false))?;
    let minute = (0..60).find(|m| p.minute_match(*m).unwrap_or(false))?;
    CHECKED_YEARS.into_iter().find(|year| {
        let mut day = jiff::civil::date(*year, 1, 1);
        while day.year() == *year {
            let at = day.at(hour as i8, minute as i8, 0, 0);
            if cron.is_time_matching(&at).unwrap_or(false) {
                return false;
            }
            match day.tomorrow() {
                Ok(next) => day = next,
                Err(_) => break,
            }
        }
        true
    })
}

fn parse_tz(name: &str, field: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| format!("{field}: {name:?} is not an IANA time zone"))
}

impl Recurring {
    fn parse(expression: &str, tz: &str, field: &str) -> Result<Self, String> {
        Ok(Self {
            cron: parse_cron(expression, &format!("{field}.cron"))?,
            tz: parse_tz(tz, &format!("{field}.timeZone"))?,
        })
    }

    fn zoned(&self, t: Timestamp) -> Zoned {
        t.to_zoned(self.tz.clone())
    }

    /// The first occurrence strictly after `t`.
    fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&self.zoned(t), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The last occurrence at or before `t`.
    fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_previous_occurrence(&self.zoned(t), true)
            .ok()
            .map(|z| z.timestamp())
    }
}

impl Calendar {
    /// Parses the spec's schedule and windows; every problem is named with its field.
    pub fn from_spec(spec: &ApiKeyRotationSpec) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let schedule = spec.schedule.as_ref().and_then(|s: &Schedule| {
            Recurring::parse(&s.cron, &s.time_zone, "spec.schedule")
                .map_err(|e| problems.push(e))
                .ok()
        });
        let windows = spec
            .maintenance_windows
            .iter()
            .enumerate()
            .filter_map(|(i, w): (usize, &MaintenanceWindow)| {
                let field = format!("spec.maintenanceWindows[{i}]");
                if !(1..=10_080).contains(&w.duration_minutes) {
                    problems.push(format!(
                        "{field}.durationMinutes: {} is outside 1..=10080",
                        w.duration_minutes
                    ));
                    return None;
                }
                let start = Recurring {
                    cron: parse_cron(&w.start, &format!("{field}.start"))
                        .map_err(|e| problems.push(e))
                        .ok()?,
                    tz: parse_tz(&w.time_zone, &format!("{field}.timeZone"))
                        .map_err(|e| problems.push(e))
                        .ok()?,
                };
                Some((
                    start,
                    SignedDuration::from_mins(i64::from(w.duration_minutes)),
                ))
            })
            .collect();
        if spec.schedule.is_some() && spec.rotation_interval_seconds.is_some() {
            problems.push(
                "spec.schedule and spec.rotationIntervalSeconds: set one or the other".to_string(),
            );
        }
        if problems.is_empty() {
            Ok(Self {
                schedule,
                jitter_seconds: spec.schedule.as_ref().map_or(0, |s| s.jitter_seconds),
                windows,
            })
        } else {
            Err(problems)
        }
    }

    pub fn has_schedule(&self) -> bool {
        self.schedule.is_some()
    }

    pub fn has_windows(&self) -> bool {
        !self.windows.is_empty()
    }

    /// The first scheduled rotation after `anchor` (the last rotation), delayed by this
    /// rotation's jitter: a stable share of `jitterSeconds`, derived from `seed` (the rotation's
    /// name) and the scheduled time, so restarts never move it.
    pub fn next_scheduled(&self, anchor: Timestamp, seed: &str) -> Option<Timestamp> {
        let at = self.schedule.as_ref()?.next_after(anchor)?;
        if self.jitter_seconds == 0 {
            return Some(at);
        }
        let digest = Sha256::digest(format!("{seed}@{}", at.as_second()).as_bytes());
        let draw = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        let jitter = draw % (u64::from(self.jitter_seconds) + 1);
        Some(at + SignedDuration::from_secs(jitter as i64))
    }

    /// Whether a rotation or a rollout may start at `t` (always, without windows).
    pub fn window_open(&self, t: Timestamp) -> bool {
        self.windows.is_empty() || self.open_window_end(t).is_some()
    }

    /// When the window open at `t` closes (the latest end, if windows overlap).
    pub fn open_window_end(&self, t: Timestamp) -> Option<Timestamp> {
        self.windows
            .iter()
            .filter_map(|(start, length)| {
                let opened = start.last_at_or_before(t)?;
                let closes = opened + *length;
                (t < closes).then_some(closes)
            })
            .max()
    }

    /// The earliest instant at or after `t` inside a window (`t` itself when one is open).
    pub fn next_window_open(&self, t: Timestamp) -> Option<Timestamp> {
        if self.window_open(t) {
            return Some(t);
        }
        self.windows
            .iter()
            .filter_map(|(start, _)| start.next_after(t))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> ApiKeyRotationSpec {
        let mut s = serde_json::json!({"valkey": {"url": "redis://v:6379"}});
        json_merge(&mut s, extra);
        serde_json::from_value::<ApiKeyRotationSpec>(s).unwrap()
    }

    fn json_merge(a: &mut serde_json::Value, b: serde_json::Value) {
        if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
            for (k, v) in b {
                a.insert(k, v);
            }
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn calendar(extra: serde_json::Value) -> Calendar {
        Calendar::from_spec(&spec(extra)).unwrap()
    }

    #[test]
    fn a_weekly_schedule_in_a_time_zone() {
        let c = calendar(serde_json::json!({
            "schedule": {"cron": "0 3 * * MON", "timeZone": "Europe/Berlin"}
        }));
        // Monday 2026-11-30 03:00 in Berlin (CET, UTC+1) is 02:00 UTC.
        assert_eq!(
            c.next_scheduled(t("2026-11-26T10:00:00Z"), "ns/a"),
            Some(t("2026-11-30T02:00:00Z"))
        );
        // Strictly after the anchor: a rotation at the scheduled instant waits a week.
        assert_eq!(
            c.next_scheduled(t("2026-11-30T02:00:00Z"), "ns/a"),
            Some(t("2026-12-07T02:00:00Z"))
        );
    }

    #[test]
    fn a_schedule_inside_the_spring_forward_gap_runs_right_after_it_once() {
        // Europe/Berlin skips 02:00-03:00 on 2027-03-28; 02:30 does not exist that day.
        let c = calendar(serde_json::json!({
            "schedule": {"cron": "30 2 * * *", "timeZone": "Europe/Berlin"}
        }));
        let before = c.next_scheduled(t("2027-03-27T12:00:00Z"), "x").unwrap();
        // 03:00 CEST is 01:00 UTC: the first valid minute after the gap.
        assert_eq!(before, t("2027-03-28T01:00:00Z"));
        // The next day is back to 02:30 CEST = 00:30 UTC.
        assert_eq!(
            c.next_scheduled(before, "x"),
            Some(t("2027-03-29T00:30:00Z"))
        );
    }

    #[test]
    fn a_schedule_inside_the_fall_back_overlap_runs_once() {
        // Europe/Berlin repeats 02:00-03:00 on 2026-10-25; 02:30 happens twice.
        let c = calendar(serde_json::json!({
            "schedule": {"cron": "30 2 * * *", "timeZone": "Europe/Berlin"}
        }));
        let first = c.next_scheduled(t("2026-10-24T12:00:00Z"), "x").unwrap();
        assert_eq!(first, t("2026-10-25T00:30:00Z")); // 02:30 CEST
        let second = c.next_scheduled(first, "x").unwrap();
        assert_eq!(second, t("2026-10-26T01:30:00Z"), "not again at 02:30 CET");
    }

    #[test]
    fn jitter_is_bounded_and_stable() {
        let c = calendar(serde_json::json!({
            "schedule": {"cron": "0 3 * * *", "jitterSeconds": 600}
        }));
        let anchor = t("2026-11-26T10:00:00Z");
        let base = t("2026-11-27T03:00:00Z");
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..50 {
            let seed = format!("ns/rotation-{i}");
            let at = c.next_scheduled(anchor, &seed).unwrap();
            assert!(at >= base && at <= base + SignedDuration::from_secs(600));
            assert_eq!(c.next_scheduled(anchor, &seed), Some(at), "stable");
            seen.insert(at);
        }
        assert!(seen.len() > 20, "jitter spreads rotations: {}", seen.len());
    }

    #[test]
    fn windows_open_and_close() {
        let c = calendar(serde_json::json!({
            "maintenanceWindows": [{"start": "0 2 * * SAT,SUN", "durationMinutes": 120, "timeZone": "America/New_York"}]
        }));
        // Saturday 2026-11-28 02:00 EST = 07:00 UTC, until 09:00 UTC.
        assert!(!c.window_open(t("2026-11-28T06:59:59Z")));
        assert!(c.window_open(t("2026-11-28T07:00:00Z")));
        assert_eq!(
            c.open_window_end(t("2026-11-28T08:00:00Z")),
            Some(t("2026-11-28T09:00:00Z"))
        );
        assert!(!c.window_open(t("2026-11-28T09:00:00Z")));
        assert_eq!(
            c.next_window_open(t("2026-11-28T09:00:00Z")),
            Some(t("2026-11-29T07:00:00Z"))
        );
        assert_eq!(
            c.next_window_open(t("2026-11-28T08:00:00Z")),
            Some(t("2026-11-28T08:00:00Z"))
        );
        // Without windows, always open.
        assert!(calendar(serde_json::json!({})).window_open(t("2026-11-28T06:00:00Z")));
    }

    #[test]
    fn a_window_across_the_fall_back_change_lasts_its_real_duration() {
        // 01:00 local on 2026-11-01 in New York, 3 hours: the clock falls back at 02:00 EDT.
        let c = calendar(serde_json::json!({
            "maintenanceWindows": [{"start": "0 1 1 11 *", "durationMinutes": 180, "timeZone": "America/New_York"}]
        }));
        // Opens 01:00 EDT = 05:00 UTC, closes 3 real hours later at 08:00 UTC (03:00 EST).
        assert!(c.window_open(t("2026-11-01T05:00:00Z")));
        assert!(c.window_open(t("2026-11-01T07:59:59Z")));
        assert!(!c.window_open(t("2026-11-01T08:00:00Z")));
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        let problems = Calendar::from_spec(&spec(serde_json::json!({
            "schedule": {"cron": "every monday", "timeZone": "Mars/Olympus"},
            "rotationIntervalSeconds": 86400,
            "maintenanceWindows": [
                {"start": "0 2 * * *", "durationMinutes": 0},
                {"start": "61 2 * * *", "durationMinutes": 60},
                {"start": "0 2 * * *", "durationMinutes": 60, "timeZone": "Nowhere"}
            ]
        })))
        .unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "spec.schedule.cron",
            "spec.maintenanceWindows[0].durationMinutes",
            "spec.maintenanceWindows[1].start",
            "spec.maintenanceWindows[2].timeZone",
            "set one or the other",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        // The schedule's bad time zone is reported once the cron parses.
        let problems = Calendar::from_spec(&spec(serde_json::json!({
            "schedule": {"cron": "@weekly", "timeZone": "Mars/Olympus"}
        })))
        .unwrap_err();
        assert!(
            problems[0].contains("spec.schedule.timeZone"),
            "{problems:?}"
        );
    }

    #[test]
    fn expressions_that_skip_a_year_are_refused() {
        for (cron, why) in [
            ("0 0 30 2 *", "never (February 30th)"),
            ("0 0 31 4 *", "never (April 31st)"),
            ("0 0 29 2 *", "leap years only"),
            (
                "0 0 * 2 MON#5",
                "a fifth Monday in February: some leap years only",
            ),
        ] {
            let problems = Calendar::from_spec(&spec(serde_json::json!({
                "schedule": {"cron": cron},
                "maintenanceWindows": [{"start": cron, "durationMinutes": 60}]
            })))
            .unwrap_err();
            assert_eq!(problems.len(), 2, "{cron} ({why}): {problems:?}");
            assert!(
                problems[0].starts_with("spec.schedule.cron:")
                    && problems[0].contains("does not occur in every year"),
                "{cron}: {problems:?}"
            );
            assert!(
                problems[1].starts_with("spec.maintenanceWindows[0].start:"),
                "{cron}: {problems:?}"
            );
        }
    }

    #[test]
    fn rare_but_yearly_expressions_are_kept_and_found_within_a_year() {
        for (cron, from, next) in [
            (
                "0 0 31 12 *",
                "2026-01-01T00:00:00Z",
                "2026-12-31T00:00:00Z",
            ),
            ("@yearly", "2026-01-01T02:00:00Z", "2027-01-01T00:00:00Z"),
            ("0 0 L 2 *", "2027-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            // Day of month OR day of week (vixie-cron): every Friday, not only the 13th.
            (
                "0 0 13 * FRI",
                "2026-11-26T00:00:00Z",
                "2026-11-27T00:00:00Z",
            ),
            (
                "0 0 * * MON#5",
                "2026-11-26T00:00:00Z",
                "2026-11-30T00:00:00Z",
            ),
        ] {
            let c = calendar(serde_json::json!({
                "schedule": {"cron": cron},
                "maintenanceWindows": [{"start": cron, "durationMinutes": 60}]
            }));
            assert_eq!(c.next_scheduled(t(from), "x"), Some(t(next)), "{cron}");
            assert_eq!(c.next_window_open(t(from)), Some(t(next)), "{cron}");
        }
    }
}
