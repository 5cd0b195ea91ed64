//! `hitkeep doctor` against the in-process S3 server: passing, and failing with a hint for each of a wrong
//! secret, a missing bucket, an https endpoint that speaks HTTP, and a server that refuses deletes.

use std::path::Path;

use hitkeep_testkit::{BUCKET, S3Server, ServerOptions};

fn env_for(
    dir: &Path,
    server: &S3Server,
    bucket: &str,
    overrides: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = crate::s3_env(dir, server, bucket, "b", "a");
    for (k, v) in overrides {
        env.retain(|(name, _)| name != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

fn doctor(dir: &Path, env: &[(String, String)]) -> String {
    crate::hk(&["doctor"], env, dir)
}

async fn case(options: ServerOptions, bucket: &str, overrides: &[(&str, &str)]) -> String {
    let server = S3Server::start_with(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let https = format!("https://{}", server.host_port());
    let overrides: Vec<(&str, &str)> = overrides
        .iter()
        .map(|(k, v)| {
            if *v == "HTTPS" {
                (*k, https.as_str())
            } else {
                (*k, *v)
            }
        })
        .collect();
    let env = env_for(dir.path(), &server, bucket, &overrides);
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        assert!(
            crate::hk(&["demo", "--hits", "500", "--tenants", "1"], &env, &path)
                .starts_with("exit: 0")
        );
        doctor(&path, &env)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_bucket_passes() {
    let out = case(ServerOptions::default(), BUCKET, &[]).await;
    assert!(out.starts_with("exit: 0"), "{out}");
    for check in [
        "backup: open",
        "write, read back, stat",
        "multipart upload",
        "paginated listing",
        "backup: delete",
        "archive: delete",
        "clock",
        "staging room",
    ] {
        assert!(out.contains(check), "missing {check}: {out}");
    }
    assert!(
        out.contains("static keys") && !out.contains(hitkeep_testkit::SECRET_ACCESS_KEY),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_fails_with_a_hint() {
    let out = case(
        ServerOptions::default(),
        BUCKET,
        &[("HITKEEP_S3_SECRET_ACCESS_KEY", "not-the-secret-at-all")],
    )
    .await;
    assert!(
        out.starts_with("exit: 2")
            && out.contains("rejected the credentials")
            && out.contains("check HITKEEP_S3_SECRET_ACCESS_KEY"),
        "{out}"
    );
    assert!(!out.contains("not-the-secret-at-all"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_fails_with_a_hint() {
    let out = case(ServerOptions::default(), "no-such-bucket", &[]).await;
    assert!(
        out.starts_with("exit: 2")
            && out.contains("\"no-such-bucket\" does not exist")
            && out.contains("hint: create the bucket"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_against_plain_http_fails_with_a_hint() {
    let out = case(
        ServerOptions::default(),
        BUCKET,
        &[
            ("HITKEEP_S3_ENDPOINT", "HTTPS"),
            ("HITKEEP_S3_USE_SSL", "true"),
        ],
    )
    .await;
    assert!(
        out.starts_with("exit: 2") && out.contains("HITKEEP_S3_USE_SSL=false"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_deletes_fails_with_a_hint() {
    let out = case(ServerOptions::refusing_deletes(), BUCKET, &[]).await;
    assert!(
        out.starts_with("exit: 2")
            && out.contains("FAILURE backup: delete")
            && out.contains("s3:DeleteObject"),
        "{out}"
    );
}
