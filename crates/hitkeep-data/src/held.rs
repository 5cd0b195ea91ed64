//! Databases this process already holds open: a HitKeep server that embeds the engine.
//!
//! DuckDB takes a whole-file lock on a database it opens for writing, and the kernel check in
//! [`lock_holder`](crate::lock_holder) counts a connection of this very process as a holder, so a job
//! must never open a file its server holds: it must use the server's instance. A [`HeldDatabases`]
//! given to [`DataLayout::with_held`] answers "is this file yours?" with a new connection to the
//! server's instance, and every open through the layout uses it.

use std::path::Path;
use std::sync::Arc;

use duckdb::Connection;

use crate::DataLayout;

/// What a server that holds databases open lends to the jobs.
pub trait HeldDatabases: Send + Sync {
    /// A new connection (`Connection::try_clone` of the server's) to the database at `path`, or
    /// `None` when this process does not hold it and the file may be opened.
    fn connect(&self, path: &Path) -> Option<Result<Connection, duckdb::Error>>;

    /// Holds back the server's in-place rewrites of rows in the database at `path` while the archive
    /// deletes rows it archived: called just before that delete's transaction begins, and what it
    /// returns is dropped once the transaction has committed or rolled back (about a second per
    /// delete at 1M hits, most of it DuckDB's commit).
    ///
    /// DuckDB does not count an in-place `UPDATE` as a conflict for another transaction's `DELETE` of
    /// the same row (duckdb/duckdb#17223; in 1.5 both commit, whether the update came before the
    /// DELETE or after it), so an update committed while that transaction is open is lost, with the
    /// row's old content archived. A server that rewrites rows older than a site's retention in place
    /// (a correction, an anonymising pass, an upsert of an old rollup bucket) holds the shared side of
    /// a lock from before each such update until its transaction has committed, never across anything
    /// that waits for a job, and returns the exclusive side here. Inserts and deletes need nothing:
    /// DuckDB's snapshot keeps new rows out of the delete, and a delete of the same row is a
    /// conflict. The default holds nothing back, which is right for a server that never updates
    /// expired rows.
    fn pause_rewrites(&self, _path: &Path) -> Box<dyn Paused + '_> {
        Box::new(())
    }
}

/// A pause of a server's rewrites ([`HeldDatabases::pause_rewrites`]): it ends when dropped. Any value
/// is one, a lock guard most usefully.
pub trait Paused {}

impl<T> Paused for T {}

/// A shared [`HeldDatabases`], compared by identity so a layout stays comparable.
#[derive(Clone)]
pub struct Held(pub Arc<dyn HeldDatabases>);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held(..)")
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Held {}

impl DataLayout {
    /// The same layout, opening the databases `held` holds through it. DuckDB's limits are then not
    /// applied to those: they are the server's instance, whose budget is the server's to set.
    pub fn with_held(mut self, held: Arc<dyn HeldDatabases>) -> Self {
        self.held = Some(Held(held));
        self
    }

    /// [`HeldDatabases::pause_rewrites`] of the layout's server, asked whether it lends `path` or not
    /// (when it does not, the file was opened by this process and nobody else writes it); nothing
    /// without a server.
    pub fn pause_rewrites(&self, path: &Path) -> Option<Box<dyn Paused + '_>> {
        self.held.as_ref().map(|held| held.0.pause_rewrites(path))
    }

    /// Whether databases are lent by a server in this process.
    pub fn holds_databases(&self) -> bool {
        self.held.is_some()
    }
}
