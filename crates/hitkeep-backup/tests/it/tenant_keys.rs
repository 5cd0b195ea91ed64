//! Keys of a tenant's own: each tenant's snapshots are sealed to its key alone, the operator's
//! identity opens them through the key file, and forgetting a tenant makes its snapshots
//! unreadable while every other database of the same cycle restores as before.

use std::sync::Arc;

use age::x25519::Identity;
use hitkeep_backup::manifest::Manifest;
use hitkeep_backup::{
    BackupMode, BackupOptions, Catalog, Database, Error, ErrorKind, Opener, RestorePlan,
    RestoreSelection, Sealer, forget, key_object, plan_forget, plan_rewrap, rewrap, run_cycle,
    verify_snapshot,
};
use uuid::Uuid;

use super::encrypted::deep;
use super::{Fixture, fingerprint, prepare_and_commit};

/// The operator's key pair.
fn operator() -> (Arc<Opener>, Sealer) {
    let identity = Identity::generate();
    let sealer = Sealer::new(&[identity.to_public().to_string()])
        .unwrap()
        .unwrap();
    (Arc::new(Opener::new(vec![identity])), sealer)
}

fn options(f: &Fixture, sealer: &Sealer, mode: BackupMode) -> BackupOptions {
    f.options()
        .with_mode(mode)
        .with_sealer(sealer.clone())
        .with_tenant_keys(f.layout.tenant_keys_dir())
}

async fn cycle(f: &Fixture, options: &BackupOptions) -> hitkeep_backup::CycleReport {
    let (shared, tenants) = f.shared_and_tenants();
    let report = run_cycle(&f.storage, shared, tenants, options)
        .await
        .unwrap();
    assert!(report.is_success(), "{report:?}");
    report
}

/// The manifest of `tenant`'s snapshot in cycle `id`.
async fn tenant_manifest(f: &Fixture, tenant: Uuid, id: hitkeep_backup::SnapshotId) -> Manifest {
    let key = format!("tenants/{tenant}/{id}/manifest.json");
    Manifest::from_slice(&f.storage.read(&key).await.unwrap()).unwrap()
}

fn only(tenants: Vec<Uuid>) -> RestoreSelection {
    RestoreSelection::new(false, tenants)
}

fn plan(
    f: &Fixture,
    catalog: &Catalog,
    selection: &RestoreSelection,
    opener: &Arc<Opener>,
) -> RestorePlan {
    RestorePlan::new(catalog, None, &f.layout, selection)
        .unwrap()
        .with_opener(Arc::clone(opener))
}

/// A restore of `selection` refused for a tenant key that is gone, `forgotten` or merely missing:
/// which database stopped it, and why.
async fn refused_for_its_key(
    f: &Fixture,
    catalog: &Catalog,
    selection: &RestoreSelection,
    opener: &Arc<Opener>,
    forgotten: bool,
) -> (Database, Error) {
    let (database, e) = plan(f, catalog, selection, opener)
        .prepare_all(&f.storage, hitkeep_backup::SnapshotId::now(), 2)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::TenantKey { forgotten_at, .. } if forgotten_at.is_some() == forgotten),
        "{e}"
    );
    (database, e)
}

/// The tenants (not the default one): the one to forget, and another.
fn two_tenants(f: &Fixture) -> (Uuid, Uuid) {
    (f.demo.tenants[0], f.demo.tenants[1])
}

