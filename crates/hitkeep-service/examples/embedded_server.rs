//! A HitKeep server in miniature that embeds the backup engine, and a benchmark of what backups
//! cost a server that keeps ingesting.
//!
//! A running HitKeep server holds its DuckDB files open for writing, so no second process can back
//! them up: the engine runs inside the server and borrows the server's connections. This example
//! shows the whole arrangement:
//!
//! 1. **Open the databases as the server does**: `duckdb::Connection::open` on the shared database
//!    and on every tenant database of [`DataLayout`], one DuckDB instance per file, held for the
//!    process's life ([`Server`]).
//! 2. **Lend them to the engine**: [`Server`] implements [`HeldDatabases`], answering "is this file
//!    yours?" with a `try_clone` of its connection; [`Engine::embedded`] then never opens a file the
//!    server holds (a second instance on one file would corrupt it).
//! 3. **Ingest**: several tokio tasks append batches of hits, each through its own cloned
//!    connection inside `spawn_blocking` (DuckDB calls block), timing every batch.
//! 4. **Schedule the jobs in the same process**: a [`Scheduler`] with the backup job and the archive
//!    job, stopped by a shutdown future when the run ends; the running job is let finish.
//! 5. **Prove the backups consistent**: for every committed cycle, the `hits` row count of each
//!    database's snapshot (its manifest, counted in the export's own transaction) must lie between
//!    the rows committed before the cycle started and the rows sent before it ended; and the cycle is
//!    restored into scratch databases (`verify --deep`) whose row counts must equal the manifest's.
//!
//! It prints one JSON line on stdout (progress and logs go to stderr) and exits 1 when a cycle
//! failed or a snapshot is not consistent.
//!
//! # Running it
//!
//! Settings come from the environment, exactly as for the `hitkeep` binary (`HITKEEP_DB_PATH`,
//! `HITKEEP_DATA_PATH`, `HITKEEP_BACKUP_PATH`, `HITKEEP_S3_*`, …). On demo data:
//!
//! ```sh
//! source scripts/env.sh && cargo build --workspace --all-targets --locked
//! export HITKEEP_DB_PATH=/tmp/hk/hitkeep.db HITKEEP_DATA_PATH=/tmp/hk/data HITKEEP_BACKUP_PATH=/tmp/hk-backups
//! $CARGO_TARGET_DIR/debug/hitkeep demo --hits 1000000
//! $CARGO_TARGET_DIR/debug/examples/embedded_server --secs 30 --backups continuous
//! ```
//!
//! Options, as `--name value` or `EMBEDDED_SERVER_NAME=value` (the argument wins):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `--secs` | 30 | how long to ingest |
//! | `--batch` | 1000 | hits per batch (one appender flush, one commit) |
//! | `--tasks` | 4 | ingest tasks; task *i* writes to the *i*-th database that holds hits, round robin |
//! | `--backups` | `scheduled` | `off`; `scheduled` (`HITKEEP_BACKUP_INTERVAL`, first after 5 s, as the binary); `continuous` (back to back, from the start) |
//! | `--archive-after` | 60 | seconds until the first archive run (then daily, as the binary), or `off`; the rows it deletes are taken into the bounds |
//! | `--verify` | `deep` | `deep` (manifest bounds, and every cycle restored into scratch) or `manifest` (bounds only) |
//!
//! `--backups continuous` is what `cargo xtask bench` runs for its "online" panel, against
//! `--backups off` on the same data. Keep `HITKEEP_BACKUP_RETENTION` above the number of cycles a
//! run makes: a cycle pruned before the check cannot be checked, and counts as a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duckdb::Connection;
use duckdb::types::{TimeUnit, Value};
use futures::future::BoxFuture;
use hitkeep_backup::{Database, SnapshotId};
use hitkeep_config::{Config, Sources};
use hitkeep_data::{DataLayout, HeldDatabases};
use hitkeep_service::{
    ARCHIVE_INTERVAL, ArchiveJob, BackupJob, Engine, FIRST_ARCHIVE_DELAY, FIRST_BACKUP_DELAY,
    Finished, Job, JobKind, JobReport, RunContext, Scheduler, StatusBoard, SystemClock,
};
use serde_json::json;
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

