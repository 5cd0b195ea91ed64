//! S3 Object Lock where this crate decides alone, against moto (the S3 server here that implements
//! it): the pool sweep leaves an object the bucket still locks, where a delete would only hide it.

use hitkeep_backup::manifest::pool_key;
use hitkeep_backup::{Catalog, sweep_pool};
use hitkeep_storage::{ListMode, LockMode, Retention};
use hitkeep_testkit::MotoServer;
use jiff::SignedDuration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_leaves_pool_objects_the_bucket_still_locks() {
    let moto = MotoServer::start();
    moto.create_bucket("locked", true);
    let storage = moto.storage("locked", "backups").await;
    // What two killed cycles leave: objects no manifest names, one of them locked.
    let (locked, free) = (pool_key(&"ab".repeat(32)), pool_key(&"cd".repeat(32)));
    storage.write(&locked, &b"locked"[..]).await.unwrap();
    storage.write(&free, &b"free"[..]).await.unwrap();
    let now = MotoServer::server_now(&storage).await;
    let until = now + SignedDuration::from_hours(24);
    let want = Retention {
        mode: LockMode::Governance,
        until,
    };
    storage.retain(&locked, want).await.unwrap();

    let catalog = Catalog::load(&storage).await.unwrap();
    let sweep = sweep_pool(&storage, &catalog, SignedDuration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        (sweep.objects, sweep.removed, sweep.removed_bytes),
        (2, 1, 4)
    );
    assert_eq!((sweep.locked, sweep.young), (1, 0));
    let listed: Vec<String> = storage
        .list("pool", ListMode::Recursive)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.key)
        .collect();
    assert!(
        listed.contains(&locked),
        "the locked object stays listed, not hidden behind a delete marker: {listed:?}"
    );
    assert!(!listed.contains(&free), "{listed:?}");
}

/// On a versioned bucket (every locked one is) a plain delete leaves a key file's bytes behind a
/// delete marker: `forget` deletes every version, and a fresh look finds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_tenant_deletes_every_version_of_its_key_files() {
    let moto = MotoServer::start();
    moto.create_bucket("versioned", true);
    let storage = moto.storage("versioned", "backups").await;
    let tenant = uuid::Uuid::from_u128(42);
    let key = format!("{}/{tenant}/k1.json", hitkeep_backup::TENANT_KEYS_FOLDER);
    // Two versions of the key file (a rewrap writes it again), and a plain delete elsewhere to show
    // what a delete alone leaves.
    storage.write(&key, &b"{\"v\":1}"[..]).await.unwrap();
    storage.write(&key, &b"{\"v\":2}"[..]).await.unwrap();
    let other = "keys/other.json";
    storage.write(other, &b"x"[..]).await.unwrap();
    storage.delete(other).await.unwrap();
    assert!(
        storage.any_version(other).await.unwrap(),
        "a plain delete on a versioned bucket keeps the old version"
    );
    assert!(storage.any_version(&key).await.unwrap());

    let plan = hitkeep_backup::plan_forget(&storage, &Catalog::default(), tenant)
        .await
        .unwrap();
    assert_eq!(plan.keys, std::slice::from_ref(&key));
    assert_eq!(hitkeep_backup::forget(&storage, &plan).await.unwrap(), 1);
    assert!(
        !storage.any_version(&key).await.unwrap(),
        "no version of the key file is left"
    );
    assert_eq!(storage.stat(&key).await.unwrap(), None);
    // The tombstone stays, and erasing a key that is already gone is no error.
    assert!(
        storage
            .stat(&format!(
                "{}/{tenant}/forgotten.json",
                hitkeep_backup::TENANT_KEYS_FOLDER
            ))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(storage.erase(&key).await.unwrap(), 0);
}
