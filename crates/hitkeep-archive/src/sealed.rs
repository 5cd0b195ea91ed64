//! Archive files sealed with age (issue 20, step 4). With recipients configured, each Parquet file
//! a run exports is sealed to them and to the host's archive key before its upload; every reader
//! (the run's read-back, `archive query`, `archive restore`, `import-archives`) opens a sealed file
//! into a local copy, by its header, so sealed and plain files mix in one location.
//!
//! Why age and not DuckDB's Parquet encryption: DuckDB writes encrypted Parquet securely only with
//! its OpenSSL (httpfs) extension loaded, which this build cannot fetch; without it, DuckDB 1.5
//! refuses the write unless told `force_mbedtls_unsafe` (measured). A sealed file is read by
//! DuckDB after it is opened into a local copy, as S3 objects already are.

use std::path::Path;

use hitkeep_seal::{OpenFailure, Opener, Sealer};
use hitkeep_storage::{ObjectInfo, Sha256Digest, Storage, TransferOptions};

use crate::error::{Error, Result};

/// The first bytes of every age file.
const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";

/// Whether the local file `path` is an age file.
pub(crate) fn is_sealed(path: &Path) -> Result<bool> {
    use std::io::Read as _;
    let mut head = [0u8; AGE_HEADER.len()];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = file.read(&mut head).map_err(|e| Error::io(path, e))?;
    Ok(n == head.len() && head == AGE_HEADER)
}

/// `plain` sealed into the new file `sealed`; what is to be uploaded.
pub(crate) async fn seal(sealer: &Sealer, plain: &Path, sealed: &Path) -> Result<ObjectInfo> {
    let (by, from, to) = (sealer.clone(), plain.to_owned(), sealed.to_owned());
    tokio::task::spawn_blocking(move || by.seal_file(&from, &to))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(|e| Error::io(sealed, e))
}

/// Opens the age file `sealed` (the object `key`) into `plain`, with `opener`: into a file of its own
/// first, renamed into place once whole, so a reader never meets a part (two readers may open the
/// same file at once; the last rename wins, with equal content).
pub(crate) async fn open(
    opener: Option<&Opener>,
    sealed: &Path,
    plain: &Path,
    key: &str,
) -> Result<()> {
    let refuse = |failure| Error::Sealed {
        key: key.to_owned(),
        failure,
    };
    let opener = opener.ok_or(refuse(OpenFailure::NoIdentity))?.clone();
    let part = beside(plain, "opening");
    let (from, to) = (sealed.to_owned(), part.clone());
    let opened = tokio::task::spawn_blocking(move || opener.open_file(&from, &to))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let placed = match opened {
        Ok(_) => std::fs::rename(&part, plain).map_err(|e| Error::io(plain, e)),
        Err(failure) => Err(refuse(failure)),
    };
    let _ = std::fs::remove_file(&part);
    placed
}

/// What a copy of an archive object must hold, and what a difference means.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect<'a> {
    /// Nothing is known of its bytes (a ledger entry from before they were recorded, HitKeep's own
    /// files): the copy is taken as it comes.
    Unrecorded,
    /// The bytes a run just uploaded: a difference is [`Error::ReadBackDiffers`].
    Sent(&'a ObjectInfo),
    /// The bytes its ledger entry recorded when it was archived: a difference is
    /// [`Error::ArchiveChanged`].
    Archived(&'a ObjectInfo),
}

impl<'a> Expect<'a> {
    /// What a ledger entry recorded of an object: [`Expect::Archived`], or [`Expect::Unrecorded`].
    pub(crate) fn archived(recorded: Option<&'a ObjectInfo>) -> Expect<'a> {
        recorded.map_or(Expect::Unrecorded, Expect::Archived)
    }

    /// What the bytes must be, when anything is known of them.
    fn wanted(self) -> Option<&'a ObjectInfo> {
        match self {
            Expect::Unrecorded => None,
            Expect::Sent(info) | Expect::Archived(info) => Some(info),
        }
    }

    /// The error for other bytes than expected.
    fn differs(self, key: &str) -> Error {
        let key = key.to_owned();
        match self {
            Expect::Archived(_) => Error::ArchiveChanged { key },
            Expect::Sent(_) | Expect::Unrecorded => Error::ReadBackDiffers { key },
        }
    }

    /// `Ok` when `got` is what was expected.
    fn check(self, key: &str, got: &ObjectInfo) -> Result<()> {
        match self.wanted() {
            Some(wanted) if wanted != got => Err(self.differs(key)),
            _ => Ok(()),
        }
    }
}

/// Downloads the object `key` into `local`, opened when it is sealed; `local` appears only whole.
/// The object must hold the bytes `expect` describes (size and SHA-256), checked before it is
/// opened, or nothing is kept: a parse alone would pass a file whose first bytes were damaged
/// (DuckDB checks the Parquet footer's magic, not the header's), and a plaintext object in place of
/// a sealed one.
pub(crate) async fn fetch(
    storage: &Storage,
    key: &str,
    local: &Path,
    opener: Option<&Opener>,
    expect: Expect<'_>,
) -> Result<()> {
    let raw = beside(local, "download");
    let outcome = async {
        let got = storage
            .download_file(key, &raw, None, &TransferOptions::default())
            .await?;
        expect.check(&storage.describe(key), &got)?;
        match is_sealed(&raw)? {
            true => open(opener, &raw, local, &storage.describe(key)).await,
            false => std::fs::rename(&raw, local).map_err(|e| Error::io(local, e)),
        }
    }
    .await;
    let _ = std::fs::remove_file(&raw);
    outcome
}

/// Checks the local archive file `path` (the object `key`, read in place) against `expect`: its
/// size first, then its SHA-256, read on a blocking thread.
pub(crate) async fn check_in_place(path: &Path, key: &str, expect: Expect<'_>) -> Result<()> {
    let Some(wanted) = expect.wanted() else {
        return Ok(());
    };
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if size != wanted.size {
        return Err(expect.differs(key));
    }
    let file = path.to_owned();
    let sha256 = tokio::task::spawn_blocking(move || Sha256Digest::of_file(&file))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(|e| Error::io(path, e))?;
    expect.check(key, &ObjectInfo { size, sha256 })
}

/// A name of its own beside `path`, for a file on its way there.
fn beside(path: &Path, what: &str) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{what}-{:016x}", fastrand::u64(..)))
}
