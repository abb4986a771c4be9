//! Bodies of the cargo-fuzz targets in `fuzz/fuzz_targets/` (see `fuzz/README.md`).
//!
//! Each body takes arbitrary bytes, runs them through the same code a real load or request
//! does, and panics only when an invariant breaks: a loader, parser or validator must answer
//! with an error, never panic, and what it accepts must be sound (finite coordinates, indices
//! in range, closed vertebrae, requests that survive a round trip). The fuzzers call these
//! functions; `tests/fuzz_corpus.rs` replays the seed corpus through them on stable Rust.
//!
//! Nothing here runs the planner itself: requests and anatomies are converted and validated
//! only (`validate_anatomy`, not `PreparedAnatomy::prepare`).

use std::path::{Component, Path};

use kyphoplan_planner::anatomy::{AnatomyInput, Role};
use kyphoplan_planner::mesh::TriMesh;
use kyphoplan_planner::prepare::{validate_anatomy, PrepareOptions, ValidatedAnatomy};
use kyphoplan_planner::validate::{
    is_closed_manifold, validate_mesh, MeshCheck, WindingPolicy, VERTEBRA_SIZE_RANGE_MM,
};
use kyphoplan_proto::{convert, pb};
use kyphoplan_server::upload::{SizeLimit, UploadAssembly};
use kyphoplan_server::ServiceError;
use prost::Message;

use crate::{case, mesh_io};

/// A target body: arbitrary bytes in, a panic only when an invariant breaks.
pub type Body = fn(&[u8]);

/// Every fuzz target: its name (the file `fuzz/fuzz_targets/<name>.rs` and the corpus
/// directory `fuzz/corpus/<name>/`) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("mesh_stl", mesh_stl),
    ("mesh_obj", mesh_obj),
    ("mesh_ply", mesh_ply),
    ("case_toml", case_toml),
    ("request", request),
    ("mesh_validate", mesh_validate),
    ("labelmap", labelmap),
];

/// The name the mesh bodies give their input in errors.
const INPUT: &str = "fuzz-input";

/// Bytes as a binary or ASCII STL file.
pub fn mesh_stl(data: &[u8]) {
    loaded(mesh_io::parse_stl(data, Path::new(INPUT)));
}

/// Bytes as an OBJ file.
pub fn mesh_obj(data: &[u8]) {
    loaded(mesh_io::parse_obj(data, Path::new(INPUT)));
}

/// Bytes as an ASCII or binary PLY file.
pub fn mesh_ply(data: &[u8]) {
    loaded(mesh_io::parse_ply(data, Path::new(INPUT)));
}

/// A loader's answer: an error names the input; a mesh has faces with indices in range, and
/// goes through the validation a vertebra and a keep-out get.
fn loaded(result: Result<TriMesh, mesh_io::MeshFileError>) {
    match result {
        Err(e) => {
            assert_eq!(e.path, Path::new(INPUT));
            assert!(!e.reason.is_empty());
        }
        Ok(mesh) => {
            assert!(!mesh.triangles.is_empty(), "a loaded mesh has faces");
            assert_indices_in_range(&mesh);
            validated(&mesh);
        }
    }
}

fn assert_indices_in_range(mesh: &TriMesh) {
    let n = mesh.vertices_mm.len();
    for t in &mesh.triangles {
        assert!(
            t.iter().all(|&i| (i as usize) < n),
            "index out of range: {t:?} of {n} vertices"
        );
    }
}

/// The checks of a vertebra (closed, plausible size) and of an open keep-out, both winding
/// policies.
fn checks() -> [MeshCheck; 3] {
    let max_triangles = PrepareOptions::standard().max_triangles_per_mesh;
    [
        MeshCheck {
            closed: true,
            size_range_mm: Some(VERTEBRA_SIZE_RANGE_MM),
            winding: WindingPolicy::Fix,
            max_triangles,
        },
        MeshCheck {
            closed: true,
            size_range_mm: None,
            winding: WindingPolicy::Refuse,
            max_triangles,
        },
        MeshCheck {
            closed: false,
            size_range_mm: None,
            winding: WindingPolicy::Fix,
            max_triangles,
        },
    ]
}

fn validated(mesh: &TriMesh) {
    for check in checks() {
        checked(mesh.clone(), &check);
    }
}

/// `validate_mesh` and the invariants of what it accepts.
fn checked(mesh: TriMesh, check: &MeshCheck) {
    match validate_mesh(mesh, check) {
        Err(fault) => assert!(!fault.to_string().is_empty()),
        Ok((mesh, _fix)) => {
            assert_valid(&mesh);
            if check.closed {
                assert!(is_closed_manifold(&mesh), "accepted as closed but is not");
                assert!(
                    mesh.signed_volume_mm3() >= 0.0,
                    "accepted closed mesh faces inwards"
                );
            }
            if let Some((min, max)) = check.size_range_mm {
                let e = mesh.bounding_box().extents_mm();
                let extent = e.x.max(e.y).max(e.z);
                assert!((min..=max).contains(&extent), "size {extent} accepted");
            }
        }
    }
}

