//! Client-side encryption with age (X25519 recipients), for snapshots (hitkeep-backup) and archives
//! (hitkeep-archive): a [`Sealer`] holds only public keys and encrypts, an [`Opener`] holds
//! identities (private keys) and decrypts, a [`HostKey`] is a key pair a host keeps for what it must
//! read back itself. Design: `docs/design/encryption.md`.
//!
//! Every object of an encrypted snapshot is one age file, encrypted as it streams to the upload, so
//! the SHA-256 the upload computes (and the manifest records) is of the stored ciphertext: a plain
//! `verify` checks it without any key. Nothing here decides *whether* to encrypt: a cycle given a
//! [`Sealer`] passes every upload through it, and there is no path around it.
//!
//! What it does not do: decide what to encrypt, talk to storage, or read settings; nor authenticate
//! the writer. Recipients are public, so anyone who can write to
//! the bucket can also write objects these identities open; the manifest's digests (of the stored
//! bytes) are what tie a snapshot's objects together, as for plain snapshots.

#![deny(missing_docs)]

use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use age::x25519::{Identity, Recipient};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use hitkeep_storage::{ObjectInfo, Sha256Digest};
use sha2::Digest as _;

/// The public keys a cycle encrypts to. Holds no secret, so it may be shown.
#[derive(Clone, Debug)]
pub struct Sealer {
    recipients: Vec<Recipient>,
    /// For a tenant's own key: the key file in the location that holds its private key.
    tenant_key: Option<String>,
}

/// Why an encrypted object did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenFailure {
    /// The snapshot is encrypted and no identity was given.
    NoIdentity,
    /// None of the identities given is one of the object's recipients.
    WrongIdentity,
    /// The object is not an age file, or its bytes fail authentication: damaged or replaced.
    Damaged,
    /// The plaintext could not be written to local disk.
    Unwritable,
}

/// A file written and hashed at once.
struct Hashing {
    out: std::fs::File,
    hasher: sha2::Sha256,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A new age X25519 key pair written to `path` as an identity file in the format `age-keygen`
/// writes (a `# public key:` comment, then the `AGE-SECRET-KEY-1…` line), for
/// `HITKEEP_BACKUP_IDENTITY_FILE`. Returns the public key (`age1…`) for `HITKEEP_BACKUP_RECIPIENTS`.
///
/// The file is created, never replaced (an existing key may be the only one that opens old
/// snapshots: [`io::ErrorKind::AlreadyExists`]), readable by its owner only on Unix, and synced
/// before this returns; a failed write removes what it began.
pub fn write_new_identity(path: &Path) -> io::Result<String> {
    let identity = Identity::generate();
    write_identity(path, &identity)?;
    Ok(identity.to_public().to_string())
}

/// `identity` written to the new file `path` as [`write_new_identity`] says.
fn write_identity(path: &Path, identity: &Identity) -> io::Result<()> {
    use age::secrecy::ExposeSecret as _;
    let text = format!(
        "# created: {}\n# public key: {}\n{}\n",
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        identity.to_public(),
        identity.to_string().expose_secret()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// A key pair of the host's own, for what it seals and must read back itself without any identity
/// of the operator's: the partition index of its encrypted incremental snapshots
/// (`{data}/.hitkeep-index-key`: the next cycle must read how the last one cut its tables), and its
/// encrypted archives (`{data}/.hitkeep-archive-key`: a run reads each file back before it deletes
/// rows, and `archive query` runs on the host). Kept in the data directory as an age identity file,
/// mode 0600, made by the first job that needs it. Losing the index key costs one cycle that exports
/// every partition again; losing the archive key leaves the archives to the operator's identity.
pub struct HostKey {
    identity: Identity,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostKey([redacted])")
    }
}

impl HostKey {
    /// The public key (`age1…`): a recipient of what is sealed for this host.
    pub fn recipient(&self) -> String {
        self.identity.to_public().to_string()
    }

    /// The key in `path`, if there is one. An unreadable or damaged file is an error naming it
    /// (without its content); what losing it costs is the caller's to say.
    pub fn read(path: &Path) -> Result<Option<HostKey>, String> {
        let shown = path.display();
        match std::fs::read_to_string(path) {
            Ok(text) => Opener::from_text(&text)
                .map(|o| {
                    Some(HostKey {
                        identity: o.identities[0].clone(),
                    })
                })
                .map_err(|why| format!("the host key {shown} is damaged ({why})")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read the host key {shown}: {e}")),
        }
    }

    /// The key in `path`, made there when there is none; errors as [`HostKey::read`].
    pub fn read_or_create(path: &Path) -> Result<HostKey, String> {
        let shown = path.display();
        match HostKey::read(path) {
            Ok(Some(key)) => Ok(key),
            Err(why) => Err(why),
            Ok(None) => {
                let identity = Identity::generate();
                match write_identity(path, &identity) {
                    Ok(()) => Ok(HostKey { identity }),
                    // Another cycle made it first: its key is the one.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        HostKey::read_or_create(path)
                    }
                    Err(e) => Err(format!("cannot write the host key {shown}: {e}")),
                }
            }
        }
    }

    /// `bytes` as an age file only this key opens.
    pub fn seal(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let sealer = Sealer {
            recipients: vec![self.identity.to_public()],
            tenant_key: None,
        };
        sealer.seal_bytes(bytes)
    }

    /// The plaintext of an index this key sealed.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        Opener::new(vec![self.identity.clone()]).open_bytes(sealed)
    }
}

/// What [`Opener::open_from`] read and wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The plaintext written.
    pub plain: ObjectInfo,
    /// The stored bytes read.
    pub stored: ObjectInfo,
}

