//! [`Storage`]: every byte HitKeep stores goes through here.

use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt as _, TryStreamExt as _};
use hitkeep_config::{Location, S3Checksum, S3Settings};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::backend::{self, FS_STAGING_DIR, Operators, StorageOptions};
use crate::digest::{ObjectInfo, Sha256Digest};
use crate::durable;
use crate::error::{Error, ErrorKind, Result, Service};
use crate::integrity::{self, Header, Integrity, Refusal};
use crate::link;
use crate::object_lock::{BucketLock, ObjectLocks, Retained, Retention};
use crate::partial::{SweepReport, Sweeper};
use crate::s3api::SignedS3;

/// Whole-file attempts when the server refuses an upload as damaged (checksum mismatch).
const UPLOAD_ATTEMPTS: u32 = 3;

/// Chunk size for multipart uploads and ranged downloads: S3's part-count limit (10,000) allows 160 GB.
pub const DEFAULT_CHUNK_SIZE: usize = 16 * 1024 * 1024;
/// Parts in flight at once. Memory for a transfer is about chunk size × (concurrency + 1).
pub const DEFAULT_CONCURRENCY: usize = 4;

/// Chunking for large transfers.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct TransferOptions {
    /// Bytes per part (at least 5 MiB for S3 multipart, except the last).
    pub chunk_size: usize,
    /// Parts in flight at once.
    pub concurrency: usize,
    /// Whether a local location may link the source file instead of copying it ([`Self::linking`]).
    pub link: bool,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            link: false,
        }
    }
}

impl TransferOptions {
    /// Options with the given chunk size and concurrency (each at least 1).
    pub fn new(chunk_size: usize, concurrency: usize) -> Self {
        TransferOptions {
            chunk_size: chunk_size.max(1),
            concurrency: concurrency.max(1),
            link: false,
        }
    }

    /// These options, allowing a local location on the source file's filesystem to store the file by
    /// hard link instead of a copy (`link.rs`). Only for a file that is never written again once its
    /// upload began, other than by appending what the upload goes on to read (a file still being
    /// exported): the stored object is then that very file. Nothing changes on S3.
    pub fn linking(self) -> Self {
        TransferOptions { link: true, ..self }
    }
}

/// How deep a listing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListMode {
    /// Every object under the prefix, at any depth. Only objects, no directories.
    Recursive,
    /// The objects and "directories" (common prefixes) directly under the prefix.
    OneLevel,
}

/// An entry in a listing. Keys are relative to the storage's location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `shared/2026-03-08T120000Z/manifest.json`; directories carry no trailing `/`.
    pub key: String,
    /// A common prefix (S3) or directory (local), not an object.
    pub is_dir: bool,
    /// Size in bytes; 0 for directories.
    pub size: u64,
    /// When it was last modified, by the service's clock, where the listing says (S3's and a local
    /// directory's do; otherwise [`Storage::modified_at`] asks).
    pub modified: Option<jiff::Timestamp>,
}

impl Entry {
    /// The last segment of the key.
    pub fn name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }
}

/// What a service answered to a small PUT carrying each integrity header ([`Storage::probe_checksums`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChecksumSupport {
    /// `x-amz-checksum-crc32c`: accepted, or the service's refusal (`400 InvalidArgument: …`).
    pub crc32c: Result<(), String>,
    /// `Content-MD5`: accepted, or the service's refusal.
    pub md5: Result<(), String>,
}

impl ChecksumSupport {
    /// The answers to both probes (`Err` holds a refusal, as one line).
    pub fn new(crc32c: Result<(), String>, md5: Result<(), String>) -> Self {
        ChecksumSupport { crc32c, md5 }
    }

    /// The `HITKEEP_S3_CHECKSUM` value that suits this service: `auto` where CRC32C is taken (the
    /// default, and the strongest check), `md5` where only Content-MD5 is, `off` where neither is.
    pub fn recommended(&self) -> S3Checksum {
        match (&self.crc32c, &self.md5) {
            (Ok(()), _) => S3Checksum::Auto,
            (Err(_), Ok(())) => S3Checksum::Md5,
            (Err(_), Err(_)) => S3Checksum::Off,
        }
    }
}

/// A location opened for reading and writing: a local directory or an S3 bucket prefix.
#[derive(Clone, Debug)]
pub struct Storage {
    ops: Operators,
    location: Location,
    service: Service,
    /// Which integrity header uploads carry; shared by clones, so a switch holds for all of them.
    integrity: Arc<Integrity>,
    /// Finds partial uploads; on a local directory it also holds this storage's staging folder.
    partial: Sweeper,
    /// S3 Object Lock requests; `None` on a local directory.
    locks: Option<Arc<ObjectLocks>>,
}

