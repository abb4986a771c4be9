//! Writes the generated seed corpus of the fuzz targets (`fuzz/corpus/<target>/`): small STL,
//! OBJ and PLY files, case.toml variants (plus copies of `tests/cases/**/case.toml`), encoded
//! kyphoplan.v1 requests and triangle soups. Deterministic; rerun after changing it:
//!
//! ```sh
//! cargo run -p kyphoplan-client --example fuzz_seeds -- fuzz/corpus
//! ```

use std::path::{Path, PathBuf};

use futures::StreamExt;
use kyphoplan_client::client::upload_chunks;
use kyphoplan_planner::anatomy::{AnatomyInput, Level, PatientFrame, Role, Side, Structure};
use kyphoplan_planner::math::Point;
use kyphoplan_planner::mesh::TriMesh;
use kyphoplan_planner::request::{Instrument, PlanRequest, Safety};
use kyphoplan_proto::{convert, pb};
use prost::Message;

/// A closed, outward 30 mm cube: passes vertebra validation.
fn cube(size_mm: f64) -> TriMesh {
    let s = size_mm;
    let v = (0..8)
        .map(|i| {
            Point::new(
                if i & 1 != 0 { s } else { 0.0 },
                if i & 2 != 0 { s } else { 0.0 },
                if i & 4 != 0 { s } else { 0.0 },
            )
        })
        .collect();
    let quads = [
        [0, 2, 3, 1],
        [4, 5, 7, 6],
        [0, 1, 5, 4],
        [2, 6, 7, 3],
        [0, 4, 6, 2],
        [1, 3, 7, 5],
    ];
    let t = quads
        .iter()
        .flat_map(|q| [[q[0], q[1], q[2]], [q[0], q[2], q[3]]])
        .collect();
    TriMesh::new(v, t)
}

fn stl_ascii(mesh: &TriMesh) -> Vec<u8> {
    let mut s = String::from("solid cube\n");
    for i in 0..mesh.triangles.len() {
        s.push_str("  facet normal 0 0 0\n    outer loop\n");
        for p in mesh.triangle(i) {
            s.push_str(&format!("      vertex {} {} {}\n", p.x, p.y, p.z));
        }
        s.push_str("    endloop\n  endfacet\n");
    }
    s.push_str("endsolid cube\n");
    s.into_bytes()
}

fn stl_binary(mesh: &TriMesh, declared: Option<u32>) -> Vec<u8> {
    let mut b = vec![0u8; 80];
    let n = declared.unwrap_or(mesh.triangles.len() as u32);
    b.extend_from_slice(&n.to_le_bytes());
    for i in 0..mesh.triangles.len() {
        b.extend_from_slice(&[0u8; 12]);
        for p in mesh.triangle(i) {
            for c in [p.x, p.y, p.z] {
                b.extend_from_slice(&(c as f32).to_le_bytes());
            }
        }
        b.extend_from_slice(&[0u8; 2]);
    }
    b
}

fn obj(mesh: &TriMesh) -> String {
    let mut s = String::from("# cube\no cube\n");
    for p in &mesh.vertices_mm {
        s.push_str(&format!("v {} {} {}\n", p.x, p.y, p.z));
    }
    for t in &mesh.triangles {
        s.push_str(&format!("f {} {} {}\n", t[0] + 1, t[1] + 1, t[2] + 1));
    }
    s
}

fn ply_header(format: &str, vertices: usize, faces: usize, scalar: &str, list: &str) -> String {
    format!(
        "ply\nformat {format} 1.0\ncomment seed\nelement vertex {vertices}\nproperty {scalar} x\nproperty {scalar} y\nproperty {scalar} z\nelement face {faces}\nproperty list {list} int vertex_indices\nend_header\n"
    )
}

fn ply_ascii(mesh: &TriMesh) -> Vec<u8> {
    let mut s = ply_header(
        "ascii",
        mesh.vertices_mm.len(),
        mesh.triangles.len(),
        "float",
        "uchar",
    );
    for p in &mesh.vertices_mm {
        s.push_str(&format!("{} {} {}\n", p.x, p.y, p.z));
    }
    for t in &mesh.triangles {
        s.push_str(&format!("3 {} {} {}\n", t[0], t[1], t[2]));
    }
    s.into_bytes()
}

