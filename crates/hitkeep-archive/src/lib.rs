//! Per-site retention archives: each site's rows older than its retention window go to Parquet in the
//! archive location and only then leave the database, with nothing lost or duplicated.
//!
//! [`run`] loads the policies (sites with `data_retention_days > 0`, mapped to their tenants), and per
//! site: computes one [`Cutoff`] used for counting, exporting and deleting; exports the expired rows of the
//! one table list ([`TABLES`]) to Parquet, one file per table with a leading `_source` column
//! ([`EntryFormat::PerTable`]); uploads each through hitkeep-storage as it is written; reads each back
//! and checks its count; and deletes the rows in one transaction that first compares them, by
//! content, with the files read back: rows another connection changed before that transaction
//! began stop the delete ([`Error::RowsChanged`]); through [`run`], an embedding server's rewrites in
//! place, which DuckDB would let commit beside it, are held back for its length
//! ([`hitkeep_data::HeldDatabases::pause_rewrites`]). A [`Ledger`] next to the files makes every crash
//! recoverable on the next run; [`ArchiveEvents`] hears each step.
//! [`ImportPlan`] puts a tenant's archived rows back (`recover import-archives`), idempotently.
//!
//! What this crate will not do: talk to object storage except through hitkeep-storage, read settings from
//! the environment, or delete a row that is not in a verified archive.

#![deny(missing_docs)]

mod browse;
mod compare;
mod error;
mod import;
mod ledger;
mod run;
mod sealed;
mod tables;

pub use crate::{
    browse::{
        ArchiveObject, create_view, files, ledgers, local_copies, mark_restored, restore_rows,
    },
    error::{Error, ErrorKind, Result},
    import::{ImportPlan, ImportSummary, TableCounts},
    ledger::{EntryFormat, EntryState, LEDGER_VERSION, Ledger, LedgerEntry},
    run::{
        ArchiveEvents, ArchiveOptions, NoEvents, SitePolicy, SiteReport, archive_site,
        default_tenant, ledger_key, load_policies, run, site_dir,
    },
    tables::{ArchiveTable, Cutoff, Grain, TABLES},
};
