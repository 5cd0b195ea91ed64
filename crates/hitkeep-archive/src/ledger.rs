//! The ledger: a small JSON object per site, next to its archive files, recording which (cutoff, file)
//! was written, verified and deleted. It is what makes a crash at any point recoverable without losing
//! or duplicating rows: a rerun finishes a verified file's pending delete, or discards an unverified file.
//!
//! Format 1 (hitkeep before per-table files) has one Parquet file per entry, every table's rows in it.
//! Format 2 says per entry how its rows are stored ([`EntryFormat`], the `format` field, which format 2
//! requires): still one file, or one file per table. An entry is never read by guessing from its names.
//!
//! Entries this build writes also record each object's stored size and SHA-256 (`stored`), so that
//! every later reader can tell an object changed at rest from the one archived. The field is optional
//! within format 2: builds before it ignore it (and drop it when they rewrite the ledger, so an older
//! build run in between leaves those entries unrecorded), and entries without it (theirs, HitKeep's)
//! are read unchecked, which the readers report. An entry records all its objects or none.

use std::collections::BTreeMap;

use hitkeep_storage::ObjectInfo;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The ledger format this build writes.
pub const LEDGER_VERSION: u32 = 2;

/// The last format whose entries carry no `format` field: each is one file ([`EntryFormat::OneFile`]).
const ONE_FILE_VERSION: u32 = 1;

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
        let corrupt = |why: String| crate::Error::LedgerCorrupt {
            key: key.to_owned(),
            why,
        };
        let mut raw: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let version = raw
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt("no format_version".into()))?;
        let version = u32::try_from(version).unwrap_or(u32::MAX);
        if version > LEDGER_VERSION {
            return Err(crate::Error::LedgerTooNew {
                key: key.to_owned(),
                version,
            });
        }
        // The version decides how an entry is stored: format 1 knew only one file per entry, and
        // from format 2 on every entry says so itself (a missing `format` is corrupt, not a guess).
        if version <= ONE_FILE_VERSION {
            let entries = raw
                .get_mut("entries")
                .and_then(serde_json::Value::as_array_mut);
            for entry in entries.into_iter().flatten() {
                if let Some(entry) = entry.as_object_mut() {
                    if entry.contains_key("format") {
                        return Err(corrupt(format!(
                            "a format {version} ledger entry names a format"
                        )));
                    }
                    entry.insert("format".into(), "one_file".into());
                }
            }
        }
        let ledger: Ledger = serde_json::from_value(raw).map_err(|e| corrupt(e.to_string()))?;
        for entry in &ledger.entries {
            // Never some objects checked and some not: a record is whole or absent.
            let recorded: Vec<&str> = entry.stored.keys().map(String::as_str).collect();
            let mut objects = entry.objects();
            objects.sort_unstable();
            if !recorded.is_empty() && recorded != objects {
                return Err(corrupt(format!(
                    "entry {} records the bytes of {recorded:?}, but its objects are {objects:?}",
                    entry.file
                )));
            }
        }
        Ok(ledger)
    }
}

/// One run's archive of a site: one file, or one file per table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The entry's name: for [`EntryFormat::OneFile`] the object name, `site_{site}_{unix}.parquet`;
    /// for [`EntryFormat::PerTable`] the run's name (`site_{site}_{unix}` in the flat local root,
    /// `site_{unix}` in a site's own folder), which its objects' names begin with.
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
    /// How the rows are stored.
    #[serde(flatten)]
    pub format: EntryFormat,
    /// Object name to the size and SHA-256 of the bytes stored (sealed ones for a sealed file), as
    /// uploaded and read back; empty in entries written before hitkeep recorded them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stored: BTreeMap<String, ObjectInfo>,
}

