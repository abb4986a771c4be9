//! Median plan times of one level whose preferred approach (bilateral transpedicular) fails
//! (a mean L3 with a 3 mm right pedicle), with and without unipedicular allowed, and of a mean
//! L3 planned bilaterally: `cargo run --release -p kyphoplan-planner --example approach_timing`.

use std::time::Instant;

use kyphoplan_planner::math::Pose;
use kyphoplan_planner::request::{Approach, Procedure};
use kyphoplan_planner::synth::{self, VertebraParams};
use kyphoplan_planner::*;

fn median_ms(anatomy: &PreparedAnatomy, request: &PlanRequest, runs: usize) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            plan(anatomy, request).unwrap();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

fn anatomy(right_width_mm: Option<f64>) -> PreparedAnatomy {
    let mut params = VertebraParams::mean(Level::L3);
    params.right_pedicle_width_mm = right_width_mm;
    let v = synth::vertebra(&params, &Pose::identity());
    let input = AnatomyInput {
        name: "timing".into(),
        frame: PatientFrame::Lps,
        structures: vec![Structure {
            name: "L3.stl".into(),
            role: Role::Vertebra { level: Level::L3 },
            mesh: v.mesh,
        }],
    };
    PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap()
}

fn main() {
    let runs = 21;
    let request = |approaches: &[Approach]| {
        PlanRequest::new(
            None,
            Instrument::contract_default(),
            Safety::contract_default(),
        )
        .unwrap()
        .with_procedure(Procedure::Kyphoplasty, approaches.to_vec())
        .unwrap()
    };
    let bilateral = request(&[Approach::BilateralTranspedicular]);
    let default = request(&kyphoplan_planner::request::DEFAULT_APPROACHES);
    let mean = anatomy(None);
    let narrow = anatomy(Some(3.0));
    println!(
        "mean L3, default approaches (bilateral succeeds): {:.1} ms",
        median_ms(&mean, &default, runs)
    );
    println!(
        "mean L3, bilateral only: {:.1} ms",
        median_ms(&mean, &bilateral, runs)
    );
    println!(
        "narrow-right L3, bilateral only (fails): {:.1} ms",
        median_ms(&narrow, &bilateral, runs)
    );
    println!(
        "narrow-right L3, default (bilateral fails, unipedicular planned): {:.1} ms",
        median_ms(&narrow, &default, runs)
    );
}
