//! Snapshots encrypted to age recipients: nothing readable leaves the process, a plain `verify`
//! needs no key, and restore, deep verify and `export-plain` open them with an identity, and only
//! with one of the recipients'.

use std::sync::Arc;

use age::x25519::Identity;
use hitkeep_backup::manifest::{
    ENCRYPTED_FORMAT_VERSION, ENCRYPTED_INCREMENTAL_FORMAT_VERSION, Manifest,
};
use hitkeep_backup::{
    BackupMode, Catalog, Database, Error, ErrorKind, OpenFailure, Opener, RestorePlan,
    RestoreSelection, Sealer, export_plain, run_cycle, verify_snapshot,
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

/// A row holding [`MARKER`] in the shared database.
fn mark(f: &Fixture) {
    let conn =
        hitkeep_data::open_database(&f.layout.db_path, hitkeep_data::OpenMode::Existing).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE main.marker_rows (note VARCHAR); INSERT INTO main.marker_rows VALUES ('{MARKER}')"
    ))
    .unwrap();
}

/// No object holds [`MARKER`]; all but the clear manifests and source records are age files.
fn nothing_in_the_clear(objects: &[(String, Vec<u8>)]) {
    for (key, bytes) in objects {
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{key} holds the marker in the clear"
        );
        if !key.ends_with("manifest.json") && !key.starts_with("sources/") {
            assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{key}");
        }
    }
}

