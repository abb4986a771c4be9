//! Label maps through the case directory and the command line (issue 14): `kyphoplan plan
//! --labelmap`, `[labelmap]` in case.toml (RAS frame, a table of ids), `--export-meshes`, and
//! the refusals (a vertebra cut by the scan, a level the map does not hold).

use std::path::Path;
use std::process::{Command, Output};

use kyphoplan_client::case;
use kyphoplan_planner::anatomy::{Level, PatientFrame, Role};
use kyphoplan_planner::clearance::ClearanceMesh;
use kyphoplan_planner::labelmap::{self, Affine, LabelVolume, XformSource};
use kyphoplan_planner::math::{Matrix3, Point, Pose, Real, Vector};
use kyphoplan_planner::synth;

fn kyphoplan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kyphoplan"))
        .args(args)
        .output()
        .expect("run kyphoplan")
}

/// Synthetic L3 (complete) and L4 (cut at the inferior face of the volume) in TotalSegmentator
/// ids (29, 28), on 1 mm voxels laid out as RAS, written to `dir/seg.nii`.
fn write_label_map(dir: &Path) -> std::path::PathBuf {
    let (anatomy, _) = synth::spine(&[Level::L3, Level::L4], &Pose::identity(), false);
    let mesh = |l: Level| {
        let s = anatomy
            .structures
            .iter()
            .find(|s| s.role == Role::Vertebra { level: l })
            .unwrap();
        (ClearanceMesh::new(&s.mesh), s.mesh.bounding_box())
    };
    let (l3, b3) = mesh(Level::L3);
    let (l4, b4) = mesh(Level::L4);
    // LPS box: L3 with 3 mm around, down to the middle of L4.
    let lo = Vector::new(
        b3.min.x.min(b4.min.x) - 3.0,
        b3.min.y.min(b4.min.y) - 3.0,
        0.5 * (b4.min.z + b4.max.z),
    );
    let hi = Vector::new(
        b3.max.x.max(b4.max.x) + 3.0,
        b3.max.y.max(b4.max.y) + 3.0,
        b3.max.z + 3.0,
    );
    // RAS voxel axes: i -> right (-x), j -> anterior (-y), k -> superior.
    let linear = Matrix3::from_diagonal(&Vector::new(-1.0, -1.0, 1.0));
    let offset_mm = Vector::new(hi.x.ceil(), hi.y.ceil(), lo.z.floor());
    let dims = [
        (hi.x.ceil() - lo.x.floor()) as usize + 1,
        (hi.y.ceil() - lo.y.floor()) as usize + 1,
        (hi.z.ceil() - lo.z.floor()) as usize + 1,
    ];
    let voxel_to_lps = Affine { linear, offset_mm };
    let mut labels = Vec::with_capacity(dims.iter().product());
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let p = voxel_to_lps.apply(&Point::new(i as Real, j as Real, k as Real));
                labels.push(if l3.contains_point(&p) {
                    29
                } else if l4.contains_point(&p) {
                    28
                } else {
                    0
                });
            }
        }
    }
    let volume = LabelVolume {
        file: "seg.nii".into(),
        dims,
        labels,
        voxel_to_lps,
        xform: XformSource::Sform,
    };
    let path = dir.join("seg.nii");
    std::fs::write(&path, labelmap::encode_nifti_labels(&volume)).unwrap();
    path
}