impl Storage {
    /// Opens `location` with default retry and timeout options. A local directory is created when
    /// missing; an S3 bucket must exist (checked now, because some servers create buckets on first
    /// write and a typo would otherwise scatter backups into a new bucket).
    pub async fn open(location: &Location, s3: &S3Settings) -> Result<Storage> {
        Storage::open_with(location, s3, &StorageOptions::default()).await
    }

    /// Opens a location that must already exist, as a restore source: nothing is created.
    pub async fn open_existing(location: &Location, s3: &S3Settings) -> Result<Storage> {
        if let Location::Local(path) = location
            && !path.is_dir()
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                "open",
                path.display().to_string(),
                if path.exists() {
                    "not a directory"
                } else {
                    "no such directory"
                },
            )
            // Backups and archives both come through here, so the hint names no layout.
            .with_hint("check the path: it must name an existing directory"));
        }
        Storage::open(location, s3).await
    }

    /// [`Storage::open`] with explicit retry and timeout options.
    pub async fn open_with(
        location: &Location,
        s3: &S3Settings,
        options: &StorageOptions,
    ) -> Result<Storage> {
        let setting = match location {
            Location::S3(_) => s3.checksum,
            Location::Local(_) => S3Checksum::Off,
        };
        let integrity = Arc::new(Integrity::new(setting));
        let staging = Sweeper::staging(location);
        let fs_staging = staging.as_ref().map(|s| s.dir());
        let (ops, service) = backend::build(location, s3, options, &integrity, fs_staging)?;
        let api = match location {
            Location::S3(l) => Some(Arc::new(SignedS3::new(l.bucket(), s3, &ops.plain, options))),
            Location::Local(_) => None,
        };
        let locks = match (location, &api) {
            (Location::S3(l), Some(api)) => Some(Arc::new(ObjectLocks::new(
                api.clone(),
                l.prefix(),
                location.to_string(),
                &service,
            ))),
            _ => None,
        };
        let partial = Sweeper::new(location, api, staging, &service);
        let storage = Storage {
            ops,
            location: location.clone(),
            service,
            integrity,
            partial,
            locks,
        };
        if location.is_s3() {
            integrity::warn_if_off(setting);
            // One cheap request proves the bucket exists and the credentials are accepted.
            storage
                .ops
                .plain
                .list_with("")
                .limit(1)
                .await
                .map_err(|e| storage.err(e, "open", ""))?;
        }
        Ok(storage)
    }

    /// The location this storage was opened on.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// `s3://bucket/prefix/key` or `/dir/key`: how messages name an object.
    pub fn describe(&self, key: &str) -> String {
        let base = self.location.to_string();
        if key.is_empty() {
            base
        } else {
            format!("{}/{key}", base.trim_end_matches('/'))
        }
    }

    /// The integrity header uploads carry now: `crc32c`, `md5` (also after `auto` switched) or `off`
    /// (and on local directories, which need none).
    pub fn checksum_in_use(&self) -> S3Checksum {
        match self.integrity.header() {
            Header::Crc32c => S3Checksum::Crc32c,
            Header::Md5 => S3Checksum::Md5,
            Header::None => S3Checksum::Off,
        }
    }

    /// Whether the bucket has S3 Object Lock enabled, with the server's time. A local directory has
    /// no such thing: `Unsupported`.
    pub async fn bucket_object_lock(&self) -> Result<BucketLock> {
        self.locks()?.bucket().await
    }

    /// `key`'s Object Lock retention, with the server's time.
    pub async fn retained(&self, key: &str) -> Result<Retained> {
        check_key(key, "read retention")?;
        self.locks()?.retained(key).await
    }

    /// Keeps `key` from deletion and overwrite until `want.until` (the server's clock), unless it is
    /// already kept at least that long: a retention is never shortened. The bucket must have Object
    /// Lock enabled.
    pub async fn retain(&self, key: &str, want: Retention) -> Result<()> {
        check_key(key, "set retention")?;
        self.locks()?.retain(key, want).await
    }

    fn locks(&self) -> Result<&ObjectLocks> {
        self.locks.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "object lock",
                self.location.to_string(),
                "S3 Object Lock needs an S3 location; a directory has none",
            )
        })
    }

    fn err(&self, e: opendal::Error, operation: &'static str, key: &str) -> Error {
        Error::from_opendal(e, operation, self.describe(key), &self.service)
    }

    /// A write's failure: the provider's refusal of the integrity header it carried, or any other error.
    fn write_err(
        &self,
        e: opendal::Error,
        operation: &'static str,
        key: &str,
        header: Header,
    ) -> (Error, Option<Refusal>) {
        match Refusal::from_opendal(&e).filter(|_| header != Header::None) {
            Some(refusal) => {
                // The whole request context is for debugging; the person reads the provider's words.
                tracing::debug!(key, error = %e, "integrity header refused");
                let error = Error::checksum_refused(
                    operation,
                    self.describe(key),
                    &self.service,
                    header,
                    &refusal,
                );
                (error, Some(refusal))
            }
            None => (self.err(e, operation, key), None),
        }
    }

    /// Under `auto`, a refused CRC32C header switches this storage to Content-MD5: send again.
    fn switched(&self, header: Header, refusal: Option<&Refusal>) -> bool {
        refusal.is_some_and(|r| self.integrity.switch(header, r, &self.service.name))
    }

    /// Uploads a local file as `key`, streaming it in chunks (multipart on S3), and returns its size and
    /// SHA-256. On failure the partial upload is aborted, so no object that looks complete is left.
    /// With [`TransferOptions::linking`], a local location may store the file itself (a hard link):
    /// writing into `local` afterwards then changes the object.
    pub async fn upload_file(
        &self,
        local: &Path,
        key: &str,
        options: &TransferOptions,
    ) -> Result<ObjectInfo> {
        check_key(key, "upload")?;
        // A request the server refused for its checksum was damaged on the way; OpenDAL counts a 400
        // as permanent, but sending the file again is the cure (the e2e fault proxy showed it).
        let mut attempt = 1;
        loop {
            match self.upload_once(local, key, options).await {
                Err(e) if e.kind() == ErrorKind::Integrity && attempt < UPLOAD_ATTEMPTS => {
                    tracing::warn!(key, attempt, error = %e, "the server refused a damaged upload; sending it again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn upload_once(
        &self,
        local: &Path,
        key: &str,
        options: &TransferOptions,
    ) -> Result<ObjectInfo> {
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| Error::local("upload", local, e))?;
        self.upload_stream(local, key, file_chunks(file, options.chunk_size), options)
            .await
    }

    /// Uploads the bytes `chunks` yields as `key`, as they come (multipart on S3), and returns their
    /// size and SHA-256: for data whose end is not known yet, such as a file another thread is still
    /// writing. `source` names the data in errors; with [`TransferOptions::linking`] it must be the file
    /// `chunks` reads from its start, which a local location may then store itself. A failing stream aborts the upload, so no object
    /// that looks complete is left; unlike [`Storage::upload_file`] nothing is sent again after a
    /// damaged request, since the stream cannot be replayed. Until the service is known to take the
    /// CRC32C header, the chunks sent are kept, so that `auto` can send them again with Content-MD5.
    pub async fn upload_stream(
        &self,
        source: &Path,
        key: &str,
        mut chunks: impl futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
        options: &TransferOptions,
    ) -> Result<ObjectInfo> {
        check_key(key, "upload")?;
        let mut again = Vec::new();
        loop {
            let header = self.integrity.header();
            let sent_before = futures::stream::iter(std::mem::take(&mut again).into_iter().map(Ok));
            let stream = sent_before.chain(&mut chunks);
            let failed = match self
                .upload_attempt(header, source, key, stream, options)
                .await
            {
                Ok(info) => {
                    self.made_durable(key, "upload").await?;
                    return Ok(info);
                }
                Err(failed) => failed,
            };
            // Switched even when this upload cannot be sent again, so that the next one can.
            let switched = self.switched(header, failed.refusal.as_ref());
            match failed.kept {
                Some(kept) if switched => again = kept,
                _ => return Err(failed.error),
            }
        }
    }

    /// One upload of `chunks` with `header`. On failure the upload is aborted; a refusal of the header
    /// comes back with the chunks sent, when they were kept.
    async fn upload_attempt(
        &self,
        header: Header,
        source: &Path,
        key: &str,
        mut chunks: impl futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
        options: &TransferOptions,
    ) -> Result<ObjectInfo, Failed> {
        if let Some((linked, dest)) = self.link_source(source, key, options) {
            return adopt(linked, &dest, source, chunks).await.map_err(|e| {
                let error = match e {
                    Adopt::Read(e) => Error::local("upload", source, e),
                    Adopt::Placed(link::NotPlaced::Io(e)) => Error::local("upload", &dest, e),
                    Adopt::Placed(link::NotPlaced::Changed { found, read }) => Error::new(
                        ErrorKind::Integrity,
                        "upload",
                        source.display().to_string(),
                        format!("the file holds {found} bytes where {read} were read: it changed while it was stored"),
                    ),
                };
                Failed::from((error, None))
            });
        }
        let mut writer = self
            .ops
            .writing(header)
            .writer_with(key)
            .chunk(options.chunk_size)
            .concurrent(options.concurrency)
            .await
            .map_err(|e| Failed::from(self.write_err(e, "upload", key, header)))?;
        let mut sent = Sent {
            hasher: sha2::Sha256::new(),
            size: 0,
            kept: self.integrity.may_switch(header).then(Vec::new),
        };
        let outcome = sent.pump(&mut writer, &mut chunks, &self.integrity).await;
        let stop = match outcome {
            Ok(()) => {
                return Ok(ObjectInfo {
                    size: sent.size,
                    sha256: Sha256Digest::from_hasher(sent.hasher),
                });
            }
            Err(stop) => stop,
        };
        if let Err(abort) = writer.abort().await {
            tracing::warn!(key, error = %abort, "could not abort the failed upload; the bucket may keep its parts until a lifecycle rule removes them");
        }
        Err(match stop {
            Stop::Local(e) => Failed::from((Error::local("upload", source, e), None)),
            Stop::Remote(e) => {
                let (error, refusal) = self.write_err(e, "upload", key, header);
                Failed {
                    error,
                    kept: sent.kept.filter(|_| refusal.is_some()),
                    refusal,
                }
            }
        })
    }

    /// Downloads `key` to `dest`, streaming. The data lands in a temporary file beside `dest` and is
    /// renamed into place only when its size and SHA-256 match `expected` (when given).
    pub async fn download_file(
        &self,
        key: &str,
        dest: &Path,
        expected: Option<&ObjectInfo>,
        options: &TransferOptions,
    ) -> Result<ObjectInfo> {
        check_key(key, "download")?;
        let partial = partial_path(dest);
        let result = self.download_to(key, &partial, options).await;
        let verified = result.and_then(|got| match expected {
            Some(want) if *want != got => Err(Error::damaged(self.describe(key), want, &got)),
            _ => Ok(got),
        });
        match verified {
            Ok(info) => {
                tokio::fs::rename(&partial, dest)
                    .await
                    .map_err(|e| Error::local("download", dest, e))?;
                Ok(info)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(e)
            }
        }
    }

    /// The bytes of `key` as they come, `options.chunk_size` at a time with `options.concurrency`
    /// requests in flight, for a reader that transforms them on the way (a restore decrypting into
    /// place, instead of writing the ciphertext to disk first). Nothing is checked here: the reader
    /// hashes what it reads and compares. A failed request ends the stream with an I/O error whose
    /// inner error is this crate's [`Error`] naming the object.
    pub async fn read_stream(
        &self,
        key: &str,
        options: &TransferOptions,
    ) -> Result<impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static> {
        check_key(key, "download")?;
        let stream = self.buffers(key, options).await?;
        let (storage, key) = (self.clone(), key.to_owned());
        Ok(stream
            .map_ok(|buffer| futures::stream::iter(Iterator::map(buffer, Ok)))
            .map_err(move |e| std::io::Error::other(storage.err(e, "download", &key)))
            .try_flatten())
    }

    /// The whole of `key`, `options.chunk_size` at a time with `options.concurrency` requests in
    /// flight.
    async fn buffers(&self, key: &str, options: &TransferOptions) -> Result<opendal::BufferStream> {
        let reader = self
            .ops
            .plain
            .reader_with(key)
            .chunk(options.chunk_size)
            .concurrent(options.concurrency)
            .await
            .map_err(|e| self.err(e, "download", key))?;
        reader
            .into_stream(..)
            .await
            .map_err(|e| self.err(e, "download", key))
    }

    async fn download_to(
        &self,
        key: &str,
        path: &Path,
        options: &TransferOptions,
    ) -> Result<ObjectInfo> {
        let mut stream = self.buffers(key, options).await?;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| Error::local("download", path, e))?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(buffer) = stream
            .try_next()
            .await
            .map_err(|e| self.err(e, "download", key))?
        {
            for bytes in buffer {
                hasher.update(&bytes);
                size += bytes.len() as u64;
                file.write_all(&bytes)
                    .await
                    .map_err(|e| Error::local("download", path, e))?;
            }
        }
        file.sync_all()
            .await
            .map_err(|e| Error::local("download", path, e))?;
        Ok(ObjectInfo {
            size,
            sha256: Sha256Digest::from_hasher(hasher),
        })
    }

    /// Lists under `prefix` (a key prefix ending at a `/` boundary; `""` for the whole location).
    pub async fn list(&self, prefix: &str, mode: ListMode) -> Result<Vec<Entry>> {
        self.list_paged(prefix, mode, None).await
    }

    /// [`Storage::list`], asking the service for pages of at most `page_size` entries (S3's max-keys), so
    /// that pagination itself can be exercised (`hitkeep doctor` does).
    pub async fn list_paged(
        &self,
        prefix: &str,
        mode: ListMode,
        page_size: Option<usize>,
    ) -> Result<Vec<Entry>> {
        self.list_request(prefix, mode, page_size, None).await
    }

    /// The entries under `prefix` whose keys sort after `after` (a full key). On S3 the server skips the
    /// rest (`start-after`), so the cost follows what is returned, not what is stored; elsewhere the
    /// listing is filtered here.
    pub async fn list_after(
        &self,
        prefix: &str,
        mode: ListMode,
        after: &str,
    ) -> Result<Vec<Entry>> {
        let mut out = self.list_request(prefix, mode, None, Some(after)).await?;
        out.retain(|e| e.key.as_str() > after);
        Ok(out)
    }

    async fn list_request(
        &self,
        prefix: &str,
        mode: ListMode,
        page_size: Option<usize>,
        after: Option<&str>,
    ) -> Result<Vec<Entry>> {
        let dir = dir_path(prefix, "list")?;
        let mut request = self
            .ops
            .plain
            .list_with(&dir)
            .recursive(mode == ListMode::Recursive);
        if let Some(n) = page_size {
            request = request.limit(n);
        }
        if let Some(after) =
            after.filter(|_| self.ops.plain.info().capability().list_with_start_after)
        {
            request = request.start_after(after);
        }
        let entries = request.await.map_err(|e| self.err(e, "list", prefix))?;
        let mut out: Vec<Entry> = entries
            .into_iter()
            .filter_map(|e| {
                let (path, meta) = e.into_parts();
                let is_dir = meta.is_dir() || path.ends_with('/');
                let key = path.trim_end_matches('/').to_owned();
                let hidden =
                    key == FS_STAGING_DIR || key.starts_with(&format!("{FS_STAGING_DIR}/"));
                let listed_dir_itself = path == dir || key.is_empty();
                let skip = hidden || listed_dir_itself || (is_dir && mode == ListMode::Recursive);
                (!skip).then(|| Entry {
                    key,
                    is_dir,
                    size: if is_dir { 0 } else { meta.content_length() },
                    modified: meta
                        .last_modified()
                        .and_then(|t| t.to_string().parse().ok()),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Size of `key`, or `None` when it does not exist.
    pub async fn stat(&self, key: &str) -> Result<Option<u64>> {
        check_key(key, "stat")?;
        match self.ops.plain.stat(key).await {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(e, "stat", key)),
        }
    }

    /// When `key` was last modified, by the service's clock (RFC 3339), or `None` when it does not exist or
    /// the service does not say.
    pub async fn modified_at(&self, key: &str) -> Result<Option<String>> {
        check_key(key, "stat")?;
        match self.ops.plain.stat(key).await {
            Ok(meta) => Ok(meta.last_modified().map(|t| t.to_string())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(e, "stat", key)),
        }
    }

    /// Deletes one object. Deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        check_key(key, "delete")?;
        self.ops
            .plain
            .delete(key)
            .await
            .map_err(|e| self.err(e, "delete", key))
    }

    /// Deletes `key` for good: the object, and on S3 every older version and delete marker a
    /// versioned bucket keeps of it (there a plain delete only hides the bytes). Returns how many
    /// versions and markers went beside the object; 0 on a directory, and on a store that keeps no
    /// versions (it does not implement their listing). Deleting a missing object succeeds.
    pub async fn erase(&self, key: &str) -> Result<usize> {
        self.delete(key).await?;
        let Some(locks) = self.locks.as_deref() else {
            return Ok(0);
        };
        let versions = locks.versions();
        let Some(ids) = versions.of(key).await? else {
            return Ok(0);
        };
        for id in &ids {
            versions.delete(key, id).await?;
        }
        Ok(ids.len())
    }

    /// Whether the store still keeps any version of `key` (on a directory or a store without
    /// versions: whether the object exists).
    pub async fn any_version(&self, key: &str) -> Result<bool> {
        if let Some(locks) = self.locks.as_deref()
            && let Some(ids) = locks.versions().of(key).await?
        {
            return Ok(!ids.is_empty());
        }
        Ok(self.stat(key).await?.is_some())
    }

    /// Deletes every object under `prefix` (batched on S3) and returns how many there were. The prefix
    /// must not be empty: wiping a whole location is never what a caller means.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let dir = dir_path(prefix, "delete")?;
        if dir.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                "delete",
                self.describe(""),
                "refusing to delete a whole location",
            ));
        }
        let count = self.list(prefix, ListMode::Recursive).await?.len();
        self.ops
            .plain
            .delete_with(&dir)
            .recursive(true)
            .await
            .map_err(|e| self.err(e, "delete", prefix))?;
        Ok(count)
    }

    /// Writes a small object (a manifest) in one request; sent again with Content-MD5 when `auto`
    /// meets a service that refuses CRC32C.
    pub async fn write(&self, key: &str, data: impl Into<Bytes>) -> Result<()> {
        check_key(key, "write")?;
        let data = data.into();
        loop {
            let header = self.integrity.header();
            let Err(e) = self.ops.writing(header).write(key, data.clone()).await else {
                return self.made_durable(key, "write").await;
            };
            let (error, refusal) = self.write_err(e, "write", key, header);
            if !self.switched(header, refusal.as_ref()) {
                return Err(error);
            }
        }
    }

    /// Writes a small object only if `key` does not exist yet (`If-None-Match: *` on S3, an exclusive
    /// create on a local directory): `Ok(false)` when it already existed and nothing was written.
    /// Some S3 services ignore the condition and overwrite; callers that rely on it read the object
    /// back ([`Storage::honours_if_absent`] tells which kind of service this is).
    pub async fn write_if_absent(&self, key: &str, data: impl Into<Bytes>) -> Result<bool> {
        check_key(key, "write")?;
        let data = data.into();
        if let Location::Local(root) = &self.location {
            return self.create_new_local(root, key, data).await;
        }
        loop {
            let header = self.integrity.header();
            let written = self
                .ops
                .writing(header)
                .write_with(key, data.clone())
                .if_not_exists(true)
                .await;
            let e = match written {
                Ok(_) => return self.made_durable(key, "write").await.map(|()| true),
                Err(e) if e.kind() == opendal::ErrorKind::ConditionNotMatch => return Ok(false),
                Err(e) => e,
            };
            let (error, refusal) = self.write_err(e, "write", key, header);
            // A 501 that names no checksum header answers `If-None-Match`: the condition is what
            // the service does not implement, and switching the checksum would change every later
            // upload for nothing.
            if let Some(refusal) = refusal.as_ref().filter(|r| !r.names_checksum()) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "write",
                    self.describe(key),
                    format!("conditional writes (If-None-Match) are not implemented: {refusal}"),
                ));
            }
            if !self.switched(header, refusal.as_ref()) {
                return Err(error);
            }
        }
    }

    /// [`Storage::write_if_absent`] in a local directory. OpenDAL's fs service checks that the target
    /// does not exist, then renames its staged file over it: two writers that check at once both
    /// "create" it, the second replacing the first (seen as a lost snapshot-id claim under load). The
    /// whole content is written and synced in a staging file first, then hard-linked into place,
    /// which the kernel refuses when the name exists: exclusive, and never a partial object. Where
    /// hard links are not supported, an exclusive create of the target itself (exclusive, though a
    /// reader may meet it before its content).
    async fn create_new_local(&self, root: &Path, key: &str, data: Bytes) -> Result<bool> {
        let target = root.join(key);
        let staged = root
            .join(FS_STAGING_DIR)
            .join(format!("create-new-{:016x}", fastrand::u64(..)));
        let (to, from) = (target.clone(), staged.clone());
        let created = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            use std::io::Write as _;
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir)?;
            }
            if let Some(dir) = from.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::File::create_new(&from)?;
            let written = file.write_all(&data).and_then(|()| file.sync_all());
            drop(file);
            let linked = written.and_then(|()| std::fs::hard_link(&from, &to));
            let _ = std::fs::remove_file(&from);
            match linked {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
                    ) =>
                {
                    match std::fs::File::create_new(&to) {
                        Ok(mut file) => file
                            .write_all(&data)
                            .and_then(|()| file.sync_all())
                            .map(|()| true),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| Error::local("write", &target, std::io::Error::other(e)))?
        .map_err(|e| Error::local("write", &target, e))?;
        if created {
            self.made_durable(key, "write").await?;
        }
        Ok(created)
    }

    /// Whether the service honours [`Storage::write_if_absent`]: writes `key` twice with the condition
    /// (the second must be refused), then deletes it.
    pub async fn honours_if_absent(&self, key: &str) -> Result<bool> {
        let body = Bytes::from_static(b"hitkeep conditional write probe\n");
        self.delete(key).await?;
        let first = self.write_if_absent(key, body.clone()).await?;
        let second = self.write_if_absent(key, body).await?;
        self.delete(key).await?;
        Ok(first && !second)
    }

    /// `source` linked into this local location's staging folder, and where it is to go, when
    /// `options` allow it and the filesystem does (`link.rs`).
    fn link_source(
        &self,
        source: &Path,
        key: &str,
        options: &TransferOptions,
    ) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        let (Location::Local(root), Sweeper::Local(staging)) = (&self.location, &self.partial)
        else {
            return None;
        };
        if !options.link {
            return None;
        }
        let linked = link::link_into(staging.dir(), source)?;
        Some((linked, root.join(key)))
    }

    /// Makes a completed write of `key` durable on a local directory: the folders its rename into
    /// place changed are fsynced ([`crate::durable`]). Nothing to do on S3, where a write that
    /// returned is stored.
    async fn made_durable(&self, key: &str, operation: &'static str) -> Result<()> {
        let Location::Local(root) = &self.location else {
            return Ok(());
        };
        let (root, owned) = (root.clone(), key.to_owned());
        let synced = tokio::task::spawn_blocking(move || durable::sync_key(&root, &owned))
            .await
            .map_err(|e| Error::local(operation, Path::new(key), std::io::Error::other(e)))?;
        match synced {
            Ok(folders) => {
                tracing::debug!(key, folders, "write made durable: folders synced");
                Ok(())
            }
            Err((folder, e)) => Err(Error::local(operation, &folder, e)),
        }
    }

    /// Which integrity headers the service accepts: a small PUT carrying CRC32C, then one carrying
    /// Content-MD5, into `key`, deleted after. Refusals are answers; other failures are errors.
    /// `None` for a local directory, which needs no header. Changes nothing about this storage.
    pub async fn probe_checksums(&self, key: &str) -> Result<Option<ChecksumSupport>> {
        check_key(key, "write")?;
        if !self.location.is_s3() {
            return Ok(None);
        }
        let mut answers = Vec::new();
        for header in [Header::Crc32c, Header::Md5] {
            let body = Bytes::from(format!("hitkeep integrity probe: {}\n", header.name()));
            let answer = match self.ops.writing(header).write(key, body).await {
                Ok(_) => Ok(()),
                Err(e) => match self.write_err(e, "write", key, header) {
                    (_, Some(refusal)) => Err(refusal.to_string()),
                    (error, None) => return Err(error),
                },
            };
            answers.push(answer);
        }
        self.delete(key).await?;
        let md5 = answers.pop().expect("two answers");
        let crc32c = answers.pop().expect("two answers");
        Ok(Some(ChecksumSupport { crc32c, md5 }))
    }

    /// Finds the partial uploads that killed processes left in this location, removes them, and says
    /// what it removed. On S3: multipart uploads under the location's prefix that the server says
    /// were initiated more than `older_than` ago (by its `Initiated` and `Date`, not this machine's
    /// clock) are aborted; a service that does not list them is [`ErrorKind::Unsupported`]. On a
    /// local directory: the staging folders in `.hitkeep-tmp/` whose lock no live storage holds,
    /// whatever their age, and files left directly in `.hitkeep-tmp/` by older versions once
    /// unmodified for `older_than` and at least an hour. What cannot be removed is reported, not
    /// an error.
    pub async fn sweep_partial_uploads(
        &self,
        older_than: std::time::Duration,
    ) -> Result<SweepReport> {
        self.partial.sweep(older_than).await
    }

    /// Reads a small object whole.
    pub async fn read(&self, key: &str) -> Result<Bytes> {
        check_key(key, "read")?;
        self.ops
            .plain
            .read(key)
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| self.err(e, "read", key))
    }
}

