//! The scheduled jobs: a backup cycle and an archive run, each recording what it did in the
//! [`StatusBoard`] (and, for backups, notifying) before the scheduler hands its report on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use hitkeep_archive::{ArchiveEvents, ArchiveOptions, SiteReport};
use hitkeep_storage::Storage;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::notify;
use crate::scheduler::{Job, JobKind, JobReport, RunContext, Scheduler, Stop};
use crate::status::{ArchiveTotals, StatusBoard};

/// How long after start the first cycle runs: soon, but not in the middle of start-up.
pub const FIRST_BACKUP_DELAY: Duration = Duration::from_secs(5);
/// When the daily archive job first runs after start.
pub const FIRST_ARCHIVE_DELAY: Duration = Duration::from_secs(60);
/// How often it runs.
pub const ARCHIVE_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// What an archive run did: each site's report or failure.
#[derive(Debug)]
#[non_exhaustive]
pub struct ArchiveRun {
    /// Per site, in order.
    pub sites: Vec<Result<SiteReport, hitkeep_archive::Error>>,
    /// Sites not started because the run was stopped by a shutdown; the next run does them.
    pub not_started: usize,
}

impl ArchiveRun {
    /// The sums over the sites.
    pub fn totals(&self) -> ArchiveTotals {
        let mut totals = ArchiveTotals::default();
        for site in &self.sites {
            match site {
                Ok(r) if r.file.is_some() => {
                    totals.rows += r.counts.values().sum::<u64>();
                    totals.files += 1;
                }
                Ok(_) => {}
                Err(_) => totals.failures += 1,
            }
        }
        totals
    }
}

impl Engine {
    /// The archive job: every site's expired rows; a failing site is reported and the others done.
    /// With `stop` set, the run ends after the site in progress. A server that rewrites expired rows
    /// in place (an `UPDATE` of rows older than a site's retention) holds those rewrites back while
    /// each site's delete runs, through [`HeldDatabases::pause_rewrites`]: DuckDB does not make such
    /// an update a conflict for the archive's DELETE, and one committed meanwhile would be lost.
    ///
    /// [`HeldDatabases::pause_rewrites`]: hitkeep_data::HeldDatabases::pause_rewrites
    pub async fn archive(&self, dry_run: bool, stop: Option<Stop>) -> Result<ArchiveRun> {
        let storage = Storage::open(&self.settings().archive, &self.settings().s3).await?;
        let mut options = ArchiveOptions::for_layout(self.layout(), dry_run);
        if !dry_run {
            (options.sealer, options.opener) = self.archive_sealing()?;
        }
        let stopper = Arc::new(StopBetweenSites(
            stop.unwrap_or_default(),
            AtomicUsize::new(0),
        ));
        options.events = stopper.clone();
        let sites = hitkeep_archive::run(&storage, self.layout(), &options).await?;
        let not_started = stopper.1.load(Ordering::SeqCst);
        Ok(ArchiveRun { sites, not_started })
    }

    /// A scheduler with this engine's jobs: backups on their interval when a location is set, and the
    /// daily archive run.
    pub fn scheduler(
        &self,
        clock: Arc<dyn crate::scheduler::Clock>,
        board: Arc<StatusBoard>,
    ) -> Scheduler {
        let mut scheduler = Scheduler::new(clock);
        if self.settings().backup.location.is_some() {
            let job = BackupJob {
                engine: self.clone(),
                board: board.clone(),
                progress: None,
            };
            scheduler = scheduler.add(
                Arc::new(job),
                FIRST_BACKUP_DELAY,
                self.settings().backup.interval,
            );
        }
        let job = ArchiveJob {
            engine: self.clone(),
            board,
        };
        scheduler.add(Arc::new(job), FIRST_ARCHIVE_DELAY, ARCHIVE_INTERVAL)
    }
}

/// Asks the archive run to stop between sites once a shutdown is requested, counting those left.
struct StopBetweenSites(Stop, AtomicUsize);

impl ArchiveEvents for StopBetweenSites {
    fn should_stop(&self) -> bool {
        self.0.requested()
    }

    fn not_started(&self, _site: uuid::Uuid) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

/// A backup cycle, recorded in the status board.
pub struct BackupJob {
    /// The engine.
    pub engine: Engine,
    /// Where the outcome is recorded.
    pub board: Arc<StatusBoard>,
    /// Where progress goes.
    pub progress: Option<Arc<dyn hitkeep_backup::Progress>>,
}

impl Job for BackupJob {
    fn kind(&self) -> JobKind {
        JobKind::Backup
    }

