//! `hitkeep recover restore-backup` as a user runs it: round trips from a local directory and from S3,
//! latest selection, refusal of damaged data with the original untouched, the guide's command line.

use std::collections::BTreeMap;
use std::path::Path;

use hitkeep_testkit::S3Server;

/// Every table's row count and an order-independent hash of its rows.
fn fingerprint(db: &Path) -> BTreeMap<String, (i64, i128)> {
    let conn = duckdb::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND NOT internal ORDER BY 1")
        .unwrap();
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables
        .into_iter()
        .map(|t| {
            let sql = format!("SELECT count(*), coalesce(sum(hash(x)::HUGEINT), 0) FROM \"{t}\" x");
            let v = conn
                .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            (t, v)
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Setup {
    fn hk(&self, args: &[&str]) -> String {
        crate::hk(args, &self.env, self.dir.path())
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("hitkeep.db")
    }

    fn tenant_dbs(&self) -> Vec<std::path::PathBuf> {
        let root = self.dir.path().join("data").join("tenants");
        let mut dbs: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().path().join("hitkeep.db"))
            .filter(|p| p.exists())
            .collect();
        dbs.sort();
        dbs
    }

    fn all_fingerprints(&self) -> Vec<BTreeMap<String, (i64, i128)>> {
        std::iter::once(self.db())
            .chain(self.tenant_dbs())
            .map(|p| fingerprint(&p))
            .collect()
    }

    fn delete_databases(&self) {
        std::fs::remove_file(self.db()).unwrap();
        std::fs::remove_dir_all(self.dir.path().join("data").join("tenants")).unwrap();
    }
}

fn local_setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::local_env(dir.path());
    let s = Setup { dir, env };
    assert!(
        s.hk(&["demo", "--hits", "4000", "--tenants", "2"])
            .starts_with("exit: 0")
    );
    s
}

fn from_local(s: &Setup) -> String {
    s.dir.path().join("backups").display().to_string()
}

#[test]
fn local_round_trip_of_latest_brings_back_every_row() {
    let s = local_setup();
    let before = s.all_fingerprints();
    assert!(s.hk(&["backup", "run"]).starts_with("exit: 0"));
    s.delete_databases();
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-yes",
    ]);
    assert!(
        out.starts_with("exit: 0") && out.contains("Restore completed successfully."),
        "{out}"
    );
    assert!(
        out.contains("Layout:     split (HitKeep 2.13)")
            && out.contains("Tenants:    3 tenant database(s)")
            && out.contains(", default tenant)"),
        "the default tenant comes back with the others: {out}"
    );
    assert_eq!(s.all_fingerprints(), before);
    assert!(!s.dir.path().join("hitkeep.db.wal").exists());
    for db in std::iter::once(s.db()).chain(s.tenant_dbs()) {
        opens_in_duckdb_1_5(&db);
    }
    assert!(
        s.hk(&["backup", "run"]).starts_with("exit: 0"),
        "the restored data backs up again"
    );
    assert!(s.hk(&["backup", "verify", "--deep"]).starts_with("exit: 0"));
}

#[test]
fn latest_skips_a_newer_incomplete_snapshot_and_the_old_db_is_kept_aside() {
    let s = local_setup();
    assert!(s.hk(&["backup", "run"]).starts_with("exit: 0"));
    let first = s.all_fingerprints();
    // Change the data, back up again, then leave a newer unfinished cycle behind.
    duckdb::Connection::open(s.db())
        .unwrap()
        .execute_batch(
            "INSERT INTO users VALUES (uuid(), 'second@example.com', now()); CHECKPOINT;",
        )
        .unwrap();
    assert!(s.hk(&["backup", "run"]).starts_with("exit: 0"));
    let second = s.all_fingerprints();
    assert_ne!(first, second);
    let unfinished = s.dir.path().join("backups/shared/2099-01-01T000000Z");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::write(unfinished.join("in-progress.json"), "{}").unwrap();
    // Make the current state differ from both snapshots, so the restore is observable.
    duckdb::Connection::open(s.db())
        .unwrap()
        .execute_batch("DELETE FROM users; CHECKPOINT;")
        .unwrap();

    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-yes",
    ]);
    assert!(out.starts_with("exit: 0"), "{out}");
    assert!(!out.contains("2099-01-01T000000Z"), "{out}");
    assert!(out.contains("Existing DB renamed to"), "{out}");
    assert_eq!(s.all_fingerprints(), second);
    let asides: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".pre-restore."))
        .collect();
    assert_eq!(asides.len(), 1, "the replaced database is kept aside");
}

