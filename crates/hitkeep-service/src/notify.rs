//! Heartbeat and failure notifications, the convention of healthchecks-style monitors
//! (healthchecks.io, Uptime Kuma push monitors, Cronitor, a webhook).
//!
//! Two optional URLs, from [`hitkeep_config::BackupSettings`]:
//!
//! - `HITKEEP_BACKUP_HEARTBEAT_URL` gets a `GET` with no body after each successful cycle
//!   ([`Notifier::success`]). A monitor that stops hearing from us raises the alarm, which also covers
//!   a scheduler that died or hangs.
//! - `HITKEEP_BACKUP_FAILURE_URL` gets a `POST` with `Content-Type: application/json` when a job fails
//!   ([`Notifier::failure`]), with this body (healthchecks.io's `/fail` URL takes it as the ping's body):
//!
//!   ```json
//!   {"event":"backup_failed","job":"backup","error":"…","consecutive_failures":3,
//!    "at":"2026-03-08T12:00:00Z","host":"analytics-1"}
//!   ```
//!
//!   `event` is `{job}_failed` (`archive_failed` for the archive job); `error` is the first line of the
//!   error, at most 300 characters; `consecutive_failures` counts this failure (1 for the first);
//!   `at` is RFC 3339 UTC to the second; `host` is this machine's host name.
//!
//! Each request has its own timeout (10 s) and is made up to 3 times, waiting about 1 s, then 2 s
//! (with jitter) between attempts. Any 2xx answer is delivery. Connection failures, timeouts, 5xx,
//! 408 and 429 are tried again; any other answer (404: a wrong or deleted check; 400: a body the
//! webhook refuses) will not change by asking again, so it ends the attempts at once.
//!
//! **A notification never fails the job.** Both methods return a [`Delivery`] that says what happened
//! (for metrics or tests; ignoring it is fine), never an error, and never panic. A notification that
//! could not be delivered is logged as a warning naming the URL as `https://host/…`, the status or
//! the kind of failure, and the number of attempts.
//!
//! **The URLs are secrets**: their path or query is the token that lets anyone ping the check or post
//! to the channel. They are [`SecretUrl`]s, shown as `scheme://host[:port]/…` in logs, `Debug` and
//! `config show`; the whole URL is used only to make the request, and the HTTP client's errors, which
//! quote it, are stripped of it before they are logged.
//!
//! For the scheduler, after each job:
//!
//! ```no_run
//! # async fn example(settings: &hitkeep_config::Settings) {
//! use hitkeep_service::notify::{Failure, Notifier, Success};
//! use std::time::Duration;
//!
//! let notifier = Notifier::new(settings); // once; cheap to keep for the process's life
//! notifier
//!     .success(&Success {
//!         snapshot_id: "2026-03-08T120000Z".into(),
//!         databases: 3,
//!         bytes: 12_345_678,
//!         duration: Duration::from_secs(42),
//!     })
//!     .await;
//! notifier
//!     .failure(&Failure {
//!         job: "backup".into(),
//!         error: "storage unreachable: connection refused".into(),
//!         consecutive_failures: 1,
//!         at: jiff::Timestamp::now(),
//!     })
//!     .await;
//! # }
//! ```
//!
//! With both URLs unset (the default), both calls return [`Delivery::NotConfigured`] at once and touch
//! no network, which is what tests in tokio's paused time want: there, a real request's timeout
//! would fire as soon as the runtime idles.
//!
//! A call waits for its delivery, at most attempts × timeout plus the pauses (about 33 s by default);
//! a caller that must not wait that long spawns it.

use std::fmt;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable as _};
use hitkeep_config::{SecretUrl, Settings};
use reqwest::{StatusCode, header};
use serde::Serialize;

/// What a successful cycle did, for the heartbeat (and its debug log line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Success {
    /// The cycle's snapshot id, `2026-03-08T120000Z`.
    pub snapshot_id: String,
    /// Databases backed up.
    pub databases: usize,
    /// Bytes uploaded.
    pub bytes: u64,
    /// How long the cycle took.
    pub duration: Duration,
}