async fn forgetting_a_tenant_leaves_every_other_database_restorable(f: Fixture) {
    let (opener, sealer) = operator();
    let report = cycle(&f, &options(&f, &sealer, BackupMode::Full)).await;
    let (gone, kept) = two_tenants(&f);

    // Each tenant's snapshot is sealed to its own key alone; the shared one to the operator's.
    assert_eq!(
        report.shared.encryption.as_ref().unwrap().recipients,
        sealer.recipients()
    );
    for tenant in f.backed_up() {
        let m = tenant_manifest(&f, tenant, report.id).await;
        let e = m.encryption.as_ref().unwrap();
        assert_eq!(e.recipients.len(), 1);
        assert_ne!(e.recipients, sealer.recipients(), "{tenant}");
        let object = e.tenant_key.clone().unwrap();
        assert_eq!(object, key_object(tenant, &e.recipients[0]));
        assert!(f.storage.stat(&object).await.unwrap().is_some(), "{object}");
        let recorded = std::fs::read_to_string(f.layout.tenant_keys_dir().join(tenant.to_string()));
        assert_eq!(recorded.unwrap().trim(), e.recipients[0]);
    }

    // The operator's identity restores every database through the key files.
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let whole = RestoreSelection::new(false, Vec::new());
    let before_gone = fingerprint(&f.layout.tenant_db(gone));
    let before_kept = fingerprint(&f.layout.tenant_db(kept));
    std::fs::remove_file(f.layout.tenant_db(kept)).unwrap();
    prepare_and_commit(&f, &plan(&f, &catalog, &whole, &opener)).await;
    assert_eq!(fingerprint(&f.layout.tenant_db(kept)), before_kept);
    let checked = deep(&f, &catalog, report.id, &opener).await;
    assert!(
        checked.is_ok() && checked.databases.iter().all(|d| d.not_opened.is_none()),
        "{checked:?}"
    );

    // Forget one tenant: its key file goes, a tombstone says when.
    let forgetting = plan_forget(&f.storage, &catalog, gone).await.unwrap();
    assert_eq!(forgetting.keys.len(), 1);
    assert_eq!(forgetting.unreadable, vec![report.id]);
    assert!(forgetting.readable.is_empty());
    let key_bytes = f.storage.read(&forgetting.keys[0]).await.unwrap().to_vec();
    assert_eq!(forget(&f.storage, &forgetting).await.unwrap(), 1);
    assert!(f.storage.stat(&forgetting.keys[0]).await.unwrap().is_none());

    // The other tenant of the same cycle still restores; the forgotten one is refused, nothing changed.
    std::fs::remove_file(f.layout.tenant_db(kept)).unwrap();
    prepare_and_commit(&f, &plan(&f, &catalog, &only(vec![kept]), &opener)).await;
    assert_eq!(fingerprint(&f.layout.tenant_db(kept)), before_kept);
    let (database, e) = refused_for_its_key(&f, &catalog, &only(vec![gone]), &opener, true).await;
    assert_eq!(database, Database::Tenant { tenant_id: gone });
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert!(e.hint().unwrap().contains("forgotten"), "{:?}", e.hint());
    assert_eq!(fingerprint(&f.layout.tenant_db(gone)), before_gone);
    // A copy of the key file back in place (a rewrap that raced the forget and stopped) opens nothing:
    // the tombstone is the record.
    f.storage
        .write(&forgetting.keys[0], key_bytes)
        .await
        .unwrap();
    refused_for_its_key(&f, &catalog, &only(vec![gone]), &opener, true).await;
    f.storage.erase(&forgetting.keys[0]).await.unwrap();
    // A whole-cycle restore stops the same way, nothing changed; the shared database alone restores.
    refused_for_its_key(&f, &catalog, &whole, &opener, true).await;
    let before_shared = fingerprint(&f.layout.db_path);
    let shared_only = RestoreSelection::new(true, Vec::new());
    prepare_and_commit(&f, &plan(&f, &catalog, &shared_only, &opener)).await;
    assert_eq!(fingerprint(&f.layout.db_path), before_shared);
    // A plain verify says so too, without counting it as damage.
    let scratch = f.dir.path().join("scratch");
    let plain = verify_snapshot(&f.storage, &catalog, report.id, false, &scratch, None)
        .await
        .unwrap();
    let of = |t: Uuid| {
        plain
            .databases
            .iter()
            .find(|d| d.database == Database::Tenant { tenant_id: t })
            .unwrap()
    };
    assert!(plain.is_ok() && of(gone).not_opened.is_some(), "{plain:?}");

    // A deep verify says it did not open the forgotten tenant, and checks its stored bytes.
    let checked = deep(&f, &catalog, report.id, &opener).await;
    assert!(checked.is_ok(), "{checked:?}");
    let of = |t: Uuid| {
        checked
            .databases
            .iter()
            .find(|d| d.database == Database::Tenant { tenant_id: t })
            .unwrap()
    };
    assert!(
        of(gone)
            .not_opened
            .as_deref()
            .unwrap()
            .contains("forget-tenant")
    );
    assert!(of(gone).files > 0);
    assert!(of(kept).not_opened.is_none() && of(kept).tables > 5);

    // The tenant still lives here: the next cycle seals it to a new key, which opens again.
    let next = cycle(&f, &options(&f, &sealer, BackupMode::Full)).await;
    let m = tenant_manifest(&f, gone, next.id).await;
    let new_key = m.encryption.unwrap().tenant_key.unwrap();
    assert_ne!(new_key, forgetting.keys[0]);
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let latest = RestorePlan::new(&catalog, Some(next.id), &f.layout, &only(vec![gone]))
        .unwrap()
        .with_opener(Arc::clone(&opener));
    prepare_and_commit(&f, &latest).await;
    assert_eq!(fingerprint(&f.layout.tenant_db(gone)), before_gone);
}

