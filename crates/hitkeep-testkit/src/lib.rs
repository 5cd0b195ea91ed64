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
//! [`ServerOptions`] make it misbehave like real providers: refuse deletes, refuse `x-amz-checksum-*`
//! headers as Backblaze B2 does, or damage upload bodies on the way (after the signature check, as a
//! network would, since requests are signed without their payload).
//!
//! s3s-fs does not implement ListMultipartUploads; the server answers it from s3s-fs's own records of
//! its open uploads (`uploads.rs`), so tests can find the uploads a killed client left.
//!
//! [`MotoServer`] runs moto's S3 server as a child process, for what s3s-fs lacks: S3 Object Lock.
//!
//! What it will not do: stand in for AWS-only behaviour (IAM, lifecycle rules), or run outside tests.

#![deny(missing_docs)]

mod moto;
mod uploads;

pub use moto::{MOTO_REQUIREMENT, MotoServer};

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hitkeep_config::{Config, Location, S3Settings, Sources};
use hitkeep_storage::Storage;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
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
    counters: Arc<Counters>,
}

/// Misbehaviours a test server can be given.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Refuse DeleteObject and DeleteObjects with AccessDenied, as a bucket policy without delete rights does.
    pub refuse_deletes: bool,
    /// Answer every request carrying an `x-amz-checksum-*` header with Backblaze B2's 400
    /// InvalidArgument, as several providers do.
    pub refuse_checksum_headers: bool,
    /// Flip a bit of every PutObject and UploadPart body after the signature check.
    pub damage_uploads: bool,
    /// Answer every PUT carrying `If-None-Match` with 501 NotImplemented, as S3-compatible services
    /// without conditional writes do, instead of ignoring the header.
    pub refuse_conditional_writes: bool,
    /// Answer ListMultipartUploads with 501 NotImplemented, as s3s-fs alone (and some providers) do.
    pub refuse_list_uploads: bool,
    /// Put at most this many uploads in a ListMultipartUploads page, whatever the client asks for
    /// (servers may send fewer), so that paging is exercised.
    pub uploads_page: Option<usize>,
}

impl ServerOptions {
    /// A server that refuses deletes.
    pub fn refusing_deletes() -> Self {
        ServerOptions {
            refuse_deletes: true,
            ..ServerOptions::default()
        }
    }

    /// A server that refuses `x-amz-checksum-*` headers, as Backblaze B2 does.
    pub fn refusing_checksum_headers() -> Self {
        ServerOptions {
            refuse_checksum_headers: true,
            ..ServerOptions::default()
        }
    }

    /// A server that refuses `If-None-Match` on a PUT with 501 NotImplemented.
    pub fn refusing_conditional_writes() -> Self {
        ServerOptions {
            refuse_conditional_writes: true,
            ..ServerOptions::default()
        }
    }

    /// A server on a network that flips a bit of every upload body.
    pub fn damaging_uploads() -> Self {
        ServerOptions {
            damage_uploads: true,
            ..ServerOptions::default()
        }
    }

    /// A server that does not implement ListMultipartUploads.
    pub fn refusing_list_uploads() -> Self {
        ServerOptions {
            refuse_list_uploads: true,
            ..ServerOptions::default()
        }
    }

    /// A server that lists multipart uploads `n` to a page.
    pub fn paging_uploads(n: usize) -> Self {
        ServerOptions {
            uploads_page: Some(n),
            ..ServerOptions::default()
        }
    }
}

/// What a server saw, for tests to assert on.
#[derive(Debug, Default)]
struct Counters {
    lists: AtomicUsize,
    upload_lists: AtomicUsize,
    refused_checksums: AtomicUsize,
    content_md5: AtomicUsize,
}

