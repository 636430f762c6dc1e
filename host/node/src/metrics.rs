//! The node's counters and their Prometheus text exposition (`/metrics`),
//! and the recent calls the dashboard shows.
//!
//! Counters, the latency histogram and the recent calls live here, outside
//! the node's execution path; the exposition text is written by hand (no
//! Prometheus library). The HTTP layer and the ingress queue record each
//! message after it ran. Gauges (rounds, canisters, memory) are read from
//! the node when rendering.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cellar_types::Principal;
use cellar_types::api::{CanisterStatus, MessageCounts, RecentCall};

/// Recent calls kept for the dashboard.
pub const RECENT_CALLS: usize = 50;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// The kind of a message, as metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An update call.
    Update,
    /// A query.
    Query,
    /// A management request (create, install, stop, start, delete, controllers).
    Management,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Update, Kind::Query, Kind::Management];

    fn label(self) -> &'static str {
        match self {
            Kind::Update => "update",
            Kind::Query => "query",
            Kind::Management => "management",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in LATENCY_BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
struct Inner {
    /// Per kind: replied, rejected.
    outcomes: [[u64; 2]; 3],
    instructions: [u64; 3],
    latency: [Histogram; 3],
    refused: u64,
    /// HTTP answers by status class (1xx..5xx).
    http: [u64; 5],
    recent: VecDeque<RecentCall>,
}

/// The node's counters.
pub struct Metrics {
    started: Instant,
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Gauges read from the node when rendering.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Rounds executed.
    pub round: u64,
    /// Updates waiting in the ingress queue.
    pub queued: u64,
    /// Requests in the replay cache.
    pub tracked_requests: u64,
    /// Entries of the ingress history.
    pub history_entries: u64,
    /// Bytes of the results the ingress history holds.
    pub history_reply_bytes: u64,
    /// Every canister's status.
    pub canisters: Vec<CanisterStatus>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Metrics {
    /// Counters at zero.
    pub fn new() -> Self {
        Metrics {
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Time since the counters started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records a message that reached a canister (updates and queries also
    /// enter the recent calls).
    pub fn record_call(
        &self,
        kind: Kind,
        canister: &Principal,
        method: &str,
        replied: bool,
        instructions: u64,
        elapsed: Duration,
    ) {
        let mut inner = self.inner.lock().expect("metrics");
        let k = kind.index();
        inner.outcomes[k][usize::from(!replied)] += 1;
        inner.instructions[k] += instructions;
        inner.latency[k].observe(elapsed.as_secs_f64());
        if kind != Kind::Management {
            if inner.recent.len() == RECENT_CALLS {
                inner.recent.pop_back();
            }
            inner.recent.push_front(RecentCall {
                time_ms: now_ms(),
                canister_id: canister.to_text(),
                method: method.to_string(),
                kind: kind.label().to_string(),
                outcome: if replied { "replied" } else { "rejected" }.to_string(),
                instructions,
                micros: elapsed.as_micros() as u64,
            });
        }
    }

    /// Records a management request that succeeded (`true`) or failed.
    pub fn record_management(&self, ok: bool, elapsed: Duration) {
        let mut inner = self.inner.lock().expect("metrics");
        let k = Kind::Management.index();
        inner.outcomes[k][usize::from(!ok)] += 1;
        inner.latency[k].observe(elapsed.as_secs_f64());
    }

    /// Records a request refused before it reached a canister.
    pub fn record_refused(&self) {
        self.inner.lock().expect("metrics").refused += 1;
    }

    /// Records an HTTP answer's status code.
    pub fn record_http(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.inner.lock().expect("metrics").http[class] += 1;
    }

    /// The message counters.
    pub fn counts(&self) -> MessageCounts {
        let inner = self.inner.lock().expect("metrics");
        let total = |k: Kind| inner.outcomes[k.index()][0] + inner.outcomes[k.index()][1];
        MessageCounts {
            updates: total(Kind::Update),
            queries: total(Kind::Query),
            management: total(Kind::Management),
            replied: Kind::ALL.iter().map(|k| inner.outcomes[k.index()][0]).sum(),
            rejected: Kind::ALL.iter().map(|k| inner.outcomes[k.index()][1]).sum(),
            refused: inner.refused,
            instructions: inner.instructions.iter().sum(),
        }
    }

    /// The recent calls, newest first.
    pub fn recent(&self) -> Vec<RecentCall> {
        self.inner
            .lock()
            .expect("metrics")
            .recent
            .iter()
            .cloned()
            .collect()
    }

    /// The Prometheus text exposition (format 0.0.4) of the counters and
    /// the gauges.
    pub fn render(&self, gauges: &Gauges) -> String {
        let inner = self.inner.lock().expect("metrics");
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "cellar_rounds_total",
            "counter",
            "Rounds executed.",
        );
        let _ = writeln!(out, "cellar_rounds_total {}", gauges.round);

        header(
            &mut out,
            "cellar_messages_total",
            "counter",
            "Messages executed, by kind and outcome.",
        );
        for kind in Kind::ALL {
            for (o, outcome) in ["replied", "rejected"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "cellar_messages_total{{kind=\"{}\",outcome=\"{outcome}\"}} {}",
                    kind.label(),
                    inner.outcomes[kind.index()][o]
                );
            }
        }
        header(
            &mut out,
            "cellar_requests_refused_total",
            "counter",
            "Requests refused before reaching a canister.",
        );
        let _ = writeln!(out, "cellar_requests_refused_total {}", inner.refused);

        header(
            &mut out,
            "cellar_instructions_total",
            "counter",
            "Wasm instructions executed, by message kind.",
        );
        for kind in [Kind::Update, Kind::Query] {
            let _ = writeln!(
                out,
                "cellar_instructions_total{{kind=\"{}\"}} {}",
                kind.label(),
                inner.instructions[kind.index()]
            );
        }

        header(
            &mut out,
            "cellar_message_duration_seconds",
            "histogram",
            "Time the node took for a message, by kind.",
        );
        for kind in Kind::ALL {
            let h = &inner.latency[kind.index()];
            for (bound, count) in LATENCY_BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "cellar_message_duration_seconds_bucket{{kind=\"{}\",le=\"{bound}\"}} {count}",
                    kind.label()
                );
            }
            let label = kind.label();
            let _ = writeln!(
                out,
                "cellar_message_duration_seconds_bucket{{kind=\"{label}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "cellar_message_duration_seconds_sum{{kind=\"{label}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "cellar_message_duration_seconds_count{{kind=\"{label}\"}} {}",
                h.count
            );
        }

        header(
            &mut out,
            "cellar_http_responses_total",
            "counter",
            "HTTP answers by status class.",
        );
        for (i, count) in inner.http.iter().enumerate() {
            let _ = writeln!(
                out,
                "cellar_http_responses_total{{class=\"{}xx\"}} {count}",
                i + 1
            );
        }

        header(
            &mut out,
            "cellar_canisters",
            "gauge",
            "Canisters, by status.",
        );
        let running = gauges
            .canisters
            .iter()
            .filter(|c| c.status == cellar_types::api::RunStatus::Running)
            .count();
        let _ = writeln!(out, "cellar_canisters{{status=\"running\"}} {running}");
        let _ = writeln!(
            out,
            "cellar_canisters{{status=\"stopped\"}} {}",
            gauges.canisters.len() - running
        );

        header(
            &mut out,
            "cellar_memory_bytes",
            "gauge",
            "Canister memory, by kind.",
        );
        let heap: u64 = gauges.canisters.iter().map(|c| c.heap_bytes).sum();
        let stable: u64 = gauges.canisters.iter().map(|c| c.stable_bytes).sum();
        let _ = writeln!(out, "cellar_memory_bytes{{kind=\"heap\"}} {heap}");
        let _ = writeln!(out, "cellar_memory_bytes{{kind=\"stable\"}} {stable}");

        header(
            &mut out,
            "cellar_ingress_queue_length",
            "gauge",
            "Updates waiting in the ingress queue.",
        );
        let _ = writeln!(out, "cellar_ingress_queue_length {}", gauges.queued);
        header(
            &mut out,
            "cellar_tracked_requests",
            "gauge",
            "Requests remembered for replay protection and polling.",
        );
        let _ = writeln!(out, "cellar_tracked_requests {}", gauges.tracked_requests);
        header(
            &mut out,
            "cellar_ingress_history_entries",
            "gauge",
            "Requests in the replicated ingress history.",
        );
        let _ = writeln!(
            out,
            "cellar_ingress_history_entries {}",
            gauges.history_entries
        );
        header(
            &mut out,
            "cellar_ingress_history_reply_bytes",
            "gauge",
            "Bytes of the results the ingress history holds.",
        );
        let _ = writeln!(
            out,
            "cellar_ingress_history_reply_bytes {}",
            gauges.history_reply_bytes
        );
        header(
            &mut out,
            "cellar_uptime_seconds",
            "gauge",
            "Seconds since the node started serving.",
        );
        let _ = writeln!(
            out,
            "cellar_uptime_seconds {}",
            self.started.elapsed().as_secs_f64()
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_counts_messages_and_buckets() {
        let metrics = Metrics::new();
        let id = Principal::canister(0);
        metrics.record_call(
            Kind::Update,
            &id,
            "add",
            true,
            100,
            Duration::from_micros(300),
        );
        metrics.record_call(Kind::Query, &id, "get", false, 7, Duration::from_secs(2));
        metrics.record_http(200);
        metrics.record_http(404);
        let text = metrics.render(&Gauges {
            round: 9,
            ..Gauges::default()
        });
        for line in [
            "cellar_rounds_total 9",
            "cellar_messages_total{kind=\"update\",outcome=\"replied\"} 1",
            "cellar_messages_total{kind=\"query\",outcome=\"rejected\"} 1",
            "cellar_instructions_total{kind=\"update\"} 100",
            "cellar_message_duration_seconds_bucket{kind=\"update\",le=\"0.00025\"} 0",
            "cellar_message_duration_seconds_bucket{kind=\"update\",le=\"0.0005\"} 1",
            "cellar_message_duration_seconds_bucket{kind=\"query\",le=\"1\"} 0",
            "cellar_message_duration_seconds_bucket{kind=\"query\",le=\"+Inf\"} 1",
            "cellar_http_responses_total{class=\"4xx\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        let counts = metrics.counts();
        assert_eq!((counts.updates, counts.queries), (1, 1));
        assert_eq!((counts.replied, counts.rejected), (1, 1));
        assert_eq!(metrics.recent()[0].method, "get");
    }
}
