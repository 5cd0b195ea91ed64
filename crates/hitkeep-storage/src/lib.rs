//! One storage API over OpenDAL for HitKeep's backups and archives: local disk, AWS S3, MinIO, Garage
//! and Cloudflare R2.
//!
//! [`Storage::open`] turns a [`Location`](hitkeep_config::Location) and the shared
//! [`S3Settings`](hitkeep_config::S3Settings) into an OpenDAL operator with retry (exponential backoff
//! with jitter), timeouts and tracing, and checks that an S3 bucket exists. Its methods are what the
//! backup and archive crates need: streaming multipart upload of a file returning size and SHA-256,
//! verified streaming download, listing (recursive or one level), stat, delete, delete of a prefix, and
//! small reads and writes. Failures are [`Error`]s with a [`ErrorKind`] to branch on and a hint for people.
//!
//! A write that returned on a local location is durable: the file is fsynced before its rename into
//! place (OpenDAL does that, and `link.rs` for a file stored by hard link), and the folders the rename changed are fsynced after it (we do), so a
//! power loss never forgets an object that a later step relied on. [`sync_dir`] is that folder fsync,
//! for callers that rename local files themselves.
//!
//! A killed process cannot clean up after itself, so [`Storage::sweep_partial_uploads`] does it for
//! it: on S3 it aborts the multipart uploads under the location's prefix that the server says began
//! more than a given time ago; on a local directory, where each storage stages its writes in a
//! `.hitkeep-tmp/` folder of its own that it keeps locked, it removes the folders nobody holds.
//!
//! Every S3 upload request carries an integrity header, as `HITKEEP_S3_CHECKSUM` says: CRC32C, or
//! Content-MD5 for providers that refuse `x-amz-checksum-*` headers (under `auto`, the default, a
//! storage switches by itself on the first refusal and sends the refused upload again).
//!
//! ```no_run
//! # async fn demo(settings: hitkeep_config::Settings) -> hitkeep_storage::Result<()> {
//! use hitkeep_storage::{Storage, TransferOptions};
//!
//! let location = settings.backup.location.expect("backups enabled");
//! let storage = Storage::open(&location, &settings.s3).await?;
//! let info = storage.upload_file("staging/hits.parquet".as_ref(), "shared/2026-03-08T120000Z/hits.parquet", &TransferOptions::default()).await?;
//! println!("{} bytes, sha256 {}", info.size, info.sha256);
//! # Ok(()) }
//! ```
//!
//! What this crate will not do: know about DuckDB, snapshots or archives (keys are opaque to it), or
//! read settings from the environment (callers pass them in).

#![deny(missing_docs)]

mod backend;
mod digest;
mod durable;
mod error;
mod integrity;
mod link;
mod object_lock;
mod partial;
pub mod report;
mod s3api;
mod storage;
mod versions;

pub use hitkeep_config::LockMode;

pub use crate::{
    backend::{
        DEFAULT_IO_TIMEOUT, DEFAULT_MAX_BACKOFF, DEFAULT_MIN_BACKOFF, DEFAULT_RETRIES,
        DEFAULT_TIMEOUT, StorageOptions,
    },
    digest::{DigestParseError, ObjectInfo, Sha256Digest},
    durable::sync_dir,
    error::{Error, ErrorKind, Result},
    object_lock::{BucketLock, Retained, Retention},
    partial::{PartialKind, PartialUpload, SweepReport},
    storage::{
        ChecksumSupport, DEFAULT_CHUNK_SIZE, DEFAULT_CONCURRENCY, Entry, ListMode, Storage,
        TransferOptions, file_chunks,
    },
};

/// `tracing` filter directives that every subscriber logging this crate's dependencies must add
/// after its own level: reqsign (OpenDAL's request signer) logs the whole static credential,
/// secret key included, at `debug` (found by `cargo xtask e2e`'s secret scan at trace level); and
/// OpenDAL's tracing layer opens a `debug` span, `http::fetch`, that records the whole request, body
/// included, which every event inside it (hyper's, at `debug`) then prints: a debug log held every
/// uploaded byte, a plain snapshot's rows among them (found by the e2e's 3.6 GB transcript).
pub const LOG_DIRECTIVES: &[&str] = &["reqsign=info", "opendal_layer_tracing=info"];
