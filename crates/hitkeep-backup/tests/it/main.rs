//! Backup cycles against a local directory and the in-process S3 server, on real DuckDB demo data.

/// Each named `async fn(Fixture)` as a test on a local directory and on the in-process S3 server (in
/// the invoking module, whose `Fixture` it uses). Defined before the modules that use it.
macro_rules! on_local_and_s3 {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Fixture::new(false).await).await })*
        }
        mod s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Fixture::new(true).await).await })*
        }
    };
}

mod bundle;
mod catalog;
mod encrypted;
mod errors;
mod incremental;
mod object_lock;
mod restore;
mod sources;
mod tampered;
mod tenant_keys;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;

use hitkeep_backup::manifest::TenantState;
use hitkeep_backup::{
    BackupOptions, Catalog, CycleLock, CycleTenants, Database, Error, PrunePlan, SnapshotId,
    SnapshotState, TenantSource, run_cycle, verify_snapshot,
};
use hitkeep_data::demo::{DemoOptions, DemoSummary, generate};
use hitkeep_data::{DataLayout, OpenMode, TenantLayout, open_database};
use hitkeep_storage::{ListMode, Storage};
use hitkeep_testkit::{S3Server, local_storage};

/// Demo data plus a backup location.
struct Fixture {
    dir: tempfile::TempDir,
    layout: DataLayout,
    demo: DemoSummary,
    storage: Storage,
    server: Option<S3Server>,
}

impl Fixture {
    async fn new(s3: bool) -> Fixture {
        Fixture::with_layout(s3, TenantLayout::Split).await
    }

    async fn with_layout(s3: bool, tenants: TenantLayout) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
        let demo = generate(&layout, &DemoOptions::new(3_000, 2).with_layout(tenants)).unwrap();
        let (storage, server) = if s3 {
            let server = S3Server::start().await.unwrap();
            (server.storage("hitkeep/backups").await, Some(server))
        } else {
            (local_storage(&dir.path().join("backups")).await, None)
        };
        Fixture {
            dir,
            layout,
            demo,
            storage,
            server,
        }
    }

    fn options(&self) -> BackupOptions {
        BackupOptions::for_layout(&self.layout)
    }

    /// The shared database, and the tenants a cycle of it backs up (read from that connection: a
    /// second open of a file this process holds is refused).
    fn shared_and_tenants(&self) -> (duckdb::Connection, CycleTenants) {
        let shared = open_database(&self.layout.db_path, OpenMode::Existing).unwrap();
        let tenants = CycleTenants::discover(&self.layout, &shared).unwrap();
        (shared, tenants)
    }

    /// The tenants a cycle backs up: on a split install the default one too, oldest first.
    fn backed_up(&self) -> Vec<uuid::Uuid> {
        let split = self.demo.layout == TenantLayout::Split;
        split
            .then_some(self.demo.default_tenant)
            .into_iter()
            .chain(self.demo.tenants.iter().copied())
            .collect()
    }

    /// The database that holds the default tenant's analytics.
    fn default_analytics(&self) -> std::path::PathBuf {
        self.layout
            .analytics_db(self.demo.layout, Some(self.demo.default_tenant), None)
    }

    async fn cycle(&self) -> hitkeep_backup::CycleReport {
        let (shared, tenants) = self.shared_and_tenants();
        run_cycle(&self.storage, shared, tenants, &self.options())
            .await
            .unwrap()
    }
}

/// The cycles (shared snapshots) a prune plan deletes.
fn pruned_cycles(plan: &PrunePlan) -> Vec<SnapshotId> {
    plan.deletions
        .iter()
        .filter(|d| d.database == Database::Shared)
        .map(|d| d.id)
        .collect()
}

/// Row counts and an order-independent fingerprint of every table, straight from DuckDB.
fn fingerprint(db: &Path) -> BTreeMap<String, (i64, i128)> {
    let conn = open_database(db, OpenMode::Existing).unwrap();
    hitkeep_data::user_tables(&conn)
        .unwrap()
        .into_iter()
        .map(|(_, t)| {
            let sql = format!("SELECT count(*), coalesce(sum(hash(x)::HUGEINT), 0) FROM \"{t}\" x");
            let row: (i64, i128) = conn
                .query_row(&sql, [], |r| Ok((r.get(0)?, r.get::<_, i128>(1)?)))
                .unwrap();
            (t, row)
        })
        .collect()
}

macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        on_local_and_s3!($($test),*);
        /// HitKeep 2.12 and older: the default tenant's analytics in the shared database.
        mod pre_split {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::Fixture::with_layout(false, hitkeep_data::TenantLayout::PreSplit).await).await
            })*
        }
    };
}

on_every_backend!(
    a_cycle_writes_the_layout_manifests_and_checksums,
    the_parquet_files_hold_exactly_the_source_rows,
    an_interrupted_cycle_is_incomplete_and_never_latest,
    retention_keeps_exactly_n,
    a_failing_tenant_is_reported_and_the_others_are_backed_up,
    the_latest_cycle_is_found_without_listing_the_history,
    verify_finds_a_damaged_object_and_deep_verify_passes_on_intact_data,
);

async fn a_cycle_writes_the_layout_manifests_and_checksums(f: Fixture) {
    let report = f.cycle().await;
    assert!(report.is_success());
    let id = report.id;
    let keys: Vec<String> = f
        .storage
        .list("", ListMode::Recursive)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert!(
        keys.contains(&format!("shared/{id}/manifest.json")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("shared/{id}/schema.sql"))
            && keys.contains(&format!("shared/{id}/load.sql"))
    );
    assert!(keys.contains(&format!("shared/{id}/hits.parquet")));
    for t in &f.backed_up() {
        assert!(
            keys.contains(&format!("tenants/{t}/{id}/manifest.json")),
            "tenant {t}: {keys:?}"
        );
    }
    assert!(
        !keys
            .iter()
            .any(|k| k.contains(&f.demo.archived_tenant.to_string())),
        "archived tenants are not backed up"
    );
    assert!(
        !keys.iter().any(|k| k.ends_with("in-progress.json")),
        "markers are removed after commit"
    );

    let catalog = Catalog::load(&f.storage).await.unwrap();
    assert_eq!(catalog.latest_committed().unwrap().id, id);
    let shared = catalog
        .latest_committed()
        .unwrap()
        .manifest
        .clone()
        .unwrap();
    assert_eq!(shared.database, Database::Shared);
    assert_eq!(shared.format_version, 1);
    assert_eq!(shared.layout, Some(f.demo.layout));
    assert_eq!(shared.default_tenant, Some(f.demo.default_tenant));
    let listed: Vec<_> = shared.tenants.iter().map(|t| t.tenant_id).collect();
    assert_eq!(listed, f.backed_up(), "every active tenant, oldest first");
    assert!(
        shared
            .tenants
            .iter()
            .all(|t| matches!(t.state, TenantState::Complete { .. }))
    );
    // Every recorded digest matches the stored object.
    for file in &shared.files {
        let bytes = f
            .storage
            .read(&format!("shared/{id}/{}", file.name))
            .await
            .unwrap();
        assert_eq!(bytes.len() as u64, file.size, "{}", file.name);
        assert_eq!(
            hitkeep_storage::Sha256Digest::of(&bytes).to_string(),
            file.sha256,
            "{}",
            file.name
        );
    }
    // The manifest's row counts are the source's.
    let source = fingerprint(&f.layout.db_path);
    for (table, (count, _)) in &source {
        assert_eq!(
            shared.tables.get(table).copied(),
            Some(*count as u64),
            "{table}"
        );
    }
    let staged: Vec<_> = std::fs::read_dir(f.layout.staging_root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup-"))
        .collect();
    assert!(staged.is_empty(), "staging is removed: {staged:?} ({id})");
}

async fn the_parquet_files_hold_exactly_the_source_rows(f: Fixture) {
    let id = f.cycle().await.id;
    let tenant = f.demo.tenants[0];
    let default = f.demo.default_tenant;
    let download = f.dir.path().join("dl");
    std::fs::create_dir_all(&download).unwrap();
    // The default tenant's rows are where its analytics live: its own snapshot after the split.
    let default_folder = match f.demo.layout {
        TenantLayout::Split => format!("tenants/{default}"),
        TenantLayout::PreSplit => "shared".to_owned(),
    };
    for (folder, db) in [
        (default_folder, f.default_analytics()),
        (format!("tenants/{tenant}"), f.layout.tenant_db(tenant)),
    ] {
        let source = fingerprint(&db);
        let conn = duckdb::Connection::open_in_memory().unwrap();
        for table in [
            "hits",
            "events",
            "web_vitals",
            "imported_event_dimensions_daily",
            "hit_rollups_daily",
        ] {
            let local = download.join(format!("{}-{table}.parquet", folder.replace('/', "_")));
            f.storage
                .download_file(
                    &format!("{folder}/{id}/{table}.parquet"),
                    &local,
                    None,
                    &Default::default(),
                )
                .await
                .unwrap();
            let sql = format!(
                "SELECT count(*), coalesce(sum(hash(x)::HUGEINT), 0) FROM read_parquet('{}') x",
                local.display()
            );
            let got: (i64, i128) = conn
                .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            assert_eq!(got, source[table], "{folder}/{table}");
            assert!(got.0 > 0, "{folder}/{table} has rows");
        }
    }
}

async fn an_interrupted_cycle_is_incomplete_and_never_latest(f: Fixture) {
    let committed = f.cycle().await.id;
    // A run killed between upload and manifest: data files and the marker, no manifest.
    let killed = "2099-01-01T000000Z";
    f.storage
        .write(&format!("shared/{killed}/in-progress.json"), &b"{}"[..])
        .await
        .unwrap();
    f.storage
        .write(
            &format!("shared/{killed}/schema.sql"),
            &b"CREATE TABLE x(i INT);"[..],
        )
        .await
        .unwrap();
    f.storage
        .write(&format!("shared/{killed}/load.sql"), &b""[..])
        .await
        .unwrap();
    f.storage
        .write(&format!("shared/{killed}/hits.parquet"), &b"PAR1"[..])
        .await
        .unwrap();
    // A HitKeep Go snapshot: an export with no manifest and no marker.
    let legacy = "2020-01-01T000000Z";
    f.storage
        .write(&format!("shared/{legacy}/schema.sql"), &b""[..])
        .await
        .unwrap();
    f.storage
        .write(&format!("shared/{legacy}/load.sql"), &b""[..])
        .await
        .unwrap();

    let catalog = Catalog::load(&f.storage).await.unwrap();
    let state = |id: &str| {
        catalog
            .find(Database::Shared, id.parse().unwrap())
            .unwrap()
            .state
            .clone()
    };
    assert_eq!(state(killed), SnapshotState::Incomplete);
    assert_eq!(state(legacy), SnapshotState::Legacy);
    assert_eq!(state(&committed.to_string()), SnapshotState::Complete);
    assert_eq!(catalog.latest_committed().unwrap().id, committed);
    assert_eq!(catalog.resolve(Some("latest")).unwrap().id, committed);
    assert!(
        catalog.resolve(Some(killed)).is_ok(),
        "named snapshots resolve, whatever their state"
    );

    // The next cycle succeeds, and pruning leaves the newer unfinished folder alone (it may be running).
    let next = f.cycle().await.id;
    let plan = PrunePlan::new(
        &Catalog::load(&f.storage).await.unwrap(),
        NonZeroU32::new(24).unwrap(),
        Some(next),
        None,
    );
    assert!(
        plan.deletions.iter().all(|d| d.id.to_string() != killed),
        "{plan:?}"
    );
}

async fn the_latest_cycle_is_found_without_listing_the_history(f: Fixture) {
    // A year of hourly history (incomplete folders, cheap to write), the real cycle, and a newer
    // unfinished one that must be passed over.
    let start: jiff::Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
    for hour in 0..1000 {
        let id = SnapshotId::at(start + jiff::SignedDuration::from_hours(hour));
        f.storage
            .write(&format!("shared/{id}/in-progress.json"), &b"{}"[..])
            .await
            .unwrap();
    }
    let committed = f.cycle().await;
    let killed = "2099-01-01T000000Z";
    f.storage
        .write(&format!("shared/{killed}/in-progress.json"), &b"{}"[..])
        .await
        .unwrap();

    let lists = || f.server.as_ref().map(|s| s.list_requests());
    let before = lists();
    let cycle = Catalog::load_cycle(&f.storage, None, None).await.unwrap();
    let after = lists();
    let full = Catalog::load(&f.storage).await.unwrap();

    assert_eq!(cycle.latest_committed().unwrap().id, committed.id);
    let tenants: Vec<_> = cycle.databases[1..]
        .iter()
        .map(|d| (d.database.to_string(), d.snapshots.len()))
        .collect();
    let mut expected: Vec<_> = committed
        .shared
        .tenants
        .iter()
        .map(|t| (format!("tenant {}", t.tenant_id), 1))
        .collect();
    expected.sort();
    assert_eq!(
        tenants, expected,
        "every tenant of the cycle (by id), with its snapshot"
    );
    for db in &cycle.databases {
        let snapshot = &db.snapshots[0];
        assert_eq!(snapshot.state, SnapshotState::Complete);
        let listed = full.find(db.database, committed.id).unwrap();
        assert_eq!(
            (snapshot.size, snapshot.objects),
            (listed.size, listed.objects)
        );
    }
    if let (Some(before), Some(after)) = (before, after) {
        // The sources recorded, one window probe, the unfinished folder, the cycle's folder, the tenant
        // ids and one folder per tenant: none of it depends on the thousand older folders.
        assert_eq!(after - before, 5 + f.backed_up().len(), "list requests");
    }
}

async fn retention_keeps_exactly_n(f: Fixture) {
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(f.cycle().await.id);
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "cycles in the same second get distinct ids: {ids:?}"
    );
    // An unfinished leftover older than the newest complete snapshot goes too.
    let stale = "2001-01-01T000000Z";
    // So does a tenant's unfinished snapshot from a cycle that never committed…
    let tenant = f.demo.tenants[0];
    f.storage
        .write(
            &format!("tenants/{tenant}/2002-01-01T000000Z/in-progress.json"),
            &b"{}"[..],
        )
        .await
        .unwrap();
    // …but a manifest this build cannot read (a newer format, say) is never deleted.
    let corrupt = "2003-01-01T000000Z";
    f.storage
        .write(
            &format!("shared/{corrupt}/manifest.json"),
            &br#"{"format_version": 99}"#[..],
        )
        .await
        .unwrap();
    f.storage
        .write(&format!("shared/{stale}/in-progress.json"), &b"{}"[..])
        .await
        .unwrap();

    let catalog = Catalog::load(&f.storage).await.unwrap();
    let plan = PrunePlan::new(&catalog, NonZeroU32::new(2).unwrap(), Some(ids[3]), None);
    plan.execute(&f.storage).await.unwrap();
    let after = Catalog::load(&f.storage).await.unwrap();
    for db in &after.databases {
        let left: Vec<_> = db
            .snapshots
            .iter()
            .filter(|s| s.id.to_string() != corrupt)
            .map(|s| s.id)
            .collect();
        assert_eq!(
            left,
            ids[2..],
            "every database keeps exactly the retained cycles: {}",
            db.database
        );
    }
    assert!(
        after
            .find(Database::Shared, corrupt.parse().unwrap())
            .is_some(),
        "corrupt snapshots are kept"
    );
    // Keep 1 never deletes the snapshot just written.
    let plan = PrunePlan::new(&after, NonZeroU32::new(1).unwrap(), Some(ids[3]), None);
    assert!(plan.deletions.iter().all(|d| d.id != ids[3]));
}

