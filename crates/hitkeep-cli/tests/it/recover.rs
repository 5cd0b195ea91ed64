//! `hitkeep recover restore-database-bundle` and `hitkeep recover import-archives` as a user runs them.

use std::path::{Path, PathBuf};

use hitkeep_testkit::S3Server;

use crate::{hk, local_env};

fn wal(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.wal", path.display()))
}

fn count(db: &Path, sql: &str) -> i64 {
    let conn = duckdb::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// A bundle as HitKeep's server writes it, of a database with 1000 checkpointed rows and 10 in its WAL.
fn make_bundle(dir: &Path) -> PathBuf {
    let source = dir.join("source.db");
    let conn = duckdb::Connection::open(&source).unwrap();
    conn.execute_batch(
        "CREATE TABLE hits (n BIGINT);
         INSERT INTO hits SELECT * FROM range(1000);
         CHECKPOINT;
         PRAGMA disable_checkpoint_on_shutdown;
         SET checkpoint_threshold = '1TB';
         INSERT INTO hits SELECT * FROM range(1000, 1010);",
    )
    .unwrap();
    drop(conn);
    let bundle = dir.join("data/recovery/20260308T120000.000000000Z-0123456789abcdef");
    std::fs::create_dir_all(&bundle).unwrap();
    let mut artifacts = Vec::new();
    for (name, path) in [("database.zst", source.clone()), ("wal.zst", wal(&source))] {
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(bundle.join(name), zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
        artifacts.push(serde_json::json!({
            "name": name, "original_size": bytes.len(),
            "sha256": hitkeep_storage::Sha256Digest::of(&bytes).to_string(),
        }));
    }
    let manifest =
        serde_json::json!({"version": 1, "trigger": "wal_replay_failure", "artifacts": artifacts});
    std::fs::write(bundle.join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::remove_file(&source).unwrap();
    std::fs::remove_file(wal(&source)).unwrap();
    bundle
}

/// The current database: one table that the bundle does not have.
fn live_database(path: &Path) {
    let conn = duckdb::Connection::open(path).unwrap();
    conn.execute_batch("CREATE TABLE current_state AS SELECT 42 AS answer; CHECKPOINT;")
        .unwrap();
}

fn snapshot(name: &str, output: &str, dir: &Path) {
    let tmp = crate::regex_escape(&dir.display().to_string());
    insta::with_settings!({
        filters => vec![
            (tmp.as_str(), "[TMP]"),
            (r"pre-restore\.\d{4}-\d{2}-\d{2}T\d{6}Z", "pre-restore.[STAMP]"),
            (r"\(\d+ bytes\)", "([SIZE] bytes)"),
        ],
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!(name, output);
    });
}

#[test]
fn restore_database_bundle_brings_back_the_database_and_wal() {
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(dir.path());
    let bundle = make_bundle(dir.path());
    let db = dir.path().join("hitkeep.db");
    live_database(&db);
    let out = hk(
        &[
            "recover",
            "restore-database-bundle",
            "-from",
            &bundle.display().to_string(),
            "-yes",
        ],
        &env,
        dir.path(),
    );
    snapshot("restore_database_bundle", &out, dir.path());
    assert_eq!(
        count(&db, "SELECT count(*) FROM hits"),
        1010,
        "the WAL's rows too"
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.display().to_string().contains("hitkeep.db.pre-restore."))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(count(&aside[0], "SELECT answer FROM current_state"), 42);

    // -db names a tenant's file; the directory is created as HitKeep does.
    let tenant = dir
        .path()
        .join("data/tenants/5c6644da-ef00-45e6-825d-c755d19d7f9f/hitkeep.db");
    let out = hk(
        &[
            "recover",
            "restore-database-bundle",
            "-from",
            &bundle.display().to_string(),
            "-db",
            &tenant.display().to_string(),
            "-yes",
        ],
        &env,
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 0") && !out.contains("renamed"),
        "{out}"
    );
    assert_eq!(count(&tenant, "SELECT count(*) FROM hits"), 1010);
}

#[test]
fn restore_database_bundle_refuses_damage_a_running_server_and_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(dir.path());
    let bundle = make_bundle(dir.path());
    let from = bundle.display().to_string();
    let db = dir.path().join("hitkeep.db");
    live_database(&db);
    let before = std::fs::read(&db).unwrap();
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let files_before = files();

    let out = hk(
        &["recover", "restore-database-bundle", "-from", &from],
        &env,
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 2")
            && out.contains("Type \"yes\" to confirm: ")
            && out.contains("pass -yes"),
        "{out}"
    );

    let manifest = std::fs::read_to_string(bundle.join("manifest.json")).unwrap();
    let mut damaged: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    damaged["artifacts"][0]["sha256"] = "0".repeat(64).into();
    std::fs::write(bundle.join("manifest.json"), damaged.to_string()).unwrap();
    let out = hk(
        &["recover", "restore-database-bundle", "-from", &from, "-yes"],
        &env,
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 1")
            && out.contains("database.zst: the SHA-256 of the decompressed bytes is"),
        "{out}"
    );
    damaged["artifacts"][1]["name"] = "shm.zst".into();
    std::fs::write(bundle.join("manifest.json"), damaged.to_string()).unwrap();
    let out = hk(
        &["recover", "restore-database-bundle", "-from", &from, "-yes"],
        &env,
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 1")
            && out.contains("error: invalid recovery bundle: ")
            && out
                .contains("manifest.json: artifacts[1].name: \"shm.zst\" is not a bundle artifact"),
        "{out}"
    );
    std::fs::write(bundle.join("manifest.json"), &manifest).unwrap();

    // This process plays the running server.
    let server = duckdb::Connection::open(&db).unwrap();
    let out = hk(
        &["recover", "restore-database-bundle", "-from", &from, "-yes"],
        &env,
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 1") && out.contains("is in use by") && out.contains("PID"),
        "{out}"
    );
    // Read before closing the connection, which could write on its way out.
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the database is untouched"
    );
    drop(server);
    assert_eq!(files(), files_before, "no aside copy and no temporary file");
    let out = hk(
        &["recover", "restore-database-bundle", "-yes"],
        &env,
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 2") && out.contains("--from"),
        "{out}"
    );
}

fn stdout(out: &str) -> &str {
    out.split("----- stdout -----\n")
        .nth(1)
        .and_then(|s| s.split("----- stderr -----").next())
        .unwrap_or_default()
}

/// Per table, the imported count printed by `import-archives`.
fn imported(out: &str) -> Vec<(String, u64)> {
    stdout(out)
        .lines()
        .filter(|l| l.contains(" imported "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words[0].to_owned(), words[1].parse().unwrap())
        })
        .collect()
}