#[test]
fn a_label_map_plans_from_the_command_line_and_from_a_case_directory() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_label_map(dir.path());
    let seg_s = seg.to_str().unwrap();
    let json = dir.path().join("plan.json");
    let meshes = dir.path().join("meshes");
    let o = kyphoplan(&[
        "plan",
        "--labelmap",
        seg_s,
        "--convention",
        "totalsegmentator",
        "--json",
        json.to_str().unwrap(),
        "--export-meshes",
        meshes.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("label 28 (L4) touches the volume boundary at the inferior face"),
        "{err}"
    );
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(plan["frame"], "LPS");
    let levels = plan["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 1);
    assert_eq!(levels[0]["level"], "L3");
    for s in levels[0]["sides"].as_array().unwrap() {
        assert_eq!(s["feasible"], true, "{s}");
    }
    // The exported meshes are a case directory that plans the same.
    assert!(meshes.join("L3.stl").is_file() && meshes.join("case.toml").is_file());
    let o = kyphoplan(&["plan", meshes.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // A level the map does not hold: refused, exit 1, the level and file named.
    let o = kyphoplan(&["plan", "--labelmap", seg_s, "--levels", "L1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("seg.nii: levels: level L1 is requested"),
        "{err}"
    );
    // Only the cut vertebra: nothing to plan, the face named.
    let o = kyphoplan(&["plan", "--labelmap", seg_s, "--levels", "L4"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("inferior face"), "{err}");

    // case.toml with [labelmap], a table of ids, frame RAS.
    let case_dir = dir.path().join("case");
    std::fs::create_dir_all(&case_dir).unwrap();
    std::fs::copy(&seg, case_dir.join("seg.nii")).unwrap();
    std::fs::write(
        case_dir.join("case.toml"),
        "name = \"labels\"\nframe = \"RAS\"\n\n[labelmap]\nfile = \"seg.nii\"\nconvention = \"table\"\n\n[labelmap.labels]\n29 = \"vertebra:L3\"\n",
    )
    .unwrap();
    let c = case::read_case(&case_dir).unwrap();
    assert_eq!(c.anatomy.frame, PatientFrame::Ras);
    assert_eq!(c.anatomy.structures.len(), 1);
    assert!(
        c.notices.iter().any(|n| n.contains("labels 28")),
        "{:?}",
        c.notices
    );
    let lps = case::labelmap_case(&seg, "totalsegmentator", Some(vec![Level::L3])).unwrap();
    let (a, b) = (
        &c.anatomy.structures[0].mesh,
        &lps.anatomy.structures[0].mesh,
    );
    assert_eq!(a.triangles, b.triangles);
    for (p, q) in a.vertices_mm.iter().zip(&b.vertices_mm) {
        assert_eq!(
            [p.x, p.y, p.z],
            [-q.x, -q.y, q.z],
            "RAS = LPS with x, y negated"
        );
    }
    // A bad table entry names the field.
    std::fs::write(
        case_dir.join("case.toml"),
        "name = \"labels\"\nframe = \"RAS\"\n\n[labelmap]\nfile = \"seg.nii\"\n\n[labelmap.labels]\n29 = \"vertebra:L9\"\n",
    )
    .unwrap();
    let e = case::read_case(&case_dir).unwrap_err().to_string();
    assert!(e.contains("labelmap.labels.29"), "{e}");
}

/// `kyphoplan upload --labelmap`: the file goes to the server as it is, is meshed there, and
/// the table shows what the server found; a bad file is refused naming the field (exit 1).
#[test]
fn upload_sends_a_label_map_to_the_server_and_prints_what_it_found() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_label_map(dir.path());
    let data = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(kyphoplan_server::InProcessServer::start(
            kyphoplan_server::Config::with_data_dir(data.path()),
        ))
        .unwrap();
    let url = server.url();
    let o = kyphoplan(&[
        "upload",
        "--server",
        &url,
        "--labelmap",
        seg.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.starts_with("anatomy "), "{out}");
    let l3 = out
        .lines()
        .find(|l| l.starts_with("L3 "))
        .unwrap_or_else(|| panic!("no L3 row: {out}"));
    let cells: Vec<&str> = l3.split_whitespace().collect();
    assert_eq!(&cells[..3], ["L3", "vertebra", "L3"], "{l3}");
    assert_eq!(cells[4], "29", "{l3}");
    assert!(
        out.contains("refused: label 28 (L4) touches the volume boundary at the inferior face"),
        "{out}"
    );

    // Not a NIfTI file: exit 1, the field named.
    let bad = dir.path().join("bad.nii");
    std::fs::write(&bad, "not a label map\n".repeat(40)).unwrap();
    let o = kyphoplan(&[
        "upload",
        "--server",
        &url,
        "--labelmap",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("label_volume."), "{err}");
    assert!(err.contains("bad.nii"), "{err}");
    let _ = runtime.block_on(server.shutdown());
}

/// `kyphoplan plan --labelmap FILE --server URL`: the label volume goes to the server as it is
/// (the anatomy id is the label map's content address, the one `upload --labelmap` prints), the
/// server meshes and plans it by that id, and the plan JSON is the in-process plan's.
#[test]
fn plan_with_a_label_map_and_a_server_uploads_the_volume_and_plans_by_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_label_map(dir.path());
    let seg_s = seg.to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(kyphoplan_server::InProcessServer::start(
            kyphoplan_server::Config::with_data_dir(data.path()),
        ))
        .unwrap();
    let url = server.url();
    let (local, remote) = (
        dir.path().join("local.json"),
        dir.path().join("remote.json"),
    );
    let o = kyphoplan(&[
        "plan",
        "--labelmap",
        seg_s,
        "--json",
        local.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = kyphoplan(&[
        "plan",
        "--labelmap",
        seg_s,
        "--server",
        &url,
        "--json",
        remote.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    // The server's notice on the cut vertebra reaches the user.
    assert!(
        err.contains("notice: label 28 (L4) touches the volume boundary at the inferior face"),
        "{err}"
    );
    let stored_id = err
        .lines()
        .find_map(|l| l.strip_prefix("anatomy "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no stored anatomy: {err}"))
        .to_string();
    // The id of the label volume itself, as `upload --labelmap` stores it.
    let o = kyphoplan(&["upload", "--server", &url, "--labelmap", seg_s]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.starts_with(&format!("anatomy {stored_id} ")),
        "plan stored {stored_id}; upload says {out}"
    );
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    assert_eq!(
        json(&local),
        json(&remote),
        "server plan differs from in-process plan"
    );

    // A level the map does not hold: the server refuses the plan, exit 1, the level named.
    let o = kyphoplan(&[
        "plan",
        "--labelmap",
        seg_s,
        "--server",
        &url,
        "--levels",
        "L1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("L1"), "{err}");
    let _ = runtime.block_on(server.shutdown());
}
