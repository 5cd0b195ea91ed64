//! HitKeep's database recovery bundles restored over a real DuckDB file: the rows come back (WAL
//! included), the old file goes aside, and a damaged bundle changes nothing and leaves nothing behind.

use std::path::{Path, PathBuf};

use hitkeep_backup::{Bundle, Error, SnapshotId};

/// A DuckDB file with `rows` checkpointed rows and `wal_rows` more left in its WAL, as a server that
/// stopped before its next checkpoint leaves it.
fn database(path: &Path, rows: i64, wal_rows: i64) {
    let conn = duckdb::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE hits (n BIGINT, path VARCHAR);
         INSERT INTO hits SELECT i, '/page/' || i FROM range({rows}) t(i);
         CHECKPOINT;
         PRAGMA disable_checkpoint_on_shutdown;
         SET checkpoint_threshold = '1TB';
         INSERT INTO hits SELECT i, '/wal/' || i FROM range({rows}, {rows} + {wal_rows}) t(i);"
    ))
    .unwrap();
    drop(conn);
    assert_eq!(
        wal(path).exists(),
        wal_rows > 0,
        "the WAL is kept as written"
    );
}

fn wal(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.wal", path.display()))
}

/// `(name, original bytes)` → a bundle directory as HitKeep writes it.
fn bundle(dir: &Path, artifacts: &[(&str, Vec<u8>)]) -> PathBuf {
    let bundle = dir.join("recovery/20260308T120000.000000000Z-0123456789abcdef");
    std::fs::create_dir_all(&bundle).unwrap();
    let mut listed = Vec::new();
    for (name, bytes) in artifacts {
        let compressed = zstd::encode_all(&bytes[..], 3).unwrap();
        std::fs::write(bundle.join(name), compressed).unwrap();
        listed.push(serde_json::json!({
            "name": name,
            "original_size": bytes.len(),
            "sha256": hitkeep_storage::Sha256Digest::of(bytes).to_string(),
        }));
    }
    write_manifest(
        &bundle,
        &serde_json::json!({
            "version": 1, "database_id": "0123456789abcdef", "trigger": "wal_replay_failure",
            "created_at": "2026-03-08T12:00:00Z", "artifacts": listed,
        }),
    );
    bundle
}

fn write_manifest(bundle: &Path, manifest: &serde_json::Value) {
    let text = serde_json::to_string_pretty(manifest).unwrap() + "\n";
    std::fs::write(bundle.join("manifest.json"), text).unwrap();
}

fn manifest(bundle: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap()
}

fn count(db: &Path, sql: &str) -> i64 {
    let conn = duckdb::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Every file in `dir` (not recursive), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn stamp() -> SnapshotId {
    "2026-03-08T130000Z".parse().unwrap()
}

/// A source database with a WAL and the target it replaces, in `dir/source` and `dir/live`.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let (source, live) = (dir.join("source"), dir.join("live"));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    let db = source.join("hitkeep.db");
    database(&db, 5_000, 25);
    let bundle = bundle(
        dir,
        &[
            ("database.zst", std::fs::read(&db).unwrap()),
            ("wal.zst", std::fs::read(wal(&db)).unwrap()),
        ],
    );
    let target = live.join("hitkeep.db");
    let conn = duckdb::Connection::open(&target).unwrap();
    conn.execute_batch("CREATE TABLE current_state AS SELECT 42 AS answer; CHECKPOINT;")
        .unwrap();
    drop(conn);
    (bundle, target)
}

#[test]
fn a_bundle_replaces_the_database_with_its_wal_and_keeps_the_old_one_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, target) = setup(dir.path());
    let restored = Bundle::open(&bundle).unwrap();
    assert_eq!(restored.database.name, "database.zst");
    assert!(restored.wal.is_some());

    let outcome = restored.restore(&target, stamp()).unwrap();
    let aside = outcome.aside.clone().expect("the old database was there");
    assert_eq!(
        aside,
        target.with_file_name("hitkeep.db.pre-restore.2026-03-08T130000Z")
    );
    assert!(outcome.wal);
    use std::os::unix::fs::PermissionsExt as _;
    for path in [target.clone(), wal(&target)] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    // The rows in the WAL come back too: DuckDB replays it on open.
    assert_eq!(count(&target, "SELECT count(*) FROM hits"), 5_025);
    assert_eq!(
        count(
            &target,
            "SELECT count(*) FROM hits WHERE path LIKE '/wal/%'"
        ),
        25
    );
    assert_eq!(count(&aside, "SELECT answer FROM current_state"), 42);
    let live = target.parent().unwrap();
    assert!(
        !names(live).iter().any(|n| n.contains("bundle-restore")),
        "no temporary file left: {:?}",
        names(live)
    );
}

