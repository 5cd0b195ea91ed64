//! Local uploads by hard link. A backup's files are exported into a staging folder and not written
//! again once exported; when a local location is on the same filesystem, writing a second copy of
//! every byte only costs CPU and page cache (at 16M hits, a copy of ~1 GiB: 6.5% of a backup's CPU
//! went to the kernel copying pages for it). So a file may be linked into the location instead,
//! when its uploader allows it ([`crate::TransferOptions::linking`]): the link is made in this
//! storage's staging folder, the file is fsynced and renamed into place as OpenDAL's writes are,
//! and the folders are synced after, as for every local write. Any failure to link (another
//! filesystem, one without hard links) leaves the upload to the copy.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Links `source` into `staging` under a name of its own; `None` when that cannot be done here.
pub(crate) fn link_into(staging: &Path, source: &Path) -> Option<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = source.file_name()?.to_string_lossy();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let linked = staging.join(format!("{name}.link-{}-{n}", std::process::id()));
    match std::fs::create_dir_all(staging).and_then(|()| std::fs::hard_link(source, &linked)) {
        Ok(()) => Some(linked),
        Err(e) => {
            tracing::debug!(source = %source.display(), error = %e, "cannot link; copying");
            None
        }
    }
}

/// Why a linked file was not put in place.
#[derive(Debug)]
pub(crate) enum NotPlaced {
    /// The file is not what its uploader read: it holds other than `read` bytes, or is no regular
    /// file. Reading it again once it is at rest is the cure.
    Changed { found: u64, read: u64 },
    /// Writing at the destination failed.
    Io(io::Error),
}

/// Puts the linked file `linked` in place as `dest`, once it is a regular file of exactly `read`
/// bytes (what its uploader read and hashed): fsynced, then renamed, creating `dest`'s folders.
/// The link is gone afterwards, whatever happened (a rename onto another name of the same file, as
/// when a file is stored again, leaves both names).
pub(crate) fn place(linked: &Path, dest: &Path, read: u64) -> Result<(), NotPlaced> {
    let placed = check_and_rename(linked, dest, read);
    let _ = std::fs::remove_file(linked);
    placed
}

fn check_and_rename(linked: &Path, dest: &Path, read: u64) -> Result<(), NotPlaced> {
    let meta = std::fs::symlink_metadata(linked).map_err(NotPlaced::Io)?;
    if !meta.is_file() || meta.len() != read {
        return Err(NotPlaced::Changed {
            found: meta.len(),
            read,
        });
    }
    File::open(linked)
        .and_then(|file| file.sync_all())
        .map_err(NotPlaced::Io)?;
    if let Some(folder) = dest.parent() {
        std::fs::create_dir_all(folder).map_err(NotPlaced::Io)?;
    }
    std::fs::rename(linked, dest).map_err(NotPlaced::Io)
}
