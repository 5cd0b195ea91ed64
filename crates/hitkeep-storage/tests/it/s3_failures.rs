//! Failures only a real S3 server can produce, each with an error a person can act on.

use std::time::Duration;

use hitkeep_config::Location;
use hitkeep_storage::{ErrorKind, Storage, TransferOptions};
use hitkeep_testkit::{BUCKET, S3Server};

use crate::{fast_options, random_bytes, server_settings};

fn location(bucket: &str) -> Location {
    format!("s3://{bucket}/hitkeep/backups").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_a_clear_error_without_the_secret() {
    let server = S3Server::start().await.unwrap();
    let secret = "wrong-secret-key-that-must-not-leak";
    let settings = server_settings(&server, &[("HITKEEP_S3_SECRET_ACCESS_KEY", secret)]);
    let err = Storage::open_with(&location(BUCKET), &settings, &fast_options())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
    let text = format!("{err} {err:?} {:?}", std::error::Error::source(&err));
    assert!(text.contains("rejected the credentials"), "{text}");
    assert!(
        text.contains("HITKEEP_S3_SECRET_ACCESS_KEY"),
        "the hint names the setting: {text}"
    );
    assert!(!text.contains(secret), "the secret leaked: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_names_bucket_and_endpoint() {
    let server = S3Server::start().await.unwrap();
    let err = Storage::open_with(
        &location("no-such-bucket"),
        &server_settings(&server, &[]),
        &fast_options(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BucketNotFound, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("\"no-such-bucket\"") && text.contains(&server.endpoint()),
        "{text}"
    );
    assert!(
        !server.root().join("no-such-bucket").exists(),
        "opening must not create the bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_against_a_plain_http_server_suggests_use_ssl_false() {
    let server = S3Server::start().await.unwrap();
    let https = format!("https://{}", server.host_port());
    let settings = server_settings(
        &server,
        &[
            ("HITKEEP_S3_ENDPOINT", &https),
            ("HITKEEP_S3_USE_SSL", "true"),
        ],
    );
    let err = Storage::open_with(&location(BUCKET), &settings, &fast_options())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(
        err.hint()
            .unwrap_or_default()
            .contains("HITKEEP_S3_USE_SSL=false"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_says_where_and_what_to_check() {
    let mut server = S3Server::start().await.unwrap();
    server.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = Storage::open_with(
        &location(BUCKET),
        &server_settings(&server, &[]),
        &fast_options(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(err.to_string().contains(&server.endpoint()), "{err}");
    assert!(
        err.hint()
            .unwrap_or_default()
            .contains("HITKEEP_S3_ENDPOINT"),
        "{err}"
    );
}

/// The server dies while parts are in flight: the upload retries, then fails clearly, and after the server
/// comes back no object exists under the key (the multipart upload was never completed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_upload_leaves_no_complete_object() {
    let mut server = S3Server::start().await.unwrap();
    let storage = Storage::open_with(
        &location(BUCKET),
        &server_settings(&server, &[]),
        &fast_options(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.parquet");
    std::fs::write(&src, random_bytes(60 * 1024 * 1024, 3)).unwrap();

    let upload = {
        let storage = storage.clone();
        let src = src.clone();
        tokio::spawn(async move {
            storage
                .upload_file(
                    &src,
                    "shared/snap/big.parquet",
                    &TransferOptions::new(5 * 1024 * 1024, 1),
                )
                .await
        })
    };
    // Wait until the server holds a first part, then pull the plug.
    let root = server.root().to_owned();
    let has_part = || {
        std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".part-"))
    };
    for _ in 0..500 {
        if has_part() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(has_part(), "the upload never reached the server");
    server.stop();

    let err = upload.await.unwrap().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unreachable | ErrorKind::Other),
        "{err}"
    );
    assert!(
        err.to_string().contains("shared/snap/big.parquet"),
        "the error names the object: {err}"
    );

    server.restart().await.unwrap();
    assert_eq!(storage.stat("shared/snap/big.parquet").await.unwrap(), None);
}
