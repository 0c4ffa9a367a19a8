//! `blogctl serve --metrics ADDR`: Prometheus metrics of the process's services, in the text
//! exposition format (prometheus-client), served over plain HTTP at `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::shutdown::Shutdown;

/// Labels: name and value pairs.
type Labels = Vec<(String, String)>;

/// What became of one entry, as the metrics count it.
#[derive(Debug, Clone, Copy)]
pub enum Handled {
    Applied,
    /// Found already applied (acknowledged by another consumer or before a crash).
    Stale,
    /// Waits for entries still in flight (a comment's post, say), tried again shortly.
    Deferred,
    DeadLettered,
    /// Acknowledged unread: an event type the service does not use.
    Skipped,
}

impl Handled {
    fn as_str(self) -> &'static str {
        match self {
            Handled::Applied => "applied",
            Handled::Stale => "stale",
            Handled::Deferred => "deferred",
            Handled::DeadLettered => "dead_lettered",
            Handled::Skipped => "skipped",
        }
    }
}

/// The metrics of one `serve` process.
pub struct Metrics {
    registry: Registry,
    entries: Family<Labels, Counter>,
    steps: Family<Labels, Histogram, fn() -> Histogram>,
    retries: Family<Labels, Counter>,
    reconnects: Family<Labels, Counter>,
    lag: Family<Labels, Gauge>,
    pending: Family<Labels, Gauge>,
    consumers: Family<Labels, Gauge>,
    busy_poll: Counter<f64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn step_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("blogctl");
        let entries = Family::<Labels, Counter>::default();
        registry.register(
            "entries_handled",
            "Entries handled, by service, type (event type or request command) and outcome",
            entries.clone(),
        );
        let steps = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            step_histogram as fn() -> Histogram,
        );
        registry.register(
            "step_duration_seconds",
            "Time of one atomic step, by service (in a batch, the batch's round trip shared \
             equally by its steps)",
            steps.clone(),
        );
        let retries = Family::<Labels, Counter>::default();
        registry.register(
            "step_retries",
            "Steps tried again after an error, by service",
            retries.clone(),
        );
        let reconnects = Family::<Labels, Counter>::default();
        registry.register(
            "redis_reconnects",
            "Times a service started over, connecting again, after Redis trouble, by service",
            reconnects.clone(),
        );
        let lag = Family::<Labels, Gauge>::default();
        registry.register(
            "group_lag",
            "Entries not yet delivered to a consumer group, by group and stream",
            lag.clone(),
        );
        let pending = Family::<Labels, Gauge>::default();
        registry.register(
            "group_pending",
            "Entries delivered to a consumer group and not acknowledged, by group and stream",
            pending.clone(),
        );
        let consumers = Family::<Labels, Gauge>::default();
        registry.register(
            "group_consumers",
            "Consumers of a consumer group, by group and stream",
            consumers.clone(),
        );
        let busy_poll = Counter::<f64, AtomicU64>::default();
        registry.register(
            "busy_poll_seconds",
            "Time spent in --busy-poll's windows, polling for I/O instead of sleeping (work done \
             meanwhile included)",
            busy_poll.clone(),
        );
        Metrics {
            registry,
            entries,
            steps,
            retries,
            reconnects,
            lag,
            pending,
            consumers,
            busy_poll,
        }
    }

    pub fn handled(&self, service: &str, kind: &str, outcome: Handled) {
        self.entries
            .get_or_create(&vec![
                ("service".to_owned(), service.to_owned()),
                ("type".to_owned(), kind.to_owned()),
                ("outcome".to_owned(), outcome.as_str().to_owned()),
            ])
            .inc();
    }

    pub fn step(&self, service: &str, took: Duration) {
        self.steps
            .get_or_create(&service_label(service))
            .observe(took.as_secs_f64());
    }

    pub fn retry(&self, service: &str) {
        self.retries.get_or_create(&service_label(service)).inc();
    }

    pub fn reconnect(&self, service: &str) {
        self.reconnects.get_or_create(&service_label(service)).inc();
    }

    /// The state of a group, as `XINFO GROUPS` tells it.
    pub fn group(&self, group: &str, stream: &str, lag: u64, pending: u64, consumers: u64) {
        let labels = vec![
            ("group".to_owned(), group.to_owned()),
            ("stream".to_owned(), stream.to_owned()),
        ];
        for (family, value) in [
            (&self.lag, lag),
            (&self.pending, pending),
            (&self.consumers, consumers),
        ] {
            family
                .get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let spun = crate::busy_poll::spun().as_secs_f64() - self.busy_poll.get();
        if spun > 0.0 {
            self.busy_poll.inc_by(spun);
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn service_label(service: &str) -> Labels {
    vec![("service".to_owned(), service.to_owned())]
}

/// Serves `GET /metrics` on `address` until `shutdown`; anything else gets 404. One request per
/// connection, read up to 8 KiB: a scraper needs no more.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mut shutdown: Shutdown) {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "serving metrics at /metrics");
    }
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => return,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(count) => request.extend_from_slice(&buffer[..count]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let response = if request.starts_with(b"GET /metrics ") {
                let body = metrics.render();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds the metrics address, or says why not (exit code 2).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, crate::error::Failure> {
    TcpListener::bind(address).await.map_err(|error| {
        warn!(%address, %error, "cannot serve metrics");
        crate::error::Failure::invalid(format!(
            "cannot serve metrics on --metrics {address}: {error}"
        ))
    })
}
