//! Write the built-in demo anatomy (L1-L5 at mean morphometry) to binary STL files, one per
//! vertebra, so they can be inspected in any mesh viewer (e.g. 3D Slicer, MeshLab).
//!
//! Usage: `cargo run -p kyphoplan-planner --example synth_stl -- OUT_DIR [LEVEL...]`
//!
//! With levels (e.g. `T11 T12 L1`), writes that stack instead, with its spinal canal and nerve
//! roots.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use kyphoplan_planner::anatomy::Level;
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::synth::{demo_anatomy, spine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: synth_stl OUT_DIR (writes L1.stl .. L5.stl)")?,
    );
    std::fs::create_dir_all(&dir)?;
    let levels = std::env::args()
        .skip(2)
        .map(|a| a.parse::<Level>())
        .collect::<Result<Vec<_>, _>>()?;
    let anatomy = if levels.is_empty() {
        demo_anatomy()
    } else {
        spine(&levels, &Pose::identity(), true).0
    };
    for s in &anatomy.structures {
        let m = &s.mesh;
        let v = |i: u32| {
            let p = m.vertices_mm[i as usize];
            stl_io::Vertex::new([p.x as f32, p.y as f32, p.z as f32])
        };
        let triangles = m.triangles.iter().map(|&[a, b, c]| {
            let [pa, pb, pc] = [a, b, c].map(|i| m.vertices_mm[i as usize]);
            let n = (pb - pa).cross(&(pc - pa)).normalize();
            stl_io::Triangle {
                normal: stl_io::Normal::new([n.x as f32, n.y as f32, n.z as f32]),
                vertices: [v(a), v(b), v(c)],
            }
        });
        let name = if s.name.ends_with(".stl") {
            s.name.clone()
        } else {
            format!("{}.stl", s.name)
        };
        let path = dir.join(name);
        let mut out = BufWriter::new(File::create(&path)?);
        stl_io::write_stl(&mut out, triangles)?;
        println!("{}: {} triangles", path.display(), m.triangles.len());
    }
    Ok(())
}