async fn a_failing_tenant_is_reported_and_the_others_are_backed_up(f: Fixture) {
    let shared = open_database(&f.layout.db_path, OpenMode::Existing).unwrap();
    let broken = f.demo.tenants[0];
    let layout = f.demo.layout;
    let mut sources: Vec<TenantSource> = vec![TenantSource::new(broken, || {
        Err(hitkeep_data::DataError::Missing {
            path: "/nonexistent/tenant.db".into(),
        })
    })];
    sources.push(TenantSource::from_layout(&f.layout, f.demo.tenants[1]));
    let no_db_yet = uuid::Uuid::new_v4();
    sources.push(TenantSource::from_layout(&f.layout, no_db_yet));
    let tenants = CycleTenants::new(layout, Some(f.demo.default_tenant), sources);
    let report = run_cycle(&f.storage, shared, tenants, &f.options())
        .await
        .unwrap();
    assert!(!report.is_success());
    let failed: Vec<_> = report.failed_tenants().map(|(id, _)| *id).collect();
    assert_eq!(failed, [broken]);
    let states: BTreeMap<_, _> = report
        .shared
        .tenants
        .iter()
        .map(|t| (t.tenant_id, t.state.clone()))
        .collect();
    assert!(matches!(
        states[&f.demo.tenants[1]],
        TenantState::Complete { .. }
    ));
    let TenantState::Skipped { reason } = &states[&no_db_yet] else {
        panic!("{states:?}");
    };
    let path = f.layout.tenant_db(no_db_yet);
    assert!(
        reason.contains(&path.display().to_string()),
        "the reason names the path looked at: {reason}"
    );
    assert_eq!(report.skipped_tenants().count(), 1);
    assert!(
        !f.layout.tenant_db(no_db_yet).exists(),
        "no empty tenant database is created"
    );
    let catalog = Catalog::load(&f.storage).await.unwrap();
    assert_eq!(
        catalog.latest_committed().unwrap().id,
        report.id,
        "the cycle is committed, with the failure recorded"
    );
}

