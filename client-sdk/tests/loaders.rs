//! Mesh loaders: round trips and malformed files (errors naming the file, never panics).

use std::path::Path;

use kyphoplan_client::mesh_io::{self, load_mesh, write_stl};
use kyphoplan_planner::anatomy::Level;
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::synth;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

const TETRA_ASCII_STL: &str = "solid t
facet normal 0 0 -1
 outer loop
  vertex 0 0 0
  vertex 0 1 0
  vertex 1 0 0
 endloop
endfacet
facet normal 0 -1 0
 outer loop
  vertex 0 0 0
  vertex 1 0 0
  vertex 0 0 1
 endloop
endfacet
facet normal -1 0 0
 outer loop
  vertex 0 0 0
  vertex 0 0 1
  vertex 0 1 0
 endloop
endfacet
facet normal 1 1 1
 outer loop
  vertex 1 0 0
  vertex 0 1 0
  vertex -0 0 1
 endloop
endfacet
endsolid t
";

#[test]
fn binary_stl_round_trip_welds_the_soup_back_into_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let (anatomy, _) = synth::spine(&[Level::L3], &Pose::identity(), false);
    let mesh = &anatomy.structures[0].mesh;
    let path = dir.path().join("L3.stl");
    write_stl(&path, mesh).unwrap();
    let back = load_mesh(&path).unwrap();
    assert_eq!(back.triangles.len(), mesh.triangles.len());
    // Welding by exact equality recovers the shared vertices of the closed surface.
    assert_eq!(back.vertices_mm.len(), mesh.vertices_mm.len());
    for (i, t) in back.triangles.iter().enumerate() {
        for (k, &corner) in t.iter().enumerate() {
            let a = back.vertices_mm[corner as usize];
            let b = mesh.vertices_mm[mesh.triangles[i][k] as usize];
            // STL stores f32.
            assert!((a - b).norm() < 1e-4, "triangle {i} corner {k}: {a} vs {b}");
        }
    }
    assert!(kyphoplan_planner::validate::is_closed_manifold(&back));
}

#[test]
fn ascii_stl_is_read_and_welded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tetra.STL", TETRA_ASCII_STL.as_bytes());
    let mesh = load_mesh(&path).unwrap();
    assert_eq!(mesh.triangles.len(), 4);
    // -0 equals 0: four distinct vertices.
    assert_eq!(mesh.vertices_mm.len(), 4);
    assert!(kyphoplan_planner::validate::is_closed_manifold(&mesh));
}

#[test]
fn obj_quads_are_triangulated_at_full_precision() {
    let dir = tempfile::tempdir().unwrap();
    let obj = "# unit cube
o cube
v 0.123456789012345 0 0
v 1 0 0
v 1 1 0
v 0 1 0
v 0 0 1
v 1 0 1
v 1 1 1
v 0 1 1
vn 0 0 1
f 1 4 3 2
f 5 6 7 8
f 1 2 6 5
f 2 3 7 6
f 3 4 8 7
f 4 1 5 8
";
    let path = write(dir.path(), "cube.obj", obj.as_bytes());
    let mesh = load_mesh(&path).unwrap();
    assert_eq!(mesh.vertices_mm.len(), 8);
    assert_eq!(mesh.triangles.len(), 12);
    assert_eq!(mesh.vertices_mm[0].x, 0.123456789012345);
    assert!(kyphoplan_planner::validate::is_closed_manifold(&mesh));
}

#[test]
fn ply_ascii_with_polygons_becomes_triangles() {
    let dir = tempfile::tempdir().unwrap();
    let ply = "ply
format ascii 1.0
element vertex 5
property double x
property double y
property double z
element face 5
property list uchar int vertex_indices
end_header
0 0 0
1 0 0
1 1 0
0 1 0
0.5 0.5 1.000000000001
4 0 3 2 1
3 0 1 4
3 1 2 4
3 2 3 4
3 3 0 4
";
    let path = write(dir.path(), "pyramid.ply", ply.as_bytes());
    let mesh = load_mesh(&path).unwrap();
    assert_eq!(mesh.vertices_mm.len(), 5);
    assert_eq!(mesh.triangles.len(), 6);
    assert_eq!(mesh.vertices_mm[4].z, 1.000000000001);
    assert!(kyphoplan_planner::validate::is_closed_manifold(&mesh));
}

