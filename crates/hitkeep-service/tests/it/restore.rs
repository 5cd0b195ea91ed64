//! Restores and archive queries through the service's API, on real DuckDB data and a local
//! destination: what the CLI tests cannot see from outside the binary.

use std::path::{Path, PathBuf};

use hitkeep_backup::{Database, RestoreSelection};
use hitkeep_config::{Config, Location, Settings, Sources};
use hitkeep_data::{DataError, Holder};
use hitkeep_service::restore::RestoreStage;
use hitkeep_service::{Engine, Error, archives};

fn settings(dir: &Path) -> Settings {
    let env = [
        ("HITKEEP_DB_PATH", dir.join("hitkeep.db")),
        ("HITKEEP_DATA_PATH", dir.join("data")),
        ("HITKEEP_BACKUP_PATH", dir.join("backups")),
        ("HITKEEP_ARCHIVE_PATH", dir.join("archive")),
    ];
    let sources = Sources::with_env(env.map(|(k, v)| (k.to_owned(), v.display().to_string())));
    Config::load(&sources).expect("valid settings").settings
}

/// An engine over demo data (the default tenant and one more) under `dir`.
fn engine(dir: &Path) -> Engine {
    let engine = Engine::new(settings(dir));
    let options = hitkeep_data::demo::DemoOptions::new(2_000, 1);
    hitkeep_data::demo::generate(engine.layout(), &options).expect("demo data");
    engine
}

/// Every file under `dir` but the backups (where an open storage keeps its staging lock), with a
/// digest of its bytes: the databases and whatever a restore would leave beside them.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let backups = dir.join("backups");
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path == backups {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let mut hasher = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(&std::fs::read(&path).unwrap(), &mut hasher);
                out.push((path, std::hash::Hasher::finish(&hasher)));
            }
        }
    }
    out.sort();
    out
}

/// A target held by a process (here this one, as a server embedding DuckDB holds it) is refused
/// with the file and its holder named, before anything is read from the destination; executing
/// anyway fails before any swap and leaves every file as it was, with no scratch beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_target_is_refused_before_anything_is_downloaded() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let report = engine.backup(None).await.expect("a backup");
    assert!(report.is_success());
    let from: Location = dir
        .path()
        .join("backups")
        .display()
        .to_string()
        .parse()
        .unwrap();
    let selection = RestoreSelection::new(false, Vec::new());
    let job = hitkeep_service::restore::plan(&engine, &from, None, None, &selection)
        .await
        .expect("a plan");
    assert_eq!(
        job.plan().items.len(),
        3,
        "shared, default tenant, one more"
    );
    let free = job.check_targets_free();
    assert!(free.is_ok(), "{free:?}");

    let db = engine.layout().db_path.clone();
    let before = files(dir.path());
    // Held the way a running server holds it. Nothing here reads the file while it is held: closing
    // any descriptor of it would drop this process's lock.
    let held = duckdb::Connection::open(&db).unwrap();
    let refused = job.check_targets_free().unwrap_err();
    match &refused {
        Error::Data(DataError::Locked {
            path,
            holder: Some(holder),
        }) => {
            assert_eq!(path, &db);
            assert!(
                matches!(holder.who, Holder::Process { pid, .. } if pid == std::process::id()),
                "{holder}"
            );
        }
        other => panic!("not a refusal naming the file and its holder: {other:?}"),
    }
    assert!(
        refused
            .hint()
            .is_some_and(|h| h.contains("stop the HitKeep server")),
        "{refused:?}"
    );

    let failure = job
        .execute(2)
        .await
        .expect_err("a held target is never replaced");
    drop(held);
    assert_eq!(failure.stage, RestoreStage::Prepare);
    assert_eq!(failure.database, Database::Shared);
    assert!(
        matches!(&failure.error, Error::Backup(e) if e.to_string().contains("in use by another process")),
        "{:?}",
        failure.error
    );
    assert_eq!(
        files(dir.path()),
        before,
        "every database as it was, and no scratch left beside any"
    );
}

/// `archive query`'s result: the columns even when no row matches, NULL as `NULL`, and a query
/// DuckDB refuses reported as the query's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_query_returns_columns_rows_and_the_querys_own_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let run = engine.archive(false, None).await.expect("an archive run");
    assert!(run.sites.iter().all(Result::is_ok), "{:?}", run.sites);
    let files = archives::list(&engine, None).await.unwrap();
    assert_eq!(files.len(), run.sites.len());
    let site = files[0].site_id;
    let archived_hits = files[0].entry.counts["hits"];
    assert!(archived_hits > 0);

    let rows = archives::query(
        &engine,
        Some(site),
        "SELECT count(*) AS n, NULL AS nothing FROM archive WHERE _source = 'hits'",
    )
    .await
    .unwrap();
    assert_eq!(rows.columns, ["n", "nothing"]);
    assert_eq!(rows.rows, [[archived_hits.to_string(), "NULL".to_owned()]]);

    let empty = archives::query(&engine, None, "SELECT site_id FROM archive WHERE false")
        .await
        .unwrap();
    assert_eq!(empty.columns, ["site_id"]);
    assert!(empty.rows.is_empty());

    let e = archives::query(&engine, None, "SELECT nope FROM archive")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::DuckDb {
                what: "the query",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        hitkeep_service::describe(&e).starts_with("the query: "),
        "{}",
        hitkeep_service::describe(&e)
    );
}
