//! Label maps over gRPC (issue 14, item 5): `UploadAnatomy` takes a NIfTI label volume in chunks,
//! the server meshes it with the planner's label-map code, `GetAnatomy` lists what it found,
//! and a plan by the anatomy's id is bit for bit the in-process plan of the same label map.
//! Bad label volumes are refused naming the field (INVALID_ARGUMENT) or the limit
//! (RESOURCE_EXHAUSTED), and leave what is stored as it was.

use std::sync::Arc;

use kyphoplan_client::client::LABEL_BYTES_PER_CHUNK;
use kyphoplan_client::{ClientError, Code, LabelMapUpload};
use kyphoplan_planner::anatomy::{Level, PatientFrame, Role};
use kyphoplan_planner::labelmap::{self, Convention, LabelTable, LabelVolume};
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::planning;
use kyphoplan_planner::prepare::{PrepareOptions, PreparedAnatomy};
use kyphoplan_planner::synth;
use kyphoplan_proto::{convert, pb};
use kyphoplan_tests::cases::{
    synthetic_label_map, totalsegmentator_id, TOTALSEGMENTATOR_SPINAL_CORD,
};
use kyphoplan_tests::default_request;
use kyphoplan_tests::server::TestServer;

/// L2-L4 from `synth` with the canal, 0.8 x 0.8 x 1.0 mm voxels laid out as RAS; 80 slices
/// centred on L3 hold L3 whole and cut L2 (superior face) and L4 (inferior face).
fn l2_to_l4_cut() -> LabelVolume {
    synthetic_label_map(
        &[Level::L2, Level::L3, Level::L4],
        [0.8, 0.8, 1.0],
        [190, 160, 80],
    )
    .0
}

fn upload_of(volume: &LabelVolume, name: &str) -> LabelMapUpload {
    LabelMapUpload {
        name: name.into(),
        frame: PatientFrame::Lps,
        file_name: "seg.nii".into(),
        nifti: labelmap::encode_nifti_labels(volume),
        convention: pb::LabelConvention::Totalsegmentator,
        labels: Default::default(),
    }
}

/// The field violations of a refusal.
fn fields(e: &ClientError) -> Vec<String> {
    match e {
        ClientError::Status {
            field_violations, ..
        } => field_violations.iter().map(|v| v.field.clone()).collect(),
        _ => Vec::new(),
    }
}

