//! S3 Object Lock against moto (s3s-fs has none): the bucket's setting, an object's retention set and
//! read back by the server's clock, never shortened, and refused where the bucket has no lock.

use hitkeep_storage::{ErrorKind, LockMode, Retention};
use hitkeep_testkit::MotoServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_is_set_read_back_and_never_shortened() {
    let moto = MotoServer::start();
    moto.create_bucket("locked", true);
    moto.create_bucket("plain", false);
    let storage = moto.storage("locked", "backups").await;
    let bucket = storage.bucket_object_lock().await.unwrap();
    assert!(bucket.enabled);
    let now = bucket.server_time.expect("moto sends Date");
    assert!(
        !moto
            .storage("plain", "backups")
            .await
            .bucket_object_lock()
            .await
            .unwrap()
            .enabled
    );

    storage
        .write("shared/a/hits.parquet", b"rows".to_vec())
        .await
        .unwrap();
    let unlocked = storage.retained("shared/a/hits.parquet").await.unwrap();
    assert_eq!(unlocked.retention, None);
    assert_eq!(unlocked.locked_until(), None);

    let until = now + jiff::SignedDuration::from_hours(48);
    let want = Retention {
        mode: LockMode::Governance,
        until: until.round(jiff::Unit::Second).unwrap(),
    };
    storage.retain("shared/a/hits.parquet", want).await.unwrap();
    let held = storage.retained("shared/a/hits.parquet").await.unwrap();
    assert_eq!(held.retention, Some(want));
    assert_eq!(held.locked_until(), Some(want.until));

    // A shorter retention asked later (fewer days configured) leaves the longer one.
    let shorter = Retention {
        until: want.until - jiff::SignedDuration::from_hours(24),
        ..want
    };
    storage
        .retain("shared/a/hits.parquet", shorter)
        .await
        .unwrap();
    let held = storage.retained("shared/a/hits.parquet").await.unwrap();
    assert_eq!(held.retention, Some(want));
    // A longer one extends it (an incremental snapshot reusing an older snapshot's object).
    let longer = Retention {
        until: want.until + jiff::SignedDuration::from_hours(24),
        ..want
    };
    storage
        .retain("shared/a/hits.parquet", longer)
        .await
        .unwrap();
    let held = storage.retained("shared/a/hits.parquet").await.unwrap();
    assert_eq!(held.retention, Some(longer));
    // Compliance asked of a governance lock: the firmer mode, the later date.
    let compliance = Retention {
        mode: LockMode::Compliance,
        ..want
    };
    storage
        .retain("shared/a/hits.parquet", compliance)
        .await
        .unwrap();
    let held = storage.retained("shared/a/hits.parquet").await.unwrap();
    assert_eq!(
        held.retention,
        Some(Retention {
            mode: LockMode::Compliance,
            until: longer.until
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_without_object_lock_refuses_retention_with_a_hint() {
    let moto = MotoServer::start();
    moto.create_bucket("plain", false);
    let storage = moto.storage("plain", "backups").await;
    storage.write("x", b"1".to_vec()).await.unwrap();
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let err = storage
        .retain(
            "x",
            Retention {
                mode: LockMode::Compliance,
                until,
            },
        )
        .await
        .unwrap_err();
    let text = format!("{err}");
    assert!(text.contains("s3://plain/backups/x"), "{text}");
    assert!(
        err.hint()
            .is_some_and(|h| h.contains("HITKEEP_BACKUP_OBJECT_LOCK_DAYS")),
        "{err:?}"
    );
    assert_eq!(
        storage.retained("x").await.unwrap().retention,
        None,
        "nothing was locked"
    );
}

#[tokio::test]
async fn a_directory_has_no_object_lock() {
    let dir = tempfile::tempdir().unwrap();
    let storage = hitkeep_testkit::local_storage(dir.path()).await;
    let err = storage.bucket_object_lock().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}
