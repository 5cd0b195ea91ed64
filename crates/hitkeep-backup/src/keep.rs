//! Retention beyond a count: restic's `keep-last`, `keep-hourly`, `keep-daily`, `keep-weekly` and
//! `keep-monthly`, and pins (`pins/{id}.json`) that no policy deletes.
//!
//! A period rule keeps, going from the newest cycle back, the first cycle it meets in each period
//! (the newest of that period), until it has kept its count: "the last N days that have a cycle".
//! Periods are UTC calendar hours, days, ISO weeks and months of the snapshot id's time (the claim
//! makes ids unique per source). The rules and the newest-N count are a union: a cycle any of
//! them keeps stays.

use std::collections::{BTreeSet, HashSet};

use hitkeep_storage::{ListMode, Storage};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::SnapshotId;
use crate::error::{Error, Result};

/// Where pins are stored, one object per pinned cycle.
pub const PINS_FOLDER: &str = "pins";

/// Restic's period rules; zero turns a rule off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Keep {
    /// The newest N cycles.
    pub last: u32,
    /// The newest cycle of each of the last N hours that have one.
    pub hourly: u32,
    /// Of each of the last N days.
    pub daily: u32,
    /// Of each of the last N ISO weeks.
    pub weekly: u32,
    /// Of each of the last N months.
    pub monthly: u32,
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
}

impl Keep {
    /// A policy of the five rules.
    pub fn new(last: u32, hourly: u32, daily: u32, weekly: u32, monthly: u32) -> Keep {
        Keep {
            last,
            hourly,
            daily,
            weekly,
            monthly,
        }
    }

    /// Whether no rule is on.
    pub fn is_empty(&self) -> bool {
        *self == Keep::default()
    }

    /// The cycles the rules keep, of `newest_first` (in the order they ran, newest first).
    pub(crate) fn select(&self, newest_first: &[SnapshotId]) -> HashSet<SnapshotId> {
        let mut kept: HashSet<SnapshotId> = newest_first
            .iter()
            .take(usize::try_from(self.last).unwrap_or(usize::MAX))
            .copied()
            .collect();
        let rules = [
            (self.hourly, Period::Hour),
            (self.daily, Period::Day),
            (self.weekly, Period::Week),
            (self.monthly, Period::Month),
        ];
        for (count, period) in rules {
            let mut left = count;
            let mut last = None;
            for id in newest_first {
                if left == 0 {
                    break;
                }
                let p = period_of(id.timestamp(), period);
                if last != Some(p) {
                    kept.insert(*id);
                    left -= 1;
                    last = Some(p);
                }
            }
        }
        kept
    }
}

/// The UTC period `t` falls in, as a number that differs between periods.
fn period_of(t: Timestamp, period: Period) -> i64 {
    let time = TimeZone::UTC.to_datetime(t);
    let date = time.date();
    let (y, m, d) = (
        i64::from(date.year()),
        i64::from(date.month()),
        i64::from(date.day()),
    );
    match period {
        Period::Hour => ((y * 100 + m) * 100 + d) * 100 + i64::from(time.hour()),
        Period::Day => (y * 100 + m) * 100 + d,
        Period::Week => {
            let week = date.iso_week_date();
            i64::from(week.year()) * 100 + i64::from(week.week())
        }
        Period::Month => y * 100 + m,
    }
}

/// What `pins/{id}.json` says.
#[derive(Debug, Serialize, Deserialize)]
struct PinRecord {
    format: String,
    snapshot: SnapshotId,
    pinned_at: Timestamp,
    host: String,
}

fn pin_key(id: SnapshotId) -> String {
    format!("{PINS_FOLDER}/{id}.json")
}

