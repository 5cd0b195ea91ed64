//! A backup error as the `hitkeep` binary prints it: the message, its causes, the hint last.

use hitkeep_backup::{Catalog, ErrorKind, SnapshotId};
use hitkeep_storage::report::render;
use hitkeep_testkit::local_storage;

/// `backup verify -snapshot ID` (or a restore) of an id the location does not hold: the newest it
/// does hold are named, and the hint says where to look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_snapshot_names_the_newest_and_where_to_look() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(&dir.path().join("backups")).await;
    // Two cycles that were interrupted: listed, never usable.
    for id in ["2026-03-01T000000Z", "2026-03-02T000000Z"] {
        storage
            .write(&format!("shared/{id}/in-progress.json"), &b"{}"[..])
            .await
            .unwrap();
    }
    let catalog = Catalog::load(&storage).await.unwrap();
    let asked = SnapshotId::now().to_string();
    let err = catalog.resolve(Some(&asked)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let printed = format!("error: {}", render(&err, err.hint().as_deref()));
    assert!(printed.contains(&asked), "{printed}");
    insta::with_settings!({filters => vec![(r"\d{4}-\d{2}-\d{2}T\d{6}Z", "[SNAPSHOT]")]}, {
        insta::assert_snapshot!("unknown_snapshot", printed);
    });
}
