//! The "online" panel: what backups cost a HitKeep server that keeps ingesting.
//!
//! hitkeep-service's `embedded_server` example is such a server: it holds every database open,
//! appends hits from several tasks and runs the backup engine in the same process. It runs three
//! ways on fresh copies of the same demo data, for `HITKEEP_BENCH_ONLINE_SECS` (60) each: no backups
//! (idle), cycles back to back to a local directory, and back to back to the bench's S3 server.
//! The modes alternate within each of the `HITKEEP_BENCH_RUNS` runs, so a change in the machine's
//! load falls on all three alike; each figure is the median of its runs.
//!
//! Targets (issue 17): ingest keeps at least 80% of its idle throughput and a p99 batch latency of
//! at most 3× idle. The example itself proves every snapshot consistent (it exits non-zero
//! otherwise, which fails the bench): each cycle is restored into scratch databases, and its `hits`
//! counts lie between what ingest had committed before the cycle started and sent by its end.
//!
//! `HITKEEP_BENCH_PANELS=online` runs this panel alone and merges its section into the existing
//! `bench/results/latest.md` (between its markers), leaving the other panels' numbers as they were.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Bench;
use super::measure::Sample;
use crate::e2e::tools;

/// Ingest tasks and hits per batch: what the example's defaults are, fixed here so runs compare.
const TASKS: usize = 4;
const BATCH: usize = 1000;
/// Marks the panel's section in latest.md, so a run of this panel alone can replace it.
const START: &str = "<!-- online:start -->";
/// How long the example takes to open the databases and begin ingesting, about.
const STARTUP: std::time::Duration = std::time::Duration::from_millis(500);
const END: &str = "<!-- online:end -->";

/// How a run backs up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Idle,
    Local,
    S3,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Idle, Mode::Local, Mode::S3];

    fn label(self) -> &'static str {
        match self {
            Mode::Idle => "none (idle)",
            Mode::Local => "back to back, local disk",
            Mode::S3 => "back to back, S3",
        }
    }
}

/// What the example printed for one run (its JSON line), and its process sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    pub rows_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// p99 of the batches begun while a cycle ran.
    pub p99_in_cycles_ms: f64,
    pub cycles: u64,
    pub cycles_failed: u64,
    /// Seconds a cycle took, on average (the last one ends after ingest stopped).
    pub mean_cycle_secs: f64,
    /// Seconds of ingest, and the process's CPU over them.
    pub secs: f64,
    pub cpu_secs: f64,
    /// Databases that received hits.
    pub databases: u64,
    /// CPU seconds the S3 server spent over the ingest time.
    pub server_cpu_secs: f64,
    /// Share of the ingest time some task on the machine waited for a core, and for I/O.
    pub pressure: (f64, f64),
    pub sample: Sample,
}

impl Run {
    fn parse(stdout: &str, sample: Sample) -> Result<Run> {
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .context("the example printed no JSON line")?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        let f = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {line}"));
        anyhow::ensure!(
            v["consistent"] == true,
            "the example found an inconsistent snapshot: {line}"
        );
        Ok(Run {
            rows_per_sec: f("rows_per_sec")?,
            p50_ms: f("batch_p50_ms")?,
            p99_ms: f("batch_p99_ms")?,
            max_ms: f("batch_max_ms")?,
            p99_in_cycles_ms: f("batch_p99_ms_in_cycles")?,
            cycles: f("cycles")? as u64,
            cycles_failed: f("cycles_failed")? as u64,
            mean_cycle_secs: f("cycle_s_total")? / (f("cycles")? + f("cycles_failed")?).max(1.0),
            secs: f("secs")?,
            cpu_secs: f("cpu_s")?,
            databases: f("databases")? as u64,
            server_cpu_secs: 0.0,
            pressure: (0.0, 0.0),
            sample,
        })
    }

    /// Cores this process kept busy while it ingested.
    fn cores_busy(&self) -> f64 {
        self.cpu_secs / self.secs.max(1e-9)
    }

    /// Cores the S3 server kept busy meanwhile.
    fn server_cores_busy(&self) -> f64 {
        self.server_cpu_secs / self.secs.max(1e-9)
    }
}

/// The panel's medians.
#[derive(Debug)]
pub struct Online {
    pub date: String,
    pub hits: u64,
    pub secs: u64,
    pub runs: usize,
    /// Databases that received hits.
    pub databases: u64,
    /// `/proc/loadavg` before and after the panel.
    pub load: (String, String),
    pub modes: Vec<(Mode, Run)>,
}

