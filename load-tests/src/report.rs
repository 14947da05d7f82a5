//! After a run: the key figures, the pass/fail verdict, a Markdown report
//! and a chart (SVG) of the canary weight, error rate and p99 per version
//! over time, faults and decisions marked.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::scenario::Scenario;
use crate::traffic::{Mark, Record, Served};

/// Latency quantiles of one version.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantiles {
    /// Requests.
    pub n: usize,
    /// ms.
    pub p50: f64,
    /// ms.
    pub p90: f64,
    /// ms.
    pub p99: f64,
}

/// The figures a release manager reads first.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Requests sent.
    pub requests: usize,
    /// Requests failed as users saw them.
    pub failed: usize,
    /// The first fault on the canary alone, ms from the start.
    pub fault_ms: Option<u64>,
    /// The first rollback decided by the analysis, ms from the start.
    pub rollback_ms: Option<u64>,
    /// Its reason.
    pub rollback_reason: Option<String>,
    /// Fault to rollback decision, ms.
    pub detection_ms: Option<u64>,
    /// Fault to the last request a canary worker answered, ms.
    pub zero_canary_ms: Option<u64>,
    /// Failed requests sent between the fault and the end of the incident
    /// (the later of the rollback and the last canary answer, plus 1 s).
    pub incident_failures: Option<usize>,
    /// Stable and canary latency quantiles.
    pub latency: [Quantiles; 2],
    /// Whether fledge promoted the canary.
    pub promoted: bool,
    /// Rollbacks of any kind.
    pub rollbacks: usize,
    /// WebSockets opened and dropped early.
    pub websockets: (u64, u64),
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn quantiles(mut v: Vec<f64>) -> Quantiles {
    v.sort_by(f64::total_cmp);
    Quantiles {
        n: v.len(),
        p50: quantile(&v, 0.50),
        p90: quantile(&v, 0.90),
        p99: quantile(&v, 0.99),
    }
}

/// A rollback the analysis decided (the journal's actor `auto`), not an
/// operator's (`api`) or a config change's (`file`).
fn rolled_back_by_policy(m: &Mark) -> bool {
    m.event == "rolled_back" && m.actor == "auto"
}

impl Figures {
    /// Read the figures off `record`.
    pub fn of(scenario: &Scenario, record: &Record) -> Figures {
        let fault_ms = scenario.canary_fault().and_then(|_| {
            record
                .marks
                .iter()
                .find(|m| m.event == "fault" && m.detail.starts_with("canary"))
                .map(|m| m.t_ms)
        });
        let rollback = record.marks.iter().find(|m| rolled_back_by_policy(m));
        let last_canary = |from: u64| {
            record
                .samples
                .iter()
                .filter(|s| s.served == Served::Canary && s.sent_ms >= from)
                .map(|s| s.sent_ms)
                .max()
        };
        let zero_canary_ms = fault_ms.map(|f| last_canary(f).map_or(0, |t| t - f));
        let incident_failures = fault_ms.map(|f| {
            let end = f
                + zero_canary_ms
                    .unwrap_or(0)
                    .max(rollback.map_or(0, |r| r.t_ms.saturating_sub(f)))
                + 1000;
            record
                .samples
                .iter()
                .filter(|s| s.failed && s.sent_ms >= f && s.sent_ms <= end)
                .count()
        });
        let latency = |v: Served| {
            quantiles(
                record
                    .samples
                    .iter()
                    .filter(|s| s.served == v)
                    .map(|s| s.latency_ms)
                    .collect(),
            )
        };
        Figures {
            requests: record.samples.len(),
            failed: record.samples.iter().filter(|s| s.failed).count(),
            fault_ms,
            rollback_ms: rollback.map(|m| m.t_ms),
            rollback_reason: rollback.map(|m| m.detail.clone()),
            detection_ms: fault_ms.zip(rollback).map(|(f, r)| r.t_ms.saturating_sub(f)),
            zero_canary_ms,
            incident_failures,
            latency: [latency(Served::Stable), latency(Served::Canary)],
            promoted: record.marks.iter().any(|m| m.event == "promoted"),
            rollbacks: record.marks.iter().filter(|m| m.event == "rolled_back").count(),
            websockets: record.websockets,
        }
    }

