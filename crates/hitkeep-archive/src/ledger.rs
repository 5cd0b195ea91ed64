//! The ledger: a small JSON object per site, next to its archive files, recording which (cutoff, file)
//! was written, verified and deleted. It is what makes a crash at any point recoverable without losing
//! or duplicating rows: a rerun finishes a verified file's pending delete, or discards an unverified file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The ledger format this build writes.
pub const LEDGER_VERSION: u32 = 1;

/// One site's archive history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// [`LEDGER_VERSION`].
    pub format_version: u32,
    /// The site.
    pub site_id: Uuid,
    /// The tenant whose database holds the site's rows.
    pub tenant_id: Uuid,
    /// Every archive file, oldest first.
    pub entries: Vec<LedgerEntry>,
}

impl Ledger {
    /// The ledger stored at `key`; one a newer hitkeep wrote is refused, since its entries may mean
    /// what this build does not know.
    pub(crate) fn parse(key: &str, bytes: &[u8]) -> crate::Result<Ledger> {
        let ledger: Ledger =
            serde_json::from_slice(bytes).map_err(|e| crate::Error::LedgerCorrupt {
                key: key.to_owned(),
                why: e.to_string(),
            })?;
        if ledger.format_version > LEDGER_VERSION {
            return Err(crate::Error::LedgerTooNew {
                key: key.to_owned(),
                version: ledger.format_version,
            });
        }
        Ok(ledger)
    }
}

/// One archive file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The object name, `site_{site}_{unix}.parquet`.
    pub file: String,
    /// The cutoff instant (RFC 3339, microseconds) the file holds the rows before.
    pub cutoff: String,
    /// Rows per table in the file.
    pub counts: BTreeMap<String, u64>,
    /// The oldest time value archived, as text.
    pub oldest: Option<String>,
    /// The newest time value archived, as text.
    pub newest: Option<String>,
    /// Bytes.
    pub size: u64,
    /// How far the file got.
    pub state: EntryState,
}

/// How far an archive file got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Being written or uploaded, or verified but its rows changed in the database before their delete
    /// (which was rolled back); not trusted. A rerun deletes the object and starts over.
    Pending,
    /// Uploaded and read back; its rows may still be in the database. A rerun finishes the delete.
    Verified,
    /// The rows are in the file and gone from the database.
    Deleted,
    /// The rows were put back by `archive restore`; the file no longer counts as the archive of record
    /// (the next run archives those rows again, into a new file).
    Restored,
}

impl LedgerEntry {
    /// Total rows.
    pub fn rows(&self) -> u64 {
        self.counts.values().sum()
    }
}
