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
}

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

    /// Whether databases are lent by a server in this process.
    pub fn holds_databases(&self) -> bool {
        self.held.is_some()
    }
}
