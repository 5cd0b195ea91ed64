//! A small TCP fault proxy between `hitkeep` and the S3 server: added latency, one stall, a cut
//! connection or one flipped bit at a random byte offset, each chosen per connection with a chance.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Result;

/// What to do to the bytes relayed from now on. Rates are per MiB relayed, either way, so that
/// pooled keep-alive connections (a few per run) still meet faults.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Added before each forwarded chunk (16 KiB at most), both ways.
    pub latency: Duration,
    /// Connections cut at a random byte, per MiB.
    pub cut: f64,
    /// Pauses of `stall`, per MiB.
    pub stall: f64,
    pub stall_for: Duration,
    /// Bits flipped (past the first header block), per MiB.
    pub flip: f64,
    /// Close every new connection at once (the server seems gone).
    pub down: bool,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub cuts: AtomicU64,
    pub stalls: AtomicU64,
    pub flips: AtomicU64,
    /// ListObjectsV2 requests relayed.
    pub lists: AtomicU64,
}

impl Stats {
    pub fn line(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{} connections, {} cut, {} stalled, {} bits flipped",
            get(&self.connections),
            get(&self.cuts),
            get(&self.stalls),
            get(&self.flips)
        )
    }
}

#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The client side of every connection, so that going `down` also cuts pooled ones.
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    pub fn start(upstream: String) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Mutex::new(Faults::default()));
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (f, s, st, lv) = (faults.clone(), stats.clone(), stop.clone(), live.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let faults = f.lock().map(|g| g.clone()).unwrap_or_default();
                s.connections.fetch_add(1, Ordering::Relaxed);
                if faults.down {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                if let (Ok(mut l), Ok(c)) = (lv.lock(), client.try_clone()) {
                    l.push(c);
                }
                let (upstream, stats) = (upstream.clone(), s.clone());
                thread::spawn(move || {
                    if let Ok(server) = TcpStream::connect(&upstream) {
                        relay(client, server, &faults, &stats);
                    }
                });
            }
        });
        Ok(FaultProxy {
            addr,
            faults,
            stats,
            stop,
            thread: Some(thread),
            live,
        })
    }

    /// host:port for HITKEEP_S3_ENDPOINT.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn set(&self, faults: Faults) {
        if faults.down
            && let Ok(mut live) = self.live.lock()
        {
            for c in live.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        if let Ok(mut f) = self.faults.lock() {
            *f = faults;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(client: TcpStream, server: TcpStream, faults: &Faults, stats: &Arc<Stats>) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (up_faults, up_stats) = (faults.clone(), stats.clone());
    let upward = thread::spawn(move || pipe(client, server, &up_faults, &up_stats));
    pipe(s2, c2, faults, stats);
    let _ = upward.join();
}

/// Whether an event with `rate` per MiB happens within `n` bytes, and where.
fn happens(rate: f64, n: usize) -> Option<usize> {
    (rate > 0.0 && fastrand::f64() < rate * n as f64 / (1 << 20) as f64)
        .then(|| fastrand::usize(0..n))
}

fn pipe(mut from: TcpStream, mut to: TcpStream, faults: &Faults, stats: &Stats) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut past_headers = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let lists = buf[..n].windows(11).filter(|w| w == b"list-type=2").count();
        stats.lists.fetch_add(lists as u64, Ordering::Relaxed);
        if !faults.latency.is_zero() {
            thread::sleep(faults.latency);
        }
        let body_from = if past_headers {
            0
        } else {
            match buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                Some(i) => {
                    past_headers = true;
                    i + 4
                }
                None => n,
            }
        };
        if body_from < n
            && let Some(at) = happens(faults.flip, n - body_from)
        {
            buf[body_from + at] ^= 0x10;
            stats.flips.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(at) = happens(faults.stall, n) {
            let _ = to.write_all(&buf[..at]);
            stats.stalls.fetch_add(1, Ordering::Relaxed);
            thread::sleep(faults.stall_for);
            if to.write_all(&buf[at..n]).is_err() {
                break;
            }
        } else if let Some(at) = happens(faults.cut, n) {
            let _ = to.write_all(&buf[..at]);
            stats.cuts.fetch_add(1, Ordering::Relaxed);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        } else if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
