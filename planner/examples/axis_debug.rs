use kyphoplan_planner::*;
use kyphoplan_planner::math::*;

fn main() {
    let l: Level = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(Level::L3);
    let (input, verts) = synth::spine(&[l], &Pose::identity(), false);
    let a = PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap();
    let v = a.vertebra(l).unwrap();
    let f = &v.frame;
    eprintln!("pw {:.2} aw {:.2} hw {:?} pedz {:?} canal z {:?}", f.posterior_wall_y_mm, f.anterior_wall_y_mm, f.canal_half_width_mm, f.pedicle_z_range_mm, f.canal_z_range_mm);
    eprintln!("body centre lps {:?}", array(&(f.vertebra_to_lps() * Point::origin())));
    for ax in &verts[0].pedicle_axes {
        let d = ax.direction.into_inner();
        eprintln!("{:?} isthmus {:?} (vertebra {:?}) dir {:?} width {}", ax.side, array(&ax.isthmus_center), array(&(f.lps_to_vertebra * ax.isthmus_center)), vec_array(&d), ax.width_mm);
        for back in [15.0] {
            for fwd in [20.0, 25.0, 30.0, 35.0] {
                let e = ax.isthmus_center - d * back;
                let t = ax.isthmus_center + d * fwd;
                let ev = evaluate(&a, l, ax.side, array(&e), array(&t), &Instrument::contract_default(), &Safety::contract_default()).unwrap();
                eprintln!("  fwd {fwd}: safe {} cortex {:.2} canal {:.2} root {:.2} depth {:.2} entry {:?} viol {:?}", ev.safe, ev.trajectory.clearance_mm.cortex, ev.trajectory.clearance_mm.canal, ev.trajectory.clearance_mm.nerve_root, ev.trajectory.tip_depth_fraction,
                    ev.trajectory.bone_entry_mm.map(|x| (x * 10.0).round() / 10.0), ev.violations.iter().map(|r| &r.message).collect::<Vec<_>>());
            }
        }
        // sdf along the axis
        let to_g = f.lps_to_grid;
        let mut s = String::new();
        for i in -20..40 {
            let p = ax.isthmus_center + d * (i as f64);
            s += &format!("{:.1} ", v.bone_sdf.sample(&(to_g * p), -10.0));
        }
        eprintln!("  sdf: {s}");
        let mut s = String::new();
        for i in -20..40 {
            let p = ax.isthmus_center + d * (i as f64);
            s += &format!("{:.1} ", v.bone.distance_to_point(&p) * if v.bone.contains_point(&p) {1.0} else {-1.0});
        }
        eprintln!("  ex : {s}");
    }
}