impl Bench {
    /// Runs the panel: demo data once, then every mode on a fresh copy of it, `runs` times.
    pub(super) fn online(&self, root: &Path) -> Result<Online> {
        let example = tools::built(root, "examples/embedded_server").context(
            "the online panel runs hitkeep-service's example embedded_server: build it with \
             `cargo build --workspace --all-targets --locked`",
        )?;
        let hits = super::list_env("HITKEEP_BENCH_ONLINE_HITS", "1000000")?[0];
        let secs = super::list_env("HITKEEP_BENCH_ONLINE_SECS", "60")?[0];
        println!(
            "bench: online: {hits} hits, {secs} s per run, modes idle/local/S3, {} runs",
            self.runs
        );
        let load_before = load_average();
        let src = self.fresh("online-src")?;
        let (h, t) = (hits.to_string(), "4".to_owned());
        // HitKeep 2.13's layout, today's: every tenant's analytics, the default one's included, in
        // a database of its own.
        self.hk(&src, &[], &["demo", "--hits", &h, "--tenants", &t])?;
        let mut all: Vec<(Mode, Vec<Run>)> = Mode::ALL.iter().map(|&m| (m, Vec::new())).collect();
        for run in 0..self.runs {
            for (mode, runs) in &mut all {
                let r = self.online_run(&example, &src, *mode, run, secs)?;
                println!(
                    "bench: online run {} {}: {:.0} rows/s, p50 {:.0} ms, p99 {:.0} ms, {} cycles",
                    run + 1,
                    mode.label(),
                    r.rows_per_sec,
                    r.p50_ms,
                    r.p99_ms,
                    r.cycles
                );
                runs.push(r);
            }
        }
        let databases = all
            .iter()
            .flat_map(|(_, runs)| runs.iter().map(|r| r.databases))
            .max()
            .unwrap_or_default();
        Ok(Online {
            date: jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
            hits,
            secs,
            runs: self.runs,
            databases,
            load: (load_before, load_average()),
            modes: all
                .into_iter()
                .map(|(m, runs)| (m, median(&runs)))
                .collect(),
        })
    }

    /// One run of the example on a fresh copy of `src`.
    fn online_run(
        &self,
        example: &Path,
        src: &Path,
        mode: Mode,
        run: usize,
        secs: u64,
    ) -> Result<Run> {
        let dir = self.fresh("online-run")?;
        tools::run(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(src.join("."))
                .arg(&dir),
        )?;
        let backups = match mode {
            Mode::Idle => None,
            Mode::Local => Some(
                self.fresh(&format!("online-backups-{run}"))?
                    .display()
                    .to_string(),
            ),
            Mode::S3 => Some(self.s3.url(&format!("bench/online/r{run}"))),
        };
        let mut extra = vec![
            // Every cycle is checked after the run; none may be pruned before.
            ("HITKEEP_BACKUP_RETENTION", "10000".to_owned()),
        ];
        if let Some(b) = backups {
            extra.push(("HITKEEP_BACKUP_PATH", b));
        }
        let archive = dir.join("archive").display().to_string();
        extra.push(("HITKEEP_ARCHIVE_PATH", archive));
        let secs_n = secs;
        let (secs, tasks, batch) = (secs.to_string(), TASKS.to_string(), BATCH.to_string());
        let args = [
            "--secs",
            secs.as_str(),
            "--tasks",
            tasks.as_str(),
            "--batch",
            batch.as_str(),
            "--backups",
            if mode == Mode::Idle {
                "off"
            } else {
                "continuous"
            },
            // The archive job is scheduled, as in a server, but not due within the run: this
            // panel measures backups.
            "--archive-after",
            "86400",
            "--verify",
            "deep",
        ];
        let env = self.env(&dir, &extra);
        // Read beside the run, over its ingest time (it starts within a second): the S3 server's
        // CPU, which on 2 cores comes out of what ingest can have, and the machine's pressure.
        let (ran, watched) = std::thread::scope(|s| {
            let watch = s.spawn(|| {
                std::thread::sleep(STARTUP);
                let before = (self.meter.server_cpu(), Pressure::now());
                std::thread::sleep(std::time::Duration::from_secs(secs_n));
                let after = (self.meter.server_cpu(), Pressure::now());
                let window = secs_n as f64;
                (
                    after.0.saturating_sub(before.0).as_secs_f64(),
                    after.1.share_since(&before.1, window),
                )
            });
            let ran = self.meter.run(example, &args, &env);
            (ran, watch.join())
        });
        let (sample, stdout) = ran?;
        let mut run = Run::parse(&stdout, sample)?;
        if let Ok((server_cpu, pressure)) = watched {
            run.server_cpu_secs = server_cpu;
            run.pressure = pressure;
        }
        Ok(run)
    }
}