async fn verify_finds_a_damaged_object_and_deep_verify_passes_on_intact_data(f: Fixture) {
    let id = f.cycle().await.id;
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let scratch = f.dir.path().join("scratch");
    let report = verify_snapshot(&f.storage, &catalog, id, true, &scratch, None)
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.layout, Some(f.demo.layout));
    assert_eq!(report.databases.len(), 1 + f.backed_up().len());
    assert!(
        report
            .databases
            .iter()
            .all(|d| d.tables > 20 && d.files > 20),
        "{report:?}"
    );

    let tenant = f.demo.tenants[1];
    f.storage
        .write(
            &format!("tenants/{tenant}/{id}/events.parquet"),
            &b"not parquet"[..],
        )
        .await
        .unwrap();
    let report = verify_snapshot(&f.storage, &catalog, id, false, &scratch, None)
        .await
        .unwrap();
    assert!(!report.is_ok());
    let problems: Vec<&String> = report.databases.iter().flat_map(|d| &d.problems).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&format!("tenants/{tenant}/{id}/events.parquet")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cycle_is_refused_while_one_holds_the_lock() {
    let f = Fixture::new(false).await;
    let _held = CycleLock::acquire(&f.options().lock_file).unwrap();
    let shared = open_database(&f.layout.db_path, OpenMode::Existing).unwrap();
    let none = CycleTenants::new(TenantLayout::Split, None, Vec::new());
    let err = run_cycle(&f.storage, shared, none, &f.options())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
    assert!(err.to_string().contains("another backup cycle is running"));
    assert!(
        f.storage
            .list("", ListMode::Recursive)
            .await
            .unwrap()
            .is_empty(),
        "nothing was written"
    );
}

