//! `cargo xtask e2e`: the built `hitkeep`, driven as a black box, against a real S3 server process.
//!
//! Sections run in order in two lanes side by side, each against a server of its own (the layout
//! sections; the fault, trust and input ones), and each records checks; a section that errors out
//! is one failed check and the run goes on. Everything hitkeep prints is kept for the secret scan at the end.
//! What this will not do: stand in for the unit and integration tests (`cargo test`), or time
//! anything (`cargo xtask bench`).

mod bad_input;
mod checksum;
mod encrypted;
mod faults;
mod hitkeep;
mod namespaces;
mod object_lock;
pub(crate) mod proxy;
mod report;
mod scenarios;
pub(crate) mod server;
mod tampered;
pub(crate) mod tools;
mod trust;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use hitkeep::{Env, Hitkeep, Out};
use report::Report;
use server::{Kind, S3Server};
use tools::{Fingerprint, Python, Rclone};

/// What every section works with.
#[derive(Debug)]
pub struct Ctx {
    pub report: Report,
    pub hk: Hitkeep,
    pub s3: S3Server,
    pub rclone: Rclone,
    pub py: Python,
    pub work: PathBuf,
    /// `HITKEEP_CACHE`: where tools are installed.
    pub cache: PathBuf,
    /// Values that must never appear in hitkeep's output (the secret scan).
    pub secrets: Vec<String>,
    /// The HitKeep data layout `hitkeep demo` makes: `2.13` (split) or `2.8` (pre-split).
    pub layout: &'static str,
    /// `HITKEEP_BACKUP_MODE` of every run: `full` or `incremental`.
    pub mode: &'static str,
    /// Set while the sections run with encryption on: every run gets the recipients and the identity.
    pub keys: Option<Keys>,
}

/// Age keys made by `hitkeep backup keygen` for the encrypted variant.
#[derive(Clone, Debug)]
pub struct Keys {
    /// `HITKEEP_BACKUP_RECIPIENTS`: the operator's public key and a second one.
    pub recipients: String,
    /// The operator's identity file: `HITKEEP_BACKUP_IDENTITY_FILE` of every run.
    pub identity: PathBuf,
    /// The second recipient's identity file.
    pub second: PathBuf,
}

impl Ctx {
    /// A server of its own (Garage, MinIO, or the caller's endpoint under a prefix for `run_id`),
    /// and a work folder, transcript and `report` for the sections run with it.
    fn start(bin: &Path, cache: &Path, work: PathBuf, run_id: &str, report: Report) -> Result<Ctx> {
        std::fs::create_dir_all(&work)?;
        let s3 = S3Server::start(cache, &work, run_id)?;
        let rclone = Rclone::new(&s3)?;
        if s3.kind == Kind::Minio {
            rclone.mkdir(&s3.bucket)?;
        }
        Ok(Ctx {
            report,
            hk: Hitkeep::new(bin.to_owned(), &work)?,
            rclone,
            py: Python::new(cache, &work)?,
            work,
            cache: cache.to_owned(),
            secrets: vec![s3.secret_key.clone()],
            s3,
            layout: LAYOUTS[0],
            mode: "full",
            keys: None,
        })
    }

    /// The guide's MinIO variables, with this server's address and keys.
    pub fn s3_env(&self) -> Env {
        let env = Env::default()
            .set("HITKEEP_S3_ACCESS_KEY_ID", &self.s3.access_key)
            .set("HITKEEP_S3_SECRET_ACCESS_KEY", &self.s3.secret_key)
            .set("HITKEEP_S3_ENDPOINT", &self.s3.endpoint)
            .set("HITKEEP_S3_URL_STYLE", "path")
            .set(
                "HITKEEP_S3_USE_SSL",
                if self.s3.use_ssl { "true" } else { "false" },
            )
            .set("HITKEEP_S3_REGION", &self.s3.region)
            .set("HITKEEP_BACKUP_MODE", self.mode);
        match &self.keys {
            Some(keys) => env.set("HITKEEP_BACKUP_RECIPIENTS", &keys.recipients).set(
                "HITKEEP_BACKUP_IDENTITY_FILE",
                keys.identity.to_string_lossy(),
            ),
            None => env,
        }
    }

