//! Snapshots encrypted to age recipients: nothing readable leaves the process, a plain `verify`
//! needs no key, and restore, deep verify and `export-plain` open them with an identity, and only
//! with one of the recipients'.

use std::sync::Arc;

use age::x25519::Identity;
use hitkeep_backup::manifest::{ENCRYPTED_FORMAT_VERSION, Manifest};
use hitkeep_backup::{
    Catalog, Database, Error, ErrorKind, OpenFailure, Opener, RestorePlan, RestoreSelection,
    Sealer, export_plain, run_cycle, verify_snapshot,
};
use hitkeep_storage::ListMode;

use super::{Fixture, fingerprint, prepare_and_commit};

/// A value no demo row holds, written into a row before the cycle: it must appear in no object.
const MARKER: &str = "hitkeep-plaintext-marker-7f3a";

fn keys(n: usize) -> (Vec<Identity>, Sealer) {
    let identities: Vec<Identity> = (0..n).map(|_| Identity::generate()).collect();
    let recipients: Vec<String> = identities
        .iter()
        .map(|i| i.to_public().to_string())
        .collect();
    (identities, Sealer::new(&recipients).unwrap().unwrap())
}

/// Every database a restore brings back.
fn databases(f: &Fixture) -> Vec<std::path::PathBuf> {
    let tenants = f.backed_up().into_iter().map(|t| f.layout.tenant_db(t));
    std::iter::once(f.layout.db_path.clone())
        .chain(tenants)
        .collect()
}

/// Every object the location holds, with its bytes.
async fn every_object(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let mut objects = Vec::new();
    for entry in f.storage.list("", ListMode::Recursive).await.unwrap() {
        if entry.key.ends_with('/') {
            continue;
        }
        let bytes = f.storage.read(&entry.key).await.unwrap();
        objects.push((entry.key, bytes.to_vec()));
    }
    objects
}

async fn encrypted_cycle(f: &Fixture, sealer: Sealer) -> hitkeep_backup::CycleReport {
    let (shared, tenants) = f.shared_and_tenants();
    let options = f.options().with_sealer(sealer);
    run_cycle(&f.storage, shared, tenants, &options)
        .await
        .unwrap()
}

fn plan(catalog: &Catalog, f: &Fixture) -> RestorePlan {
    RestorePlan::new(
        catalog,
        None,
        &f.layout,
        &RestoreSelection::new(false, Vec::new()),
    )
    .unwrap()
}

async fn a_cycle_encrypted_to_two_recipients_restores_with_either_identity(f: Fixture) {
    let conn =
        hitkeep_data::open_database(&f.layout.db_path, hitkeep_data::OpenMode::Existing).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE main.marker_rows (note VARCHAR); INSERT INTO main.marker_rows VALUES ('{MARKER}')"
    ))
    .unwrap();
    drop(conn);
    let (identities, sealer) = keys(2);
    let report = encrypted_cycle(&f, sealer.clone()).await;
    // The report still counts rows: they are sealed in the manifest, not lost.
    assert!(
        report.shared.tables["marker_rows"] == 1,
        "{:?}",
        report.shared.tables
    );

    // Nothing in the bucket shows the marker or a row count; every manifest says to whom it is sealed.
    let objects = every_object(&f).await;
    assert!(objects.len() > 10, "{}", objects.len());
    for (key, bytes) in &objects {
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{key} holds the marker in the clear"
        );
        if key.ends_with("manifest.json") && !key.starts_with("sources/") {
            let manifest = Manifest::from_slice(bytes).unwrap();
            assert_eq!(manifest.format_version, ENCRYPTED_FORMAT_VERSION, "{key}");
            assert!(manifest.tables.is_empty(), "{key}: row counts in the clear");
            let to = &manifest.encryption.as_ref().unwrap().recipients;
            assert_eq!(to, &sealer.recipients(), "{key}");
        }
    }

    // A plain verify needs no key.
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let scratch = f.dir.path().join("scratch");
    let plain = verify_snapshot(&f.storage, &catalog, report.id, false, &scratch, None)
        .await
        .unwrap();
    assert!(plain.is_ok(), "{plain:?}");
    // A deep one opens every object and counts the rows the sealed parts hold.
    let opener = Opener::new(vec![identities[1].clone()]);
    let deep = verify_snapshot(
        &f.storage,
        &catalog,
        report.id,
        true,
        &scratch,
        Some(&opener),
    )
    .await
    .unwrap();
    assert!(deep.is_ok(), "{deep:?}");
    assert!(deep.databases.iter().all(|d| d.tables > 5), "{deep:?}");
    let without = verify_snapshot(&f.storage, &catalog, report.id, true, &scratch, None)
        .await
        .unwrap_err();
    assert!(matches!(
        without,
        Error::NotOpened {
            failure: OpenFailure::NoIdentity,
            ..
        }
    ));

    // Each recipient's identity restores every database to its rows.
    let before: Vec<_> = databases(&f).iter().map(|db| fingerprint(db)).collect();
    for identity in &identities {
        for db in databases(&f) {
            std::fs::remove_file(&db).unwrap();
        }
        let opener = Arc::new(Opener::new(vec![identity.clone()]));
        let plan = plan(&catalog, &f).with_opener(opener);
        assert!(plan.is_encrypted());
        prepare_and_commit(&f, &plan).await;
        let after: Vec<_> = databases(&f).iter().map(|db| fingerprint(db)).collect();
        assert_eq!(after, before);
    }

    // export-plain opens it into plain folders whose manifests describe the plaintext.
    let out = f.dir.path().join("plain");
    let export = export_plain(&f.storage, &catalog, report.id, &out, Some(&opener))
        .await
        .unwrap();
    assert_eq!(export.databases.len(), databases(&f).len());
    let copy = hitkeep_testkit::local_storage(&out).await;
    let copied = Catalog::load(&copy).await.unwrap();
    let checked = verify_snapshot(&copy, &copied, report.id, true, &scratch, None)
        .await
        .unwrap();
    assert!(checked.is_ok(), "{checked:?}");
}

