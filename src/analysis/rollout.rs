//! The canary state machine: `progressing` (at a weight, maybe a step) →
//! `promoted` | `rolled_back`, and `paused` by an operator at any point.
//!
//! [`Rollout::on_verdict`] is pure: given a verdict, the time since the last
//! one and the policy, it changes the rollout and says what happened. The
//! analysis loop calls it; `control` persists and publishes the result.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::verdict::{Breach, Verdict};
use crate::config::{AnalysisPolicy, Weight};

pub use crate::vocab::RolloutState;

/// The rollout of one canary release of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The canary pool this rollout is about; a new pool is a new rollout.
    pub canary_pool: String,
    /// Where it is.
    pub state: RolloutState,
    /// The weight in force.
    pub weight: Weight,
    /// The weight the config file asked for when last applied (a file
    /// change of it is an operator's weight change).
    pub file_weight: Weight,
    /// Index of the current promotion step, if the policy has steps.
    pub step: Option<usize>,
    /// Healthy time spent at the current step.
    #[serde(skip)]
    pub held: Duration,
    /// Breaches in a row.
    #[serde(skip)]
    pub breaches: u32,
    /// Canary requests seen since the last counted breach.
    #[serde(skip)]
    pub since_breach: u64,
    /// Why it is in its state (rollback reason, pause note).
    pub reason: Option<String>,
    /// The figures behind the last automatic decision (boxed: most rollouts
    /// have none, and 10 000 of them are kept).
    pub figures: Option<Box<Breach>>,
    /// Moves on at every rollback and at the resume of a rolled-back
    /// canary: it is part of the tenant's cookie epoch, so a version cookie
    /// from before either puts nobody back on the canary.
    #[serde(default)]
    pub generation: u32,
    /// When the rollout started (Unix seconds; 0: before fledge kept it):
    /// a version cookie issued earlier, by an earlier rollout of the same
    /// pool (removed from the file and added again), is refused.
    #[serde(default)]
    pub started_unix: u32,
}

/// Promotion settings of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    /// Weights to walk, ascending, the last one 100 %.
    pub steps: Vec<Weight>,
    /// Healthy time to hold each step.
    pub step_interval: Duration,
}

/// What a verdict changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Rolled back after enough breaches in a row.
    RolledBack(Box<Breach>),
    /// Moved to the next step.
    Stepped {
        /// Weight before.
        from: Weight,
        /// Weight after.
        to: Weight,
    },
    /// Reached 100 %.
    Promoted {
        /// Weight before.
        from: Weight,
    },
}

impl crate::routing::Placement for Rollout {
    fn canary_pool(&self) -> &str {
        &self.canary_pool
    }

    fn weight(&self) -> Weight {
        self.weight
    }

    fn state(&self) -> RolloutState {
        self.state
    }

    fn generation(&self) -> u32 {
        self.generation
    }

    fn started_unix(&self) -> u32 {
        self.started_unix
    }
}

// === impl Rollout ===

impl Rollout {
    /// A new rollout of `canary_pool`: at the first step when the policy has
    /// steps, else at the file's weight.
    pub fn start(canary_pool: &str, file_weight: Weight, promotion: Option<&Promotion>) -> Self {
        let (weight, step) = match promotion {
            Some(p) if !p.steps.is_empty() => (p.steps[0], Some(0)),
            _ => (file_weight, None),
        };
        let state = if weight.basis_points() == Weight::FULL && promotion.is_some() {
            RolloutState::Promoted
        } else {
            RolloutState::Progressing
        };
        Rollout {
            canary_pool: canary_pool.to_owned(),
            state,
            weight,
            file_weight,
            step,
            held: Duration::ZERO,
            breaches: 0,
            since_breach: 0,
            reason: None,
            figures: None,
            generation: 0,
            started_unix: crate::routing::unix_now(),
        }
    }

