//! Which import of a restore runs beside another and which runs alone.
//!
//! Two imports side by side keep two cores busy, since most of an import is single-threaded DuckDB
//! work (a table's load at one thread, its key, its index). With an odd number of databases the last
//! one used to run by itself on one thread and half the memory limit: at 16M hits in five databases
//! a fifth of the restore, one core idle. Alone with the whole limits its load runs on every thread
//! (measured on one 3.2M-hit database: load 7.8 s on one thread, 4.0 s on two; key and index about the
//! same either way), so the last import to start waits for the others when they are nearly done and
//! then runs alone. "Nearly" is judged from the pace of the imports already finished in this restore;
//! without one, or with the others far from done, it runs beside them as before.
//!
//! Nothing here decides correctness: every import still runs within the limits it is given, and one
//! that runs out of memory beside another runs again alone ([`super::RestorePlan`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The last import waits for the ones still running when what is left of them is below this share
/// of its own time beside them. Measured at 16M hits (five databases): the last one took 17.6 s
/// beside the others' tails and 12.1 s alone (0.69: the load halves, the key and index builds do not
/// shorten), so waiting breaks even near 0.3; a quarter leaves a margin for a wrong guess.
const WAIT_SHARE: f64 = 0.25;

/// What one restore's imports know of each other. No `Default`: lanes with nothing pending would
/// take every import for the last.
#[derive(Debug)]
pub(super) struct Lanes(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    /// Whether the last import may run alone at all.
    last_alone: bool,
    /// Imports that have not called [`Lanes::start`]; one that fails before its import never does,
    /// and then no import runs alone (the restore fails anyway).
    pending: usize,
    /// Imports running beside others: their bytes and when they started.
    running: Vec<(usize, u64, Instant)>,
    /// Bytes and seconds of the imports that finished beside others: their pace.
    done: (u64, f64),
}

/// How an import runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Way {
    /// Beside others, with a share of the limits.
    Beside,
    /// Alone with the whole limits, once the others are done.
    Alone,
}

impl Lanes {
    /// Lanes for `imports` imports still to start; without `last_alone`, every import runs beside.
    pub(super) fn new(imports: usize, last_alone: bool) -> Lanes {
        Lanes(Mutex::new(State {
            last_alone,
            pending: imports,
            ..State::default()
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Import `id` (of `bytes`) starts: how it should run. Call once per import, with its turn held.
    /// On [`Way::Alone`], release the turn and take all of them; on [`Way::Beside`], call
    /// [`Lanes::end`] when the attempt ends, whatever its outcome.
    pub(super) fn start(&self, id: usize, bytes: u64) -> Way {
        self.start_at(id, bytes, Instant::now())
    }

    fn start_at(&self, id: usize, bytes: u64, now: Instant) -> Way {
        let mut state = self.state();
        state.pending = state.pending.saturating_sub(1);
        let others: Vec<(u64, Duration)> = state
            .running
            .iter()
            .map(|(_, b, at)| (*b, now - *at))
            .collect();
        let last = state.last_alone && state.pending == 0;
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

    /// Import `id` ended; `succeeded` imports beside others set the pace.
    pub(super) fn end(&self, id: usize, succeeded: bool) {
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
    /// Bytes per second of one import beside others, once one has finished.
    fn pace(&self) -> Option<f64> {
        let (bytes, secs) = self.done;
        (bytes > 0 && secs > 0.0).then(|| bytes as f64 / secs)
    }
}

/// Whether the last import to start (of `bytes`) should wait for the `running` ones (bytes, time so
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

    #[test]
    fn the_last_import_waits_only_for_imports_nearly_done() {
        let secs = Duration::from_secs;
        // Alone already: no wait.
        assert!(wait_to_run_alone(100 * MB, &[], None));
        // No import has finished: no pace, no guess.
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
        // A small last import is not worth waiting 2 s for.
        assert!(!wait_to_run_alone(10 * MB, &[(100 * MB, secs(8))], pace));
        // Running past its expected end counts as nearly done.
        assert!(wait_to_run_alone(100 * MB, &[(100 * MB, secs(30))], pace));
    }

    #[test]
    fn only_the_last_import_runs_alone_and_only_finished_ones_set_the_pace() {
        let lanes = Lanes::new(3, true);
        assert_eq!(lanes.start(0, 100 * MB), Way::Beside);
        assert_eq!(lanes.start(1, 100 * MB), Way::Beside);
        lanes.end(0, false); // failed: it sets no pace
        // The last one, beside import 1, with no pace to judge how near it is to done.
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
    fn the_pace_of_finished_imports_says_when_the_others_are_nearly_done() {
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
        // The last starts at 19.5 s: import 2 should end at 20 s, a twentieth of its own 10 s.
        assert_eq!(lanes.start_at(3, 100 * MB, at(19.5)), Way::Alone);

        let lanes = Lanes::new(3, true);
        assert_eq!(lanes.start_at(0, 100 * MB, at(0.0)), Way::Beside);
        assert_eq!(lanes.start_at(1, 100 * MB, at(5.0)), Way::Beside);
        lanes.end_at(0, true, at(10.0));
        // Import 1 has 5 s left of its 10, half the last one's own time: beside.
        assert_eq!(lanes.start_at(2, 100 * MB, at(10.0)), Way::Beside);
    }
}
