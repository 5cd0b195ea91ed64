//! Heartbeat and failure notifications against a real HTTP server on 127.0.0.1: what is sent, how
//! often, and that a monitor that fails, hangs or is gone never fails the caller nor sees its token
//! logged.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use hitkeep_config::{Config, SecretUrl, Sources};
use hitkeep_service::notify::{Delivery, Failure, Notifier, NotifyOptions, Success};
use tokio::net::TcpListener;

/// The token every URL carries: it must never be logged or printed.
const TOKEN: &str = "5c6644da-ef00-45e6-825d-c755d19d7f9f";

/// One request the server received.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: Method,
    pub(crate) path: String,
    content_type: Option<String>,
    pub(crate) body: Bytes,
}

#[derive(Clone, Default)]
pub(crate) struct Monitor {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Statuses to answer, in order; 200 once they run out.
    answers: Arc<Mutex<VecDeque<StatusCode>>>,
}

impl Monitor {
    /// A monitor on 127.0.0.1 answering `answers` in turn, then 200; its base URL.
    pub(crate) async fn start(answers: &[u16]) -> (Monitor, String) {
        let monitor = Monitor {
            answers: Arc::new(Mutex::new(
                answers
                    .iter()
                    .map(|&s| StatusCode::from_u16(s).unwrap())
                    .collect(),
            )),
            ..Monitor::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(monitor.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (monitor, base)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn record(
    State(monitor): State<Monitor>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    monitor.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_owned(),
        content_type: headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        body,
    });
    let next = monitor.answers.lock().unwrap().pop_front();
    next.unwrap_or(StatusCode::OK)
}

fn url(text: &str) -> SecretUrl {
    text.parse().unwrap()
}

/// Short enough that a test takes a second, not the default 33.
fn quick() -> NotifyOptions {
    NotifyOptions::default()
        .timeout(Duration::from_millis(300))
        .attempts(3)
        .backoff(Duration::from_millis(20))
        .host("analytics-1")
}

fn success() -> Success {
    Success {
        snapshot_id: "2026-03-08T120000Z".into(),
        databases: 3,
        bytes: 12_345,
        duration: Duration::from_secs(4),
    }
}

fn failure() -> Failure {
    Failure {
        job: "backup".into(),
        error: "storage unreachable: connection refused\ncaused by: tcp connect error".into(),
        consecutive_failures: 2,
        at: "2026-03-08T12:00:00.123Z".parse().unwrap(),
    }
}

/// Everything logged while it lives, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures this thread's log lines (a current-thread tokio test runs everything on it).
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    fn warnings(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(" WARN "))
            .map(str::to_owned)
            .collect()
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn a_success_pings_the_heartbeat_once_with_a_get() {
    let (logs, _guard) = Logs::capture();
    let (monitor, base) = Monitor::start(&[]).await;
    let notifier = Notifier::with_options(Some(url(&format!("{base}/{TOKEN}"))), None, quick());

    assert_eq!(
        notifier.success(&success()).await,
        Delivery::Delivered { attempts: 1 }
    );
    let seen = monitor.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].path, format!("/{TOKEN}"));
    assert!(seen[0].body.is_empty());
    // No failure URL: a failure sends nothing, to the heartbeat URL least of all.
    assert_eq!(notifier.failure(&failure()).await, Delivery::NotConfigured);
    assert_eq!(monitor.seen().len(), 1);
    assert!(logs.warnings().is_empty(), "{}", logs.text());
    assert!(!logs.text().contains(TOKEN), "{}", logs.text());
}

