//! Who writes a cycle and under which id. A destination may be shared by mistake (two installations, or
//! two data paths, with one `HITKEEP_BACKUP_PATH`) and the clock may be wrong, so a cycle:
//! - records its installation's [`SourceId`] in `sources/{id}.json` and in every marker and manifest,
//!   and never counts another source's cycles as its own;
//! - numbers its cycles (`sequence`, one more than the source's highest), so "latest" and retention
//!   follow the order cycles really ran in, whatever the clock said when they ran;
//! - refuses to run when its id would sort before the newest cycle and the clock may be what is wrong;
//! - claims its snapshot id with a conditional create of `shared/{id}/in-progress.json`, reads the
//!   marker back (some services ignore the condition), and checks it again before committing.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hitkeep_data::SourceId;
use hitkeep_storage::{ListMode, Storage};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::SnapshotId;
use crate::catalog::{Catalog, SnapshotInfo, SnapshotState};
use crate::error::{Error, Result};
use crate::manifest::{Database, IN_PROGRESS_NAME};

/// Where the sources that write to a destination are recorded, one object each.
pub const SOURCES_FOLDER: &str = "sources";

/// How far ahead of this machine's clock the newest cycle may be before it is taken for one written by
/// a clock set ahead (and passed, with a warning) rather than for a sign that this clock is behind (and
/// refused). A day covers a time zone set wrong, or a VM resumed with a stale clock, which correct
/// themselves; a cycle written a year ahead must not stop backups for a year.
pub const FUTURE_BOUND: SignedDuration = SignedDuration::from_hours(24);

/// What `sources/{id}.json` says about one installation writing to this destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SourceRecord {
    /// Always `hitkeep-source`.
    pub format: String,
    /// The installation's id.
    pub source: SourceId,
    /// The host name it last ran on.
    pub host: String,
    /// Its data path there.
    pub data_path: String,
    /// When it last started a cycle, by its own clock.
    pub updated_at: Timestamp,
}

impl SourceRecord {
    /// This installation, now.
    pub fn here(source: SourceId, data_path: &std::path::Path) -> SourceRecord {
        SourceRecord {
            format: "hitkeep-source".into(),
            source,
            host: host_name(),
            data_path: data_path.display().to_string(),
            updated_at: Timestamp::now(),
        }
    }

    /// One line for a list: id, host, data path, last cycle.
    pub fn describe(&self) -> String {
        format!(
            "{} (host {}, data path {}, last cycle started {})",
            self.source,
            self.host,
            self.data_path,
            self.updated_at.strftime("%Y-%m-%d %H:%M:%SZ")
        )
    }
}

/// Every source recorded in the destination, oldest record first.
pub async fn sources(storage: &Storage) -> Result<Vec<SourceRecord>> {
    let mut records = Vec::new();
    for entry in storage.list(SOURCES_FOLDER, ListMode::OneLevel).await? {
        if entry.is_dir || !entry.key.ends_with(".json") {
            continue;
        }
        match serde_json::from_slice::<SourceRecord>(&storage.read(&entry.key).await?) {
            Ok(r) => records.push(r),
            Err(e) => {
                tracing::warn!(key = entry.key, error = %e, "ignoring an unreadable source record")
            }
        }
    }
    records.sort_by_key(|r| r.updated_at);
    Ok(records)
}

/// The committed cycles of `source` (and those recorded before sources were, when no other source
/// wrote here), as prune and "latest" see them.
pub(crate) fn is_mine(snapshot: &SnapshotInfo, source: SourceId, others_present: bool) -> bool {
    match snapshot.source {
        Some(s) => s == source,
        None => !others_present,
    }
}

/// Whether snapshots of any source but `source` are in `snapshots`.
pub(crate) fn others_present<'a>(
    snapshots: impl IntoIterator<Item = &'a SnapshotInfo>,
    source: SourceId,
) -> bool {
    snapshots
        .into_iter()
        .any(|s| s.source.is_some_and(|other| other != source))
}

