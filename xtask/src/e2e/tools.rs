//! The outside tools the run needs, installed when missing: rclone (Debian) as the standard S3
//! client, Python's duckdb 1.5 (PyPI) to read databases, Garage (crates.io) as the S3 server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::server::S3Server;

/// Runs a command to completion and returns stdout; a failure carries stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A workspace binary (`hitkeep`) scripts/test built, refused when older than the sources.
///
/// The xtask does not build it itself: a cargo started from `cargo run` inherits variables
/// (CARGO_HOME, LD_LIBRARY_PATH, RUSTUP_*) that change some dependencies' fingerprints, which then
/// rebuilds bundled DuckDB (20 minutes) in that build and again in the next ordinary one.
pub fn built(root: &Path, name: &str) -> Result<PathBuf> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("debug").join(name);
    let fix = "run `cargo build --workspace --locked` first (scripts/test does)";
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .with_context(|| format!("no {name} binary at {}: {fix}", bin.display()))?;
    let newest = match sources_of(&bin, root) {
        Some(sources) => newest_of(sources)?,
        None => newest_source(root)?,
    };
    if newest.0 > built && std::env::var_os("HITKEEP_E2E_ALLOW_STALE").is_none() {
        bail!(
            "{} is older than {}: {fix}",
            bin.display(),
            newest.1.display()
        );
    }
    Ok(bin)
}

/// The sources cargo recorded for `bin` in its dep-info file (`<bin>.d`), when there is one and it
/// names this clone's. A clone elsewhere that shares the build cache (CI's checkout) leaves its own
/// paths there while cargo still counts the binary fresh for this one: `None` then, and the caller
/// scans this clone's sources.
fn sources_of(bin: &Path, root: &Path) -> Option<Vec<PathBuf>> {
    let info = std::fs::read_to_string(bin.with_extension("d")).ok()?;
    let (_, sources) = info.lines().next()?.split_once(": ")?;
    let sources: Vec<PathBuf> = sources.split_whitespace().map(PathBuf::from).collect();
    sources
        .iter()
        .any(|p| p.starts_with(root))
        .then_some(sources)
}

fn newest_of(paths: Vec<PathBuf>) -> Result<(std::time::SystemTime, PathBuf)> {
    let mut newest = (std::time::SystemTime::UNIX_EPOCH, PathBuf::new());
    for p in paths {
        // A source that moved away since the build counts as changed.
        let modified = std::fs::metadata(&p).and_then(|m| m.modified());
        let modified = modified.unwrap_or_else(|_| std::time::SystemTime::now());
        if modified > newest.0 {
            newest = (modified, p);
        }
    }
    Ok(newest)
}

/// The most recently modified Rust source or manifest of the crates (when cargo left no dep-info).
fn newest_source(root: &Path) -> Result<(std::time::SystemTime, PathBuf)> {
    let mut newest = (std::time::SystemTime::UNIX_EPOCH, root.join("Cargo.lock"));
    let mut stack = vec![
        root.join("crates"),
        root.join("Cargo.lock"),
        root.join("Cargo.toml"),
    ];
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p)?;
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p)?.filter_map(|e| e.ok().map(|e| e.path())));
        } else if p
            .extension()
            .is_some_and(|e| e == "rs" || e == "toml" || e == "lock")
            && meta.modified()? > newest.0
        {
            newest = (meta.modified()?, p);
        }
    }
    Ok(newest)
}

/// Where `name` is found on PATH, if anywhere.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// apt-get install, for the Debian packages the run needs.
pub fn apt_install(package: &str) -> Result<()> {
    println!("xtask: installing {package} from Debian");
    run(Command::new("apt-get").args(["update", "-q"])).with_context(|| {
        format!("apt-get update (install {package} by hand if you are not root)")
    })?;
    run(Command::new("apt-get").args(["install", "-y", "-q", package]))?;
    Ok(())
}

