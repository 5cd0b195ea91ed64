//! Progress reporting: the library says what happened, the caller decides how to show it (a progress
//! bar on a terminal, nothing in a log file).

use crate::manifest::Database;

/// Receives progress events from a cycle. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// A database has been exported and its upload starts: `files` files, `bytes` bytes in all.
    fn upload_started(&self, _database: Database, _files: usize, _bytes: u64) {}
    /// One file of `database` finished uploading.
    fn file_uploaded(&self, _database: Database, _name: &str, _bytes: u64) {}
    /// Every file of `database` is uploaded.
    fn upload_finished(&self, _database: Database) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