#[test]
fn a_bundle_restores_where_no_database_was() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, _) = setup(dir.path());
    let target = dir.path().join("new/tenants/x/hitkeep.db");
    let outcome = Bundle::open(&bundle)
        .unwrap()
        .restore(&target, stamp())
        .unwrap();
    assert_eq!(outcome.aside, None);
    assert_eq!(count(&target, "SELECT count(*) FROM hits"), 5_025);
}

/// Each way a bundle can be wrong: the error names the file and the problem, and the target, its
/// directory and the bundle are exactly as they were.
#[test]
fn a_damaged_bundle_changes_nothing_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, target) = setup(dir.path());
    let original = manifest(&bundle);
    let live = target.parent().unwrap().to_owned();
    let (before, files_before) = (std::fs::read(&target).unwrap(), names(&live));
    type Damage = fn(&mut serde_json::Value, &Path);
    let ab = "ab".repeat(32);
    let cases: &[(&str, Damage, &[&str])] = &[
        (
            "wrong sha256",
            |m, _| m["artifacts"][0]["sha256"] = "ab".repeat(32).into(),
            &["database.zst", "SHA-256 of the decompressed bytes", &ab],
        ),
        (
            "wrong size",
            |m, _| m["artifacts"][0]["original_size"] = 1234.into(),
            &["database.zst", "original_size 1234"],
        ),
        (
            "longer than recorded",
            |m, _| m["artifacts"][1]["original_size"] = 1.into(),
            &["wal.zst", "decompresses to more bytes", "original_size 1"],
        ),
        (
            "unknown artifact",
            |m, _| m["artifacts"][1]["name"] = "shm.zst".into(),
            &[
                "manifest.json",
                "artifacts[1].name",
                "\"shm.zst\" is not a bundle artifact",
            ],
        ),
        (
            "no database.zst",
            |m, _| {
                let wal = m["artifacts"][1].clone();
                m["artifacts"] = serde_json::json!([wal]);
            },
            &["manifest.json", "artifacts: no database.zst"],
        ),
        (
            "version 2",
            |m, _| m["version"] = 2.into(),
            &["manifest.json", "version: 2 is not supported"],
        ),
        (
            "bad sha256",
            |m, _| m["artifacts"][0]["sha256"] = "xyz".into(),
            &["artifacts[0].sha256", "not 64 hex digits"],
        ),
        (
            "negative size",
            |m, _| m["artifacts"][0]["original_size"] = (-1).into(),
            &["artifacts[0].original_size", "-1 is negative"],
        ),
        (
            "empty artifacts",
            |m, _| m["artifacts"] = serde_json::json!([]),
            &["artifacts: empty"],
        ),
        (
            "not zstd",
            |_, b| std::fs::write(b.join("wal.zst"), b"plain bytes").unwrap(),
            &["wal.zst", "does not decompress as zstd"],
        ),
    ];
    for (case, damage, expected) in cases {
        let mut m = original.clone();
        let wal_zst = std::fs::read(bundle.join("wal.zst")).unwrap();
        damage(&mut m, &bundle);
        write_manifest(&bundle, &m);
        let err = Bundle::open(&bundle)
            .and_then(|b| b.restore(&target, stamp()))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                Error::BundleManifest { .. } | Error::BundleArtifact { .. }
            ),
            "{case}: {err:?}"
        );
        for needle in *expected {
            assert!(text.contains(needle), "{case}: {needle:?} not in {text}");
        }
        assert!(
            err.hint().is_some_and(|h| h.contains("recovery/")),
            "{case}: {text}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), before, "{case}");
        assert_eq!(names(&live), files_before, "{case}: nothing added or moved");
        std::fs::write(bundle.join("wal.zst"), wal_zst).unwrap();
    }
    write_manifest(&bundle, &original);
    Bundle::open(&bundle)
        .unwrap()
        .restore(&target, stamp())
        .expect("the undamaged bundle still restores");
}

#[test]
fn a_database_in_use_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, target) = setup(dir.path());
    let before = std::fs::read(&target).unwrap();
    // This process plays the running server: it holds the file open for writing.
    let server = duckdb::Connection::open(&target).unwrap();
    let err = Bundle::open(&bundle)
        .unwrap()
        .restore(&target, stamp())
        .unwrap_err();
    assert!(
        err.to_string().contains("is in use by another process"),
        "{err}"
    );
    // Read before closing the connection, which could write on its way out.
    assert_eq!(std::fs::read(&target).unwrap(), before);
    drop(server);
    assert_eq!(names(target.parent().unwrap()), ["hitkeep.db"]);
}
