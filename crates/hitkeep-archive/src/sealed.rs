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
use hitkeep_storage::{ObjectInfo, Storage, TransferOptions};

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

/// Opens the age file `sealed` (the object `key`) into `plain`, with `opener`.
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
    let (from, to) = (sealed.to_owned(), plain.to_owned());
    let opened = tokio::task::spawn_blocking(move || opener.open_file(&from, &to))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    if let Err(failure) = opened {
        let _ = std::fs::remove_file(plain);
        return Err(refuse(failure));
    }
    Ok(())
}

/// Downloads the object `key` into `local`, opened when it is sealed.
pub(crate) async fn fetch(
    storage: &Storage,
    key: &str,
    local: &Path,
    opener: Option<&Opener>,
) -> Result<()> {
    let raw = local.with_extension("download");
    storage
        .download_file(key, &raw, None, &TransferOptions::default())
        .await?;
    let outcome = match is_sealed(&raw)? {
        true => open(opener, &raw, local, &storage.describe(key)).await,
        false => std::fs::rename(&raw, local).map_err(|e| Error::io(local, e)),
    };
    let _ = std::fs::remove_file(&raw);
    outcome
}