    fn run(&self, ctx: RunContext) -> BoxFuture<'_, Result<JobReport>> {
        Box::pin(async move {
            self.run_recorded(ctx.started, Some(ctx.next))
                .await
                .map(|r| JobReport::Backup(Box::new(r)))
        })
    }
}

impl BackupJob {
    /// One cycle now, recorded in the board, outside any scheduler (`hitkeep backup run`).
    pub async fn run_once(&self) -> Result<hitkeep_backup::CycleReport> {
        self.run_recorded(jiff::Timestamp::now(), None).await
    }

    async fn run_recorded(
        &self,
        started: jiff::Timestamp,
        next: Option<jiff::Timestamp>,
    ) -> Result<hitkeep_backup::CycleReport> {
        {
            let began = tokio::time::Instant::now();
            let (outcome, catalog) = match self.engine.backup_and_list(self.progress.clone()).await
            {
                Ok((report, Some(catalog))) => (Ok(report), Some(catalog)),
                // The clean-up did not run or failed: list for the status.
                Ok((report, None)) => (Ok(report), self.list_snapshots().await),
                Err(e) => (Err(e), None),
            };
            let now = started + began.elapsed();
            let mut failures = 0;
            self.board.update(|status| {
                status.record_backup(outcome.as_ref(), began.elapsed(), now, next);
                if let Some(catalog) = &catalog {
                    status.record_snapshots(catalog);
                }
                failures = status.consecutive_failures;
            });
            self.notify(&outcome, began.elapsed(), now, failures).await;
            outcome
        }
    }
}

impl BackupJob {
    async fn list_snapshots(&self) -> Option<hitkeep_backup::Catalog> {
        let storage = self.engine.backup_storage().await.ok()?;
        hitkeep_backup::Catalog::load(&storage).await.ok()
    }

    /// The heartbeat after a cycle that backed up everything, the failure notification otherwise
    /// (a cycle with failed tenants is committed, and still a failure to be told about). Awaited, so
    /// `backup run` from cron delivers before it exits; never fails the job.
    async fn notify(
        &self,
        outcome: &Result<hitkeep_backup::CycleReport>,
        took: Duration,
        at: jiff::Timestamp,
        consecutive_failures: u32,
    ) {
        let notifier = self.engine.notifier();
        let error = match outcome {
            Ok(report) if report.is_success() => {
                let success = notify::Success {
                    snapshot_id: report.id.to_string(),
                    databases: 1 + report.shared.tenants.len(),
                    bytes: report.bytes,
                    duration: took,
                };
                notifier.success(&success).await;
                return;
            }
            Ok(_) => self.board.get().last_error.unwrap_or_default(),
            Err(e) => e.summary(),
        };
        let failure = notify::Failure {
            job: "backup".into(),
            error,
            consecutive_failures,
            at,
        };
        notifier.failure(&failure).await;
    }
}

impl std::fmt::Debug for BackupJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupJob")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// A retention archive run, recorded in the status board.
#[derive(Debug)]
pub struct ArchiveJob {
    /// The engine.
    pub engine: Engine,
    /// Where the outcome is recorded.
    pub board: Arc<StatusBoard>,
}

impl Job for ArchiveJob {
    fn kind(&self) -> JobKind {
        JobKind::Archive
    }

    fn run(&self, ctx: RunContext) -> BoxFuture<'_, Result<JobReport>> {
        Box::pin(async move {
            let began = tokio::time::Instant::now();
            // The archive run holds DuckDB connections (not `Sync`) across its awaits, so its future
            // is not `Send`: it runs on a thread of its own, driven by this runtime.
            let (engine, stop) = (self.engine.clone(), ctx.stop.clone());
            let handle = tokio::runtime::Handle::current();
            let run = tokio::task::spawn_blocking(move || {
                handle.block_on(engine.archive(false, Some(stop)))
            })
            .await
            .unwrap_or_else(|e| {
                Err(Error::Panicked {
                    job: "archive",
                    why: e.to_string(),
                })
            });
            let totals = match &run {
                Ok(run) => run.totals(),
                Err(_) => ArchiveTotals {
                    failures: 1,
                    ..ArchiveTotals::default()
                },
            };
            let now = ctx.started + began.elapsed();
            self.board
                .update(|status| status.record_archive(&totals, now));
            let error = match &run {
                Err(e) => Some(e.summary()),
                Ok(_) if totals.failures > 0 => Some(format!(
                    "archiving failed for {} site(s); see the log",
                    totals.failures
                )),
                Ok(_) => None,
            };
            if let Some(error) = error {
                let failure = notify::Failure {
                    job: "archive".into(),
                    error,
                    consecutive_failures: 1,
                    at: now,
                };
                self.engine.notifier().failure(&failure).await;
            }
            run.map(JobReport::Archive)
        })
    }
}