/// A damaged tenant object stops the whole restore before any database is swapped: the shared
/// database, which came first and was fine, is not rolled back on its own.
#[test]
fn a_damaged_tenant_leaves_every_database_as_it_was() {
    let s = local_setup();
    assert!(s.hk(&["backup", "run"]).starts_with("exit: 0"));
    let tenants = s.dir.path().join("backups/tenants");
    let tenant = std::fs::read_dir(&tenants)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let snapshot = std::fs::read_dir(&tenant)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(snapshot.join("hits.parquet"), b"garbage").unwrap();
    let before = s.all_fingerprints();
    let shared_bytes = std::fs::read(s.db()).unwrap();
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-yes",
    ]);
    assert!(
        out.starts_with("exit: 1") && out.contains("nothing was changed"),
        "{out}"
    );
    assert_eq!(std::fs::read(s.db()).unwrap(), shared_bytes);
    assert_eq!(s.all_fingerprints(), before);
}

#[test]
fn a_corrupted_object_is_refused_and_the_original_is_untouched() {
    let s = local_setup();
    assert!(s.hk(&["backup", "run"]).starts_with("exit: 0"));
    let snapshot = std::fs::read_dir(s.dir.path().join("backups/shared"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(snapshot.join("hits.parquet"), b"garbage").unwrap();
    duckdb::Connection::open(s.db())
        .unwrap()
        .execute_batch("DELETE FROM events; CHECKPOINT;")
        .unwrap();
    let before = std::fs::read(s.db()).unwrap();

    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-shared-only",
        "-yes",
    ]);
    assert!(out.starts_with("exit: 1"), "{out}");
    assert!(
        out.contains("hits.parquet") && out.contains("SHA-256"),
        "names the object: {out}"
    );
    assert!(out.contains("nothing was changed"), "{out}");
    assert_eq!(std::fs::read(s.db()).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restore") || n.contains("pre-restore"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no staging or aside copies left: {leftovers:?}"
    );
}

/// A legacy (manifest-less) snapshot whose import fails halfway: the original stays in place.
#[test]
fn an_import_that_fails_halfway_leaves_the_original_in_place() {
    let s = local_setup();
    let dir = s.dir.path().join("backups/shared/2026-03-08T120000Z");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("schema.sql"), "CREATE TABLE t (i INTEGER);\n").unwrap();
    // As EXPORT writes it (anything else is refused before the import), with a file that is no Parquet.
    std::fs::write(
        dir.join("load.sql"),
        "COPY t FROM '/elsewhere/t.parquet' (FORMAT 'parquet');\n",
    )
    .unwrap();
    std::fs::write(dir.join("t.parquet"), "not parquet").unwrap();
    let before = std::fs::read(s.db()).unwrap();
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-snapshot",
        "2026-03-08T120000Z",
        "-yes",
    ]);
    assert!(
        out.starts_with("exit: 1") && out.contains("legacy"),
        "{out}"
    );
    assert!(
        out.contains("Error restoring the shared database: loading the snapshot's tables: "),
        "the database is named once: {out}"
    );
    assert_eq!(std::fs::read(s.db()).unwrap(), before);
}

#[test]
fn no_answer_changes_nothing_and_bad_input_is_refused_before_io() {
    let s = local_setup();
    assert!(s.hk(&["backup", "run"]).starts_with("exit: 0"));
    let before = std::fs::read(s.db()).unwrap();
    let out = s.hk(&["recover", "restore-backup", "-from", &from_local(&s)]);
    assert!(
        out.starts_with("exit: 2")
            && out.contains("Type \"yes\" to confirm restore:")
            && out.contains("pass -yes"),
        "{out}"
    );
    assert_eq!(std::fs::read(s.db()).unwrap(), before);

    for bad in ["2026-03-08", "../../etc", "2026-03-08T120000Z/x"] {
        let out = s.hk(&[
            "recover",
            "restore-backup",
            "-from",
            "/nonexistent/place",
            "-snapshot",
            bad,
            "-yes",
        ]);
        assert!(
            out.starts_with("exit: 2") && out.contains("not a snapshot id"),
            "{bad}: {out}"
        );
    }
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-snapshot",
        "2020-01-01T000000Z",
        "-yes",
    ]);
    assert!(
        out.starts_with("exit: 1") && out.contains("the newest are:"),
        "{out}"
    );
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        "s3://Bad_Bucket/x",
        "-yes",
    ]);
    assert!(out.starts_with("exit: 2"), "{out}");
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-shared-only",
        "-tenant",
        "00000000-0000-0000-0000-000000000001",
    ]);
    assert!(
        out.starts_with("exit: 2") && out.contains("cannot be used with"),
        "{out}"
    );
}

