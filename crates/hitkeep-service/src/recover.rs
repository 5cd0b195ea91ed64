//! HitKeep 2.13's offline recovery tools, planned first and executed on request:
//! a database recovery bundle back into place ([`plan_bundle`], `recover restore-database-bundle`)
//! and a tenant's retention archives back into its database ([`plan_import`],
//! `recover import-archives`). Like a restore, both refuse while a server holds the database.

use std::path::{Path, PathBuf};

use hitkeep_archive::{ImportPlan, ImportSummary};
use hitkeep_backup::{Bundle, BundleOutcome, SnapshotId};
use hitkeep_config::Location;
use hitkeep_data::DataLayout;
use hitkeep_storage::Storage;
use uuid::Uuid;

use crate::engine::Engine;
use crate::error::Result;
use crate::restore::target_free;

/// A recovery bundle read and checked, to be restored over the engine's shared database file.
#[derive(Debug)]
pub struct BundleRestore {
    bundle: Bundle,
    target: PathBuf,
}

/// Reads the bundle in `dir` (its manifest, checked as HitKeep checks it) for a restore over the
/// engine's database file. A tenant's bundle goes back into that tenant's file: the caller's
/// settings name it as the database path.
pub fn plan_bundle(engine: &Engine, dir: &Path) -> Result<BundleRestore> {
    Ok(BundleRestore {
        bundle: Bundle::open(dir)?,
        target: engine.layout().db_path.clone(),
    })
}

impl BundleRestore {
    /// The bundle: its folder and artifacts.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The database file it will replace.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Refuses while another process holds the target (see [`crate::restore::RestoreJob::check_targets_free`]).
    pub fn check_target_free(&self) -> Result<()> {
        target_free(&self.target)
    }

    /// Decompresses and checks every artifact beside the target, then swaps them in, the old
    /// database and WAL kept aside. On a failure the target is as it was.
    pub fn execute(self) -> Result<BundleOutcome> {
        Ok(self.bundle.restore(&self.target, SnapshotId::now())?)
    }
}

/// A planned import of a tenant's retention archives: the archive location and what will be read.
#[derive(Debug)]
pub struct ArchiveImport {
    storage: Storage,
    plan: ImportPlan,
    layout: DataLayout,
    opener: Option<std::sync::Arc<hitkeep_backup::Opener>>,
}

/// Plans the import of `tenant`'s archives (the default tenant's when `None`) from the engine's
/// archive location into the database HitKeep reads them from. Changes nothing.
pub async fn plan_import(engine: &Engine, tenant: Option<Uuid>) -> Result<ArchiveImport> {
    let storage = Storage::open_existing(&engine.settings().archive, &engine.settings().s3).await?;
    let plan = ImportPlan::new(&storage, engine.layout(), tenant).await?;
    let opener = engine.archive_opener()?;
    Ok(ArchiveImport {
        storage,
        plan,
        layout: engine.layout().clone(),
        opener,
    })
}

impl ArchiveImport {
    /// The tenant, its database and the archive files.
    pub fn plan(&self) -> &ImportPlan {
        &self.plan
    }

    /// The archive location the files are read from.
    pub fn location(&self) -> &Location {
        self.storage.location()
    }

    /// Refuses while another process holds the target database.
    pub fn check_target_free(&self) -> Result<()> {
        target_free(&self.plan.target)
    }

    /// Imports every file, each in one transaction; a second run imports nothing. Needs a
    /// multi-threaded tokio runtime (DuckDB's work runs in place on its thread).
    pub async fn execute(self) -> Result<ImportSummary> {
        Ok(self
            .plan
            .execute(&self.storage, &self.layout, self.opener.as_deref())
            .await?)
    }
}
