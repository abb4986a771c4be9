//! Write plans (and the synthetic meshes' bits) as JSON files into a directory, for a
//! byte-for-byte comparison of the planner's output before and after a change that must not
//! change behaviour (a development aid): `cargo run -p kyphoplan-planner --example plan_json --
//! /tmp/planner-ref`.
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;

use kyphoplan_planner::math::{Pose, Translation3, Vector};
use kyphoplan_planner::*;
use nalgebra::UnitQuaternion;

fn request() -> PlanRequest {
    common::default_request()
}

fn write(dir: &Path, name: &str, text: String) {
    std::fs::write(dir.join(name), text).unwrap();
    eprintln!("wrote {name}");
}

fn plan_to(dir: &Path, name: &str, input: AnatomyInput) -> PreparedAnatomy {
    let a = PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap();
    let p = plan(&a, &request()).unwrap();
    write(dir, name, serde_json::to_string_pretty(&p).unwrap());
    a
}

fn main() {
    let out = std::env::args().nth(1).expect("usage: plan_json OUT_DIR");
    let out = Path::new(&out);
    std::fs::create_dir_all(out).unwrap();
    let levels = synth::MEAN_LEVELS;

    // The synthetic meshes themselves, bit for bit.
    let mut bits = String::new();
    for level in levels {
        let v = synth::vertebra(&synth::VertebraParams::mean(level), &Pose::identity());
        let meshes = std::iter::once(&v.mesh).chain(v.nerve_roots.iter());
        for m in meshes {
            for p in &m.vertices_mm {
                bits += &format!(
                    "{:x} {:x} {:x}\n",
                    p.x.to_bits(),
                    p.y.to_bits(),
                    p.z.to_bits()
                );
            }
            for t in &m.triangles {
                bits += &format!("{t:?}\n");
            }
        }
    }
    write(out, "synth-meshes.txt", bits);

    let demo = plan_to(out, "demo.json", synth::demo_anatomy());
    let pose = Pose::from_parts(
        Translation3::new(12.0, -180.0, 950.0),
        UnitQuaternion::from_axis_angle(&Vector::z_axis(), 0.3)
            * UnitQuaternion::from_axis_angle(&Vector::x_axis(), -0.15),
    );
    plan_to(
        out,
        "spine-soft-tissue-posed.json",
        synth::spine(&levels, &pose, true).0,
    );
    let mut ras = synth::spine(&[Level::L2, Level::L3], &Pose::identity(), true).0;
    for s in &mut ras.structures {
        s.mesh = TriMesh::new(
            s.mesh
                .vertices_mm
                .iter()
                .map(|p| PatientFrame::Ras.from_lps(p))
                .collect(),
            s.mesh.triangles.clone(),
        );
    }
    ras.frame = PatientFrame::Ras;
    plan_to(out, "spine-ras.json", ras);

    // Evaluations of given trajectories: through the planned one and off it.
    let p = plan(&demo, &request()).unwrap();
    let mut evals = Vec::new();
    for l in &p.levels {
        for s in &l.sides {
            if let Some(t) = &s.trajectory {
                for dx in [0.0, 2.5, -4.0] {
                    let mut e = t.bone_entry_mm;
                    e[0] += dx;
                    let r = evaluate(
                        &demo,
                        l.level,
                        s.side,
                        e,
                        t.target_mm,
                        &Instrument::contract_default(),
                        &Safety::contract_default(),
                    )
                    .unwrap();
                    evals.push(r);
                }
            }
        }
    }
    write(
        out,
        "evaluations.json",
        serde_json::to_string_pretty(&evals).unwrap(),
    );

    if let Some(dir) = common::shared_anatomy() {
        for set in ["vhm-male-lumbar", "mean-lumbar-l2-l5"] {
            plan_to(out, &format!("{set}.json"), common::load_set(&dir, set));
        }
    }
}