/// A key file gone without a forget is damage, and says so: not "forgotten".
async fn a_key_file_removed_by_hand_is_missing_not_forgotten(f: Fixture) {
    let (opener, sealer) = operator();
    let report = cycle(&f, &options(&f, &sealer, BackupMode::Full)).await;
    let (gone, _) = two_tenants(&f);
    let m = tenant_manifest(&f, gone, report.id).await;
    f.storage
        .delete(&m.encryption.unwrap().tenant_key.unwrap())
        .await
        .unwrap();
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let (_, e) = refused_for_its_key(&f, &catalog, &only(vec![gone]), &opener, false).await;
    assert_eq!(e.kind(), ErrorKind::Integrity);
    assert!(e.to_string().contains("is missing"), "{e}");
    // A plain verify (no identity) finds it: the snapshot is lost with its key.
    let scratch = f.dir.path().join("scratch");
    let plain = verify_snapshot(&f.storage, &catalog, report.id, false, &scratch, None)
        .await
        .unwrap();
    assert!(!plain.is_ok(), "{plain:?}");
}

/// The host seals only to the tenant key it recorded: a key file swapped in the bucket (by whoever
/// holds the bucket's keys) is never used to encrypt, and a restore refuses it.
async fn a_key_file_swapped_in_the_bucket_is_never_sealed_to(f: Fixture) {
    let (opener, sealer) = operator();
    let options = options(&f, &sealer, BackupMode::Full);
    let first = cycle(&f, &options).await;
    let (tenant, _) = two_tenants(&f);
    let m = tenant_manifest(&f, tenant, first.id).await;
    let e = m.encryption.unwrap();
    let (object, recipient) = (e.tenant_key.unwrap(), e.recipients[0].clone());
    // The attacker's key file: their own public key, under the name of the real one.
    let attacker = Identity::generate();
    let mut file: serde_json::Value =
        serde_json::from_slice(&f.storage.read(&object).await.unwrap()).unwrap();
    file["recipient"] = attacker.to_public().to_string().into();
    f.storage
        .write(&object, serde_json::to_vec(&file).unwrap())
        .await
        .unwrap();
    let second = cycle(&f, &options).await;
    let m = tenant_manifest(&f, tenant, second.id).await;
    assert_eq!(m.encryption.unwrap().recipients, vec![recipient]);
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let (_, e) = plan(&f, &catalog, &only(vec![tenant]), &opener)
        .prepare_all(&f.storage, hitkeep_backup::SnapshotId::now(), 2)
        .await
        .unwrap_err();
    assert!(matches!(&e, Error::TenantKey { .. }), "{e}");
}

/// Incremental with tenant keys: the second cycle reuses each tenant's unchanged partitions (its
/// previous snapshot is sealed to the same key), and restores whole.
async fn an_incremental_chain_with_tenant_keys_reuses_and_restores(f: Fixture) {
    let (opener, sealer) = operator();
    let options = options(&f, &sealer, BackupMode::Incremental);
    let first = cycle(&f, &options).await;
    let second = cycle(&f, &options).await;
    let (tenant, other) = two_tenants(&f);
    let (a, b) = (
        tenant_manifest(&f, tenant, first.id).await,
        tenant_manifest(&f, tenant, second.id).await,
    );
    let key_of = |m: &Manifest| m.encryption.as_ref().unwrap().tenant_key.clone();
    assert_eq!(key_of(&a), key_of(&b));
    // The tenant's own snapshot names the objects its first one stored: reused, not stored again.
    let pooled = |m: &Manifest| -> std::collections::BTreeSet<String> {
        m.files.iter().filter_map(|f| f.object.clone()).collect()
    };
    assert!(
        !pooled(&a).is_empty() && pooled(&a) == pooled(&b),
        "{a:?}\n{b:?}"
    );

    // Forgotten, the tenant's next snapshot shares nothing with the old ones (a new key), and the
    // other tenant's chain goes on.
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let forgetting = plan_forget(&f.storage, &catalog, tenant).await.unwrap();
    assert_eq!(forgetting.unreadable.len(), 2);
    forget(&f.storage, &forgetting).await.unwrap();
    let third = cycle(&f, &options).await;
    let c = tenant_manifest(&f, tenant, third.id).await;
    assert_ne!(key_of(&c), key_of(&b));
    assert!(pooled(&c).is_disjoint(&pooled(&b)));
    let (o2, o3) = (
        tenant_manifest(&f, other, second.id).await,
        tenant_manifest(&f, other, third.id).await,
    );
    assert_eq!(pooled(&o2), pooled(&o3));
    let before = fingerprint(&f.layout.tenant_db(tenant));
    std::fs::remove_file(f.layout.tenant_db(tenant)).unwrap();
    let catalog = Catalog::load(&f.storage).await.unwrap();
    prepare_and_commit(&f, &plan(&f, &catalog, &only(vec![tenant]), &opener)).await;
    assert_eq!(fingerprint(&f.layout.tenant_db(tenant)), before);
}

