//! Partial uploads that a killed process left: found and removed, local and S3, and nothing that a
//! live process is still using.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt as _;
use hitkeep_config::Location;
use hitkeep_storage::{ErrorKind, ListMode, PartialKind, Storage, TransferOptions};
use hitkeep_testkit::{BUCKET, S3Server, SECRET_ACCESS_KEY, ServerOptions};

use crate::{fast_options, local, server_settings};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The folders in `.hitkeep-tmp/`, sorted.
fn staging_folders(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join(".hitkeep-tmp"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A staging folder as a killed process leaves it: the temporary file it was writing, and its lock
/// file, which nobody holds any more.
fn killed_process_folder(root: &Path, name: &str, bytes: usize) -> PathBuf {
    let folder = root.join(".hitkeep-tmp").join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("hits.parquet.Xk3j0a"), vec![7u8; bytes]).unwrap();
    std::fs::write(folder.join("lock"), b"").unwrap();
    folder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_process_staging_folder_is_removed_and_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let sweeper = local(&root).await;
    let live = local(&root).await;
    let own_folders = staging_folders(&root);
    assert_eq!(own_folders.len(), 2, "one folder per opened storage");
    let dead = killed_process_folder(&root, "4242-00000000deadbeef", 1000);

    // The lock decides, not the age: a day's bound still removes a folder nobody holds.
    let report = sweeper.sweep_partial_uploads(DAY).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.removed.len(), 1, "{report:?}");
    let removed = &report.removed[0];
    assert_eq!(removed.key, ".hitkeep-tmp/4242-00000000deadbeef");
    assert_eq!(removed.kind, PartialKind::StagingFolder);
    assert_eq!(removed.bytes, Some(1000));
    assert!(removed.started.is_some());
    assert_eq!(report.kept, 1, "the live storage's folder");
    assert!(!dead.exists());
    assert_eq!(staging_folders(&root), own_folders);

    // The live storage still writes through its folder, and a clone keeps the folder alive.
    live.write("shared/a/manifest.json", "{}").await.unwrap();
    assert_eq!(
        &live.read("shared/a/manifest.json").await.unwrap()[..],
        b"{}"
    );
    let clone = live.clone();
    drop(live);
    assert_eq!(staging_folders(&root), own_folders);
    assert_eq!(
        sweeper.sweep_partial_uploads(DAY).await.unwrap().kept,
        1,
        "a clone holds the lock"
    );
    // The last clone removes its folder itself.
    drop(clone);
    assert_eq!(staging_folders(&root).len(), 1);
    let again = sweeper.sweep_partial_uploads(Duration::ZERO).await.unwrap();
    assert!(again.removed.is_empty() && again.kept == 0, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loose_files_of_older_versions_go_once_unmodified_for_an_hour_and_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let storage = local(&root).await;
    let staging = root.join(".hitkeep-tmp");
    let old = staging.join("hits.parquet.a1b2c3");
    std::fs::write(&old, vec![1u8; 500]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
    let fresh = staging.join("events.parquet.d4e5f6");
    std::fs::write(&fresh, b"still being written").unwrap();

    // A bound longer than its age keeps the old one too.
    let kept = storage.sweep_partial_uploads(DAY).await.unwrap();
    assert!(kept.removed.is_empty(), "{kept:?}");
    assert_eq!(kept.kept, 2);
    assert!(old.exists());

    // A zero bound still leaves what was written within the hour.
    let report = storage.sweep_partial_uploads(Duration::ZERO).await.unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    let removed = &report.removed[0];
    assert_eq!(removed.key, ".hitkeep-tmp/hits.parquet.a1b2c3");
    assert_eq!(removed.kind, PartialKind::LooseFile);
    assert_eq!(removed.bytes, Some(500));
    assert_eq!(report.bytes_removed(), 500);
    assert_eq!(report.kept, 1);
    assert!(!old.exists());
    assert!(fresh.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_and_the_staging_folders_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let storage = local(&root).await;
    killed_process_folder(&root, "1-dead", 10);
    let src = dir.path().join("hits.parquet");
    std::fs::write(&src, b"parquet bytes").unwrap();

    let info = storage
        .upload_file(&src, "shared/s/hits.parquet", &TransferOptions::default())
        .await
        .unwrap();
    assert_eq!(info.size, 13);
    assert_eq!(
        std::fs::read(root.join("shared/s/hits.parquet")).unwrap(),
        b"parquet bytes"
    );
    let keys = |entries: Vec<hitkeep_storage::Entry>| -> Vec<String> {
        entries.into_iter().map(|e| e.key).collect()
    };
    assert_eq!(
        keys(storage.list("", ListMode::Recursive).await.unwrap()),
        ["shared/s/hits.parquet"]
    );
    assert_eq!(
        keys(storage.list("", ListMode::OneLevel).await.unwrap()),
        ["shared"]
    );
    // The temporary file was renamed away: the storage's own folder holds only its lock.
    let own: Vec<String> = staging_folders(&root)
        .into_iter()
        .filter(|n| n != "1-dead")
        .collect();
    assert_eq!(own.len(), 1);
    let inside: Vec<String> = std::fs::read_dir(root.join(".hitkeep-tmp").join(&own[0]))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(inside, ["lock"]);
}

async fn on_server(server: &S3Server, prefix: &str, extra: &[(&str, &str)]) -> Storage {
    let location: Location = format!("s3://{BUCKET}/{prefix}").parse().unwrap();
    Storage::open_with(&location, &server_settings(server, extra), &fast_options())
        .await
        .unwrap()
}

/// Starts an upload of `key` as a killed process leaves one: three parts' worth given (OpenDAL holds
/// the last two back), then the process gone mid-upload (the task is dropped, so nothing aborts it).
async fn killed_upload(storage: &Storage, server: &S3Server, key: &str) {
    let before = server.open_uploads().unwrap().len();
    let part = Bytes::from(vec![1u8; 5 * 1024 * 1024]);
    let chunks = futures::stream::iter([Ok(part.clone()), Ok(part.clone()), Ok(part)])
        .chain(futures::stream::pending());
    let (storage, key) = (storage.clone(), key.to_owned());
    let task = tokio::spawn(async move {
        let options = TransferOptions::new(5 * 1024 * 1024, 1);
        storage
            .upload_stream(Path::new("killed"), &key, chunks, &options)
            .await
    });
    for _ in 0..500 {
        if server.open_uploads().unwrap().len() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;
    assert_eq!(server.open_uploads().unwrap().len(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_multipart_uploads_are_aborted_once_older_than_the_bound() {
    // Two uploads to a page, so that three need two pages.
    let server = S3Server::start_with(ServerOptions::paging_uploads(2))
        .await
        .unwrap();
    let ours = on_server(&server, "hitkeep/backups", &[]).await;
    let neighbour = on_server(&server, "hitkeep/backups2", &[]).await;
    let keys = [
        "shared/a/events.parquet",
        "shared/a/hits.parquet",
        "tenants/t/a/hits.parquet",
    ];
    for key in keys {
        killed_upload(&ours, &server, key).await;
    }
    killed_upload(&neighbour, &server, "shared/a/hits.parquet").await;

    // Younger than the bound by the server's clock: kept.
    let young = ours
        .sweep_partial_uploads(Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        young.removed.is_empty() && young.failed.is_empty(),
        "{young:?}"
    );
    assert_eq!(young.kept, 3, "the neighbour's upload is not ours to count");
    assert_eq!(server.open_uploads().unwrap().len(), 4);

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pages_before = server.list_upload_requests();
    let report = ours
        .sweep_partial_uploads(Duration::from_secs(1))
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let mut removed: Vec<&str> = report.removed.iter().map(|p| p.key.as_str()).collect();
    removed.sort_unstable();
    assert_eq!(removed, keys);
    for p in &report.removed {
        assert!(matches!(&p.kind, PartialKind::Multipart { upload_id } if !upload_id.is_empty()));
        assert!(p.started.is_some(), "{p:?}");
        assert_eq!(p.bytes, None);
    }
    assert_eq!(report.kept, 0);
    assert!(
        server.list_upload_requests() - pages_before >= 2,
        "three uploads, two to a page"
    );
    // Only the neighbour's upload is left, in the server's own records.
    assert_eq!(
        server.open_uploads().unwrap(),
        ["hitkeep/backups2/shared/a/hits.parquet"]
    );

    // Signing with a session token works too, and nothing is left to find.
    let with_token = on_server(
        &server,
        "hitkeep/backups",
        &[(
            "HITKEEP_S3_SESSION_TOKEN",
            "FQoGZXIvYXdzEXAMPLEsessiontoken",
        )],
    )
    .await;
    let again = with_token
        .sweep_partial_uploads(Duration::ZERO)
        .await
        .unwrap();
    assert!(again.removed.is_empty() && again.kept == 0, "{again:?}");
    let debug = format!("{ours:?}{with_token:?}{report:?}");
    assert!(!debug.contains(SECRET_ACCESS_KEY) && !debug.contains("EXAMPLEsessiontoken"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_does_not_list_uploads_says_so_with_the_lifecycle_fix() {
    let server = S3Server::start_with(ServerOptions::refusing_list_uploads())
        .await
        .unwrap();
    let storage = on_server(&server, "hitkeep/backups", &[]).await;
    let err = storage
        .sweep_partial_uploads(Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(
        err.hint().unwrap().contains("hitkeep backup lifecycle"),
        "{err}"
    );
    assert!(!format!("{err}{err:?}").contains(SECRET_ACCESS_KEY));
}