    /// Why the rehearsal fails; empty when it passes.
    pub fn problems(&self, scenario: &Scenario, record: &Record) -> Vec<String> {
        let mut out = Vec::new();
        let first_fault = record.marks.iter().find(|m| m.event == "fault").map(|m| m.t_ms);
        let policy_rollback = record.marks.iter().find(|m| rolled_back_by_policy(m));
        if scenario.expects_rollback() {
            match (policy_rollback, self.fault_ms) {
                (None, _) => out.push("the injected canary fault was not caught: no rollback".to_owned()),
                (Some(r), Some(f)) if r.t_ms < f => out.push(format!(
                    "rolled back at {:.1} s, before the fault at {:.1} s",
                    r.t_ms as f64 / 1000.0,
                    f as f64 / 1000.0
                )),
                _ => {}
            }
        } else if let Some(r) = policy_rollback {
            let when = match first_fault {
                Some(f) if f <= r.t_ms => "after a fault the policy must tolerate",
                _ => "with no fault injected",
            };
            out.push(format!(
                "rolled back at {:.1} s {when}: {}",
                r.t_ms as f64 / 1000.0,
                r.detail
            ));
        }
        if scenario.expect.promoted && !self.promoted {
            out.push("the canary was not promoted".to_owned());
        }
        if let Some(max) = scenario.expect.max_failed_percent {
            let pct = 100.0 * self.failed as f64 / self.requests.max(1) as f64;
            if pct > max {
                out.push(format!("{pct:.2} % of requests failed (at most {max} % allowed)"));
            }
        }
        if self.requests == 0 {
            out.push("no request was sent".to_owned());
        }
        out
    }
}

/// Per-second series of one version.
#[derive(Default, Clone)]
struct Second {
    requests: [usize; 2],
    failed: [usize; 2],
    latencies: [Vec<f64>; 2],
}

fn per_second(record: &Record) -> Vec<Second> {
    let n = (record.duration_ms / 1000 + 1) as usize;
    let mut out = vec![Second::default(); n];
    for s in &record.samples {
        let v = match s.served {
            Served::Stable => 0,
            Served::Canary => 1,
            // Unanswered: count against stable's line, the safe reading.
            Served::Unknown => 0,
        };
        let sec = &mut out[((s.sent_ms / 1000) as usize).min(n - 1)];
        sec.requests[v] += 1;
        if s.failed {
            sec.failed[v] += 1;
        }
        sec.latencies[v].push(s.latency_ms);
    }
    out
}

fn ms(t: Option<u64>) -> String {
    t.map_or_else(|| "—".to_owned(), |t| format!("{:.2} s", t as f64 / 1000.0))
}

