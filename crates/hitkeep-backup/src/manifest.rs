//! `manifest.json`: the versioned record of one database's snapshot. Written last, so a folder without
//! one is incomplete. Every change to these types is a change to an on-disk format: bump
//! [`FORMAT_VERSION`] when old readers could misread the new shape.

use std::collections::BTreeMap;

use hitkeep_data::TenantLayout;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::SnapshotId;
pub use crate::partition::PartitionRule;

/// The newest manifest format this build reads.
pub const FORMAT_VERSION: u32 = ENCRYPTED_INCREMENTAL_FORMAT_VERSION;
/// The format of a full snapshot's manifest: every file in the snapshot's folder. Still written for
/// full snapshots, so that older hitkeeps keep reading them.
pub const FULL_FORMAT_VERSION: u32 = 1;
/// The format of an incremental snapshot's manifest: files may be stored in the location's pool
/// ([`FileEntry::object`]), and [`Manifest::partitions`] records how each table was cut. Older
/// hitkeeps refuse it ("upgrade hitkeep") instead of misreading it.
pub const INCREMENTAL_FORMAT_VERSION: u32 = 2;
/// The format of an encrypted full snapshot's manifest: every file in the snapshot's folder is an age
/// file, [`Manifest::encryption`] says to whom, and the row counts are in its sealed part
/// ([`Sealed`]). Older hitkeeps refuse it ("upgrade hitkeep").
pub const ENCRYPTED_FORMAT_VERSION: u32 = 3;
/// The format of an encrypted incremental snapshot's manifest: table files are age files in the
/// encrypted pool ([`SEALED_POOL_FOLDER`]), named by the SHA-256 of their stored bytes, under names
/// that say nothing of their partitions; the partitions are in an index only the writing host opens
/// ([`Encryption::index`]), the row counts in the sealed part as in format 3.
pub const ENCRYPTED_INCREMENTAL_FORMAT_VERSION: u32 = 4;
/// The object name, inside an encrypted snapshot's folder, of the manifest's sealed part.
pub const SEALED_NAME: &str = "manifest.sealed";
/// The object name, inside an encrypted incremental snapshot's folder, of its partition index.
pub const INDEX_NAME: &str = "manifest.index";
/// What an encrypted manifest records of a failed tenant's error, in place of its text.
pub const WITHHELD_ERROR: &str = "failed; the error is in the log of the host that ran the cycle (encrypted snapshots keep error text out of the bucket)";
/// [`Encryption::scheme`]: age, X25519 recipients.
pub const AGE_X25519: &str = "age-x25519";
/// The folder, beside `shared/` and `tenants/`, of the objects incremental snapshots share.
pub const POOL_FOLDER: &str = "pool";
/// The folder of encrypted incremental snapshots' table files: apart from [`POOL_FOLDER`], so that a
/// plain snapshot never names an encrypted object or the reverse.
pub const SEALED_POOL_FOLDER: &str = "pool-e";
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
    /// In an incremental snapshot (format 2): every table in load order, how it was cut into
    /// partitions and what each holds, so that the next cycle can reuse the unchanged ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<TablePartitions>,
    /// In an encrypted snapshot (format 3): to whom its objects are encrypted, and its sealed part.
    /// [`Manifest::tables`] is then empty until [`Manifest::unseal`] fills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// When the snapshot's objects were locked with S3 Object Lock: what the cycle asked for. The
    /// bucket's word is the authority (`retention.rs` asks it before a prune); this is for people.
    /// An additive field: older readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<LockRecord>,
}

/// The S3 Object Lock retention a cycle set on every object of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// `governance` or `compliance`.
    pub mode: hitkeep_storage::LockMode,
    /// Until when, by the server's clock.
    pub retain_until: Timestamp,
}

/// How a snapshot's objects are encrypted: in the clear, so that `backup list` and a plain `verify`
/// need no key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// [`AGE_X25519`].
    pub scheme: String,
    /// The age recipients (`age1…` public keys) every object of the snapshot is encrypted to.
    pub recipients: Vec<String>,
    /// The sealed part ([`SEALED_NAME`], an age file of [`Sealed`] as JSON), with its stored size and
    /// SHA-256: the clear part names it, so the two cannot be mixed.
    pub sealed: FileEntry,
    /// In format 4: the partition index ([`INDEX_NAME`], an age file of [`PartitionIndex`] as JSON,
    /// sealed to the writing host's own key), with its stored size and SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<FileEntry>,
    /// For a tenant's snapshot sealed to the tenant's own key (its only recipient): the key file
    /// holding that key's private half, wrapped to the operator's recipients
    /// (`keys/tenants/{uuid}/{key id}.json`). Deleting it makes the snapshot unreadable to everyone.
    /// Readers before it fail closed: the operator's identity is not a recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_key: Option<String>,
}

