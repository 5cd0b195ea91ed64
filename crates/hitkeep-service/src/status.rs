//! One record of what the jobs did: [`BackupStatus`]. The status file, `hitkeep backup status`,
//! HitKeep's status JSON, the health rule and the metrics are all read from it, so they never
//! disagree (they used to record a cycle twice, with different error text).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use hitkeep_backup::{Catalog, CycleReport, SnapshotState};
use hitkeep_config::Settings;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// What the backup and archive jobs last did, and running totals. Also the status file's format
/// (`{data}/.hitkeep-backup-status.json`): fields are only ever added, with defaults, so a file an
/// older version wrote still reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BackupStatus {
    /// Whether backups are configured.
    pub enabled: bool,
    /// The backup location, as configured (no secrets: locations hold none).
    pub destination: Option<String>,
    /// Minutes between cycles.
    pub interval_min: u64,
    /// Snapshots kept per database.
    pub retention: u32,
    /// When the last successful cycle ended.
    pub last_backup: Option<Timestamp>,
    /// Its snapshot id.
    pub last_snapshot: Option<String>,
    /// When the scheduler runs the next cycle.
    pub next_backup: Option<Timestamp>,
    /// When the last failed cycle ended.
    pub last_failed_at: Option<Timestamp>,
    /// Why it failed, one line per cause.
    pub last_error: Option<String>,
    /// Failed cycles since the last success.
    pub consecutive_failures: u32,
    /// Failed cycles counted since the file was created.
    pub recent_failures: u32,
    /// The last cycle's layout (`split` or `pre-split`).
    #[serde(default)]
    pub last_layout: Option<String>,
    /// Tenants the last cycle could not back up because their database file is missing, with the path.
    #[serde(default)]
    pub last_skipped: Vec<String>,
    /// How long the last cycle took, in seconds.
    #[serde(default)]
    pub last_cycle_seconds: Option<f64>,
    /// Complete snapshots per database folder, as of the last successful cycle.
    #[serde(default)]
    pub snapshots: BTreeMap<String, u64>,
    /// Running totals, for the metrics.
    #[serde(default)]
    pub totals: Totals,
    /// When the last archive run ended.
    #[serde(default)]
    pub last_archive: Option<Timestamp>,
    /// Sites the last archive run could not archive.
    #[serde(default)]
    pub last_archive_failures: u32,
}

/// Running totals since the status file was created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Totals {
    /// Bytes uploaded by cycles.
    pub uploaded_bytes: u64,
    /// Files uploaded by cycles.
    pub uploaded_files: u64,
    /// Failed cycles.
    pub backup_failures: u64,
    /// Rows moved to retention archives.
    pub archived_rows: u64,
    /// Retention archive files written.
    pub archive_files: u64,
    /// Sites whose archiving failed.
    pub archive_failures: u64,
}

/// What an archive run did, summed over its sites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveTotals {
    /// Rows archived (and deleted from DuckDB).
    pub rows: u64,
    /// Archive files written.
    pub files: u64,
    /// Sites that failed.
    pub failures: u64,
}

/// Whether backups are healthy: the answer of `/healthz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Healthy or not.
    pub ok: bool,
    /// Why, in one line.
    pub reason: String,
}

impl BackupStatus {
    /// Fills in what the settings say (a status file may predate a settings change).
    fn configure(&mut self, settings: &Settings) {
        self.enabled = settings.backup.location.is_some();
        self.destination = settings.backup.location.as_ref().map(ToString::to_string);
        self.interval_min = settings.backup.interval.as_secs() / 60;
        self.retention = settings.backup.retention.get();
    }

    /// Records a cycle that ended at `now`.
    pub fn record_backup(
        &mut self,
        outcome: Result<&CycleReport, &Error>,
        took: Duration,
        now: Timestamp,
        next: Option<Timestamp>,
    ) {
        self.next_backup = next;
        self.last_cycle_seconds = Some(took.as_secs_f64());
        if let Ok(report) = outcome {
            self.last_snapshot = Some(report.id.to_string());
            self.last_layout = report.shared.layout.map(|l| l.to_string());
            self.last_skipped = report
                .skipped_tenants()
                .map(|(id, why)| format!("{id}: {why}"))
                .collect();
            self.totals.uploaded_bytes += report.bytes;
            self.totals.uploaded_files += report.files as u64;
        }
        match cycle_error(outcome) {
            None => {
                self.last_backup = Some(now);
                self.last_error = None;
                self.consecutive_failures = 0;
            }
            Some(e) => {
                self.last_failed_at = Some(now);
                self.last_error = Some(e);
                self.consecutive_failures += 1;
                self.recent_failures += 1;
                self.totals.backup_failures += 1;
            }
        }
    }

    /// Records how many complete snapshots each database has.
    pub fn record_snapshots(&mut self, catalog: &Catalog) {
        self.snapshots = catalog
            .databases
            .iter()
            .map(|db| {
                let n = db
                    .snapshots
                    .iter()
                    .filter(|s| s.state == SnapshotState::Complete)
                    .count();
                (db.database.folder(), n as u64)
            })
            .collect();
    }

