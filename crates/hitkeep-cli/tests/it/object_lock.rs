//! S3 Object Lock (`HITKEEP_BACKUP_OBJECT_LOCK_DAYS`) as a user meets it, against moto, the S3 server
//! here that implements it: every object of each snapshot locked by the server's clock, prune and the
//! cycle's own prune keeping locked snapshots (listed as kept, never as deleted), `doctor` checking
//! the bucket, and a bucket without Object Lock failing the cycle before anything is written.

use std::path::Path;

use hitkeep_storage::{ListMode, LockMode, Storage};
use hitkeep_testkit::MotoServer;

use crate::{hk, local_env};

fn moto_env(dir: &Path, moto: &MotoServer, bucket: &str) -> Vec<(String, String)> {
    let mut env = local_env(dir);
    env.retain(|(k, _)| k != "HITKEEP_BACKUP_PATH" && k != "HITKEEP_ARCHIVE_PATH");
    env.push((
        "HITKEEP_BACKUP_PATH".into(),
        format!("s3://{bucket}/hitkeep/backups"),
    ));
    env.push((
        "HITKEEP_ARCHIVE_PATH".into(),
        format!("s3://{bucket}/hitkeep/archive"),
    ));
    env.push(("HITKEEP_BACKUP_OBJECT_LOCK_DAYS".into(), "2".into()));
    env.extend(moto.hitkeep_env());
    env
}