fn ply_binary(mesh: &TriMesh, big_endian: bool) -> Vec<u8> {
    let format = if big_endian {
        "binary_big_endian"
    } else {
        "binary_little_endian"
    };
    let mut b = ply_header(
        format,
        mesh.vertices_mm.len(),
        mesh.triangles.len(),
        "double",
        "uchar",
    )
    .into_bytes();
    for p in &mesh.vertices_mm {
        for c in [p.x, p.y, p.z] {
            b.extend_from_slice(&if big_endian {
                c.to_be_bytes()
            } else {
                c.to_le_bytes()
            });
        }
    }
    for t in &mesh.triangles {
        b.push(3);
        for &i in t {
            let i = i as i32;
            b.extend_from_slice(&if big_endian {
                i.to_be_bytes()
            } else {
                i.to_le_bytes()
            });
        }
    }
    b
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(dir).expect("create corpus directory");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn meshes(out: &Path) {
    let c = cube(30.0);
    let tetra = TriMesh::new(
        vec![
            Point::new(0.0, 0.0, 0.0),
            Point::new(20.0, 0.0, 0.0),
            Point::new(0.0, 20.0, 0.0),
            Point::new(0.0, 0.0, 20.0),
        ],
        vec![[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]],
    );
    let dir = out.join("mesh_stl");
    write(&dir, "cube-ascii.stl", stl_ascii(&c));
    write(&dir, "cube-binary.stl", stl_binary(&c, None));
    write(&dir, "tetra-binary.stl", stl_binary(&tetra, None));
    write(&dir, "tetra-ascii.stl", stl_ascii(&tetra));
    write(
        &dir,
        "binary-count-too-large.stl",
        stl_binary(&tetra, Some(u32::MAX)),
    );
    write(&dir, "binary-count-zero.stl", stl_binary(&tetra, Some(0)));
    let mut solid_binary = stl_binary(&tetra, None);
    solid_binary[..5].copy_from_slice(b"solid");
    write(&dir, "binary-starting-with-solid.stl", solid_binary);
    write(
        &dir,
        "ascii-nan.stl",
        "solid x\nfacet normal 0 0 1\nouter loop\nvertex nan 0 0\nvertex 1 inf 0\nvertex 0 1 -0\nendloop\nendfacet\nendsolid x\n",
    );
    write(&dir, "empty.stl", b"");

    let dir = out.join("mesh_obj");
    write(&dir, "cube-triangles.obj", obj(&c));
    let mut quads = String::from("o quads\n");
    for p in &c.vertices_mm {
        quads.push_str(&format!("v {} {} {}\n", p.x, p.y, p.z));
    }
    quads.push_str("vt 0 0\nvt 1 0\nvt 1 1\nvn 0 0 1\n");
    quads.push_str("f 1/1/1 3/2/1 4/3/1 2/1/1\nf 5//1 6//1 8//1 7//1\nf 1 2 6 5\nf 3 7 8 4\nf 1 5 7 3\nf 2 4 8 6\n");
    write(&dir, "cube-quads-vt-vn.obj", quads);
    write(
        &dir,
        "negative-indices.obj",
        "v 0 0 0\nv 20 0 0\nv 0 20 0\nv 0 0 20\nf -4 -2 -3\nf -4 -3 -1\nf -4 -1 -2\nf -3 -2 -1\n",
    );
    write(
        &dir,
        "two-objects-mtllib.obj",
        "mtllib ../../etc/passwd\no a\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl m\nf 1 2 3\ng b\no b\nv 0 0 1\nv 1 0 1\nv 0 1 1\nf 4 5 6\ns off\nl 1 2\np 3\n",
    );
    write(
        &dir,
        "index-out-of-range.obj",
        "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n",
    );
    write(
        &dir,
        "nonfinite.obj",
        "v nan 0 0\nv 1 inf 0\nv 0 1 -inf\nf 1 2 3\n",
    );
    write(&dir, "empty.obj", "");

    let dir = out.join("mesh_ply");
    write(&dir, "cube-ascii.ply", ply_ascii(&c));
    write(&dir, "cube-binary-le.ply", ply_binary(&c, false));
    write(&dir, "cube-binary-be.ply", ply_binary(&c, true));
    write(
        &dir,
        "quad-ascii-int-list.ply",
        "ply\nformat ascii 1.0\nelement vertex 4\nproperty double x\nproperty double y\nproperty double z\nproperty uchar red\nelement face 1\nproperty list int uint vertex_index\nend_header\n0 0 0 255\n1 0 0 0\n1 1 0 0\n0 1 0 0\n4 0 1 2 3\n",
    );
    write(
        &dir,
        "huge-vertex-count.ply",
        "ply\nformat ascii 1.0\nelement vertex 1000000000000\nproperty float x\nproperty float y\nproperty float z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n",
    );
    write(
        &dir,
        "element-without-properties.ply",
        "ply\nformat binary_little_endian 1.0\nelement nothing 1000000000\nelement vertex 0\nproperty float x\nend_header\n",
    );
    write(&dir, "no-face.ply", "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\nend_header\n0 0 0\n");
}

fn cases(out: &Path, repo: &Path) {
    let dir = out.join("case_toml");
    // Copies of the case library's case.toml files (text only, never meshes).
    let mut found = Vec::new();
    let mut stack = vec![repo.join("tests/cases")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("tests/cases") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "case.toml") {
                found.push(p);
            }
        }
    }
    found.sort();
    for p in found {
        let rel = p
            .parent()
            .and_then(|d| d.strip_prefix(repo.join("tests/cases")).ok())
            .expect("inside tests/cases");
        let name = format!("cases-{}.toml", rel.to_string_lossy().replace('/', "-"));
        write(&dir, &name, std::fs::read(&p).expect("read case.toml"));
    }
    let full = r#"name = "full"
