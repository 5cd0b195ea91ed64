//! The measured medians and `bench/results/latest.md`: a table per operation and size, each ratio
//! beside its target with the margin by which it is met or missed.

use std::fmt::Write as _;
use std::time::Duration;

use super::measure::Sample;

const MIB: f64 = 1024.0 * 1024.0;

/// The targets (issue "Faster restores…"): a backup to S3 and one to a local directory against the
/// bare local EXPORT, a restore against rclone's download plus a bare IMPORT, an archive run against
/// the bare COPY + DELETE.
const BACKUP_S3: f64 = 1.2;
const BACKUP_LOCAL: f64 = 1.1;
const RESTORE: f64 = 0.75;
const ARCHIVE: f64 = 1.2;

/// One data size's medians.
#[derive(Debug, Default)]
pub struct SizeResult {
    pub hits: u64,
    pub db_bytes: u64,
    pub export_bytes: u64,
    pub archived_rows: u64,
    pub backup: Sample,
    /// The same backup into a local directory.
    pub local_backup: Sample,
    pub export: Sample,
    pub rclone_default: Sample,
    pub rclone_tuned: Sample,
    pub restore: Sample,
    pub rclone_import: Sample,
    pub archive: Sample,
    pub copy_delete: Sample,
}

impl SizeResult {
    pub fn new(hits: u64) -> Self {
        SizeResult {
            hits,
            ..SizeResult::default()
        }
    }

    /// Our upload's share of the backup: what the backup took beyond the bare export.
    pub fn upload(&self) -> Duration {
        self.backup.wall.saturating_sub(self.export.wall)
    }
}

/// One tenant count: the cycle's median at each concurrency.
#[derive(Debug)]
pub struct TenantResult {
    pub tenants: u64,
    pub by_concurrency: Vec<(usize, Sample)>,
}

impl TenantResult {
    pub fn at(&self, concurrency: usize) -> Option<Sample> {
        self.by_concurrency
            .iter()
            .find(|(c, _)| *c == concurrency)
            .map(|(_, s)| *s)
    }
}

/// ListObjectsV2 requests counted by the proxy.
#[derive(Debug)]
pub struct Listing {
    /// Restore planning (latest) with one snapshot.
    pub one: u64,
    /// The same with 1,000 older snapshots added.
    pub thousand: u64,
    /// `backup list` with them, which lists everything by design.
    pub list: u64,
}

#[derive(Debug)]
pub struct Results {
    pub date: String,
    pub machine: String,
    pub server: String,
    pub runs: usize,
    /// DuckDB's memory limit given to hitkeep, in MiB.
    pub memory_limit_mib: u64,
    pub sizes: Vec<SizeResult>,
    pub tenants: Vec<TenantResult>,
    pub listing: Option<Listing>,
    /// The online panel (`online.rs`).
    pub online: Option<super::online::Online>,
    pub total: Duration,
}

pub(super) fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub(super) fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / MIB)
}

pub(super) fn ratio(ours: Duration, theirs: Duration) -> f64 {
    ours.as_secs_f64() / theirs.as_secs_f64().max(1e-9)
}

/// "1.12× (met)" or "1.40× (missed by 17%)" for a ratio that should be at most `limit`.
pub(super) fn at_most(r: f64, limit: f64) -> String {
    match r <= limit {
        true => format!("{r:.2}× (met)"),
        false => format!("{r:.2}× (**missed** by {:.0}%)", (r / limit - 1.0) * 100.0),
    }
}

