//! `manifest.json`: the versioned record of one database's snapshot. Written last, so a folder without
//! one is incomplete. Every change to these types is a change to an on-disk format: bump
//! [`FORMAT_VERSION`] when old readers could misread the new shape.

use std::collections::BTreeMap;

use hitkeep_data::TenantLayout;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::SnapshotId;

/// The manifest format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The object name of a manifest inside a snapshot folder.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Written first into a snapshot folder and removed after the manifest: tells our unfinished snapshots
/// apart from HitKeep Go's, which have no manifest either.
pub const IN_PROGRESS_NAME: &str = "in-progress.json";

/// One database's snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `hitkeep-snapshot`.
    pub format: String,
    /// [`FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    /// The cycle's id, shared by every database in it.
    pub snapshot_id: SnapshotId,
    /// Which database this is.
    pub database: Database,
    /// When the export started.
    pub created_at: Timestamp,
    /// `hitkeep-rs` and its version.
    pub tool: String,
    /// DuckDB's version, as `SELECT version()` reports it.
    pub duckdb_version: String,
    /// Every file of the export, with size and SHA-256.
    pub files: Vec<FileEntry>,
    /// Row count of every table, counted in the same transaction as the export.
    pub tables: BTreeMap<String, u64>,
    /// In the shared database's manifest: the cycle's tenant snapshots and how each went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantEntry>,
    /// In the shared database's manifest: where the default tenant's analytics were when the cycle ran
    /// (HitKeep 2.13 split them out of the shared database). Absent in manifests written before we
    /// recorded it, which were all of pre-split installs; an additive field, so old readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<TenantLayout>,
    /// In the shared database's manifest: the default tenant, so a restore can tell that a split cycle's
    /// default tenant is missing without opening the shared database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tenant: Option<Uuid>,
    /// The installation that wrote the snapshot (`{data}/.hitkeep-source`). Absent in manifests
    /// written before sources were recorded; an additive field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<hitkeep_data::SourceId>,
    /// The cycle's number among its source's cycles, one more than the highest before it: the order
    /// cycles really ran in, which "latest" and retention follow, whatever the clock said. Absent in
    /// older manifests, which sort before every numbered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
}

/// The database a snapshot is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Database {
    /// The shared (control-plane) database.
    Shared,
    /// A tenant's database.
    Tenant {
        /// The tenant.
        tenant_id: Uuid,
    },
}

impl Database {
    /// The folder of this database's snapshots: `shared` or `tenants/{uuid}`.
    pub fn folder(self) -> String {
        match self {
            Database::Shared => "shared".to_owned(),
            Database::Tenant { tenant_id } => format!("tenants/{tenant_id}"),
        }
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Shared => f.write_str("shared database"),
            Database::Tenant { tenant_id } => write!(f, "tenant {tenant_id}"),
        }
    }
}

/// One exported file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file name inside the snapshot folder.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// A tenant's part in a cycle, as the shared manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantEntry {
    /// The tenant.
    pub tenant_id: Uuid,
    /// How its snapshot went.
    #[serde(flatten)]
    pub state: TenantState,
}

/// How a tenant's snapshot went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TenantState {
    /// Finished; its manifest has this SHA-256.
    Complete {
        /// SHA-256 of the tenant's `manifest.json` bytes.
        manifest_sha256: String,
    },
    /// Failed, for this reason; the tenant has no usable snapshot in this cycle.
    Failed {
        /// The error.
        error: String,
    },
    /// Not backed up: the tenant has no database file (HitKeep creates it on first use); the reason
    /// names the path looked at.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not JSON, or not a manifest.
    #[error("not a valid manifest: {0}")]
    Invalid(#[from] serde_json::Error),
    /// Written by a newer hitkeep.
    #[error(
        "manifest format version {0} is newer than this hitkeep understands ({FORMAT_VERSION}); upgrade hitkeep"
    )]
    TooNew(u32),
    /// A file's recorded SHA-256 is not 64 hex digits.
    #[error("malformed SHA-256 for {file}")]
    MalformedSha256 {
        /// The file the manifest lists.
        file: String,
    },
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn from_slice(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        if manifest.format_version > FORMAT_VERSION {
            return Err(ManifestError::TooNew(manifest.format_version));
        }
        Ok(manifest)
    }

    /// The manifest as written: pretty JSON with a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifests always serialise");
        bytes.push(b'\n');
        bytes
    }

    /// Total bytes of the snapshot's files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Total rows over all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.values().sum()
    }
}