fn status(e: &ClientError) -> (Code, String) {
    match e {
        ClientError::Status { code, message, .. } => (*code, message.clone()),
        other => panic!("expected a status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_map_uploaded_in_chunks_plans_by_id_bit_for_bit_like_in_process() {
    let volume = l2_to_l4_cut();
    let upload = upload_of(&volume, "synthetic-l2-l4");
    assert!(
        upload.nifti.len() > 3 * LABEL_BYTES_PER_CHUNK,
        "the volume goes in several chunks ({} bytes)",
        upload.nifti.len()
    );

    // In process: the same bytes read, meshed and planned.
    let read = labelmap::parse_nifti_labels("seg.nii", &upload.nifti).unwrap();
    let table = LabelTable::builtin(Convention::TotalSegmentator);
    let lm = labelmap::anatomy_from_labels("synthetic-l2-l4", &read, &table, None).unwrap();
    let request = default_request(None);
    let prepared =
        PreparedAnatomy::prepare(lm.anatomy.clone(), &PrepareOptions::standard()).unwrap();
    let expected = planning::plan(&prepared, &request).unwrap();
    assert_eq!(
        expected.levels.iter().map(|l| l.level).collect::<Vec<_>>(),
        vec![Level::L3]
    );
    assert!(
        expected.levels[0].sides.iter().any(|s| s.feasible),
        "the synthetic L3 plans"
    );

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let stored = client
        .upload_labelmap(Arc::new(upload.clone()))
        .await
        .unwrap();

    // The content address of the anatomy message with the file's bytes.
    let data = pb::AnatomyData {
        name: "synthetic-l2-l4".into(),
        frame: pb::Frame::Lps as i32,
        structures: Vec::new(),
        labelmap: Some(pb::LabelMapData {
            header: Some(pb::LabelMapHeader {
                file_name: "seg.nii".into(),
                convention: pb::LabelConvention::Totalsegmentator as i32,
                labels: Vec::new(),
            }),
            nifti: upload.nifti.clone(),
        }),
    };
    assert_eq!(stored.anatomy_id, convert::anatomy_id(&data));
    assert_eq!(stored.levels, vec![pb::Level::L3 as i32]);

    // What was found: L3 and the canal, with their labels, voxels and triangles; L2 and L4
    // refused at the faces they touch.
    let got = client.get_anatomy(&stored.anatomy_id).await.unwrap();
    assert_eq!(got, stored);
    let count = |id: u16| read.labels.iter().filter(|&&l| l == id).count() as u64;
    let l3_id = totalsegmentator_id(Level::L3).unwrap();
    assert_eq!(got.structures.len(), lm.anatomy.structures.len());
    for (summary, s) in got.structures.iter().zip(&lm.anatomy.structures) {
        let descriptor = summary.descriptor.clone().unwrap();
        assert_eq!(descriptor, convert::descriptor_to_pb(&s.name, &s.role));
        assert_eq!(summary.triangle_count, s.mesh.triangles.len() as u64);
        let label = summary.label.clone().unwrap();
        let id = match s.role {
            Role::Vertebra { level } => totalsegmentator_id(level).unwrap(),
            _ => TOTALSEGMENTATOR_SPINAL_CORD,
        };
        assert_eq!(label.labels, vec![u32::from(id)]);
        assert_eq!(label.voxel_count, count(id));
        assert!(label.volume_ml.unwrap() > 0.0);
    }
    assert_eq!(
        got.structures[0].label.as_ref().unwrap().labels,
        vec![u32::from(l3_id)]
    );
    let summary = got.labelmap.clone().unwrap();
    assert_eq!(summary.dims, vec![190, 160, 80]);
    // (level, label ids, faces as (axis, high end, direction)) of each refused vertebra.
    type Face = (String, bool, String);
    let refused: Vec<(i32, Vec<u32>, Vec<Face>)> = summary
        .refused
        .iter()
        .map(|r| {
            (
                r.level,
                r.labels.clone(),
                r.faces
                    .iter()
                    .map(|f| (f.axis.clone(), f.high, f.direction.clone()))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        vec![
            (
                pb::Level::L2 as i32,
                vec![u32::from(totalsegmentator_id(Level::L2).unwrap())],
                vec![("k".into(), true, "superior".into())]
            ),
            (
                pb::Level::L4 as i32,
                vec![u32::from(totalsegmentator_id(Level::L4).unwrap())],
                vec![("k".into(), false, "inferior".into())]
            ),
        ]
    );
    assert_eq!(summary.notices, lm.notices);

    // A plan by id is the in-process plan, bit for bit.
    let by_id = client
        .create_plan(&stored.anatomy_id, &request)
        .await
        .unwrap();
    assert_eq!(by_id.plan, expected);
    assert_eq!(
        kyphoplan_client::plan_json(&by_id.plan),
        kyphoplan_client::plan_json(&expected)
    );
    // A refused level is not in the anatomy: a plan asking for it is refused naming `levels`.
    let l4 = client
        .create_plan(&stored.anatomy_id, &default_request(Some(vec![Level::L4])))
        .await
        .unwrap_err();
    assert_eq!(status(&l4).0, Code::InvalidArgument);
    assert_eq!(fields(&l4), vec!["levels".to_string()]);

    // The same label map again: the same id, stored once.
    let again = client.upload_labelmap(Arc::new(upload)).await.unwrap();
    assert_eq!(again, stored);

    // After a restart the anatomy is meshed again from the stored bytes: the same plan.
    server.shutdown().await;
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let after = client
        .create_plan(&stored.anatomy_id, &request)
        .await
        .unwrap();
    assert_eq!(after.plan, expected);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_label_volumes_are_refused_naming_the_field_and_lose_nothing_stored() {
    // A small complete map: L3 alone, 1.5 mm voxels.
    let good = synthetic_label_map(&[Level::L3], [1.5, 1.5, 1.5], [80, 72, 40]).0;
    let good_bytes = labelmap::encode_nifti_labels(&good);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |c| c.max_label_voxels = 300_000).await;
    let mut client = server.client().await;

    // Something stored before: a mesh anatomy and its plan, and a label map.
    let meshes = synth::spine(&[Level::L4], &Pose::identity(), false).0;
    let mesh_anatomy = client.upload_anatomy(&meshes).await.unwrap();
    let request = default_request(None);
    let mesh_plan = client
        .create_plan(&mesh_anatomy.anatomy_id, &request)
        .await
        .unwrap();
    let good_upload = LabelMapUpload {
        nifti: good_bytes.clone(),
        ..upload_of(&good, "good")
    };
    let stored = client
        .upload_labelmap(Arc::new(good_upload.clone()))
        .await
        .unwrap();
    assert_eq!(stored.levels, vec![pb::Level::L3 as i32]);
    let label_plan = client
        .create_plan(&stored.anatomy_id, &request)
        .await
        .unwrap();

    let refuse = |upload: LabelMapUpload| {
        let mut client = client.clone();
        async move {
            client
                .upload_labelmap(Arc::new(upload))
                .await
                .expect_err("a bad label volume is refused")
        }
    };
    let invalid = |e: &ClientError, field: &str, says: &str| {
        let (code, message) = status(e);
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert_eq!(fields(e), vec![field.to_string()], "{message}");
        assert!(message.contains("seg.nii"), "names the file: {message}");
        assert!(message.contains(says), "{message}");
    };

    // Not a NIfTI file (a text file sent by mistake).
    let text = LabelMapUpload {
        nifti: "not a label map\n".repeat(40).into_bytes(),
        ..good_upload.clone()
    };
    let e = refuse(text).await;
    let (code, message) = status(&e);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(
        fields(&e)[0].starts_with("label_volume."),
        "{:?}: {message}",
        fields(&e)
    );

    // A truncated file: the header says more voxels than arrived.
    let truncated = LabelMapUpload {
        nifti: good_bytes[..good_bytes.len() / 2].to_vec(),
        ..good_upload.clone()
    };
    invalid(
        &refuse(truncated).await,
        "label_volume.vox_offset",
        "past the end",
    );

    // Complex voxels (datatype 32): not labels.
    let mut complex = good_bytes.clone();
    complex[70..72].copy_from_slice(&32i16.to_le_bytes());
    invalid(
        &refuse(LabelMapUpload {
            nifti: complex,
            ..good_upload.clone()
        })
        .await,
        "label_volume.datatype",
        "not a scalar integer",
    );

    // Every voxel 0.
    let empty = LabelVolume {
        labels: vec![0; good.labels.len()],
        ..good.clone()
    };
    invalid(
        &refuse(upload_of(&empty, "empty")).await,
        "label_volume.voxel data",
        "no label",
    );

    // No complete vertebra: the map cut through L3.
    let cut = synthetic_label_map(&[Level::L3], [1.5, 1.5, 1.5], [80, 72, 15]).0;
    invalid(
        &refuse(upload_of(&cut, "cut")).await,
        "label_volume.labels",
        "touches the volume boundary",
    );

    // The header: no convention, a bad table entry, no file name.
    let e = refuse(LabelMapUpload {
        convention: pb::LabelConvention::Unspecified,
        ..good_upload.clone()
    })
    .await;
    assert_eq!(status(&e).0, Code::InvalidArgument);
    assert_eq!(fields(&e), vec!["header.labelmap.convention".to_string()]);
    let e = refuse(LabelMapUpload {
        labels: [(29, "vertebra:X9".to_string())].into_iter().collect(),
        ..good_upload.clone()
    })
    .await;
    assert_eq!(status(&e).0, Code::InvalidArgument);
    assert_eq!(fields(&e), vec!["header.labelmap.labels.29".to_string()]);
    let e = refuse(LabelMapUpload {
        file_name: " ".into(),
        ..good_upload.clone()
    })
    .await;
    assert_eq!(fields(&e), vec!["header.labelmap.file_name".to_string()]);

    // Over the server's voxel limit (300,000): RESOURCE_EXHAUSTED naming the limit.
    let big = synthetic_label_map(&[Level::L3], [1.5, 1.5, 1.5], [80, 72, 60]).0;
    assert!(big.labels.len() > 300_000);
    let e = refuse(upload_of(&big, "big")).await;
    let (code, message) = status(&e);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("label volume voxels"), "{message}");
    assert!(message.contains("345600 voxels"), "{message}");

    // Nothing stored was lost: the same anatomies, the same plans.
    assert_eq!(
        client.get_anatomy(&stored.anatomy_id).await.unwrap(),
        stored
    );
    assert_eq!(
        client.get_anatomy(&mesh_anatomy.anatomy_id).await.unwrap(),
        mesh_anatomy
    );
    assert_eq!(
        client.get_plan(&label_plan.plan_id).await.unwrap().plan,
        label_plan.plan
    );
    assert_eq!(
        client
            .create_plan(&stored.anatomy_id, &request)
            .await
            .unwrap()
            .plan,
        label_plan.plan
    );
    assert_eq!(
        client.get_plan(&mesh_plan.plan_id).await.unwrap().plan,
        mesh_plan.plan
    );
    server.shutdown().await;
}