/// A failed upload attempt.
struct Failed {
    error: Error,
    /// The service's refusal of the integrity header, when that is what failed.
    refusal: Option<Refusal>,
    /// Every chunk sent, when they were kept for sending again.
    kept: Option<Vec<Bytes>>,
}

impl From<(Error, Option<Refusal>)> for Failed {
    fn from((error, refusal): (Error, Option<Refusal>)) -> Self {
        Failed {
            error,
            refusal,
            kept: None,
        }
    }
}

/// Why an upload attempt stopped: the source failed, or the service did.
enum Stop {
    Local(std::io::Error),
    Remote(opendal::Error),
}

/// What an upload attempt has sent so far.
struct Sent {
    hasher: sha2::Sha256,
    size: u64,
    /// The chunks sent, kept while a refusal of the header could still be answered by switching.
    kept: Option<Vec<Bytes>>,
}

impl Sent {
    async fn pump(
        &mut self,
        writer: &mut opendal::Writer,
        chunks: &mut (impl futures::Stream<Item = std::io::Result<Bytes>> + Unpin),
        integrity: &Integrity,
    ) -> Result<(), Stop> {
        while let Some(chunk) = chunks.try_next().await.map_err(Stop::Local)? {
            self.hasher.update(&chunk);
            self.size += chunk.len() as u64;
            if let Some(kept) = &mut self.kept {
                // Once a part with CRC32C was stored no switch can come, and the memory goes back.
                if integrity.may_switch(Header::Crc32c) {
                    kept.push(chunk.clone());
                } else {
                    self.kept = None;
                }
            }
            writer.write(chunk).await.map_err(Stop::Remote)?;
        }
        writer.close().await.map(drop).map_err(Stop::Remote)
    }
}

