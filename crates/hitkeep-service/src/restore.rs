//! Restoring a backup cycle into the data path (`hitkeep recover restore-backup`), planned first and
//! executed as a whole: every database is downloaded, imported and checked beside its target before
//! any is swapped in, so a failure leaves all of them as they were.
//!
//! [`plan`] reads the destination and says what would be restored ([`RestoreJob`]); the caller shows
//! it, asks [`RestoreJob::check_targets_free`] whether a server holds a target, and only then calls
//! [`RestoreJob::execute`]. A restore is an offline operation: the server must not hold the files.

use std::path::Path;

use hitkeep_backup::{
    Catalog, Database, RestoreOutcome, RestorePlan, RestoreSelection, SnapshotId, StaleScratch,
};
use hitkeep_config::Location;
use hitkeep_data::{DataError, SourceId};
use hitkeep_storage::Storage;

use crate::engine::Engine;
use crate::error::{Error, Result};

/// A planned restore: the destination it reads and the plan. Nothing has changed yet.
#[derive(Debug)]
pub struct RestoreJob {
    storage: Storage,
    plan: RestorePlan,
    notes: Vec<String>,
    takes_over_source: bool,
}

/// Plans the restore of `snapshot` (or the newest committed cycle of `source`, or of the
/// destination's only source) from `from` into the engine's data path. Reads one cycle's folders,
/// not the whole history, so finding it stays cheap with thousands of snapshots.
pub async fn plan(
    engine: &Engine,
    from: &Location,
    snapshot: Option<SnapshotId>,
    source: Option<SourceId>,
    selection: &RestoreSelection,
) -> Result<RestoreJob> {
    let storage = Storage::open_existing(from, &engine.settings().s3).await?;
    let catalog = Catalog::load_cycle(&storage, snapshot, source).await?;
    let mut plan = RestorePlan::new(&catalog, snapshot, engine.layout(), selection)?;
    // Read now, so that a bad identity file, or none for an encrypted cycle, is refused before
    // anything is downloaded.
    let opener = if plan.is_encrypted() {
        engine.opener()?
    } else {
        None
    };
    match opener {
        Some(opener) => plan = plan.with_opener(opener),
        None if plan.is_encrypted() => {
            return Err(Error::NotConfigured {
                what: "the snapshot is encrypted",
                setting: "HITKEEP_BACKUP_IDENTITY_FILE",
                hint: "set it to the age identity file (AGE-SECRET-KEY-1…) of one of the recipients `hitkeep backup list` shows for the snapshot",
            });
        }
        None => {}
    }
    // What the plan says about the data path as it is now, read once here so that showing the plan
    // touches no file.
    let notes = plan.notes();
    let takes_over_source = plan.source.is_some()
        && !plan.shared_only
        && engine.layout().source_id().ok().flatten().is_none();
    Ok(RestoreJob {
        storage,
        plan,
        notes,
        takes_over_source,
    })
}

impl RestoreJob {
    /// What will be restored: the snapshot, its databases and targets, the cycle's layout.
    pub fn plan(&self) -> &RestorePlan {
        &self.plan
    }

    /// What people should know before this restore ([`RestorePlan::notes`], as planned).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Whether the data path has no source id of its own yet, so that it goes on as the source
    /// that wrote the cycle once the restore is done.
    pub fn takes_over_source(&self) -> bool {
        self.takes_over_source
    }

    /// Refuses while another process holds a target (a running server, maybe in another container,
    /// a reader included): [`Error::Data`] with [`DataError::Locked`], naming the file and its holder.
    /// Asks the kernel only; nothing is read from the destination.
    pub fn check_targets_free(&self) -> Result<()> {
        self.plan
            .items
            .iter()
            .try_for_each(|item| target_free(&item.target))
    }

    /// Restores the plan: removes what killed restores left beside the targets, prepares every
    /// database (`concurrency` downloads at a time) and, only once all are ready, swaps them in
    /// together ([`RestorePlan::commit_all`]). A failure at any step leaves every database as it was.
    pub async fn execute(self, concurrency: usize) -> Result<RestoreReport, RestoreFailure> {
        let stamp = SnapshotId::now();
        // Killed restores leave full-size downloads and databases beside the targets: gone before
        // this one downloads anything, unless a running restore holds them.
        let stale_scratch = self.plan.remove_stale_scratch();
        let failed = |stage, database, error| RestoreFailure {
            stale_scratch: stale_scratch.clone(),
            stage,
            database,
            error,
        };
        let prepared = match self
            .plan
            .prepare_all(&self.storage, stamp, concurrency)
            .await
        {
            Ok(prepared) => prepared,
            Err((database, e)) => return Err(failed(RestoreStage::Prepare, database, e.into())),
        };
        // Tenants first, the shared database last; a failed swap puts back those already swapped.
        match self.plan.commit_all(prepared, stamp) {
            Ok(restored) => Ok(RestoreReport {
                stale_scratch,
                restored,
            }),
            Err(failure) => {
                let (database, e) = *failure;
                Err(failed(RestoreStage::Commit, database, e.into()))
            }
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The scratch of earlier, killed restores found beside the targets before this one started.
    pub stale_scratch: StaleScratch,
    /// Each database restored, in the order they were swapped in (the shared database last).
    pub restored: Vec<(Database, RestoreOutcome)>,
}

/// Which step of a restore failed. Either way every database is as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreStage {
    /// Downloading, importing or checking a database beside its target: nothing was changed.
    Prepare,
    /// Swapping the prepared databases in: those already swapped in were put back.
    Commit,
}

impl std::fmt::Display for RestoreStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestoreStage::Prepare => "nothing was changed",
            RestoreStage::Commit => "the databases already swapped in were put back",
        })
    }
}

/// A restore that failed, leaving every database as it was.
#[derive(Debug, thiserror::Error)]
#[error("restoring the {database} failed; {stage}")]
#[non_exhaustive]
pub struct RestoreFailure {
    /// The scratch of earlier restores removed (and kept) before the failure.
    pub stale_scratch: StaleScratch,
    /// The step that failed.
    pub stage: RestoreStage,
    /// The database it failed on.
    pub database: Database,
    /// Why.
    #[source]
    pub error: Error,
}

/// Refuses `path` while a process holds it, from this PID namespace or another.
pub(crate) fn target_free(path: &Path) -> Result<()> {
    match hitkeep_data::lock_holder(path)? {
        None => Ok(()),
        Some(holder) => Err(Error::Data(DataError::Locked {
            path: path.to_owned(),
            holder: Some(holder),
        })),
    }
}
