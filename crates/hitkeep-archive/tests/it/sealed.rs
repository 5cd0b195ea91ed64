//! Archives sealed with age: no plaintext file leaves the host, the run still reads back (with the
//! host's archive key) before it deletes rows, and readers open the files with either key and refuse
//! without one.

use std::collections::BTreeMap;

use hitkeep_archive::{Error, ErrorKind, files, local_copies, run};
use hitkeep_seal::{HostKey, Opener, Sealer};
use hitkeep_storage::ListMode;
use jiff::ToSpan as _;

use super::Fixture;

fn key(f: &Fixture, name: &str) -> HostKey {
    HostKey::read_or_create(&f.dir.path().join(name)).unwrap()
}

async fn a_sealed_run_archives_deletes_and_reads_back_with_either_key(f: Fixture) {
    let (operator, host) = (key(&f, "operator.key"), key(&f, "archive.key"));
    let sealer = Sealer::new(&[operator.recipient(), host.recipient()])
        .unwrap()
        .unwrap();
    let now = jiff::Timestamp::now() + (24 * 400).hours();
    let mut options = f.options(now);
    options.sealer = Some(std::sync::Arc::new(sealer));
    options.opener = Some(std::sync::Arc::new(
        Opener::new(Vec::new()).with_host_key(&host),
    ));
    let before = f.live_rows();
    let reports: Vec<_> = run(&f.storage, &f.layout, &options)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let archived: u64 = reports.iter().flat_map(|r| r.counts.values()).sum();
    assert!(archived > 100, "{reports:?}");
    let live: i64 = f.live_rows().values().sum();
    assert_eq!(
        before.values().sum::<i64>() - live,
        archived as i64,
        "the rows archived left the database"
    );

    // Every archive file is an age file; only the ledgers are in the clear.
    let listed = f.storage.list("", ListMode::Recursive).await.unwrap();
    let mut sealed = 0;
    for entry in listed.iter().filter(|e| !e.is_dir) {
        let bytes = f.storage.read(&entry.key).await.unwrap();
        if entry.key.ends_with(".parquet") {
            assert!(
                bytes.starts_with(b"age-encryption.org/v1\n"),
                "{}",
                entry.key
            );
            sealed += 1;
        } else {
            assert!(entry.key.ends_with(".json"), "{}", entry.key);
        }
    }
    assert!(sealed > 3, "{listed:?}");

    // The operator's identity alone reads every row back; no identity is refused.
    let keys: Vec<_> = files(&f.storage, None)
        .await
        .unwrap()
        .into_iter()
        .map(|(object, _, _)| object)
        .collect();
    assert!(keys.iter().all(|o| o.recorded.is_some()), "{keys:?}");
    let by_operator = Opener::new(Vec::new()).with_host_key(&operator);
    let paths = local_copies(
        &f.storage,
        &keys,
        &f.dir.path().join("c1"),
        Some(&by_operator),
    )
    .await
    .unwrap();
    assert_eq!(rows_in(&paths).values().sum::<u64>(), archived);
    let refused = local_copies(&f.storage, &keys, &f.dir.path().join("c2"), None)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Sealed { .. }), "{refused}");
    assert_eq!(refused.kind(), ErrorKind::Refused);
    assert!(
        refused
            .hint()
            .unwrap()
            .contains("HITKEEP_BACKUP_IDENTITY_FILE")
    );
    let stranger = Opener::new(Vec::new()).with_host_key(&key(&f, "stranger.key"));
    let wrong = local_copies(&f.storage, &keys, &f.dir.path().join("c3"), Some(&stranger))
        .await
        .unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::Refused, "{wrong}");

    // A run that stopped after its read-back and before its delete: the next run opens the sealed
    // files with the host's key to compare them with the live rows, and finishes.
    let done = reports.iter().find(|r| !r.files.is_empty()).unwrap();
    let policy = done.policy;
    f.reopen_last_entry(&done.files[0], &policy).await;
    let again: Vec<_> = run(&f.storage, &f.layout, &options).await.unwrap();
    let mine = again
        .into_iter()
        .map(Result::unwrap)
        .find(|r| r.policy.site_id == policy.site_id)
        .unwrap();
    assert!(!mine.recovered.is_empty(), "{mine:?}");
    assert_eq!(f.live_rows().values().sum::<i64>(), live);

    // Anyone with the recipients' public keys can seal a file that opens: one archive object
    // replaced by another, whole and sealed to the same keys, is refused by its recorded digest.
    let (victim, other) = (&keys[0].key, &keys[1].key);
    let replacement = f.storage.read(other).await.unwrap();
    f.storage.write(victim, replacement).await.unwrap();
    let cache = f.dir.path().join("c4");
    let refused = local_copies(&f.storage, &keys, &cache, Some(&by_operator))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::ArchiveChanged { key } if key.ends_with(victim.as_str())),
        "{refused}"
    );
}

/// Rows per table in the archive files `paths`, as DuckDB reads them.
fn rows_in(paths: &[std::path::PathBuf]) -> BTreeMap<String, u64> {
    let conn = duckdb::Connection::open_in_memory().unwrap();
    let list = paths
        .iter()
        .map(|p| format!("'{}'", p.display()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn
        .prepare(&format!(
            "SELECT _source, count(*) FROM read_parquet([{list}], union_by_name = true) GROUP BY 1"
        ))
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

on_every_backend!(a_sealed_run_archives_deletes_and_reads_back_with_either_key);