#[test]
fn single_tenant_restore_touches_only_that_tenant() {
    let s = local_setup();
    let before = s.all_fingerprints();
    assert!(s.hk(&["backup", "run"]).starts_with("exit: 0"));
    let dbs = s.tenant_dbs();
    let chosen = dbs[0]
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    std::fs::remove_file(&dbs[0]).unwrap();
    let (shared, other) = (
        std::fs::read(s.db()).unwrap(),
        std::fs::read(&dbs[1]).unwrap(),
    );
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-tenant",
        &chosen,
        "-yes",
    ]);
    assert!(
        out.starts_with("exit: 0") && out.contains("Tenants:    1 tenant database(s)"),
        "{out}"
    );
    assert!(!out.contains("Shared database restored"), "{out}");
    assert_eq!(s.all_fingerprints()[1], before[1]);
    assert_eq!(
        std::fs::read(s.db()).unwrap(),
        shared,
        "the shared database is untouched"
    );
    assert_eq!(
        std::fs::read(&dbs[1]).unwrap(),
        other,
        "the other tenant is untouched"
    );
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-tenant",
        "00000000-0000-0000-0000-000000000000",
        "-yes",
    ]);
    assert!(
        out.starts_with("exit: 1") && out.contains("has no usable snapshot"),
        "{out}"
    );
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-dry-run",
    ]);
    assert!(
        out.starts_with("exit: 0") && out.contains("Dry run: nothing changed."),
        "{out}"
    );
}

/// The guide's command verbatim (plus the endpoint settings a MinIO-style server needs, as variables),
/// and again without -snapshot: the shared DB and every tenant come back from S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_command_restores_everything_from_s3() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("my-analytics-bucket").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = crate::s3_env(
        dir.path(),
        &server,
        "my-analytics-bucket",
        "hitkeep/backups",
        "hitkeep/archive",
    );
    let s = Setup { dir, env };
    tokio::task::spawn_blocking(move || {
        assert!(
            s.hk(&["demo", "--hits", "4000", "--tenants", "2"])
                .starts_with("exit: 0")
        );
        let before = s.all_fingerprints();
        let out = s.hk(&["backup", "run"]);
        assert!(out.starts_with("exit: 0"), "{out}");
        let id = out
            .split("snapshot ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_owned();
        s.delete_databases();
        let out = s.hk(&[
            "recover",
            "restore-backup",
            "-from",
            "s3://my-analytics-bucket/hitkeep/backups",
            "-snapshot",
            &id,
            "-s3-region",
            "eu-central-1",
            "-yes",
        ]);
        assert!(
            out.starts_with("exit: 0") && out.contains("Tenants:    3 tenant database(s)"),
            "{out}"
        );
        assert_eq!(s.all_fingerprints(), before);
        s.delete_databases();
        let out = s.hk(&[
            "recover",
            "restore-backup",
            "-from",
            "s3://my-analytics-bucket/hitkeep/backups",
            "-yes",
        ]);
        assert!(
            out.starts_with("exit: 0") && out.contains("Tenants:    3 tenant database(s)"),
            "{out}"
        );
        assert_eq!(s.all_fingerprints(), before);
        assert!(s.hk(&["backup", "verify"]).starts_with("exit: 0"));
    })
    .await
    .unwrap();
}

