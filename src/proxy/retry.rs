//! Data plane: the retry budget. fledge retries a request only when its
//! connect was refused (nothing reached a worker), once, and only while
//! retries in flight stay under 20 % of the requests in flight (at least
//! 3): when a whole pool fails, retries must not double the load on what is
//! left (Envoy's retry budget, Finagle's too).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};

/// Share of requests in flight that may be retries at once.
const BUDGET_PERCENT: usize = 20;
/// Retries always allowed in flight, however few requests there are.
const BUDGET_MIN: usize = 3;

/// Requests and retries in flight.
#[derive(Default)]
pub struct RetryBudget {
    active: AtomicUsize,
    retrying: AtomicUsize,
    retried: AtomicU64,
    denied: AtomicU64,
}

/// A request in flight; its retry, if it took one, ends with it.
pub struct InFlight {
    budget: Arc<RetryBudget>,
    retrying: bool,
}

impl RetryBudget {
    /// Count a new request in.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Relaxed);
        InFlight {
            budget: Arc::clone(self),
            retrying: false,
        }
    }
}

impl InFlight {
    /// May this request be retried? At most once, and within the budget.
    pub fn try_retry(&mut self) -> bool {
        if self.retrying {
            return false;
        }
        let b = &self.budget;
        let cap = (b.active.load(Relaxed) * BUDGET_PERCENT / 100).max(BUDGET_MIN);
        if b.retrying.fetch_add(1, Relaxed) >= cap {
            b.retrying.fetch_sub(1, Relaxed);
            b.denied.fetch_add(1, Relaxed);
            return false;
        }
        b.retried.fetch_add(1, Relaxed);
        self.retrying = true;
        true
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.budget.active.fetch_sub(1, Relaxed);
        if self.retrying {
            self.budget.retrying.fetch_sub(1, Relaxed);
        }
    }
}

// === metrics ===

const RETRIES: &str = "fledge_retries_total";

/// Prometheus view of the budget.
pub struct RetryExporter {
    budget: Arc<RetryBudget>,
    descs: Vec<Desc>,
}

impl RetryExporter {
    /// Export `budget`.
    pub fn new(budget: Arc<RetryBudget>) -> Self {
        let descs = vec![crate::metrics::desc(
            RETRIES,
            "Retries after a refused connect: taken, or denied by the retry budget.",
            &["result"],
        )];
        RetryExporter { budget, descs }
    }
}

impl Collector for RetryExporter {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use crate::metrics::{counter, family};
        let b = &self.budget;
        vec![family(
            RETRIES,
            &self.descs[0].help,
            MetricType::COUNTER,
            vec![
                counter(&[("result", "retried")], b.retried.load(Relaxed) as f64),
                counter(&[("result", "denied")], b.denied.load(Relaxed) as f64),
            ],
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_a_fifth_of_the_requests_in_flight() {
        let budget = Arc::new(RetryBudget::default());
        let mut requests: Vec<InFlight> = (0..30).map(|_| budget.enter()).collect();
        // 20 % of 30 is 6.
        let took = requests
            .iter_mut()
            .filter_map(|r| r.try_retry().then_some(()))
            .count();
        assert_eq!(took, 6);
        assert!(!requests[0].try_retry(), "twice for one request");
        assert_eq!(budget.denied.load(Relaxed), 24);
        // Finished requests give their retries back.
        requests.truncate(3);
        assert_eq!(budget.retrying.load(Relaxed), 3);
        let mut more: Vec<InFlight> = (0..2).map(|_| budget.enter()).collect();
        // 5 in flight: the minimum of 3 applies, and 3 are taken.
        assert!(!more[0].try_retry());
        drop(requests);
        assert!(more[1].try_retry());
    }
}