/// Non-empty, finite coordinates, indices in range, no triangle using a vertex twice.
fn assert_valid(mesh: &TriMesh) {
    assert!(!mesh.triangles.is_empty() && !mesh.vertices_mm.is_empty());
    assert!(
        mesh.vertices_mm
            .iter()
            .all(|p| p.x.is_finite() && p.y.is_finite() && p.z.is_finite()),
        "accepted mesh has a non-finite vertex"
    );
    assert_indices_in_range(mesh);
    assert!(
        mesh.triangles
            .iter()
            .all(|&[a, b, c]| a != b && b != c && a != c),
        "accepted mesh has a repeated vertex"
    );
}

/// Bytes as `case.toml`: parsed, written back and re-read, then resolved without files.
pub fn case_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let toml = match case::parse_case_toml(text) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };
    // What the reader accepts, the writer (`write_case`) can write and the reader read back.
    if let Ok(written) = toml::to_string(&toml) {
        let again = case::parse_case_toml(&written)
            .unwrap_or_else(|e| panic!("written case.toml does not parse: {e}\n{written}"));
        assert_eq!(format!("{again:?}"), format!("{toml:?}"), "\n{written}");
    }
    match case::resolve_case_toml(toml) {
        Err(e) => assert!(!e.is_empty()),
        Ok(spec) => {
            assert!(!spec.name.trim().is_empty());
            assert!(!spec.structures.is_empty());
            for s in &spec.structures {
                assert!(stays_inside(&s.mesh), "mesh path {:?} accepted", s.mesh);
            }
            if let Some(root) = &spec.mesh_root {
                let sub = case::shared_subdir(root).expect("mesh_root was checked");
                assert!(sub.is_relative());
            }
            spec.request.instrument().validate().expect("resolved");
            spec.request.safety().validate().expect("resolved");
        }
    }
}

/// Whether `rel`, joined to a directory, names something inside it (lexically).
fn stays_inside(rel: &str) -> bool {
    let mut inside: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => inside.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if inside.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    !rel.is_empty()
}

/// Bytes as each kyphoplan.v1 request: CreatePlanRequest, EvaluateTrajectoryRequest,
/// AnatomyData, and an UploadAnatomy stream (length-delimited UploadAnatomyChunks), converted
/// and validated as the server does before planning.
pub fn request(data: &[u8]) {
    if let Ok(r) = pb::CreatePlanRequest::decode(data) {
        create_plan(r);
    }
    if let Ok(r) = pb::EvaluateTrajectoryRequest::decode(data) {
        evaluate(r);
    }
    if let Ok(a) = pb::AnatomyData::decode(data) {
        anatomy(a);
    }
    upload(data);
}

fn create_plan(r: pb::CreatePlanRequest) {
    let pb::CreatePlanRequest {
        anatomy: which,
        levels,
        instrument,
        safety,
        procedure,
        approaches,
        cannula_alternatives_mm,
        request_id: _,
    } = r;
    match convert::plan_request_from_pb(&levels, instrument, safety, procedure, &approaches)
        .and_then(|r| convert::with_cannula_alternatives(r, &cannula_alternatives_mm))
    {
        Err(e) => assert!(!e.field().is_empty()),
        Ok(request) => {
            // Planner -> proto -> planner gives the same request.
            let again = convert::create_plan_request_to_pb(
                pb::create_plan_request::Anatomy::AnatomyId(String::new()),
                &request,
            );
            let back = convert::plan_request_from_pb(
                &again.levels,
                again.instrument,
                again.safety,
                again.procedure,
                &again.approaches,
            )
            .and_then(|r| convert::with_cannula_alternatives(r, &again.cannula_alternatives_mm))
            .expect("a request's own encoding is valid");
            assert_eq!(back, request);
        }
    }
    if let Some(pb::create_plan_request::Anatomy::InlineAnatomy(a)) = which {
        anatomy(a);
    }
}

fn evaluate(r: pb::EvaluateTrajectoryRequest) {
    if let Some(pb::evaluate_trajectory_request::Anatomy::InlineAnatomy(a)) = &r.anatomy {
        anatomy(a.clone());
    }
    match convert::evaluate_request_from_pb(r) {
        Err(e) => assert!(!e.field().is_empty()),
        Ok((_, p)) => {
            assert!(p.entry_mm.iter().chain(&p.target_mm).all(|c| c.is_finite()));
            p.instrument.validate().expect("checked");
            p.safety.validate().expect("checked");
        }
    }
}

fn upload(mut data: &[u8]) {
    let mut assembly = UploadAssembly::new(SizeLimit {
        max_triangles: u64::MAX,
        max_label_voxels: u64::MAX,
    });
    while !data.is_empty() {
        let Ok(chunk) = pb::UploadAnatomyChunk::decode_length_delimited(&mut data) else {
            return;
        };
        if let Err(e) = assembly.push(Ok(chunk)) {
            assert_named_input_error(e);
            return;
        }
    }
    match assembly.finish() {
        Err(e) => assert_named_input_error(e),
        Ok(a) => anatomy(a),
    }
}

