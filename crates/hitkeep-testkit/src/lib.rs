//! Test support for HitKeep's crates: a real S3 server, in-process, over HTTP on 127.0.0.1.
//!
//! [`S3Server`] serves [s3s-fs](https://crates.io/crates/s3s-fs) (buckets are directories under a temp
//! root) through s3s with SigV4 authentication on, so tests exercise the real protocol: signing, XML
//! errors, multipart uploads and paginated listings. It is no mock: requests travel over TCP like any
//! client's. It can be stopped mid-request and restarted on the same port to test failures.
//!
//! [`S3Server::storage`] and [`local_storage`] open a HitKeep [`Storage`] on such a server or on a
//! directory, with settings resolved through hitkeep-config exactly as the binary resolves them.
//!
//! What it will not do: stand in for AWS-only behaviour (IAM, lifecycle rules), or run outside tests.

#![deny(missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hitkeep_config::{Config, Location, S3Settings, Sources};
use hitkeep_storage::Storage;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The access key id every test server accepts.
pub const ACCESS_KEY_ID: &str = "HKTESTACCESSKEY01";
/// The secret key every test server accepts.
pub const SECRET_ACCESS_KEY: &str = "hk-test-secret-key-0123456789abcdef";
/// The bucket [`S3Server::start`] creates.
pub const BUCKET: &str = "hitkeep-test";

/// A running in-process S3 server. Dropping it stops the server and removes its data.
#[derive(Debug)]
pub struct S3Server {
    addr: SocketAddr,
    root: tempfile::TempDir,
    task: Option<JoinHandle<()>>,
    options: ServerOptions,
    lists: Arc<AtomicUsize>,
}

/// Misbehaviours a test server can be given.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Refuse DeleteObject and DeleteObjects with AccessDenied, as a bucket policy without delete rights does.
    pub refuse_deletes: bool,
}

impl ServerOptions {
    /// A server that refuses deletes.
    pub fn refusing_deletes() -> Self {
        ServerOptions {
            refuse_deletes: true,
        }
    }
}

/// Needs a valid signature for everything, counts listings, and denies deletes when told to.
#[derive(Debug)]
struct Access {
    refuse_deletes: bool,
    lists: Arc<AtomicUsize>,
}

impl Access {
    fn deletes(&self) -> s3s::S3Result<()> {
        match self.refuse_deletes {
            true => Err(s3s::s3_error!(
                AccessDenied,
                "deletes are refused by this server"
            )),
            false => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl s3s::access::S3Access for Access {
    async fn delete_object(
        &self,
        _req: &mut s3s::S3Request<s3s::dto::DeleteObjectInput>,
    ) -> s3s::S3Result<()> {
        self.deletes()
    }

    async fn delete_objects(
        &self,
        _req: &mut s3s::S3Request<s3s::dto::DeleteObjectsInput>,
    ) -> s3s::S3Result<()> {
        self.deletes()
    }

    async fn list_objects_v2(
        &self,
        _req: &mut s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<()> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl S3Server {
    /// Starts a server on a free port of 127.0.0.1 with one empty bucket, [`BUCKET`].
    pub async fn start() -> io::Result<S3Server> {
        S3Server::start_with(ServerOptions::default()).await
    }

    /// Starts a server that behaves as `options` say.
    pub async fn start_with(options: ServerOptions) -> io::Result<S3Server> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join(BUCKET))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let lists = Arc::new(AtomicUsize::new(0));
        let task = Some(serve(listener, root.path(), options, lists.clone())?);
        Ok(S3Server {
            addr,
            root,
            task,
            options,
            lists,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, as users write `HITKEEP_S3_ENDPOINT`.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The `HITKEEP_S3_*` settings that reach this server, MinIO-style: its endpoint, path-style URLs,
    /// plain HTTP and its static keys.
    pub fn hitkeep_env(&self) -> Vec<(String, String)> {
        [
            ("HITKEEP_S3_ENDPOINT", self.host_port()),
            ("HITKEEP_S3_URL_STYLE", "path".to_owned()),
            ("HITKEEP_S3_USE_SSL", "false".to_owned()),
            ("HITKEEP_S3_REGION", "us-east-1".to_owned()),
            ("HITKEEP_S3_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("HITKEEP_S3_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A [`Storage`] on this server's [`BUCKET`] under `prefix`.
    ///
    /// # Panics
    /// When the storage cannot be opened: this is for tests, where that is the failure to report.
    pub async fn storage(&self, prefix: &str) -> Storage {
        let location: Location = format!("s3://{BUCKET}/{prefix}")
            .parse()
            .expect("an s3:// location");
        Storage::open(&location, &s3_settings(self.hitkeep_env()))
            .await
            .expect("a storage on the test server")
    }

    /// The directory holding the buckets (one subdirectory each).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// ListObjectsV2 requests (pages) served so far: how tests show a listing is bounded.
    pub fn list_requests(&self) -> usize {
        self.lists.load(Ordering::Relaxed)
    }

    /// Creates another, empty bucket.
    pub fn create_bucket(&self, name: &str) -> io::Result<PathBuf> {
        let dir = self.root.path().join(name);
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Stops serving at once: the listener closes and every open connection is dropped mid-request.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Serves again on the same port and data, after [`S3Server::stop`].
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop();
        // The aborted task releases the listener asynchronously; retry the bind briefly.
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    let lists = self.lists.clone();
                    self.task = Some(serve(listener, self.root.path(), self.options, lists)?);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(last.expect("at least one attempt"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    listener: TcpListener,
    root: &Path,
    options: ServerOptions,
    lists: Arc<AtomicUsize>,
) -> io::Result<JoinHandle<()>> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
    builder.set_access(Access {
        refuse_deletes: options.refuse_deletes,
        lists,
    });
    let service = builder.build();
    Ok(tokio::spawn(async move {
        // Connections live in this set, so aborting the accept loop drops them all (a "crash").
        let mut connections = JoinSet::new();
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            connections.spawn(async move {
                let _ = conn.await;
            });
            while connections.try_join_next().is_some() {}
        }
    }))
}

/// A [`Storage`] on the local directory `dir`, with default settings.
///
/// # Panics
/// When the storage cannot be opened.
pub async fn local_storage(dir: &Path) -> Storage {
    Storage::open(&Location::Local(dir.to_owned()), &s3_settings(Vec::new()))
        .await
        .expect("a storage on a local directory")
}

/// S3 settings from `HITKEEP_*` variables, resolved as the binary resolves them.
fn s3_settings(env: Vec<(String, String)>) -> S3Settings {
    Config::load(&Sources::with_env(env))
        .expect("valid test settings")
        .settings
        .s3
}
