//! Several writers and a wrong clock: sources, claims, sequence numbers and leftovers.

use std::num::NonZeroU32;
use std::sync::Arc;

use hitkeep_backup::{
    Catalog, Database, Error, Progress, PrunePlan, SnapshotId, SnapshotState, run_cycle, sources,
    verify_snapshot,
};
use hitkeep_data::demo::{DemoOptions, generate};
use hitkeep_data::{DataLayout, OpenMode, SourceId, open_database};
use hitkeep_storage::ListMode;

use super::{Fixture, pruned_cycles};

/// A second installation (its own demo data and data path) writing to `f`'s destination.
fn second_installation(f: &Fixture) -> DataLayout {
    let root = f.dir.path().join("other");
    let layout = DataLayout::new(root.join("hitkeep.db"), root.join("data"));
    generate(&layout, &DemoOptions::new(1_000, 1)).unwrap();
    layout
}

async fn cycle_of(f: &Fixture, layout: &DataLayout) -> hitkeep_backup::CycleReport {
    let shared = open_database(&layout.db_path, OpenMode::Existing).unwrap();
    let tenants = hitkeep_backup::CycleTenants::discover(layout, &shared).unwrap();
    let options = hitkeep_backup::BackupOptions::for_layout(layout);
    run_cycle(&f.storage, shared, tenants, &options)
        .await
        .unwrap()
}

fn source(layout: &DataLayout) -> SourceId {
    layout
        .source_id()
        .unwrap()
        .expect("the first cycle creates it")
}

async fn every_manifest_records_its_source_and_a_growing_sequence(f: Fixture) {
    let first = f.cycle().await;
    let second = f.cycle().await;
    let me = source(&f.layout);
    assert_eq!(first.shared.source, Some(me));
    assert_eq!(first.shared.sequence, Some(1));
    assert_eq!(second.shared.sequence, Some(2));
    assert!(second.id > first.id);
    let catalog = Catalog::load(&f.storage).await.unwrap();
    for db in &catalog.databases {
        for s in &db.snapshots {
            assert_eq!(s.source, Some(me), "{}/{}", db.database.folder(), s.id);
        }
    }
    let records = sources(&f.storage).await.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].source, me);
    assert_eq!(
        records[0].data_path,
        f.layout.data_path.display().to_string()
    );
}

async fn two_installations_never_mix_latest_or_prune(f: Fixture) {
    let other = second_installation(&f);
    let a1 = f.cycle().await.id;
    let b1 = cycle_of(&f, &other).await.id;
    let a2 = f.cycle().await.id;
    let (a, b) = (source(&f.layout), source(&other));
    assert_ne!(a, b);

    // "latest" is ambiguous: refused, naming both.
    let err = Catalog::load_cycle(&f.storage, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SeveralSources(ref s) if s.len() == 2),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&a.to_string()) && text.contains(&b.to_string()),
        "{text}"
    );
    assert!(
        err.hint().is_some_and(|h| h.contains("-source")),
        "{:?}",
        err.hint()
    );
    // Each source's own newest cycle.
    let of = |c: &Catalog| c.latest_committed().unwrap().id;
    let mine = Catalog::load_cycle(&f.storage, None, Some(a))
        .await
        .unwrap();
    assert_eq!(of(&mine), a2);
    let theirs = Catalog::load_cycle(&f.storage, None, Some(b))
        .await
        .unwrap();
    assert_eq!(of(&theirs), b1);

    // Prune keeps one of A's cycles and never touches B's, though B's is older than A's newest.
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let plan = PrunePlan::new(&catalog, NonZeroU32::MIN, Some(a2), Some(a));
    let shared = pruned_cycles(&plan);
    assert_eq!(shared, vec![a1], "{plan:?}");
    plan.execute(&f.storage).await.unwrap();
    let after = Catalog::load(&f.storage).await.unwrap();
    assert!(
        after.find(Database::Shared, b1).is_some(),
        "B's cycle was pruned"
    );
}