/// A Python `duckdb==1.5.x` install: `HITKEEP_TEST_DUCKDB15`, else the one scripts/test keeps in the
/// cache, installed there the same way when missing. The check never skips itself: without DuckDB 1.5
/// the test fails and says how to get it.
fn duckdb15_site() -> std::path::PathBuf {
    if let Some(site) = std::env::var_os("HITKEEP_TEST_DUCKDB15") {
        return site.into();
    }
    let cache = std::env::var_os("HITKEEP_CACHE").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/hitkeep")
        },
        std::path::PathBuf::from,
    );
    let site = cache.join("python-duckdb-1.5");
    if !site.join("duckdb").is_dir() {
        let installed = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&site)
            .arg("duckdb==1.5.6")
            .status();
        assert!(
            matches!(installed, Ok(s) if s.success()),
            "DuckDB 1.5 is needed to check that HitKeep Go opens restored files, and installing it failed ({installed:?}); run `python3 -m pip install --target {} duckdb==1.5.6`, or set HITKEEP_TEST_DUCKDB15 to such an install",
            site.display()
        );
    }
    site
}

/// HitKeep Go ships DuckDB 1.5, which cannot read files at DuckDB 2.0's default storage version: the
/// restored file must open there and hold the same rows.
fn opens_in_duckdb_1_5(db: &Path) {
    let site = duckdb15_site();
    let want: i64 = duckdb::Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM hits", [], |r| r.get(0))
        .unwrap();
    let script = format!(
        "import duckdb; assert duckdb.__version__.startswith('1.5'), duckdb.__version__; \
         print(duckdb.connect({:?}, read_only=True).execute('SELECT count(*) FROM hits').fetchone()[0])",
        db.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", site)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "DuckDB 1.5 cannot open the restored file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want.to_string()
    );
}

/// What HitKeep Go writes: a plain EXPORT DATABASE per database, no manifest. It restores, with a warning.
#[test]
fn a_plain_hitkeep_go_export_restores() {
    let s = local_setup();
    let before = s.all_fingerprints();
    let id = "2026-03-08T120000Z";
    let export = |db: &Path, dest: &Path| {
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let conn = duckdb::Connection::open(db).unwrap();
        conn.execute_batch(&format!(
            "EXPORT DATABASE '{}' (FORMAT PARQUET)",
            dest.display()
        ))
        .unwrap();
    };
    export(&s.db(), &s.dir.path().join("backups/shared").join(id));
    for db in s.tenant_dbs() {
        let tenant = db.parent().unwrap().file_name().unwrap().to_owned();
        export(
            &db,
            &s.dir.path().join("backups/tenants").join(tenant).join(id),
        );
    }
    s.delete_databases();
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-yes",
    ]);
    assert!(
        out.starts_with("exit: 0") && out.contains("legacy"),
        "no complete snapshot, so the legacy one is used: {out}"
    );
    assert!(
        out.contains("Layout:     read from the shared database once imported"),
        "{out}"
    );
    assert_eq!(s.all_fingerprints(), before);
}

#[test]
fn a_target_held_by_a_running_server_is_refused_before_downloading() {
    let s = local_setup();
    assert!(s.hk(&["backup", "run"]).starts_with("exit: 0"));
    // Held like a running HitKeep server holds it (read nothing from the file after this: closing any
    // descriptor of it would drop this process's POSIX lock).
    let conn = duckdb::Connection::open(s.db()).unwrap();
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-yes",
    ]);
    assert!(
        out.starts_with("exit: 1") && out.contains("stop the HitKeep server"),
        "{out}"
    );
    assert!(out.contains("PID"), "{out}");
    drop(conn);
    let staged: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".restore-"))
        .collect();
    assert!(staged.is_empty(), "nothing was downloaded");
}