/// Garage from crates.io into `cache/tools`, once (about 10 minutes cold on 2 cores).
pub fn garage(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("tools");
    let bin = root.join("bin/garage");
    if bin.is_file() {
        return Ok(bin);
    }
    println!(
        "e2e: installing Garage from crates.io into {} (about 10 minutes, once)",
        root.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["install", "garage", "--locked", "--root"])
        .arg(&root)
        // cargo's own temporary target dir, not the workspace's cache.
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("run cargo install garage")?;
    ensure!(status.success(), "cargo install garage failed");
    Ok(bin)
}

/// rclone, configured through its environment for one server (no config file is written).
#[derive(Debug)]
pub struct Rclone {
    env: Vec<(String, String)>,
}

impl Rclone {
    pub fn new(server: &S3Server) -> Result<Rclone> {
        if on_path("rclone").is_none() {
            apt_install("rclone")?;
        }
        let scheme = if server.use_ssl { "https" } else { "http" };
        let env = [
            ("TYPE", "s3".to_owned()),
            ("PROVIDER", "Other".to_owned()),
            ("ACCESS_KEY_ID", server.access_key.clone()),
            ("SECRET_ACCESS_KEY", server.secret_key.clone()),
            ("ENDPOINT", format!("{scheme}://{}", server.addr())),
            ("REGION", server.region.clone()),
            ("FORCE_PATH_STYLE", "true".to_owned()),
        ];
        let env = env
            .into_iter()
            .map(|(k, v)| (format!("RCLONE_CONFIG_E2E_{k}"), v))
            .collect();
        Ok(Rclone { env })
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("rclone");
        // rclone refuses to start while AWS_CA_BUNDLE is set (measured-facts.md).
        cmd.env_remove("AWS_CA_BUNDLE")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn remote(path: &str) -> String {
        format!("e2e:{path}")
    }

    /// `rclone copy` between a local folder and `bucket/prefix` (`up`: to the server), with `flags`.
    pub fn copy(&self, local: &Path, path: &str, up: bool, flags: &[&str]) -> Result<()> {
        let (local, remote) = (local.to_string_lossy().into_owned(), Self::remote(path));
        let (from, to) = if up { (local, remote) } else { (remote, local) };
        run(self.cmd().args(["copy", &from, &to]).args(flags))?;
        Ok(())
    }

    pub fn mkdir(&self, bucket: &str) -> Result<()> {
        run(self.cmd().args(["mkdir", &Self::remote(bucket)]))?;
        Ok(())
    }

    /// Every object under `bucket/prefix`, key relative to it, with its size.
    pub fn objects(&self, path: &str) -> Result<BTreeMap<String, u64>> {
        let out = run(self
            .cmd()
            .args(["lsjson", "-R", "--files-only", &Self::remote(path)]));
        let out = match out {
            Ok(out) => out,
            // An empty prefix is "directory not found" to rclone.
            Err(err) if format!("{err:#}").contains("directory not found") => {
                return Ok(BTreeMap::new());
            }
            Err(err) => return Err(err),
        };
        let entries: Vec<Value> = serde_json::from_str(&out).context("parse rclone lsjson")?;
        Ok(entries
            .iter()
            .filter_map(|e| Some((e["Path"].as_str()?.to_owned(), e["Size"].as_u64()?)))
            .collect())
    }

    /// The folders directly under `path`.
    pub fn dirs(&self, path: &str) -> Result<Vec<String>> {
        let out = run(self.cmd().args(["lsf", "--dirs-only", &Self::remote(path)]));
        match out {
            Ok(out) => Ok(out
                .lines()
                .map(|l| l.trim_end_matches('/').to_owned())
                .collect()),
            Err(err) if format!("{err:#}").contains("directory not found") => Ok(Vec::new()),
            Err(err) => Err(err),
        }
    }

    /// SHA-256 of every object under `path`, computed by rclone from the downloaded bytes.
    pub fn sha256(&self, path: &str) -> Result<BTreeMap<String, String>> {
        let out = run(self
            .cmd()
            .args(["hashsum", "sha256", "--download", &Self::remote(path)]))?;
        Ok(out
            .lines()
            .filter_map(|l| {
                l.split_once("  ")
                    .map(|(h, p)| (p.to_owned(), h.to_owned()))
            })
            .collect())
    }

    pub fn cat(&self, key: &str) -> Result<Vec<u8>> {
        let out = self
            .cmd()
            .args(["cat", &Self::remote(key)])
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "rclone cat {key}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out.stdout)
    }

    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let mut child = self
            .cmd()
            .args(["rcat", &Self::remote(key)])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("rclone stdin")?
            .write_all(bytes)?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "rclone rcat {key}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    pub fn purge(&self, path: &str) -> Result<()> {
        let _ = run(self.cmd().args(["purge", &Self::remote(path)]));
        Ok(())
    }
}

