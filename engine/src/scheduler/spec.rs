//! Schedule specs: a cron expression evaluated in a time zone (DST-correct: the zone's rules at
//! each instant, never a fixed offset) or a fixed interval aligned to the Unix epoch.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

#[derive(Debug, Clone)]
pub enum Spec {
    Cron {
        cron: Box<Cron>,
        tz: Tz,
        text: String,
    },
    Every(Duration),
}

impl Spec {
    pub fn cron(text: &str, tz: Tz) -> Result<Self, crate::Invalid> {
        let cron = Cron::new(text)
            .with_seconds_optional()
            .parse()
            .map_err(|e| crate::Invalid::new(format!("invalid cron expression {text:?}: {e}")))?;
        Ok(Self::Cron {
            cron: Box::new(cron),
            tz,
            text: text.to_string(),
        })
    }

    pub fn every(d: Duration) -> Result<Self, crate::Invalid> {
        if d < Duration::from_secs(1) {
            return Err(crate::Invalid::at("every", "must be at least 1s"));
        }
        Ok(Self::Every(d))
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Cron { text, tz, .. } => format!("cron {text} ({tz})"),
            Self::Every(d) => format!("every {}", crate::duration::format_duration(*d)),
        }
    }

    /// First tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every(d) => {
                let ms = i64::try_from(d.as_millis()).ok()?;
                let k = t.timestamp_millis().div_euclid(ms) + 1;
                DateTime::from_timestamp_millis(k.checked_mul(ms)?)
            }
            Self::Cron { cron, tz, .. } => cron
                .find_next_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|n| n.with_timezone(&Utc)),
        }
    }

    /// Latest tick at or before `now`, looking back at most `horizon`.
    pub fn latest_at_or_before(
        &self,
        now: DateTime<Utc>,
        horizon: Duration,
    ) -> Option<DateTime<Utc>> {
        match self {
            Self::Every(d) => {
                let ms = i64::try_from(d.as_millis()).ok()?;
                let tick = DateTime::from_timestamp_millis(
                    now.timestamp_millis().div_euclid(ms).checked_mul(ms)?,
                )?;
                (now - tick <= chrono::Duration::from_std(horizon).ok()?).then_some(tick)
            }
            Self::Cron { cron, tz, .. } => {
                // Widen the window backwards until it holds a tick, then walk forward to the last
                // one not after `now`: a handful of cron evaluations, whatever the schedule.
                let mut window = Duration::from_secs(1);
                loop {
                    if window > horizon.saturating_mul(2) {
                        return None;
                    }
                    let from = now - chrono::Duration::from_std(window).ok()?;
                    if let Ok(first) =
                        cron.find_next_occurrence(&tz.from_utc_datetime(&from.naive_utc()), true)
                    {
                        let mut cur = first.with_timezone(&Utc);
                        if cur <= now {
                            while let Some(next) = self.next_after(cur).filter(|n| *n <= now) {
                                cur = next;
                            }
                            let age = chrono::Duration::from_std(horizon).ok()?;
                            return (now - cur <= age).then_some(cur);
                        }
                    }
                    window = window.saturating_mul(2);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let s = Spec::every(Duration::from_secs(300)).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:07:00Z")),
            Some(utc("2026-01-01T00:10:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-01-01T00:07:00Z"), Duration::from_secs(3600)),
            Some(utc("2026-01-01T00:05:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-01-01T00:07:00Z"), Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn daily_two_am_in_berlin_follows_daylight_saving() {
        let s = Spec::cron("0 2 * * *", chrono_tz::Europe::Berlin).unwrap();
        // Winter: CET = UTC+1; summer: CEST = UTC+2. Clocks go forward on 2026-03-29.
        assert_eq!(
            s.next_after(utc("2026-03-27T12:00:00Z")),
            Some(utc("2026-03-28T01:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-03-29T12:00:00Z")),
            Some(utc("2026-03-30T00:00:00Z"))
        );
        // And back on 2026-10-25.
        assert_eq!(
            s.next_after(utc("2026-10-25T12:00:00Z")),
            Some(utc("2026-10-26T01:00:00Z"))
        );
    }

    #[test]
    fn new_york_spring_forward_and_fall_back() {
        let s = Spec::cron("30 9 * * *", chrono_tz::America::New_York).unwrap();
        // EST (UTC-5) before 2026-03-08, EDT (UTC-4) after; back to EST on 2026-11-01.
        assert_eq!(
            s.next_after(utc("2026-03-07T00:00:00Z")),
            Some(utc("2026-03-07T14:30:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-03-08T00:00:00Z")),
            Some(utc("2026-03-08T13:30:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-11-01T00:00:00Z")),
            Some(utc("2026-11-01T14:30:00Z"))
        );
        // A time that does not exist on the spring-forward day (02:30) still yields one tick
        // that day, not a crash or a skipped schedule forever.
        let gap = Spec::cron("30 2 * * *", chrono_tz::America::New_York).unwrap();
        let t = gap.next_after(utc("2026-03-08T00:00:00Z")).unwrap();
        assert!(
            t > utc("2026-03-08T06:00:00Z") && t < utc("2026-03-09T08:00:00Z"),
            "{t}"
        );
    }

    #[test]
    fn latest_tick_of_a_cron() {
        let s = Spec::cron("*/15 * * * *", chrono_tz::UTC).unwrap();
        assert_eq!(
            s.latest_at_or_before(utc("2026-05-01T10:20:00Z"), Duration::from_secs(3600)),
            Some(utc("2026-05-01T10:15:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-05-01T10:15:00Z"), Duration::from_secs(3600)),
            Some(utc("2026-05-01T10:15:00Z"))
        );
        let daily = Spec::cron("0 2 * * *", chrono_tz::UTC).unwrap();
        assert_eq!(
            daily.latest_at_or_before(utc("2026-05-01T10:20:00Z"), Duration::from_secs(60)),
            None
        );
        assert_eq!(
            daily.latest_at_or_before(utc("2026-05-01T10:20:00Z"), Duration::from_secs(86_400)),
            Some(utc("2026-05-01T02:00:00Z"))
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(Spec::cron("61 * * * *", chrono_tz::UTC).is_err());
        assert!(Spec::cron("not cron", chrono_tz::UTC).is_err());
        assert!(Spec::every(Duration::from_millis(10)).is_err());
    }
}