/// A split cycle without its default tenant (here: HitKeep Go's manifest-less form, the folder gone)
/// is refused with nothing changed; `-shared-only` restores the shared database and says what HitKeep
/// will find on start.
#[test]
fn a_split_cycle_without_its_default_tenant_needs_shared_only() {
    let s = local_setup();
    let out = s.hk(&["backup", "run"]);
    assert!(
        out.starts_with("exit: 0") && out.contains("layout split"),
        "{out}"
    );
    let backups = s.dir.path().join("backups");
    let default_folder = std::fs::read_dir(backups.join("tenants"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let id = p.file_name().unwrap().to_string_lossy().into_owned();
            out.contains(&format!("tenant {id} (default): complete"))
        })
        .expect("the cycle backs up the default tenant");
    std::fs::remove_dir_all(&default_folder).unwrap();
    for manifest in walk(&backups).filter(|p| p.ends_with("manifest.json")) {
        std::fs::remove_file(manifest).unwrap();
    }
    let before = std::fs::read(s.db()).unwrap();
    let restore = |extra: &[&str]| {
        let from = from_local(&s);
        let mut args = vec!["recover", "restore-backup", "-from", from.as_str(), "-yes"];
        args.extend_from_slice(extra);
        s.hk(&args)
    };
    let out = restore(&[]);
    assert!(
        out.starts_with("exit: 1")
            && out.contains("split (HitKeep 2.13) but the default tenant")
            && out.contains("-shared-only")
            && out.contains("nothing was changed"),
        "{out}"
    );
    assert_eq!(std::fs::read(s.db()).unwrap(), before, "nothing changed");
    let out = restore(&["-shared-only"]);
    assert!(out.starts_with("exit: 0"), "{out}");
    assert!(
        out.contains(
            "HitKeep will start with the default tenant's analytics from the database already at"
        ),
        "says what HitKeep finds on start: {out}"
    );
}

/// HitKeep 2.8's layout: the default tenant's analytics in the shared database, the other tenants
/// each in their own, all restored as they were.
#[test]
fn a_pre_split_install_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::local_env(dir.path());
    let s = Setup { dir, env };
    let out = s.hk(&[
        "demo",
        "--hits",
        "4000",
        "--tenants",
        "2",
        "--layout",
        "2.8",
    ]);
    assert!(out.starts_with("exit: 0"), "{out}");
    let before = s.all_fingerprints();
    assert_eq!(before.len(), 3, "shared + 2 tenants");
    let out = s.hk(&["backup", "run"]);
    assert!(
        out.starts_with("exit: 0") && out.contains("layout pre-split"),
        "{out}"
    );
    s.delete_databases();
    let out = s.hk(&[
        "recover",
        "restore-backup",
        "-from",
        &from_local(&s),
        "-yes",
    ]);
    assert!(
        out.starts_with("exit: 0")
            && out.contains("Layout:     pre-split (HitKeep 2.8)")
            && out.contains("Tenants:    2 tenant database(s)"),
        "{out}"
    );
    assert_eq!(s.all_fingerprints(), before);
    opens_in_duckdb_1_5(&s.db());
}

/// `-s3-session-token` (HitKeep 2.13's restore flag) is taken, and never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_takes_an_s3_session_token() {
    let server = S3Server::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = crate::s3_env(dir.path(), &server, "hitkeep-test", "backups", "archive");
    let s = Setup { dir, env };
    tokio::task::spawn_blocking(move || {
        assert!(
            s.hk(&["demo", "--hits", "2000", "--tenants", "1"])
                .starts_with("exit: 0")
        );
        let before = s.all_fingerprints();
        assert!(s.hk(&["backup", "run"]).starts_with("exit: 0"));
        s.delete_databases();
        let token = "FQoGZXIvYXdzEXAMPLEsessiontoken";
        let out = s.hk(&[
            "recover",
            "restore-backup",
            "-from",
            "s3://hitkeep-test/backups",
            "-s3-session-token",
            token,
            "-yes",
        ]);
        assert!(out.starts_with("exit: 0"), "{out}");
        assert!(!out.contains(token), "{out}");
        assert_eq!(s.all_fingerprints(), before);
    })
    .await
    .unwrap();
}

