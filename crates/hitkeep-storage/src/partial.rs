//! Partial uploads that a killed process left behind, found and removed
//! ([`Storage::sweep_partial_uploads`](crate::Storage::sweep_partial_uploads)).
//!
//! A failed upload cleans up after itself (the S3 multipart upload is aborted, the local temporary
//! file removed), but a killed process cleans up nothing: on S3 its multipart upload stays, invisible
//! in listings and billed, and on a local directory its temporary file stays in `.hitkeep-tmp/`.
//!
//! - **Local** (`local.rs`): each opened location stages its writes in a folder of its own,
//!   `.hitkeep-tmp/{pid}-{random}/`, and holds an exclusive lock on the `lock` file in it for as long
//!   as it (or a clone) lives; the folder goes with the last clone. A folder whose lock can be taken
//!   belongs to a process that is gone, whatever its age. Files directly in `.hitkeep-tmp/` come from
//!   versions that staged there; they go once unmodified for longer than the bound and an hour.
//! - **S3** (`s3.rs`): `ListMultipartUploads` under the location's prefix, then
//!   `AbortMultipartUpload` for each upload initiated longer than the bound ago, by the server's
//!   clock (its `Initiated` against its `Date`), never ours.

mod local;
mod s3;

use std::sync::Arc;
use std::time::Duration;

use hitkeep_config::Location;

use crate::error::{Error, Service};
use crate::s3api::SignedS3;

pub(crate) use local::Staging;
pub(crate) use s3::Uploads;

/// What [`Storage::sweep_partial_uploads`](crate::Storage::sweep_partial_uploads) removed and left.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct SweepReport {
    /// What was removed, in the order found.
    pub removed: Vec<PartialUpload>,
    /// Partial uploads left alone: in use by a live process, or not older than the bound.
    pub kept: usize,
    /// What could not be removed, and why; the sweep goes on past them.
    pub failed: Vec<(PartialUpload, Error)>,
}

impl SweepReport {
    /// Bytes removed, where known (local directories; S3 does not list the size of an upload).
    pub fn bytes_removed(&self) -> u64 {
        self.removed.iter().filter_map(|p| p.bytes).sum()
    }
}

/// One partial upload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialUpload {
    /// Relative to the location: the key an S3 multipart upload was for, or the staging path of a
    /// local one (`.hitkeep-tmp/4242-9f3c51d2a07be611`, `.hitkeep-tmp/hits.parquet.Xk3j0a`).
    pub key: String,
    /// What it is.
    pub kind: PartialKind,
    /// Bytes it held: known for local ones; `None` on S3.
    pub bytes: Option<u64>,
    /// When it began: an S3 upload's `Initiated` (the server's clock), or when a local staging folder
    /// was made (this machine's clock); `None` for a loose file.
    pub started: Option<jiff::Timestamp>,
}

/// The kinds of partial upload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PartialKind {
    /// An S3 multipart upload that was never completed or aborted.
    Multipart {
        /// The upload id the service gave it.
        upload_id: String,
    },
    /// The local staging folder of a process that is gone, with whatever it was writing.
    StagingFolder,
    /// A file directly in `.hitkeep-tmp/`, left by a version that staged there.
    LooseFile,
}

/// How a storage finds its partial uploads.
#[derive(Clone, Debug)]
pub(crate) enum Sweeper {
    Local(Staging),
    S3(Arc<Uploads>),
}

impl Sweeper {
    /// The staging folder a local location's writes go through, made and locked now.
    pub(crate) fn staging(location: &Location) -> Option<Staging> {
        match location {
            Location::Local(path) => Some(Staging::open(path)),
            Location::S3(_) => None,
        }
    }

    /// The sweeper of a location whose operators are built: on S3 it signs and sends as `plain` does.
    pub(crate) fn new(
        location: &Location,
        api: Option<Arc<SignedS3>>,
        staging: Option<Staging>,
        service: &Service,
    ) -> Sweeper {
        match (location, api) {
            (Location::S3(l), Some(api)) => Sweeper::S3(Arc::new(Uploads::new(l, api, service))),
            (Location::Local(path), _) => {
                Sweeper::Local(staging.unwrap_or_else(|| Staging::open(path)))
            }
            (Location::S3(_), None) => {
                unreachable!("an S3 location always has its signed requests")
            }
        }
    }

    pub(crate) async fn sweep(&self, older_than: Duration) -> crate::Result<SweepReport> {
        match self {
            Sweeper::Local(staging) => staging.sweep(older_than).await,
            Sweeper::S3(uploads) => uploads.sweep(older_than).await,
        }
    }
}