/// How an entry's rows are stored. Every file has the leading `_source` column naming each row's
/// table, so readers that take the files together (`read_parquet([...], union_by_name = true)`)
/// see the same rows either way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum EntryFormat {
    /// One file, [`LedgerEntry::file`], with every table's rows (`UNION ALL BY NAME`: each table's
    /// columns NULL in other tables' rows, DATE columns widened where a TIMESTAMPTZ column has the
    /// same name). Format 1 ledgers, HitKeep's own files.
    OneFile,
    /// One file per table with rows: each holds only its table's columns, in their own types,
    /// which DuckDB writes as fast as a plain `COPY` of the table.
    PerTable {
        /// Table name to object name (in the entry's folder), `{file}.{table}.parquet`.
        parts: BTreeMap<String, String>,
    },
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

    /// The entry's objects, in the entry's folder: its one file, or its files per table.
    pub fn objects(&self) -> Vec<&str> {
        match &self.format {
            EntryFormat::OneFile => vec![self.file.as_str()],
            EntryFormat::PerTable { parts } => parts.values().map(String::as_str).collect(),
        }
    }

    /// What the object `name` of this entry held when it was archived, when the entry recorded it.
    pub fn stored_info(&self, name: &str) -> Option<ObjectInfo> {
        self.stored.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "0197a000-0000-7000-8000-000000000001";

    fn ledger(version: u32, entry: &str) -> String {
        format!(
            r#"{{"format_version":{version},"site_id":"{SITE}","tenant_id":"{SITE}","entries":[{{"file":"site_{SITE}_1.parquet","cutoff":"2026-01-01T00:00:00Z","counts":{{"hits":2}},"oldest":null,"newest":null,"size":9,"state":"deleted"{entry}}}]}}"#
        )
    }

    #[test]
    fn a_format_1_entry_is_one_file_by_its_version() {
        let parsed = Ledger::parse("k", ledger(1, "").as_bytes()).unwrap();
        let entry = &parsed.entries[0];
        assert_eq!(entry.format, EntryFormat::OneFile);
        assert_eq!(entry.objects(), [format!("site_{SITE}_1.parquet")]);
        let refused = Ledger::parse("k", ledger(1, r#","format":"one_file""#).as_bytes());
        assert!(
            matches!(refused, Err(crate::Error::LedgerCorrupt { .. })),
            "format 1 had no format field: {refused:?}"
        );
    }

    #[test]
    fn a_format_2_entry_says_how_it_is_stored() {
        let missing = Ledger::parse("k", ledger(2, "").as_bytes());
        assert!(
            matches!(missing, Err(crate::Error::LedgerCorrupt { .. })),
            "no guessing: {missing:?}"
        );
        let per_table = r#","format":"per_table","parts":{"events":"site_1.events.parquet","hits":"site_1.hits.parquet"}"#;
        let parsed = Ledger::parse("k", ledger(2, per_table).as_bytes()).unwrap();
        assert_eq!(
            parsed.entries[0].objects(),
            ["site_1.events.parquet", "site_1.hits.parquet"]
        );
        let again = serde_json::to_vec(&parsed).unwrap();
        assert_eq!(Ledger::parse("k", &again).unwrap(), parsed, "round trip");
        let one = Ledger::parse("k", ledger(2, r#","format":"one_file""#).as_bytes()).unwrap();
        assert_eq!(one.entries[0].format, EntryFormat::OneFile);
    }

    #[test]
    fn what_was_stored_is_recorded_optionally_and_must_be_a_digest() {
        let digest = "ab".repeat(32);
        let stored = format!(
            r#","format":"one_file","stored":{{"site_{SITE}_1.parquet":{{"size":9,"sha256":"{digest}"}}}}"#
        );
        let parsed = Ledger::parse("k", ledger(2, &stored).as_bytes()).unwrap();
        let entry = &parsed.entries[0];
        let info = entry
            .stored_info(&format!("site_{SITE}_1.parquet"))
            .unwrap();
        assert_eq!((info.size, info.sha256.to_string()), (9, digest));
        assert_eq!(entry.stored_info("other.parquet"), None);
        let again = serde_json::to_vec(&parsed).unwrap();
        assert_eq!(Ledger::parse("k", &again).unwrap(), parsed, "round trip");

        let without = Ledger::parse("k", ledger(2, r#","format":"one_file""#).as_bytes()).unwrap();
        assert!(without.entries[0].stored.is_empty());
        let written = String::from_utf8(serde_json::to_vec(&without).unwrap()).unwrap();
        assert!(!written.contains("stored"), "{written}");

        let partial = stored.replace(&format!("site_{SITE}_1.parquet\":"), "other.parquet\":");
        let refused = Ledger::parse("k", ledger(2, &partial).as_bytes());
        assert!(
            matches!(&refused, Err(crate::Error::LedgerCorrupt { why, .. }) if why.contains("other.parquet")),
            "a record is whole or absent: {refused:?}"
        );
        let bad = stored.replace(&"ab".repeat(32), "not hex");
        let refused = Ledger::parse("k", ledger(2, &bad).as_bytes());
        assert!(
            matches!(&refused, Err(crate::Error::LedgerCorrupt { why, .. }) if why.contains("SHA-256")),
            "{refused:?}"
        );
    }
}
