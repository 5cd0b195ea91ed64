//! Which database of a restore or a backup cycle runs beside another and which runs alone.
//!
//! Both run databases two at a time by default (a cycle of only small databases three:
//! `cycle::SMALL_DATABASE_BYTES`), each DuckDB instance with its share of the limits. With an odd
//! number of databases the last one used to run by itself on its share: one core idle for the tail.
//! - A restore's imports are mostly single-threaded DuckDB work (a table's load at one thread, its
//!   key, its index). Alone with the whole limits a load runs on every thread (measured on one
//!   3.2M-hit database: load 7.8 s on one thread, 4.0 s on two; key and index about the same).
//! - A cycle's exports to S3 get a thread each, since uploads need the other cores; the last of five
//!   databases exported alone on one thread for a quarter of a backup at 1M and 4M hits.
//!
//! So the last database to start waits for the others when they are nearly done and then runs alone.
//! Where the sizes are known up front (a restore's downloads), "last" means that what is left to start
//! is small beside it: HitKeep 2.13's shared database, a few MiB against tenants of hundreds, is the
//! last download of a restore, and it kept the last tenant from running alone.
//! "Nearly" is judged from the pace of the databases already finished beside others in the same run;
//! without one, or with the others far from done, it runs beside them as before.
//!
//! Nothing here decides correctness: every database still runs within the limits it is given, and an
//! import that runs out of memory beside another runs again alone ([`crate::RestorePlan`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The last database waits for the ones still running when what is left of them is below this share
/// of its own time beside them. Measured on imports at 16M hits (five databases): the last one took
/// 17.6 s beside the others' tails and 12.1 s alone (0.69: the load halves, the key and index builds
/// do not shorten), so waiting breaks even near 0.3; a quarter leaves a margin for a wrong guess. An
/// export alone gains at least as much (every step of it is multi-threaded).
const WAIT_SHARE: f64 = 0.25;

/// Databases still to start that together are below this share of the one starting now do not keep
/// it from being the last: they run after it, in less time than running alone saves it (about 0.3 of
/// its time, measured for [`WAIT_SHARE`]).
const TAIL_SHARE: f64 = 0.1;

/// What the databases of one run know of each other. No `Default`: lanes with nothing pending would
/// take every database for the last.
#[derive(Debug)]
pub(crate) struct Lanes(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    /// Whether the last database may run alone at all.
    last_alone: bool,
    /// Databases that have called neither [`Lanes::start`] nor [`Lanes::forgo`]. While one that
    /// failed early calls neither, it counts as still to start: on counted lanes no database runs
    /// alone then, on sized ones only a database it is small beside.
    pending: usize,
    /// Sized lanes: each database's size by id, and the sum of those not started yet ([`Lanes::forgo`]
    /// names no database, so a forgone one stays in the sum: none forgoes on sized lanes).
    sizes: Option<(Vec<u64>, u64)>,
    /// Databases running beside others: their bytes and when they started.
    running: Vec<(usize, u64, Instant)>,
    /// Bytes and seconds of the databases that finished beside others: their pace.
    done: (u64, f64),
}

/// How a database's import or export runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Way {
    /// Beside others, with a share of the limits.
    Beside,
    /// Alone with the whole limits, once the others are done.
    Alone,
}

impl Lanes {
    /// Lanes for `databases` still to start; without `last_alone`, every one runs beside.
    pub(crate) fn new(databases: usize, last_alone: bool) -> Lanes {
        Lanes(Mutex::new(State {
            last_alone,
            pending: databases,
            ..State::default()
        }))
    }

