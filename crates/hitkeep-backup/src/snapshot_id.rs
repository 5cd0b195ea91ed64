//! Snapshot ids: the cycle's start time in UTC, `YYYY-MM-DDTHHMMSSZ`, as HitKeep names its folders.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;

/// A snapshot id such as `2026-03-08T120000Z`. Ids sort by time, as strings and as values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(Timestamp);

const FORMAT: &str = "%Y-%m-%dT%H%M%SZ";

impl SnapshotId {
    /// The id for `time`, truncated to the second.
    pub fn at(time: Timestamp) -> Self {
        SnapshotId(
            Timestamp::from_second(time.as_second())
                .expect("a whole second of a valid timestamp is valid"),
        )
    }

    /// The id for now.
    pub fn now() -> Self {
        SnapshotId::at(Timestamp::now())
    }

    /// The time the id stands for.
    pub fn timestamp(self) -> Timestamp {
        self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.strftime(FORMAT))
    }
}

/// Not a snapshot id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a snapshot id: expected YYYY-MM-DDTHHMMSSZ, e.g. 2026-03-08T120000Z")]
pub struct SnapshotIdError(String);

impl FromStr for SnapshotId {
    type Err = SnapshotIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SnapshotIdError(s.to_owned());
        let civil = s
            .strip_suffix('Z')
            .filter(|c| c.len() == 17)
            .ok_or_else(bad)?;
        let time = jiff::civil::DateTime::strptime("%Y-%m-%dT%H%M%S", civil)
            .and_then(|dt| jiff::tz::TimeZone::UTC.to_timestamp(dt))
            .map_err(|_| bad())?;
        let id = SnapshotId(time);
        // Reject spellings that parse but are not canonical, so one snapshot has one name.
        if id.to_string() != s {
            return Err(bad());
        }
        Ok(id)
    }
}

impl serde::Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SnapshotId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_order() {
        let id: SnapshotId = "2026-03-08T120000Z".parse().unwrap();
        assert_eq!(id.to_string(), "2026-03-08T120000Z");
        let later: SnapshotId = "2026-03-08T120001Z".parse().unwrap();
        assert!(later > id);
        for bad in [
            "2026-03-08",
            "2026-03-08T12:00:00Z",
            "2026-13-08T120000Z",
            "x026-03-08T120000Z",
            "2026-03-08T120000z",
        ] {
            assert!(bad.parse::<SnapshotId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn truncates_to_the_second() {
        let t: Timestamp = "2026-03-08T12:00:00.987Z".parse().unwrap();
        assert_eq!(SnapshotId::at(t).to_string(), "2026-03-08T120000Z");
    }
}
