//! The engine a HitKeep server embeds, and that the `hitkeep` binary is a thin shell over.
//!
//! A running HitKeep server holds its DuckDB files open for writing, so no second process can back
//! them up: in production the engine runs inside the server. This crate is what such a server needs,
//! built from the libraries below it:
//!
//! - [`Engine`]: the settings, the data layout (optionally the server's own open databases,
//!   [`hitkeep_data::HeldDatabases`]) and the jobs: [`Engine::backup`] (tenant discovery, the cycle,
//!   retention and leftovers after it) and [`Engine::archive`] (every site's expired rows);
//! - [`Scheduler`]: runs those jobs one at a time on their intervals, driven by a [`Clock`] and a
//!   shutdown signal, so tests run it in tokio's paused time;
//! - [`BackupStatus`]: the one record of what the jobs did, which feeds the status file, HitKeep's
//!   status JSON, the health rule and (feature `monitor`) the Prometheus metrics and HTTP endpoints;
//! - [`doctor`]: structured self-checks of the destinations and the local layout;
//! - [`notify`]: heartbeat and failure notifications after cycles;
//! - the operator's operations (list, verify, prune, restore, archive queries) as functions that
//!   return data.
//!
//! What this crate will not do: read the environment or argv (callers pass [`hitkeep_config::Settings`]),
//! print, choose exit codes, or install signal handlers (the caller passes a shutdown future).

#![deny(missing_docs)]

pub mod archives;
pub mod doctor;
mod engine;
mod error;
mod jobs;
#[cfg(feature = "monitor")]
pub mod monitor;
pub mod notify;
pub mod recover;
pub mod restore;
mod scheduler;
mod snapshots;
pub mod status;

pub use crate::engine::{Engine, PARTIAL_UPLOAD_AGE, sweep_partial_uploads};
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::jobs::{
    ARCHIVE_INTERVAL, ArchiveJob, ArchiveRun, BackupJob, FIRST_ARCHIVE_DELAY, FIRST_BACKUP_DELAY,
};
pub use crate::scheduler::{
    Clock, Finished, Job, JobKind, JobReport, RunContext, Scheduler, Stop, SystemClock, TokioClock,
};
pub use crate::snapshots::{ForgetJob, LifecycleRules, Listing, PruneJob, Pruned, RewrapJob};
pub use crate::status::{BackupStatus, Health, StatusBoard};

/// An error and its causes on one line, `message: cause: cause`, leaving out a cause whose text the
/// message already holds (thiserror's `{source}` formats it in). What the status record keeps.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