async fn two_cycles_started_together_claim_different_ids(f: Fixture) {
    let other = second_installation(&f);
    let (x, y) = tokio::join!(f.cycle(), cycle_of(&f, &other));
    assert_ne!(x.id, y.id, "both claimed one snapshot id");
    let catalog = Catalog::load(&f.storage).await.unwrap();
    for id in [x.id, y.id] {
        let report = verify_snapshot(&f.storage, &catalog, id, false, f.dir.path(), None)
            .await
            .unwrap();
        assert!(report.is_ok(), "{id}: {report:?}");
    }
}

/// A cycle written by a clock a year ahead: the next cycles run (with a warning), "latest" is the one
/// that ran last, and retention removes the future-dated one in its turn.
async fn a_cycle_dated_in_the_future_does_not_pin_latest_or_retention(f: Fixture) {
    let first = f.cycle().await;
    let future: SnapshotId = "2099-01-01T000000Z".parse().unwrap();
    // The first cycle's shared snapshot, as a clock set ahead would have named it.
    for entry in f
        .storage
        .list(&format!("shared/{}", first.id), ListMode::Recursive)
        .await
        .unwrap()
    {
        let name = entry.name().to_owned();
        let mut bytes = f.storage.read(&entry.key).await.unwrap().to_vec();
        if name == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            m["snapshot_id"] = serde_json::json!(future.to_string());
            bytes = serde_json::to_vec(&m).unwrap();
        }
        f.storage
            .write(&format!("shared/{future}/{name}"), bytes)
            .await
            .unwrap();
    }
    let second = f.cycle().await;
    assert_eq!(
        second.shared.sequence,
        Some(2),
        "numbered after the future-dated one"
    );
    let third = f.cycle().await;
    assert_eq!(third.shared.sequence, Some(3));

    let catalog = Catalog::load(&f.storage).await.unwrap();
    assert!(catalog.find(Database::Shared, future).unwrap().in_future());
    assert_eq!(catalog.latest_committed().unwrap().id, third.id);
    let cycle = Catalog::load_cycle(&f.storage, None, None).await.unwrap();
    assert_eq!(cycle.latest_committed().unwrap().id, third.id);

    let me = Some(source(&f.layout));
    let plan = PrunePlan::new(&catalog, NonZeroU32::new(2).unwrap(), Some(third.id), me);
    let gone = pruned_cycles(&plan);
    assert!(
        gone.contains(&future) && gone.contains(&first.id),
        "{plan:?}"
    );
    assert!(!gone.contains(&second.id), "{plan:?}");
}

/// What a killed run of this installation leaves is removed after the next cycle, even with retention
/// off; another installation's unfinished snapshot stays.
async fn leftovers_of_interrupted_runs_go_after_the_next_cycle(f: Fixture) {
    let first = f.cycle().await;
    let me = source(&f.layout);
    let killed = "2026-01-01T000000Z";
    let theirs = "2026-01-01T000001Z";
    let marker = |s: SourceId| {
        serde_json::to_vec(&serde_json::json!({
            "tool": "hitkeep-rs 0", "started_at": "2026-01-01T00:00:00Z", "source": s, "run": "dead"
        }))
        .unwrap()
    };
    let tenant = f.backed_up()[0];
    for (folder, who) in [
        (format!("shared/{killed}"), me),
        (format!("tenants/{tenant}/{killed}"), me),
        (format!("shared/{theirs}"), SourceId::random()),
    ] {
        let st = &f.storage;
        st.write(&format!("{folder}/in-progress.json"), marker(who))
            .await
            .unwrap();
        st.write(&format!("{folder}/hits.parquet"), vec![0u8; 4096])
            .await
            .unwrap();
    }
    let second = f.cycle().await;
    let catalog = Catalog::load(&f.storage).await.unwrap();
    assert_eq!(
        catalog
            .find(Database::Shared, killed.parse().unwrap())
            .unwrap()
            .state,
        SnapshotState::Incomplete
    );
    let plan = PrunePlan::leftovers(&catalog, second.id, me);
    let gone: Vec<String> = plan
        .deletions
        .iter()
        .map(|d| format!("{}/{}", d.database.folder(), d.id))
        .collect();
    assert_eq!(
        gone,
        vec![
            format!("shared/{killed}"),
            format!("tenants/{tenant}/{killed}")
        ],
        "{plan:?}"
    );
    assert!(
        plan.deletions
            .iter()
            .all(|d| d.reason.contains("interrupted"))
    );
    plan.execute(&f.storage).await.unwrap();
    let after = Catalog::load(&f.storage).await.unwrap();
    assert!(
        after
            .find(Database::Shared, theirs.parse().unwrap())
            .is_some()
    );
    assert!(
        after.find(Database::Shared, first.id).is_some(),
        "retention is not leftovers"
    );
}