    /// Whether cycles write incremental snapshots (table files in `pool/`).
    pub fn incremental(&self) -> bool {
        self.mode == "incremental"
    }

    /// S3 settings plus backups under `<name>/backups` and archives under `<name>/archive`.
    pub fn s3_env_at(&self, name: &str) -> Env {
        self.s3_env()
            .set(
                "HITKEEP_BACKUP_PATH",
                self.s3.url(&format!("{name}/backups")),
            )
            .set(
                "HITKEEP_ARCHIVE_PATH",
                self.s3.url(&format!("{name}/archive")),
            )
    }

    /// A fresh folder in the run's temp dir.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Runs hitkeep in `dir`; its default paths (hitkeep.db, data/, archive/) land there.
    pub fn hk(&self, dir: &Path, env: &Env, args: &[&str]) -> Result<Out> {
        self.hk.run(dir, env, args)
    }

    pub fn demo(&mut self, dir: &Path, env: &Env, hits: u32, tenants: u32) -> Result<()> {
        let (hits, tenants) = (hits.to_string(), tenants.to_string());
        let args = [
            "demo",
            "--hits",
            &hits,
            "--tenants",
            &tenants,
            "--layout",
            self.layout,
        ];
        let out = self.hk(dir, env, &args)?;
        anyhow::ensure!(out.ok(), "hitkeep demo failed: {}", out.brief());
        Ok(())
    }

    /// Whether the demo data is split (HitKeep 2.13): the default tenant has a database of its own.
    pub fn split(&self) -> bool {
        self.layout == "2.13"
    }

    /// The shared database and every tenant database under `dir` (default paths).
    pub fn fingerprint(&self, dir: &Path) -> Result<Fingerprint> {
        self.py
            .fingerprint(&dir.join("hitkeep.db"), &dir.join("data"))
    }

    /// `backup list --json`.
    pub fn snapshots(&self, dir: &Path, env: &Env) -> Result<Vec<Value>> {
        let out = self.hk(dir, env, &["backup", "list", "--json"])?;
        anyhow::ensure!(out.ok(), "backup list failed: {}", out.brief());
        serde_json::from_str(&out.stdout).context("parse backup list --json")
    }