/// Python with duckdb 1.5.6 (the version HitKeep Go ships), reading databases for the checks.
#[derive(Debug)]
pub struct Python {
    site: PathBuf,
    script: PathBuf,
}

/// Per database (`shared`, `tenants/<uuid>`), per table: row count and an order-independent hash of
/// every row. Equal fingerprints mean equal contents.
pub type Fingerprint = BTreeMap<String, BTreeMap<String, (u64, String)>>;

impl Python {
    pub fn new(cache: &Path, work: &Path) -> Result<Python> {
        let site = cache.join("python-duckdb-1.5");
        if !site.join("duckdb").is_dir() {
            println!(
                "e2e: installing Python duckdb 1.5.6 into {}",
                site.display()
            );
            run(Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--target",
                ])
                .arg(&site)
                .arg("duckdb==1.5.6"))?;
        }
        let script = work.join("e2e_db.py");
        std::fs::write(&script, include_str!("e2e_db.py"))?;
        Ok(Python { site, script })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", &self.site)
            .arg(&self.script)
            .args(args);
        cmd
    }

    /// The shared database at `db` and every `data/tenants/*/hitkeep.db`.
    pub fn fingerprint(&self, db: &Path, data: &Path) -> Result<Fingerprint> {
        let out = run(&mut self.cmd(&[
            "fingerprint",
            &db.to_string_lossy(),
            &data.to_string_lossy(),
        ]))?;
        let raw: BTreeMap<String, BTreeMap<String, (u64, String)>> =
            serde_json::from_str(&out).context("parse fingerprint")?;
        Ok(raw)
    }

    /// Fingerprint of one database file.
    pub fn fingerprint_file(&self, db: &Path) -> Result<BTreeMap<String, (u64, String)>> {
        let out = run(&mut self.cmd(&["fingerprint-file", &db.to_string_lossy()]))?;
        serde_json::from_str(&out).context("parse fingerprint")
    }

    /// A bare `IMPORT DATABASE` of `folder` into a new `db` in DuckDB 1.5, then its fingerprint.
    pub fn import_fingerprint(
        &self,
        folder: &Path,
        db: &Path,
    ) -> Result<BTreeMap<String, (u64, String)>> {
        let out = run(&mut self.cmd(&[
            "import-fingerprint",
            &folder.to_string_lossy(),
            &db.to_string_lossy(),
        ]))?;
        serde_json::from_str(&out).context("parse fingerprint")
    }

    /// A DuckDB 1.5 connection holding `db` open for writing, as a running HitKeep server does,
    /// from the moment this returns until the child's stdin is closed.
    pub fn hold(&self, db: &Path) -> Result<std::process::Child> {
        use std::io::BufRead as _;
        let code = "import sys, duckdb\n\
                    con = duckdb.connect(sys.argv[1])\n\
                    con.execute('select 1').fetchall()\n\
                    print('ready', flush=True)\n\
                    sys.stdin.read()\n";
        let mut child = Command::new("python3")
            .env("PYTHONPATH", &self.site)
            .args(["-c", code])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start python3 holding a database")?;
        let stdout = child.stdout.take().context("python3 stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("python3 did not open {}: {line:?}", db.display());
        }
        Ok(child)
    }

    /// Adds one row to a marker table, so each backup in a loop captures a different state.
    pub fn mark(&self, db: &Path, n: usize) -> Result<()> {
        run(&mut self.cmd(&["mark", &db.to_string_lossy(), &n.to_string()]))?;
        Ok(())
    }
}