#[tokio::test]
async fn a_failure_posts_the_documented_json() {
    let (monitor, base) = Monitor::start(&[]).await;
    let notifier = Notifier::with_options(
        Some(url(&format!("{base}/{TOKEN}"))),
        Some(url(&format!("{base}/{TOKEN}/fail"))),
        quick(),
    );

    assert_eq!(
        notifier.failure(&failure()).await,
        Delivery::Delivered { attempts: 1 }
    );
    let seen = monitor.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].path, format!("/{TOKEN}/fail"));
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "event": "backup_failed",
            "job": "backup",
            "error": "storage unreachable: connection refused",
            "consecutive_failures": 2,
            "at": "2026-03-08T12:00:00Z",
            "host": "analytics-1",
        })
    );
    // The keys in the documented order, and nothing else: a short body.
    let text = std::str::from_utf8(&seen[0].body).unwrap();
    assert!(
        text.starts_with(r#"{"event":"backup_failed","job":"backup","error":"#),
        "{text}"
    );

    // Our URLs never travel in the body, even when an error quotes one.
    let quoting = Failure {
        error: format!("cannot reach {base}/{TOKEN}/fail (timeout)"),
        job: "archive".into(),
        ..failure()
    };
    notifier.failure(&quoting).await;
    let body: serde_json::Value = serde_json::from_slice(&monitor.seen()[1].body).unwrap();
    assert_eq!(body["event"], "archive_failed");
    assert_eq!(
        body["error"],
        format!("cannot reach {base}/… (timeout)"),
        "{body}"
    );
}

#[tokio::test]
async fn the_default_host_is_this_machines_name() {
    let (monitor, base) = Monitor::start(&[]).await;
    let options = NotifyOptions::default().timeout(Duration::from_secs(5));
    let notifier = Notifier::with_options(None, Some(url(&format!("{base}/{TOKEN}"))), options);
    notifier.failure(&failure()).await;
    let body: serde_json::Value = serde_json::from_slice(&monitor.seen()[0].body).unwrap();
    let want = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(body["host"], want.trim());
}

#[tokio::test]
async fn server_errors_are_tried_again_until_a_2xx() {
    let (logs, _guard) = Logs::capture();
    let (monitor, base) = Monitor::start(&[500, 503]).await;
    let notifier = Notifier::with_options(Some(url(&format!("{base}/{TOKEN}"))), None, quick());

    assert_eq!(
        notifier.success(&success()).await,
        Delivery::Delivered { attempts: 3 }
    );
    let seen = monitor.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|s| s.method == Method::GET));
    // Delivered in the end: retries are debug detail, not a warning.
    assert!(logs.warnings().is_empty(), "{}", logs.text());
    assert!(!logs.text().contains(TOKEN), "{}", logs.text());
}

#[tokio::test]
async fn three_server_errors_give_up_with_a_warning_naming_the_status() {
    let (logs, _guard) = Logs::capture();
    let (monitor, base) = Monitor::start(&[500, 502, 500, 500]).await;
    let notifier = Notifier::with_options(None, Some(url(&format!("{base}/{TOKEN}"))), quick());

    assert_eq!(
        notifier.failure(&failure()).await,
        Delivery::GaveUp { attempts: 3 }
    );
    assert_eq!(monitor.seen().len(), 3);
    let warnings = logs.warnings();
    assert_eq!(warnings.len(), 1, "{}", logs.text());
    assert!(
        warnings[0].contains(&format!("url={base}/…"))
            && warnings[0].contains("status=500")
            && warnings[0].contains("attempts=3"),
        "{}",
        warnings[0]
    );
    assert!(!logs.text().contains(TOKEN), "{}", logs.text());
}

#[tokio::test]
async fn an_answer_that_cannot_change_is_not_asked_again() {
    let (logs, _guard) = Logs::capture();
    let (monitor, base) = Monitor::start(&[404]).await;
    let notifier = Notifier::with_options(Some(url(&format!("{base}/{TOKEN}"))), None, quick());

    assert_eq!(
        notifier.success(&success()).await,
        Delivery::GaveUp { attempts: 1 }
    );
    assert_eq!(monitor.seen().len(), 1);
    let warnings = logs.warnings();
    assert!(
        warnings.len() == 1 && warnings[0].contains("status=404"),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_given_up_on_in_time() {
    let (logs, _guard) = Logs::capture();
    // Accepts connections and holds them, reading nothing and answering nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let held = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            held.lock().unwrap().push(socket);
        }
    });
    let options = quick();
    let notifier = Notifier::with_options(None, Some(url(&format!("{base}/{TOKEN}"))), options);

    let started = Instant::now();
    let delivery = notifier.failure(&failure()).await;
    let elapsed = started.elapsed();
    assert_eq!(delivery, Delivery::GaveUp { attempts: 3 });
    assert_eq!(
        accepted.lock().unwrap().len(),
        3,
        "one connection per attempt"
    );
    // 3 × 300 ms of timeouts, plus pauses of 20 and 40 ms (up to twice that with jitter). The upper
    // bound leaves room for a loaded machine while staying far below the defaults' 33 s.
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    let warnings = logs.warnings();
    assert_eq!(warnings.len(), 1, "{}", logs.text());
    assert!(
        warnings[0].contains(&format!("url={base}/…"))
            && warnings[0].contains("error_kind=\"timeout\""),
        "{}",
        warnings[0]
    );
    assert!(!logs.text().contains(TOKEN), "{}", logs.text());
}