/// What a new cycle needs to know of the ones before it.
#[derive(Clone, Debug)]
pub(crate) struct History {
    /// The newest committed cycle id of this source.
    pub newest: Option<SnapshotId>,
    /// The sequence number the new cycle gets.
    pub next_sequence: u64,
}

impl History {
    /// Finds the newest committed cycle of `source` by listing only recent snapshot folders (see
    /// [`Catalog::load_cycle`]); only when that one lies in the future (a clock set ahead) are all the
    /// shared manifests read, for the highest sequence number.
    pub async fn read(storage: &Storage, source: SourceId) -> Result<History> {
        let newest = crate::catalog::newest_complete_by_id(storage, Some(source)).await?;
        let mut sequence = newest
            .as_ref()
            .and_then(SnapshotInfo::sequence)
            .unwrap_or(0);
        if newest.as_ref().is_some_and(SnapshotInfo::in_future) {
            let catalog = Catalog::load_shared(storage).await?;
            let shared = catalog.snapshots(Database::Shared);
            let others = others_present(shared, source);
            sequence = shared
                .iter()
                .filter(|s| s.state == SnapshotState::Complete && is_mine(s, source, others))
                .filter_map(SnapshotInfo::sequence)
                .max()
                .unwrap_or(0);
        }
        Ok(History {
            newest: newest.map(|s| s.id),
            next_sequence: sequence + 1,
        })
    }

    /// Waits out a newest cycle from this very second or the one before (a cycle right after another),
    /// then [`History::check_clock`].
    pub async fn wait_for_clock(&self) -> Result<()> {
        loop {
            let now = SnapshotId::now();
            let close = self.newest.is_some_and(|n| {
                n >= now
                    && n.timestamp().duration_since(now.timestamp()) <= SignedDuration::from_secs(2)
            });
            if !close {
                return self.check_clock(now);
            }
            sleep_to_next_second().await;
        }
    }

    /// Refuses a cycle whose id would not sort after the newest one, unless that one is so far ahead
    /// that it was surely written by a clock set ahead ([`FUTURE_BOUND`]): then warns and goes on, and
    /// the sequence number keeps "latest" and retention right.
    pub fn check_clock(&self, now: SnapshotId) -> Result<()> {
        let Some(newest) = self.newest.filter(|n| *n >= now) else {
            return Ok(());
        };
        let ahead = newest.timestamp().duration_since(now.timestamp());
        if ahead > FUTURE_BOUND {
            tracing::warn!(
                newest = %newest,
                now = %now,
                "the newest snapshot is {} ahead of this machine's clock: it was written by a clock set ahead (or this clock is behind: check it). Backing up anyway; it no longer counts as the latest, and retention removes it in its turn",
                human(ahead)
            );
            return Ok(());
        }
        Err(Error::ClockBehind {
            newest,
            now,
            ahead: human(ahead),
        })
    }
}

/// A claimed snapshot id: the shared marker under it is this run's.
#[derive(Clone, Debug)]
pub(crate) struct Claim {
    pub id: SnapshotId,
    pub source: SourceId,
    pub run: String,
    /// The cycle's sequence number ([`History::next_sequence`]), recorded in every manifest.
    pub sequence: u64,
}

/// The in-progress marker of a database's snapshot folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Marker {
    pub tool: String,
    pub started_at: Timestamp,
    #[serde(default)]
    pub source: Option<SourceId>,
    #[serde(default)]
    pub run: Option<String>,
}

impl Claim {
    /// The marker this run writes into each of its snapshot folders.
    pub fn marker(&self) -> Vec<u8> {
        let marker = Marker {
            tool: crate::cycle::tool(),
            started_at: Timestamp::now(),
            source: Some(self.source),
            run: Some(self.run.clone()),
        };
        serde_json::to_vec(&marker).unwrap_or_default()
    }

