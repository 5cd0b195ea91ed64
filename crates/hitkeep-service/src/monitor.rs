//! The HTTP endpoints (feature `monitor`): `/healthz`, `/metrics` (Prometheus text) and
//! `/api/admin/system/backups` (HitKeep's backup status JSON), all read from the one
//! [`StatusBoard`] record at request time.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::scheduler::Clock;
use crate::status::{BackupStatus, StatusBoard};

type Labels = Vec<(String, String)>;

/// What the handlers read.
struct Shared {
    board: Arc<StatusBoard>,
    clock: Arc<dyn Clock>,
}

/// Serves the three endpoints on `addr` in the background; returns the address bound (useful with
/// port 0).
pub async fn serve(
    addr: SocketAddr,
    board: Arc<StatusBoard>,
    clock: Arc<dyn Clock>,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(s): State<Arc<Shared>>| async move {
                let health = s.board.get().health(s.clock.now());
                let code = if health.ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, format!("{}\n", health.reason))
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<Arc<Shared>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics(&s.board.get()),
                )
            }),
        )
        .route(
            "/api/admin/system/backups",
            get(|State(s): State<Arc<Shared>>| async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    s.board.get().hitkeep_json().to_string(),
                )
            }),
        )
        .with_state(Arc::new(Shared { board, clock }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving /healthz, /metrics and /api/admin/system/backups");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the status server stopped");
        }
    });
    Ok(bound)
}

/// The Prometheus text of a status record.
pub fn metrics(status: &BackupStatus) -> String {
    let mut registry = Registry::with_prefix("hitkeep");
    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    let counter = |v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        c
    };
    let time = |t: Option<jiff::Timestamp>| gauge(t.map_or(0, |t| t.as_second()));
    registry.register(
        "backup_last_success_timestamp_seconds",
        "Unix time of the last committed backup cycle",
        time(status.last_backup),
    );
    registry.register(
        "backup_last_failure_timestamp_seconds",
        "Unix time of the last failed backup cycle",
        time(status.last_failed_at),
    );
    let seconds: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    seconds.set(status.last_cycle_seconds.unwrap_or(0.0));
    registry.register(
        "backup_cycle_duration_seconds",
        "How long the last backup cycle took",
        seconds,
    );
    let t = &status.totals;
    registry.register(
        "backup_uploaded_bytes",
        "Bytes uploaded by backup cycles",
        counter(t.uploaded_bytes),
    );
    registry.register(
        "backup_uploaded_files",
        "Files uploaded by backup cycles",
        counter(t.uploaded_files),
    );
    let snapshots: Family<Labels, Gauge> = Family::default();
    for (database, n) in &status.snapshots {
        snapshots
            .get_or_create(&vec![("database".to_owned(), database.clone())])
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    registry.register(
        "backup_snapshots",
        "Snapshots present per database",
        snapshots,
    );
    registry.register(
        "archive_rows",
        "Rows moved to retention archives",
        counter(t.archived_rows),
    );
    registry.register(
        "archive_files",
        "Retention archive files written",
        counter(t.archive_files),
    );
    let errors: Family<Labels, Counter> = Family::default();
    for (kind, n) in [
        ("backup", t.backup_failures),
        ("archive", t.archive_failures),
    ] {
        errors
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .inc_by(n);
    }
    registry.register("errors", "Failures by kind", errors);
    let mut body = String::new();
    let _ = encode(&mut body, &registry);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_from_the_status_record() {
        let mut status = BackupStatus {
            last_backup: Some("2026-12-01T12:00:00Z".parse().unwrap()),
            last_cycle_seconds: Some(2.5),
            ..BackupStatus::default()
        };
        status.snapshots.insert("shared".into(), 3);
        status.totals.uploaded_bytes = 1234;
        status.totals.archive_failures = 2;
        let text = metrics(&status);
        for line in [
            "hitkeep_backup_last_success_timestamp_seconds 1796126400",
            "hitkeep_backup_last_failure_timestamp_seconds 0",
            "hitkeep_backup_cycle_duration_seconds 2.5",
            "hitkeep_backup_uploaded_bytes_total 1234",
            "hitkeep_backup_snapshots{database=\"shared\"} 3",
            "hitkeep_errors_total{kind=\"archive\"} 2",
            "hitkeep_errors_total{kind=\"backup\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
