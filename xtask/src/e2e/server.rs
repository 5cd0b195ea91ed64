//! The S3 server the run talks to: MinIO when `minio` is on PATH, an endpoint the caller names in
//! `HITKEEP_E2E_S3_ENDPOINT`, else a single-node Garage. Servers we start keep their data in the
//! run's temp directory and are killed when the run ends.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::tools;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Minio,
    Endpoint,
    Garage,
}

/// How to start (and start again) a server process we own.
#[derive(Debug)]
struct Process {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the process has ended (a server that could not bind its ports ends at once).
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().map_or(true, |s| s.is_some()))
    }

    /// The log's last lines, for an error that must say why a server never came up.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug)]
pub struct S3Server {
    pub kind: Kind,
    /// host:port, as HITKEEP_S3_ENDPOINT takes it.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub region: String,
    pub use_ssl: bool,
    /// Prepended to every key we use: empty on our own servers (the guide's paths verbatim), a
    /// per-run folder on a caller's endpoint so runs never mix.
    pub prefix: String,
    process: Option<Process>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(p) = &mut self.process {
            p.kill();
        }
    }
}

impl S3Server {
    pub fn start(cache: &Path, work: &Path, run_id: &str) -> Result<S3Server> {
        if let Ok(endpoint) = std::env::var("HITKEEP_E2E_S3_ENDPOINT") {
            return endpoint_from_env(endpoint, run_id);
        }
        if let Some(minio) = super::tools::on_path("minio") {
            return start_minio(minio, work);
        }
        start_garage(cache, work)
    }

    pub fn describe(&self) -> String {
        let name = match self.kind {
            Kind::Minio => "MinIO (minio on PATH)",
            Kind::Endpoint => "the endpoint in HITKEEP_E2E_S3_ENDPOINT",
            Kind::Garage => "Garage (single node, from crates.io, block compression off)",
        };
        format!(
            "{name} at {}, bucket {}, region {}",
            self.endpoint, self.bucket, self.region
        )
    }

    /// `s3://bucket/<prefix><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("s3://{}/{}{path}", self.bucket, self.prefix)
    }

    /// `bucket/<prefix><path>`, as rclone names it.
    pub fn key(&self, path: &str) -> String {
        format!("{}/{}{path}", self.bucket, self.prefix)
    }

    /// host:port to connect to.
    pub fn addr(&self) -> String {
        self.endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_owned()
    }

    /// The server's process id, when it is a process of ours.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref()?.child.as_ref().map(Child::id)
    }

    pub fn can_restart(&self) -> bool {
        self.process.is_some()
    }

    /// Stops the server process (kill -9: the harshest stop).
    pub fn stop(&mut self) {
        if let Some(p) = &mut self.process {
            p.kill();
        }
    }

    /// Starts the stopped server again on the same data and waits until it answers.
    pub fn start_again(&mut self) -> Result<()> {
        let process = self.process.as_mut().context("not our server process")?;
        process.spawn()?;
        wait_http(&self.addr(), Duration::from_secs(60))
    }
}

fn endpoint_from_env(endpoint: String, run_id: &str) -> Result<S3Server> {
    let var = |name: &str| std::env::var(format!("HITKEEP_E2E_S3_{name}"));
    let need = |name: &str| {
        var(name).with_context(|| {
            format!("HITKEEP_E2E_S3_ENDPOINT is set: set HITKEEP_E2E_S3_{name} too")
        })
    };
    Ok(S3Server {
        kind: Kind::Endpoint,
        endpoint,
        access_key: need("ACCESS_KEY_ID")?,
        secret_key: need("SECRET_ACCESS_KEY")?,
        bucket: var("BUCKET").unwrap_or_else(|_| "hitkeep".to_owned()),
        region: var("REGION").unwrap_or_else(|_| "us-east-1".to_owned()),
        use_ssl: var("USE_SSL").is_ok_and(|v| v == "true"),
        prefix: format!("e2e-{run_id}/"),
        process: None,
    })
}

/// `N` free ports on 127.0.0.1, all different, the first `wanted` (the guide's 9000) when it is
/// free: each stays bound until all are chosen, so two picks cannot land on the same port.
fn ports<const N: usize>(wanted: u16) -> Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    if let Ok(l) = TcpListener::bind(("127.0.0.1", wanted)) {
        held.push(l);
    }
    while held.len() < N {
        held.push(TcpListener::bind("127.0.0.1:0")?);
    }
    let mut out = [0; N];
    for (slot, l) in out.iter_mut().zip(&held) {
        *slot = l.local_addr()?.port();
    }
    Ok(out)
}

