//! The scheduler in tokio's paused time: hours of schedule in milliseconds, with exact instants.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hitkeep_service::{Finished, Job, JobKind, JobReport, RunContext, Scheduler, TokioClock};
use jiff::Timestamp;
use tokio::time::Instant;

/// A job that records when it ran (seconds since the test began) and takes `takes` of paused time.
struct Recording {
    kind: JobKind,
    takes: Duration,
    began: Instant,
    runs: Arc<Mutex<Vec<(JobKind, u64, bool)>>>,
}

impl Job for Recording {
    fn kind(&self) -> JobKind {
        self.kind
    }

    fn run(&self, ctx: RunContext) -> BoxFuture<'_, hitkeep_service::Result<JobReport>> {
        Box::pin(async move {
            let at = self.began.elapsed().as_secs();
            tokio::time::sleep(self.takes).await;
            // Whether a shutdown was asked for while it ran: it still ends normally.
            let stopped = ctx.stop.requested();
            self.runs.lock().unwrap().push((self.kind, at, stopped));
            Ok(JobReport::Other(format!("{} at {at}", self.kind)))
        })
    }
}

struct Setup {
    runs: Arc<Mutex<Vec<(JobKind, u64, bool)>>>,
    began: Instant,
}

impl Setup {
    fn new() -> Self {
        Setup {
            runs: Arc::default(),
            began: Instant::now(),
        }
    }

    fn job(&self, kind: JobKind, takes: u64) -> Arc<dyn Job> {
        Arc::new(Recording {
            kind,
            takes: Duration::from_secs(takes),
            began: self.began,
            runs: self.runs.clone(),
        })
    }

    fn runs(&self) -> Vec<(JobKind, u64, bool)> {
        self.runs.lock().unwrap().clone()
    }
}

fn scheduler() -> Scheduler {
    let clock = TokioClock::starting_at("2026-12-01T00:00:00Z".parse().unwrap());
    Scheduler::new(Arc::new(clock))
}

const MIN: u64 = 60;

#[tokio::test(start_paused = true)]
async fn jobs_run_on_their_intervals_one_at_a_time() {
    let setup = Setup::new();
    let finished = Arc::new(Mutex::new(Vec::<(JobKind, Timestamp, Timestamp)>::new()));
    let seen = finished.clone();
    // Backups every 10 minutes taking 2; the archive after a minute, daily, taking 15: the backup due
    // at 10:05 waits for it.
    let scheduler = scheduler()
        .add(
            setup.job(JobKind::Backup, 2 * MIN),
            Duration::from_secs(5),
            Duration::from_secs(10 * MIN),
        )
        .add(
            setup.job(JobKind::Archive, 15 * MIN),
            Duration::from_secs(MIN),
            Duration::from_secs(24 * 60 * MIN),
        );
    let wall = std::time::Instant::now();
    scheduler
        .run(
            tokio::time::sleep(Duration::from_secs(40 * MIN)),
            move |f: Finished| {
                assert!(f.outcome.is_ok());
                seen.lock().unwrap().push((f.kind, f.started, f.next));
            },
        )
        .await;
    use JobKind::{Archive, Backup};
    assert_eq!(
        setup.runs(),
        vec![
            (Backup, 5, false),
            // Due at 1:00 while the first cycle runs until 2:05.
            (Archive, 2 * MIN + 5, false),
            // Due at 10:05, after the archive run ends at 17:05.
            (Backup, 17 * MIN + 5, false),
            (Backup, 27 * MIN + 5, false),
            // Started at 37:05, it ends at 39:05, before the shutdown at 40:00.
            (Backup, 37 * MIN + 5, false),
        ]
    );
    // Start to start: the next cycle is announced an interval after this one began.
    let finished = finished.lock().unwrap();
    let (kind, started, next) = finished[2];
    assert_eq!(kind, Backup);
    assert_eq!(started.to_string(), "2026-12-01T00:17:05Z");
    assert_eq!(next.to_string(), "2026-12-01T00:27:05Z");
    // Paused time: forty minutes of schedule take no real minutes.
    assert!(
        wall.elapsed() < Duration::from_secs(10),
        "{:?}",
        wall.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_a_job_lets_it_end_then_stops() {
    let setup = Setup::new();
    let scheduler = scheduler().add(
        setup.job(JobKind::Backup, 5 * MIN),
        Duration::from_secs(5),
        Duration::from_secs(10 * MIN),
    );
    let mut finished = Vec::new();
    let started = Instant::now();
    scheduler
        .run(tokio::time::sleep(Duration::from_secs(MIN)), |f| {
            finished.push(f.kind);
        })
        .await;
    // The cycle began at 0:05, saw the shutdown at 1:00, ended at 5:05; no second cycle.
    assert_eq!(setup.runs(), vec![(JobKind::Backup, 5, true)]);
    assert_eq!(finished, vec![JobKind::Backup]);
    assert_eq!(started.elapsed(), Duration::from_secs(5 * MIN + 5));
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_while_idle_stops_at_once() {
    let setup = Setup::new();
    let scheduler = scheduler().add(
        setup.job(JobKind::Archive, 1),
        Duration::from_secs(MIN),
        Duration::from_secs(MIN),
    );
    let started = Instant::now();
    scheduler
        .run(tokio::time::sleep(Duration::from_secs(30)), |_| {
            panic!("no job is due before the shutdown")
        })
        .await;
    assert!(setup.runs().is_empty());
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_job_longer_than_its_interval_runs_again_right_after_not_twice() {
    let setup = Setup::new();
    let scheduler = scheduler().add(
        setup.job(JobKind::Backup, 3 * MIN),
        Duration::ZERO,
        Duration::from_secs(MIN),
    );
    scheduler
        .run(tokio::time::sleep(Duration::from_secs(7 * MIN)), |_| {})
        .await;
    let at: Vec<u64> = setup.runs().iter().map(|r| r.1).collect();
    // Back to back, never overlapping, no backlog of missed runs.
    assert_eq!(at, vec![0, 3 * MIN, 6 * MIN]);
}

#[tokio::test(start_paused = true)]
async fn without_jobs_it_waits_for_the_shutdown() {
    let started = Instant::now();
    scheduler()
        .run(tokio::time::sleep(Duration::from_secs(3600)), |_| {})
        .await;
    assert_eq!(started.elapsed(), Duration::from_secs(3600));
}
