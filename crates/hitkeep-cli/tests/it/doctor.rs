//! `hitkeep doctor` against the in-process S3 server: passing, and failing with a hint for each of a wrong
//! secret, a missing bucket, an https endpoint that speaks HTTP, and a server that refuses deletes; its
//! text on a local destination, pinned by a snapshot; and its exit status: 1 for a failed check, 0 for
//! warnings, 2 only for a configuration it cannot run with.

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
        "backup: integrity headers",
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
        out.starts_with("exit: 1")
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
        out.starts_with("exit: 1")
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
        out.starts_with("exit: 1") && out.contains("HITKEEP_S3_USE_SSL=false"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_deletes_fails_with_a_hint() {
    let out = case(ServerOptions::refusing_deletes(), BUCKET, &[]).await;
    assert!(
        out.starts_with("exit: 1")
            && out.contains("FAILURE backup: delete")
            && out.contains("s3:DeleteObject"),
        "{out}"
    );
}

/// A provider that refuses `x-amz-checksum-*` headers, as Backblaze B2 does: every step still passes
/// (auto switches to Content-MD5), and doctor prints the assignment to pin. A warning is not a failure:
/// the exit status is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_checksum_headers_gets_the_md5_assignment() {
    let out = case(ServerOptions::refusing_checksum_headers(), BUCKET, &[]).await;
    assert!(
        out.starts_with("exit: 0")
            && out.contains("warning backup: integrity headers")
            && out.contains("InvalidArgument")
            && out.contains("use HITKEEP_S3_CHECKSUM=md5")
            && !out.contains("FAILURE"),
        "{out}"
    );
    let pinned = case(
        ServerOptions::refusing_checksum_headers(),
        BUCKET,
        &[("HITKEEP_S3_CHECKSUM", "md5")],
    )
    .await;
    assert!(
        pinned.starts_with("exit: 0") && pinned.contains("ok      backup: integrity headers"),
        "{pinned}"
    );
}

/// On a split install the default tenant's database is the one that holds most analytics: doctor says
/// the layout, and fails, naming the path, when that file is missing.
#[test]
fn the_tenant_layout_is_checked_locally() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::local_env(dir.path());
    env.retain(|(k, _)| k != "HITKEEP_ARCHIVE_PATH");
    let out = crate::hk(
        &["demo", "--hits", "500", "--tenants", "1"],
        &env,
        dir.path(),
    );
    assert!(out.starts_with("exit: 0"), "{out}");
    let out = doctor(dir.path(), &env);
    assert!(
        out.contains("data: tenant layout")
            && out.contains("split (HitKeep 2.13): 2 tenant database(s) to back up, 0 missing"),
        "{out}"
    );
    let tenants = dir.path().join("data/tenants");
    for entry in std::fs::read_dir(&tenants).unwrap() {
        let db = entry.unwrap().path().join("hitkeep.db");
        let shared = duckdb::Connection::open(dir.path().join("hitkeep.db")).unwrap();
        let id = db
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let is_default: bool = shared
            .query_row(
                &format!("SELECT is_default FROM tenants WHERE id = '{id}'"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        if is_default {
            std::fs::remove_file(&db).unwrap();
        }
    }
    let out = doctor(dir.path(), &env);
    assert!(
        out.starts_with("exit: 1")
            && out.contains("1 missing")
            && out.contains("HITKEEP_DATA_PATH"),
        "{out}"
    );
}

/// Every check on a local destination and local demo data, as printed. Paths, sizes, free space and
/// the clock's skew differ between runs and are masked.
#[test]
fn the_text_on_a_local_destination() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::local_env(dir.path());
    let out = crate::hk(
        &["demo", "--hits", "500", "--tenants", "1"],
        &env,
        dir.path(),
    );
    assert!(out.starts_with("exit: 0"), "{out}");
    let out = doctor(dir.path(), &env);
    let tmp = crate::regex_escape(&dir.path().display().to_string());
    insta::with_settings!({
        filters => vec![
            (tmp.as_str(), "[TMP]"),
            (r"\b\d+ bytes", "[N] bytes"),
            (r"within \d+ s of", "within [N] s of"),
            (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[UUID]"),
            (r"\d{4}-\d{2}-\d{2}T\d{2}:?\d{2}:?\d{2}(\.\d+)?Z", "[TIME]"),
        ],
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!("doctor_local", out);
    });
}

/// A setting that does not parse is a configuration error: exit 2, before any check runs.
#[test]
fn a_bad_setting_exits_2_before_any_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::local_env(dir.path());
    env.push(("HITKEEP_S3_CHECKSUM".into(), "sha1".into()));
    let out = doctor(dir.path(), &env);
    assert!(
        out.starts_with("exit: 2") && out.contains("HITKEEP_S3_CHECKSUM") && !out.contains("ok "),
        "{out}"
    );
}