#[tokio::main]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("embedded_server: {}", hitkeep_service::describe(e.as_ref()));
            std::process::exit(2);
        }
    }
}

/// The whole run; `Ok(false)` when a cycle failed or a snapshot is not consistent.
async fn run() -> Result<bool> {
    let options = Options::parse(std::env::args().skip(1).collect())?;
    let config = Config::load(&Sources::with_env(std::env::vars()))?;
    let settings = config.settings;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            settings.log.level.as_str(),
        ))
        .init();
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    if options.backups != Backups::Off && settings.backup.location.is_none() {
        return Err("backups need HITKEEP_BACKUP_PATH (or run with --backups off)".into());
    }

    // 1. The server opens its databases and keeps them open.
    let standalone = DataLayout::new(&settings.db_path, &settings.data_path);
    let server = Arc::new(Server::open(&standalone)?);
    let targets = Arc::new(server.ingest_targets(&standalone)?);
    if targets.is_empty() {
        return Err("no database holds hits: create demo data first (`hitkeep demo`)".into());
    }
    // 2. The engine borrows them.
    let engine = Engine::embedded(settings, server.clone());
    let board = Arc::new(StatusBoard::load(
        &engine.layout().status_file(),
        engine.settings(),
    ));

    // 4. The jobs, one at a time, with each backup cycle's ingest bounds recorded around it.
    let cycles = Arc::new(Mutex::new(Vec::new()));
    let in_cycle = Arc::new(AtomicBool::new(false));
    let mut scheduler = Scheduler::new(Arc::new(SystemClock));
    if let Some((first, every)) = options.backup_schedule(engine.settings().backup.interval) {
        let job = RecordedBackup {
            job: BackupJob {
                engine: engine.clone(),
                board: board.clone(),
                progress: None,
            },
            targets: targets.clone(),
            cycles: cycles.clone(),
            in_cycle: in_cycle.clone(),
        };
        scheduler = scheduler.add(Arc::new(job), first, every);
    }
    if let Some(first) = options.archive_after {
        let job = ArchiveJob {
            engine: engine.clone(),
            board,
        };
        scheduler = scheduler.add(Arc::new(job), first, ARCHIVE_INTERVAL);
    }
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let on_finished = {
        let targets = targets.clone();
        move |finished: Finished| account_archive(&targets, finished)
    };
    let jobs = scheduler.run(
        async {
            let _ = stopped.await;
        },
        on_finished,
    );

    // 3. Ingest for the run's length, then stop the scheduler (a running cycle finishes first).
    let ingest = async {
        let cpu_before = process_cpu();
        let outcome = ingest_for(&server, &targets, &options, &in_cycle).await;
        let cpu = process_cpu().saturating_sub(cpu_before);
        let _ = shutdown.send(());
        outcome.map(|ingest| (ingest, cpu))
    };
    let ((), ingest) = tokio::join!(jobs, ingest);
    let (ingest, cpu) = ingest?;

    // 5. Every committed cycle checked against what ingest had committed around it.
    let cycles = std::mem::take(&mut *cycles.lock().expect("cycles"));
    let checked = check_cycles(&engine, &targets, cycles, options.verify).await?;
    let ok = checked.iter().all(|c| c.ok());
    println!("{}", report(&options, &ingest, cpu, &checked, ok));
    Ok(ok)
}

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backups {
    Off,
    Scheduled,
    Continuous,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    Deep,
    Manifest,
}

#[derive(Debug)]
struct Options {
    secs: u64,
    batch: usize,
    tasks: usize,
    backups: Backups,
    archive_after: Option<Duration>,
    verify: Verify,
}

const NAMES: [&str; 6] = [
    "secs",
    "batch",
    "tasks",
    "backups",
    "archive-after",
    "verify",
];

