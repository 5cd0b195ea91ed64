//! HitKeep's database recovery bundles: before an automatic DuckDB recovery the server keeps the exact
//! database and WAL, zstd-compressed, in `{data-path}/recovery/<stamp>-<id>/` with a `manifest.json`
//! (`version` 1, `artifacts[{name, original_size, sha256}]`). Restoring one decompresses each artifact
//! into a private temporary file beside the target, checks its size and the SHA-256 of the
//! decompressed bytes, and only then swaps it in the way `restore-backup` does: the old files aside as
//! `{db}.pre-restore.{stamp}`, everything put back when a step fails.
//!
//! The restored database is never opened here: its WAL may be the very one DuckDB failed on, and
//! opening the file would replay it.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::SnapshotId;
use crate::error::{Error, Result};
use crate::restore::refuse_if_locked;
use crate::swap::{Scratch, swap_into_place, wal_of};

/// The manifest's file name inside a bundle directory.
pub const BUNDLE_MANIFEST: &str = "manifest.json";
const DATABASE: &str = "database.zst";
const WAL: &str = "wal.zst";

/// One compressed file of a bundle, as its manifest records it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BundleArtifact {
    /// `database.zst` or `wal.zst`.
    pub name: String,
    /// Size of the decompressed bytes.
    pub original_size: u64,
    /// SHA-256 of the decompressed bytes, lower-case hex.
    pub sha256: String,
}

/// A recovery bundle whose manifest has been checked ([`Bundle::open`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The database file.
    pub database: BundleArtifact,
    /// The WAL, when the server had one.
    pub wal: Option<BundleArtifact>,
}

/// What restoring a bundle did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BundleOutcome {
    /// The restored database.
    pub target: PathBuf,
    /// Where the previous database (and WAL) went, if there was one.
    pub aside: Option<PathBuf>,
    /// Whether a WAL was restored beside it.
    pub wal: bool,
}