/// Without a size limit, a refused upload is bad input naming its field.
fn assert_named_input_error(e: ServiceError) {
    match e {
        ServiceError::Input(e) => assert!(!e.field().is_empty()),
        other => panic!("an upload refused as {other}"),
    }
}

/// Most voxels of a label map the fuzz targets mesh (small, so that an input stays fast).
const FUZZ_LABEL_VOXELS: u64 = 64 * 64 * 64;

/// An anatomy message: its content address, its conversion as the server makes it (a label map
/// meshed) and the planner's validation.
fn anatomy(a: pb::AnatomyData) {
    assert_eq!(convert::anatomy_id(&a).len(), 64);
    let limit = SizeLimit {
        max_triangles: u64::MAX,
        max_label_voxels: FUZZ_LABEL_VOXELS,
    };
    match kyphoplan_server::labelmap::anatomy_input(a, &limit) {
        Err(ServiceError::Input(e)) => assert!(!e.field().is_empty()),
        Err(ServiceError::ResourceExhausted { what, .. }) => assert!(what.starts_with("label")),
        Err(other) => panic!("an anatomy refused as {other}"),
        Ok(meshed) => validated_anatomy(meshed.input),
    }
}

fn validated_anatomy(input: AnatomyInput) {
    let n = input.structures.len();
    match validate_anatomy(input, &PrepareOptions::standard()) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(ValidatedAnatomy {
            name: _,
            frame: _,
            structures,
        }) => {
            assert_eq!(structures.len(), n);
            assert!(structures
                .iter()
                .any(|s| matches!(s.role, Role::Vertebra { .. })));
            for s in &structures {
                assert_valid(&s.mesh);
                if matches!(s.role, Role::Vertebra { .. }) {
                    assert!(is_closed_manifold(&s.mesh));
                    assert!(s.mesh.signed_volume_mm3() >= 0.0);
                }
            }
        }
    }
}

/// Bytes as a triangle soup for `validate_mesh`, decoded by [`soup`].
pub fn mesh_validate(data: &[u8]) {
    if let Some(mesh) = soup(data) {
        validated(&mesh);
    }
}

/// Decode a triangle soup: byte 0 is a scale selector, byte 1 the vertex count; then per
/// coordinate a tag byte, either a grid value (`tag - 120`, scaled) or, for tags from 0xF0, the
/// next 8 bytes as the bits of an f64 (NaN, infinities, anything); the remaining bytes are
/// vertex indices in threes (indices past the vertex count are kept: out of range).
pub fn soup(data: &[u8]) -> Option<TriMesh> {
    let (&scale, rest) = data.split_first()?;
    let (&n, mut rest) = rest.split_first()?;
    let scale_mm = [1.0, 0.25, 2.0, 0.001, 1e-9, 1e9][usize::from(scale) % 6];
    let mut coordinate = || -> Option<f64> {
        let (&tag, tail) = rest.split_first()?;
        rest = tail;
        if tag < 0xF0 {
            return Some((f64::from(tag) - 120.0) * scale_mm);
        }
        let (bits, tail) = rest.split_first_chunk::<8>()?;
        rest = tail;
        Some(f64::from_le_bytes(*bits))
    };
    let mut vertices = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let p = [coordinate()?, coordinate()?, coordinate()?];
        vertices.push(kyphoplan_planner::math::Point::new(p[0], p[1], p[2]));
    }
    let triangles = rest
        .chunks_exact(3)
        .map(|t| [u32::from(t[0]), u32::from(t[1]), u32::from(t[2])])
        .collect();
    Some(TriMesh::new(vertices, triangles))
}

/// Bytes as a NIfTI label map (`.nii` or gzipped): an error or a sound volume (labels for every
/// voxel, a finite non-singular voxel -> LPS transform); a small one is also turned into anatomy
/// (VerSe ids), whose meshes must be closed 2-manifolds, outward wound.
pub fn labelmap(data: &[u8]) {
    use kyphoplan_planner::labelmap as lm;
    let Ok(volume) = lm::parse_nifti_labels(INPUT, data) else {
        return;
    };
    assert_eq!(volume.labels.len(), volume.dims.iter().product::<usize>());
    let t = volume.voxel_to_lps;
    assert!(t
        .linear
        .iter()
        .chain(t.offset_mm.iter())
        .all(|v| v.is_finite()));
    assert!(t.linear.determinant() != 0.0);
    assert!(
        volume.labels.iter().any(|&l| l != 0),
        "an empty map is refused"
    );
    if volume.labels.len() > 32 * 32 * 32 {
        return;
    }
    let table = lm::LabelTable::builtin(lm::Convention::Verse);
    if let Ok(a) = lm::anatomy_from_labels(INPUT, &volume, &table, None) {
        for s in &a.anatomy.structures {
            assert!(is_closed_manifold(&s.mesh), "{}: not closed", s.name);
            assert!(s.mesh.signed_volume_mm3() > 0.0, "{}: inward", s.name);
        }
    }
}