/// What an encrypted incremental snapshot's index holds: how each table was cut, for the next cycle
/// of the host that wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionIndex {
    /// [`Manifest::partitions`].
    pub partitions: Vec<TablePartitions>,
}

/// What an encrypted snapshot's manifest keeps sealed: what describes the data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// Row count of every table.
    pub tables: BTreeMap<String, u64>,
}

/// How an incremental snapshot cut one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePartitions {
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// Its columns' names and DuckDB types, in order: a table whose columns differ (renamed, retyped,
    /// added) starts its chain again, since its rows' fingerprints hash values alone.
    pub columns: Vec<(String, String)>,
    /// The rule its keys follow; recorded so that a later rule never reinterprets them.
    pub rule: PartitionRule,
    /// Its partitions by key (an empty table has none).
    pub partitions: BTreeMap<String, PartitionEntry>,
}

/// One partition of a table in an incremental snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEntry {
    /// Rows.
    pub rows: u64,
    /// The sum of its rows' hashes, as a decimal integer: equal rows and fingerprint mean equal rows.
    pub fingerprint: String,
    /// Its files, by their names in [`Manifest::files`].
    pub files: Vec<String>,
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

    /// The tenant, for a tenant's database.
    pub fn tenant_id(self) -> Option<Uuid> {
        match self {
            Database::Shared => None,
            Database::Tenant { tenant_id } => Some(tenant_id),
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
    /// Where the bytes are stored when not in the snapshot's folder: in an incremental snapshot, the
    /// pool object `pool/{sha256[..2]}/{sha256}.parquet` that snapshots share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

impl FileEntry {
    /// The object that holds the file's bytes, for a snapshot stored in `folder`.
    pub fn key(&self, folder: &str) -> String {
        match &self.object {
            Some(object) => object.clone(),
            None => format!("{folder}/{}", self.name),
        }
    }
}

/// The pool object of a file with this SHA-256 (lowercase hex).
pub fn pool_key(sha256: &str) -> String {
    format!(
        "{POOL_FOLDER}/{}/{sha256}.parquet",
        &sha256[..2.min(sha256.len())]
    )
}

/// The encrypted pool object whose stored bytes have this SHA-256 (lowercase hex): the digest of the
/// ciphertext, which says nothing of the plaintext. Each encryption of the same file differs, so an
/// object is written once and never replaced.
pub fn sealed_pool_key(sha256: &str) -> String {
    format!(
        "{SEALED_POOL_FOLDER}/{}/{sha256}.age",
        &sha256[..2.min(sha256.len())]
    )
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
    /// A file's name or object is not one a snapshot can have: a name is one plain path component,
    /// and an object is the pool object its SHA-256 names, in format 2 only.
    #[error("the manifest lists {file:?}, {why}")]
    ForeignFile {
        /// The file's name as the manifest gives it.
        file: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn from_slice(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        if manifest.format_version > FORMAT_VERSION {
            return Err(ManifestError::TooNew(manifest.format_version));
        }
        for file in &manifest.files {
            check_file(file, manifest.format_version)?;
        }
        match &manifest.encryption {
            Some(encryption) => check_encryption(&manifest, encryption)?,
            None if manifest.format_version >= ENCRYPTED_FORMAT_VERSION => {
                return Err(ManifestError::ForeignFile {
                    file: MANIFEST_NAME.to_owned(),
                    why: "of an encrypted format without its encryption, which it always records",
                });
            }
            None => {}
        }
        Ok(manifest)
    }

    /// The manifest as written: pretty JSON with a trailing newline. An encrypted manifest is
    /// written without what its sealed part holds, whatever this value holds in memory, and
    /// without the text of its failed tenants' errors (DuckDB's may quote values; the log has them).
    pub fn to_bytes(&self) -> Vec<u8> {
        let clear;
        let written = match &self.encryption {
            Some(_) => {
                let tenants = self.tenants.iter().map(|t| match &t.state {
                    TenantState::Failed { .. } => TenantEntry {
                        tenant_id: t.tenant_id,
                        state: TenantState::Failed {
                            error: WITHHELD_ERROR.to_owned(),
                        },
                    },
                    _ => t.clone(),
                });
                clear = Manifest {
                    tables: BTreeMap::new(),
                    partitions: Vec::new(),
                    tenants: tenants.collect(),
                    ..self.clone()
                };
                &clear
            }
            None => self,
        };
        let mut bytes = serde_json::to_vec_pretty(written).expect("manifests always serialise");
        bytes.push(b'\n');
        bytes
    }

    /// Total bytes of the snapshot's files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Every object that holds the snapshot's data, the manifest aside: its files (in `folder` or
    /// the pool) and, when encrypted, its sealed part and index.
    pub fn stored_objects(&self, folder: &str) -> Vec<String> {
        let encryption = self.encryption.iter();
        let sealed = encryption.flat_map(|e| std::iter::once(&e.sealed).chain(e.index.as_ref()));
        self.files
            .iter()
            .chain(sealed)
            .map(|f| f.key(folder))
            .collect()
    }

    /// Whether it is an incremental snapshot (format 2, or 4 encrypted), whose files may live in
    /// the pool.
    pub fn is_incremental(&self) -> bool {
        matches!(
            self.format_version,
            INCREMENTAL_FORMAT_VERSION | ENCRYPTED_INCREMENTAL_FORMAT_VERSION
        )
    }

    /// Whether its objects are encrypted (format 3 or 4).
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// Fills in what the sealed part holds.
    pub fn unseal(&mut self, sealed: Sealed) {
        self.tables = sealed.tables;
    }

    /// Total rows over all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.values().sum()
    }
}

/// An encrypted manifest is format 3 (full) or 4 (incremental, with its index), names its sealed
/// part and index by their one names in its folder, and lists no row counts or partitions in the
/// clear. Pool objects are checked by `check_file`.
fn check_encryption(manifest: &Manifest, encryption: &Encryption) -> Result<(), ManifestError> {
    let refuse = |why| {
        Err(ManifestError::ForeignFile {
            file: encryption.sealed.name.clone(),
            why,
        })
    };
    let incremental = match manifest.format_version {
        ENCRYPTED_FORMAT_VERSION => false,
        ENCRYPTED_INCREMENTAL_FORMAT_VERSION => true,
        _ => return refuse("in an encryption this hitkeep does not know"),
    };
    if encryption.scheme != AGE_X25519 {
        return refuse("in an encryption this hitkeep does not know");
    }
    if encryption.sealed.name != SEALED_NAME || encryption.sealed.object.is_some() {
        return refuse("named as the sealed part, which is always manifest.sealed in its folder");
    }
    match &encryption.index {
        Some(index) if !incremental || index.name != INDEX_NAME || index.object.is_some() => {
            return refuse("beside an index that is not manifest.index of an incremental snapshot");
        }
        None if incremental => return refuse("without the index format 4 always has"),
        _ => {}
    }
    if !manifest.tables.is_empty() || !manifest.partitions.is_empty() {
        return refuse("beside clear row counts, which an encrypted manifest never has");
    }
    Ok(())
}

/// A manifest comes from the location, which is untrusted: a file name becomes a path in staging
/// (`../x` or `/etc/x` would write outside it), and an object a key to read. Names are one plain path
/// component; an object is the pool object of the file's own SHA-256, and only in format 2.
fn check_file(file: &FileEntry, format_version: u32) -> Result<(), ManifestError> {
    let refuse = |why| {
        Err(ManifestError::ForeignFile {
            file: file.name.clone(),
            why,
        })
    };
    let name = file.name.as_str();
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return refuse("which is not a plain file name");
    }
    let Some(object) = &file.object else {
        return Ok(());
    };
    let pooled = match format_version {
        INCREMENTAL_FORMAT_VERSION => pool_key,
        ENCRYPTED_INCREMENTAL_FORMAT_VERSION => sealed_pool_key,
        _ => {
            return refuse(
                "stored outside its snapshot, which only an incremental manifest may say",
            );
        }
    };
    let is_hex = file.sha256.len() == 64
        && file
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_hex || *object != pooled(&file.sha256) {
        return refuse("stored as an object that is not the pool object of its SHA-256");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(format_version: u32, files: Vec<FileEntry>) -> Vec<u8> {
        let m = Manifest {
            format: "hitkeep-snapshot".into(),
            format_version,
            snapshot_id: "2026-01-01T000000Z".parse().unwrap(),
            database: Database::Shared,
            created_at: Timestamp::UNIX_EPOCH,
            tool: "test".into(),
            duckdb_version: "v2.0.0".into(),
            files,
            tables: BTreeMap::new(),
            tenants: Vec::new(),
            layout: None,
            default_tenant: None,
            source: None,
            sequence: None,
            partitions: Vec::new(),
            encryption: None,
            object_lock: None,
        };
        m.to_bytes()
    }

    fn file(name: &str, object: Option<String>) -> FileEntry {
        FileEntry {
            name: name.into(),
            size: 1,
            sha256: "ab".repeat(32),
            object,
        }
    }

    /// A name becomes a path in staging: one that climbs out of it, or is absolute, is refused
    /// before anything is downloaded.
    #[test]
    fn a_file_name_that_is_not_a_plain_name_is_refused() {
        for name in [
            "../../etc/cron.d/x",
            "/etc/passwd",
            "a/b.parquet",
            "..",
            ".",
            "",
            "a\\b",
        ] {
            let bytes = manifest(FULL_FORMAT_VERSION, vec![file(name, None)]);
            assert!(
                matches!(
                    Manifest::from_slice(&bytes),
                    Err(ManifestError::ForeignFile { .. })
                ),
                "{name:?}"
            );
        }
        let plain = manifest(FULL_FORMAT_VERSION, vec![file("hits.parquet", None)]);
        assert!(Manifest::from_slice(&plain).is_ok());
    }

    /// An object is the pool object of the file's own digest, and only an incremental manifest
    /// names one: a manifest cannot point a restore at another snapshot's or another tenant's key.
    #[test]
    fn an_object_must_be_the_pool_object_of_its_digest() {
        let sha = "ab".repeat(32);
        let good = file("t.all.0.parquet", Some(pool_key(&sha)));
        assert_eq!(
            good.object.as_deref(),
            Some(&*format!("pool/ab/{sha}.parquet"))
        );
        let ok = manifest(INCREMENTAL_FORMAT_VERSION, vec![good.clone()]);
        assert!(Manifest::from_slice(&ok).unwrap().is_incremental());
        let in_full = manifest(FULL_FORMAT_VERSION, vec![good]);
        let elsewhere = |object: &str| {
            manifest(
                INCREMENTAL_FORMAT_VERSION,
                vec![file("t.all.0.parquet", Some(object.into()))],
            )
        };
        for bytes in [
            in_full,
            elsewhere("tenants/x/2026-01-01T000000Z/hits.parquet"),
            elsewhere(&format!("pool/cd/{sha}.parquet")),
            elsewhere(&format!("pool/ab/{}.parquet", "cd".repeat(32))),
        ] {
            assert!(matches!(
                Manifest::from_slice(&bytes),
                Err(ManifestError::ForeignFile { .. })
            ));
        }
    }

    /// Format 4 names the encrypted pool only, and always with its index: a plain pool object in an
    /// encrypted snapshot, or an encrypted one in a plain snapshot, is refused.
    #[test]
    fn an_encrypted_incremental_manifest_names_only_the_encrypted_pool() {
        let sha = "ab".repeat(32);
        let part = |name: &str| FileEntry {
            name: name.into(),
            size: 1,
            sha256: "cd".repeat(32),
            object: None,
        };
        let encrypted = |object: String, index: Option<FileEntry>| {
            let mut m = Manifest::from_slice(&manifest(FULL_FORMAT_VERSION, Vec::new())).unwrap();
            m.format_version = ENCRYPTED_INCREMENTAL_FORMAT_VERSION;
            m.files = vec![file("0f1e.parquet", Some(object))];
            m.encryption = Some(Encryption {
                scheme: AGE_X25519.into(),
                recipients: vec!["age1x".into()],
                sealed: part(SEALED_NAME),
                index,
                tenant_key: None,
            });
            m.to_bytes()
        };
        let good = encrypted(sealed_pool_key(&sha), Some(part(INDEX_NAME)));
        assert_eq!(sealed_pool_key(&sha), format!("pool-e/ab/{sha}.age"));
        let read = Manifest::from_slice(&good).unwrap();
        assert!(read.is_incremental() && read.is_encrypted());
        let in_plain = manifest(
            INCREMENTAL_FORMAT_VERSION,
            vec![file("t.all.0.parquet", Some(sealed_pool_key(&sha)))],
        );
        for bytes in [
            encrypted(pool_key(&sha), Some(part(INDEX_NAME))),
            encrypted(sealed_pool_key(&sha), None),
            encrypted(sealed_pool_key(&sha), Some(part("other.index"))),
            in_plain,
        ] {
            assert!(matches!(
                Manifest::from_slice(&bytes),
                Err(ManifestError::ForeignFile { .. })
            ));
        }
    }
}
