//! Runs jobs on their intervals, one at a time, until a shutdown signal.
//!
//! Time comes from tokio (`tokio::time`), so a test pauses it and the scheduler's hours pass in
//! milliseconds; the wall-clock times it reports come from a [`Clock`]. Shutdown lets the running job
//! end: a backup cycle finishes (dropping it would leave multipart uploads unaborted and a blocking
//! export writing into a removed folder), an archive run stops before its next site. What the caller
//! does on a second signal (exit at once) is its business.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::time::Instant;

use crate::error::Result;

/// Where wall-clock time comes from.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Wall-clock time that follows tokio's clock from a starting instant: under paused time (tests) it
/// advances exactly as the scheduler's timers do.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    start: Instant,
    at_start: Timestamp,
}

impl TokioClock {
    /// A clock that reads `at_start` now.
    pub fn starting_at(at_start: Timestamp) -> Self {
        TokioClock {
            start: Instant::now(),
            at_start,
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = jiff::SignedDuration::try_from(self.start.elapsed()).unwrap_or_default();
        self.at_start
            .saturating_add(elapsed)
            .unwrap_or(self.at_start)
    }
}

/// Which job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobKind {
    /// A backup cycle.
    Backup,
    /// A retention archive run.
    Archive,
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobKind::Backup => "backup",
            JobKind::Archive => "archive",
        })
    }
}

/// Set once a shutdown was asked for; jobs that can stop between steps look at it.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Whether the scheduler is shutting down.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What a job is told when it runs.
#[derive(Clone, Debug)]
pub struct RunContext {
    /// When it started.
    pub started: Timestamp,
    /// When the scheduler runs it next, if it goes on.
    pub next: Timestamp,
    /// Set when a shutdown is asked for while it runs.
    pub stop: Stop,
}

/// A job the scheduler runs.
pub trait Job: Send + Sync {
    /// Which job this is.
    fn kind(&self) -> JobKind;
    /// Runs it once. What it reports goes to the scheduler's caller.
    fn run(&self, ctx: RunContext) -> BoxFuture<'_, Result<JobReport>>;
}

/// What a job run did.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobReport {
    /// A committed cycle (some tenants may have failed; see its report).
    Backup(Box<hitkeep_backup::CycleReport>),
    /// An archive run.
    Archive(crate::jobs::ArchiveRun),
    /// A job of the caller's.
    Other(String),
}

/// One finished run, as the scheduler hands it to its caller.
#[derive(Debug)]
pub struct Finished {
    /// Which job.
    pub kind: JobKind,
    /// When it started and how long it took.
    pub started: Timestamp,
    /// How long it took.
    pub took: Duration,
    /// When it runs next (unless the scheduler stops).
    pub next: Timestamp,
    /// What it did.
    pub outcome: Result<JobReport>,
}

struct Entry {
    job: Arc<dyn Job>,
    first: Duration,
    every: Duration,
}

/// Runs jobs one after another, never overlapping: when two are due, the one due first goes first,
/// and a job that took longer than its interval runs again right after.
pub struct Scheduler {
    clock: Arc<dyn Clock>,
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("jobs", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler without jobs, reading wall-clock time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Scheduler {
            clock,
            entries: Vec::new(),
        }
    }

    /// Adds `job`, first run `first` after [`Scheduler::run`] starts, then every `every`
    /// (start to start).
    pub fn add(mut self, job: Arc<dyn Job>, first: Duration, every: Duration) -> Self {
        self.entries.push(Entry { job, first, every });
        self
    }

    /// Runs the jobs until `shutdown` resolves, handing each finished run to `finished`. A shutdown
    /// while a job runs lets it end first (it sees [`RunContext::stop`]).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
        mut finished: impl FnMut(Finished) + Send,
    ) {
        let mut shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(shutdown);
        let start = Instant::now();
        let mut due: Vec<Instant> = self.entries.iter().map(|e| start + e.first).collect();
        loop {
            // The job due first; the earliest added wins a tie.
            let Some(i) = (0..due.len()).min_by_key(|&i| (due[i], i)) else {
                // Nothing to run: wait for the shutdown.
                shutdown.await;
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(due[i]) => {}
                () = &mut shutdown => return,
            }
            let stop = Stop::default();
            let entry = &self.entries[i];
            let began = Instant::now();
            due[i] = began + entry.every;
            let next = self.clock.now() + entry.every;
            let ctx = RunContext {
                started: self.clock.now(),
                next,
                stop: stop.clone(),
            };
            let (job, started) = (entry.job.clone(), ctx.started);
            let run = job.run(ctx);
            tokio::pin!(run);
            let mut stopping = false;
            let outcome = loop {
                tokio::select! {
                    outcome = &mut run => break outcome,
                    () = &mut shutdown, if !stopping => {
                        stopping = true;
                        stop.request();
                    }
                }
            };
            finished(Finished {
                kind: job.kind(),
                started,
                took: began.elapsed(),
                next,
                outcome,
            });
            if stopping {
                return;
            }
        }
    }
}