/// A failed job, for the failure notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The job: `backup` or `archive`.
    pub job: String,
    /// The error as printed; only its first line is sent. Our own errors never hold secrets, and
    /// the notification URLs are removed from it in any case.
    pub error: String,
    /// Failures in a row, this one included.
    pub consecutive_failures: u32,
    /// When the job failed.
    pub at: jiff::Timestamp,
}

/// What became of a notification. Informational only: a notification never fails the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// No URL is set for this notification; nothing was sent.
    NotConfigured,
    /// A 2xx answer came, at the attempt given (1 for the first).
    Delivered {
        /// Requests made.
        attempts: u32,
    },
    /// Not delivered: every attempt failed, or the answer was one that asking again cannot change.
    /// A warning was logged.
    GaveUp {
        /// Requests made (0 when no HTTP client could be built).
        attempts: u32,
    },
}

/// Timeouts and retries for notifications. The defaults suit real monitors; tests shorten them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyOptions {
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
    host: Option<String>,
}

impl Default for NotifyOptions {
    /// 10 s per attempt, 3 attempts, 1 s before the second, and the kernel's host name.
    fn default() -> Self {
        NotifyOptions {
            timeout: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_secs(1),
            host: None,
        }
    }
}

impl NotifyOptions {
    /// The limit for one attempt, from connecting to the end of the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Requests made at most, the first included (0 counts as 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The pause before the second attempt; each later pause doubles, plus up to as much jitter.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The `host` of the failure body, instead of the kernel's host name.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
}

/// Sends the heartbeat and failure notifications. Cheap to clone; keep one for the process's life
/// (it holds the HTTP client's connection pool).
#[derive(Clone)]
pub struct Notifier {
    /// `None` when the HTTP client could not be built (logged once, then at each notification).
    client: Option<reqwest::Client>,
    heartbeat: Option<SecretUrl>,
    failure: Option<SecretUrl>,
    options: NotifyOptions,
    host: String,
}

impl fmt::Debug for Notifier {
    /// The URLs as `https://host/…` only: their tokens never print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("heartbeat", &self.heartbeat)
            .field("failure", &self.failure)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// The notifier for `settings.backup`'s heartbeat and failure URLs, with the default options.
    pub fn new(settings: &Settings) -> Notifier {
        Notifier::with_options(
            settings.backup.heartbeat_url.clone(),
            settings.backup.failure_url.clone(),
            NotifyOptions::default(),
        )
    }

    /// A notifier for the given URLs (either may be `None`: that notification is not sent).
    pub fn with_options(
        heartbeat: Option<SecretUrl>,
        failure: Option<SecretUrl>,
        options: NotifyOptions,
    ) -> Notifier {
        let client = match (&heartbeat, &failure) {
            (None, None) => None,
            _ => build_client(),
        };
        let host = options.host.clone().unwrap_or_else(host_name);
        Notifier {
            client,
            heartbeat,
            failure,
            options,
            host,
        }
    }

    /// Whether either URL is set.
    pub fn is_configured(&self) -> bool {
        self.heartbeat.is_some() || self.failure.is_some()
    }

    /// Pings the heartbeat URL (a `GET`, no body) after a successful cycle. Never fails; see the
    /// module documentation.
    pub async fn success(&self, summary: &Success) -> Delivery {
        let Some(url) = &self.heartbeat else {
            return Delivery::NotConfigured;
        };
        let delivery = self
            .deliver("heartbeat", url, |client| client.get(url.expose()))
            .await;
        if let Delivery::Delivered { attempts } = delivery {
            tracing::debug!(
                url = %url,
                attempts,
                snapshot = %summary.snapshot_id,
                databases = summary.databases,
                bytes = summary.bytes,
                duration_ms = u64::try_from(summary.duration.as_millis()).unwrap_or(u64::MAX),
                "heartbeat sent"
            );
        }
        delivery
    }