/// Side by side, a lane takes the next tenant as soon as its own is done: a slow tenant does not hold
/// up the ones queued behind a tenant that already finished. The manifest keeps the cycle's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tenant_does_not_hold_up_the_lane_beside_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let f = Fixture::new(false).await;
    let opened = Arc::new(AtomicUsize::new(0));
    let counted = |id: uuid::Uuid| {
        let (layout, opened) = (f.layout.clone(), opened.clone());
        TenantSource::new(id, move || {
            opened.fetch_add(1, Ordering::SeqCst);
            layout
                .open(&layout.tenant_db(id), OpenMode::Existing)
                .map(Some)
        })
    };
    let (slow, fast) = (
        f.demo.tenants[0],
        [f.demo.default_tenant, f.demo.tenants[1]],
    );
    // The slow tenant opens only once both others have been opened (or after 20 s): with the two
    // lanes held by it and the first fast tenant, the second fast one must start in the lane the
    // first one freed.
    let saw_both = Arc::new(AtomicUsize::new(0));
    let (layout, seen, waited) = (f.layout.clone(), opened.clone(), saw_both.clone());
    let slow_source = TenantSource::new(slow, move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while seen.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        waited.store(seen.load(Ordering::SeqCst), Ordering::SeqCst);
        layout
            .open(&layout.tenant_db(slow), OpenMode::Existing)
            .map(Some)
    });
    let sources = vec![slow_source, counted(fast[0]), counted(fast[1])];
    let tenants = CycleTenants::new(f.demo.layout, Some(f.demo.default_tenant), sources);
    let shared = open_database(&f.layout.db_path, OpenMode::Existing).unwrap();
    let options = f.options().with_concurrency(2);
    let report = run_cycle(&f.storage, shared, tenants, &options)
        .await
        .unwrap();
    assert!(report.is_success(), "{:?}", report.shared.tenants);
    assert_eq!(
        saw_both.load(Ordering::SeqCst),
        2,
        "both fast tenants were opened while the slow one was still opening"
    );
    let order: Vec<_> = report.shared.tenants.iter().map(|t| t.tenant_id).collect();
    assert_eq!(
        order,
        [slow, fast[0], fast[1]],
        "the manifest keeps the cycle's order"
    );
}