/// The Markdown report.
pub fn markdown(
    scenario: &Scenario,
    record: &Record,
    figures: &Figures,
    problems: &[String],
    chart: &str,
) -> String {
    let mut md = String::new();
    let verdict = if problems.is_empty() { "PASSED" } else { "FAILED" };
    let _ = writeln!(md, "# Rehearsal `{}`: {verdict}\n", scenario.name);
    if !scenario.about.is_empty() {
        let _ = writeln!(md, "{}\n", scenario.about.trim());
    }
    for p in problems {
        let _ = writeln!(md, "- **{p}**");
    }
    if !problems.is_empty() {
        md.push('\n');
    }
    let f = figures;
    let failed_pct = 100.0 * f.failed as f64 / f.requests.max(1) as f64;
    let _ = writeln!(md, "| figure | value |\n|---|---|");
    let _ = writeln!(md, "| requests sent | {} |", f.requests);
    let _ = writeln!(
        md,
        "| requests failed (client-visible) | {} ({failed_pct:.2} %) |",
        f.failed
    );
    let _ = writeln!(md, "| first canary fault | {} |", ms(f.fault_ms));
    let _ = writeln!(md, "| rollback decided | {} |", ms(f.rollback_ms));
    let _ = writeln!(md, "| fault → detection (rollback) | {} |", ms(f.detection_ms));
    if let Some(reason) = &f.rollback_reason {
        let _ = writeln!(md, "| rollback's reason | {reason} |");
    }
    let _ = writeln!(
        md,
        "| fault → last canary answer (0 % canary) | {} |",
        ms(f.zero_canary_ms)
    );
    let _ = writeln!(
        md,
        "| failures during the incident | {} |",
        f.incident_failures
            .map_or_else(|| "—".to_owned(), |n| n.to_string())
    );
    let _ = writeln!(md, "| promoted | {} |", if f.promoted { "yes" } else { "no" });
    let _ = writeln!(md, "| rollbacks (any) | {} |", f.rollbacks);
    let _ = writeln!(
        md,
        "| WebSockets held / dropped early | {} / {} |",
        f.websockets.0, f.websockets.1
    );
    let _ = writeln!(
        md,
        "\n| version | requests | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|"
    );
    for (name, q) in ["stable", "canary"].iter().zip(&f.latency) {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.1} | {:.1} | {:.1} |",
            q.n, q.p50, q.p90, q.p99
        );
    }
    let _ = writeln!(md, "\n![canary weight, error rate and p99 over time]({chart})\n");
    let _ = writeln!(
        md,
        "## Timeline\n\n| t | event | by | detail |\n|---|---|---|---|"
    );
    for m in &record.marks {
        let _ = writeln!(
            md,
            "| {:.2} s | {} | {} | {} |",
            m.t_ms as f64 / 1000.0,
            m.event,
            m.actor,
            m.detail
        );
    }
    let _ = writeln!(
        md,
        "\nScenario: {} users{}, think time {}–{} ms, {} s (ramp-up {} s).",
        scenario.users,
        scenario
            .rate
            .map(|r| format!(" at {r} req/s"))
            .unwrap_or_default(),
        scenario.think_time_ms[0],
        scenario.think_time_ms[1],
        scenario.duration_seconds,
        scenario.ramp_up_seconds
    );
    md
}

/// One panel of the chart: title, unit, top of the y axis, and its lines
/// (name, colour, points).
type Panel<'a> = (&'a str, &'a str, f64, Vec<(&'a str, RGBColor, Vec<(f64, f64)>)>);