/// Waits until something answers HTTP on `addr`.
pub fn wait_http(addr: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut buf = [0u8; 8];
            if s.read(&mut buf)
                .is_ok_and(|n| n >= 5 && buf.starts_with(b"HTTP/"))
            {
                return Ok(());
            }
        }
        if start.elapsed() > limit {
            bail!("no S3 server answering on {addr} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_minio(bin: PathBuf, work: &Path) -> Result<S3Server> {
    let dir = work.join("minio");
    fs::create_dir_all(&dir)?;
    let [api, console] = ports(9000)?;
    let mut process = Process {
        program: bin,
        args: vec![
            "server".into(),
            dir.join("data").to_string_lossy().into_owned(),
            "--address".into(),
            format!("127.0.0.1:{api}"),
            "--console-address".into(),
            format!("127.0.0.1:{console}"),
        ],
        env: vec![
            ("MINIO_ROOT_USER".into(), "minioadmin".into()),
            ("MINIO_ROOT_PASSWORD".into(), "minioadmin".into()),
        ],
        log: dir.join("minio.log"),
        child: None,
    };
    process.spawn()?;
    let endpoint = format!("localhost:{api}");
    wait_http(&endpoint, Duration::from_secs(60))?;
    // The bucket is made through rclone by the caller (MinIO has no bucket at start).
    Ok(S3Server {
        kind: Kind::Minio,
        endpoint,
        access_key: "minioadmin".into(),
        secret_key: "minioadmin".into(),
        bucket: "hitkeep".into(),
        region: "us-east-1".into(),
        use_ssl: false,
        prefix: String::new(),
        process: Some(process),
    })
}

fn start_garage(cache: &Path, work: &Path) -> Result<S3Server> {
    let bin = tools::garage(cache)?;
    let dir = work.join("garage");
    fs::create_dir_all(&dir)?;
    let [s3, rpc, admin] = ports(9000)?;
    // 64 hex characters, as Garage's rpc_secret wants.
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect();
    let config = dir.join("garage.toml");
    fs::write(
        &config,
        format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
# What we store is zstd Parquet already; compressing it again spends the CPU this machine's 2 cores
# share with the client under test, for nothing.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{secret}"
"#,
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
        ),
    )?;
    let mut process = Process {
        program: bin.clone(),
        args: vec![
            "-c".into(),
            config.to_string_lossy().into_owned(),
            "server".into(),
        ],
        env: vec![("RUST_LOG".into(), "warn".into())],
        log: dir.join("garage.log"),
        child: None,
    };
    process.spawn()?;
    let garage = |args: &[&str]| tools::run(Command::new(&bin).arg("-c").arg(&config).args(args));
    // Wait on `status`, which goes through RPC: `node id` reads the key from the metadata directory
    // and answers before the server listens, and the layout commands after it would find no server.
    let up = super::poll(Duration::from_secs(30), Duration::from_millis(300), || {
        if process.exited() {
            bail!("garage ended at start-up:\n{}", process.log_tail());
        }
        Ok(garage(&["status"]).ok())
    })?;
    if up.is_none() {
        bail!(
            "garage did not answer RPC within 30 s:\n{}",
            process.log_tail()
        );
    }
    let node = garage(&["node", "id", "-q"])?;
    let node = node.trim().split('@').next().unwrap_or_default().to_owned();
    garage(&["layout", "assign", "-z", "dc1", "-c", "10G", &node])?;
    garage(&["layout", "apply", "--version", "1"])?;
    garage(&["bucket", "create", "hitkeep"])?;
    let key = garage(&["key", "create", "hitkeep-e2e"])?;
    garage(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        "hitkeep",
        "--key",
        "hitkeep-e2e",
    ])?;
    let field = |label: &str| {
        key.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
            .with_context(|| format!("no `{label}` in garage key create's output"))
    };
    let endpoint = format!("localhost:{s3}");
    wait_http(&endpoint, Duration::from_secs(30))?;
    Ok(S3Server {
        kind: Kind::Garage,
        endpoint,
        access_key: field("Key ID:")?,
        secret_key: field("Secret key:")?,
        bucket: "hitkeep".into(),
        region: "us-east-1".into(),
        use_ssl: false,
        prefix: String::new(),
        process: Some(process),
    })
}
