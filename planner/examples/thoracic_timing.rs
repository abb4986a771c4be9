//! Plan times of the mean thoracic levels with their ribs and pleura (issue 15's budget: the
//! default approach within 20 ms per prepared level, with the fallbacks within 60 ms): for each
//! level the median of RUNS plans (default 5) with the default request (bilateral
//! transpedicular) and with `approaches = [bilateral_transpedicular, extrapedicular]`, and what
//! each side got. `cargo run --release -p kyphoplan-planner --example thoracic_timing`;
//! `LEVELS=T8` for one level (e.g. under `valgrind --tool=callgrind` with `RUNS=1`).

use std::time::Instant;

use kyphoplan_planner::math::Pose;
use kyphoplan_planner::request::{Approach, Procedure};
use kyphoplan_planner::synth::{self, SpineOptions};
use kyphoplan_planner::*;

fn median_ms(anatomy: &PreparedAnatomy, request: &PlanRequest, runs: usize) -> (f64, Plan) {
    let mut last = None;
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            last = Some(plan(anatomy, request).unwrap());
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[runs / 2], last.unwrap())
}

fn sides(p: &Plan) -> String {
    p.levels[0]
        .sides
        .iter()
        .map(
            |s| match (&s.trajectory, s.attempts.iter().find(|a| a.feasible)) {
                (Some(_), Some(a)) => format!(
                    "{} {:?} {} mm",
                    s.side, a.route, a.cannula_outer_diameter_mm
                ),
                _ => format!("{} refused", s.side),
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let levels: Vec<Level> = match std::env::var("LEVELS") {
        Ok(s) => s
            .split(',')
            .map(|l| Level::ALL.into_iter().find(|x| x.to_string() == l).unwrap())
            .collect(),
        Err(_) => Level::ALL.into_iter().take(12).collect(),
    };
    let default = PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .unwrap();
    let fallbacks = default
        .clone()
        .with_procedure(
            Procedure::Kyphoplasty,
            vec![Approach::BilateralTranspedicular, Approach::Extrapedicular],
        )
        .unwrap();
    let options = SpineOptions {
        with_soft_tissue: false,
        with_ribs_and_pleura: true,
    };
    println!("| level | default (ms) | sides | with extrapedicular (ms) | sides |");
    println!("|---|---|---|---|---|");
    for level in levels {
        let input = synth::spine_with(&[level], &Pose::identity(), &options).0;
        let anatomy = PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap();
        let (d_ms, d_plan) = median_ms(&anatomy, &default, runs);
        let (f_ms, f_plan) = median_ms(&anatomy, &fallbacks, runs);
        println!(
            "| {level} | {d_ms:.1} | {} | {f_ms:.1} | {} |",
            sides(&d_plan),
            sides(&f_plan)
        );
    }
}