    /// Claims the newest free id: a conditional create of the shared marker, read back; on a service
    /// that ignores the condition, read back again after a pause longer than the time between another
    /// writer's listing and its write. A taken id moves the claim to the next second.
    pub async fn take(storage: &Storage, source: SourceId) -> Result<Claim> {
        let run = format!("{:016x}", fastrand_u64());
        loop {
            let id = SnapshotId::now();
            let claim = Claim {
                id,
                source,
                run: run.clone(),
                sequence: 0,
            };
            let key = claim.marker_key();
            let free = storage
                .list(&format!("shared/{id}"), ListMode::Recursive)
                .await?
                .is_empty();
            if free && create_marker(storage, &key, claim.marker()).await? {
                if claim.holds(storage).await?.is_ok() && !honours_if_absent(storage).await? {
                    tokio::time::sleep(SETTLE).await;
                }
                if claim.holds(storage).await?.is_ok() {
                    return Ok(claim);
                }
                tracing::warn!(snapshot = %id, "another writer took this snapshot id at the same moment; taking the next one");
            }
            sleep_to_next_second().await;
        }
    }

    /// Fails with [`Error::ClaimLost`] when the shared marker is no longer this run's: another writer
    /// overwrote it (a service that ignores conditional writes), so committing would mix two cycles.
    pub async fn check(&self, storage: &Storage) -> Result<()> {
        match self.holds(storage).await? {
            Ok(()) => Ok(()),
            Err(other) => Err(Error::ClaimLost {
                snapshot: self.id,
                other,
            }),
        }
    }

    /// `Err(who)` when the marker is someone else's (or gone).
    async fn holds(&self, storage: &Storage) -> Result<std::result::Result<(), String>> {
        let bytes = match storage.read(&self.marker_key()).await {
            Ok(b) => b,
            Err(e) if e.kind() == hitkeep_storage::ErrorKind::NotFound => {
                return Ok(Err("nobody (the marker was removed)".into()));
            }
            Err(e) => return Err(e.into()),
        };
        let marker: Option<Marker> = serde_json::from_slice(&bytes).ok();
        Ok(match marker {
            Some(m) if m.run.as_deref() == Some(&self.run) && m.source == Some(self.source) => {
                Ok(())
            }
            Some(m) => Err(match m.source {
                Some(s) => format!("source {s}"),
                None => format!("{} (no source recorded)", m.tool),
            }),
            None => Err("an unreadable marker".into()),
        })
    }

    pub(crate) fn marker_key(&self) -> String {
        format!("shared/{}/{IN_PROGRESS_NAME}", self.id)
    }
}