/// Every object under the snapshot folders (`shared/`, `tenants/`).
async fn snapshot_objects(storage: &Storage) -> Vec<String> {
    let mut keys = Vec::new();
    for folder in ["shared", "tenants"] {
        let listed = storage.list(folder, ListMode::Recursive).await.unwrap();
        keys.extend(listed.into_iter().filter(|e| !e.is_dir).map(|e| e.key));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_snapshots_are_locked_whole_and_kept_by_prune() {
    let moto = MotoServer::start();
    moto.create_bucket("locked", true);
    let dir = tempfile::tempdir().unwrap();
    let mut env = moto_env(dir.path(), &moto, "locked");
    env.push(("HITKEEP_BACKUP_RETENTION".into(), "1".into()));
    env.push(("HITKEEP_BACKUP_PRUNE_S3".into(), "true".into()));
    let path = dir.path().to_owned();
    let env2 = env.clone();
    tokio::task::spawn_blocking(move || {
        let out = hk(&["demo", "--hits", "1000", "--tenants", "1"], &env2, &path);
        assert!(out.starts_with("exit: 0"), "{out}");
        // The second cycle's own prune finds the first past retention, and locked.
        for _ in 0..2 {
            let out = hk(&["backup", "run"], &env2, &path);
            assert!(out.starts_with("exit: 0"), "{out}");
        }
    })
    .await
    .unwrap();

    let storage = moto.storage("locked", "hitkeep/backups").await;
    let now = MotoServer::server_now(&storage).await;
    let objects = snapshot_objects(&storage).await;
    let manifests = objects
        .iter()
        .filter(|k| k.ends_with("/manifest.json"))
        .count();
    assert_eq!(
        manifests, 6,
        "two cycles of three databases, none pruned: {objects:?}"
    );
    for key in &objects {
        let retained = storage.retained(key).await.unwrap();
        let retention = retained
            .retention
            .unwrap_or_else(|| panic!("{key} is not locked"));
        assert_eq!(retention.mode, LockMode::Governance, "{key}");
        let left = retention.until.duration_since(now);
        assert!(
            left > jiff::SignedDuration::from_hours(47)
                && left <= jiff::SignedDuration::from_hours(48),
            "{key} locked for {left:?} by the server's clock, not 2 days"
        );
    }

    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let listed = hk(&["backup", "list"], &env, &path);
        assert_eq!(listed.matches(" complete ").count(), 6, "{listed}");
        assert_eq!(listed.matches("(locked until ").count(), 6, "{listed}");
        let json = hk(&["backup", "list", "--json"], &env, &path);
        assert_eq!(
            json.matches("\"mode\": \"governance\"").count(),
            6,
            "{json}"
        );

        let dry = hk(&["backup", "prune", "--dry-run"], &env, &path);
        assert!(dry.starts_with("exit: 0"), "{dry}");
        assert!(
            dry.contains("kept by S3 Object Lock although past retention"),
            "{dry}"
        );
        assert_eq!(dry.matches("(locked until ").count(), 3, "{dry}");
        assert!(dry.contains("nothing else to prune"), "{dry}");
        let pruned = hk(&["backup", "prune", "-yes"], &env, &path);
        assert!(
            pruned.starts_with("exit: 0") && !pruned.contains("deleted"),
            "{pruned}"
        );
        let listed = hk(&["backup", "list"], &env, &path);
        assert_eq!(
            listed.matches(" complete ").count(),
            6,
            "nothing hidden: {listed}"
        );

        let doctor = hk(&["doctor"], &env, &path);
        let line = doctor
            .lines()
            .find(|l| l.contains("backup: object lock"))
            .unwrap_or_else(|| panic!("{doctor}"));
        assert!(
            line.contains("enabled on the bucket") && line.contains("2 days"),
            "{doctor}"
        );

        let lifecycle = hk(&["backup", "lifecycle"], &env, &path);
        assert!(
            lifecycle.contains("\"Days\": 3") && lifecycle.contains("NoncurrentVersionExpiration"),
            "expiry waits a day past the lock: {lifecycle}"
        );
        let verified = hk(&["backup", "verify"], &env, &path);
        assert!(verified.starts_with("exit: 0"), "{verified}");
    })
    .await
    .unwrap();

    // The same bytes written again over a file of the newest cycle: on a versioned bucket that is a
    // new version, without the lock. Sizes and digests still match; the lock check does not.
    let newest = objects
        .iter()
        .filter_map(|k| k.strip_prefix("shared/")?.split_once('/'))
        .map(|(id, _)| id)
        .max()
        .unwrap()
        .to_owned();
    let file = objects
        .iter()
        .find(|k| k.starts_with(&format!("shared/{newest}/")) && !k.ends_with("/manifest.json"))
        .unwrap()
        .clone();
    let bytes = storage.read(&file).await.unwrap();
    storage.write(&file, bytes).await.unwrap();
    let path = dir.path().to_owned();
    let env = moto_env(dir.path(), &moto, "locked");
    tokio::task::spawn_blocking(move || {
        let verified = hk(&["backup", "verify"], &env, &path);
        assert!(verified.starts_with("exit: 1"), "{verified}");
        let name = file.rsplit('/').next().unwrap();
        assert!(
            verified.contains(name)
                && verified.contains("the manifest records an S3 Object Lock in governance mode")
                && verified.contains("it has no lock"),
            "{verified}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_without_object_lock_fails_the_cycle_before_writing() {
    let moto = MotoServer::start();
    moto.create_bucket("plain", false);
    let dir = tempfile::tempdir().unwrap();
    let env = moto_env(dir.path(), &moto, "plain");
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        assert!(hk(&["demo", "--hits", "500", "--tenants", "1"], &env, &path).starts_with("exit: 0"));
        let out = hk(&["backup", "run"], &env, &path);
        assert!(out.starts_with("exit: 1"), "{out}");
        assert!(
            out.contains("has no S3 Object Lock, which HITKEEP_BACKUP_OBJECT_LOCK_DAYS asks for; nothing was backed up")
                && out.contains("--object-lock-enabled-for-bucket"),
            "{out}"
        );
        let doctor = hk(&["doctor"], &env, &path);
        assert!(doctor.starts_with("exit: 1"), "{doctor}");
        assert!(
            doctor.contains("HITKEEP_BACKUP_OBJECT_LOCK_DAYS is set and the bucket has no Object Lock"),
            "{doctor}"
        );
    })
    .await
    .unwrap();
    let storage = moto.storage("plain", "hitkeep/backups").await;
    assert_eq!(snapshot_objects(&storage).await, Vec::<String>::new());
}

#[test]
fn object_lock_on_a_directory_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = local_env(dir.path());
    env.push(("HITKEEP_BACKUP_OBJECT_LOCK_DAYS".into(), "7".into()));
    let out = hk(&["backup", "run"], &env, dir.path());
    assert!(out.starts_with("exit: 2"), "{out}");
    assert!(
        out.contains("HITKEEP_BACKUP_OBJECT_LOCK_DAYS")
            && out.contains("Object Lock is an S3 feature"),
        "{out}"
    );
    env.push(("HITKEEP_BACKUP_OBJECT_LOCK_DAYS".into(), "0".into()));
    env.push(("HITKEEP_BACKUP_OBJECT_LOCK_MODE".into(), "forever".into()));
    let out = hk(&["backup", "run"], &env, dir.path());
    assert!(
        out.starts_with("exit: 2") && out.contains("not governance or compliance"),
        "{out}"
    );
}
