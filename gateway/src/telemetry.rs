//! Metrics: the Prometheus recorder, the list of every metric the gateway exports (the
//! README's table comes from it), the HTTP request middleware and the live-subscriber gauge.
//! Labels are bounded: routes, methods, status codes, modes, reasons and existing tables,
//! never scopes, tokens or values a client chooses.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{Method, Uri};
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: name, kind, labels, meaning.
pub const METRICS: &[(&str, Kind, &str, &str)] = &[
    ("gateway_replication_connected", Kind::Gauge, "", "1 while the replication stream is connected"),
    ("gateway_replication_transactions_total", Kind::Counter, "", "transactions received from the slot"),
    ("gateway_replication_changes_total", Kind::Counter, "", "row changes received from the slot"),
    ("gateway_replication_bytes_total", Kind::Counter, "", "pgoutput bytes received"),
    ("gateway_replication_decode_errors_total", Kind::Counter, "", "pgoutput messages that did not decode"),
    (
        "gateway_replication_txn_parts_total",
        Kind::Counter,
        "",
        "parts of transactions larger than a part of --txn-memory, passed on as they arrived",
    ),
    (
        "gateway_replication_lag_bytes",
        Kind::Gauge,
        "",
        "WAL written by PostgreSQL but not yet durable in the shape logs",
    ),
    (
        "gateway_replication_lag_seconds",
        Kind::Gauge,
        "",
        "age of the newest received transaction when it arrived (commit to receipt)",
    ),
    ("gateway_heartbeats_total", Kind::Counter, "", "heartbeats written to the WAL on a quiet database"),
    ("gateway_seconds_since_last_commit", Kind::Gauge, "", "time since the stream last delivered a transaction"),
    ("gateway_slot_retained_wal_bytes", Kind::Gauge, "", "WAL our slot keeps on the server (current - restart_lsn)"),
    (
        "gateway_slot_safe_wal_bytes",
        Kind::Gauge,
        "",
        "WAL that can still be written before the slot is lost (max_slot_wal_keep_size set)",
    ),
    (
        "gateway_wal_budget_stage",
        Kind::Gauge,
        "",
        "0 ok, 1 warn, 2 new shapes paused, 3 budget exceeded (see --max-retained-wal)",
    ),
    ("gateway_leader", Kind::Gauge, "", "1 while this gateway streams from the slot, 0 while it stands by"),
    ("gateway_shapes", Kind::Gauge, "", "live shapes"),
    ("gateway_shapes_created_total", Kind::Counter, "", "shapes created"),
    ("gateway_shapes_rotated_total", Kind::Counter, "", "shapes rotated (clients get 409 must-refetch)"),
    ("gateway_shape_log_bytes", Kind::Gauge, "", "bytes of shape logs on disk"),
    (
        "gateway_storage_failing",
        Kind::Gauge,
        "",
        "1 while shape storage fails (full disk, I/O error): nothing new is acknowledged",
    ),
    ("gateway_storage_errors_total", Kind::Counter, "", "failed attempts to store a batch"),
    (
        "gateway_fanout_seconds",
        Kind::Histogram,
        "stage",
        "time per fan-out batch: routing it (plan), appending and syncing its logs (store)",
    ),
    ("gateway_fanout_batch_transactions", Kind::Histogram, "", "transactions per fan-out batch"),
    ("gateway_subscribers", Kind::Gauge, "mode", "live requests waiting for changes, by mode (long_poll, sse)"),
    ("gateway_http_requests_total", Kind::Counter, "route, method, status", "HTTP requests answered"),
    (
        "gateway_http_request_duration_seconds",
        Kind::Histogram,
        "route, method",
        "time to the response head (a long-poll's hold included)",
    ),
    ("gateway_outbox_mutations_total", Kind::Counter, "table, status", "outbox mutations by result"),
    ("gateway_outbox_batch_seconds", Kind::Histogram, "", "time to apply one outbox batch"),
    ("gateway_auth_failures_total", Kind::Counter, "reason", "requests refused by authentication or access rules"),
    ("gateway_panics_total", Kind::Counter, "", "request handlers that panicked (answered 500; the log has where)"),
    (
        "gateway_stalled_connections_closed_total",
        Kind::Counter,
        "",
        "connections closed because the client accepted no bytes for --send-timeout-s",
    ),
    (
        "gateway_forwarded_requests_total",
        Kind::Counter,
        "",
        "requests a read-serving standby sent on to the leader (new shapes, DELETE)",
    ),
    (
        "gateway_follower_log_reloads_total",
        Kind::Counter,
        "",
        "shape logs a read-serving standby read again from their files (a journal record did not continue its view)",
    ),
];

const HTTP_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 20.0, 60.0];
const BATCH_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const TXN_BUCKETS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];

/// Logs every panic once, with where it happened, through the gateway's log (so JSON log
/// collectors see it) instead of the default hook's stderr line.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%location, %message, "panic");
    }));
}