/// Rows per table summed over every database of a fingerprint.
pub fn rows_per_table(fp: &Fingerprint) -> BTreeMap<String, u64> {
    let mut rows = BTreeMap::new();
    for tables in fp.values() {
        for (table, (count, _)) in tables {
            *rows
                .entry(table.trim_start_matches("main.").to_owned())
                .or_default() += count;
        }
    }
    rows
}

/// Where two fingerprints differ, for a check's detail.
pub fn diff(a: &Fingerprint, b: &Fingerprint) -> String {
    let mut out = Vec::new();
    for db in a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (a.get(db), b.get(db)) {
            (Some(x), Some(y)) => {
                for t in x
                    .keys()
                    .chain(y.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                {
                    if x.get(t) != y.get(t) {
                        out.push(format!("{db} {t}: {:?} vs {:?}", x.get(t), y.get(t)));
                    }
                }
            }
            (x, y) => out.push(format!("{db}: present {} vs {}", x.is_some(), y.is_some())),
        }
    }
    if out.is_empty() {
        "equal".to_owned()
    } else {
        out.join("\n")
    }
}

/// moto's S3 server (PyPI), the S3 server here that implements Object Lock (Garage does not), run
/// beside the run's server for the Object Lock section; killed on drop. The helpers below talk to it
/// with boto3 (installed with moto), signed.
#[derive(Debug)]
pub struct Moto {
    child: std::process::Child,
    site: PathBuf,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

/// The moto release the run uses (as `hitkeep-testkit`'s).
const MOTO: &str = "moto[s3]==5.2.5";

impl Moto {
    /// Starts moto from `HITKEEP_TEST_MOTO` or `{cache}/python-moto` (installed there when missing).
    pub fn start(cache: &Path, work: &Path) -> Result<Moto> {
        let site = match std::env::var_os("HITKEEP_TEST_MOTO") {
            Some(site) => PathBuf::from(site),
            None => cache.join("python-moto"),
        };
        if !site.join("moto").is_dir() {
            println!("e2e: installing {MOTO} into {}", site.display());
            run(Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--target",
                ])
                .arg(&site)
                .args([MOTO, "flask", "flask-cors"]))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(work.join("moto.log"))?;
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .env("PYTHONPATH", &site)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start moto.server")?;
        let moto = Moto {
            child,
            site,
            addr: format!("127.0.0.1:{port}"),
        };
        super::server::wait_http(&moto.addr, std::time::Duration::from_secs(60))?;
        Ok(moto)
    }

    /// Runs `script` with a signed boto3 client `s3` for this server (boto3 comes with moto). Signed,
    /// because moto answers an anonymous request for an object with a private ACL with 403.
    fn python(&self, script: &str) -> Result<String> {
        let prelude = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='http://{}', region_name='us-east-1', \
             aws_access_key_id='moto', aws_secret_access_key='moto')\n",
            self.addr
        );
        run(Command::new("python3")
            .args(["-c", &format!("{prelude}{script}")])
            .env("PYTHONPATH", &self.site))
    }

    /// Creates `bucket`, with Object Lock (and so versioning) when `lock`.
    pub fn create_bucket(&self, bucket: &str, lock: bool) -> Result<()> {
        let lock = if lock { "True" } else { "False" };
        self.python(&format!(
            "s3.create_bucket(Bucket='{bucket}', ObjectLockEnabledForBucket={lock})"
        ))
        .map(drop)
    }

    /// Every object under `bucket/prefix`, with its lock as `HeadObject` reports it: key →
    /// (mode, retain-until as RFC 3339), both empty when unlocked.
    pub fn locks(&self, bucket: &str, prefix: &str) -> Result<BTreeMap<String, (String, String)>> {
        let script = format!(
            r#"import json
out = {{}}
for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}'):
    for c in page.get('Contents', []):
        h = s3.head_object(Bucket='{bucket}', Key=c['Key'])
        until = h.get('ObjectLockRetainUntilDate')
        out[c['Key']] = [h.get('ObjectLockMode', ''), until.isoformat() if until else '']
print(json.dumps(out))"#
        );
        let text = self.python(&script)?;
        let parsed: BTreeMap<String, (String, String)> =
            serde_json::from_str(&text).context("parse moto's locks")?;
        Ok(parsed)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
