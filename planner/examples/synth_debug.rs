use kyphoplan_planner::*;
use kyphoplan_planner::math::*;

fn main() {
    for l in [Level::T10, Level::T12, Level::L1, Level::L3, Level::L5] {
        let (input, verts) = synth::spine(&[l], &Pose::identity(), false);
        let a = PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap();
        let req = PlanRequest::new(None, Instrument::contract_default(), Safety::contract_default()).unwrap();
        let t = std::time::Instant::now();
        let p = plan(&a, &req).unwrap();
        eprintln!("{l}: plan {:?}", t.elapsed());
        for (s, ax) in p.levels[0].sides.iter().zip(verts[0].pedicle_axes.iter()) {
            let d = ax.direction.into_inner();
            let (m_true, c_true) = evaluate::angles_deg(ax.side, &d);
            match &s.trajectory {
                Some(t) => {
                    let e = point(t.bone_entry_mm); let tip = point(t.target_mm);
                    let u = (tip - e).normalize();
                    let ang = u.dot(&d).clamp(-1.0, 1.0).acos().to_degrees();
                    // distance of the isthmus centre from the line
                    let w = ax.isthmus_center - e;
                    let dist = (w - u * w.dot(&u)).norm();
                    eprintln!("  {:5} medial {:5.1} (true {:5.1}) cranial {:5.1} (true {:5.1}) angle err {:.1} deg, isthmus dist {:.2} mm, cortex {:.2} canal {:.2} root {:.2} balloon {:?}",
                        s.side.name(), t.medial_angle_deg, m_true, t.cranial_angle_deg, c_true, ang, dist, t.clearance_mm.cortex, t.clearance_mm.canal, t.clearance_mm.nerve_root,
                        s.balloon.as_ref().map(|b| (b.length_mm, b.diameter_mm)));
                }
                None => eprintln!("  {:5} INFEASIBLE {:?}", s.side.name(), s.reasons),
            }
        }
    }
}