/// Why [`Opener::open_from`] failed: its source did not read, or the bytes did not open (there is
/// no third way, so callers match both).
#[derive(Debug)]
pub enum Unopened {
    /// The source's own error (a download that failed), not the ciphertext's.
    Source(io::Error),
    /// The bytes read did not open.
    Failure(OpenFailure),
}

/// A reader that hashes and counts what passes through and keeps its source's first error.
struct Counted<R> {
    inner: R,
    hasher: sha2::Sha256,
    size: u64,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.size += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let passed = io::Error::new(e.kind(), e.to_string());
                self.failed.get_or_insert(e);
                Err(passed)
            }
        }
    }
}

/// Identities (age X25519 private keys) that open snapshots. Never printed: its `Debug` shows only
/// how many it holds.
#[derive(Clone)]
pub struct Opener {
    identities: Vec<Identity>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Opener({} identities, [redacted])",
            self.identities.len()
        )
    }
}

impl Sealer {
    /// A sealer for these recipients (age's `age1…` public keys); `None` for none.
    pub fn new(recipients: &[String]) -> Result<Option<Sealer>, String> {
        // The entry is not echoed: a misplaced private key must not reach a message.
        let recipients = recipients
            .iter()
            .enumerate()
            .map(|(n, r)| (r.parse::<Recipient>()).map_err(|e| format!("recipient {}: {e}", n + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((!recipients.is_empty()).then_some(Sealer {
            recipients,
            tenant_key: None,
        }))
    }

    /// A sealer to a tenant's own key `recipient`, whose private key the key file `object` holds.
    pub fn for_tenant(recipient: &str, object: String) -> Result<Sealer, String> {
        let recipient = recipient
            .parse::<Recipient>()
            .map_err(|e| format!("not an age public key: {e}"))?;
        Ok(Sealer {
            recipients: vec![recipient],
            tenant_key: Some(object),
        })
    }

    /// For a tenant's own key, its key file: recorded in the clear in each manifest sealed to it.
    pub fn tenant_key(&self) -> Option<&str> {
        self.tenant_key.as_deref()
    }

    /// The recipients, as `age1…` strings: recorded in the clear in each manifest.
    pub fn recipients(&self) -> Vec<String> {
        self.recipients.iter().map(ToString::to_string).collect()
    }

    fn encryptor(&self) -> io::Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(io::Error::other)
    }

    /// `bytes` as one age file.
    pub fn seal_bytes(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut writer = self
            .encryptor()?
            .wrap_output(Vec::with_capacity(bytes.len() + 256))?;
        writer.write_all(bytes)?;
        writer.finish()
    }

    /// The local file `plain` sealed into the new file `sealed`, synced: the stored size and SHA-256
    /// of what is to be uploaded, known before the upload (an encrypted pool object is named by
    /// them). Blocking. On a failure `sealed` may hold a part: the caller removes it.
    pub fn seal_file(&self, plain: &Path, sealed: &Path) -> io::Result<ObjectInfo> {
        let mut input = std::fs::File::open(plain)?;
        let out = Hashing {
            out: std::fs::File::create_new(sealed)?,
            hasher: sha2::Sha256::new(),
        };
        let mut writer = self
            .encryptor()?
            .wrap_output(io::BufWriter::with_capacity(1 << 20, out))?;
        io::copy(&mut input, &mut writer)?;
        let out = writer
            .finish()?
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        out.out.sync_all()?;
        let size = out.out.metadata()?.len();
        Ok(ObjectInfo {
            size,
            sha256: Sha256Digest::from_hasher(out.hasher),
        })
    }

    /// The ciphertext of the plaintext `chunks`, as they come, in pieces of exactly `part` bytes
    /// (the last one shorter): one age file. A failing input ends the output with its error, never
    /// with a file that looks whole.
    ///
    /// Why exact pieces: age adds 16 bytes to every 64 KiB, so a piece per input chunk would be a
    /// little longer than an upload's part. The uploader would then cut each part from two of them,
    /// and the few KiB carried over would keep a whole previous buffer alive while the next part
    /// fills. (Measured at 16M hits, the backup's peak RSS moved within the noise: 894 → 862 MiB.)
    pub fn seal_stream<'a>(
        &self,
        chunks: impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'a,
        part: usize,
    ) -> io::Result<impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'a> {
        let spill = Spill::new(part.max(1));
        // The header goes into the spill now and out with the first piece.
        let writer = self.encryptor()?.wrap_output(spill.clone())?;
        // The writer is `None` once age's file is finished (what is left in the spill still goes
        // out), or once an error ended the stream (the spill was emptied: nothing follows it).
        // `pending` is what of the current input chunk age has not been given yet.
        let state = (chunks, Some(writer), spill, Bytes::new());
        Ok(Box::pin(futures::stream::unfold(
            state,
            |(mut chunks, mut writer, spill, mut pending)| async move {
                loop {
                    // A whole piece ready goes out before more is sealed.
                    if let Some(piece) = spill.take_part() {
                        return Some((Ok(piece), (chunks, writer, spill, pending)));
                    }
                    let Some(mut w) = writer.take() else {
                        let rest = spill.take_rest();
                        return (!rest.is_empty())
                            .then_some((Ok(rest), (chunks, None, spill, Bytes::new())));
                    };
                    let written = if pending.is_empty() {
                        match chunks.next().await {
                            Some(Ok(chunk)) => {
                                pending = chunk;
                                writer = Some(w);
                                Ok(())
                            }
                            Some(Err(e)) => Err(e),
                            None => w.finish().map(drop),
                        }
                    } else {
                        // About what fills the piece, so the spill never holds much past one; but
                        // a whole age chunk at least, or a piece nearly full would take writes of
                        // a few bytes that age only buffers.
                        let n = spill.room_left().max(AGE_CHUNK).min(pending.len());
                        let slice = pending.split_to(n);
                        // Off the async workers: sealing a 16 MiB part takes ~11 ms of CPU, which
                        // would hold up every other task on that worker (an embedding server's
                        // requests too). Measured at 16M hits: no faster, no slower on 2 cores.
                        let sealed = tokio::task::spawn_blocking(move || {
                            let result = w.write_all(&slice);
                            (w, result)
                        })
                        .await;
                        match sealed {
                            Ok((w, result)) => {
                                writer = Some(w);
                                result
                            }
                            Err(e) => Err(io::Error::other(e)),
                        }
                    };
                    if let Err(e) = written {
                        spill.take_rest();
                        return Some((Err(e), (chunks, None, spill, Bytes::new())));
                    }
                }
            },
        )))
    }
}

