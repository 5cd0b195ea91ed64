//! A provider that refuses `x-amz-checksum-*` headers, as Backblaze B2, Wasabi and older R2 and Ceph
//! gateways do: an HTTP-aware front on 127.0.0.1 answers every request carrying one with B2's 400
//! InvalidArgument and forwards the rest to the S3 server. hitkeep, with default settings, must back
//! up, verify, restore and archive through it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Result;

use super::Ctx;
use super::scenarios::{archived_rows, balance};
use super::tools::diff;

/// Backblaze B2's answer, verbatim.
const REFUSAL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Error>\n    <Code>InvalidArgument</Code>\n    <Message>Unsupported header 'x-amz-checksum-crc32c' received for this API call.</Message>\n</Error>";

/// Request heads larger than this are not S3 requests of ours.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Counts {
    refused: AtomicU64,
    forwarded: AtomicU64,
}

/// The refusing front. One request per connection: each forwarded request goes upstream with
/// `Connection: close`, so no later request on a kept-alive connection slips past unread.
#[derive(Debug)]
pub struct ChecksumFront {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ChecksumFront {
    pub fn start(upstream: String) -> Result<ChecksumFront> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (counts.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let (upstream, counts) = (upstream.clone(), c.clone());
                thread::spawn(move || {
                    let _ = serve(client, &upstream, &counts);
                });
            }
        });
        Ok(ChecksumFront {
            addr,
            counts,
            stop,
            thread: Some(thread),
        })
    }

    /// host:port for HITKEEP_S3_ENDPOINT.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn refused(&self) -> u64 {
        self.counts.refused.load(Ordering::Relaxed)
    }

    pub fn line(&self) -> String {
        format!(
            "{} requests refused for a checksum header, {} forwarded",
            self.refused(),
            self.counts.forwarded.load(Ordering::Relaxed)
        )
    }
}

impl Drop for ChecksumFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The request head (through the blank line) and whatever of the body came with it.
fn read_head(client: &mut TcpStream) -> Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        anyhow::ensure!(buf.len() < MAX_HEAD, "request head too large");
        let n = client.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "connection closed before a request head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `(name, value)` of each header line, names lowercased.
fn headers(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

fn serve(mut client: TcpStream, upstream: &str, counts: &Counts) -> Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(120)))?;
    let (head, body_start) = read_head(&mut client)?;
    let headers = headers(&head);
    if headers
        .iter()
        .any(|(n, _)| n.starts_with("x-amz-checksum-"))
    {
        counts.refused.fetch_add(1, Ordering::Relaxed);
        return refuse(client, &headers, body_start.len());
    }
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    forward(client, upstream, &head, &body_start)
}

/// Reads the body to its end (a client still sending would see a reset, not the answer), then answers.
fn refuse(mut client: TcpStream, headers: &[(String, String)], have: usize) -> Result<()> {
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut left = length.saturating_sub(have);
    let mut sink = [0u8; 64 * 1024];
    while left > 0 {
        let n = client.read(&mut sink[..left.min(64 * 1024)])?;
        if n == 0 {
            break;
        }
        left -= n;
    }
    write!(
        client,
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{REFUSAL}",
        REFUSAL.len()
    )?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// Sends the request upstream with `Connection: close` (not a signed header), then relays both ways
/// until the server has answered and closed.
fn forward(client: TcpStream, upstream: &str, head: &str, body_start: &[u8]) -> Result<()> {
    let mut server = TcpStream::connect(upstream)?;
    let kept: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| {
            let name = line.split(':').next().unwrap_or("").trim();
            !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive")
        })
        .collect();
    let rewritten = format!("{}\r\nConnection: close\r\n\r\n", kept.join("\r\n"));
    server.write_all(rewritten.as_bytes())?;
    server.write_all(body_start)?;
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let upward = thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let _ = std::io::copy(&mut s_read, &mut c_write);
    // The answer is complete: closing the client also ends the upward copy.
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = upward.join();
    Ok(())
}