/// Pins the cycle `id`: no prune deletes it (nor, so, the pool objects it names) until it is
/// unpinned. The caller checks that the cycle exists.
pub async fn pin(storage: &Storage, id: SnapshotId) -> Result<()> {
    let record = PinRecord {
        format: "hitkeep-pin".into(),
        snapshot: id,
        pinned_at: Timestamp::now(),
        host: crate::claim::host_name(),
    };
    let json = serde_json::to_vec_pretty(&record)
        .map_err(|e| Error::Internal(format!("pin record: {e}")))?;
    storage.write(&pin_key(id), json).await?;
    Ok(())
}

/// Unpins `id`; `false` when it was not pinned.
pub async fn unpin(storage: &Storage, id: SnapshotId) -> Result<bool> {
    let key = pin_key(id);
    if storage.stat(&key).await?.is_none() {
        return Ok(false);
    }
    storage.delete(&key).await?;
    Ok(true)
}

/// The pinned cycles. A pin is its object's name: whatever it holds, a pin is never taken for
/// less than it says (its content is for people).
pub(crate) async fn pinned(storage: &Storage) -> Result<BTreeSet<SnapshotId>> {
    let listed = storage.list(PINS_FOLDER, ListMode::OneLevel).await?;
    Ok(listed
        .iter()
        .filter(|e| !e.is_dir)
        .filter_map(|e| e.name().strip_suffix(".json")?.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SnapshotId {
        text.parse().unwrap()
    }

    /// Hourly cycles from 2026-01-01 00:00 to 2026-03-31 23:00, newest first.
    fn hourly_cycles() -> Vec<SnapshotId> {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut ids: Vec<SnapshotId> = (0..90 * 24)
            .map(|h| SnapshotId::at(start + jiff::SignedDuration::from_hours(h)))
            .collect();
        ids.reverse();
        ids
    }

    fn kept(keep: Keep, cycles: &[SnapshotId]) -> Vec<String> {
        let mut kept: Vec<SnapshotId> = keep.select(cycles).into_iter().collect();
        kept.sort();
        kept.into_iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn each_rule_keeps_the_newest_cycle_of_its_last_periods() {
        let cycles = hourly_cycles();
        assert!(Keep::default().select(&cycles).is_empty());
        assert_eq!(
            kept(Keep::new(2, 0, 0, 0, 0), &cycles),
            ["2026-03-31T220000Z", "2026-03-31T230000Z"]
        );
        assert_eq!(
            kept(Keep::new(0, 3, 0, 0, 0), &cycles),
            [
                "2026-03-31T210000Z",
                "2026-03-31T220000Z",
                "2026-03-31T230000Z"
            ]
        );
        assert_eq!(
            kept(Keep::new(0, 0, 2, 0, 0), &cycles),
            ["2026-03-30T230000Z", "2026-03-31T230000Z"]
        );
        // ISO weeks start on Monday: 2026-03-29 is a Sunday, 2026-03-30 a Monday.
        assert_eq!(
            kept(Keep::new(0, 0, 0, 2, 0), &cycles),
            ["2026-03-29T230000Z", "2026-03-31T230000Z"]
        );
        assert_eq!(
            kept(Keep::new(0, 0, 0, 0, 5), &cycles),
            [
                "2026-01-31T230000Z",
                "2026-02-28T230000Z",
                "2026-03-31T230000Z"
            ],
            "months without a cycle are not counted: there are only three"
        );
    }

    #[test]
    fn rules_are_a_union_and_periods_without_a_cycle_are_skipped() {
        // A gap: no cycle on 2026-03-30.
        let cycles: Vec<SnapshotId> = hourly_cycles()
            .into_iter()
            .filter(|c| !c.to_string().starts_with("2026-03-30"))
            .collect();
        assert_eq!(
            kept(Keep::new(1, 0, 3, 0, 1), &cycles),
            [
                "2026-03-28T230000Z",
                "2026-03-29T230000Z",
                "2026-03-31T230000Z"
            ]
        );
        assert_eq!(id("2026-03-31T230000Z"), cycles[0]);
    }
}
