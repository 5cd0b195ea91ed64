//! An archive error as the `hitkeep` binary prints it: the message, its causes, the hint last.

use hitkeep_archive::{ErrorKind, LEDGER_VERSION, Ledger, ledgers};
use hitkeep_storage::report::render;
use hitkeep_testkit::local_storage;
use uuid::Uuid;

/// `archive list` over a location a newer hitkeep wrote to: its ledger is refused rather than
/// misread, and the hint says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_from_a_newer_hitkeep_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(&dir.path().join("archive")).await;
    let (tenant, site) = (Uuid::new_v4(), Uuid::new_v4());
    let newer = Ledger {
        format_version: LEDGER_VERSION + 1,
        site_id: site,
        tenant_id: tenant,
        entries: Vec::new(),
    };
    let key = format!("tenants/{tenant}/sites/{site}/ledger.json");
    storage
        .write(&key, serde_json::to_vec(&newer).unwrap())
        .await
        .unwrap();
    let err = ledgers(&storage).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let printed = format!("error: {}", render(&err, err.hint().as_deref()));
    assert!(printed.contains(&key), "{printed}");
    let uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
    insta::with_settings!({filters => vec![(uuid, "[UUID]")]}, {
        insta::assert_snapshot!("newer_ledger", printed);
    });
}