/// Why storing a linked file failed: reading its bytes, or putting it in place.
enum Adopt {
    Read(std::io::Error),
    Placed(link::NotPlaced),
}

/// Stores the linked file `linked` as `dest` once `chunks`, its bytes from the start as its uploader
/// reads them, are all read: their size and SHA-256 describe the object, as for a copy.
async fn adopt(
    linked: std::path::PathBuf,
    dest: &Path,
    source: &Path,
    mut chunks: impl futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
) -> Result<ObjectInfo, Adopt> {
    let (mut hasher, mut size) = (sha2::Sha256::new(), 0u64);
    let read = async {
        while let Some(chunk) = chunks.try_next().await? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        Ok::<_, std::io::Error>(())
    }
    .await;
    if let Err(e) = read {
        let _ = std::fs::remove_file(&linked);
        return Err(Adopt::Read(e));
    }
    let dest = dest.to_owned();
    tokio::task::spawn_blocking(move || link::place(&linked, &dest, size))
        .await
        .map_err(|e| Adopt::Read(std::io::Error::other(e)))?
        .map_err(Adopt::Placed)?;
    tracing::debug!(source = %source.display(), size, "stored by link");
    Ok(ObjectInfo {
        size,
        sha256: Sha256Digest::from_hasher(hasher),
    })
}