/// `backup run`, `backup verify --deep`, a restore, `archive run` and `doctor` through the front, with
/// default settings; then `HITKEEP_S3_CHECKSUM=crc32c` pinned, which must fail in one readable line.
pub fn refusing_provider(ctx: &mut Ctx) -> Result<()> {
    if ctx.s3.use_ssl {
        // The front reads request headers, which TLS hides.
        ctx.report.figure(
            "checksum front",
            "skipped: the S3 server speaks HTTPS, which the front cannot read",
        );
        return Ok(());
    }
    let (dir, name) = (ctx.dir("checksum")?, "checksum");
    let direct = ctx.s3_env_at(name);
    ctx.demo(&dir, &direct, 100_000, 2)?;
    let before = ctx.fingerprint(&dir)?;
    let front = ChecksumFront::start(ctx.s3.addr())?;
    let via = direct.clone().set("HITKEEP_S3_ENDPOINT", front.endpoint());

    let out = ctx.hk(&dir, &via, &["backup", "run"])?;
    ctx.report.check(
        "backup run through a provider that refuses x-amz-checksum-* headers, default settings",
        out.ok() && front.refused() > 0,
        format!("{}; {}", out.brief(), front.line()),
    );
    let switches = out.stderr.matches("HITKEEP_S3_CHECKSUM=md5").count();
    ctx.report.check(
        "the switch to Content-MD5 is logged once, naming HITKEEP_S3_CHECKSUM=md5",
        switches == 1,
        format!("{switches} mentions in stderr"),
    );
    let refused = front.refused();
    let deep = ctx.hk(&dir, &via, &["backup", "verify", "--deep"])?;
    ctx.report.check(
        "backup verify --deep through the front",
        deep.ok(),
        deep.brief(),
    );

    let target = ctx.dir("checksum-restore")?;
    let restore_env = ctx.s3_env().set("HITKEEP_S3_ENDPOINT", front.endpoint());
    let from = ctx.s3.url(&format!("{name}/backups"));
    let out = ctx.restore(&target, &restore_env, &from, None)?;
    let got = ctx.fingerprint(&target)?;
    ctx.report.check(
        "recover restore-backup through the front: every database, every row equal",
        out.ok() && got == before,
        format!("{}\n{}", out.brief(), diff(&got, &before)),
    );

    let out = ctx.hk(&dir, &via, &["archive", "run"])?;
    ctx.report.check(
        "archive run through the front",
        out.ok() && front.refused() > refused,
        format!("{}; {}", out.brief(), front.line()),
    );
    let after = ctx.fingerprint(&dir)?;
    let archived = archived_rows(ctx, &dir, &via)?;
    balance(
        ctx,
        "archive run through the front",
        &before,
        &after,
        &archived,
    );

    let doctor = ctx.hk(&dir, &via, &["doctor"])?;
    ctx.report.check(
        "doctor reports the refused header and prints HITKEEP_S3_CHECKSUM=md5",
        // No check failed (exit 1); the refused header is a warning.
        doctor.code == Some(0)
            && doctor.stdout.contains("integrity headers")
            && doctor.stdout.contains("use HITKEEP_S3_CHECKSUM=md5"),
        format!("{}\n{}", doctor.brief(), doctor.stdout),
    );

    let pinned = via.clone().set("HITKEEP_S3_CHECKSUM", "crc32c");
    let out = ctx.hk(&dir, &pinned, &["backup", "run"])?;
    let message = out.message();
    let error = message
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    ctx.report.check(
        "pinned to crc32c, the refusal is one readable line with the provider's code and message and the setting to try",
        out.code == Some(1)
            && error.contains("InvalidArgument: Unsupported header 'x-amz-checksum-crc32c'")
            && error.contains("HITKEEP_S3_CHECKSUM=md5")
            && !message.contains("service_operation")
            && !message.contains("Parts {"),
        message,
    );
    ctx.report.figure("checksum front", front.line());
    Ok(())
}