    /// Apply one verdict. `elapsed` is the time since the previous one,
    /// `new_requests` the canary requests since then.
    ///
    /// Successive windows overlap, so a breach seen again on much the same
    /// data is not new evidence: after the first, a breach counts only once
    /// the canary has served another `min_requests / (2 × consecutive_breaches)`
    /// requests.
    pub fn on_verdict(
        &mut self,
        verdict: &Verdict,
        elapsed: Duration,
        new_requests: u64,
        analysis: &AnalysisPolicy,
        promotion: Option<&Promotion>,
    ) -> Option<Change> {
        if !self.state.is_judged() {
            return None;
        }
        let consecutive_breaches = analysis.consecutive_breaches.max(1);
        match verdict {
            Verdict::Breach(b) => {
                self.since_breach += new_requests;
                let evidence =
                    (analysis.thresholds.min_requests / (2 * u64::from(consecutive_breaches))).max(1);
                if self.breaches == 0 || self.since_breach >= evidence {
                    self.breaches += 1;
                    self.since_breach = 0;
                }
                // A breach from too few clients keeps the streak going but
                // never ends it: the rollback waits for a decisive one.
                if !b.decisive {
                    self.breaches = self.breaches.min(consecutive_breaches - 1);
                    return None;
                }
                if self.breaches >= consecutive_breaches {
                    self.roll_back(b.check.as_str(), Some(b.clone()));
                    return Some(Change::RolledBack(b.clone()));
                }
                None
            }
            Verdict::Inconclusive => {
                self.breaches = 0;
                self.since_breach = 0;
                None
            }
            Verdict::Healthy => {
                self.breaches = 0;
                self.since_breach = 0;
                let promotion = promotion?;
                if self.state != RolloutState::Progressing {
                    return None;
                }
                self.held += elapsed;
                if self.held < promotion.step_interval {
                    return None;
                }
                let from = self.weight;
                let next = match self.step {
                    Some(i) => i + 1,
                    None => promotion.steps.iter().position(|w| *w > from)?,
                };
                let to = *promotion.steps.get(next)?;
                self.step = Some(next);
                self.weight = to;
                self.held = Duration::ZERO;
                if to.basis_points() == Weight::FULL {
                    self.state = RolloutState::Promoted;
                    self.reason = None;
                    return Some(Change::Promoted { from });
                }
                Some(Change::Stepped { from, to })
            }
        }
    }