impl Options {
    /// `--name value` (or `--name=value`) arguments over `EMBEDDED_SERVER_NAME` variables.
    fn parse(args: Vec<String>) -> Result<Options> {
        let mut given = BTreeMap::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let name = arg.strip_prefix("--").ok_or_else(|| {
                format!(
                    "unexpected argument {arg:?}; options are --{}",
                    NAMES.join(", --")
                )
            })?;
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => (
                    name.to_owned(),
                    args.next()
                        .ok_or_else(|| format!("--{name} needs a value"))?,
                ),
            };
            if !NAMES.contains(&name.as_str()) {
                return Err(format!(
                    "unknown option --{name}; options are --{}",
                    NAMES.join(", --")
                )
                .into());
            }
            given.insert(name, value);
        }
        let get = |name: &str| {
            given.get(name).cloned().or_else(|| {
                std::env::var(format!(
                    "EMBEDDED_SERVER_{}",
                    name.replace('-', "_").to_uppercase()
                ))
                .ok()
            })
        };
        let number = |name: &str, default: u64| -> Result<u64> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("--{name} must be a whole number, not {v:?}").into()),
            }
        };
        let backups = match get("backups").as_deref() {
            None | Some("scheduled") => Backups::Scheduled,
            Some("off") => Backups::Off,
            Some("continuous") => Backups::Continuous,
            Some(v) => {
                return Err(format!("--backups is off, scheduled or continuous, not {v:?}").into());
            }
        };
        let archive_after = match get("archive-after").as_deref() {
            Some("off") => None,
            None => Some(FIRST_ARCHIVE_DELAY),
            Some(_) => Some(Duration::from_secs(number("archive-after", 0)?)),
        };
        let verify = match get("verify").as_deref() {
            None | Some("deep") => Verify::Deep,
            Some("manifest") => Verify::Manifest,
            Some(v) => return Err(format!("--verify is deep or manifest, not {v:?}").into()),
        };
        Ok(Options {
            secs: number("secs", 30)?,
            batch: number("batch", 1000)?.max(1) as usize,
            tasks: number("tasks", 4)?.max(1) as usize,
            backups,
            archive_after,
            verify,
        })
    }

    /// When the first cycle runs and how often: as the binary does, back to back, or never.
    fn backup_schedule(&self, interval: Duration) -> Option<(Duration, Duration)> {
        match self.backups {
            Backups::Off => None,
            Backups::Scheduled => Some((FIRST_BACKUP_DELAY, interval)),
            // An interval of zero: the scheduler runs a job that took longer than its interval again
            // right after it (the configured interval has a minimum of a minute; the scheduler not).
            Backups::Continuous => Some((Duration::ZERO, Duration::ZERO)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server and its databases

/// The server's open databases: one DuckDB instance per file, opened at start, as HitKeep does.
struct Server {
    open: Mutex<Vec<(PathBuf, Connection)>>,
}

impl Server {
    /// Opens the shared database and every tenant database for writing.
    fn open(layout: &DataLayout) -> Result<Server> {
        let mut paths = vec![layout.db_path.clone()];
        paths.extend(layout.tenant_files()?.into_iter().map(|(_, p)| p));
        let mut open = Vec::new();
        for path in paths {
            let conn = Connection::open(&path)?;
            // HitKeep's setting on every connection: checkpoint once the WAL reaches 64 MB.
            conn.execute_batch("SET wal_autocheckpoint = '64MB'")?;
            open.push((path, conn));
        }
        Ok(Server {
            open: Mutex::new(open),
        })
    }

    /// A new connection to the server's instance of `path`.
    fn connect_to(&self, path: &Path) -> Option<duckdb::Result<Connection>> {
        let open = self.open.lock().expect("server connections");
        open.iter()
            .find(|(p, _)| p == path)
            .map(|(_, conn)| conn.try_clone())
    }

    /// The databases that hold hits, with their sites and current row count.
    fn ingest_targets(&self, layout: &DataLayout) -> Result<Vec<Arc<Target>>> {
        let open = self.open.lock().expect("server connections");
        let mut targets = Vec::new();
        for (path, conn) in open.iter() {
            let mut stmt =
                conn.prepare("SELECT DISTINCT CAST(site_id AS VARCHAR) FROM hits ORDER BY 1")?;
            let sites = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<duckdb::Result<Vec<_>>>()?;
            if sites.is_empty() {
                // The shared database after HitKeep 2.13's split: its analytics tables are empty.
                continue;
            }
            let base: i64 = conn.query_row("SELECT count(*) FROM hits", [], |r| r.get(0))?;
            let database = match tenant_of(layout, path) {
                Some(tenant_id) => Database::Tenant { tenant_id },
                None => Database::Shared,
            };
            targets.push(Arc::new(Target {
                path: path.clone(),
                database,
                sites: sites
                    .iter()
                    .map(|s| Uuid::parse_str(s))
                    .collect::<Result<_, _>>()?,
                base: u64::try_from(base)?,
                committed: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                archived: AtomicU64::new(0),
            }));
        }
        Ok(targets)
    }
}

// `pause_rewrites` keeps its default (it holds nothing back): this server only appends. One that
// updated rows older than a site's retention in place would hold a lock's shared side around those
// updates and return its exclusive side there, for the archive's delete.
impl HeldDatabases for Server {
    fn connect(&self, path: &Path) -> Option<duckdb::Result<Connection>> {
        self.connect_to(path)
    }
}

fn tenant_of(layout: &DataLayout, path: &Path) -> Option<Uuid> {
    let folder = path.parent()?;
    (folder.parent()? == layout.tenants_dir().as_path())
        .then(|| Uuid::parse_str(folder.file_name()?.to_str()?).ok())
        .flatten()
}

/// A database that receives hits, and what ingest did to it (counted from the ingest side).
struct Target {
    path: PathBuf,
    database: Database,
    sites: Vec<Uuid>,
    /// Rows of `hits` before ingest started.
    base: u64,
    /// Rows whose batch was committed (counted after the commit returned): a lower bound.
    committed: AtomicU64,
    /// Rows whose batch was sent (counted before the append began): an upper bound.
    sent: AtomicU64,
    /// Rows the archive job deleted (jobs never overlap, so this is exact between jobs).
    archived: AtomicU64,
}

impl Target {
    /// Fewest rows `hits` can hold now.
    fn at_least(&self) -> u64 {
        (self.base + self.committed.load(Ordering::SeqCst))
            .saturating_sub(self.archived.load(Ordering::SeqCst))
    }

    /// Most rows `hits` can hold now.
    fn at_most(&self) -> u64 {
        (self.base + self.sent.load(Ordering::SeqCst))
            .saturating_sub(self.archived.load(Ordering::SeqCst))
    }
}

/// Adds each archive run's deleted hits to the database they were deleted from.
fn account_archive(targets: &[Arc<Target>], finished: Finished) {
    match finished.outcome {
        Ok(JobReport::Archive(run)) => {
            for site in run.sites.iter().flatten() {
                let hits = site.counts.get("hits").copied().unwrap_or(0);
                let target = targets
                    .iter()
                    .find(|t| t.sites.contains(&site.policy.site_id));
                if let (Some(target), true) = (target, site.file.is_some()) {
                    target.archived.fetch_add(hits, Ordering::SeqCst);
                }
            }
            tracing::info!(took = ?finished.took, "archive run done");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(job = %finished.kind, error = %hitkeep_service::describe(&e), "job failed")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ingest

const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) HitKeepEmbeddedExample";
const PATHS: [&str; 5] = ["/", "/pricing", "/blog", "/docs", "/docs/s3"];
const REFERRERS: [&str; 3] = ["", "https://www.google.com/", "https://github.com/"];
const PLACES: [(&str, &str, &str); 4] = [
    ("DE", "Berlin", "de-DE"),
    ("US", "New York", "en-US"),
    ("FR", "Paris", "fr-FR"),
    ("JP", "Tokyo", "ja-JP"),
];

/// One page view, as a tracker request brings it in.
struct Hit {
    id: String,
    site: String,
    session: String,
    page: String,
    at_micros: i64,
    n: usize,
}

/// A batch of `size` hits for `sites`, timestamped now.
fn batch(sites: &[Uuid], size: usize, counter: &mut usize) -> Vec<Hit> {
    let now = jiff::Timestamp::now().as_microsecond();
    (0..size)
        .map(|_| {
            *counter += 1;
            Hit {
                id: Uuid::new_v4().to_string(),
                site: sites[*counter % sites.len()].to_string(),
                session: Uuid::new_v4().to_string(),
                page: Uuid::new_v4().to_string(),
                at_micros: now,
                n: *counter,
            }
        })
        .collect()
}

/// Appends `hits` to `hits` and commits them (an appender's flush is one transaction).
fn append(conn: &Connection, hits: &[Hit]) -> duckdb::Result<()> {
    let mut appender = conn.appender("hits")?;
    for h in hits {
        let (country, city, language) = PLACES[h.n % PLACES.len()];
        let campaign = (h.n % 10 == 0).then_some("launch");
        appender.append_row(duckdb::params![
            h.id,
            h.site,
            h.session,
            h.page,
            Value::Timestamp(TimeUnit::Microsecond, h.at_micros),
            PATHS[h.n % PATHS.len()],
            "example.com",
            REFERRERS[h.n % REFERRERS.len()],
            USER_AGENT,
            1280,
            720,
            1920,
            1080,
            language,
            h.n % 3 == 0,
            country,
            campaign.map(|_| "newsletter"),
            campaign.map(|_| "email"),
            campaign,
            None::<&str>,
            None::<&str>,
            format!("Region {}", h.n % 8),
            city,
            "ISP 1",
            64500,
            "AS Org 1",
            None::<&str>,
        ])?;
    }
    appender.flush()
}

/// One committed batch: how long it took, and whether a backup cycle was running when it began.
#[derive(Clone, Copy)]
struct BatchSample {
    took: Duration,
    in_cycle: bool,
}

/// What the ingest tasks did.
struct Ingest {
    rows: u64,
    elapsed: Duration,
    batches: Vec<BatchSample>,
    targets: usize,
}

/// Runs the ingest tasks for `options.secs`, task `i` writing to target `i % targets`.
async fn ingest_for(
    server: &Server,
    targets: &[Arc<Target>],
    options: &Options,
    in_cycle: &Arc<AtomicBool>,
) -> Result<Ingest> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..options.tasks {
        let target = targets[i % targets.len()].clone();
        let conn = server
            .connect_to(&target.path)
            .expect("the server holds every target")?;
        let (stop, in_cycle, size) = (stop.clone(), in_cycle.clone(), options.batch);
        tasks.push(tokio::spawn(ingest_task(
            target, conn, size, stop, in_cycle,
        )));
    }
    tokio::time::sleep(Duration::from_secs(options.secs)).await;
    stop.store(true, Ordering::SeqCst);
    let mut batches = Vec::new();
    for task in tasks {
        batches.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let rows = targets
        .iter()
        .map(|t| t.committed.load(Ordering::SeqCst))
        .sum();
    Ok(Ingest {
        rows,
        elapsed,
        batches,
        targets: targets.len(),
    })
}

/// One ingest task: batches through its own connection, each on a blocking thread, until `stop`.
async fn ingest_task(
    target: Arc<Target>,
    mut conn: Connection,
    size: usize,
    stop: Arc<AtomicBool>,
    in_cycle: Arc<AtomicBool>,
) -> Result<Vec<BatchSample>> {
    let mut samples = Vec::new();
    let mut counter = 0;
    while !stop.load(Ordering::SeqCst) {
        let hits = batch(&target.sites, size, &mut counter);
        target.sent.fetch_add(size as u64, Ordering::SeqCst);
        let during = in_cycle.load(Ordering::SeqCst);
        let began = Instant::now();
        let (back, appended) = tokio::task::spawn_blocking(move || {
            let appended = append(&conn, &hits);
            (conn, appended)
        })
        .await?;
        conn = back;
        appended?;
        samples.push(BatchSample {
            took: began.elapsed(),
            in_cycle: during,
        });
        target.committed.fetch_add(size as u64, Ordering::SeqCst);
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------------------------
// Backups, recorded with the ingest counts around them

/// The engine's backup job, with what ingest had committed before each cycle and sent by its end.
struct RecordedBackup {
    job: BackupJob,
    targets: Arc<Vec<Arc<Target>>>,
    cycles: Arc<Mutex<Vec<CycleRecord>>>,
    in_cycle: Arc<AtomicBool>,
}

/// One cycle as the ingest side saw it.
struct CycleRecord {
    outcome: Result<SnapshotId, String>,
    /// Tenants the committed cycle lists as failed.
    failed_tenants: Vec<String>,
    took: Duration,
    /// Per target: (at least, at most) rows of `hits` the snapshot may hold.
    bounds: Vec<(u64, u64)>,
}

impl Job for RecordedBackup {
    fn kind(&self) -> JobKind {
        JobKind::Backup
    }

    fn run(&self, ctx: RunContext) -> BoxFuture<'_, hitkeep_service::Result<JobReport>> {
        Box::pin(async move {
            let at_least: Vec<u64> = self.targets.iter().map(|t| t.at_least()).collect();
            self.in_cycle.store(true, Ordering::SeqCst);
            let began = Instant::now();
            let outcome = self.job.run(ctx).await;
            let took = began.elapsed();
            self.in_cycle.store(false, Ordering::SeqCst);
            let at_most = self.targets.iter().map(|t| t.at_most());
            let (id, failed_tenants) = match &outcome {
                Ok(JobReport::Backup(r)) => (
                    Ok(r.id),
                    r.failed_tenants()
                        .map(|(t, why)| format!("{t}: {why}"))
                        .collect(),
                ),
                Ok(other) => (Err(format!("unexpected report {other:?}")), Vec::new()),
                Err(e) => (Err(hitkeep_service::describe(e)), Vec::new()),
            };
            tracing::info!(cycle = ?id, ?took, "backup cycle done");
            self.cycles.lock().expect("cycles").push(CycleRecord {
                outcome: id,
                failed_tenants,
                took,
                bounds: at_least.into_iter().zip(at_most).collect(),
            });
            outcome
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Consistency

/// One cycle, checked.
struct Checked {
    record: CycleRecord,
    /// Per target: the snapshot's `hits` count, or why there is none.
    hits: Vec<Result<u64, String>>,
    /// What restoring it into scratch found wrong (`None`: not restored).
    restored: Option<Vec<String>>,
}

impl Checked {
    fn ok(&self) -> bool {
        self.record.outcome.is_ok()
            && self.record.failed_tenants.is_empty()
            && self.problems().is_empty()
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (hits, (low, high)) in self.hits.iter().zip(&self.record.bounds) {
            match hits {
                Ok(n) if low <= n && n <= high => {}
                Ok(n) => problems.push(format!("hits {n} outside [{low}, {high}]")),
                Err(e) => problems.push(e.clone()),
            }
        }
        problems.extend(self.restored.iter().flatten().cloned());
        problems
    }
}

/// Reads every committed cycle's manifests from the destination and, with [`Verify::Deep`],
/// restores it into scratch databases (`verify --deep`: the imported row counts must equal the
/// manifest's, which were counted in the export's transaction).
async fn check_cycles(
    engine: &Engine,
    targets: &[Arc<Target>],
    cycles: Vec<CycleRecord>,
    verify: Verify,
) -> Result<Vec<Checked>> {
    if cycles.is_empty() {
        return Ok(Vec::new());
    }
    let catalog = engine.list().await?.catalog;
    let mut checked = Vec::new();
    for record in cycles {
        let Ok(id) = record.outcome else {
            checked.push(Checked {
                record,
                hits: Vec::new(),
                restored: None,
            });
            continue;
        };
        let hits: Vec<Result<u64, String>> =
            targets
                .iter()
                .map(|t| {
                    match catalog
                        .find(t.database, id)
                        .and_then(|s| s.manifest.as_ref())
                    {
                        Some(m) => m.tables.get("hits").copied().ok_or_else(|| {
                            format!("{}: the manifest has no hits table", t.database)
                        }),
                        None => Err(format!("{}: snapshot {id} pruned or missing", t.database)),
                    }
                })
                .collect();
        let restored = match verify {
            Verify::Manifest => None,
            Verify::Deep => Some(match engine.verify(Some(&id.to_string()), true).await {
                Ok(report) => report
                    .databases
                    .iter()
                    .flat_map(|d| {
                        d.problems
                            .iter()
                            .map(move |p| format!("{}: {p}", d.database))
                    })
                    .collect(),
                Err(e) => vec![format!("restore failed: {}", hitkeep_service::describe(&e))],
            }),
        };
        tracing::info!(%id, "cycle checked");
        checked.push(Checked {
            record,
            hits,
            restored,
        });
    }
    Ok(checked)
}

// ---------------------------------------------------------------------------------------------
// The report

/// The nearest-rank percentile `q` (0..=1) of `sorted`, in milliseconds.
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn latencies(batches: &[BatchSample], keep: impl Fn(&BatchSample) -> bool) -> Vec<Duration> {
    let mut v: Vec<Duration> = batches.iter().filter(|b| keep(b)).map(|b| b.took).collect();
    v.sort_unstable();
    v
}

fn report(
    options: &Options,
    ingest: &Ingest,
    cpu: Duration,
    checked: &[Checked],
    ok: bool,
) -> serde_json::Value {
    let all = latencies(&ingest.batches, |_| true);
    let during = latencies(&ingest.batches, |b| b.in_cycle);
    let secs = ingest.elapsed.as_secs_f64();
    let snapshots: Vec<serde_json::Value> = checked
        .iter()
        .map(|c| {
            json!({
                "id": c.record.outcome.as_ref().map(ToString::to_string).ok(),
                "error": c.record.outcome.as_ref().err(),
                "took_s": c.record.took.as_secs_f64(),
                "hits": c.hits.iter().zip(&c.record.bounds).map(|(h, (low, high))| json!({
                    "snapshot": h.as_ref().ok(), "at_least": low, "at_most": high,
                })).collect::<Vec<_>>(),
                "restored": c.restored.as_ref().map(|p| if p.is_empty() { "ok" } else { "problems" }),
                "failed_tenants": c.record.failed_tenants,
                "problems": c.problems(),
            })
        })
        .collect();
    let committed = checked.iter().filter(|c| c.record.outcome.is_ok()).count();
    json!({
        "backups": format!("{:?}", options.backups).to_lowercase(),
        "secs": secs,
        "tasks": options.tasks,
        "databases": ingest.targets,
        "batch_rows": options.batch,
        "rows": ingest.rows,
        "rows_per_sec": ingest.rows as f64 / secs.max(1e-9),
        "batches": all.len(),
        "batch_p50_ms": percentile_ms(&all, 0.50),
        "batch_p99_ms": percentile_ms(&all, 0.99),
        "batch_max_ms": all.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        "batches_in_cycles": during.len(),
        "batch_p99_ms_in_cycles": percentile_ms(&during, 0.99),
        "cpu_s": cpu.as_secs_f64(),
        "cycles": committed,
        "cycles_failed": checked.len() - committed,
        "cycle_s_total": checked.iter().map(|c| c.record.took.as_secs_f64()).sum::<f64>(),
        "snapshots": snapshots,
        "consistent": ok,
    })
}

/// This process's user and system CPU time so far (`/proc/self/stat`, in clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name's closing parenthesis; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}
