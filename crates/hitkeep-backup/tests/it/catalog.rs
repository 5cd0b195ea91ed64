//! The catalog a cycle's clean-up loads with the manifests it just wrote (`Catalog::load_after`) is the
//! catalog a plain load reads from the location, whatever the location holds besides the cycle.

use hitkeep_backup::{Catalog, Database, SnapshotState};
use hitkeep_storage::ListMode;

use super::Fixture;

on_local_and_s3!(the_catalog_after_a_cycle_is_the_one_read_back);

/// What a snapshot looks like to the clean-up and the status, manifests as their bytes.
fn seen(catalog: &Catalog) -> Vec<String> {
    catalog
        .databases
        .iter()
        .flat_map(|db| {
            db.snapshots.iter().map(move |s| {
                let manifest = s.manifest.as_ref().map(|m| m.to_bytes());
                format!(
                    "{:?} {} {:?} {} {} {:?} {:?}",
                    db.database, s.id, s.state, s.size, s.objects, s.source, manifest
                )
            })
        })
        .collect()
}

async fn the_catalog_after_a_cycle_is_the_one_read_back(f: Fixture) {
    f.cycle().await;
    let report = f.cycle().await;
    // A tenant the cycle does not know (forgotten, or another installation's): listed all the same.
    let stranger = uuid::Uuid::new_v4();
    for name in ["schema.sql", "load.sql"] {
        let key = format!("tenants/{stranger}/2020-01-01T000000Z/{name}");
        f.storage.write(&key, &b"-- legacy"[..]).await.unwrap();
    }
    let after = Catalog::load_after(&f.storage, report.written())
        .await
        .unwrap();
    let read = Catalog::load(&f.storage).await.unwrap();
    assert_eq!(seen(&after), seen(&read));
    assert_eq!(
        read.databases.len(),
        2 + f.backed_up().len(),
        "{:?}",
        seen(&read)
    );
    assert!(
        seen(&after)
            .iter()
            .any(|s| s.starts_with(&format!("Tenant {{ tenant_id: {stranger} }}"))),
        "{:?}",
        seen(&after)
    );

    // A manifest replaced in the bucket since is read from there, not taken from memory.
    let shared = format!("shared/{}/manifest.json", report.id);
    f.storage.write(&shared, &b"{not json"[..]).await.unwrap();
    // A tenant of the cycle whose folder is gone is gone from the catalog too.
    let gone = f.demo.tenants[0];
    for entry in f
        .storage
        .list(&format!("tenants/{gone}"), ListMode::Recursive)
        .await
        .unwrap()
    {
        f.storage.delete(&entry.key).await.unwrap();
    }
    let after = Catalog::load_after(&f.storage, report.written())
        .await
        .unwrap();
    assert_eq!(
        seen(&after),
        seen(&Catalog::load(&f.storage).await.unwrap())
    );
    let cycle = after.find(Database::Shared, report.id).unwrap();
    assert!(
        matches!(cycle.state, SnapshotState::Corrupt(_)),
        "{:?}",
        cycle.state
    );
    assert!(
        after
            .snapshots(Database::Tenant { tenant_id: gone })
            .is_empty(),
        "{:?}",
        seen(&after)
    );
}
