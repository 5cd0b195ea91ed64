//! The storage behaviour suite: the same tests against a local directory and a real S3 server
//! (s3s-fs over HTTP on 127.0.0.1, SigV4 on), plus the S3-only failure cases.

mod checksums;
mod link;
mod object_lock;
mod partial;
mod s3_failures;
mod suite;

use std::collections::BTreeMap;
use std::time::Duration;

use hitkeep_config::{Config, Location, S3Settings, Sources};
use hitkeep_storage::{Storage, StorageOptions};
use hitkeep_testkit::{ACCESS_KEY_ID, BUCKET, S3Server, SECRET_ACCESS_KEY};

/// A storage under test and whatever keeps it alive.
#[derive(Debug)]
pub struct Fixture {
    pub storage: Storage,
    pub server: Option<S3Server>,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    pub async fn local() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Local(dir.path().join("backups"));
        let storage = Storage::open_with(&location, &s3_settings(&[]), &fast_options())
            .await
            .unwrap();
        Fixture {
            storage,
            server: None,
            _dir: Some(dir),
        }
    }

    pub async fn s3() -> Fixture {
        let server = S3Server::start().await.unwrap();
        let location: Location = format!("s3://{BUCKET}/hitkeep/backups").parse().unwrap();
        let storage =
            Storage::open_with(&location, &server_settings(&server, &[]), &fast_options())
                .await
                .unwrap();
        Fixture {
            storage,
            server: Some(server),
            _dir: None,
        }
    }
}

/// S3 settings resolved through hitkeep-config, exactly as the binary does it.
pub fn s3_settings(env: &[(&str, &str)]) -> S3Settings {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::load(&Sources {
        env,
        ..Sources::default()
    })
    .unwrap()
    .settings
    .s3
}

/// Settings for the test server, MinIO-style: path URLs, plain HTTP, static keys.
pub fn server_settings(server: &S3Server, extra: &[(&str, &str)]) -> S3Settings {
    let endpoint = server.host_port();
    let mut env = vec![
        ("HITKEEP_S3_ENDPOINT", endpoint.as_str()),
        ("HITKEEP_S3_URL_STYLE", "path"),
        ("HITKEEP_S3_USE_SSL", "false"),
        ("HITKEEP_S3_REGION", "us-east-1"),
        ("HITKEEP_S3_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("HITKEEP_S3_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
    ];
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k, v));
    }
    s3_settings(&env)
}

/// Retries that give up in well under a second, so failure tests stay quick.
pub fn fast_options() -> StorageOptions {
    let mut o = StorageOptions::default();
    o.retries = 2;
    o.min_backoff = Duration::from_millis(20);
    o.max_backoff = Duration::from_millis(100);
    o.timeout = Duration::from_secs(20);
    o.io_timeout = Duration::from_secs(20);
    o
}

/// Deterministic pseudo-random bytes (xorshift), so content errors cannot hide in repetition.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A storage on the local directory `root`, with the suite's fast options.
pub async fn local(root: &std::path::Path) -> Storage {
    Storage::open_with(
        &Location::Local(root.to_owned()),
        &s3_settings(&[]),
        &fast_options(),
    )
    .await
    .unwrap()
}
