//! `hitkeep demo`, `backup run`, `backup list` and `backup verify --deep`, as a user runs them, against a
//! local directory and the in-process S3 server.

use std::path::Path;

use hitkeep_testkit::{ACCESS_KEY_ID, BUCKET, S3Server, SECRET_ACCESS_KEY};

use crate::run;

fn local_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "HITKEEP_DB_PATH".into(),
            dir.join("hitkeep.db").display().to_string(),
        ),
        (
            "HITKEEP_DATA_PATH".into(),
            dir.join("data").display().to_string(),
        ),
        (
            "HITKEEP_BACKUP_PATH".into(),
            dir.join("backups").display().to_string(),
        ),
    ]
}

fn s3_env(dir: &Path, server: &S3Server) -> Vec<(String, String)> {
    let mut env = local_env(dir);
    env.retain(|(k, _)| k != "HITKEEP_BACKUP_PATH");
    env.extend([
        (
            "HITKEEP_BACKUP_PATH".into(),
            format!("s3://{BUCKET}/hitkeep/backups"),
        ),
        ("HITKEEP_S3_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
        (
            "HITKEEP_S3_SECRET_ACCESS_KEY".into(),
            SECRET_ACCESS_KEY.into(),
        ),
        ("HITKEEP_S3_ENDPOINT".into(), server.host_port()),
        ("HITKEEP_S3_URL_STYLE".into(), "path".into()),
        ("HITKEEP_S3_USE_SSL".into(), "false".into()),
        ("HITKEEP_S3_REGION".into(), "us-east-1".into()),
    ]);
    env
}

fn hk(args: &[&str], env: &[(String, String)], cwd: &Path) -> String {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run(args, &env, cwd)
}

fn demo_backup_list_verify(dir: &Path, env: &[(String, String)]) {
    let out = hk(&["demo", "--hits", "5000", "--tenants", "2"], env, dir);
    assert!(out.starts_with("exit: 0"), "{out}");
    let out = hk(&["backup", "run"], env, dir);
    assert!(
        out.starts_with("exit: 0") && out.contains("committed"),
        "{out}"
    );
    assert_eq!(
        out.matches(": complete").count(),
        2,
        "two tenants backed up: {out}"
    );
    let out = hk(&["backup", "list"], env, dir);
    assert!(out.starts_with("exit: 0"), "{out}");
    assert_eq!(out.matches(" complete ").count(), 3, "{out}");
    assert!(out.contains("<- latest"), "{out}");
    let out = hk(&["backup", "list", "--json"], env, dir);
    let json: serde_json::Value = serde_json::from_str(
        out.split("----- stdout -----\n")
            .nth(1)
            .unwrap()
            .split("----- stderr")
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    let out = hk(
        &["backup", "verify", "-snapshot", "latest", "--deep"],
        env,
        dir,
    );
    assert!(out.starts_with("exit: 0"), "{out}");
    assert_eq!(out.matches(" ok: ").count(), 3, "{out}");
    let out = hk(&["backup", "status", "--json"], env, dir);
    assert!(
        out.contains("\"consecutive_failures\": 0") && out.contains("\"last_snapshot\""),
        "{out}"
    );
}

#[test]
fn demo_backup_list_verify_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    demo_backup_list_verify(dir.path(), &local_env(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_backup_list_verify_on_s3() {
    let server = S3Server::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = s3_env(dir.path(), &server);
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || demo_backup_list_verify(&path, &env))
        .await
        .unwrap();
}

#[test]
fn a_database_held_by_another_process_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(dir.path());
    assert!(hk(&["demo", "--hits", "1000"], &env, dir.path()).starts_with("exit: 0"));
    let db = dir.path().join("hitkeep.db");
    // Read before opening: closing any descriptor of the file would drop this process's POSIX lock.
    let before = std::fs::read(&db).unwrap();
    // This process plays the running HitKeep server: it holds the file open for writing.
    let conn = duckdb::Connection::open(&db).unwrap();
    let out = hk(&["backup", "run"], &env, dir.path());
    assert!(out.starts_with("exit: 1"), "{out}");
    assert!(
        out.contains("is in use by another process") && out.contains("stop the HitKeep server"),
        "{out}"
    );
    assert!(out.contains("PID"), "names the holder: {out}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the file was not touched"
    );
    drop(conn);
    assert!(
        !dir.path().join("backups").join("shared").exists(),
        "nothing was backed up"
    );
}

#[test]
fn backup_commands_without_a_backup_path_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["backup", "run"], &[], dir.path());
    assert!(
        out.starts_with("exit: 2") && out.contains("HITKEEP_BACKUP_PATH"),
        "{out}"
    );
}
