#[path = "../tests/common/mod.rs"]
mod common;
use kyphoplan_planner::*;
use kyphoplan_planner::math::*;

fn report(name: &str, mesh: &TriMesh, level: Level) {
    match frame::estimate(level, mesh) {
        Ok(a) => {
            let f = &a.frame;
            let (an, l, s) = f.axes_lps();
            eprintln!("{name}: ant {:?} left {:?} sup {:?} body {:.1}x{:.1}x{:.1} pw {:.1} canal_hw {:?} ped_z {:?} slices {}",
                vec_array(&an).map(|x| (x*100.0).round()/100.0), vec_array(&l).map(|x| (x*100.0).round()/100.0), vec_array(&s).map(|x| (x*100.0).round()/100.0),
                f.body_width_mm, f.body_depth_mm, f.body_height_mm, f.posterior_wall_y_mm, f.canal_half_width_mm, f.pedicle_z_range_mm, f.foramen_slices);
        }
        Err(e) => eprintln!("{name}: {e}"),
    }
}

fn main() {
    for l in [Level::T12, Level::L1, Level::L3, Level::L5] {
        let v = synth::vertebra(&synth::VertebraParams::mean(l), &Pose::identity());
        report(&format!("synth {l}"), &v.mesh, l);
        let pose = Pose::new(Vector::new(100.0, -50.0, 300.0), Vector::new(0.3, 0.2, 0.4));
        let v = synth::vertebra(&synth::VertebraParams::mean(l), &pose);
        let r = pose.rotation;
        eprintln!("   truth ant {:?}", vec_array(&(r * Vector::new(0.0, -1.0, 0.0))).map(|x| (x*100.0).round()/100.0));
        report(&format!("synth {l} posed"), &v.mesh, l);
    }
    let dir = common::shared_anatomy().unwrap();
    for set in ["vhm-male-lumbar", "mean-lumbar-l2-l5"] {
        for l in ["L1", "L2", "L3", "L4", "L5"] {
            let p = dir.join(set).join(format!("{l}.stl"));
            if p.exists() {
                report(&format!("{set} {l}"), &common::load_stl(&p), l.parse().unwrap());
            }
        }
    }
}