    /// Ids of the complete snapshots of `database` (`shared`, `tenants/<uuid>`), oldest first.
    pub fn complete(&self, dir: &Path, env: &Env, database: &str) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .snapshots(dir, env)?
            .iter()
            .filter(|s| s["database"] == database && s["state"]["state"] == "complete")
            .filter_map(|s| s["snapshot_id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// `recover restore-backup` into `dir` (its default paths), `-snapshot` when given.
    pub fn restore(
        &self,
        dir: &Path,
        env: &Env,
        from: &str,
        snapshot: Option<&str>,
    ) -> Result<Out> {
        let mut args = vec!["recover", "restore-backup", "-from", from];
        if let Some(id) = snapshot {
            args.extend(["-snapshot", id]);
        }
        args.extend(["-s3-region", &self.s3.region, "-yes"]);
        self.hk(dir, env, &args)
    }
}

/// `HITKEEP_CACHE`, or `~/.cache/hitkeep`: where tools are installed.
fn cache() -> PathBuf {
    std::env::var_os("HITKEEP_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hitkeep"),
        PathBuf::from,
    )
}

/// `cargo xtask tools`: installs the S3 server the run needs when it is missing (Garage takes
/// ~9 minutes to compile), so that `scripts/test` can do it while the tests run.
pub fn install_tools() -> Result<()> {
    if std::env::var_os("HITKEEP_E2E_S3_ENDPOINT").is_none() && tools::on_path("minio").is_none() {
        tools::garage(&cache())?;
    }
    Ok(())
}

pub fn run() -> Result<bool> {
    let started = Instant::now();
    let seed = match std::env::var("HITKEEP_E2E_SEED") {
        Ok(s) => s.parse().context("HITKEEP_E2E_SEED must be a number")?,
        Err(_) => fastrand::u64(..),
    };
    fastrand::seed(seed);
    let root = crate::workspace_root()?;
    let root = root.as_path();
    let cache = cache();
    let bin = tools::built(root, "hitkeep")?;
    let work_dir = tempfile::Builder::new().prefix("hitkeep-e2e-").tempdir()?;
    let work = work_dir.path().to_owned();
    let mut ctx = Ctx::start(
        &bin,
        &cache,
        work.clone(),
        &format!("{seed:x}"),
        Report::default(),
    )?;
    println!("e2e: seed {seed} (HITKEEP_E2E_SEED={seed} replays the random choices)");
    println!("e2e: S3 server: {}", ctx.s3.describe());
    println!("e2e: hitkeep: {}", bin.display());
    ctx.report.figure("S3 server", ctx.s3.describe());
    // The fault, trust and input sections run beside the layout sections, on a server of their own
    // (one of them stops and restarts it): a run mostly waits (on kills, timeouts, a server
    // restarting; under one core busy on average), and one after the other they took 18 minutes
    // on 2 cores. Their lines are printed once the layout sections are done.
    let mut side = Ctx::start(
        &bin,
        &cache,
        work.join("side"),
        &format!("{seed:x}-side"),
        Report::kept(),
    )?;
    side.report.figure("S3 server", side.s3.describe());
    // A caller's endpoint is one bucket for both lanes, whose checks for objects left behind list
    // all of it: there they run one after the other.
    if ctx.s3.kind == Kind::Endpoint {
        println!(
            "e2e: one bucket for both lanes: the fault, trust and input sections run after the others"
        );
        layout_sections(&mut ctx);
        side_sections(&mut side);
    } else {
        println!(
            "e2e: the fault, trust and input sections run beside the others, on a second server; their lines follow theirs"
        );
        side = side_by_side(&mut ctx, side, seed)?;
    }
    ctx.report.absorb(side.report);
    ctx.hk.absorb(side.hk);
    ctx.secrets.append(&mut side.secrets);
    if side.s3.kind == Kind::Endpoint {
        side.rclone.purge(&side.s3.key(""))?;
    }
    section(&mut ctx, "secrets", scan_secrets);

    let transcript = cache.join("e2e/last-transcript.log");
    if let Some(parent) = transcript.parent() {
        std::fs::create_dir_all(parent)?;
        std::fs::write(&transcript, &*ctx.hk.transcript())?;
    }
    ctx.report.figure("hitkeep runs", ctx.hk.runs());
    ctx.report.figure(
        "everything hitkeep printed",
        format!(
            "{} bytes, in {}",
            ctx.hk.transcript().len(),
            transcript.display()
        ),
    );
    ctx.report
        .figure("total time", format!("{:.0?}", started.elapsed()));
    if ctx.s3.kind == Kind::Endpoint {
        ctx.rclone.purge(&ctx.s3.key(""))?;
    }
    ctx.report.print_summary();
    Ok(ctx.report.failed() == 0)
}

/// The layout sections with `ctx` and, in a thread beside them, the side sections with `side`.
fn side_by_side(ctx: &mut Ctx, mut side: Ctx, seed: u64) -> Result<Ctx> {
    std::thread::scope(|scope| {
        let side = scope.spawn(move || {
            // fastrand's generator is per thread: this one's random choices replay from the seed too.
            fastrand::seed(seed ^ 0x5eed);
            side_sections(&mut side);
            side
        });
        layout_sections(ctx);
        side.join()
    })
    .map_err(|_| anyhow::anyhow!("the side sections panicked"))
}

/// Backup, restore, archive and kill on both layouts and modes, then with encryption on.
fn layout_sections(ctx: &mut Ctx) {
    // Backup, restore, archive and kill on both of HitKeep's layouts: today's split one (2.13) and
    // the one older installs and their snapshots still have (2.8), each in its own folder and prefix;
    // and in both backup modes, paired so that each layout and each mode runs once within the
    // budget (HITKEEP_E2E_MODES=all runs every layout in both).
    for (layout, mode) in variants() {
        in_layout(ctx, layout, mode, |ctx| {
            let tag = format!(" [{} {}]", ctx.layout, ctx.mode);
            section(
                ctx,
                &format!("guide: MinIO example, scheduler, list, verify, restore, prune{tag}"),
                scenarios::guide,
            );
            section(
                ctx,
                &format!("archives: run, query, restore{tag}"),
                scenarios::archives,
            );
            section(
                ctx,
                &format!("kill -9 during backup run{tag}"),
                faults::kill_loop,
            );
        });
    }
    // Backup, restore, kill and the fault sections again with encryption on, under keys made by
    // `hitkeep backup keygen`: all of them in full mode, the round trip and the bit flip in
    // incremental mode too.
    with_keys(ctx, |ctx| {
        in_layout(ctx, LAYOUTS[0], "full", |ctx| encrypted_sections(ctx, true));
        // Incremental and encrypted (format 4): the pool objects sealed, the partitions in an index
        // only the host opens.
        in_layout(ctx, LAYOUTS[1], "incremental", |ctx| {
            encrypted_sections(ctx, false)
        });
    });
}

/// The fault, trust and input sections: each makes its own data, and one restarts the server.
fn side_sections(ctx: &mut Ctx) {
    section(ctx, "TCP fault proxy", faults::proxy);
    // The fault sections that read what a cycle stored run in incremental mode too, where the table
    // files are pool objects shared by snapshots.
    in_layout(ctx, LAYOUTS[1], "incremental", |ctx| {
        let tag = format!(" [{} {}]", ctx.layout, ctx.mode);
        section(ctx, &format!("TCP fault proxy{tag}"), faults::proxy);
        section(
            ctx,
            &format!("a bit flipped in a stored object{tag}"),
            faults::bit_flip,
        );
    });
    section(
        ctx,
        "a provider that refuses checksum headers",
        checksum::refusing_provider,
    );
    section(
        ctx,
        "S3 server stopped and restarted during a backup",
        faults::server_restart,
    );
    section(ctx, "a bit flipped in a stored object", faults::bit_flip);
    section(
        ctx,
        "archive interrupted after upload and during delete",
        faults::archive_interrupts,
    );
    section(
        ctx,
        "restore from another PID namespace",
        namespaces::restore_across_namespaces,
    );
    section(
        ctx,
        "two installations back up to one prefix in the same second",
        trust::two_writers,
    );
    section(ctx, "a clock behind, then a year ahead", trust::wrong_clock);
    section(
        ctx,
        "S3 Object Lock on moto, under a clock behind and ahead",
        object_lock::wrong_clock,
    );
    section(
        ctx,
        "kills, then cycles on a small disk",
        trust::kills_on_a_small_disk,
    );
    section(
        ctx,
        "tampered snapshots: restore and verify --deep refuse code",
        tampered::run,
    );
    section(ctx, "bad input", bad_input::run);
}

/// HitKeep's layouts the layout-sensitive sections run on.
const LAYOUTS: [&str; 2] = ["2.13", "2.8"];

/// The (layout, backup mode) pairs the layout-sensitive sections run in: each layout once, the
/// newest in full mode (the default) and the older in incremental mode; every pair with
/// HITKEEP_E2E_MODES=all.
fn variants() -> Vec<(&'static str, &'static str)> {
    if std::env::var("HITKEEP_E2E_MODES").is_ok_and(|m| m == "all") {
        let modes = ["full", "incremental"];
        return LAYOUTS
            .iter()
            .flat_map(|l| modes.iter().map(move |m| (*l, *m)))
            .collect();
    }
    vec![(LAYOUTS[0], "full"), (LAYOUTS[1], "incremental")]
}

/// Runs `f` with `layout`'s demo data and backups in `mode`, in a work folder and S3 prefix of its
/// own (the first layout in full mode, unencrypted, keeps the plain ones, so its paths are the
/// guide's).
fn in_layout(ctx: &mut Ctx, layout: &'static str, mode: &'static str, f: impl FnOnce(&mut Ctx)) {
    let (work, prefix) = (ctx.work.clone(), ctx.s3.prefix.clone());
    if (layout, mode) != (LAYOUTS[0], "full") || ctx.keys.is_some() {
        let sealed = if ctx.keys.is_some() { "-encrypted" } else { "" };
        ctx.work = work.join(format!("layout-{layout}-{mode}{sealed}"));
        ctx.s3.prefix = format!("{prefix}layout-{layout}-{mode}{sealed}/");
    }
    (ctx.layout, ctx.mode) = (layout, mode);
    f(ctx);
    (ctx.work, ctx.s3.prefix, ctx.layout, ctx.mode) = (work, prefix, LAYOUTS[0], "full");
}

/// The sections run with encryption on: the round trip and the bit flip, and with `kills_and_proxy`
/// the kill loop and the fault proxy between them.
fn encrypted_sections(ctx: &mut Ctx, kills_and_proxy: bool) {
    let tag = format!(" [{} {} encrypted]", ctx.layout, ctx.mode);
    section(
        ctx,
        &format!(
            "encrypted snapshots: keys, list, verify, restore, refusals, no plaintext stored{tag}"
        ),
        encrypted::round_trip,
    );
    if kills_and_proxy {
        section(
            ctx,
            &format!("kill -9 during backup run{tag}"),
            faults::kill_loop,
        );
        section(ctx, &format!("TCP fault proxy{tag}"), faults::proxy);
        section(
            ctx,
            &format!("tenant keys: forget-tenant, the other tenants restore{tag}"),
            encrypted::tenant_keys,
        );
        section(
            ctx,
            &format!("archives: run, query, restore, sealed in the bucket{tag}"),
            encrypted::archives,
        );
    }
    section(
        ctx,
        &format!("a bit flipped in a stored object{tag}"),
        faults::bit_flip,
    );
}

/// Runs `f` with keys from `hitkeep backup keygen` in every run's settings; a failure to make them is
/// one failed check.
fn with_keys(ctx: &mut Ctx, f: impl FnOnce(&mut Ctx)) {
    match encrypted::keys(ctx) {
        Ok(keys) => {
            ctx.keys = Some(keys);
            f(ctx);
            ctx.keys = None;
        }
        Err(e) => {
            ctx.report.section("encryption keys");
            ctx.report.check(
                "hitkeep backup keygen makes two keys",
                false,
                format!("{e:#}"),
            );
        }
    }
}

fn section(ctx: &mut Ctx, name: &str, f: fn(&mut Ctx) -> Result<()>) {
    // HITKEEP_E2E_ONLY=word runs only the sections whose name holds it, `a|b` those holding either
    // (the secret scan always runs).
    if let Ok(only) = std::env::var("HITKEEP_E2E_ONLY")
        && !only.split('|').any(|word| name.contains(word))
        && name != "secrets"
    {
        return;
    }
    ctx.report.section(name);
    let start = Instant::now();
    // A panic is one failed check too: the other lane's checks and the secret scan still count.
    let failure = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ctx))) {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(format!("{err:#}")),
        Err(panic) => Some(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
    };
    if let Some(failure) = failure {
        ctx.report
            .check(format!("{name}: ran to the end"), false, failure);
    }
    ctx.report
        .figure(format!("{name}: time"), format!("{:.1?}", start.elapsed()));
}