async fn a_cycle_encrypted_to_two_recipients_restores_with_either_identity(f: Fixture) {
    mark(&f);
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
    nothing_in_the_clear(&objects);
    for (key, bytes) in &objects {
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
    let deep = deep(&f, &catalog, report.id, &opener).await;
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
    // A restore refuses it: the chunk holding the flip fails age's authentication, and nothing is
    // moved into place.
    let opener = Arc::new(Opener::new(identities));
    let plan = plan(&catalog, &f).with_opener(opener);
    let (_, e) = plan
        .prepare_all(&f.storage, hitkeep_backup::SnapshotId::now(), 2)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
}

async fn incremental(f: &Fixture, sealer: &Sealer) -> hitkeep_backup::CycleReport {
    let (shared, tenants) = f.shared_and_tenants();
    let options = f
        .options()
        .with_mode(BackupMode::Incremental)
        .with_sealer(sealer.clone());
    let report = run_cycle(&f.storage, shared, tenants, &options)
        .await
        .unwrap();
    assert!(report.is_success(), "{report:?}");
    report
}

/// The encrypted pool's objects.
async fn sealed_pool(f: &Fixture) -> Vec<String> {
    let listed = f.storage.list("pool-e", ListMode::Recursive).await.unwrap();
    let mut keys: Vec<String> = listed
        .into_iter()
        .map(|e| e.key)
        .filter(|k| k.ends_with(".age"))
        .collect();
    keys.sort();
    keys
}

/// Incremental and encrypted: a cycle stores only what changed, under names that say nothing of
/// partitions, in the encrypted pool only; it verifies without a key, restores with the identity;
/// and a change of recipients starts the chain again, so the new identity alone opens the cycle.
async fn an_encrypted_incremental_chain_stores_only_changes_and_restores_whole(f: Fixture) {
    mark(&f);
    // A plain incremental cycle first: the encrypted one reuses none of its objects, and writes no
    // plain pool object.
    let (shared, tenants) = f.shared_and_tenants();
    let plain = f.options().with_mode(BackupMode::Incremental);
    run_cycle(&f.storage, shared, tenants, &plain)
        .await
        .unwrap();
    let plain_pool = f.storage.list("pool", ListMode::Recursive).await.unwrap();
    let (identities, sealer) = keys(1);
    let first = incremental(&f, &sealer).await;
    assert!(first.shared.is_encrypted() && first.shared.is_incremental());
    assert!(f.layout.index_key_file().is_file());
    assert_eq!(first.files, files_in(&f, first.id).await, "nothing reused");
    let pool_now = f.storage.list("pool", ListMode::Recursive).await.unwrap();
    assert_eq!(pool_now.len(), plain_pool.len());
    let stored = sealed_pool(&f).await;
    assert!(stored.len() > 20, "{stored:?}");
    let id = format!("/{}/", first.id);
    let objects: Vec<_> = every_object(&f)
        .await
        .into_iter()
        .filter(|(k, _)| k.starts_with("pool-e/") || k.contains(&id))
        .collect();
    nothing_in_the_clear(&objects);
    for (key, bytes) in objects
        .iter()
        .filter(|(k, _)| k.ends_with("/manifest.json"))
    {
        let m = Manifest::from_slice(bytes).unwrap();
        assert_eq!(
            m.format_version, ENCRYPTED_INCREMENTAL_FORMAT_VERSION,
            "{key}"
        );
        for file in m.files.iter().filter(|file| file.object.is_some()) {
            let stem = file.name.strip_suffix(".parquet").unwrap_or_default();
            let random = stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(random, "{key}: {}", file.name);
        }
    }

    // Nothing changed: only each snapshot's schema.sql and load.sql are stored.
    let same = incremental(&f, &sealer).await;
    assert_eq!(sealed_pool(&f).await, stored);
    assert_eq!(same.files, 2 * databases(&f).len(), "{same:?}");

    // New hits: a few partitions stored again; the cycle restores to every row.
    crate::incremental::add_hits(&f, 50);
    let before: Vec<_> = databases(&f).iter().map(|db| fingerprint(db)).collect();
    let second = incremental(&f, &sealer).await;
    let new = sealed_pool(&f).await.len() - stored.len();
    assert!((1..=3).contains(&new), "{new} new objects");
    assert_eq!(second.files, 2 * databases(&f).len() + new);
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let scratch = f.dir.path().join("scratch");
    let plain = verify_snapshot(&f.storage, &catalog, second.id, false, &scratch, None)
        .await
        .unwrap();
    assert!(plain.is_ok(), "{plain:?}");
    let opener = Opener::new(identities);
    let checked = deep(&f, &catalog, second.id, &opener).await;
    assert!(checked.is_ok(), "{checked:?}");
    for db in databases(&f) {
        std::fs::remove_file(&db).unwrap();
    }
    let plan = plan(&catalog, &f).with_opener(Arc::new(opener.clone()));
    prepare_and_commit(&f, &plan).await;
    let after: Vec<_> = databases(&f).iter().map(|db| fingerprint(db)).collect();
    assert_eq!(after, before);
    let out = f.dir.path().join("plain");
    export_plain(&f.storage, &catalog, second.id, &out, Some(&opener))
        .await
        .unwrap();

    // A lost index key: the next cycle cannot read the last one's index and stores everything.
    std::fs::remove_file(f.layout.index_key_file()).unwrap();
    let rekeyed = incremental(&f, &sealer).await;
    assert_eq!(
        rekeyed.files,
        files_in(&f, rekeyed.id).await,
        "nothing reused"
    );

    // New recipients: nothing sealed to the old ones is reused; the new identity alone opens the
    // cycle, and the old one opens none of it.
    let (rotated, new_sealer) = keys(1);
    let third = incremental(&f, &new_sealer).await;
    assert_eq!(third.files, files_in(&f, third.id).await, "nothing reused");
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let checked = deep(&f, &catalog, third.id, &Opener::new(rotated)).await;
    assert!(checked.is_ok(), "{checked:?}");
    let old = deep(&f, &catalog, third.id, &opener).await;
    assert!(
        old.databases.iter().all(|d| !d.problems.is_empty()),
        "{old:?}"
    );
}

/// `verify --deep` of cycle `id` with `opener`.
pub(crate) async fn deep(
    f: &Fixture,
    catalog: &Catalog,
    id: hitkeep_backup::SnapshotId,
    opener: &Opener,
) -> hitkeep_backup::VerifyReport {
    let scratch = f.dir.path().join("scratch");
    verify_snapshot(&f.storage, catalog, id, true, &scratch, Some(opener))
        .await
        .unwrap()
}

/// How many files the manifests of cycle `id` list.
async fn files_in(f: &Fixture, id: hitkeep_backup::SnapshotId) -> usize {
    let catalog = Catalog::load(&f.storage).await.unwrap();
    catalog
        .databases
        .iter()
        .flat_map(|d| &d.snapshots)
        .filter(|s| s.id == id)
        .filter_map(|s| s.manifest.as_ref())
        .map(|m| m.files.len())
        .sum()
}

on_local_and_s3!(
    a_cycle_encrypted_to_two_recipients_restores_with_either_identity,
    a_wrong_or_missing_identity_changes_nothing,
    a_flipped_byte_is_named_by_a_verify_without_any_key,
    an_encrypted_incremental_chain_stores_only_changes_and_restores_whole,
);

/// HitKeep 2.12 and older: the default tenant's analytics in the shared database.
mod pre_split {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cycle_encrypted_to_two_recipients_restores_with_either_identity() {
        let f = super::Fixture::with_layout(false, hitkeep_data::TenantLayout::PreSplit).await;
        super::a_cycle_encrypted_to_two_recipients_restores_with_either_identity(f).await
    }
}
