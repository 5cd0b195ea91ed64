//! The catalog a cycle's clean-up loads knowing where the cycle wrote (`Catalog::load_after`) is the
//! catalog a plain load reads: tenants the cycle does not know are in it, a tenant gone since is not,
//! and a manifest changed since is read as the location holds it.

use hitkeep_backup::{Catalog, Database, SnapshotState};
use hitkeep_storage::ListMode;

use super::Fixture;

on_local_and_s3!(the_catalog_after_a_cycle_is_the_one_read_back);

/// Every database and what each of its snapshots looks like to the clean-up and the status,
/// manifests as their bytes.
fn seen(catalog: &Catalog) -> Vec<(Database, Vec<String>)> {
    let snapshots = |db: &hitkeep_backup::DatabaseSnapshots| {
        db.snapshots
            .iter()
            .map(|s| {
                let manifest = s.manifest.as_ref().map(|m| m.to_bytes());
                let (size, objects) = (s.size, s.objects);
                format!(
                    "{} {:?} {size} {objects} {:?} {manifest:?}",
                    s.id, s.state, s.source
                )
            })
            .collect()
    };
    catalog
        .databases
        .iter()
        .map(|db| (db.database, snapshots(db)))
        .collect()
}

/// The catalog after `report`'s cycle, checked against a plain load.
async fn load_after_as_read(f: &Fixture, report: &hitkeep_backup::CycleReport) -> Catalog {
    let after = Catalog::load_after(&f.storage, report).await.unwrap();
    let read = Catalog::load(&f.storage).await.unwrap();
    assert_eq!(seen(&after), seen(&read));
    after
}

async fn the_catalog_after_a_cycle_is_the_one_read_back(f: Fixture) {
    f.cycle().await;
    let report = f.cycle().await;
    // A tenant the cycle does not know (forgotten, or another installation's).
    let stranger = uuid::Uuid::new_v4();
    for name in ["schema.sql", "load.sql"] {
        let key = format!("tenants/{stranger}/2020-01-01T000000Z/{name}");
        f.storage.write(&key, &b"-- legacy"[..]).await.unwrap();
    }
    let after = load_after_as_read(&f, &report).await;
    assert_eq!(after.databases.len(), 2 + f.backed_up().len());
    let legacy = after.snapshots(Database::Tenant {
        tenant_id: stranger,
    });
    assert_eq!(legacy.len(), 1);
    assert_eq!(legacy[0].state, SnapshotState::Legacy);

    // The cycle's shared manifest replaced by as many bytes that are no manifest: read, not assumed.
    let shared = format!("shared/{}/manifest.json", report.id);
    let size = f.storage.read(&shared).await.unwrap().len();
    f.storage.write(&shared, vec![b' '; size]).await.unwrap();
    // A tenant of the cycle whose objects are all gone.
    let gone = f.demo.tenants[0];
    let folder = format!("tenants/{gone}");
    for entry in f.storage.list(&folder, ListMode::Recursive).await.unwrap() {
        f.storage.delete(&entry.key).await.unwrap();
    }
    let after = load_after_as_read(&f, &report).await;
    let cycle = after.find(Database::Shared, report.id).unwrap();
    assert!(
        matches!(cycle.state, SnapshotState::Corrupt(_)),
        "{:?}",
        cycle.state
    );
    assert!(
        after
            .snapshots(Database::Tenant { tenant_id: gone })
            .is_empty()
    );
}
