//! Uploading an export while DuckDB is still writing it.
//!
//! `EXPORT DATABASE` creates every table's file when it starts, writes several side by side and closes
//! each when its table is done; the biggest (`hits`) is often the last to close. Waiting for the whole
//! export before uploading leaves the network idle while DuckDB works and DuckDB idle while the network
//! works. Here a file's upload starts as soon as it is closed or, for a big file, while it grows: its
//! bytes are followed as they are written and sent a part at a time.
//!
//! When a file is done: the export has finished, or (on Linux) no descriptor of this process other than
//! our reader's points at it any more. DuckDB runs in this process, so `/proc/self/fd` shows its open
//! files; that check comes before the last read to the end of the file, so the last read sees every
//! byte. Elsewhere, the end of the export is the only signal, which is still correct, just later.
//!
//! Following a file assumes it is only appended to, bytes in order. DuckDB 2.0's asynchronous
//! writes break that (a file can read as zeros below its end for a moment), so exports run with them
//! off (`export.rs`). Still, it is checked, not trusted: every file whose upload began while the
//! export ran is fingerprinted as it is sent ([`Tapped`]) and again at rest ([`Fingerprint`]), and one
//! that differs from what was sent is uploaded again whole, so a manifest never describes bytes the
//! file does not hold. The manifest's SHA-256 is computed once, by the upload; the check only has to
//! tell whether the file changed under us, not resist tampering, so it uses xxh3, which costs a
//! small fraction of a second SHA-256 pass over every byte.

use std::collections::HashSet;
use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use xxhash_rust::xxh3::Xxh3Default;

/// How often a follower looks for new bytes, and the scheduler for new or closed files.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// Where an export stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExportState {
    Running,
    Finished,
    /// The export or an upload failed: followers stop with an error, aborting their uploads.
    Failed,
}

/// One export directory and the state of the export writing it, shared by the scheduler and every
/// follower.
#[derive(Clone, Debug)]
pub(crate) struct ExportWatch {
    dir: PathBuf,
    state: watch::Sender<ExportState>,
}

/// A file in the export directory as the scheduler sees it.
#[derive(Debug)]
pub(crate) struct ExportFile {
    pub path: PathBuf,
    pub size: u64,
    /// Still open for writing (or not known to be closed).
    pub open: bool,
}