description = "every key"
frame = "RAS"
levels = ["L1", "L2"]

[[structure]]
role = "vertebra"
level = "L1"
mesh = "meshes/L1.stl"

[[structure]]
role = "nerve_root"
level = "L1"
side = "left"
mesh = "./roots/../L1-root-left.obj"

[[structure]]
role = "spinal_canal"
mesh = "canal.ply"

[[structure]]
role = "skin"
mesh = "skin.stl"

[[structure]]
role = "forbidden"
mesh = "aorta.stl"

[instrument]
cannula_outer_diameter_mm = 3.4
cannula_working_length_mm = 150.0
balloon_lengths_mm = [10.0, 15.0, 20.0]
balloon_max_diameter_mm = 16.0

[safety]
cortex_margin_mm = 1.0
canal_margin_mm = 2.0
nerve_root_margin_mm = 2.0

[replay]
position_tolerance_mm = 0.5
angle_tolerance_deg = 1.0
clearance_tolerance_mm = 0.2
volume_tolerance_fraction = 0.05
"#;
    write(&dir, "full.toml", full);
    let one = |mesh: &str| {
        format!(
            "name = \"x\"\nframe = \"LPS\"\n[[structure]]\nrole = \"vertebra\"\nlevel = \"L3\"\nmesh = \"{mesh}\"\n"
        )
    };
    write(&dir, "escape-dotdot.toml", one("../outside.stl"));
    write(&dir, "escape-deep.toml", one("a/../../outside.stl"));
    write(&dir, "escape-absolute.toml", one("/etc/passwd"));
    write(&dir, "mesh-empty.toml", one(""));
    write(
        &dir,
        "mesh-root-escape.toml",
        "name = \"x\"\nframe = \"LPS\"\nmesh_root = \"shared:../x\"\n[[structure]]\nrole = \"vertebra\"\nlevel = \"L3\"\nmesh = \"L3.stl\"\n",
    );
    write(
        &dir,
        "bad-values.toml",
        "name = \" \"\nframe = \"XYZ\"\nlevels = [\"L6\", \"L1\", \"L1\"]\nunknown = 1\n[[structure]]\nrole = \"nerve_root\"\nlevel = \"L3\"\nmesh = \"r.stl\"\n[instrument]\ncannula_outer_diameter_mm = nan\nballoon_lengths_mm = []\n[safety]\ncortex_margin_mm = -inf\n",
    );
    write(
        &dir,
        "duplicate-levels.toml",
        "name = \"x\"\nframe = \"LPS\"\nlevels = [\"L1\", \"L1\"]\n[[structure]]\nrole = \"vertebra\"\nlevel = \"L1\"\nmesh = \"L1.stl\"\n",
    );
}

