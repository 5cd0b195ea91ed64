//! [moto](https://pypi.org/project/moto/)'s S3 server as a child process: the S3 implementation
//! here that has Object Lock (s3s-fs and Garage have none). Installed from PyPI into the cache on
//! first use, as `scripts/test` does; a test that needs it fails, never skips, when that fails.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hitkeep_config::Location;
use hitkeep_storage::Storage;

use crate::{ACCESS_KEY_ID, SECRET_ACCESS_KEY, s3_env, s3_settings};

/// The moto release tests run against.
pub const MOTO_REQUIREMENT: &str = "moto[s3]==5.2.5";

/// A moto S3 server on a free port of 127.0.0.1, killed on drop. It accepts any keys; tests use the
/// usual ones.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
    site: PathBuf,
}

impl MotoServer {
    /// Starts moto and waits until it answers (installing it first when missing).
    ///
    /// # Panics
    /// When moto cannot be installed or does not start: the test needs it, and says how to get it.
    pub fn start() -> MotoServer {
        let site = moto_site();
        let addr = free_port().expect("a free port on 127.0.0.1");
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(addr.port().to_string())
            .env("PYTHONPATH", &site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs moto.server");
        let mut server = MotoServer { child, addr, site };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("moto.server exited at start ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "moto.server did not start in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Creates `bucket`, with S3 Object Lock enabled when `object_lock` (which also turns on
    /// versioning, as on AWS).
    ///
    /// # Panics
    /// When moto refuses.
    pub fn create_bucket(&self, bucket: &str, object_lock: bool) {
        // Python's standard library sends it: moto does not check signatures.
        let script = format!(
            "import urllib.request as u\nr = u.Request('http://{}/{bucket}', method='PUT')\nif {}: r.add_header('x-amz-bucket-object-lock-enabled', 'true')\nu.urlopen(r).read()",
            self.addr,
            if object_lock { "True" } else { "False" },
        );
        let status = Command::new("python3")
            .args(["-c", &script])
            .env("PYTHONPATH", &self.site)
            .status()
            .expect("python3 runs");
        assert!(status.success(), "moto did not create bucket {bucket}");
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The `HITKEEP_S3_*` settings that reach this server.
    pub fn hitkeep_env(&self) -> Vec<(String, String)> {
        s3_env(&self.host_port(), ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    }

    /// A [`Storage`] on `bucket` under `prefix`.
    ///
    /// # Panics
    /// When the storage cannot be opened.
    pub async fn storage(&self, bucket: &str, prefix: &str) -> Storage {
        let location: Location = format!("s3://{bucket}/{prefix}")
            .parse()
            .expect("an s3:// location");
        Storage::open(&location, &s3_settings(self.hitkeep_env()))
            .await
            .expect("a storage on moto")
    }
}

impl MotoServer {
    /// The server's clock (its `Date` header), by which Object Lock dates are judged.
    ///
    /// # Panics
    /// When the bucket's lock setting cannot be read or the server sends no `Date`.
    pub async fn server_now(storage: &Storage) -> jiff::Timestamp {
        storage
            .bucket_object_lock()
            .await
            .expect("the bucket's Object Lock setting")
            .server_time
            .expect("moto sends Date")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// `HITKEEP_TEST_MOTO`, else the install scripts/test keeps in the cache, made there when missing.
fn moto_site() -> PathBuf {
    if let Some(site) = std::env::var_os("HITKEEP_TEST_MOTO") {
        return site.into();
    }
    let cache = std::env::var_os("HITKEEP_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hitkeep"),
        PathBuf::from,
    );
    let site = cache.join("python-moto");
    if !site.join("moto").is_dir() {
        // Installed beside and renamed into place: tests in several binaries may get here at once,
        // and none may see a half-installed tree.
        std::fs::create_dir_all(&cache).expect("the cache folder");
        let staging = tempfile::Builder::new()
            .prefix("python-moto.")
            .tempdir_in(&cache)
            .expect("a staging folder in the cache");
        let staged = staging.path().join("site");
        let installed = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&staged)
            .args([MOTO_REQUIREMENT, "flask", "flask-cors"])
            .status();
        assert!(
            matches!(installed, Ok(s) if s.success()),
            "moto (an S3 server with Object Lock) is needed, and installing it failed ({installed:?}); run `python3 -m pip install --target {} '{MOTO_REQUIREMENT}' flask flask-cors`, or set HITKEEP_TEST_MOTO to such an install",
            site.display()
        );
        // Another test's install may have landed first: then this one is not needed.
        let _ = std::fs::rename(&staged, &site);
    }
    site
}
