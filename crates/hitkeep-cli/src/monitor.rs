//! What the scheduler serves on `HITKEEP_HTTP_ADDR`: `/healthz`, `/metrics` (Prometheus text) and
//! `/api/admin/system/backups` (HitKeep's backup status JSON).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use jiff::Timestamp;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The scheduler's state and metrics, shared with the HTTP handlers.
pub struct Monitor {
    enabled: bool,
    config_path: String,
    interval: Duration,
    retention: u32,
    state: Mutex<Status>,
    registry: Registry,
    m: Metrics,
}

#[derive(Default)]
struct Status {
    last_backup: Option<Timestamp>,
    next_backup: Option<Timestamp>,
    last_failed_at: Option<Timestamp>,
    last_error: Option<String>,
    recent_failures: u64,
}

#[derive(Default)]
struct Metrics {
    last_success: Gauge,
    last_failure: Gauge,
    cycle_seconds: Gauge<f64, AtomicU64>,
    bytes: Counter,
    files: Counter,
    snapshots: Family<Labels, Gauge>,
    archive_rows: Counter,
    archive_files: Counter,
    errors: Family<Labels, Counter>,
}

impl Monitor {
    pub fn new(settings: &hitkeep_config::Settings) -> Arc<Monitor> {
        let m = Metrics::default();
        let mut registry = Registry::with_prefix("hitkeep");
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the last committed backup cycle",
            m.last_success.clone(),
        );
        registry.register(
            "backup_last_failure_timestamp_seconds",
            "Unix time of the last failed backup cycle",
            m.last_failure.clone(),
        );
        registry.register(
            "backup_cycle_duration_seconds",
            "How long the last backup cycle took",
            m.cycle_seconds.clone(),
        );
        registry.register(
            "backup_uploaded_bytes",
            "Bytes uploaded by backup cycles",
            m.bytes.clone(),
        );
        registry.register(
            "backup_uploaded_files",
            "Files uploaded by backup cycles",
            m.files.clone(),
        );
        registry.register(
            "backup_snapshots",
            "Snapshots present per database",
            m.snapshots.clone(),
        );
        registry.register(
            "archive_rows",
            "Rows moved to retention archives",
            m.archive_rows.clone(),
        );
        registry.register(
            "archive_files",
            "Retention archive files written",
            m.archive_files.clone(),
        );
        registry.register("errors", "Failures by kind", m.errors.clone());
        Arc::new(Monitor {
            enabled: settings.backup.location.is_some(),
            config_path: settings
                .backup
                .location
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            interval: settings.backup.interval,
            retention: settings.backup.retention.get(),
            state: Mutex::default(),
            registry,
            m,
        })
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a backup cycle's outcome.
    pub fn backup(
        &self,
        outcome: Result<&hitkeep_backup::CycleReport, String>,
        took: Duration,
        next: Timestamp,
    ) {
        let now = Timestamp::now();
        self.m.cycle_seconds.set(took.as_secs_f64());
        let mut s = self.status();
        s.next_backup = Some(next);
        let error = match outcome {
            Ok(r) => {
                self.m.bytes.inc_by(r.bytes);
                self.m.files.inc_by(r.files as u64);
                r.failed_tenants()
                    .next()
                    .map(|(id, e)| format!("tenant {id}: {e}"))
            }
            Err(e) => Some(e),
        };
        match error {
            None => {
                s.last_backup = Some(now);
                s.last_error = None;
                self.m.last_success.set(now.as_second());
            }
            Some(e) => {
                s.last_failed_at = Some(now);
                s.last_error = Some(e);
                s.recent_failures += 1;
                self.m.last_failure.set(now.as_second());
                self.m
                    .errors
                    .get_or_create(&vec![("kind".to_owned(), "backup".to_owned())])
                    .inc();
            }
        }
    }

    /// Records how many snapshots each database has.
    pub fn snapshots(&self, catalog: &hitkeep_backup::Catalog) {
        for db in &catalog.databases {
            let n = db
                .snapshots
                .iter()
                .filter(|s| s.state == hitkeep_backup::SnapshotState::Complete)
                .count();
            self.m
                .snapshots
                .get_or_create(&vec![("database".to_owned(), db.database.folder())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Records an archive run.
    pub fn archive(&self, rows: u64, files: u64, failures: u64) {
        self.m.archive_rows.inc_by(rows);
        self.m.archive_files.inc_by(files);
        if failures > 0 {
            self.m
                .errors
                .get_or_create(&vec![("kind".to_owned(), "archive".to_owned())])
                .inc_by(failures);
        }
    }

    /// 200 while the last cycle succeeded and is at most two intervals old; 503 and the reason otherwise.
    fn health(&self) -> (StatusCode, String) {
        if !self.enabled {
            return (StatusCode::OK, "ok: backups are disabled\n".into());
        }
        let s = self.status();
        let stale = |t: Timestamp| {
            Timestamp::now().as_second() - t.as_second() > 2 * self.interval.as_secs() as i64
        };
        match (s.last_backup, s.last_failed_at) {
            (_, Some(failed)) if s.last_backup.is_none_or(|ok| failed > ok) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "unhealthy: the last backup cycle failed at {failed}: {}\n",
                    s.last_error.clone().unwrap_or_default()
                ),
            ),
            (None, _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unhealthy: no backup cycle has succeeded yet\n".into(),
            ),
            (Some(ok), _) if stale(ok) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "unhealthy: the last successful backup ({ok}) is older than two intervals\n"
                ),
            ),
            (Some(ok), _) => (StatusCode::OK, format!("ok: last backup {ok}\n")),
        }
    }

    /// The same fields as HitKeep's `GET /api/admin/system/backups`; unset times are omitted.
    fn status_json(&self) -> String {
        let s = self.status();
        let mut v = serde_json::json!({
            "enabled": self.enabled,
            "config_path": self.config_path,
            "interval_min": self.interval.as_secs() / 60,
            "retention": self.retention,
            "recent_failures": s.recent_failures,
        });
        let fields = [
            ("last_backup", s.last_backup),
            ("next_backup", s.next_backup),
            ("last_failed_at", s.last_failed_at),
        ];
        for (k, t) in fields {
            if let Some(t) = t {
                v[k] = serde_json::Value::String(t.to_string());
            }
        }
        if let Some(e) = &s.last_error {
            v["last_error"] = serde_json::Value::String(e.clone());
        }
        v.to_string()
    }
}

/// Serves the three endpoints on `addr` in the background.
pub async fn serve(addr: SocketAddr, monitor: Arc<Monitor>) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(m): State<Arc<Monitor>>| async move { m.health() }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<Monitor>>| async move {
                let mut body = String::new();
                let _ = encode(&mut body, &m.registry);
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }),
        )
        .route(
            "/api/admin/system/backups",
            get(|State(m): State<Arc<Monitor>>| async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    m.status_json(),
                )
            }),
        )
        .with_state(monitor);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /metrics and /api/admin/system/backups");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the status server stopped");
        }
    });
    Ok(())
}
