//! Integrity headers (`HITKEEP_S3_CHECKSUM`) against a server that refuses `x-amz-checksum-*` headers as
//! Backblaze B2 does, and against one whose network damages upload bodies.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hitkeep_config::{Location, S3Checksum};
use hitkeep_storage::{ErrorKind, ObjectInfo, Sha256Digest, Storage, TransferOptions};
use hitkeep_testkit::{BUCKET, S3Server, ServerOptions};

use crate::{fast_options, random_bytes, server_settings};

const PART: usize = 5 * 1024 * 1024;

async fn open(server: &S3Server, checksum: &str) -> Storage {
    let location: Location = format!("s3://{BUCKET}/hitkeep/backups").parse().unwrap();
    let settings = server_settings(server, &[("HITKEEP_S3_CHECKSUM", checksum)]);
    Storage::open_with(&location, &settings, &fast_options())
        .await
        .unwrap()
}

async fn refusing_server() -> S3Server {
    S3Server::start_with(ServerOptions::refusing_checksum_headers())
        .await
        .unwrap()
}

/// Uploads `data` from a file as `key` in parts of 5 MiB, then downloads it against its digest.
async fn round_trip(storage: &Storage, key: &str, data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, data).unwrap();
    let opts = TransferOptions::new(PART, 2);
    let want = ObjectInfo {
        size: data.len() as u64,
        sha256: Sha256Digest::of(data),
    };
    let up = storage.upload_file(&src, key, &opts).await.unwrap();
    assert_eq!(up, want, "{key}");
    storage
        .download_file(key, &dir.path().join("back.bin"), Some(&want), &opts)
        .await
        .unwrap();
}

/// Log output at warn level of the whole test process. A global subscriber, not a thread's default:
/// tracing caches a callsite's interest, and a scoped default set on one thread can miss an event
/// whose callsite another test registered first (seen as a flaky "logged 0 times"). Tests find their
/// own lines by their server's address.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

fn logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        logs
    })
}

/// The lines logged about the server at `address`.
fn logged_about(address: &str) -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap())
        .lines()
        .filter(|l| l.contains(address))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Three uploads at once (one single-part, two multipart) meet the refusal together: each is sent
/// again with Content-MD5 and arrives whole, and the switch is logged once, naming the setting to pin.
#[tokio::test]
async fn auto_switches_to_content_md5_once_and_every_upload_arrives_whole() {
    logs();
    let server = refusing_server().await;
    let storage = open(&server, "auto").await;
    assert_eq!(storage.checksum_in_use(), S3Checksum::Crc32c);
    let small = random_bytes(100_000, 1);
    let big = random_bytes(3 * PART + 777, 2);
    tokio::join!(
        round_trip(&storage, "a/small.bin", &small),
        round_trip(&storage, "a/big.bin", &big),
        round_trip(&storage, "b/big.bin", &big),
    );
    storage.write("a/manifest.json", &b"{}"[..]).await.unwrap();
    assert_eq!(&storage.read("a/manifest.json").await.unwrap()[..], b"{}");
    assert_eq!(storage.checksum_in_use(), S3Checksum::Md5);
    assert!(server.refused_checksum_requests() >= 1);
    assert!(
        // one small write, two 4-part uploads and the manifest
        server.content_md5_requests() >= 10,
        "every PUT and part carried Content-MD5: {}",
        server.content_md5_requests()
    );
    let text = logged_about(&server.host_port());
    assert_eq!(
        text.matches("HITKEEP_S3_CHECKSUM=md5").count(),
        1,
        "logged once: {text}"
    );
    assert!(text.contains("InvalidArgument"), "{text}");
    // A clone shares the switch: nothing more is refused.
    let refused = server.refused_checksum_requests();
    storage
        .clone()
        .write("a/again.json", &b"{}"[..])
        .await
        .unwrap();
    assert_eq!(server.refused_checksum_requests(), refused);
}

/// A stream cannot be read twice: what it yielded before the refusal is kept and sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_sends_a_stream_again_after_the_refusal() {
    let server = refusing_server().await;
    let storage = open(&server, "auto").await;
    let data = random_bytes(3 * PART + 5, 3);
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let info = storage
        .upload_stream(
            Path::new("growing.parquet"),
            "s/growing.parquet",
            futures::stream::iter(chunks),
            &TransferOptions::new(PART, 2),
        )
        .await
        .unwrap();
    assert_eq!(info.sha256, Sha256Digest::of(&data));
    assert_eq!(
        &storage.read("s/growing.parquet").await.unwrap()[..],
        &data[..]
    );
    assert_eq!(storage.checksum_in_use(), S3Checksum::Md5);
}