async fn a_wrong_or_missing_identity_changes_nothing(f: Fixture) {
    let (_, sealer) = keys(1);
    encrypted_cycle(&f, sealer).await;
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let before: Vec<_> = databases(&f).iter().map(|db| fingerprint(db)).collect();
    let stamp = hitkeep_backup::SnapshotId::now();
    let stranger = Arc::new(Opener::new(vec![Identity::generate()]));
    for plan in [plan(&catalog, &f), plan(&catalog, &f).with_opener(stranger)] {
        let (database, e) = plan.prepare_all(&f.storage, stamp, 2).await.unwrap_err();
        let Error::NotOpened { failure, .. } = &e else {
            panic!("{database}: {e}");
        };
        assert_ne!(*failure, OpenFailure::Damaged, "{e}");
        assert_eq!(e.kind(), ErrorKind::Refused);
        let hint = e.hint().unwrap();
        assert!(
            hint.contains("age1"),
            "the hint names the recipients: {hint}"
        );
    }
    let after: Vec<_> = databases(&f).iter().map(|db| fingerprint(db)).collect();
    assert_eq!(after, before);
}

async fn a_flipped_byte_is_named_by_a_verify_without_any_key(f: Fixture) {
    let (identities, sealer) = keys(1);
    let report = encrypted_cycle(&f, sealer).await;
    let file = report
        .shared
        .files
        .iter()
        .max_by_key(|file| file.size)
        .unwrap();
    let key = format!("shared/{}/{}", report.id, file.name);
    let mut bytes = f.storage.read(&key).await.unwrap().to_vec();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    f.storage.write(&key, bytes).await.unwrap();
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let scratch = f.dir.path().join("scratch");
    let checked = verify_snapshot(&f.storage, &catalog, report.id, false, &scratch, None)
        .await
        .unwrap();
    let problems: Vec<&String> = checked
        .databases
        .iter()
        .filter(|d| d.database == Database::Shared)
        .flat_map(|d| &d.problems)
        .collect();
    assert!(
        problems.len() == 1 && problems[0].contains(&file.name),
        "{problems:?}"
    );
    // A restore stops at the stored digest, before decrypting anything.
    let opener = Arc::new(Opener::new(identities));
    let plan = plan(&catalog, &f).with_opener(opener);
    let (_, e) = plan
        .prepare_all(&f.storage, hitkeep_backup::SnapshotId::now(), 2)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
}

on_local_and_s3!(
    a_cycle_encrypted_to_two_recipients_restores_with_either_identity,
    a_wrong_or_missing_identity_changes_nothing,
    a_flipped_byte_is_named_by_a_verify_without_any_key,
);

/// HitKeep 2.12 and older: the default tenant's analytics in the shared database.
mod pre_split {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cycle_encrypted_to_two_recipients_restores_with_either_identity() {
        let f = super::Fixture::with_layout(false, hitkeep_data::TenantLayout::PreSplit).await;
        super::a_cycle_encrypted_to_two_recipients_restores_with_either_identity(f).await
    }
}
