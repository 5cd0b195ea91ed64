//! The installation's source id: who wrote a snapshot. Two installations (or two data paths of one
//! host) that back up to the same destination must not be mistaken for one another, so every cycle
//! records the id of the data it came from, and restore, "latest" and prune only ever combine snapshots
//! of one source.
//!
//! The id lives in `{HITKEEP_DATA_PATH}/.hitkeep-source`, one UUID on one line, beside the data and
//! outside HitKeep's schema: HitKeep's migrations never see it and a restore never rewrites it
//! (see [`DataLayout::adopt_source_id`] for what a restore onto a new machine does).

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DataError, DataLayout};

/// The file that holds the source id, inside the data path.
pub const SOURCE_FILE: &str = ".hitkeep-source";
/// The index key's file in the data directory ([`DataLayout::index_key_file`]).
pub const INDEX_KEY_FILE: &str = ".hitkeep-index-key";
/// The host's archive key's file in the data directory ([`DataLayout::archive_key_file`]).
pub const ARCHIVE_KEY_FILE: &str = ".hitkeep-archive-key";
/// The folder of the tenants' public keys in the data directory ([`DataLayout::tenant_keys_dir`]).
pub const TENANT_KEYS_DIR: &str = ".hitkeep-tenant-keys";

/// A stable, random id of one installation's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceId(Uuid);

impl SourceId {
    /// A fresh random id.
    pub fn random() -> Self {
        SourceId(Uuid::new_v4())
    }

    /// The first eight hex digits, enough to tell sources apart in a table.
    pub fn short(&self) -> String {
        self.0.simple().to_string()[..8].to_owned()
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SourceId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim()).map(SourceId)
    }
}

impl SourceId {
    /// The id in `file`, if there is one yet.
    pub fn read(file: &Path) -> Result<Option<SourceId>, DataError> {
        read_source(file)
    }

    /// The id in `file`, created (atomically, durably) when there is none yet.
    pub fn read_or_create(file: &Path) -> Result<SourceId, DataError> {
        if let Some(id) = read_source(file)? {
            return Ok(id);
        }
        let id = SourceId::random();
        match write_new(file, id) {
            Ok(()) => Ok(id),
            // Another process created it first: its id is the one.
            Err(_) if file.exists() => {
                read_source(file)?.ok_or_else(|| DataError::source_corrupt(file, "empty file"))
            }
            Err(e) => Err(source_error(file, e)),
        }
    }
}

impl DataLayout {
    /// `{data}/.hitkeep-source`.
    pub fn source_file(&self) -> PathBuf {
        self.data_path.join(SOURCE_FILE)
    }

    /// `{data}/.hitkeep-index-key`: the key of this installation's encrypted incremental snapshots'
    /// partition indexes, made by the first such cycle.
    pub fn index_key_file(&self) -> PathBuf {
        self.data_path.join(INDEX_KEY_FILE)
    }

    /// `{data}/.hitkeep-archive-key`: the key this installation seals its archive files to besides
    /// the operator's recipients, so that a run reads back what it wrote before it deletes rows.
    pub fn archive_key_file(&self) -> PathBuf {
        self.data_path.join(ARCHIVE_KEY_FILE)
    }

    /// `{data}/.hitkeep-tenant-keys`: the public key each tenant's snapshots are sealed to, one file
    /// per tenant, when tenants have keys of their own. The host encrypts only to keys it recorded
    /// here itself, never to one read from the backup location.
    pub fn tenant_keys_dir(&self) -> PathBuf {
        self.data_path.join(TENANT_KEYS_DIR)
    }

    /// The source id, if this data path has one yet (the first backup creates it).
    pub fn source_id(&self) -> Result<Option<SourceId>, DataError> {
        SourceId::read(&self.source_file())
    }

    /// The source id, created (atomically, durably) when this data path has none yet.
    pub fn source_id_or_create(&self) -> Result<SourceId, DataError> {
        SourceId::read_or_create(&self.source_file())
    }

    /// What a restore does with the source of the snapshot it restored: a data path without a source
    /// of its own (a new machine taking over) adopts it, so its backups go on as the same source and
    /// prune and "latest" keep treating the old snapshots as its own. A data path that has a source
    /// keeps it (a copy of production restored into staging must not write as production). Returns
    /// whether the id was adopted.
    pub fn adopt_source_id(&self, id: SourceId) -> Result<bool, DataError> {
        if self.source_id()?.is_some() {
            return Ok(false);
        }
        match write_new(&self.source_file(), id) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(source_error(&self.source_file(), e)),
        }
    }
}

fn read_source(path: &Path) -> Result<Option<SourceId>, DataError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .parse()
            .map(Some)
            .map_err(|_| DataError::source_corrupt(path, "not a UUID")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(source_error(path, e)),
    }
}

/// Writes `id` to a temporary file, fsyncs it, and links it into place only if `path` does not exist
/// yet, then fsyncs the folder: never a half-written id, and never one replaced.
fn write_new(path: &Path, id: SourceId) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{SOURCE_FILE}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{id}")?;
        file.sync_all()?;
        // A hard link fails when the target exists, where a rename would replace it.
        std::fs::hard_link(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

fn source_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::SourceFile {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
        assert_eq!(layout.source_id().unwrap(), None);
        let id = layout.source_id_or_create().unwrap();
        assert_eq!(layout.source_id_or_create().unwrap(), id);
        assert_eq!(layout.source_id().unwrap(), Some(id));
        // A restore onto a data path that has a source keeps it.
        assert!(!layout.adopt_source_id(SourceId::random()).unwrap());
        assert_eq!(layout.source_id().unwrap(), Some(id));
        let text = std::fs::read_to_string(layout.source_file()).unwrap();
        assert_eq!(text, format!("{id}\n"));
    }

    #[test]
    fn a_new_machine_adopts_the_restored_source() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
        let old = SourceId::random();
        assert!(layout.adopt_source_id(old).unwrap());
        assert_eq!(layout.source_id_or_create().unwrap(), old);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path());
        std::fs::write(layout.source_file(), "garbage").unwrap();
        let err = layout.source_id_or_create().unwrap_err().to_string();
        assert!(err.contains(".hitkeep-source"), "{err}");
        assert!(err.contains("not a UUID"), "{err}");
    }
}
