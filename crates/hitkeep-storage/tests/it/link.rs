//! Uploads to a local directory by hard link: the stored object is the source file itself when the
//! uploader allows it and both are on one filesystem, a copy otherwise, and never an object whose
//! bytes differ from the ones read and hashed.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use bytes::Bytes;
use hitkeep_storage::{ErrorKind, TransferOptions};
use sha2::Digest as _;

use crate::local;

fn source(dir: &Path, bytes: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    let path = dir.join("hits.parquet");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(data))
}

/// The names left in the storage's staging folders: links that were never put in place.
fn leftover_links(root: &Path) -> Vec<String> {
    walk(&root.join(".hitkeep-tmp"))
        .into_iter()
        .filter(|name| name.contains(".link-"))
        .collect()
}

fn walk(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap())
        .flat_map(|e| {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                vec![e.file_name().into_string().unwrap()]
            }
        })
        .collect()
}

#[tokio::test]
async fn a_linked_upload_stores_the_source_file_itself_and_a_plain_one_copies() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let storage = local(&root).await;
    let (src, data) = source(dir.path(), 3 * 1024 * 1024 + 17);
    let options = TransferOptions::new(1024 * 1024, 2);

    let linked = storage
        .upload_file(&src, "shared/a/hits.parquet", &options.linking())
        .await
        .unwrap();
    assert_eq!(linked.size, data.len() as u64);
    assert_eq!(linked.sha256.to_string(), sha256_hex(&data));
    let stored = root.join("shared/a/hits.parquet");
    assert_eq!(std::fs::read(&stored).unwrap(), data);
    let (src_meta, stored_meta) = (src.metadata().unwrap(), stored.metadata().unwrap());
    assert_eq!(
        stored_meta.ino(),
        src_meta.ino(),
        "the same file, not a copy"
    );
    assert_eq!(src_meta.nlink(), 2);

    let copied = storage
        .upload_file(&src, "shared/b/hits.parquet", &options)
        .await
        .unwrap();
    assert_eq!(copied.sha256, linked.sha256);
    let copy = root.join("shared/b/hits.parquet").metadata().unwrap();
    assert_ne!(
        copy.ino(),
        src_meta.ino(),
        "linking is the uploader's choice"
    );
    assert_eq!(leftover_links(&root), Vec::<String>::new());
}

#[tokio::test]
async fn a_file_on_another_filesystem_is_copied() {
    // /dev/shm is a tmpfs of its own: a hard link from it into the temporary directory fails.
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm, a tmpfs, is needed here");
    let dir = tempfile::tempdir().unwrap();
    assert_ne!(
        shm.path().metadata().unwrap().dev(),
        dir.path().metadata().unwrap().dev(),
        "the test needs the temporary directory on another filesystem than /dev/shm"
    );
    let root = dir.path().join("backups");
    let storage = local(&root).await;
    let (src, data) = source(shm.path(), 2 * 1024 * 1024);
    let info = storage
        .upload_file(
            &src,
            "shared/a/hits.parquet",
            &TransferOptions::default().linking(),
        )
        .await
        .unwrap();
    assert_eq!(info.sha256.to_string(), sha256_hex(&data));
    let stored = root.join("shared/a/hits.parquet");
    assert_eq!(std::fs::read(&stored).unwrap(), data);
    assert_ne!(
        stored.metadata().unwrap().ino(),
        src.metadata().unwrap().ino()
    );
}

#[tokio::test]
async fn a_file_longer_than_what_was_read_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let storage = local(&root).await;
    let (src, data) = source(dir.path(), 1024 * 1024);
    // The uploader read half of the file: the rest was written after it stopped reading.
    let half = Bytes::copy_from_slice(&data[..data.len() / 2]);
    let chunks = futures::stream::iter([Ok(half)]);
    let err = storage
        .upload_stream(
            &src,
            "shared/a/hits.parquet",
            chunks,
            &TransferOptions::default().linking(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(
        err.to_string().contains("changed while it was stored"),
        "{err}"
    );
    assert!(!root.join("shared/a/hits.parquet").exists());
    assert_eq!(leftover_links(&root), Vec::<String>::new());
}

#[tokio::test]
async fn storing_the_same_file_again_under_its_key_leaves_no_link_behind() {
    // A backup stores a file again when its check at rest finds it changed: the second link is a
    // name of the very file already in place, and renaming it onto that name changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let storage = local(&root).await;
    let (src, data) = source(dir.path(), 64 * 1024);
    let linking = TransferOptions::default().linking();
    for _ in 0..2 {
        let info = storage
            .upload_file(&src, "shared/a/hits.parquet", &linking)
            .await
            .unwrap();
        assert_eq!(info.sha256.to_string(), sha256_hex(&data));
    }
    assert_eq!(
        std::fs::read(root.join("shared/a/hits.parquet")).unwrap(),
        data
    );
    assert_eq!(leftover_links(&root), Vec::<String>::new());
    assert_eq!(
        src.metadata().unwrap().nlink(),
        2,
        "the source and the object"
    );
}