impl Bundle {
    /// Reads and checks `{dir}/manifest.json` as HitKeep does: version 1, a non-empty `artifacts`
    /// list naming only `database.zst` (required) and `wal.zst`, each with a size ≥ 0 and a 64-digit
    /// hex SHA-256. Other fields are ignored. Errors name the file and the field.
    pub fn open(dir: &Path) -> Result<Bundle> {
        let path = dir.join(BUNDLE_MANIFEST);
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |field: &str, problem: String| Error::BundleManifest {
            path: path.clone(),
            problem: format!("{field}: {problem}"),
        };
        let manifest: Value =
            serde_json::from_slice(&text).map_err(|e| bad("manifest", format!("not JSON: {e}")))?;
        match manifest.get("version") {
            Some(v) if v.as_i64() == Some(1) => {}
            Some(v) => return Err(bad("version", format!("{v} is not supported (only 1)"))),
            None => return Err(bad("version", "missing".into())),
        }
        let artifacts = match manifest.get("artifacts").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => list,
            Some(_) => return Err(bad("artifacts", "empty; database.zst is required".into())),
            None => return Err(bad("artifacts", "missing or not a list".into())),
        };
        let (mut database, mut wal) = (None, None);
        for (i, value) in artifacts.iter().enumerate() {
            let artifact =
                artifact(value).map_err(|(f, p)| bad(&format!("artifacts[{i}]{f}"), p))?;
            let slot = match artifact.name.as_str() {
                DATABASE => &mut database,
                WAL => &mut wal,
                other => {
                    return Err(bad(
                        &format!("artifacts[{i}].name"),
                        format!("{other:?} is not a bundle artifact (only {DATABASE} and {WAL})"),
                    ));
                }
            };
            if slot.is_some() {
                let problem = format!("{} is listed twice", artifact.name);
                return Err(bad(&format!("artifacts[{i}].name"), problem));
            }
            *slot = Some(artifact);
        }
        let database = database.ok_or_else(|| {
            bad(
                "artifacts",
                format!("no {DATABASE}; a bundle without it cannot be restored"),
            )
        })?;
        Ok(Bundle {
            dir: dir.to_owned(),
            database,
            wal,
        })
    }

    /// Restores the bundle to `target`: refuses while another process holds it, decompresses and
    /// checks every artifact into `.{base}.bundle-restore-{unixnano}.tmp` (and `.wal`) beside it, then
    /// swaps them in. On any failure the target is as it was and no temporary file is left.
    pub fn restore(&self, target: &Path, stamp: SnapshotId) -> Result<BundleOutcome> {
        refuse_if_locked(target)?;
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let base = target
            .file_name()
            .map_or_else(|| "hitkeep.db".into(), |n| n.to_string_lossy().into_owned());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let temp = dir.join(format!(".{base}.bundle-restore-{nanos}.tmp"));
        let database = create_private(&temp)?;
        let temp = Scratch(temp);
        self.decompress(&self.database, database, &temp.0)?;
        if let Some(wal) = &self.wal {
            let path = wal_of(&temp.0);
            self.decompress(wal, create_private(&path)?, &path)?;
        }
        // Decompressing a large database takes a while: the server may have been started meanwhile.
        refuse_if_locked(target)?;
        let aside = swap_into_place(&temp.0, target, stamp)?;
        Ok(BundleOutcome {
            target: target.to_owned(),
            aside,
            wal: self.wal.is_some(),
        })
    }

    /// Streams one artifact through zstd into `out`, counting and hashing the decompressed bytes,
    /// then fsyncs it. Never writes more than one byte past the recorded size.
    fn decompress(&self, artifact: &BundleArtifact, mut out: File, out_path: &Path) -> Result<()> {
        let source = self.dir.join(&artifact.name);
        let damaged = |problem: String| Error::BundleArtifact {
            path: source.clone(),
            problem,
        };
        let input = File::open(&source).map_err(|e| Error::io(&source, e))?;
        let decoder = zstd::stream::read::Decoder::new(input).map_err(|e| Error::io(&source, e))?;
        let mut limited = decoder.take(artifact.original_size.saturating_add(1));
        let (mut hasher, mut written, mut buf) = (Sha256::new(), 0u64, vec![0u8; 256 * 1024]);
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(damaged(format!("does not decompress as zstd: {e}"))),
            };
            out.write_all(&buf[..n])
                .map_err(|e| Error::io(out_path, e))?;
            hasher.update(&buf[..n]);
            written += n as u64;
        }
        if written != artifact.original_size {
            let size = if written > artifact.original_size {
                "more bytes".to_owned()
            } else {
                format!("{written} bytes")
            };
            return Err(damaged(format!(
                "decompresses to {size}, but the manifest records original_size {}",
                artifact.original_size
            )));
        }
        let actual = hex::encode(hasher.finalize());
        if actual != artifact.sha256 {
            return Err(damaged(format!(
                "the SHA-256 of the decompressed bytes is {actual}, but the manifest records {}",
                artifact.sha256
            )));
        }
        out.sync_all().map_err(|e| Error::io(out_path, e))
    }
}

/// One element of `artifacts`; on error, the field (`.sha256`) and the problem.
fn artifact(value: &Value) -> std::result::Result<BundleArtifact, (String, String)> {
    let field = |name: &str| {
        value
            .get(name)
            .ok_or_else(|| (format!(".{name}"), "missing".to_owned()))
    };
    let name = field("name")?
        .as_str()
        .ok_or_else(|| (".name".to_owned(), "not a string".to_owned()))?
        .to_owned();
    let size = field("original_size")?;
    let original_size = match size.as_i64() {
        Some(n) if n < 0 => return Err((".original_size".into(), format!("{n} is negative"))),
        Some(n) => n.unsigned_abs(),
        None => {
            return Err((
                ".original_size".into(),
                format!("{size} is not a whole number of bytes"),
            ));
        }
    };
    let sha256 = field("sha256")?
        .as_str()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| (".sha256".to_owned(), "not 64 hex digits".to_owned()))?;
    Ok(BundleArtifact {
        name,
        original_size,
        sha256,
    })
}

/// A new file only this user can read, failing if the name is taken.
fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))
}