/// The plaintext age seals at a time (its STREAM chunk; each gets a 16-byte tag).
const AGE_CHUNK: usize = 64 * 1024;

/// Where age's writer puts ciphertext until the stream takes it, a piece of `part` bytes at a time.
#[derive(Clone)]
struct Spill {
    buf: Arc<Mutex<Vec<u8>>>,
    part: usize,
}

impl Spill {
    fn new(part: usize) -> Spill {
        Spill {
            buf: Arc::new(Mutex::new(Vec::with_capacity(Spill::room(part)))),
            part,
        }
    }

    /// A buffer's capacity: a piece, age's tags on it (16 bytes a 64 KiB) and the chunk age may
    /// still hold when the piece's plaintext is given, so that filling a piece never grows, and
    /// copies, the buffer.
    fn room(part: usize) -> usize {
        part + part / 4096 + 2 * AGE_CHUNK + 64
    }

    /// How many more bytes fill the current piece (at least one).
    fn room_left(&self) -> usize {
        let len = self.buf.lock().expect("never poisoned").len();
        self.part.saturating_sub(len).max(1)
    }

    /// The first `part` bytes, when that many were written; what is past them starts the next
    /// buffer (at most one age chunk, copied).
    fn take_part(&self) -> Option<Bytes> {
        let mut spilled = self.buf.lock().expect("never poisoned");
        if spilled.len() < self.part {
            return None;
        }
        let mut next = Vec::with_capacity(Spill::room(self.part).max(spilled.len() - self.part));
        next.extend_from_slice(&spilled[self.part..]);
        let mut piece = std::mem::replace(&mut *spilled, next);
        piece.truncate(self.part);
        Some(Bytes::from(piece))
    }

