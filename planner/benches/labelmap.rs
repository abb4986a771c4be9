//! Label-map benchmarks (criterion, feature `labelmap`): the stages of issue 14's path from the
//! bytes of a `.nii.gz` to a verified five-level plan, on a generated lumbar label map smaller
//! than `kyphoplan bench`'s (L1-L5 and the canal of `synth::spine`, voxelised at voxel centres
//! on 256 x 256 x 150 voxels of 1.4 x 1.4 x 2.0 mm, TotalSegmentator ids, RAS axes): read,
//! label boxes, meshing (marching tetrahedra and `simplify_flat`), preparation and the plan.
//! The full-size map (512 x 512 x 300 of 0.7 x 0.7 x 1.0 mm) is `kyphoplan bench --labelmap-only`.
//!
//! `cargo bench -p kyphoplan-planner --features labelmap --bench labelmap`.

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use kyphoplan_planner::clearance::ClearanceMesh;
use kyphoplan_planner::labelmap::{self, Affine, Convention, LabelTable, LabelVolume};
use kyphoplan_planner::math::{Matrix3, Point, Pose, Vector};
use kyphoplan_planner::*;

/// TotalSegmentator v2 "total" ids: L1 = 31 ... L5 = 27, spinal cord 79.
const LUMBAR: [(Level, u16); 5] = [
    (Level::L1, 31),
    (Level::L2, 30),
    (Level::L3, 29),
    (Level::L4, 28),
    (Level::L5, 27),
];
const SPINAL_CORD: u16 = 79;

/// The generated lumbar spine voxelised at voxel centres (vertebrae win over the canal).
fn lumbar_label_map(dims: [usize; 3], spacing_mm: [f64; 3]) -> LabelVolume {
    let levels: Vec<Level> = LUMBAR.iter().map(|(l, _)| *l).collect();
    let (anatomy, _) = synth::spine(&levels, &Pose::identity(), true);
    let mut parts: Vec<(u16, &TriMesh)> = Vec::new();
    for s in &anatomy.structures {
        match s.role {
            Role::Vertebra { level } => {
                if let Some((_, id)) = LUMBAR.iter().find(|(l, _)| *l == level) {
                    parts.push((*id, &s.mesh));
                }
            }
            Role::SpinalCanal => parts.push((SPINAL_CORD, &s.mesh)),
            _ => {}
        }
    }
    parts.sort_by_key(|(id, _)| *id == SPINAL_CORD);
    let mut lo = Vector::repeat(f64::INFINITY);
    let mut hi = Vector::repeat(f64::NEG_INFINITY);
    for (id, m) in &parts {
        if *id != SPINAL_CORD {
            let b = m.bounding_box();
            lo = lo.inf(&b.min.coords);
            hi = hi.sup(&b.max.coords);
        }
    }
    // RAS voxel axes: i -> -x, j -> -y, k -> +z (LPS), the vertebrae centred.
    let linear =
        Matrix3::from_diagonal(&Vector::new(-spacing_mm[0], -spacing_mm[1], spacing_mm[2]));
    let half = Vector::from(dims.map(|d| (d as f64 - 1.0) / 2.0));
    let voxel_to_lps = Affine {
        linear,
        offset_mm: 0.5 * (lo + hi) - linear * half,
    };
    let lps_to_voxel = linear.try_inverse().expect("spacing is not zero");
    let mut labels = vec![0u16; dims[0] * dims[1] * dims[2]];
    for (id, m) in &parts {
        let b = m.bounding_box();
        let a = lps_to_voxel * (b.min.coords - voxel_to_lps.offset_mm);
        let c = lps_to_voxel * (b.max.coords - voxel_to_lps.offset_mm);
        let range = |q: usize| {
            let x0 = a[q].min(c[q]).floor().max(0.0) as usize;
            let x1 = (a[q].max(c[q]).ceil().max(0.0) as usize).min(dims[q] - 1);
            x0..=x1
        };
        let engine = ClearanceMesh::new(m);
        for k in range(2) {
            for j in range(1) {
                for i in range(0) {
                    let cell = &mut labels[i + dims[0] * (j + dims[1] * k)];
                    if *cell == 0
                        && engine.contains_point(
                            &voxel_to_lps.apply(&Point::new(i as f64, j as f64, k as f64)),
                        )
                    {
                        *cell = *id;
                    }
                }
            }
        }
    }
    LabelVolume {
        file: "lumbar.nii".into(),
        dims,
        labels,
        voxel_to_lps,
        xform: labelmap::XformSource::Sform,
    }
}

fn benches(c: &mut Criterion) {
    let volume = lumbar_label_map([256, 256, 150], [1.4, 1.4, 2.0]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&labelmap::encode_nifti_labels(&volume))
        .expect("in memory");
    let gz = gz.finish().expect("in memory");
    let table = LabelTable::builtin(Convention::TotalSegmentator);
    let options = PrepareOptions::standard();
    let req = PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .expect("the contract defaults are a valid request");
    let meshed = labelmap::anatomy_from_labels("lumbar", &volume, &table, None).expect("meshes");
    let prepared = PreparedAnatomy::prepare(meshed.anatomy.clone(), &options).expect("prepares");
    let plan = planning::plan(&prepared, &req).expect("plans");
    let feasible = plan
        .levels
        .iter()
        .flat_map(|l| &l.sides)
        .filter(|s| s.feasible)
        .count();
    eprintln!(
        "labelmap bench: 256 x 256 x 150 voxels, {:.2} MB .nii.gz, {} triangles, {feasible} of {} sides feasible",
        gz.len() as f64 / 1e6,
        meshed
            .anatomy
            .structures
            .iter()
            .map(|s| s.mesh.triangles.len())
            .sum::<usize>(),
        2 * plan.levels.len()
    );

    let mut g = c.benchmark_group("labelmap_256x256x150");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("read_nii_gz", |b| {
        b.iter(|| black_box(labelmap::parse_nifti_labels("lumbar.nii.gz", &gz).unwrap()))
    });
    g.bench_function("label_boxes", |b| {
        b.iter(|| black_box(labelmap::label_boxes(&volume)))
    });
    let l3 = labelmap::label_boxes(&volume)[&29];
    g.bench_function("mesh_labels_L3", |b| {
        b.iter(|| black_box(labelmap::mesh_labels(&volume, &[29], &l3)))
    });
    g.bench_function("mesh_all", |b| {
        b.iter(|| {
            black_box(labelmap::anatomy_from_labels("lumbar", &volume, &table, None).unwrap())
        })
    });
    g.bench_function("prepare", |b| {
        b.iter_batched(
            || meshed.anatomy.clone(),
            |a| black_box(PreparedAnatomy::prepare(a, &options).unwrap()),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("plan_five_levels", |b| {
        b.iter(|| black_box(planning::plan(&prepared, &req).unwrap()))
    });
    g.bench_function("end_to_end", |b| {
        b.iter(|| {
            let v = labelmap::parse_nifti_labels("lumbar.nii.gz", &gz).unwrap();
            let lm = labelmap::anatomy_from_labels("lumbar", &v, &table, None).unwrap();
            let a = PreparedAnatomy::prepare(lm.anatomy, &options).unwrap();
            black_box(planning::plan(&a, &req).unwrap())
        })
    });
    g.finish();
}

criterion_group!(label_map, benches);
criterion_main!(label_map);