/// The process's recorder, installed on first use (the demo and tests may start `serve`
/// more than once in one process).
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("gateway_http_request_duration_seconds".into()), HTTP_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full("gateway_outbox_batch_seconds".into()), BATCH_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full("gateway_fanout_seconds".into()), BATCH_BUCKETS))
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("gateway_fanout_batch_transactions".into()), TXN_BUCKETS)
            })
            .expect("bucket lists are not empty");
        let handle = builder.install_recorder().unwrap_or_else(|_| {
            // Another recorder owns the process (an embedding program): render an empty one.
            PrometheusBuilder::new().build_recorder().handle()
        });
        for (name, kind, labels, help) in METRICS {
            match kind {
                Kind::Counter => metrics::describe_counter!(*name, *help),
                Kind::Gauge => metrics::describe_gauge!(*name, *help),
                Kind::Histogram => metrics::describe_histogram!(*name, *help),
            }
            // Unlabelled series exist from the start, so dashboards see zeros, not gaps.
            if labels.is_empty() {
                match kind {
                    Kind::Counter => metrics::counter!(*name).absolute(0),
                    Kind::Gauge => metrics::gauge!(*name).set(0.0),
                    Kind::Histogram => {}
                }
            }
        }
        handle
    })
}

/// How often histogram buckets are drained.
const UPKEEP_EVERY: Duration = Duration::from_secs(10);
/// The disk walk runs at most this share of the time: with 10,000 shapes a walk every 10 s
/// took 3% of the gateway's CPU under load.
const WALK_SHARE: u32 = 100;

/// Drains histogram buckets every few seconds, and measures the shape logs on disk as often
/// as the walk's own cost allows.
pub async fn upkeep(handle: &'static PrometheusHandle, data_dir: PathBuf) {
    let mut next_walk = Instant::now();
    loop {
        tokio::time::sleep(UPKEEP_EVERY).await;
        handle.run_upkeep();
        if Instant::now() < next_walk {
            continue;
        }
        let dir = data_dir.clone();
        let started = Instant::now();
        if let Ok(bytes) = tokio::task::spawn_blocking(move || dir_bytes(&dir)).await {
            metrics::gauge!("gateway_shape_log_bytes").set(bytes as f64);
        }
        next_walk = Instant::now() + started.elapsed() * WALK_SHARE;
    }
}

/// Bytes of the files under `dir` (shape logs sit one level down).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// A request not waiting for live changes that takes longer is logged.
const SLOW_ANSWER: Duration = Duration::from_secs(20);

/// Counts and times a request by its route pattern (never the raw path); logs slow ones.
/// Started by the HTTP edge as the request arrives and finished with its answer; it holds
/// no allocation while a long-poll waits.
pub struct HttpTimer {
    route: &'static str,
    method: Method,
    uri: Uri,
    started: Instant,
}

impl HttpTimer {
    pub fn start(req: &Request) -> HttpTimer {
        let route = route_label(req.uri().path());
        HttpTimer { route, method: req.method().clone(), uri: req.uri().clone(), started: Instant::now() }
    }

    pub fn finish(self, resp: &Response) {
        let took = self.started.elapsed();
        let route = self.route;
        if took > SLOW_ANSWER {
            // Quoted and escaped (`?`), so a client's text cannot forge log lines.
            let position = position_asked(self.uri.query().unwrap_or(""));
            if !position.contains("live=true") {
                tracing::warn!(%route, ?position, took_ms = took.as_millis() as u64, status = resp.status().as_u16(), "a slow answer");
            }
        }
        let (method, status) = (method_label(&self.method), resp.status().as_u16().to_string());
        metrics::histogram!("gateway_http_request_duration_seconds", "route" => route, "method" => method)
            .record(took.as_secs_f64());
        metrics::counter!("gateway_http_requests_total", "route" => route, "method" => method, "status" => status)
            .increment(1);
    }
}

/// A request's route for metrics: one of the gateway's routes, `/demo` for the demo's
/// files, else `unmatched`; never the raw path (a client cannot mint label values).
pub(crate) fn route_label(path: &str) -> &'static str {
    match crate::http::ROUTES.iter().find(|(_, route)| *route == path) {
        Some((_, route)) => route,
        None if path == "/demo" || path.starts_with("/demo/") => "/demo",
        None => "unmatched",
    }
}

/// A request's method for metrics: the standard ones by name, any other `other`. A method
/// is the client's text (HTTP allows any token): labelled as sent, each new one would add
/// time series without bound.
pub(crate) fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD.iter().find(|m| *m == method).map_or("other", Method::as_str)
}

/// What a request asked for, for the log: its position (`offset`, `live`), never the
/// filter, its parameters or anything else a client chose.
fn position_asked(query: &str) -> String {
    let query = form_urlencoded::parse(query.as_bytes());
    let position: Vec<String> =
        query.filter(|(k, _)| k == "offset" || k == "live").map(|(k, v)| format!("{k}={v}")).collect();
    position.join("&")
}

/// A live request waiting for changes; counted in `gateway_subscribers` while it lives.
pub struct LiveSubscriber(&'static str);

impl LiveSubscriber {
    pub fn new(mode: &'static str) -> LiveSubscriber {
        metrics::gauge!("gateway_subscribers", "mode" => mode).increment(1.0);
        LiveSubscriber(mode)
    }
}

impl Drop for LiveSubscriber {
    fn drop(&mut self) {
        metrics::gauge!("gateway_subscribers", "mode" => self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_metric() {
        let readme = include_str!("../../README.md");
        for (name, ..) in METRICS {
            assert!(readme.contains(&format!("| `{name}` |")), "README's metrics table lacks {name}");
        }
    }

    #[test]
    fn a_slow_answer_is_logged_by_its_position_never_by_its_filter_or_parameters() {
        let query = "table=todos&where=secret%3D%27hush%27&params%5B1%5D=org9&offset=12_0&columns=id&live=false";
        assert_eq!(position_asked(query), "offset=12_0&live=false");
        assert_eq!(position_asked(""), "");
    }
}