    /// Records an archive run that ended at `now`.
    pub fn record_archive(&mut self, totals: &ArchiveTotals, now: Timestamp) {
        self.last_archive = Some(now);
        self.last_archive_failures = u32::try_from(totals.failures).unwrap_or(u32::MAX);
        self.totals.archived_rows += totals.rows;
        self.totals.archive_files += totals.files;
        self.totals.archive_failures += totals.failures;
    }

    /// Healthy while the last cycle succeeded and is at most two intervals old.
    pub fn health(&self, now: Timestamp) -> Health {
        let unhealthy = |reason: String| Health { ok: false, reason };
        if !self.enabled {
            return Health {
                ok: true,
                reason: "ok: backups are disabled".into(),
            };
        }
        let stale =
            |t: Timestamp| now.as_second() - t.as_second() > 2 * (self.interval_min as i64) * 60;
        match (self.last_backup, self.last_failed_at) {
            (_, Some(failed)) if self.last_backup.is_none_or(|ok| failed > ok) => {
                unhealthy(format!(
                    "unhealthy: the last backup cycle failed at {failed}: {}",
                    self.last_error.clone().unwrap_or_default()
                ))
            }
            (None, _) => unhealthy("unhealthy: no backup cycle has succeeded yet".into()),
            (Some(ok), _) if stale(ok) => unhealthy(format!(
                "unhealthy: the last successful backup ({ok}) is older than two intervals"
            )),
            (Some(ok), _) => Health {
                ok: true,
                reason: format!("ok: last backup {ok}"),
            },
        }
    }

    /// The same fields as HitKeep's `GET /api/admin/system/backups`; unset times are omitted.
    pub fn hitkeep_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "enabled": self.enabled,
            "config_path": self.destination.clone().unwrap_or_default(),
            "interval_min": self.interval_min,
            "retention": self.retention,
            "recent_failures": self.recent_failures,
        });
        let times = [
            ("last_backup", self.last_backup),
            ("next_backup", self.next_backup),
            ("last_failed_at", self.last_failed_at),
        ];
        for (k, t) in times {
            if let Some(t) = t {
                v[k] = serde_json::Value::String(t.to_string());
            }
        }
        if let Some(e) = &self.last_error {
            v["last_error"] = serde_json::Value::String(e.clone());
        }
        v
    }
}

/// Why a cycle counts as failed, in the words every reader of the status shows: the error and its
/// causes, or the tenants that failed.
fn cycle_error(outcome: Result<&CycleReport, &Error>) -> Option<String> {
    match outcome {
        Ok(report) if report.is_success() => None,
        Ok(report) => Some(format!(
            "tenant backups failed: {}",
            report
                .failed_tenants()
                .map(|(id, e)| format!("{id}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Err(e) => Some(e.summary()),
    }
}

/// The status record shared by the jobs, the status file and the HTTP endpoints.
#[derive(Debug)]
pub struct StatusBoard {
    path: PathBuf,
    status: Mutex<BackupStatus>,
}

impl StatusBoard {
    /// The board of `settings`' data path, starting from its status file (a missing or unreadable
    /// file starts empty: the status is a report, never an input to a job).
    pub fn load(path: &Path, settings: &Settings) -> Self {
        let mut status = read(path).unwrap_or_default();
        status.configure(settings);
        StatusBoard {
            path: path.to_owned(),
            status: Mutex::new(status),
        }
    }

    /// A copy of the current record.
    pub fn get(&self) -> BackupStatus {
        self.lock().clone()
    }

    /// Changes the record and writes the file (a failed write is a warning: the job's outcome stands).
    pub fn update(&self, change: impl FnOnce(&mut BackupStatus)) {
        let status = {
            let mut status = self.lock();
            change(&mut status);
            status.clone()
        };
        if let Err(e) = write(&self.path, &status) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not write the backup status file");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BackupStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The status file's record, or `None` when there is none yet or it does not parse.
pub fn read(path: &Path) -> Option<BackupStatus> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write(path: &Path, status: &BackupStatus) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    // A reader (status, a monitor) never sees half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn health_goes_by_the_last_outcome_and_its_age() {
        let mut status = BackupStatus {
            enabled: true,
            interval_min: 60,
            ..BackupStatus::default()
        };
        let now = at("2026-12-01T12:00:00Z");
        assert!(!status.health(now).ok, "no cycle yet");
        status.last_backup = Some(at("2026-12-01T10:30:00Z"));
        assert!(
            status.health(now).ok,
            "an hour and a half ago, within two intervals"
        );
        let later = at("2026-12-01T12:31:00Z");
        let stale = status.health(later);
        assert!(!stale.ok && stale.reason.contains("older than two intervals"));
        status.last_failed_at = Some(at("2026-12-01T11:00:00Z"));
        status.last_error = Some("the bucket is gone".into());
        let failed = status.health(now);
        assert!(!failed.ok && failed.reason.contains("the bucket is gone"));
        status.enabled = false;
        assert!(
            status.health(later).ok,
            "disabled backups are not a failure"
        );
    }
}