/// Each figure's median over the runs.
fn median(runs: &[Run]) -> Run {
    fn mid(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
    let m = |f: fn(&Run) -> f64| mid(runs.iter().map(f).collect());
    let samples: Vec<Sample> = runs.iter().map(|r| r.sample).collect();
    Run {
        rows_per_sec: m(|r| r.rows_per_sec),
        p50_ms: m(|r| r.p50_ms),
        p99_ms: m(|r| r.p99_ms),
        max_ms: m(|r| r.max_ms),
        p99_in_cycles_ms: m(|r| r.p99_in_cycles_ms),
        cycles: m(|r| r.cycles as f64) as u64,
        cycles_failed: runs.iter().map(|r| r.cycles_failed).sum(),
        mean_cycle_secs: m(|r| r.mean_cycle_secs),
        secs: m(|r| r.secs),
        cpu_secs: m(|r| r.cpu_secs),
        databases: runs.iter().map(|r| r.databases).max().unwrap_or_default(),
        server_cpu_secs: m(|r| r.server_cpu_secs),
        pressure: (m(|r| r.pressure.0), m(|r| r.pressure.1)),
        sample: super::measure::median(&samples),
    }
}

/// Linux pressure stall information: microseconds in which some task waited for a core, and for
/// I/O (`/proc/pressure/{cpu,io}`, "some" line).
struct Pressure(Option<u64>, Option<u64>);

impl Pressure {
    fn now() -> Pressure {
        let some_total = |resource: &str| -> Option<u64> {
            let text = std::fs::read_to_string(format!("/proc/pressure/{resource}")).ok()?;
            let line = text.lines().find(|l| l.starts_with("some"))?;
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("total="))?
                .parse()
                .ok()
        };
        Pressure(some_total("cpu"), some_total("io"))
    }

    /// The shares of `secs` since `before` (zero where the kernel does not tell).
    fn share_since(&self, before: &Pressure, secs: f64) -> (f64, f64) {
        let share = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => a.saturating_sub(b) as f64 / 1e6 / secs.max(1e-9),
            _ => 0.0,
        };
        (share(self.0, before.0), share(self.1, before.1))
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

impl Online {
    fn idle(&self) -> Option<&Run> {
        self.modes
            .iter()
            .find(|(m, _)| *m == Mode::Idle)
            .map(|(_, r)| r)
    }

    /// The panel's section of latest.md, between its markers.
    pub fn section(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "{START}\n## Ingest while backups run (online)\n\n\
             Targets: while backup cycles run back to back in the same process, ingest keeps ≥ 80% of \
             its idle throughput and a p99 batch latency ≤ 3× idle; every snapshot taken under ingest \
             is consistent.\n\n\
             {}. hitkeep-service's example `embedded_server`, a HitKeep server in miniature: it holds \
             every database open (one DuckDB instance each), {TASKS} tasks append batches of {BATCH} \
             hits (DuckDB appender, one commit per batch) into the {} databases that hold hits for {} s, \
             and the engine backs up through the server's own connections. Data: `hitkeep demo` with {} \
             hits and 4 tenants (HitKeep 2.13 layout), a fresh copy for every run. Median of {} runs, \
             the three modes alternating. Load average (1, 5, 15 min) before the panel: {}; after: {} \
             (this machine is shared with other builds and tests).\n",
            self.date, self.databases, self.secs, self.hits, self.runs, self.load.0, self.load.1
        );
        let _ = writeln!(
            md,
            "| backups | rows/s | vs idle | p50 batch | p99 batch | p99 vs idle | max batch | p99 during cycles | cycles (median) | mean cycle |\n\
             |---|---:|---|---:|---:|---|---:|---:|---:|---:|"
        );
        let idle = self.idle().copied();
        for (mode, r) in &self.modes {
            let (tput, lat) = match (mode, idle) {
                (Mode::Idle, _) | (_, None) => ("-".to_owned(), "-".to_owned()),
                (_, Some(i)) => (
                    at_least(r.rows_per_sec / i.rows_per_sec.max(1e-9), 0.8),
                    at_most(r.p99_ms / i.p99_ms.max(1e-9), 3.0),
                ),
            };
            let cycles = match mode {
                Mode::Idle => "-".to_owned(),
                _ if r.cycles_failed > 0 => {
                    format!("{} ({} failed in all runs)", r.cycles, r.cycles_failed)
                }
                _ => r.cycles.to_string(),
            };
            let _ = writeln!(
                md,
                "| {} | {:.0} | {tput} | {:.0} ms | {:.0} ms | {lat} | {:.0} ms | {} | {cycles} | {} |",
                mode.label(),
                r.rows_per_sec,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                if *mode == Mode::Idle {
                    "-".to_owned()
                } else {
                    format!("{:.0} ms", r.p99_in_cycles_ms)
                },
                if *mode == Mode::Idle {
                    "-".to_owned()
                } else {
                    format!("{:.1} s", r.mean_cycle_secs)
                },
            );
        }
        let _ = writeln!(
            md,
            "\nEvery cycle of every run was restored into scratch databases (`verify --deep`) and its \
             `hits` counts fell between what ingest had committed before the cycle started and sent \
             by its end; the example fails the bench otherwise."
        );
        self.where_the_time_goes(&mut md);
        let _ = writeln!(md, "{END}");
        md
    }

    /// CPU over the ingest time, ours and the S3 server's, and the machine's pressure; for each
    /// missed target, what the figures say took ingest's share.
    fn where_the_time_goes(&self, md: &mut String) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let _ = writeln!(
            md,
            "\nWhere the time goes, over the ingest time: \"cores busy\" is CPU time over wall time of the \
             example (ingest and backups together) and of the S3 server (its own process), on a machine \
             of {cores} cores; \"CPU / I/O pressure\" is the share of the time some task on the machine \
             waited for a core / for I/O (Linux PSI, every process, others' builds and tests included).\n\n\
             | backups | cores busy: ours | S3 server | CPU pressure | I/O pressure |\n|---|---:|---:|---:|---:|"
        );
        for (mode, r) in &self.modes {
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.2} | {:.0}% | {:.0}% |",
                mode.label(),
                r.cores_busy(),
                r.server_cores_busy(),
                r.pressure.0 * 100.0,
                r.pressure.1 * 100.0
            );
        }
        let Some(idle) = self.idle().copied() else {
            return;
        };
        // Rows per CPU-second of ingest alone; assuming backups leave it unchanged, the cores
        // ingest had under backups, and the rest of our CPU is the backups'.
        let per_core = idle.rows_per_sec / idle.cores_busy().max(1e-9);
        for (mode, r) in self.modes.iter().filter(|(m, _)| *m != Mode::Idle) {
            let tput = r.rows_per_sec / idle.rows_per_sec.max(1e-9);
            let p99 = r.p99_ms / idle.p99_ms.max(1e-9);
            if tput >= 0.8 && p99 <= 3.0 {
                continue;
            }
            let ingest = r.rows_per_sec / per_core;
            let cause = if r.pressure.0 >= 0.5 {
                "the machine's cores were full, so the backups' CPU (EXPORT's Parquet and zstd, \
                 hashing, uploads) came out of ingest's share"
            } else {
                "the cores were not full, so ingest lost time waiting (on DuckDB, whose CHECKPOINT and \
                 export run in the server's instance, or on I/O), not for CPU"
            };
            let _ = writeln!(
                md,
                "\n{}: {tput:.2}× the idle throughput, p99 {p99:.2}× idle. Idle ingest did {per_core:.0} rows \
                 per CPU-second on {:.2} cores; under backups the example kept {:.2} cores busy, which at \
                 that rate is about {ingest:.2} for ingest and {:.2} for the backups, and the S3 server \
                 {:.2} more. Some task waited for a core {:.0}% of the time (for I/O {:.0}%): {cause}. \
                 A cycle took {:.1} s on average and they ran back to back, so backups ran for the whole \
                 measurement.",
                mode.label(),
                idle.cores_busy(),
                r.cores_busy(),
                (r.cores_busy() - ingest).max(0.0),
                r.server_cores_busy(),
                r.pressure.0 * 100.0,
                r.pressure.1 * 100.0,
                r.mean_cycle_secs,
            );
        }
    }
}

