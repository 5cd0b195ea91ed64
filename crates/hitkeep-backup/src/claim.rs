//! Who writes a cycle and under which id. A destination may be shared by mistake (two installations, or
//! two data paths, with one `HITKEEP_BACKUP_PATH`) and the clock may be wrong, so a cycle:
//! - records its installation's [`SourceId`] in `sources/{id}.json` and in every marker and manifest,
//!   and never counts another source's cycles as its own;
//! - numbers its cycles (`sequence`, one more than the source's highest), so "latest" and retention
//!   follow the order cycles really ran in, whatever the clock said when they ran;
//! - refuses to run when its id would sort before the newest cycle and the clock may be what is wrong;
//! - claims its snapshot id with a conditional create of `shared/{id}/in-progress.json` where the
//!   service honours `If-None-Match`, and elsewhere by announcing itself under a name of its own and
//!   listing the folder (see [`Claim::take`]); it checks the marker again before committing.

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

    /// Claims the newest free id. Where the service honours `If-None-Match`, by a conditional create
    /// of the shared marker. Elsewhere (Garage, some Ceph setups), by announcing: the run writes an
    /// object no other run writes (`claim-{run}.json`), then lists the folder, and holds the id only
    /// when its own announcement is all it finds. Of two runs, at least one lists after the other's
    /// announcement is stored, so at most one holds the id whatever the timing (two that see each
    /// other both step aside); this needs only the list-after-write consistency S3 services give,
    /// where a read-back after a pause needed a guess at how slow another writer could be. A taken id
    /// moves the claim to the next second.
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
            let folder = format!("shared/{id}");
            let free = storage.list(&folder, ListMode::Recursive).await?.is_empty();
            if free {
                let taken = if honours_if_absent(storage).await? {
                    claim.create_marker(storage).await?
                } else {
                    claim.by_announcement(storage).await?
                };
                if taken {
                    return Ok(claim);
                }
                tracing::warn!(snapshot = %id, "another writer claimed this snapshot id at the same moment; taking the next one");
                // Two runs that stepped aside for each other would meet again at the next second's
                // start: a random delay lets one of them come first.
                sleep_to_next_second().await;
                tokio::time::sleep(Duration::from_millis(fastrand_u64() % 400)).await;
                continue;
            }
            sleep_to_next_second().await;
        }
    }

    /// The conditional create of the marker, read back: `false` when the id is taken.
    async fn create_marker(&self, storage: &Storage) -> Result<bool> {
        match storage
            .write_if_absent(&self.marker_key(), self.marker())
            .await
        {
            Ok(created) => Ok(created && self.holds(storage).await?.is_ok()),
            // Refused as a request (not because the marker exists), though the probe passed:
            // announce this time. Not remembered: a passing failure must not change how every
            // later cycle of a long-running server claims.
            Err(e) if rejects_condition(&e) => {
                tracing::warn!(error = %e, "a conditional create of the snapshot marker was refused; claiming by announcement instead");
                self.by_announcement(storage).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The claim on a service that ignores `If-None-Match`: announce, then settle.
    async fn by_announcement(&self, storage: &Storage) -> Result<bool> {
        self.announce(storage).await?;
        self.settle(storage).await
    }

    /// Writes this run's announcement into the id's folder: a name no other run writes.
    async fn announce(&self, storage: &Storage) -> Result<()> {
        storage
            .write(&self.announcement_key(), self.marker())
            .await?;
        Ok(())
    }

    /// Lists the id's folder after [`Claim::announce`]: with nothing but this run's announcement
    /// there, the id is this run's, and its marker replaces the announcement. Otherwise the
    /// announcement is withdrawn and the id left to whoever else is there.
    async fn settle(&self, storage: &Storage) -> Result<bool> {
        let mine = self.announcement_key();
        let held = self.decide(storage).await;
        // The marker (when held) is written before this: the folder is never without an object that
        // shows it is taken. A leftover announcement only keeps others off this id, and names its
        // source (`catalog.rs`), so a failed removal is reported, not fatal.
        if let Err(e) = storage.delete(&mine).await {
            tracing::warn!(key = mine, error = %e, "removing this run's claim announcement failed; it is removed with the snapshot's folder");
        }
        held
    }

    /// Whether the listing holds nothing but this run's announcement; if so, writes the marker.
    async fn decide(&self, storage: &Storage) -> Result<bool> {
        let listed = storage
            .list(&format!("shared/{}", self.id), ListMode::Recursive)
            .await?;
        if !(listed.len() == 1 && listed[0].key == self.announcement_key()) {
            return Ok(false);
        }
        // Conditional where the service honours it (this run came here because one conditional
        // create was refused in passing): another process may have created the marker since the
        // listing. Elsewhere a plain write: the condition would be ignored, or refused again.
        if known(storage) != Some(true) {
            storage.write(&self.marker_key(), self.marker()).await?;
            return Ok(true);
        }
        match storage
            .write_if_absent(&self.marker_key(), self.marker())
            .await
        {
            Ok(created) => Ok(created),
            Err(e) if rejects_condition(&e) => {
                storage.write(&self.marker_key(), self.marker()).await?;
                Ok(true)
            }
            Err(e) => Err(e.into()),
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

    fn announcement_key(&self) -> String {
        format!("shared/{}/{ANNOUNCEMENT_PREFIX}{}.json", self.id, self.run)
    }
}

/// How a claim announcement's name starts (`claim-{run}.json`).
const ANNOUNCEMENT_PREFIX: &str = "claim-";

/// Whether an object in a snapshot folder is a claim announcement: it holds a [`Marker`].
pub(crate) fn is_announcement(name: &str) -> bool {
    name.starts_with(ANNOUNCEMENT_PREFIX) && name.ends_with(".json")
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
        tracing::info!(location = %storage.location(), "this storage ignores conditional writes (If-None-Match); claiming snapshot ids by announcement and listing");
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

pub(crate) fn host_name() -> String {
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

    /// Both orders two announcing runs can take: one lists before the other announces (it holds the
    /// id, the other sees it and steps aside), or both announce before either lists (both step
    /// aside). Never both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_announcing_runs_at_most_one_holds_the_id() {
        let server = hitkeep_testkit::S3Server::start().await.unwrap();
        let storage = server.storage("claims").await;
        let run = |id: SnapshotId, run: &str| Claim {
            id,
            source: SourceId::random(),
            run: run.into(),
            sequence: 0,
        };
        let listed = |id: SnapshotId| {
            let storage = storage.clone();
            async move {
                let entries = storage
                    .list(&format!("shared/{id}"), ListMode::Recursive)
                    .await
                    .unwrap();
                entries
                    .into_iter()
                    .map(|e| e.name().to_owned())
                    .collect::<Vec<_>>()
            }
        };

        let first = id("2026-12-01T100000Z");
        let (a, b) = (run(first, "a"), run(first, "b"));
        a.announce(&storage).await.unwrap();
        assert!(a.settle(&storage).await.unwrap(), "alone in the folder");
        b.announce(&storage).await.unwrap();
        assert!(!b.settle(&storage).await.unwrap(), "a holds the id");
        assert_eq!(
            listed(first).await,
            [IN_PROGRESS_NAME],
            "a's marker, no announcement left"
        );
        assert!(a.holds(&storage).await.unwrap().is_ok());
        assert!(b.holds(&storage).await.unwrap().is_err());

        let second = id("2026-12-01T100001Z");
        let (a, b) = (run(second, "a"), run(second, "b"));
        a.announce(&storage).await.unwrap();
        b.announce(&storage).await.unwrap();
        // Both list before either withdraws.
        assert!(!a.decide(&storage).await.unwrap(), "a sees b");
        assert!(!b.decide(&storage).await.unwrap(), "b sees a");
        let announcements = listed(second).await;
        assert_eq!(announcements.len(), 2, "no marker: {announcements:?}");
    }

    /// On a service taken for one that ignores `If-None-Match`, three runs started together claim
    /// three ids and leave no announcement behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_that_announce_together_claim_different_ids() {
        let server = hitkeep_testkit::S3Server::start().await.unwrap();
        let storage = server.storage("announcing").await;
        remember(&storage, false);
        let take = || Claim::take(&storage, SourceId::random());
        let (a, b, c) = tokio::join!(take(), take(), take());
        let ids: std::collections::BTreeSet<_> =
            [a.unwrap().id, b.unwrap().id, c.unwrap().id].into();
        assert_eq!(ids.len(), 3, "{ids:?}");
        let left = storage.list("shared", ListMode::Recursive).await.unwrap();
        assert!(
            left.iter().all(|e| e.name() == IN_PROGRESS_NAME),
            "{left:?}"
        );
        assert_eq!(left.len(), 3);
    }

    /// A service that refuses `If-None-Match` outright (501) instead of ignoring it: runs claim by
    /// announcement, the marker's conditional create falls back to a plain write, and two runs
    /// started together still claim different ids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_that_refuses_the_condition_still_keeps_ids_apart() {
        let server = hitkeep_testkit::S3Server::start_with(
            hitkeep_testkit::ServerOptions::refusing_conditional_writes(),
        )
        .await
        .unwrap();
        let storage = server.storage("refusing").await;
        let checksum = storage.checksum_in_use();
        assert!(!honours_if_absent(&storage).await.unwrap());
        let take = || Claim::take(&storage, SourceId::random());
        let (a, b) = tokio::join!(take(), take());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.id, b.id);
        for claim in [&a, &b] {
            assert!(claim.holds(&storage).await.unwrap().is_ok(), "{}", claim.id);
        }
        let left = storage.list("shared", ListMode::Recursive).await.unwrap();
        assert!(
            left.iter().all(|e| e.name() == IN_PROGRESS_NAME),
            "{left:?}"
        );
        assert_eq!(
            storage.checksum_in_use(),
            checksum,
            "a refused condition is not a refused checksum header"
        );
    }

    /// A run killed while claiming leaves its announcement: the folder lists as unfinished, with the
    /// source that left it (so that source's next cycle removes it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_announcement_left_behind_names_its_source() {
        let server = hitkeep_testkit::S3Server::start().await.unwrap();
        let storage = server.storage("left").await;
        let claim = Claim {
            id: id("2026-12-01T100000Z"),
            source: SourceId::random(),
            run: "killed".into(),
            sequence: 0,
        };
        claim.announce(&storage).await.unwrap();
        let catalog = Catalog::load(&storage).await.unwrap();
        let shared = catalog
            .databases
            .iter()
            .find(|d| d.database == Database::Shared)
            .unwrap();
        assert_eq!(shared.snapshots.len(), 1);
        assert_eq!(shared.snapshots[0].state, SnapshotState::Incomplete);
        assert_eq!(shared.snapshots[0].source, Some(claim.source));
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(SignedDuration::from_secs(30)), "30 s");
        assert_eq!(human(SignedDuration::from_hours(3)), "3 h");
        assert_eq!(human(SignedDuration::from_hours(24 * 365)), "365 days");
    }
}