on_local_and_s3!(
    every_manifest_records_its_source_and_a_growing_sequence,
    two_installations_never_mix_latest_or_prune,
    two_cycles_started_together_claim_different_ids,
    a_cycle_dated_in_the_future_does_not_pin_latest_or_retention,
    leftovers_of_interrupted_runs_go_after_the_next_cycle,
);

/// Overwrites the shared in-progress marker with another writer's once the shared database's files
/// are uploaded: what a service that ignores `If-None-Match` lets a second writer do.
struct Usurper {
    backups: std::path::PathBuf,
}

impl Progress for Usurper {
    fn upload_finished(&self, database: Database) {
        if database != Database::Shared {
            return;
        }
        for entry in std::fs::read_dir(self.backups.join("shared")).unwrap() {
            let marker = entry.unwrap().path().join("in-progress.json");
            if marker.exists() {
                let other = serde_json::json!({
                    "tool": "hitkeep-rs 0", "started_at": "2026-01-01T00:00:00Z",
                    "source": SourceId::random(), "run": "theirs"
                });
                std::fs::write(&marker, serde_json::to_vec(&other).unwrap()).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_whose_claim_was_taken_over_does_not_commit() {
    let f = Fixture::new(false).await;
    let options = f.options().with_progress(Arc::new(Usurper {
        backups: f.dir.path().join("backups"),
    }));
    let (shared, tenants) = f.shared_and_tenants();
    let err = run_cycle(&f.storage, shared, tenants, &options)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ClaimLost { .. }), "{err}");
    assert!(err.to_string().contains("another writer"), "{err}");
    let catalog = Catalog::load(&f.storage).await.unwrap();
    assert!(
        catalog.latest_committed().is_none(),
        "a cycle was committed"
    );
}

/// The claim runs beside the first exports; a cycle whose clock is behind the newest cycle (dated an
/// hour ahead) is refused with the claim's own error, writes nothing to the destination (no marker,
/// no data, not even the source record) and leaves no export behind in staging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_refused_by_the_clock_writes_nothing_and_stops_its_exports() {
    let f = Fixture::new(true).await;
    let first = f.cycle().await;
    let ahead = SnapshotId::at(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1));
    for entry in f
        .storage
        .list(&format!("shared/{}", first.id), ListMode::Recursive)
        .await
        .unwrap()
    {
        let mut bytes = f.storage.read(&entry.key).await.unwrap().to_vec();
        if entry.name() == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            m["snapshot_id"] = serde_json::json!(ahead.to_string());
            bytes = serde_json::to_vec(&m).unwrap();
        }
        f.storage
            .write(&format!("shared/{ahead}/{}", entry.name()), bytes)
            .await
            .unwrap();
    }
    let keys = |entries: Vec<hitkeep_storage::Entry>| -> Vec<(String, u64)> {
        entries.into_iter().map(|e| (e.key, e.size)).collect()
    };
    let before = keys(f.storage.list("", ListMode::Recursive).await.unwrap());

    let (shared, tenants) = f.shared_and_tenants();
    let err = run_cycle(&f.storage, shared, tenants, &f.options())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ClockBehind { .. }), "{err}");
    let after = keys(f.storage.list("", ListMode::Recursive).await.unwrap());
    assert_eq!(before, after, "the refused cycle wrote to the destination");
    let staging = f.layout.staging_root();
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "exports left in staging: {left:?}");
}
