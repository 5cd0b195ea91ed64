//! Durable local writes. A file is on disk once it is fsynced, but its name (a rename into place, a new
//! folder) only once the folder that holds it is fsynced too. OpenDAL's fs writer fsyncs the file in
//! `.hitkeep-tmp/` and renames it into place, and stops there: a power loss soon after could forget an
//! object that a later step already relies on (an archive's rows are deleted once its ledger says
//! "verified"). So every completed local write ends here.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Fsyncs the folder `dir`, so that the renames and new names in it survive a power loss. A
/// filesystem that cannot fsync a folder (`EINVAL`/`ENOTSUP`: some network and FUSE filesystems) is
/// let be, as databases do: there is nothing more to ask of it. For callers that rename local files
/// themselves (a restore's swap).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir)?.sync_all() {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The folders a write of `key` under `root` may have changed, deepest first: the key's own folder
/// (the rename), every folder above it that the write may have created, and `root` itself.
pub(crate) fn folders_of(root: &Path, key: &str) -> Vec<PathBuf> {
    let mut folders = Vec::new();
    let mut segments: Vec<&str> = key.split('/').collect();
    segments.pop();
    while !segments.is_empty() {
        folders.push(root.join(segments.join("/")));
        segments.pop();
    }
    folders.push(root.to_owned());
    folders
}

/// Fsyncs [`folders_of`]`(root, key)`; on failure, the folder and why.
pub(crate) fn sync_key(root: &Path, key: &str) -> Result<usize, (PathBuf, io::Error)> {
    let folders = folders_of(root, key);
    for folder in &folders {
        sync_dir(folder).map_err(|e| (folder.clone(), e))?;
    }
    Ok(folders.len())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use hitkeep_config::{Config, Location, Sources};

    use super::*;
    use crate::{Storage, TransferOptions};

    #[test]
    fn the_folders_of_a_key_run_from_its_own_up_to_the_root() {
        let root = Path::new("/backups");
        assert_eq!(
            folders_of(root, "shared/2026-03-08T120000Z/manifest.json"),
            [
                PathBuf::from("/backups/shared/2026-03-08T120000Z"),
                PathBuf::from("/backups/shared"),
                PathBuf::from("/backups"),
            ]
        );
        assert_eq!(
            folders_of(root, "site_1.ledger.json"),
            [PathBuf::from("/backups")]
        );
    }

    #[test]
    fn every_folder_on_the_way_is_opened_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        assert_eq!(sync_key(dir.path(), "a/b/c.json").unwrap(), 3);
        // It really opens them: a folder that is not there is an error naming it.
        let (folder, e) = sync_key(dir.path(), "a/gone/c.json").unwrap_err();
        assert_eq!(folder, dir.path().join("a/gone"));
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    /// Log lines of this thread, where the storage's futures run under a current-thread runtime.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Every way of writing to a local location ends with its folders synced. (That the fsyncs reach
    /// the disk cannot be seen without cutting the power; this shows they are asked for.)
    #[tokio::test]
    async fn every_local_write_path_syncs_its_folders() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        let settings = Config::load(&Sources::default()).unwrap().settings.s3;
        let storage = Storage::open(&Location::Local(dir.path().join("loc")), &settings)
            .await
            .unwrap();
        let local = dir.path().join("hits.parquet");
        std::fs::write(&local, b"parquet bytes").unwrap();

        storage
            .upload_file(&local, "shared/a/hits.parquet", &TransferOptions::default())
            .await
            .unwrap();
        let chunks = futures::stream::iter([Ok(bytes::Bytes::from_static(b"streamed"))]);
        storage
            .upload_stream(
                &local,
                "tenants/t/b/events.parquet",
                chunks,
                &TransferOptions::default(),
            )
            .await
            .unwrap();
        storage.write("shared/a/manifest.json", "{}").await.unwrap();
        assert!(
            storage
                .write_if_absent("shared/a/in-progress.json", "{}")
                .await
                .unwrap()
        );

        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let synced: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("folders synced"))
            .collect();
        for (key, folders) in [
            ("shared/a/hits.parquet", 3),
            ("tenants/t/b/events.parquet", 4),
            ("shared/a/manifest.json", 3),
            ("shared/a/in-progress.json", 3),
        ] {
            let this = |l: &&&str| l.contains(key) && l.contains(&format!("folders={folders}"));
            assert!(synced.iter().any(|l| this(&l)), "{key}: {synced:#?}");
        }
        assert_eq!(synced.len(), 4, "{synced:#?}");
    }
}