/// Pinned to CRC32C, a refusal is an error: one line with the provider's code and message and the
/// setting to try, a hint, and not OpenDAL's request context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_crc32c_refusal_is_one_readable_line_naming_the_setting() {
    let server = refusing_server().await;
    let storage = open(&server, "crc32c").await;
    let err = storage.write("m.json", &b"{}"[..]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ChecksumRefused, "{err}");
    let text = err.to_string();
    let first = text.lines().next().unwrap();
    assert!(
        first.contains("400 InvalidArgument: Unsupported header 'x-amz-checksum-crc32c' received for this API call.")
            && first.contains("HITKEEP_S3_CHECKSUM=md5")
            && first.contains("m.json"),
        "{text}"
    );
    assert!(
        text.lines().count() == 2 && text.contains("hint: "),
        "{text}"
    );
    assert!(
        !text.contains("service_operation") && !text.contains("Parts {"),
        "{text}"
    );
    assert!(
        std::error::Error::source(&err).is_none(),
        "no OpenDAL error to print again"
    );

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    std::fs::write(&src, random_bytes(2 * PART + 1, 4)).unwrap();
    let err = storage
        .upload_file(&src, "big.bin", &TransferOptions::new(PART, 2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ChecksumRefused, "{err}");
    assert_eq!(storage.stat("big.bin").await.unwrap(), None);
    assert_eq!(storage.checksum_in_use(), S3Checksum::Crc32c);
}

/// `md5` sends Content-MD5 on every PUT and part, single-part and multipart uploads arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_uploads_arrive_whole_with_content_md5() {
    let server = S3Server::start().await.unwrap();
    let storage = open(&server, "md5").await;
    round_trip(&storage, "small.bin", &random_bytes(10_000, 5)).await;
    round_trip(&storage, "big.bin", &random_bytes(2 * PART + 3, 6)).await;
    assert!(
        // one small write and three parts
        server.content_md5_requests() >= 4,
        "{}",
        server.content_md5_requests()
    );
}

/// A body damaged on the way: with Content-MD5 (and CRC32C) the server refuses it; with no header it is
/// stored as damaged, which is what `off` warns about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_body_is_refused_with_a_header_and_stored_without_one() {
    let server = S3Server::start_with(ServerOptions::damaging_uploads())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("small.bin");
    let data = random_bytes(64 * 1024, 7);
    std::fs::write(&src, &data).unwrap();
    let opts = TransferOptions::new(PART, 2);
    for setting in ["md5", "auto"] {
        let storage = open(&server, setting).await;
        let err = storage
            .upload_file(&src, "damaged.bin", &opts)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{setting}: {err}");
    }
    assert!(server.content_md5_requests() >= 1);
    let storage = open(&server, "off").await;
    storage
        .upload_file(&src, "damaged.bin", &opts)
        .await
        .unwrap();
    assert_ne!(
        &storage.read("damaged.bin").await.unwrap()[..],
        &data[..],
        "stored as damaged"
    );
}

/// The probe `hitkeep doctor` runs: each header's answer, the setting that fits, the scratch object
/// gone, and the storage's own choice untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_says_which_headers_a_server_takes() {
    let b2 = refusing_server().await;
    let storage = open(&b2, "auto").await;
    let support = storage
        .probe_checksums("_doctor/probe")
        .await
        .unwrap()
        .unwrap();
    assert!(
        support
            .crc32c
            .as_ref()
            .unwrap_err()
            .contains("400 InvalidArgument"),
        "{support:?}"
    );
    assert_eq!(support.md5, Ok(()));
    assert_eq!(support.recommended(), S3Checksum::Md5);
    assert_eq!(storage.stat("_doctor/probe").await.unwrap(), None);
    assert_eq!(storage.checksum_in_use(), S3Checksum::Crc32c);

    let plain = S3Server::start().await.unwrap();
    let storage = open(&plain, "auto").await;
    let support = storage.probe_checksums("p").await.unwrap().unwrap();
    assert_eq!(support.recommended(), S3Checksum::Auto, "{support:?}");

    let dir = tempfile::tempdir().unwrap();
    let local = hitkeep_testkit::local_storage(dir.path()).await;
    assert_eq!(local.probe_checksums("p").await.unwrap(), None);
}