    /// Posts the failure body (see the module documentation) to the failure URL. Never fails.
    pub async fn failure(&self, failure: &Failure) -> Delivery {
        let Some(url) = &self.failure else {
            return Delivery::NotConfigured;
        };
        let body = self.failure_body(failure);
        let delivery = self
            .deliver("failure notification", url, |client| {
                client
                    .post(url.expose())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await;
        if let Delivery::Delivered { attempts } = delivery {
            tracing::debug!(url = %url, attempts, job = %failure.job, "failure notification sent");
        }
        delivery
    }

    /// The JSON body of a failure notification.
    fn failure_body(&self, failure: &Failure) -> String {
        let body = FailureBody {
            event: format!("{}_failed", failure.job),
            job: &failure.job,
            error: self.scrub(&first_line(&failure.error)),
            consecutive_failures: failure.consecutive_failures,
            // Whole seconds: enough for a person, and a stable shape for a parser.
            at: jiff::Timestamp::from_second(failure.at.as_second())
                .unwrap_or(failure.at)
                .to_string(),
            host: &self.host,
        };
        serde_json::to_string(&body).unwrap_or_else(|_| String::from("{}"))
    }

    /// Sends the request `request` builds, tried again as the module documentation says, and logs
    /// a warning when it is not delivered.
    async fn deliver(
        &self,
        what: &'static str,
        url: &SecretUrl,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Delivery {
        let Some(client) = &self.client else {
            tracing::warn!(url = %url, "{what} not sent: no HTTP client (see the warning at start)");
            return Delivery::GaveUp { attempts: 0 };
        };
        let started = Instant::now();
        let mut attempts = 0_u32;
        let result = (|| {
            attempts += 1;
            attempt(request(client).timeout(self.options.timeout))
        })
        .retry(self.backoff())
        .when(Failed::is_worth_retrying)
        .notify(|failed, wait| {
            tracing::debug!(url = %url, retry_in = ?wait, reason = %self.describe(failed), "{what} not delivered yet, trying again");
        })
        .await;
        match result {
            Ok(()) => Delivery::Delivered { attempts },
            Err(failed) => {
                let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                match &failed {
                    Failed::Status(status) => tracing::warn!(
                        url = %url,
                        status = status.as_u16(),
                        attempts,
                        elapsed_ms,
                        "{what} not delivered: the server answered {status}; the job itself is unaffected"
                    ),
                    Failed::Transport(e) => tracing::warn!(
                        url = %url,
                        error_kind = error_kind(e),
                        error = %self.describe(&failed),
                        attempts,
                        elapsed_ms,
                        "{what} not delivered: {}; the job itself is unaffected",
                        error_kind(e)
                    ),
                }
                Delivery::GaveUp { attempts }
            }
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        let attempts = usize::try_from(self.options.attempts.max(1)).unwrap_or(usize::MAX);
        ExponentialBuilder::default()
            .with_min_delay(self.options.backoff)
            .with_max_delay(self.options.backoff.saturating_mul(8))
            .with_max_times(attempts - 1)
            .with_jitter()
    }

    /// A failure as text for the log: a status, or the client's error and its causes, without the
    /// URL (stripped from the error when it was made, and scrubbed here again in case a cause
    /// quotes it).
    fn describe(&self, failed: &Failed) -> String {
        match failed {
            Failed::Status(status) => format!("answered {status}"),
            Failed::Transport(e) => self.scrub(&crate::describe(e)),
        }
    }

    /// `text` with our URLs, and their paths and queries, replaced by their redacted form. Longest
    /// first, so a URL that extends the other (`…/uuid/fail` and `…/uuid`) goes whole.
    fn scrub(&self, text: &str) -> String {
        let mut patterns: Vec<(&str, String)> = Vec::new();
        for url in [&self.heartbeat, &self.failure].into_iter().flatten() {
            let whole = url.expose();
            patterns.push((whole, url.to_string()));
            if let Some(tail) = path_and_query(whole).filter(|t| t.len() > 1) {
                patterns.push((tail, "/…".to_owned()));
            }
        }
        patterns.sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.len()));
        patterns
            .into_iter()
            .fold(text.to_owned(), |text, (pattern, with)| {
                text.replace(pattern, &with)
            })
    }
}

/// The body of a failure notification, in the documented order.
#[derive(Serialize)]
struct FailureBody<'a> {
    event: String,
    job: &'a str,
    error: String,
    consecutive_failures: u32,
    at: String,
    host: &'a str,
}

/// Why one attempt did not deliver.
#[derive(Debug)]
enum Failed {
    /// The server answered, but not with a 2xx.
    Status(StatusCode),
    /// No answer: connecting, sending or reading failed, or the attempt timed out. Stripped of the
    /// URL.
    Transport(reqwest::Error),
}

impl Failed {
    /// Whether a later attempt may succeed: a network failure, a timeout, a server error, 408 or
    /// 429. Other answers (404: no such check) will not change by asking again.
    fn is_worth_retrying(&self) -> bool {
        match self {
            Failed::Status(s) => {
                s.is_server_error()
                    || *s == StatusCode::REQUEST_TIMEOUT
                    || *s == StatusCode::TOO_MANY_REQUESTS
            }
            Failed::Transport(e) => !e.is_builder(),
        }
    }
}

/// One request. The answer's body is read (a monitor's "OK") so the connection can be reused, and
/// the timeout covers it too.
async fn attempt(request: reqwest::RequestBuilder) -> Result<(), Failed> {
    let response = request
        .send()
        .await
        .map_err(|e| Failed::Transport(e.without_url()))?;
    let status = response.status();
    response
        .bytes()
        .await
        .map_err(|e| Failed::Transport(e.without_url()))?;
    match status.is_success() {
        true => Ok(()),
        false => Err(Failed::Status(status)),
    }
}

/// The kind of a transport failure, for the log and its `error_kind` field.
fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect failed"
    } else if e.is_body() || e.is_decode() {
        "answer unreadable"
    } else if e.is_builder() {
        "request not built"
    } else {
        "request failed"
    }
}

