//! What `/metrics` shows, in Prometheus' text format (version 0.0.4):
//! requests by route and status, a latency histogram by route, the VMs
//! running, how they came up (booted or restored from a template), and
//! the requests refused before a VM was started, by reason.
//!
//! Counters live in small maps under one mutex each: a request touches
//! them a handful of times, far below the cost of its VM.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: a restored VM answers
/// in tenths of a second, a cold TCG boot in seconds.
pub const LATENCY_BUCKETS: [f64; 11] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Why a request was refused before it had a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    QueueFull,
    QueueTimeout,
    BodyTooLarge,
    Draining,
}

impl Rejection {
    fn label(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::QueueTimeout => "queue_timeout",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::Draining => "draining",
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    rejections: Mutex<BTreeMap<(String, Rejection), u64>>,
    vms_running: AtomicI64,
    vms_warm: AtomicI64,
    boots: AtomicU64,
    restores: AtomicU64,
    vm_failures: AtomicU64,
    in_flight: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// A response of `status` for `route` (`""`: no route), `took` after
    /// the request arrived (to its head).
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let mut l = lock(&self.latency);
        let h = l.entry(route.to_string()).or_default();
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn rejected(&self, route: &str, why: Rejection) {
        *lock(&self.rejections)
            .entry((route.to_string(), why))
            .or_default() += 1;
    }

    /// A VM came up (`restored`: from a template).
    pub fn vm_started(&self, restored: bool) {
        let c = if restored {
            &self.restores
        } else {
            &self.boots
        };
        c.fetch_add(1, Ordering::SeqCst);
    }

    /// VMs running a request: `delta` more.
    pub fn running(&self, delta: i64) {
        self.vms_running.fetch_add(delta, Ordering::SeqCst);
    }

    /// VMs booted ahead and idle: `delta` more.
    pub fn warm(&self, delta: i64) {
        self.vms_warm.fetch_add(delta, Ordering::SeqCst);
    }

    /// A VM that could not be started.
    pub fn vm_failed(&self) {
        self.vm_failures.fetch_add(1, Ordering::SeqCst);
    }

    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::SeqCst);
    }

    pub fn vms_running(&self) -> i64 {
        self.vms_running.load(Ordering::SeqCst)
    }

    /// The text of `/metrics`.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP mu2_gateway_requests_total Responses by route and status."
        );
        let _ = writeln!(o, "# TYPE mu2_gateway_requests_total counter");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                o,
                "mu2_gateway_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(
            o,
            "# HELP mu2_gateway_request_duration_seconds Time from a request to its response head."
        );
        let _ = writeln!(o, "# TYPE mu2_gateway_request_duration_seconds histogram");
        for (route, h) in lock(&self.latency).iter() {
            let r = escape(route);
            for (le, c) in LATENCY_BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    o,
                    "mu2_gateway_request_duration_seconds_bucket{{route=\"{r}\",le=\"{le}\"}} {c}"
                );
            }
            let _ = writeln!(
                o,
                "mu2_gateway_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "mu2_gateway_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "mu2_gateway_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            o,
            "# HELP mu2_gateway_rejections_total Requests refused before a VM started, by reason."
        );
        let _ = writeln!(o, "# TYPE mu2_gateway_rejections_total counter");
        for ((route, why), n) in lock(&self.rejections).iter() {
            let _ = writeln!(
                o,
                "mu2_gateway_rejections_total{{route=\"{}\",reason=\"{}\"}} {n}",
                escape(route),
                why.label()
            );
        }
        for (name, help, kind, value) in [
            (
                "mu2_gateway_vms_running",
                "VMs running a request.",
                "gauge",
                self.vms_running.load(Ordering::SeqCst),
            ),
            (
                "mu2_gateway_vms_warm",
                "VMs booted ahead, waiting for a request.",
                "gauge",
                self.vms_warm.load(Ordering::SeqCst),
            ),
            (
                "mu2_gateway_requests_in_flight",
                "Requests being answered.",
                "gauge",
                self.in_flight.load(Ordering::SeqCst),
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(o, "# HELP mu2_gateway_vm_starts_total VMs started, by how: a cold boot or a restore from a template.");
        let _ = writeln!(o, "# TYPE mu2_gateway_vm_starts_total counter");
        let _ = writeln!(
            o,
            "mu2_gateway_vm_starts_total{{how=\"boot\"}} {}",
            self.boots.load(Ordering::SeqCst)
        );
        let _ = writeln!(
            o,
            "mu2_gateway_vm_starts_total{{how=\"restore\"}} {}",
            self.restores.load(Ordering::SeqCst)
        );
        let _ = writeln!(
            o,
            "# HELP mu2_gateway_vm_start_failures_total VMs that could not be started."
        );
        let _ = writeln!(o, "# TYPE mu2_gateway_vm_start_failures_total counter");
        let _ = writeln!(
            o,
            "mu2_gateway_vm_start_failures_total {}",
            self.vm_failures.load(Ordering::SeqCst)
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("/a", 200, Duration::from_millis(300));
        m.request("/a", 200, Duration::from_secs(3));
        m.request("/a", 504, Duration::from_secs(10));
        m.rejected("/a", Rejection::QueueFull);
        m.vm_started(false);
        m.vm_started(true);
        m.running(2);
        m.running(-1);
        m.warm(3);
        let t = m.render();
        assert!(
            t.contains("mu2_gateway_requests_total{route=\"/a\",status=\"200\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("mu2_gateway_requests_total{route=\"/a\",status=\"504\"} 1\n"));
        assert!(
            t.contains("mu2_gateway_request_duration_seconds_bucket{route=\"/a\",le=\"0.25\"} 0\n")
        );
        assert!(
            t.contains("mu2_gateway_request_duration_seconds_bucket{route=\"/a\",le=\"0.5\"} 1\n")
        );
        assert!(
            t.contains("mu2_gateway_request_duration_seconds_bucket{route=\"/a\",le=\"5\"} 2\n")
        );
        assert!(
            t.contains("mu2_gateway_request_duration_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3\n")
        );
        assert!(t.contains("mu2_gateway_request_duration_seconds_count{route=\"/a\"} 3\n"));
        assert!(t.contains("mu2_gateway_rejections_total{route=\"/a\",reason=\"queue_full\"} 1\n"));
        assert!(t.contains("mu2_gateway_vms_running 1\n"));
        assert!(t.contains("mu2_gateway_vms_warm 3\n"));
        assert!(t.contains("mu2_gateway_vm_starts_total{how=\"boot\"} 1\n"));
        assert!(t.contains("mu2_gateway_vm_starts_total{how=\"restore\"} 1\n"));
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