/// Needs a valid signature for everything, counts listings, and denies deletes when told to.
#[derive(Debug)]
struct Access {
    refuse_deletes: bool,
    counters: Arc<Counters>,
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
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn list_multipart_uploads(
        &self,
        _req: &mut s3s::S3Request<s3s::dto::ListMultipartUploadsInput>,
    ) -> s3s::S3Result<()> {
        self.counters.upload_lists.fetch_add(1, Ordering::Relaxed);
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
        let counters = Arc::new(Counters::default());
        let task = Some(serve(listener, root.path(), options, counters.clone())?);
        Ok(S3Server {
            addr,
            root,
            task,
            options,
            counters,
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
        s3_env(&self.host_port(), ACCESS_KEY_ID, SECRET_ACCESS_KEY)
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
        self.counters.lists.load(Ordering::Relaxed)
    }

    /// ListMultipartUploads requests (pages) served so far.
    pub fn list_upload_requests(&self) -> usize {
        self.counters.upload_lists.load(Ordering::Relaxed)
    }

    /// The keys of the multipart uploads open in [`BUCKET`] (started, neither completed nor aborted),
    /// sorted, as s3s-fs records them on disk.
    pub fn open_uploads(&self) -> io::Result<Vec<String>> {
        let uploads = uploads::open_uploads(self.root.path(), BUCKET)?;
        Ok(uploads.into_iter().map(|u| u.key).collect())
    }

    /// Requests refused for an `x-amz-checksum-*` header so far
    /// ([`ServerOptions::refuse_checksum_headers`]).
    pub fn refused_checksum_requests(&self) -> usize {
        self.counters.refused_checksums.load(Ordering::Relaxed)
    }

    /// PUT requests that carried a `Content-MD5` header so far.
    pub fn content_md5_requests(&self) -> usize {
        self.counters.content_md5.load(Ordering::Relaxed)
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
                    let counters = self.counters.clone();
                    self.task = Some(serve(listener, self.root.path(), self.options, counters)?);
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
    counters: Arc<Counters>,
) -> io::Result<JoinHandle<()>> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(uploads::WithUploads {
        fs,
        root: root.to_owned(),
        refuse: options.refuse_list_uploads,
        page: options.uploads_page,
        conditional: tokio::sync::Mutex::new(()),
    });
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
    builder.set_access(Access {
        refuse_deletes: options.refuse_deletes,
        counters: counters.clone(),
    });
    let service = Front {
        s3: builder.build(),
        options,
        counters,
    };
    Ok(tokio::spawn(async move {
        // Connections live in this set, so aborting the accept loop drops them all (a "crash").
        let mut connections = JoinSet::new();
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            // As S3 servers do: with Nagle's algorithm a response written in two parts waits for the
            // client's delayed ACK, 40 ms a request on loopback.
            let _ = socket.set_nodelay(true);
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

/// Answers `req` with `status` and an S3 error document, once its body is read: a client still
/// sending it would see a reset, not the answer.
async fn refuse(
    req: http::Request<s3s::Body>,
    status: http::StatusCode,
    error: &str,
) -> http::Response<s3s::Body> {
    let _ = req.into_body().store_all_limited(usize::MAX).await;
    http::Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(s3s::Body::from(error.to_owned()))
        .expect("a static response")
}

/// AWS S3's answer to a header it does not implement, as S3-compatible services give it for
/// `If-None-Match`.
const CONDITION_REFUSAL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message><Header>If-None-Match</Header></Error>";

/// Backblaze B2's answer to a checksum header, verbatim.
const B2_REFUSAL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Error>\n    <Code>InvalidArgument</Code>\n    <Message>Unsupported header 'x-amz-checksum-crc32c' received for this API call.</Message>\n</Error>";

type HttpResult = Result<http::Response<s3s::Body>, s3s::HttpError>;

/// In front of s3s, at the HTTP level: what [`ServerOptions`] asks real providers' behaviour of.
#[derive(Clone)]
struct Front {
    s3: S3Service,
    options: ServerOptions,
    counters: Arc<Counters>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Front {
    type Response = http::Response<s3s::Body>;
    type Error = s3s::HttpError;
    type Future = Pin<Box<dyn Future<Output = HttpResult> + Send>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.handle(req.map(s3s::Body::from)).await })
    }
}

impl Front {
    async fn handle(self, req: http::Request<s3s::Body>) -> HttpResult {
        let headers = req.headers();
        let upload = req.method() == http::Method::PUT;
        if upload && headers.contains_key("content-md5") {
            self.counters.content_md5.fetch_add(1, Ordering::Relaxed);
        }
        let checksummed = headers
            .keys()
            .any(|k| k.as_str().starts_with("x-amz-checksum-"));
        if self.options.refuse_checksum_headers && checksummed {
            self.counters
                .refused_checksums
                .fetch_add(1, Ordering::Relaxed);
            return Ok(refuse(req, http::StatusCode::BAD_REQUEST, B2_REFUSAL).await);
        }
        if self.options.refuse_conditional_writes && upload && headers.contains_key("if-none-match")
        {
            return Ok(refuse(req, http::StatusCode::NOT_IMPLEMENTED, CONDITION_REFUSAL).await);
        }
        if self.options.damage_uploads && upload {
            let (parts, mut body) = req.into_parts();
            let mut bytes = body
                .store_all_limited(usize::MAX)
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            if let Some(first) = bytes.first_mut() {
                *first ^= 0x10;
            }
            return self
                .s3
                .call(http::Request::from_parts(parts, s3s::Body::from(bytes)))
                .await;
        }
        self.s3.call(req).await
    }
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

/// The `HITKEEP_S3_*` settings of a local server, MinIO-style: `host_port`, path-style URLs, plain
/// HTTP and static keys.
fn s3_env(host_port: &str, key_id: &str, secret: &str) -> Vec<(String, String)> {
    [
        ("HITKEEP_S3_ENDPOINT", host_port),
        ("HITKEEP_S3_URL_STYLE", "path"),
        ("HITKEEP_S3_USE_SSL", "false"),
        ("HITKEEP_S3_REGION", "us-east-1"),
        ("HITKEEP_S3_ACCESS_KEY_ID", key_id),
        ("HITKEEP_S3_SECRET_ACCESS_KEY", secret),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// S3 settings from `HITKEEP_*` variables, resolved as the binary resolves them.
fn s3_settings(env: Vec<(String, String)>) -> S3Settings {
    Config::load(&Sources::with_env(env))
        .expect("valid test settings")
        .settings
        .s3
}

/// Checks a table of errors against the contract every library error keeps: its kind, its message
/// (which never holds the hint), and a hint that says the expected words, or no hint.
///
/// # Panics
/// On the first case that breaks the contract, naming it.
pub fn assert_error_contract<E, K>(
    cases: Vec<(E, K, &str, Option<&str>)>,
    kind: impl Fn(&E) -> K,
    hint: impl Fn(&E) -> Option<String>,
) where
    E: std::fmt::Display,
    K: PartialEq + std::fmt::Debug,
{
    for (err, expected_kind, message, expected_hint) in cases {
        assert_eq!(kind(&err), expected_kind, "{err}");
        assert_eq!(err.to_string(), message);
        let got = hint(&err);
        match expected_hint {
            Some(words) => assert!(
                got.as_deref().is_some_and(|h| h.contains(words)),
                "{err}: {got:?}"
            ),
            None => assert_eq!(got, None, "{err}"),
        }
    }
}