/// The HTTP client: rustls (as OpenDAL's), our user agent. Building fails only when the TLS setup
/// does; then notifications are not sent, which is logged.
fn build_client() -> Option<reqwest::Client> {
    let built = reqwest::Client::builder()
        .user_agent(concat!("hitkeep/", env!("CARGO_PKG_VERSION")))
        .build();
    match built {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::warn!(error = %e.without_url(), "no HTTP client for notifications; none will be sent");
            None
        }
    }
}

/// This machine's name, as `hostname` prints it (a container's id in a container).
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The first non-empty line of `error`, at most [`MAX_ERROR_CHARS`] characters: a notification is
/// a pointer to the logs, not a copy of them.
fn first_line(error: &str) -> String {
    let line = error
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    match line.char_indices().nth(MAX_ERROR_CHARS) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line.to_owned(),
    }
}

const MAX_ERROR_CHARS: usize = 300;

/// `/path?query#fragment` of a URL as written (`https://host/path?query` → `/path?query`).
fn path_and_query(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    rest.find(['/', '?', '#']).map(|i| &rest[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_is_short() {
        assert_eq!(
            first_line("\n  upload failed \ncaused by: x"),
            "upload failed"
        );
        let long = "é".repeat(400);
        let cut = first_line(&long);
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn scrub_removes_our_urls_and_their_paths() {
        let url: SecretUrl = "https://hc-ping.com/5c6644da-TOKEN?rid=1".parse().unwrap();
        let n = Notifier::with_options(None, Some(url), NotifyOptions::default().host("h"));
        assert_eq!(
            n.scrub("x https://hc-ping.com/5c6644da-TOKEN?rid=1 and /5c6644da-TOKEN?rid=1"),
            "x https://hc-ping.com/… and /…"
        );
        let ping: SecretUrl = "https://hc-ping.com/5c6644da-TOKEN".parse().unwrap();
        let fail: SecretUrl = "https://hc-ping.com/5c6644da-TOKEN/fail".parse().unwrap();
        let n = Notifier::with_options(Some(ping), Some(fail), NotifyOptions::default().host("h"));
        assert_eq!(
            n.scrub("https://hc-ping.com/5c6644da-TOKEN/fail, /5c6644da-TOKEN/fail"),
            "https://hc-ping.com/…, /…"
        );
        assert_eq!(path_and_query("http://h:1"), None);
        assert_eq!(path_and_query("http://h:1/a?b"), Some("/a?b"));
    }
}