/// Retention counts cycles that restore whole: split cycles whose default tenant failed (a wrong data
/// path for a while) never push the last whole cycle out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_last_cycle_that_restores_whole() {
    let f = Fixture::new(false).await;
    let whole = f.cycle().await.id;
    let default_db = f.default_analytics();
    std::fs::rename(&default_db, f.dir.path().join("elsewhere.db")).unwrap();
    let mut broken = Vec::new();
    for _ in 0..2 {
        let report = f.cycle().await;
        assert!(!report.is_success());
        broken.push(report.id);
    }
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let plan = PrunePlan::new(&catalog, NonZeroU32::new(1).unwrap(), None, None);
    let pruned = pruned_cycles(&plan);
    assert!(
        pruned.is_empty(),
        "{pruned:?}: the whole cycle {whole} and the newer ones stay"
    );
    // Once a whole cycle is newer, the older ones go.
    std::fs::rename(f.dir.path().join("elsewhere.db"), &default_db).unwrap();
    let newest = f.cycle().await.id;
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let plan = PrunePlan::new(&catalog, NonZeroU32::new(1).unwrap(), None, None);
    let mut pruned: Vec<_> = pruned_cycles(&plan);
    pruned.sort();
    let mut expected = vec![whole];
    expected.extend(broken);
    assert_eq!(pruned, expected, "everything older than {newest}");
}

/// Each job stages in a folder of its own: a cycle leaves a running `backup verify --deep`'s folder
/// (its lock held) and its files alone, and sweeps the folder a killed cycle left (its lock file no
/// longer locked) and what older versions left in the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_leaves_a_running_verifys_staging_alone_and_sweeps_a_dead_cycles() {
    let f = Fixture::new(false).await;
    let verify = f
        .layout
        .claim_staging(hitkeep_data::JobKind::Verify)
        .unwrap();
    let downloaded = verify.path().join("shared/2026-01-01T000000Z/hits.parquet");
    std::fs::create_dir_all(downloaded.parent().unwrap()).unwrap();
    std::fs::write(&downloaded, b"a file verify is reading").unwrap();
    let dead = f
        .layout
        .staging_dir(hitkeep_data::JobKind::Backup, "4242-0-1");
    std::fs::create_dir_all(dead.join("shared")).unwrap();
    std::fs::write(dead.join(".lock"), b"").unwrap();
    std::fs::write(dead.join("shared/hits.parquet"), vec![0u8; 4096]).unwrap();
    let legacy = f.layout.staging_root().join("2026-01-01T000000Z");
    std::fs::create_dir_all(&legacy).unwrap();

    f.cycle().await;
    assert!(
        downloaded.exists(),
        "the running verify's file is still there"
    );
    assert!(!dead.exists(), "the dead cycle's folder was swept");
    assert!(!legacy.exists(), "an older version's folder was swept");
    let left: Vec<_> = std::fs::read_dir(f.layout.staging_root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(left, [verify.path().to_owned()]);
    drop(verify);
    assert!(!downloaded.exists());
}

/// Prepares every database two at a time, all of which must succeed, and swaps them in.
pub(crate) async fn prepare_and_commit(
    f: &Fixture,
    plan: &hitkeep_backup::RestorePlan,
) -> Vec<(Database, hitkeep_backup::RestoreOutcome)> {
    let stamp = SnapshotId::now();
    let prepared = plan
        .prepare_all(&f.storage, stamp, 2)
        .await
        .map_err(|(database, e)| format!("{database}: {e}"))
        .unwrap();
    assert_eq!(prepared.len(), plan.items.len());
    plan.commit_all(prepared, stamp).unwrap()
}