/// The archive files `import-archives` read for the tenant it printed: per ledger entry (one per
/// site and run), one file per table with rows.
fn files_of_printed_tenant(out: &str, env: &[(String, String)], dir: &Path) -> usize {
    let tenant = stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix("Tenant:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let list: Vec<serde_json::Value> =
        serde_json::from_str(stdout(&hk(&["archive", "list", "--json"], env, dir))).unwrap();
    list.iter()
        .filter(|e| e["tenant_id"] == tenant.as_str())
        .map(|e| e["tables"].as_object().unwrap().len())
        .sum()
}

/// Archive with retention on every site, import everything back, then again: the second run imports 0.
fn import_round_trip(dir: &Path, env: &[(String, String)]) {
    assert!(hk(&["demo", "--hits", "4000", "--tenants", "1"], env, dir).starts_with("exit: 0"));
    duckdb::Connection::open(dir.join("hitkeep.db"))
        .unwrap()
        .execute_batch("UPDATE sites SET data_retention_days = 200")
        .unwrap();
    let archived = hk(&["archive", "run"], env, dir);
    assert!(
        archived.starts_with("exit: 0") && archived.contains("rows archived to"),
        "{archived}"
    );

    let out = hk(&["recover", "import-archives", "-yes"], env, dir);
    assert!(out.starts_with("exit: 0"), "{out}");
    let files = files_of_printed_tenant(&out, env, dir);
    assert!(
        out.contains("HitKeep Recovery — Import Retention Archives")
            && out.contains(" (default)\nTenant DB: ")
            && out.contains(
                "\nChecked:   every file against the size and SHA-256 its ledger recorded\n"
            )
            && files > 2
            && out.contains(&format!("✓ Imported {files} archive file(s)")),
        "{files} files: {out}"
    );
    let first = imported(&out);
    assert!(first.iter().any(|(t, n)| t == "hits" && *n > 0), "{out}");
    let again = hk(&["recover", "import-archives", "-yes"], env, dir);
    assert!(again.starts_with("exit: 0"), "{again}");
    assert!(imported(&again).iter().all(|(_, n)| *n == 0), "{again}");
    assert!(again.contains(" already present "), "{again}");

    let tenant = std::fs::read_dir(dir.join("data/tenants"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|t| {
            !out.contains(&format!("Tenant:    {t}"))
                && dir.join("data/tenants").join(t).join("hitkeep.db").exists()
        })
        .unwrap();
    let out = hk(
        &["recover", "import-archives", "-tenant", &tenant, "-yes"],
        env,
        dir,
    );
    assert!(
        out.starts_with("exit: 0") && out.contains(&format!("Tenant:    {tenant}\n")),
        "{out}"
    );
    assert!(imported(&out).iter().any(|(_, n)| *n > 0), "{out}");
}

#[test]
fn import_archives_from_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(dir.path());
    import_round_trip(dir.path(), &env);
    changed_archive_is_refused(dir.path(), &env);
    let out = hk(
        &["recover", "import-archives", "-tenant", "nope", "-yes"],
        &env,
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 2") && out.contains("is not a UUID"),
        "{out}"
    );
    let out = hk(
        &[
            "recover",
            "import-archives",
            "-tenant",
            "00000000-0000-0000-0000-000000000001",
            "-yes",
        ],
        &env,
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 1") && out.contains("import-archives never creates one"),
        "{out}"
    );
    assert!(
        !dir.path()
            .join("data/tenants/00000000-0000-0000-0000-000000000001")
            .exists()
    );
}

/// One archive file changed on disk after it was archived (its first byte, which DuckDB never
/// checks): `archive query` refuses it by its recorded SHA-256, exit 1, naming the file.
fn changed_archive_is_refused(dir: &Path, env: &[(String, String)]) {
    let mut parquet: Vec<PathBuf> = crate::archive::walk(&dir.join("archive"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parquet.sort();
    let victim = &parquet[0];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[0] ^= 1;
    std::fs::write(victim, bytes).unwrap();
    let out = hk(
        &["archive", "query", "SELECT count(*) FROM archive"],
        env,
        dir,
    );
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        out.starts_with("exit: 1")
            && out.contains("holds other bytes than were archived")
            && out.contains(name),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_archives_from_s3() {
    let server = S3Server::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = crate::s3_env(dir.path(), &server, hitkeep_testkit::BUCKET, "b", "a");
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || import_round_trip(&path, &env))
        .await
        .unwrap();
}

#[test]
fn import_archives_on_a_pre_split_install_targets_the_shared_database() {
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(dir.path());
    let demo = hk(
        &[
            "demo",
            "--hits",
            "3000",
            "--tenants",
            "1",
            "--layout",
            "2.8",
        ],
        &env,
        dir.path(),
    );
    assert!(demo.starts_with("exit: 0"), "{demo}");
    duckdb::Connection::open(dir.path().join("hitkeep.db"))
        .unwrap()
        .execute_batch("UPDATE sites SET data_retention_days = 200")
        .unwrap();
    assert!(hk(&["archive", "run"], &env, dir.path()).starts_with("exit: 0"));
    let out = hk(&["recover", "import-archives", "-yes"], &env, dir.path());
    let target = dir.path().join("hitkeep.db").display().to_string();
    let files = files_of_printed_tenant(&out, &env, dir.path());
    assert!(
        out.starts_with("exit: 0")
            && out.contains(&format!("Target DB: {target} (pre-split install"))
            && files > 2
            && out.contains(&format!("✓ Imported {files} archive file(s)")),
        "{out}"
    );
}