/// The same for a figure that should be at least `floor`.
fn at_least(v: f64, floor: f64, unit: &str) -> String {
    match v >= floor {
        true => format!("{v:.2}{unit} (met)"),
        false => format!(
            "{v:.2}{unit} (**missed** by {:.0}%)",
            (1.0 - v / floor) * 100.0
        ),
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cores();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: u64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!(
        "{cores} cores ({model}), {:.0} GiB RAM, Linux",
        kib as f64 / 1024.0 / 1024.0
    )
}

impl Results {
    pub fn new(server: &str, runs: usize, memory_limit_mib: u64) -> Self {
        Results {
            date: jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
            machine: machine(),
            server: server.to_owned(),
            runs,
            memory_limit_mib,
            sizes: Vec::new(),
            tenants: Vec::new(),
            listing: None,
            online: None,
            total: Duration::ZERO,
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# `cargo xtask bench`: latest results\n");
        let _ = writeln!(
            md,
            "{}. Machine: {}. S3 server: {}. Median of {} runs; hitkeep ran with \
             `HITKEEP_DUCKDB_MEMORY_LIMIT={}MiB`. Whole run: {:.0} min. Data: `hitkeep demo` with 4 \
             tenants. Our binaries and the baselines (`hk-baseline`, the same DuckDB build) come from \
             the one dev profile (opt-level 2 throughout).\n",
            self.date,
            self.machine,
            self.server,
            self.runs,
            self.memory_limit_mib,
            self.total.as_secs_f64() / 60.0
        );
        self.backup_table(&mut md);
        self.local_backup_table(&mut md);
        self.restore_table(&mut md);
        self.archive_table(&mut md);
        self.memory_table(&mut md);
        self.tenant_table(&mut md);
        self.listing_table(&mut md);
        if let Some(online) = &self.online {
            md.push('\n');
            md.push_str(&online.section());
        }
        self.why(&mut md);
        self.cpu_table(&mut md);
        md
    }

    /// For each missed ratio, what the CPU figures say about it: the least wall time the work could
    /// take if it kept every core busy, as a ratio to the baseline. A floor above the target means the
    /// target needs less CPU work, not more overlap; a floor below it means time went to waiting.
    fn why(&self, md: &mut String) {
        let cores = cores().max(1) as f64;
        let floor = |x: &Sample| (x.cpu + x.server_cpu).as_secs_f64() / cores;
        let mut lines = Vec::new();
        let mut explain = |what: String, ours: &Sample, base: &Sample, limit: f64| {
            let r = ratio(ours.wall, base.wall);
            if r <= limit {
                return;
            }
            let least = floor(ours) / base.wall.as_secs_f64().max(1e-9);
            let cause = if least > limit {
                format!(
                    "its CPU alone (ours {}, the server's {}) needs {:.2}× the baseline's wall time on \
                     {cores} cores, above the target: it takes less work, not more overlap",
                    secs(ours.cpu),
                    secs(ours.server_cpu),
                    least
                )
            } else {
                format!(
                    "its CPU (ours {}, the server's {}) would fit in {:.2}× the baseline's wall time on \
                     {cores} cores; it kept {:.2} cores busy, so the rest is waiting",
                    secs(ours.cpu),
                    secs(ours.server_cpu),
                    least,
                    ours.cores_busy()
                )
            };
            lines.push(format!("- {what}: {r:.2}× against ≤ {limit}×; {cause}."));
        };
        for s in &self.sizes {
            explain(
                format!("Backup to S3 at {} hits", s.hits),
                &s.backup,
                &s.export,
                BACKUP_S3,
            );
            explain(
                format!("Backup to a local directory at {} hits", s.hits),
                &s.local_backup,
                &s.export,
                BACKUP_LOCAL,
            );
            explain(
                format!("Restore at {} hits", s.hits),
                &s.restore,
                &s.rclone_import,
                RESTORE,
            );
            explain(
                format!("Archive at {} hits", s.hits),
                &s.archive,
                &s.copy_delete,
                ARCHIVE,
            );
        }
        for t in &self.tenants {
            let (Some(one), Some(two)) = (t.at(1), t.at(2)) else {
                continue;
            };
            let speedup = ratio(one.wall, two.wall);
            if speedup < 1.6 {
                let best = (one.wall.as_secs_f64() / floor(&one).max(1e-9)).min(cores);
                lines.push(format!(
                    "- {} tenants, 2 at once: {speedup:.2}× against ≥ 1.6×; one at a time kept {:.2} \
                     cores busy (ours {}, the server's {}), so for the same CPU work, running them side by side \
                     can gain about {best:.2}× before the {cores} cores are full.",
                    t.tenants,
                    one.cores_busy(),
                    secs(one.cpu),
                    secs(one.server_cpu),
                ));
            }
        }
        if lines.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "\n## Why targets were missed\n\nFrom the CPU figures below: the least wall time each \
             run's CPU work allows on this machine, as a ratio to its baseline.\n"
        );
        for line in lines {
            let _ = writeln!(md, "{line}");
        }
    }

    /// Where the time goes: each operation's CPU, ours and the server's, against its wall time. On 2
    /// cores, "cores busy" near 2 means the machine was saturated and overlapping more cannot help.
    fn cpu_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Where the time goes\n\nCPU time of the measured process (for rclone, its own) and of the \
             S3 server meanwhile, against the wall time. \"Cores busy\" is their sum over the wall time: \
             this machine has {} cores, so a figure near that means the run was bound by CPU, ours and \
             the server's together, not by waiting.\n\n\
             | hits | operation | wall | process CPU | server CPU | cores busy |\n|---:|---|---:|---:|---:|---:|",
            cores()
        );
        for s in &self.sizes {
            let rows: [(&str, Sample); 9] = [
                ("hitkeep backup", s.backup),
                ("hitkeep backup, local directory", s.local_backup),
                ("local EXPORT", s.export),
                ("rclone upload, default", s.rclone_default),
                ("rclone upload, tuned", s.rclone_tuned),
                ("hitkeep restore", s.restore),
                ("rclone download + IMPORT", s.rclone_import),
                ("hitkeep archive run", s.archive),
                ("COPY + DELETE", s.copy_delete),
            ];
            for (name, x) in rows {
                let _ = writeln!(
                    md,
                    "| {} | {name} | {} | {} | {} | {:.2} |",
                    s.hits,
                    secs(x.wall),
                    secs(x.cpu),
                    secs(x.server_cpu),
                    x.cores_busy()
                );
            }
        }
        for t in &self.tenants {
            for (c, x) in &t.by_concurrency {
                let _ = writeln!(
                    md,
                    "| {} tenants | backup, {c} at once | {} | {} | {} | {:.2} |",
                    t.tenants,
                    secs(x.wall),
                    secs(x.cpu),
                    secs(x.server_cpu),
                    x.cores_busy()
                );
            }
        }
    }

    fn backup_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Backup to S3\n\nTargets: backup ≤ {BACKUP_S3}× the local-only EXPORT; our upload (backup time \
             beyond the export) at least rclone's throughput.\n\n\
             | hits | DB files | export | hitkeep backup | local EXPORT | backup / EXPORT | rclone default | rclone tuned | our upload | ours / rclone default | ours / rclone tuned |\n\
             |---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|"
        );
        for s in &self.sizes {
            let mbps = |d: Duration| s.export_bytes as f64 / MIB / d.as_secs_f64().max(1e-9);
            let ours = mbps(s.upload());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} ({:.0} MiB/s) | {} ({:.0} MiB/s) | {:.0} MiB/s | {} | {} |",
                s.hits,
                mib(s.db_bytes),
                mib(s.export_bytes),
                secs(s.backup.wall),
                secs(s.export.wall),
                at_most(ratio(s.backup.wall, s.export.wall), BACKUP_S3),
                secs(s.rclone_default.wall),
                mbps(s.rclone_default.wall),
                secs(s.rclone_tuned.wall),
                mbps(s.rclone_tuned.wall),
                ours,
                at_least(ours / mbps(s.rclone_default.wall), 1.0, "×"),
                at_least(ours / mbps(s.rclone_tuned.wall), 1.0, "×"),
            );
        }
    }

    fn local_backup_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Backup to a local directory\n\nTarget: ≤ {BACKUP_LOCAL}× the bare EXPORT of the same \
             databases to local disk (same memory limit for hitkeep as everywhere; none for the bare one).\n\n\
             | hits | hitkeep backup | local EXPORT | ratio |\n|---:|---:|---:|---|"
        );
        for s in &self.sizes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                s.hits,
                secs(s.local_backup.wall),
                secs(s.export.wall),
                at_most(ratio(s.local_backup.wall, s.export.wall), BACKUP_LOCAL)
            );
        }
    }

    fn restore_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Restore of latest from S3\n\nTarget: ≤ {RESTORE}× (rclone download, tuned, + bare IMPORT DATABASE).\n\n\
             | hits | hitkeep restore | rclone + IMPORT | ratio |\n|---:|---:|---:|---|"
        );
        for s in &self.sizes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                s.hits,
                secs(s.restore.wall),
                secs(s.rclone_import.wall),
                at_most(ratio(s.restore.wall, s.rclone_import.wall), RESTORE)
            );
        }
    }

    fn archive_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Archiving one site with 90% of its rows expired (to S3)\n\nTargets: ≥ 1M rows/s end to \
             end; ≤ {ARCHIVE}× a bare COPY … TO parquet + DELETE of the same rows (local).\n\n\
             | hits | rows archived | hitkeep archive run | rows/s | COPY + DELETE | ratio |\n|---:|---:|---:|---|---:|---|"
        );
        for s in &self.sizes {
            let rate = s.archived_rows as f64 / s.archive.wall.as_secs_f64().max(1e-9);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                s.hits,
                s.archived_rows,
                secs(s.archive.wall),
                at_least(rate / 1e6, 1.0, "M"),
                secs(s.copy_delete.wall),
                at_most(ratio(s.archive.wall, s.copy_delete.wall), ARCHIVE)
            );
        }
    }

    fn memory_table(&self, md: &mut String) {
        let limit = self.memory_limit_mib as f64 * MIB;
        let _ = writeln!(
            md,
            "\n## Peak RSS of `hitkeep`\n\nTarget: at most 256 MiB above DuckDB's memory limit ({} MiB), \
             flat across sizes.\n\n\
             | hits | backup | local backup | restore | archive | local EXPORT (no limit) | worst above the limit |\n|---:|---:|---:|---:|---:|---:|---|",
            self.memory_limit_mib
        );
        for s in &self.sizes {
            let worst = [s.backup, s.local_backup, s.restore, s.archive]
                .iter()
                .map(|x| x.rss)
                .max()
                .unwrap_or_default() as f64;
            let above = (worst - limit) / MIB;
            let verdict = match above <= 256.0 {
                true => format!("{above:.0} MiB (met)"),
                false => format!("{above:.0} MiB (**missed** by {:.0} MiB)", above - 256.0),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s.hits,
                mib(s.backup.rss),
                mib(s.local_backup.rss),
                mib(s.restore.rss),
                mib(s.archive.rss),
                mib(s.export.rss),
                verdict
            );
        }
    }

    fn tenant_table(&self, md: &mut String) {
        if self.tenants.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "\n## Many teams: one backup cycle\n\nTargets: time grows linearly with the tenant count (each \
             step's cost per added tenant, one at a time, within 25% of the first step's: a fixed start-up \
             cost plus a constant per tenant); concurrent tenants (`HITKEEP_BACKUP_CONCURRENCY`) ≥ 1.6× \
             faster than one at a time.\n\n\
             | tenants | one at a time | per added tenant | linear? | 2 at once | 4 at once | speed-up at 2 | speed-up at 4 |\n|---:|---:|---:|---|---:|---:|---|---|"
        );
        let mut previous: Option<(u64, f64)> = None;
        let mut first_slope: Option<f64> = None;
        for t in &self.tenants {
            let (Some(one), Some(two), Some(four)) = (t.at(1), t.at(2), t.at(4)) else {
                continue;
            };
            let wall = one.wall.as_secs_f64();
            let slope = previous
                .filter(|(n, _)| t.tenants > *n)
                .map(|(n, w)| (wall - w) / (t.tenants - n) as f64);
            previous = Some((t.tenants, wall));
            let (per, linear) = match (slope, first_slope) {
                (None, _) => ("-".to_owned(), "-".to_owned()),
                (Some(m), None) => {
                    first_slope = Some(m);
                    (format!("{:.0} ms", m * 1000.0), "first step".to_owned())
                }
                (Some(m), Some(f)) => {
                    let r = m / f.max(1e-9);
                    let verdict = if (r - 1.0).abs() <= 0.25 {
                        "met"
                    } else {
                        "**missed**"
                    };
                    (
                        format!("{:.0} ms", m * 1000.0),
                        format!("{r:.2}× the first step ({verdict})"),
                    )
                }
            };
            let _ = writeln!(
                md,
                "| {} | {} | {per} | {linear} | {} | {} | {} | {} |",
                t.tenants,
                secs(one.wall),
                secs(two.wall),
                secs(four.wall),
                at_least(ratio(one.wall, two.wall), 1.6, "×"),
                at_least(ratio(one.wall, four.wall), 1.6, "×"),
            );
        }
    }

    fn listing_table(&self, md: &mut String) {
        let Some(l) = &self.listing else { return };
        let _ = writeln!(
            md,
            "\n## Finding latest on S3\n\nTarget: a bounded number of LIST pages whatever the number of \
             snapshots. ListObjectsV2 requests counted by a relaying proxy during a restore's planning \
             (`-dry-run`, shared database plus 2 tenants).\n\n\
             | 1 snapshot | 1,001 snapshots | `backup list` with 1,001 (lists all, by design) |\n|---:|---:|---:|\n\
             | {} | {} {} | {} |",
            l.one,
            l.thousand,
            if l.thousand <= l.one + 1 {
                "(met)"
            } else {
                "(**missed**)"
            },
            l.list
        );
    }
}