fn requests(out: &Path) {
    let dir = out.join("request");
    let c = cube(30.0);
    let anatomy = AnatomyInput {
        name: "seed".into(),
        frame: PatientFrame::Lps,
        structures: vec![
            Structure {
                name: "L1.stl".into(),
                role: Role::Vertebra { level: Level::L1 },
                mesh: c.clone(),
            },
            Structure {
                name: "root.stl".into(),
                role: Role::NerveRoot {
                    level: Level::L1,
                    side: Side::Left,
                },
                mesh: cube(5.0),
            },
        ],
    };
    let data = convert::anatomy_to_pb(&anatomy);
    let request = PlanRequest::new(
        Some(vec![Level::L1]),
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .expect("default request");
    let create = convert::create_plan_request_to_pb(
        pb::create_plan_request::Anatomy::InlineAnatomy(data.clone()),
        &request,
    );
    write(&dir, "create-plan-inline.pb", create.encode_to_vec());
    let by_id = convert::create_plan_request_to_pb(
        pb::create_plan_request::Anatomy::AnatomyId(convert::anatomy_id(&data)),
        &request,
    );
    write(&dir, "create-plan-by-id.pb", by_id.encode_to_vec());
    let evaluate = pb::EvaluateTrajectoryRequest {
        anatomy: Some(pb::evaluate_trajectory_request::Anatomy::InlineAnatomy(
            data.clone(),
        )),
        level: pb::Level::L1 as i32,
        side: pb::Side::Right as i32,
        entry_mm: Some(convert::point_to_pb([40.0, 45.0, 15.0])),
        target_mm: Some(convert::point_to_pb([15.0, 5.0, 15.0])),
        instrument: Some(convert::instrument_options_to_pb(request.instrument())),
        safety: Some(convert::safety_options_to_pb(request.safety())),
        route: pb::Route::Unspecified as i32,
    };
    write(&dir, "evaluate-inline.pb", evaluate.encode_to_vec());
    let evaluate_nan = pb::EvaluateTrajectoryRequest {
        anatomy: Some(pb::evaluate_trajectory_request::Anatomy::AnatomyId(
            "0".repeat(64),
        )),
        entry_mm: Some(convert::point_to_pb([f64::NAN, 0.0, 0.0])),
        ..evaluate.clone()
    };
    write(&dir, "evaluate-nan.pb", evaluate_nan.encode_to_vec());
    write(&dir, "anatomy-data.pb", data.encode_to_vec());
    // An upload stream, as the client sends it: length-delimited chunks.
    let chunks = futures::executor::block_on(
        upload_chunks(std::sync::Arc::new(anatomy)).collect::<Vec<_>>(),
    );
    let mut stream: Vec<u8> = chunks
        .iter()
        .flat_map(|c| c.encode_length_delimited_to_vec())
        .collect();
    // Chunks may carry vertices or triangles only; an empty one is fine too.
    let empty = pb::UploadAnatomyChunk {
        chunk: Some(pb::upload_anatomy_chunk::Chunk::Mesh(pb::MeshChunk {
            structure_index: 1,
            vertices_mm: vec![],
            triangles: vec![],
        })),
    };
    stream.extend(empty.encode_length_delimited_to_vec());
    write(&dir, "upload-stream.pb", stream);
    write(&dir, "empty.pb", b"");
}

/// Soups in the encoding of `kyphoplan_client::fuzzing::soup`.
fn soups(out: &Path) {
    let dir = out.join("mesh_validate");
    let encode = |scale: u8, mesh: &TriMesh, special: Option<f64>| -> Vec<u8> {
        let mut b = vec![scale, mesh.vertices_mm.len() as u8];
        for (i, p) in mesh.vertices_mm.iter().enumerate() {
            for c in [p.x, p.y, p.z] {
                match special {
                    Some(v) if i == 0 => {
                        b.push(0xF0);
                        b.extend_from_slice(&v.to_le_bytes());
                    }
                    _ => b.push((c + 120.0) as u8),
                }
            }
        }
        for t in &mesh.triangles {
            b.extend(t.iter().map(|&i| i as u8));
        }
        b
    };
    let c = cube(30.0);
    write(&dir, "cube.bin", encode(0, &c, None));
    write(&dir, "cube-metres.bin", encode(3, &c, None));
    write(&dir, "cube-nan.bin", encode(0, &c, Some(f64::NAN)));
    write(&dir, "cube-inward.bin", encode(0, &c.flipped(), None));
    let mut open = c.clone();
    open.triangles.pop();
    write(&dir, "cube-open.bin", encode(0, &open, None));
    let mut bad = c.clone();
    bad.triangles[0] = [0, 0, 9];
    write(&dir, "cube-bad-indices.bin", encode(0, &bad, None));
}

fn main() {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("fuzz/corpus"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    meshes(&out);
    cases(&out, &repo);
    requests(&out);
    soups(&out);
    println!("seeds written to {}", out.display());
}