/// Every byte hitkeep printed in the whole run, logs at trace level included, searched for the
/// secret key, session tokens and age private keys, and for lines so long they can only be payloads.
fn scan_secrets(ctx: &mut Ctx) -> Result<()> {
    let transcript = ctx.hk.transcript().clone();
    let secrets = ctx.secrets.clone();
    ctx.report.figure("secrets searched for", secrets.len());
    for (i, secret) in secrets.iter().enumerate() {
        let hits = transcript
            .windows(secret.len())
            .filter(|w| *w == secret.as_bytes())
            .count();
        ctx.report.check(
            format!(
                "secret #{} ({} chars) appears nowhere in {} bytes of output",
                i + 1,
                secret.len(),
                transcript.len()
            ),
            hits == 0,
            format!("{hits} occurrences"),
        );
    }
    // A log line that long is a payload, not a message: a dependency's span that records request
    // bodies once printed every uploaded byte at debug level.
    let long = transcript
        .split(|b| *b == b'\n')
        .filter(|line| line.len() > LONGEST_LINE)
        .count();
    ctx.report.check(
        format!(
            "no line of output is longer than {} KiB (no request body in a log)",
            LONGEST_LINE / 1024
        ),
        long == 0,
        format!("{long} lines"),
    );
    Ok(())
}

/// The longest line hitkeep may print: JSON reports of a cycle fit many times over.
const LONGEST_LINE: usize = 64 * 1024;

/// GET over plain HTTP/1.0: (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("HTTP status")?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Every path under `dir`, directories included.
pub fn entries(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p);
        }
    }
    Ok(out)
}

/// Polls `f` every `every` until it gives `Some` or `limit` passes.
pub fn poll<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(Some(v));
        }
        if start.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}