/// The chart: three panels over time, faults in red, rollbacks in black,
/// promotion steps in green.
pub fn chart(record: &Record, path: &Path) -> anyhow::Result<()> {
    let seconds = per_second(record);
    let x_max = record.duration_ms as f64 / 1000.0;
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let colours = [BLUE, RGBColor(230, 120, 0)];

    let error_rate: Vec<Vec<(f64, f64)>> = (0..2)
        .map(|v| {
            seconds
                .iter()
                .enumerate()
                .filter(|(_, s)| s.requests[v] > 0)
                .map(|(i, s)| (i as f64 + 0.5, 100.0 * s.failed[v] as f64 / s.requests[v] as f64))
                .collect()
        })
        .collect();
    let p99: Vec<Vec<(f64, f64)>> = (0..2)
        .map(|v| {
            seconds
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.latencies[v].is_empty())
                .map(|(i, s)| {
                    let mut l = s.latencies[v].clone();
                    l.sort_by(f64::total_cmp);
                    (i as f64 + 0.5, quantile(&l, 0.99))
                })
                .collect()
        })
        .collect();
    let weight: Vec<(f64, f64)> = record
        .points
        .iter()
        .map(|p| (p.t_ms as f64 / 1000.0, p.weight))
        .collect();
    let p99_max = p99.iter().flatten().map(|p| p.1).fold(10.0, f64::max) * 1.1;

    let series: [Panel<'_>; 3] = [
        ("canary weight", "%", 100.0, vec![("weight", colours[1], weight)]),
        (
            "error rate",
            "%",
            100.0,
            vec![
                ("stable", colours[0], error_rate[0].clone()),
                ("canary", colours[1], error_rate[1].clone()),
            ],
        ),
        (
            "p99 latency",
            "ms",
            p99_max,
            vec![
                ("stable", colours[0], p99[0].clone()),
                ("canary", colours[1], p99[1].clone()),
            ],
        ),
    ];
    for (panel, (title, unit, y_max, lines)) in panels.iter().zip(series) {
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..x_max.max(1.0), 0f64..y_max.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(unit)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for m in &record.marks {
            let colour = match m.event.as_str() {
                "fault" => RED,
                "rolled_back" => BLACK,
                "step" | "promoted" => GREEN,
                _ => continue,
            };
            let x = m.t_ms as f64 / 1000.0;
            chart.draw_series(LineSeries::new([(x, 0.0), (x, y_max)], colour.stroke_width(2)))?;
        }
        for (name, colour, points) in lines {
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Sample;

    fn scenario(faults: &str) -> Scenario {
        serde_yaml::from_str(&format!("name: t\nduration_seconds: 10\nusers: 1\n{faults}")).unwrap()
    }

    fn mark(t_ms: u64, event: &str, actor: &str, detail: &str) -> Mark {
        Mark {
            t_ms,
            event: event.into(),
            actor: actor.into(),
            detail: detail.into(),
        }
    }

    fn sample(sent_ms: u64, served: Served, failed: bool) -> Sample {
        Sample {
            sent_ms,
            latency_ms: 2.0,
            served,
            failed,
        }
    }

    #[test]
    fn figures_time_the_incident_from_the_fault() {
        let s = scenario("faults: [{at_seconds: 4, error_rate: 0.3}]");
        let record = Record {
            samples: vec![
                sample(1_000, Served::Canary, false),
                sample(4_100, Served::Canary, true),
                sample(4_300, Served::Canary, false),
                sample(4_400, Served::Stable, false),
                sample(9_000, Served::Stable, true),
            ],
            marks: vec![
                mark(4_000, "fault", "rehearsal", "canary: 30 % http 500"),
                mark(4_350, "rolled_back", "auto", "error_rate_increase"),
            ],
            duration_ms: 10_000,
            ..Record::default()
        };
        let f = Figures::of(&s, &record);
        assert_eq!(f.detection_ms, Some(350));
        assert_eq!(f.zero_canary_ms, Some(300));
        assert_eq!(
            f.incident_failures,
            Some(1),
            "the failure at 9 s is after the incident"
        );
        assert_eq!(f.failed, 2);
        assert!(f.problems(&s, &record).is_empty());
    }

    #[test]
    fn a_missed_fault_and_an_unwanted_rollback_fail() {
        let s = scenario("faults: [{at_seconds: 4, error_rate: 0.3}]");
        let missed = Record {
            samples: vec![sample(1_000, Served::Canary, false)],
            marks: vec![mark(4_000, "fault", "rehearsal", "canary: 30 % http 500")],
            duration_ms: 10_000,
            ..Record::default()
        };
        let f = Figures::of(&s, &missed);
        assert_eq!(f.problems(&s, &missed).len(), 1);

        let early = Record {
            marks: vec![
                mark(2_000, "rolled_back", "auto", "latency"),
                mark(4_000, "fault", "rehearsal", "canary: 30 % http 500"),
            ],
            ..missed
        };
        let problems = Figures::of(&s, &early).problems(&s, &early);
        assert!(problems[0].contains("before the fault"), "{problems:?}");

        let healthy = scenario("");
        let unwanted = Record {
            samples: vec![sample(1_000, Served::Canary, false)],
            marks: vec![mark(3_000, "rolled_back", "auto", "latency")],
            duration_ms: 10_000,
            ..Record::default()
        };
        let problems = Figures::of(&healthy, &unwanted).problems(&healthy, &unwanted);
        assert!(problems[0].contains("with no fault injected"), "{problems:?}");
        // An operator's rollback is not the policy's.
        let manual = Record {
            marks: vec![mark(3_000, "rolled_back", "api", "")],
            ..unwanted
        };
        assert!(Figures::of(&healthy, &manual)
            .problems(&healthy, &manual)
            .is_empty());
    }
}