    /// Weight to 0 at once, state `rolled_back`.
    pub fn roll_back(&mut self, reason: &str, figures: Option<Box<Breach>>) {
        self.state = RolloutState::RolledBack;
        self.generation = self.generation.wrapping_add(1);
        self.weight = Weight::default();
        self.reason = Some(reason.to_owned());
        self.figures = figures;
        self.breaches = 0;
        self.held = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::verdict::{Check, Sample};

    fn w(percent: f64) -> Weight {
        Weight::from_percent(percent).unwrap()
    }

    fn promotion() -> Promotion {
        Promotion {
            steps: vec![w(5.0), w(25.0), w(50.0), w(100.0)],
            step_interval: Duration::from_secs(60),
        }
    }

    fn breach() -> Verdict {
        Verdict::Breach(Box::new(Breach {
            check: Check::ErrorRateIncrease,
            observed: 30.0,
            limit: 5.0,
            canary: Sample::default(),
            stable: Sample::default(),
            decisive: true,
        }))
    }

    const TICK: Duration = Duration::from_millis(100);

    /// `consecutive` breaches, 30 new requests needed between two.
    fn analysis(consecutive: u32) -> AnalysisPolicy {
        AnalysisPolicy {
            window: Duration::from_secs(30),
            quantile: 0.99,
            thresholds: crate::analysis::verdict::Thresholds {
                min_requests: 60 * u64::from(consecutive),
                max_error_rate_percent: None,
                max_error_rate_increase_percent: Some(5.0),
                max_latency_ms: None,
                max_latency_ratio: None,
                min_failing_clients: 5,
                max_client_failure_share: 0.25,
            },
            consecutive_breaches: consecutive,
            client_exceptions: Vec::new(),
            failing_clients_by: crate::config::ClientKey::StickyKey,
        }
    }

    #[test]
    fn promotion_walks_each_step_after_its_healthy_interval() {
        let p = promotion();
        let mut r = Rollout::start("v18", w(20.0), Some(&p));
        assert_eq!(
            (r.weight, r.step, r.state),
            (w(5.0), Some(0), RolloutState::Progressing)
        );
        let mut changes = Vec::new();
        // Drive the clock: 4 minutes of healthy ticks, no sleeping.
        for _ in 0..(4 * 600) {
            if let Some(c) = r.on_verdict(&Verdict::Healthy, TICK, 30, &analysis(3), Some(&p)) {
                changes.push(c);
            }
        }
        assert_eq!(
            changes,
            vec![
                Change::Stepped {
                    from: w(5.0),
                    to: w(25.0)
                },
                Change::Stepped {
                    from: w(25.0),
                    to: w(50.0)
                },
                Change::Promoted { from: w(50.0) },
            ]
        );
        assert_eq!((r.weight, r.state), (w(100.0), RolloutState::Promoted));
    }

    #[test]
    fn inconclusive_time_does_not_count_towards_a_step() {
        let p = promotion();
        let mut r = Rollout::start("v18", w(0.0), Some(&p));
        for _ in 0..6_000 {
            assert_eq!(
                r.on_verdict(&Verdict::Inconclusive, TICK, 30, &analysis(3), Some(&p)),
                None
            );
        }
        assert_eq!(r.weight, w(5.0));
    }

    #[test]
    fn consecutive_fresh_breaches_roll_back_and_it_stays_rolled_back() {
        let mut r = Rollout::start("v18", w(20.0), None);
        assert_eq!(r.on_verdict(&breach(), TICK, 30, &analysis(3), None), None);
        // The same data seen again is not a second breach.
        assert_eq!(r.on_verdict(&breach(), TICK, 0, &analysis(3), None), None);
        assert_eq!(r.on_verdict(&breach(), TICK, 30, &analysis(3), None), None);
        assert!(matches!(
            r.on_verdict(&breach(), TICK, 30, &analysis(3), None),
            Some(Change::RolledBack(_))
        ));
        assert_eq!((r.weight, r.state), (w(0.0), RolloutState::RolledBack));
        assert_eq!(r.reason.as_deref(), Some("error_rate_increase"));
        // Healthy or not, nothing happens until an operator resumes it.
        for v in [Verdict::Healthy, breach()] {
            assert_eq!(r.on_verdict(&v, TICK, 30, &analysis(3), None), None);
        }
        assert_eq!(r.weight, w(0.0));
    }

    #[test]
    fn a_healthy_or_inconclusive_verdict_resets_the_breach_count() {
        let mut r = Rollout::start("v18", w(20.0), None);
        for v in [
            breach(),
            breach(),
            Verdict::Healthy,
            breach(),
            breach(),
            Verdict::Inconclusive,
            breach(),
            breach(),
        ] {
            assert_eq!(r.on_verdict(&v, TICK, 30, &analysis(3), None), None, "{v:?}");
        }
    }

    /// Issue 23: breaches from too few clients keep a streak going but never
    /// end it; the first decisive one after them rolls back at once, as
    /// fast as a streak of decisive ones would.
    #[test]
    fn only_a_decisive_breach_rolls_back() {
        let few = || match breach() {
            Verdict::Breach(mut b) => {
                b.decisive = false;
                Verdict::Breach(b)
            }
            v => v,
        };
        let mut r = Rollout::start("v18", w(20.0), None);
        for _ in 0..1_000 {
            assert_eq!(r.on_verdict(&few(), TICK, 30, &analysis(3), None), None);
        }
        assert_eq!(r.state, RolloutState::Progressing);
        let mut r = Rollout::start("v18", w(20.0), None);
        assert_eq!(r.on_verdict(&few(), TICK, 30, &analysis(3), None), None);
        assert_eq!(r.on_verdict(&few(), TICK, 30, &analysis(3), None), None);
        assert!(matches!(
            r.on_verdict(&breach(), TICK, 30, &analysis(3), None),
            Some(Change::RolledBack(_))
        ));
    }

    #[test]
    fn paused_takes_no_step_but_still_rolls_back() {
        let p = promotion();
        let mut r = Rollout::start("v18", w(0.0), Some(&p));
        r.state = RolloutState::Paused;
        for _ in 0..2_000 {
            assert_eq!(
                r.on_verdict(&Verdict::Healthy, TICK, 30, &analysis(1), Some(&p)),
                None
            );
        }
        assert!(matches!(
            r.on_verdict(&breach(), TICK, 30, &analysis(1), Some(&p)),
            Some(Change::RolledBack(_))
        ));
    }
}