/// Key rotation: `rewrap` seals every tenant key file to new recipients with the old identity; the
/// new identity then opens the tenants' snapshots and the old one no longer does. A stranger's
/// identity stops the plan before anything is written.
async fn rewrap_seals_the_key_files_to_new_recipients(f: Fixture) {
    let (old, sealer) = operator();
    let report = cycle(&f, &options(&f, &sealer, BackupMode::Full)).await;
    let (new, new_sealer) = operator();
    let (stranger, _) = operator();
    let keys_before = key_files(&f).await;
    let objects_before = snapshot_objects(&f).await;
    let refused = plan_rewrap(&f.storage, &stranger, &new_sealer)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::NotOpened { .. }), "{refused}");
    assert_eq!(key_files(&f).await, keys_before, "nothing written");

    let rewraps = plan_rewrap(&f.storage, &old, &new_sealer).await.unwrap();
    assert_eq!(rewraps.keys.len(), f.backed_up().len());
    assert_eq!(
        rewrap(&f.storage, &rewraps).await.unwrap(),
        rewraps.keys.len()
    );
    let again = plan_rewrap(&f.storage, &new, &new_sealer).await.unwrap();
    assert!(again.keys.is_empty() && again.unchanged == rewraps.keys.len());

    let (tenant, _) = two_tenants(&f);
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let stamp = hitkeep_backup::SnapshotId::now();
    let with_old = plan(&f, &catalog, &only(vec![tenant]), &old);
    let (_, e) = with_old
        .prepare_all(&f.storage, stamp, 2)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotOpened { .. }), "{e}");
    let before = fingerprint(&f.layout.tenant_db(tenant));
    std::fs::remove_file(f.layout.tenant_db(tenant)).unwrap();
    prepare_and_commit(&f, &plan(&f, &catalog, &only(vec![tenant]), &new)).await;
    assert_eq!(fingerprint(&f.layout.tenant_db(tenant)), before);
    // No snapshot object was touched: only the key files changed.
    assert!(snapshot_objects(&f).await == objects_before);
    assert!(report.is_success());
}

/// Every object of the location but the key files, with its bytes, in key order.
async fn snapshot_objects(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in f
        .storage
        .list("", hitkeep_storage::ListMode::Recursive)
        .await
        .unwrap()
    {
        if !e.is_dir && !e.key.starts_with("keys/") {
            out.push((
                e.key.clone(),
                f.storage.read(&e.key).await.unwrap().to_vec(),
            ));
        }
    }
    out
}

/// Every key file with its bytes.
async fn key_files(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in f
        .storage
        .list("keys", hitkeep_storage::ListMode::Recursive)
        .await
        .unwrap()
    {
        if !e.is_dir {
            out.push((
                e.key.clone(),
                f.storage.read(&e.key).await.unwrap().to_vec(),
            ));
        }
    }
    out
}

on_local_and_s3!(
    forgetting_a_tenant_leaves_every_other_database_restorable,
    a_key_file_removed_by_hand_is_missing_not_forgotten,
    an_incremental_chain_with_tenant_keys_reuses_and_restores,
    rewrap_seals_the_key_files_to_new_recipients,
    a_key_file_swapped_in_the_bucket_is_never_sealed_to,
);