impl ExportWatch {
    /// A watch over `dir`, which DuckDB creates; its parent must exist. The path is made canonical
    /// because that is how the kernel names open files.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        let name = dir.file_name().unwrap_or_default();
        Ok(ExportWatch {
            dir: std::fs::canonicalize(parent)?.join(name),
            state: watch::channel(ExportState::Running).0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> ExportState {
        *self.state.borrow()
    }

    pub fn set(&self, state: ExportState) {
        // `send_replace` never fails for want of receivers, unlike `send`.
        let _ = self.state.send_replace(state);
    }

    /// The files in the export directory now, leaving out those in `skip` (already being uploaded).
    /// Before DuckDB has created the directory, none.
    pub fn scan(&self, skip: &HashSet<PathBuf>) -> std::io::Result<Vec<ExportFile>> {
        let entries = match std::fs::read_dir(&self.dir) {
            // Read whole before the descriptors are: a file that appears after the descriptors were
            // listed would otherwise look closed while DuckDB writes it.
            Ok(entries) => entries.collect::<std::io::Result<Vec<_>>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|e| !skip.contains(&e.path()))
            .collect();
        let finished = self.state() != ExportState::Running;
        // Listed after the directory: a file closed between the two is seen closed, never the reverse.
        // Not at all when there is nothing new to ask about: the scheduler scans every poll.
        let open = if finished || entries.is_empty() {
            Some(HashSet::new())
        } else {
            open_paths()
        };
        let mut files = Vec::new();
        for entry in entries {
            let meta = entry.metadata()?;
            if meta.is_file() {
                let path = entry.path();
                let open = open.as_ref().is_none_or(|o| o.contains(&path));
                files.push(ExportFile {
                    path,
                    size: meta.len(),
                    open,
                });
            }
        }
        Ok(files)
    }
}

/// The paths this process has open; `None` where `/proc/self/fd` cannot be read (not Linux),
/// meaning "unknown".
fn open_paths() -> Option<HashSet<PathBuf>> {
    Some(fd_targets(None)?.collect())
}

/// What this process's descriptors, except `except`, point at; `None` where `/proc/self/fd` cannot
/// be read. A descriptor closed since the listing has no link any more: it holds nothing open.
fn fd_targets(except: Option<i32>) -> Option<impl Iterator<Item = PathBuf>> {
    let except = except.map(|fd| fd.to_string());
    let fds = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        fds.flatten()
            .filter(move |fd| except.is_none() || fd.file_name().to_str() != except.as_deref())
            .filter_map(|fd| std::fs::read_link(fd.path()).ok()),
    )
}

/// The bytes of `path` in chunks of `chunk_size` as they are written, ending when its writer is done
/// and every byte was read; a file already `closed` is read to its end once. Reads on a blocking
/// thread; at most one chunk waits for the uploader.
pub(crate) fn follow(
    path: PathBuf,
    chunk_size: usize,
    watch: ExportWatch,
    closed: bool,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Unpin {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = follow_blocking(&path, chunk_size, &watch, closed, &tx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn follow_blocking(
    path: &Path,
    chunk_size: usize,
    watch: &ExportWatch,
    closed: bool,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let own = file.as_raw_fd();
    // Never zeroed: `read_to_end` reads into the spare capacity. A zeroed chunk (`vec![0; n]`,
    // calloc) is memset in full whenever the allocator serves it from its heap rather than fresh
    // pages: 16 MiB for every chunk of every file, the smallest too.
    let mut buf: Vec<u8> = Vec::with_capacity(chunk_size);
    // Whether the last drain found nothing new. Only then is the writer asked about: reading every
    // descriptor's link each poll while DuckDB writes was a few percent of a backup's CPU.
    let mut idle = false;
    loop {
        // Decided before draining: once the writer is done, this drain reads to the true end.
        let done = match watch.state() {
            ExportState::Failed => return Err(std::io::Error::other("the export failed")),
            ExportState::Finished => true,
            ExportState::Running => closed || (idle && is_open(path, own) == Some(false)),
        };
        idle = true;
        loop {
            // Up to the chunk's end, or to the file's end as it is now.
            let room = (chunk_size - buf.len()) as u64;
            if (&mut file).take(room).read_to_end(&mut buf)? == 0 {
                break;
            }
            idle = false;
            if buf.len() == chunk_size {
                let chunk = std::mem::replace(&mut buf, Vec::with_capacity(chunk_size));
                if tx.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                    return Ok(()); // the upload gave up; nobody is listening
                }
            }
        }
        if done {
            if !buf.is_empty() {
                let _ = tx.blocking_send(Ok(Bytes::from(buf)));
            }
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// What the check at rest compares: a file's size and xxh3-128 of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    size: u64,
    hash: u128,
}

impl Fingerprint {
    /// The fingerprint of a local file's content as it is now, read in blocks (blocking).
    pub fn of_file(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Xxh3Default::new();
        let mut buf = vec![0u8; 1024 * 1024];
        let mut size = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok(Fingerprint {
            size,
            hash: hasher.digest128(),
        })
    }

    /// Bytes fingerprinted.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// A stream of chunks that fingerprints every byte it yields: what an upload of it sent. (An upload
/// sending kept chunks again does so without pulling them through here twice.)
pub(crate) struct Tapped<S> {
    inner: S,
    hasher: Xxh3Default,
    size: u64,
}

impl<S> Tapped<S> {
    pub fn new(inner: S) -> Self {
        Tapped {
            inner,
            hasher: Xxh3Default::new(),
            size: 0,
        }
    }

    /// The fingerprint of the bytes yielded so far.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            size: self.size,
            hash: self.hasher.digest128(),
        }
    }
}

impl<S> futures::Stream for Tapped<S>
where
    S: futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            this.hasher.update(chunk);
            this.size += chunk.len() as u64;
        }
        polled
    }
}

/// Whether a descriptor of this process other than `except` points at `path`; `None` where
/// `/proc/self/fd` cannot be read (not Linux), meaning "unknown". Stops at the first match.
fn is_open(path: &Path, except: i32) -> Option<bool> {
    Some(fd_targets(Some(except))?.any(|target| target == path))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use futures::TryStreamExt as _;

    use super::*;

    type Follower = tokio::task::JoinHandle<std::io::Result<Vec<u8>>>;

    /// An export directory with one file just created: its watch, its writer, and a follower reading
    /// it in 1000-byte parts.
    fn following(dir: &Path) -> (ExportWatch, std::fs::File, Follower) {
        let export = dir.join("export");
        let watch = ExportWatch::new(&export).unwrap();
        std::fs::create_dir(&export).unwrap();
        let path = watch.dir().join("t.parquet");
        let writer = std::fs::File::create(&path).unwrap();
        let follower = tokio::spawn(
            follow(path, 1000, watch.clone(), false)
                .map_ok(|b| b.to_vec())
                .try_concat(),
        );
        (watch, writer, follower)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_growing_file_is_followed_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (watch, mut writer, follower) = following(dir.path());
        assert!(
            watch.scan(&HashSet::new()).unwrap()[0].open,
            "a file being written is open"
        );
        let mut expected = Vec::new();
        for i in 0..40u8 {
            let block = vec![i; 777];
            writer.write_all(&block).unwrap();
            expected.extend_from_slice(&block);
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(writer);
        let got = tokio::time::timeout(Duration::from_secs(10), follower)
            .await
            .expect("the follower ends once the writer closes the file, before the export ends")
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected);
        assert!(
            !watch.scan(&HashSet::new()).unwrap()[0].open,
            "a closed file is closed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_export_ends_its_followers_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (watch, _writer, follower) = following(dir.path());
        tokio::time::sleep(POLL * 3).await;
        watch.set(ExportState::Failed);
        let outcome = tokio::time::timeout(Duration::from_secs(10), follower)
            .await
            .unwrap()
            .unwrap();
        assert!(outcome.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_tap_passes_on_fingerprints_like_the_file_and_a_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join("export");
        let watch = ExportWatch::new(&export).unwrap();
        std::fs::create_dir(&export).unwrap();
        let path = watch.dir().join("t.parquet");
        let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        // Read as a file already closed while the export still runs: to its end, once.
        let mut tapped = Tapped::new(follow(path.clone(), 64 * 1024, watch.clone(), true));
        let mut sent = Vec::new();
        while let Some(chunk) = tapped.try_next().await.unwrap() {
            sent.extend_from_slice(&chunk);
        }
        assert!(sent == data, "a closed file is read whole, in order");
        assert_eq!(watch.state(), ExportState::Running);
        let at_rest = Fingerprint::of_file(&path).unwrap();
        assert_eq!(tapped.fingerprint(), at_rest);
        assert_eq!(at_rest.size(), data.len() as u64);

        // One byte changed in place, same size: a different fingerprint.
        let mut changed = data.clone();
        changed[1_234_567] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        assert_ne!(Fingerprint::of_file(&path).unwrap(), at_rest);
        // Only the size changed (zeros appended): different too.
        let mut longer = data;
        longer.extend_from_slice(&[0; 16]);
        std::fs::write(&path, &longer).unwrap();
        assert_ne!(Fingerprint::of_file(&path).unwrap(), at_rest);
    }

    #[test]
    fn files_of_a_finished_export_are_closed_and_a_missing_directory_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join("export");
        let watch = ExportWatch::new(&export).unwrap();
        assert!(watch.scan(&HashSet::new()).unwrap().is_empty());
        std::fs::create_dir(&export).unwrap();
        let _held = std::fs::File::create(export.join("a.parquet")).unwrap();
        watch.set(ExportState::Finished);
        let files = watch.scan(&HashSet::new()).unwrap();
        assert_eq!(files.len(), 1);
        assert!(!files[0].open);
    }
}