fn walk(dir: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    let mut stack = vec![dir.to_owned()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.into_iter()
}

/// A UUID: tenant, site and source ids, random in every demo.
pub(crate) const UUID: &str = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";

/// Pins `output` as snapshot `name`, with what differs between runs masked: the temp dir, snapshot
/// ids and stamps, UUIDs, byte sizes and row counts.
fn snapshot_masked(name: &str, output: &str, dir: &Path) {
    let tmp = crate::regex_escape(&dir.display().to_string());
    insta::with_settings!({
        filters => vec![
            (tmp.as_str(), "[TMP]"),
            (r"\d{4}-\d{2}-\d{2}T\d{6}Z", "[SNAPSHOT]"),
            (UUID, "[UUID]"),
            (r"\b\d+ bytes", "[N] bytes"),
            (r"\b\d+ rows", "[N] rows"),
        ],
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!(name, output);
    });
}

/// The plan lists tenants in the order of their (random) ids; the default tenant's line goes first
/// here so that the masked text is the same in every run.
fn default_tenant_first(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut block: Vec<&str> = Vec::new();
    for line in lines {
        if line.starts_with("  - ") {
            block.push(line);
            continue;
        }
        block.sort_by_key(|l| !l.contains(", default tenant)"));
        out.append(&mut block);
        out.push(line);
    }
    out.append(&mut block);
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// What `restore-backup` prints: the plan of a dry run, then the plan and report of a whole restore
/// over the live databases (each kept aside).
#[test]
fn the_plan_and_the_report_as_printed() {
    let s = local_setup();
    assert!(s.hk(&["backup", "run"]).starts_with("exit: 0"));
    let from = from_local(&s);
    let plan = s.hk(&["recover", "restore-backup", "-from", &from, "-dry-run"]);
    assert!(plan.starts_with("exit: 0"), "{plan}");
    snapshot_masked("restore_plan", &default_tenant_first(&plan), s.dir.path());
    let before = s.all_fingerprints();
    let report = s.hk(&["recover", "restore-backup", "-from", &from, "-yes"]);
    assert!(report.starts_with("exit: 0"), "{report}");
    snapshot_masked(
        "restore_report",
        &default_tenant_first(&report),
        s.dir.path(),
    );
    assert_eq!(s.all_fingerprints(), before);
}

/// An operator's encrypted round trip: the host backs up with the public key only; `list` and a
/// plain `verify` need no key; restore refuses without the identity and with a wrong one, leaving the
/// databases as they were, and restores with the right one; no output ever holds the private key.
#[test]
fn an_encrypted_backup_opens_only_with_its_identity() {
    let mut s = local_setup();
    let keygen = |s: &Setup, name: &str| {
        let file = s.dir.path().join(name);
        let made = s.hk(&["backup", "keygen", &file.display().to_string()]);
        assert!(made.starts_with("exit: 0"), "{made}");
        let public = made.lines().nth(2).unwrap_or_default().to_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let secret = text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-1"));
        assert!(public.starts_with("age1") && secret.is_some(), "{made}\n");
        (file, public, secret.unwrap_or_default().to_owned(), made)
    };
    let (identity_file, public, secret, made) = keygen(&s, "backup-key.txt");
    let (stranger_file, ..) = keygen(&s, "stranger.txt");
    let again = s.hk(&["backup", "keygen", &identity_file.display().to_string()]);
    assert!(
        again.starts_with("exit: 2") && again.contains("exists already"),
        "{again}"
    );
    assert!(
        std::fs::read_to_string(&identity_file)
            .unwrap()
            .contains(&secret)
    );
    s.env.extend([
        ("HITKEEP_BACKUP_RECIPIENTS".into(), public.clone()),
        ("HITKEEP_LOG_LEVEL".into(), "trace".into()),
    ]);
    let mut outputs = vec![made, again];
    let before = s.all_fingerprints();
    let run = s.hk(&["backup", "run"]);
    assert!(run.starts_with("exit: 0"), "{run}");
    let listed = s.hk(&["backup", "list"]);
    assert!(
        listed.contains("(encrypted)") && listed.contains("sealed"),
        "{listed}"
    );
    let verified = s.hk(&["backup", "verify"]);
    assert!(verified.starts_with("exit: 0"), "{verified}");
    let deep = s.hk(&["backup", "verify", "--deep"]);
    assert!(
        !deep.starts_with("exit: 0") && deep.contains("HITKEEP_BACKUP_IDENTITY_FILE"),
        "{deep}"
    );
    outputs.extend([run, listed, verified, deep]);

    s.delete_databases();
    let from = from_local(&s);
    let restore = ["recover", "restore-backup", "-from", &from, "-yes"];
    let refused = s.hk(&restore);
    assert!(
        refused.starts_with("exit: 2") && refused.contains("HITKEEP_BACKUP_IDENTITY_FILE"),
        "{refused}"
    );
    assert!(!s.db().exists(), "nothing was restored");
    let with = |file: &Path| {
        let mut env = s.env.clone();
        env.push((
            "HITKEEP_BACKUP_IDENTITY_FILE".into(),
            file.display().to_string(),
        ));
        env
    };
    let wrong = crate::hk(&restore, &with(&stranger_file), s.dir.path());
    assert!(
        wrong.starts_with("exit: 1") && wrong.contains("recipients"),
        "{wrong}"
    );
    assert!(!s.db().exists(), "nothing was restored");
    let restored = crate::hk(&restore, &with(&identity_file), s.dir.path());
    assert!(restored.starts_with("exit: 0"), "{restored}");
    assert_eq!(s.all_fingerprints(), before);
    let deep = crate::hk(
        &["backup", "verify", "--deep"],
        &with(&identity_file),
        s.dir.path(),
    );
    assert!(deep.starts_with("exit: 0"), "{deep}");
    let shown = crate::hk(&["config", "show"], &with(&identity_file), s.dir.path());
    assert!(shown.contains("backup-key.txt"), "{shown}");
    outputs.extend([refused, wrong, restored, deep, shown]);

    // A private key given as a recipient, quoted among others, or instead of the identity file's
    // path, is refused, and not echoed.
    for (setting, value) in [
        ("HITKEEP_BACKUP_RECIPIENTS", secret.clone()),
        (
            "HITKEEP_BACKUP_RECIPIENTS",
            format!("{public},\"{}\"", secret.to_lowercase()),
        ),
        ("HITKEEP_BACKUP_IDENTITY_FILE", secret.clone()),
    ] {
        let mut env = s.env.clone();
        env.push((setting.into(), value));
        let misplaced = crate::hk(&["backup", "run"], &env, s.dir.path());
        assert!(
            misplaced.starts_with("exit: 2") && misplaced.contains("private key"),
            "{misplaced}"
        );
        outputs.push(misplaced);
    }
    for out in &outputs {
        let upper = out.to_ascii_uppercase(); // bech32 is read in either case
        assert!(
            !upper.contains(&secret[16..]),
            "an output holds a private key: {out}"
        );
    }
}

/// Tenant keys as an operator uses them: the host backs up with HITKEEP_BACKUP_TENANT_KEYS;
/// `forget-tenant` shows what it deletes and what it leaves, asks (and without input, refuses),
/// deletes with -yes; then the other tenant of the same cycle restores and the forgotten one is
/// refused with its data untouched.
#[test]
fn a_forgotten_tenant_is_refused_and_the_others_restore() {
    let mut s = local_setup();
    let key = s.dir.path().join("operator.key");
    let made = s.hk(&["backup", "keygen", &key.display().to_string()]);
    let public = made.lines().nth(2).unwrap_or_default().to_owned();
    assert!(public.starts_with("age1"), "{made}");
    s.env.extend([
        ("HITKEEP_BACKUP_RECIPIENTS".into(), public),
        ("HITKEEP_BACKUP_TENANT_KEYS".into(), "true".into()),
    ]);
    let run = s.hk(&["backup", "run"]);
    assert!(run.starts_with("exit: 0"), "{run}");
    let tenants: Vec<String> = s
        .tenant_dbs()
        .iter()
        .map(|p| {
            p.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let (gone, kept) = (&tenants[0], &tenants[1]);
    let before = fingerprint(
        &s.dir
            .path()
            .join("data/tenants")
            .join(gone)
            .join("hitkeep.db"),
    );

    let dry = s.hk(&["backup", "forget-tenant", gone, "--dry-run"]);
    assert!(
        dry.starts_with("exit: 0") && dry.contains("dry run"),
        "{dry}"
    );
    insta::with_settings!({
        filters => vec![
            (crate::regex_escape(&s.dir.path().display().to_string()).as_str(), "[TMP]"),
            (r"\d{4}-\d{2}-\d{2}T\d{6}Z", "[SNAPSHOT]"),
            (UUID, "[UUID]"),
            (r"[0-9a-f]{16}\.json", "[KEY ID].json"),
        ],
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!("forget_tenant_plan", dry);
    });
    let unasked = s.hk(&["backup", "forget-tenant", gone]);
    assert!(
        unasked.starts_with("exit: 2") && unasked.contains("-yes"),
        "{unasked}"
    );
    let forgot = s.hk(&["backup", "forget-tenant", gone, "--yes"]);
    assert!(
        forgot.starts_with("exit: 0") && forgot.contains("deleted 1 key file"),
        "{forgot}"
    );
    let listed = s.hk(&["backup", "list"]);
    let marked = |mark: &str| listed.lines().filter(|l| l.contains(mark)).count();
    assert_eq!(marked("forgotten: opens no more"), 1, "{listed}");
    assert_eq!(marked("(encrypted to the tenant's key)"), 2, "{listed}");
    let listed = s.hk(&["backup", "list", "--json"]);
    assert!(listed.contains("\"forgotten\": true"), "{listed}");
    let again = s.hk(&["backup", "forget-tenant", gone, "--yes"]);
    assert!(
        again.starts_with("exit: 0") && again.contains("unreadable already"),
        "forgetting again succeeds: {again}"
    );
    let mistyped = s.hk(&[
        "backup",
        "forget-tenant",
        "5c6644da-ef00-45e6-825d-c755d19d7f9f",
        "--yes",
    ]);
    assert!(
        mistyped.starts_with("exit: 1") && mistyped.contains("nothing was made unreadable"),
        "{mistyped}"
    );

    let mut with = s.env.clone();
    with.push((
        "HITKEEP_BACKUP_IDENTITY_FILE".into(),
        key.display().to_string(),
    ));
    let from = from_local(&s);
    let restore = |tenant: &str| {
        crate::hk(
            &[
                "recover",
                "restore-backup",
                "-from",
                &from,
                "-tenant",
                tenant,
                "-yes",
            ],
            &with,
            s.dir.path(),
        )
    };
    let restored = restore(kept);
    assert!(restored.starts_with("exit: 0"), "{restored}");
    let refused = restore(gone);
    assert!(
        refused.starts_with("exit: 1")
            && refused.contains("forget-tenant")
            && refused.contains("forgotten on"),
        "{refused}"
    );
    assert_eq!(
        fingerprint(
            &s.dir
                .path()
                .join("data/tenants")
                .join(gone)
                .join("hitkeep.db")
        ),
        before
    );
    let deep = crate::hk(&["backup", "verify", "--deep"], &with, s.dir.path());
    assert!(
        deep.starts_with("exit: 0") && deep.contains("not opened"),
        "{deep}"
    );

    // Rotation: `rewrap` seals the two key files left to a new operator key; the new identity then
    // restores the kept tenant. Without an identity it is a usage error.
    let new_key = s.dir.path().join("new-operator.key");
    let made = s.hk(&["backup", "keygen", &new_key.display().to_string()]);
    let new_public = made.lines().nth(2).unwrap_or_default().to_owned();
    let mut rotated = with.clone();
    rotated.retain(|(k, _)| k != "HITKEEP_BACKUP_RECIPIENTS");
    rotated.push(("HITKEEP_BACKUP_RECIPIENTS".into(), new_public.clone()));
    let mut unopened = rotated.clone();
    unopened.retain(|(k, _)| k != "HITKEEP_BACKUP_IDENTITY_FILE");
    let no_identity = crate::hk(&["backup", "rewrap", "--yes"], &unopened, s.dir.path());
    assert!(
        no_identity.starts_with("exit: 2") && no_identity.contains("HITKEEP_BACKUP_IDENTITY_FILE"),
        "{no_identity}"
    );
    let rewrapped = crate::hk(&["backup", "rewrap", "--yes"], &rotated, s.dir.path());
    assert!(
        rewrapped.starts_with("exit: 0")
            && rewrapped.contains(&new_public)
            && rewrapped.contains("rewrapped 2 key file(s)"),
        "{rewrapped}"
    );
    let mut opened_by_new = rotated.clone();
    opened_by_new.retain(|(k, _)| k != "HITKEEP_BACKUP_IDENTITY_FILE");
    opened_by_new.push((
        "HITKEEP_BACKUP_IDENTITY_FILE".into(),
        new_key.display().to_string(),
    ));
    let restored = crate::hk(
        &[
            "recover",
            "restore-backup",
            "-from",
            &from,
            "-tenant",
            kept,
            "-yes",
        ],
        &opened_by_new,
        s.dir.path(),
    );
    assert!(restored.starts_with("exit: 0"), "{restored}");
}