/// The conditional create of a claim's marker. A service that rejects the condition itself (rather than
/// refusing because the object exists) gets a plain write, remembered as not honouring it.
async fn create_marker(storage: &Storage, key: &str, marker: Vec<u8>) -> Result<bool> {
    if known(storage) == Some(false) {
        storage.write(key, marker).await?;
        return Ok(true);
    }
    match storage.write_if_absent(key, marker.clone()).await {
        Ok(created) => Ok(created),
        Err(e) if rejects_condition(&e) => {
            tracing::warn!(error = %e, "this storage rejects conditional writes (If-None-Match); claiming snapshot ids by reading markers back");
            remember(storage, false);
            storage.write(key, marker).await?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// A refusal of the conditional request itself, not of access or reachability: some services answer
/// `If-None-Match` with 501 NotImplemented, which the integrity layer also reads as a header refusal.
fn rejects_condition(e: &hitkeep_storage::Error) -> bool {
    use hitkeep_storage::ErrorKind::{ChecksumRefused, Other, Unsupported};
    matches!(e.kind(), Other | ChecksumRefused | Unsupported)
}

/// Records (or refreshes) this source in the destination.
pub(crate) async fn record_source(storage: &Storage, record: &SourceRecord) -> Result<()> {
    let key = format!("{SOURCES_FOLDER}/{}.json", record.source);
    let mut bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
    bytes.push(b'\n');
    storage.write(&key, bytes).await?;
    Ok(())
}

/// A pause longer than another writer's listing-to-write gap, on services that ignore `If-None-Match`.
const SETTLE: Duration = Duration::from_secs(2);

/// Whether each location honours conditional creates, as probed by this process.
fn probed() -> &'static Mutex<Vec<(String, bool)>> {
    static PROBED: OnceLock<Mutex<Vec<(String, bool)>>> = OnceLock::new();
    PROBED.get_or_init(Default::default)
}

fn known(storage: &Storage) -> Option<bool> {
    let location = storage.location().to_string();
    let probed = probed().lock().unwrap_or_else(|e| e.into_inner());
    probed.iter().find(|(l, _)| *l == location).map(|(_, h)| *h)
}

fn remember(storage: &Storage, honours: bool) {
    let location = storage.location().to_string();
    let mut probed = probed().lock().unwrap_or_else(|e| e.into_inner());
    probed.retain(|(l, _)| *l != location);
    probed.push((location, honours));
}

/// Whether this location honours conditional creates, probed once per location per process.
async fn honours_if_absent(storage: &Storage) -> Result<bool> {
    if let Some(honours) = known(storage) {
        return Ok(honours);
    }
    let probe = format!("{SOURCES_FOLDER}/.probe-{:016x}", fastrand_u64());
    let honours = match storage.honours_if_absent(&probe).await {
        Ok(h) => h,
        Err(e) if rejects_condition(&e) => false,
        Err(e) => return Err(e.into()),
    };
    if !honours {
        tracing::info!(location = %storage.location(), "this storage ignores conditional writes (If-None-Match); claiming snapshot ids by reading markers back");
    }
    remember(storage, honours);
    Ok(honours)
}

async fn sleep_to_next_second() {
    let into_second = Timestamp::now().subsec_nanosecond();
    tokio::time::sleep(Duration::from_nanos(
        1_000_000_000 - u64::try_from(into_second).unwrap_or(0),
    ))
    .await;
}

fn fastrand_u64() -> u64 {
    // A run id only has to differ between two processes started in the same second.
    let nanos = Timestamp::now().as_nanosecond() as u64;
    nanos ^ (u64::from(std::process::id()) << 32) ^ u64::from(uuid::Uuid::new_v4().as_u128() as u32)
}

/// "3 h", "12 days": how far apart two times are, for a person.
fn human(d: SignedDuration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3_600 => format!("{} h", s / 3_600),
        s if s >= 120 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SnapshotId {
        s.parse().unwrap()
    }

    #[test]
    fn a_cycle_behind_the_newest_is_refused_naming_both_times() {
        let history = History {
            newest: Some(id("2026-12-01T120000Z")),
            next_sequence: 4,
        };
        let err = history.check_clock(id("2026-12-01T100000Z")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("2026-12-01T120000Z"), "{text}");
        assert!(text.contains("2026-12-01T100000Z"), "{text}");
        assert!(
            err.hint().is_some_and(|h| h.contains("clock")),
            "{:?}",
            err.hint()
        );
        // The same second is not newer either.
        assert!(history.check_clock(id("2026-12-01T120000Z")).is_err());
        assert!(history.check_clock(id("2026-12-01T120001Z")).is_ok());
    }

    #[test]
    fn a_cycle_written_far_in_the_future_does_not_stop_backups() {
        let history = History {
            newest: Some(id("2027-12-01T120000Z")),
            next_sequence: 9,
        };
        assert!(history.check_clock(id("2026-12-01T100000Z")).is_ok());
        let none = History {
            newest: None,
            next_sequence: 1,
        };
        assert!(none.check_clock(id("2026-12-01T100000Z")).is_ok());
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(SignedDuration::from_secs(30)), "30 s");
        assert_eq!(human(SignedDuration::from_hours(3)), "3 h");
        assert_eq!(human(SignedDuration::from_hours(24 * 365)), "365 days");
    }
}