/// The content of `file` from where it stands, in chunks of `chunk_size` bytes (the last one
/// shorter), as uploads read it: for callers that transform a file's bytes on their way to
/// [`Storage::upload_stream`].
pub fn file_chunks(
    file: tokio::fs::File,
    chunk_size: usize,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin {
    Box::pin(futures::stream::try_unfold(
        file,
        move |mut file| async move {
            let chunk = read_chunk(&mut file, chunk_size).await?;
            Ok((!chunk.is_empty()).then_some((chunk, file)))
        },
    ))
}

/// Fills a buffer up to `size` bytes (fewer only at the end of the file), so every part but the last
/// meets S3's 5 MiB minimum.
async fn read_chunk(file: &mut tokio::fs::File, size: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        if file.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

fn partial_path(dest: &Path) -> std::path::PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// A key is a clean relative path: no leading `/`, no empty, `.` or `..` segments, no backslashes.
fn check_key(key: &str, operation: &'static str) -> Result<()> {
    let bad = key.is_empty()
        || key.contains('\\')
        || key.chars().any(char::is_control)
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            operation,
            key,
            "not a clean relative key (no leading '/', empty, '.' or '..' segments)",
        ));
    }
    Ok(())
}

/// `""` stays the root; anything else is checked and gets a trailing `/`.
fn dir_path(prefix: &str, operation: &'static str) -> Result<String> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    check_key(trimmed, operation)?;
    Ok(format!("{trimmed}/"))
}