/// "0.85× (met)" or "0.60× (**missed** by 25%)" for a ratio that should be at least `floor`.
fn at_least(r: f64, floor: f64) -> String {
    if r >= floor {
        format!("{r:.2}× (met)")
    } else {
        format!("{r:.2}× (**missed** by {:.0}%)", (1.0 - r / floor) * 100.0)
    }
}

/// The same for a ratio that should be at most `limit`.
fn at_most(r: f64, limit: f64) -> String {
    if r <= limit {
        format!("{r:.2}× (met)")
    } else {
        format!("{r:.2}× (**missed** by {:.0}%)", (r / limit - 1.0) * 100.0)
    }
}

/// Puts `section` into `latest`: in place of an earlier one, else before the explanations of the
/// misses (where a full run puts it), else at the end. The other panels' text stays as it was.
pub fn merge(latest: &Path, section: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(latest).unwrap_or_default();
    let merged = match (text.find(START), text.find(END)) {
        (Some(a), Some(b)) if a < b => {
            let end = b + END.len();
            let end = end + usize::from(text[end..].starts_with('\n'));
            format!("{}{section}{}", &text[..a], &text[end..])
        }
        _ => match ["\n## Why targets were missed", "\n## Where the time goes"]
            .iter()
            .find_map(|h| text.find(h))
        {
            Some(at) => format!("{}\n{section}{}", &text[..at], &text[at..]),
            None if text.is_empty() => section.to_owned(),
            None => format!(
                "{}\n{section}",
                text.trim_end_matches('\n').to_owned() + "\n"
            ),
        },
    };
    std::fs::write(latest, merged)?;
    Ok(latest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_replaces_the_earlier_one_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let latest = dir.path().join("latest.md");
        let others = "# results\n\n## Backup to S3\n\n| a |\n\n## Why targets were missed\n\n- x\n";
        std::fs::write(&latest, others).unwrap();
        let first = format!("{START}\n## Ingest\n\nold\n{END}\n");
        merge(&latest, &first).unwrap();
        let text = std::fs::read_to_string(&latest).unwrap();
        assert!(text.contains("| a |\n\n<!-- online:start -->"), "{text}");
        assert!(
            text.contains("old\n<!-- online:end -->\n\n## Why targets were missed"),
            "{text}"
        );
        let second = format!("{START}\n## Ingest\n\nnew\n{END}\n");
        merge(&latest, &second).unwrap();
        let text = std::fs::read_to_string(&latest).unwrap();
        assert!(!text.contains("old") && text.contains("new"), "{text}");
        assert_eq!(
            text,
            format!(
                "# results\n\n## Backup to S3\n\n| a |\n\n{second}\n## Why targets were missed\n\n- x\n"
            )
        );
    }

    #[test]
    fn a_missed_target_is_explained_from_the_cpu_figures() {
        let run = |rows_per_sec, p99_ms, cpu_secs| Run {
            rows_per_sec,
            p99_ms,
            cpu_secs,
            secs: 10.0,
            pressure: (0.9, 0.1),
            mean_cycle_secs: 5.0,
            ..Run::default()
        };
        let online = Online {
            date: "today".into(),
            hits: 1000,
            secs: 10,
            runs: 1,
            databases: 5,
            load: ("1.00".into(), "2.00".into()),
            modes: vec![
                (Mode::Idle, run(1000.0, 10.0, 10.0)),
                (Mode::Local, run(900.0, 20.0, 15.0)),
                (Mode::S3, run(600.0, 40.0, 15.0)),
            ],
        };
        let md = online.section();
        assert!(
            md.starts_with(START) && md.ends_with(&format!("{END}\n")),
            "{md}"
        );
        assert!(
            md.contains("| 0.90× (met) |") && md.contains("| 2.00× (met) |"),
            "{md}"
        );
        assert!(md.contains("| 0.60× (**missed** by 25%) |"), "{md}");
        assert!(md.contains("| 4.00× (**missed** by 33%) |"), "{md}");
        // Only the missed mode is explained: 600 rows/s at 1,000 rows per CPU-second is 0.60 of
        // its 1.50 cores; the other 0.90 went to the backups.
        assert!(!md.contains("back to back, local disk: 0.90×"), "{md}");
        assert!(
            md.contains("back to back, S3: 0.60× the idle throughput, p99 4.00× idle"),
            "{md}"
        );
        assert!(
            md.contains("about 0.60 for ingest and 0.90 for the backups"),
            "{md}"
        );
        assert!(md.contains("the machine's cores were full"), "{md}");
    }

    #[test]
    fn the_examples_line_is_read_and_an_inconsistent_run_refused() {
        let line = r#"{"rows_per_sec": 1000.0, "batch_p50_ms": 5.0, "batch_p99_ms": 20.0, "batch_max_ms": 40.0,
            "batch_p99_ms_in_cycles": 30.0, "cycles": 3, "cycles_failed": 0, "cycle_s_total": 9.5,
            "secs": 10.0, "cpu_s": 15.0, "databases": 5, "consistent": true}"#
            .replace('\n', " ");
        let run = Run::parse(&format!("noise\n{line}\n"), Sample::default()).unwrap();
        assert_eq!((run.cycles, run.p99_ms), (3, 20.0));
        assert!((run.cores_busy() - 1.5).abs() < 1e-9);
        let bad = line.replace("\"consistent\": true", "\"consistent\": false");
        assert!(Run::parse(&bad, Sample::default()).is_err());
    }
}