    /// Lanes for databases of `sizes` still to start: one is the last when those left after it are
    /// together under [`TAIL_SHARE`] of it.
    pub(crate) fn sized(sizes: Vec<u64>, last_alone: bool) -> Lanes {
        let left = sizes.iter().sum();
        Lanes(Mutex::new(State {
            last_alone,
            pending: sizes.len(),
            sizes: Some((sizes, left)),
            ..State::default()
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Database `id` (of `bytes`) starts: how it should run. Call once per database, with its turn
    /// held. On [`Way::Alone`], release the turn and take all of them; on [`Way::Beside`], call
    /// [`Lanes::end`] when the attempt ends, whatever its outcome.
    pub(crate) fn start(&self, id: usize, bytes: u64) -> Way {
        self.start_at(id, bytes, Instant::now())
    }

    fn start_at(&self, id: usize, bytes: u64, now: Instant) -> Way {
        let mut state = self.state();
        state.pending = state.pending.saturating_sub(1);
        // On sized lanes the size given for `id` counts, whatever `bytes` says.
        let own = match &mut state.sizes {
            Some((sizes, left)) => {
                let own = sizes.get(id).copied().unwrap_or(bytes);
                *left = left.saturating_sub(own);
                own
            }
            None => bytes,
        };
        let others: Vec<(u64, Duration)> = state
            .running
            .iter()
            .map(|(_, b, at)| (*b, now - *at))
            .collect();
        let last = state.last_alone && state.nothing_big_left(own);
        let way = if last && wait_to_run_alone(bytes, &others, state.pace()) {
            Way::Alone
        } else {
            Way::Beside
        };
        if way == Way::Beside {
            state.running.push((id, bytes, now));
        }
        way
    }

    /// A database that will not run after all (skipped, or failed before it started): it no longer
    /// keeps the last one from running alone.
    pub(crate) fn forgo(&self) {
        let mut state = self.state();
        state.pending = state.pending.saturating_sub(1);
    }

    /// Database `id` ended; those that `succeeded` beside others set the pace.
    pub(crate) fn end(&self, id: usize, succeeded: bool) {
        self.end_at(id, succeeded, Instant::now());
    }

    fn end_at(&self, id: usize, succeeded: bool, now: Instant) {
        let mut state = self.state();
        let Some(at) = state.running.iter().position(|(i, ..)| *i == id) else {
            return;
        };
        let (_, bytes, started) = state.running.swap_remove(at);
        if succeeded {
            state.done.0 = state.done.0.saturating_add(bytes);
            state.done.1 += (now - started).as_secs_f64();
        }
    }
}

impl State {
    /// Whether no database still to start is worth running beside one of `bytes`.
    fn nothing_big_left(&self, bytes: u64) -> bool {
        self.pending == 0
            || self
                .sizes
                .as_ref()
                .is_some_and(|(_, left)| (*left as f64) < TAIL_SHARE * bytes as f64)
    }

    /// Bytes per second of one database beside others, once one has finished.
    fn pace(&self) -> Option<f64> {
        let (bytes, secs) = self.done;
        (bytes > 0 && secs > 0.0).then(|| bytes as f64 / secs)
    }
}

/// Whether the last database to start (of `bytes`) should wait for the `running` ones (bytes, time so
/// far) and run alone: at once when none runs; when they are expected, at `pace`, to be done within
/// [`WAIT_SHARE`] of its own time beside them; never without a pace to judge by.
fn wait_to_run_alone(bytes: u64, running: &[(u64, Duration)], pace: Option<f64>) -> bool {
    if running.is_empty() {
        return true;
    }
    let Some(pace) = pace else {
        return false;
    };
    let left = running
        .iter()
        .map(|(b, so_far)| *b as f64 / pace - so_far.as_secs_f64())
        .fold(0.0_f64, f64::max);
    left < WAIT_SHARE * (bytes as f64 / pace)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;
    const GB: u64 = 1 << 30;

    #[test]
    fn the_last_database_waits_only_for_databases_nearly_done() {
        let secs = Duration::from_secs;
        // Alone already: no wait.
        assert!(wait_to_run_alone(100 * MB, &[], None));
        // No database has finished: no pace, no guess.
        assert!(!wait_to_run_alone(100 * MB, &[(100 * MB, secs(9))], None));
        let pace = Some(10.0 * MB as f64); // 10 s per 100 MiB
        // The other started with it: 10 s left of its 10 s.
        assert!(!wait_to_run_alone(100 * MB, &[(100 * MB, secs(0))], pace));
        // The other is 0.5 s from done: waiting pays.
        assert!(wait_to_run_alone(
            100 * MB,
            &[(100 * MB, Duration::from_millis(9500))],
            pace
        ));
        // A small last database is not worth waiting 2 s for.
        assert!(!wait_to_run_alone(10 * MB, &[(100 * MB, secs(8))], pace));
        // Running past its expected end counts as nearly done.
        assert!(wait_to_run_alone(100 * MB, &[(100 * MB, secs(30))], pace));
    }

    #[test]
    fn only_the_last_database_runs_alone_and_only_finished_ones_set_the_pace() {
        let lanes = Lanes::new(3, true);
        assert_eq!(lanes.start(0, 100 * MB), Way::Beside);
        assert_eq!(lanes.start(1, 100 * MB), Way::Beside);
        lanes.end(0, false); // failed: it sets no pace
        // The last one, beside database 1, with no pace to judge how near it is to done.
        assert_eq!(lanes.start(2, 100 * MB), Way::Beside);
        lanes.end(1, true);
        lanes.end(2, true);

        // With none running, the last runs alone...
        let lanes = Lanes::new(2, true);
        assert_eq!(lanes.start(0, MB), Way::Beside);
        lanes.end(0, false);
        assert_eq!(lanes.start(1, MB), Way::Alone);
        // ...unless told never to.
        let lanes = Lanes::new(1, false);
        assert_eq!(lanes.start(0, MB), Way::Beside);
    }

    #[test]
    fn a_database_forgone_no_longer_keeps_the_last_from_running_alone() {
        let lanes = Lanes::new(3, true);
        assert_eq!(lanes.start(0, MB), Way::Beside);
        lanes.end(0, true);
        // The second never starts (a tenant with no file): until it says so, the third is not last.
        assert_eq!(lanes.start(2, MB), Way::Beside);
        lanes.end(2, true);
        let lanes = Lanes::new(3, true);
        assert_eq!(lanes.start(0, MB), Way::Beside);
        lanes.end(0, true);
        lanes.forgo();
        assert_eq!(lanes.start(2, MB), Way::Alone);
    }

    #[test]
    fn a_database_is_the_last_when_only_small_ones_are_left_to_start() {
        // Five tenants of 300 MiB and a shared database of 5 MiB, which downloads last.
        let mut sizes = vec![300 * MB; 5];
        sizes.push(5 * MB);
        let lanes = Lanes::sized(sizes, true);
        for id in 0..4 {
            assert_eq!(lanes.start(id, 300 * MB), Way::Beside);
            lanes.end(id, false);
        }
        assert_eq!(lanes.start(4, 300 * MB), Way::Alone);
        assert_eq!(lanes.start(5, 5 * MB), Way::Alone);
        // A database left to start that is not small keeps the one before it beside.
        let lanes = Lanes::sized(vec![300 * MB, 300 * MB, 40 * MB], true);
        assert_eq!(lanes.start(0, 300 * MB), Way::Beside);
        lanes.end(0, false);
        assert_eq!(lanes.start(1, 300 * MB), Way::Beside);
        // Counted lanes know no sizes: a small database still to start keeps the big one beside.
        let lanes = Lanes::new(3, true);
        assert_eq!(lanes.start(0, 300 * MB), Way::Beside);
        lanes.end(0, false);
        assert_eq!(lanes.start(1, 300 * MB), Way::Beside);
        lanes.end(1, false);
        assert_eq!(lanes.start(2, 5 * MB), Way::Alone);
    }

    #[test]
    fn the_last_by_size_still_waits_only_for_databases_nearly_done() {
        let t0 = Instant::now();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let lanes = Lanes::sized(vec![100 * MB, 100 * MB, 100 * MB, MB], true);
        assert_eq!(lanes.start_at(0, 100 * MB, at(0.0)), Way::Beside);
        assert_eq!(lanes.start_at(1, 100 * MB, at(5.0)), Way::Beside);
        lanes.end_at(0, true, at(10.0)); // 10 s per 100 MiB
        // Only 1 MiB left after it, but database 1 has 5 s of its 10 to go: beside.
        assert_eq!(lanes.start_at(2, 100 * MB, at(10.0)), Way::Beside);
        // The sizes given to the lanes count, not the bytes a caller passes.
        let lanes = Lanes::sized(vec![100 * MB, 100 * MB, 100 * MB], true);
        assert_eq!(lanes.start(0, 100 * MB), Way::Beside);
        lanes.end(0, false);
        assert_eq!(lanes.start(1, 100 * GB), Way::Beside);
    }

    #[test]
    fn the_pace_of_finished_databases_says_when_the_others_are_nearly_done() {
        let t0 = Instant::now();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let lanes = Lanes::new(4, true);
        // Two start together; one finishes after 10 s: 10 s per 100 MiB.
        assert_eq!(lanes.start_at(0, 100 * MB, at(0.0)), Way::Beside);
        assert_eq!(lanes.start_at(1, 100 * MB, at(0.0)), Way::Beside);
        lanes.end_at(0, true, at(10.0));
        // The third is not the last: beside, whatever the pace.
        assert_eq!(lanes.start_at(2, 100 * MB, at(10.0)), Way::Beside);
        lanes.end_at(1, true, at(10.0));
        // The last starts at 19.5 s: database 2 should end at 20 s, a twentieth of its own 10 s.
        assert_eq!(lanes.start_at(3, 100 * MB, at(19.5)), Way::Alone);

        let lanes = Lanes::new(3, true);
        assert_eq!(lanes.start_at(0, 100 * MB, at(0.0)), Way::Beside);
        assert_eq!(lanes.start_at(1, 100 * MB, at(5.0)), Way::Beside);
        lanes.end_at(0, true, at(10.0));
        // Database 1 has 5 s left of its 10, half the last one's own time: beside.
        assert_eq!(lanes.start_at(2, 100 * MB, at(10.0)), Way::Beside);
    }
}