    /// Everything written and not taken yet (the file's end).
    fn take_rest(&self) -> Bytes {
        Bytes::from(std::mem::take(
            &mut *self.buf.lock().expect("never poisoned"),
        ))
    }
}

impl Write for Spill {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf
            .lock()
            .expect("never poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Opener {
    /// The identities in an age identity file (`AGE-SECRET-KEY-1…` lines, `#` comments), as
    /// `age-keygen` writes it. The error never holds the file's content.
    pub fn from_file(path: &Path) -> Result<Opener, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
        let mut text = String::new();
        BufReader::new(file)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read it: {e}"))?;
        Opener::from_text(&text)
    }

    fn from_text(text: &str) -> Result<Opener, String> {
        let mut identities = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let identity = line.parse::<Identity>().map_err(|_| {
                format!(
                    "line {} is not an age X25519 identity (AGE-SECRET-KEY-1…)",
                    n + 1
                )
            })?;
            identities.push(identity);
        }
        if identities.is_empty() {
            return Err("it holds no identity (AGE-SECRET-KEY-1…)".to_owned());
        }
        Ok(Opener { identities })
    }

    /// An opener of these identities (for tests and embedding servers that hold keys themselves).
    pub fn new(identities: Vec<Identity>) -> Opener {
        Opener { identities }
    }

    /// The same opener, also opening what was sealed to `key`.
    pub fn with_host_key(mut self, key: &HostKey) -> Opener {
        self.identities.push(key.identity.clone());
        self
    }

    /// The plaintext of an age file held in memory.
    pub fn open_bytes(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        let mut reader = self.reader(sealed)?;
        let mut plain = Vec::new();
        reader
            .read_to_end(&mut plain)
            .map_err(|_| OpenFailure::Damaged)?;
        Ok(plain)
    }

    /// Decrypts the age file `sealed` into `plain` (created), synced; returns the plaintext's size
    /// and SHA-256. On a failure `plain` may hold a part of the plaintext: the caller removes it.
    pub fn open_file(&self, sealed: &Path, plain: &Path) -> Result<ObjectInfo, OpenFailure> {
        let input = std::fs::File::open(sealed).map_err(|_| OpenFailure::Damaged)?;
        match self.open_from(input, plain) {
            Ok(opened) => Ok(opened.plain),
            Err(Unopened::Failure(failure)) => Err(failure),
            Err(Unopened::Source(_)) => Err(OpenFailure::Damaged),
        }
    }

    /// Decrypts the age file `source` yields into `plain` (created), synced, as it reads: a restore
    /// streams a download through this instead of writing the ciphertext to disk first. Returns
    /// what was read (size and SHA-256 of the stored bytes, for the caller to compare with what the
    /// manifest records) and what was written. A read error of `source` is told apart from
    /// decryption failing. Blocking. On a failure `plain` may hold a part: the caller removes it.
    pub fn open_from(&self, source: impl Read, plain: &Path) -> Result<Opened, Unopened> {
        let mut counted = Counted {
            inner: source,
            hasher: sha2::Sha256::new(),
            size: 0,
            failed: None,
        };
        let written = self.decrypt_into(&mut counted, plain);
        if let Some(e) = counted.failed.take() {
            return Err(Unopened::Source(e));
        }
        let plain = written.map_err(Unopened::Failure)?;
        // age reads to the end (it refuses trailing bytes); anything left would still be hashed.
        io::copy(&mut counted, &mut io::sink())
            .map_err(|e| Unopened::Source(counted.failed.take().unwrap_or(e)))?;
        Ok(Opened {
            plain,
            stored: ObjectInfo {
                size: counted.size,
                sha256: Sha256Digest::from_hasher(counted.hasher),
            },
        })
    }

    fn decrypt_into(&self, source: impl Read, plain: &Path) -> Result<ObjectInfo, OpenFailure> {
        let mut reader = self.reader(BufReader::with_capacity(1 << 20, source))?;
        let out = std::fs::File::create(plain).map_err(|_| OpenFailure::Unwritable)?;
        let mut out = Hashing {
            out,
            hasher: sha2::Sha256::new(),
        };
        // A read error is authentication failing on a chunk (damaged bytes), or the source's,
        // which `open_from` tells apart; a write error is ours.
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(OpenFailure::Damaged),
            };
            out.write_all(&buf[..n])
                .map_err(|_| OpenFailure::Unwritable)?;
            size += n as u64;
        }
        out.out.sync_all().map_err(|_| OpenFailure::Unwritable)?;
        Ok(ObjectInfo {
            size,
            sha256: Sha256Digest::from_hasher(out.hasher),
        })
    }

    fn reader<R: io::BufRead>(&self, input: R) -> Result<impl Read, OpenFailure> {
        let decryptor = age::Decryptor::new_buffered(input).map_err(|_| OpenFailure::Damaged)?;
        decryptor
            .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => OpenFailure::WrongIdentity,
                _ => OpenFailure::Damaged,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> (Vec<Identity>, Sealer) {
        let identities: Vec<Identity> = (0..n).map(|_| Identity::generate()).collect();
        let recipients: Vec<String> = identities
            .iter()
            .map(|i| i.to_public().to_string())
            .collect();
        (identities, Sealer::new(&recipients).unwrap().unwrap())
    }

    #[tokio::test]
    async fn a_stream_sealed_chunk_by_chunk_opens_with_any_recipients_identity() {
        let (identities, sealer) = keys(2);
        let plain: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let chunks: Vec<io::Result<Bytes>> = plain
            .chunks(70_001)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let part = 100_000;
        let sealed: Vec<Bytes> = sealer
            .seal_stream(futures::stream::iter(chunks), part)
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert!(sealed.len() > 1, "streamed, not gathered");
        let (last, whole) = sealed.split_last().unwrap();
        assert!(
            whole.iter().all(|p| p.len() == part) && !last.is_empty() && last.len() <= part,
            "exact pieces: {:?}",
            sealed.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        let sealed: Vec<u8> = sealed.concat();
        assert!(!sealed.windows(8).any(|w| w == &plain[4000..4008]));
        for identity in identities {
            let opener = Opener::new(vec![identity]);
            assert_eq!(opener.open_bytes(&sealed).unwrap(), plain);
        }
        let stranger = Opener::new(vec![Identity::generate()]);
        assert_eq!(
            stranger.open_bytes(&sealed).unwrap_err(),
            OpenFailure::WrongIdentity
        );
    }

    #[tokio::test]
    async fn an_empty_input_is_a_whole_age_file_and_a_failing_one_ends_in_its_error() {
        let (identities, sealer) = keys(1);
        let empty: Vec<Bytes> = sealer
            .seal_stream(
                futures::stream::iter(Vec::<io::Result<Bytes>>::new()),
                1 << 20,
            )
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
            .await;
        let opener = Opener::new(identities);
        assert_eq!(opener.open_bytes(&empty.concat()).unwrap(), b"");
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"some rows")),
            Err(io::Error::other("disk gone")),
        ]);
        let out: Vec<io::Result<Bytes>> = sealer
            .seal_stream(failing, 1 << 20)
            .unwrap()
            .collect()
            .await;
        assert!(out.last().unwrap().is_err());
    }

    #[tokio::test]
    async fn small_pieces_come_whole_and_nothing_follows_an_input_error() {
        let (identities, sealer) = keys(1);
        // One input chunk many pieces long, and pieces far smaller than age's chunk.
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let chunks = vec![Ok(Bytes::from(plain.clone()))];
        let pieces: Vec<Bytes> = sealer
            .seal_stream(futures::stream::iter(chunks), 1000)
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
            .await;
        let (last, whole) = pieces.split_last().unwrap();
        assert!(whole.iter().all(|p| p.len() == 1000) && last.len() <= 1000);
        let opener = Opener::new(identities);
        assert_eq!(opener.open_bytes(&pieces.concat()).unwrap(), plain);

        // An input that fails after whole pieces went out: they come, then the error, then nothing.
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from(vec![1u8; 150_000])),
            Err(io::Error::other("disk gone")),
            Ok(Bytes::from(vec![2u8; 150_000])),
        ]);
        let out: Vec<io::Result<Bytes>> =
            sealer.seal_stream(failing, 1000).unwrap().collect().await;
        let error_at = out
            .iter()
            .position(|r| r.is_err())
            .expect("the error comes out");
        assert_eq!(error_at, out.len() - 1, "nothing follows the error");
        assert!(
            error_at > 0
                && out[..error_at]
                    .iter()
                    .all(|r| r.as_ref().unwrap().len() == 1000)
        );
    }

    #[test]
    fn a_flipped_byte_or_a_cut_file_is_damaged() {
        let (identities, sealer) = keys(1);
        let opener = Opener::new(identities);
        let sealed = sealer.seal_bytes(&[7u8; 200_000]).unwrap();
        let mut flipped = sealed.clone();
        let at = flipped.len() - 1000;
        flipped[at] ^= 1;
        assert_eq!(
            opener.open_bytes(&flipped).unwrap_err(),
            OpenFailure::Damaged
        );
        assert_eq!(
            opener.open_bytes(&sealed[..sealed.len() - 10]).unwrap_err(),
            OpenFailure::Damaged
        );
        assert_eq!(
            opener.open_bytes(b"PAR1 not age").unwrap_err(),
            OpenFailure::Damaged
        );
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("x.age"), dir.path().join("x"));
        std::fs::write(&from, &flipped).unwrap();
        assert_eq!(
            opener.open_file(&from, &to).unwrap_err(),
            OpenFailure::Damaged
        );
        std::fs::write(&from, &sealed).unwrap();
        let opened = opener.open_file(&from, &to).unwrap();
        assert_eq!(opened.size, 200_000);
        assert_eq!(opened.sha256, Sha256Digest::of(&[7u8; 200_000]));
        assert_eq!(std::fs::read(&to).unwrap(), vec![7u8; 200_000]);
    }

    #[test]
    fn a_new_identity_file_opens_what_is_sealed_to_its_public_key_and_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.key");
        let public = write_new_identity(&path).unwrap();
        assert!(public.starts_with("age1"), "{public}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("# public key: {public}\n")),
            "{text}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let sealer = Sealer::new(std::slice::from_ref(&public)).unwrap().unwrap();
        let sealed = sealer.seal_bytes(b"rows").unwrap();
        let opener = Opener::from_file(&path).unwrap();
        assert_eq!(opener.open_bytes(&sealed).unwrap(), b"rows");
        let again = write_new_identity(&path).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn a_sealed_file_reports_what_is_stored_and_opens_to_the_original() {
        let (identities, sealer) = keys(1);
        let dir = tempfile::tempdir().unwrap();
        let (plain, sealed, back) = (
            dir.path().join("p"),
            dir.path().join("p.age"),
            dir.path().join("back"),
        );
        let bytes: Vec<u8> = (0..500_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&plain, &bytes).unwrap();
        let info = sealer.seal_file(&plain, &sealed).unwrap();
        let stored = std::fs::read(&sealed).unwrap();
        assert_eq!(info.size, stored.len() as u64);
        assert_eq!(info.sha256, Sha256Digest::of(&stored));
        let opener = Opener::new(identities);
        let opened = opener.open_file(&sealed, &back).unwrap();
        assert_eq!(opened.sha256, Sha256Digest::of(&bytes));
        assert!(sealer.seal_file(&plain, &sealed).is_err(), "never replaced");
    }

    /// A download decrypted as it streams: what was read is reported for the digest check, and a
    /// source that fails is told apart from bytes that do not open.
    #[test]
    fn opening_from_a_stream_reports_the_stored_bytes_and_tells_a_failing_source_apart() {
        let (identities, sealer) = keys(1);
        let opener = Opener::new(identities);
        let plain: Vec<u8> = (0..400_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let sealed = sealer.seal_bytes(&plain).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let opened = opener.open_from(&sealed[..], &out).unwrap();
        assert_eq!(opened.stored.sha256, Sha256Digest::of(&sealed));
        assert_eq!(opened.stored.size, sealed.len() as u64);
        assert_eq!(opened.plain.sha256, Sha256Digest::of(&plain));

        struct Cut<'a>(&'a [u8]);
        impl Read for Cut<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::other("connection reset"));
                }
                let n = buf.len().min(self.0.len()).min(10_000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let half = &sealed[..sealed.len() / 2];
        let err = opener
            .open_from(Cut(half), &dir.path().join("cut"))
            .unwrap_err();
        assert!(
            matches!(err, Unopened::Source(ref e) if e.to_string() == "connection reset"),
            "{err:?}"
        );
        let mut flipped = sealed.clone();
        flipped[sealed.len() / 2] ^= 1;
        let err = opener
            .open_from(&flipped[..], &dir.path().join("flipped"))
            .unwrap_err();
        assert!(
            matches!(err, Unopened::Failure(OpenFailure::Damaged)),
            "{err:?}"
        );
    }

    #[test]
    fn the_index_key_is_made_once_and_opens_only_what_it_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".hitkeep-index-key");
        let key = HostKey::read_or_create(&path).unwrap();
        let sealed = key.seal(b"partitions").unwrap();
        let again = HostKey::read_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"partitions");
        let (_, operator) = keys(1);
        let other = operator.seal_bytes(b"x").unwrap();
        assert_eq!(key.open(&other).unwrap_err(), OpenFailure::WrongIdentity);
        assert!(!format!("{key:?}").contains("AGE-SECRET"));
        std::fs::write(&path, "garbage\n").unwrap();
        let err = HostKey::read_or_create(&path).unwrap_err();
        assert!(
            err.contains("is damaged") && !err.contains("garbage"),
            "{err}"
        );
    }

    #[test]
    fn identity_files_parse_as_age_keygen_writes_them_and_never_echo_a_key() {
        let identity = Identity::generate();
        use age::secrecy::ExposeSecret;
        let secret = identity.to_string().expose_secret().to_owned();
        let text = format!(
            "# created: 2026-12-03T00:00:00Z\n# public key: {}\n{secret}\n",
            identity.to_public()
        );
        let opener = Opener::from_text(&text).unwrap();
        assert!(!format!("{opener:?}").contains(&secret[16..]));
        let damaged = text.replace(&secret[20..30], "xxxxxxxxxx");
        let err = Opener::from_text(&damaged).unwrap_err();
        assert!(
            err.contains("line 3") && !err.contains(&secret[30..]),
            "{err}"
        );
        assert!(Opener::from_text("# nothing\n").is_err());
        assert!(Sealer::new(&["age1nope".to_owned()]).is_err());
        assert!(Sealer::new(&[]).unwrap().is_none());
    }
}