#[test]
fn malformed_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.stl", vec![]),
        ("garbage.stl", b"this is not an stl file at all".to_vec()),
        // A binary header announcing 1000 triangles, then nothing.
        ("truncated.stl", {
            let mut b = vec![0u8; 80];
            b.extend_from_slice(&1000u32.to_le_bytes());
            b.extend_from_slice(&[0u8; 30]);
            b
        }),
        ("bad_vertex.stl", b"solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 zero\nvertex 1 0 0\nvertex 0 1 0\nendloop\nendfacet\nendsolid x\n".to_vec()),
        ("no_faces.obj", b"v 0 0 0\nv 1 0 0\n".to_vec()),
        ("bad_index.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n".to_vec()),
        ("garbage.obj", b"f a b c\nv x y z\n".to_vec()),
        ("garbage.ply", b"ply\nformat ascii 1.0\nelement vertex 2\nend_header\n1 2\n".to_vec()),
        ("no_faces.ply", b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\nend_header\n0 0 0\n".to_vec()),
        ("bad_index.ply", b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n".to_vec()),
        ("truncated.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 100\nproperty float x\nproperty float y\nproperty float z\nend_header\n\x00\x00".to_vec()),
        ("mesh.vtk", b"# vtk DataFile".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = write(dir.path(), name, &bytes);
        let e = load_mesh(&path).expect_err(name);
        let text = e.to_string();
        assert!(
            text.contains(name),
            "{name}: error does not name the file: {text}"
        );
    }
    let missing = dir.path().join("missing.stl");
    let e = load_mesh(&missing).unwrap_err();
    assert!(e.to_string().contains("missing.stl"));
}

#[test]
fn in_memory_parsers_agree_with_the_file_loaders() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    type Parse =
        fn(&[u8], &Path) -> Result<kyphoplan_planner::mesh::TriMesh, mesh_io::MeshFileError>;
    let parsers: [(&str, Parse); 3] = [
        ("mesh_stl/cube-binary.stl", mesh_io::parse_stl),
        ("mesh_obj/cube-quads-vt-vn.obj", mesh_io::parse_obj),
        ("mesh_ply/cube-binary-le.ply", mesh_io::parse_ply),
    ];
    for (seed, parse) in parsers {
        let bytes = std::fs::read(corpus.join(seed)).unwrap();
        let name = Path::new(seed).file_name().unwrap().to_str().unwrap();
        let from_file = load_mesh(&write(dir.path(), name, &bytes)).unwrap();
        let in_memory = parse(&bytes, Path::new(name)).unwrap();
        assert_eq!(in_memory.vertices_mm, from_file.vertices_mm, "{seed}");
        assert_eq!(in_memory.triangles, from_file.triangles, "{seed}");
        assert_eq!(in_memory.triangles.len(), 12, "{seed}");
    }
}

#[test]
fn ply_element_counts_the_file_cannot_hold_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let huge = b"ply\nformat ascii 1.0\nelement vertex 1000000000000\nproperty float x\nproperty float y\nproperty float z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n";
    let path = write(dir.path(), "huge.ply", huge);
    let e = load_mesh(&path).unwrap_err().to_string();
    assert!(
        e.contains("huge.ply") && e.contains("1000000000000 'vertex' elements"),
        "{e}"
    );
    // An element with no properties takes no bytes: any count would loop without reading.
    let empty = b"ply\nformat binary_little_endian 1.0\nelement nothing 1000000000\nelement vertex 0\nproperty float x\nend_header\n";
    let e = mesh_io::parse_ply(empty, Path::new("empty.ply"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("element 'nothing' has no properties"), "{e}");
}

#[test]
fn obj_material_libraries_are_never_opened() {
    let obj = b"mtllib ../../../../etc/passwd\nmtllib missing.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl m\nf 1 2 3\n";
    let mesh = mesh_io::parse_obj(obj, Path::new("m.obj")).unwrap();
    assert_eq!(mesh.triangles, vec![[0, 1, 2]]);
}

#[test]
fn ply_header_numbers_over_64_bits_are_refused_not_a_panic() {
    // Found by the mesh_ply fuzzer: ply-rs's header grammar unwraps the parse of the count.
    for header in [
        "ply\nformat ascii 1.0\nelement vertex 100000000000000000000\nproperty float x\nend_header\n",
        "ply\nformat ascii 123456789012345678901.0\nend_header\n",
    ] {
        let e = mesh_io::parse_ply(header.as_bytes(), Path::new("big.ply"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("big.ply: header line") && e.contains("too large"), "{e}");
    }
}

#[test]
fn obj_texture_and_normal_indices_are_ignored_even_when_out_of_range() {
    // Found by the mesh_obj fuzzer: tobj's normal lookup overflowed on `1/1/-4` with one normal.
    let obj =
        b"v 0 0 0\nv 1 0 0\nv 0 1 0\nvn 0 0 1\nvt 0 0\nf 1/1/-4 2/-3/1 3/99999999999999999/1\n";
    let mesh = mesh_io::parse_obj(obj, Path::new("n.obj")).unwrap();
    assert_eq!(mesh.triangles, vec![[0, 1, 2]]);
    assert_eq!(mesh.vertices_mm.len(), 3);
}