#[tokio::test]
async fn an_unreachable_monitor_is_logged_not_returned() {
    let (logs, _guard) = Logs::capture();
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let notifier = Notifier::with_options(
        Some(url(&format!("{base}/{TOKEN}"))),
        Some(url(&format!("{base}/{TOKEN}/fail?rid=1"))),
        quick(),
    );

    assert_eq!(
        notifier.success(&success()).await,
        Delivery::GaveUp { attempts: 3 }
    );
    assert_eq!(
        notifier.failure(&failure()).await,
        Delivery::GaveUp { attempts: 3 }
    );
    let warnings = logs.warnings();
    assert_eq!(warnings.len(), 2, "{}", logs.text());
    for warning in &warnings {
        assert!(
            warning.contains(&format!("url=http://127.0.0.1:{port}/…"))
                && warning.contains("error_kind=\"connection failed\"")
                && warning.contains("attempts=3"),
            "{warning}"
        );
    }
    assert!(
        warnings[0].contains("heartbeat not delivered"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("failure notification not delivered"),
        "{}",
        warnings[1]
    );
    let text = logs.text();
    assert!(!text.contains(TOKEN) && !text.contains("rid=1"), "{text}");
}

#[tokio::test]
async fn nothing_configured_sends_nothing() {
    let config = Config::load(&Sources::default()).unwrap();
    let notifier = Notifier::new(&config.settings);
    assert!(!notifier.is_configured());
    assert_eq!(notifier.success(&success()).await, Delivery::NotConfigured);
    assert_eq!(notifier.failure(&failure()).await, Delivery::NotConfigured);
}

#[tokio::test]
async fn the_settings_reach_the_notifier_and_their_tokens_never_print() {
    let (monitor, base) = Monitor::start(&[]).await;
    let heartbeat = format!("{base}/ping/{TOKEN}");
    let fail = format!("{base}/ping/{TOKEN}/fail");
    let config = Config::load(&Sources::with_env([
        ("HITKEEP_BACKUP_PATH".to_owned(), "backups".to_owned()),
        ("HITKEEP_BACKUP_HEARTBEAT_URL".to_owned(), heartbeat.clone()),
        ("HITKEEP_BACKUP_FAILURE_URL".to_owned(), fail.clone()),
    ]))
    .unwrap();
    let notifier = Notifier::new(&config.settings);
    assert!(notifier.is_configured());

    let shown = format!(
        "{notifier:?} {notifier:#?} {:?} {} {}",
        config.settings,
        config.render_text(),
        config.render_json()
    );
    assert!(
        !shown.contains(TOKEN) && !shown.contains("/ping"),
        "{shown}"
    );
    assert!(shown.contains(&format!("{base}/…")), "{shown}");

    // The very URLs configured are the ones called.
    notifier.success(&success()).await;
    notifier.failure(&failure()).await;
    let paths: Vec<_> = monitor
        .seen()
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    assert_eq!(
        paths,
        [
            (Method::GET, format!("/ping/{TOKEN}")),
            (Method::POST, format!("/ping/{TOKEN}/fail"))
        ]
    );
}

/// The scheduler awaits notifications inside spawned tasks: the futures must be `Send`.
#[test]
fn the_notifications_can_be_awaited_in_spawned_tasks() {
    fn spawnable<F: std::future::Future + Send + 'static>(_: F) {}
    let notifier = Notifier::with_options(None, None, quick());
    let n = notifier.clone();
    spawnable(async move { n.success(&success()).await });
    spawnable(async move { notifier.failure(&failure()).await });
}
