//! Hostile input over the wire: every refusal has its status and names the field or structure,
//! the server goes on serving, and nothing stored changes (an earlier plan reads back equal and
//! the plan list keeps its length).
//!
//! Covered elsewhere, not repeated here: a NaN vertex, an unknown plan or anatomy, a negative
//! margin, an unspecified or absent level, an unspecified frame and an anatomy over
//! `--max-triangles` (tests/server.rs `refusals_carry_their_status_codes_and_fields`); busy
//! planning slots (`busy_planning_slots_answer_resource_exhausted`); a case.toml whose mesh
//! path leaves the case directory and malformed STL/OBJ/PLY files (client-sdk/tests/case.rs,
//! client-sdk/tests/loaders.rs).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut};
use kyphoplan_planner::anatomy::Level;
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::request::{Instrument, PlanRequest, Safety};
use kyphoplan_planner::synth;
use kyphoplan_proto::convert;
use kyphoplan_proto::pb;
use kyphoplan_tests::server::{RawClient, TestServer};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;
use tonic_types::StatusExt;

const MAX_TRIANGLES: u64 = 200_000;
const MAX_MESSAGE_BYTES: usize = 4 << 20;

async fn start() -> (TestServer, RawClient) {
    let server = TestServer::start(|c| {
        c.max_triangles = MAX_TRIANGLES;
        c.max_message_bytes = MAX_MESSAGE_BYTES;
    })
    .await;
    let raw = server.raw().await;
    (server, raw)
}

fn l3() -> pb::AnatomyData {
    convert::anatomy_to_pb(&synth::spine(&[Level::L3], &Pose::identity(), false).0)
}

fn plan_message(anatomy: pb::create_plan_request::Anatomy) -> pb::CreatePlanRequest {
    convert::create_plan_request_to_pb(
        anatomy,
        &PlanRequest::new(
            None,
            Instrument::contract_default(),
            Safety::contract_default(),
        )
        .unwrap(),
    )
}

fn header_and_meshes(data: &pb::AnatomyData) -> Vec<pb::UploadAnatomyChunk> {
    let mut chunks = vec![pb::UploadAnatomyChunk {
        chunk: Some(pb::upload_anatomy_chunk::Chunk::Header(pb::AnatomyHeader {
            labelmap: None,
            name: data.name.clone(),
            frame: data.frame,
            structures: data
                .structures
                .iter()
                .map(|s| s.descriptor.clone().unwrap())
                .collect(),
        })),
    }];
    for (i, s) in data.structures.iter().enumerate() {
        let m = s.mesh.clone().unwrap();
        chunks.push(pb::UploadAnatomyChunk {
            chunk: Some(pb::upload_anatomy_chunk::Chunk::Mesh(pb::MeshChunk {
                structure_index: i as u32,
                vertices_mm: m.vertices_mm,
                triangles: m.triangles,
            })),
        });
    }
    chunks
}

async fn upload(raw: &mut RawClient, data: &pb::AnatomyData) -> Result<pb::Anatomy, tonic::Status> {
    raw.upload_anatomy(tokio_stream::iter(header_and_meshes(data)))
        .await
        .map(|r| r.into_inner())
}

fn fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

fn mesh(d: &mut pb::AnatomyData) -> &mut pb::Mesh {
    d.structures[0].mesh.as_mut().unwrap()
}

/// What was stored before the hostile calls.
struct Baseline {
    plan: pb::Plan,
    plans_listed: usize,
}

async fn unchanged(raw: &mut RawClient, base: &Baseline, case: &str) {
    let again = raw
        .get_plan(pb::GetPlanRequest {
            plan_id: base.plan.plan_id.clone(),
        })
        .await
        .unwrap_or_else(|s| panic!("{case}: the earlier plan is gone: {s:?}"))
        .into_inner();
    assert_eq!(again, base.plan, "{case}: the earlier plan changed");
    let listed = raw
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner()
        .plans
        .len();
    assert_eq!(listed, base.plans_listed, "{case}: the plan list changed");
}

fn refused(
    r: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    case: &str,
) -> tonic::Status {
    match r {
        Ok(v) => panic!("{case}: accepted: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{case}: {s:?}");
            s
        }
    }
}

/// Mesh faults: uploaded, refused with INVALID_ARGUMENT naming the structure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_meshes_are_refused_naming_the_structure_and_nothing_changes() {
    let (_server, mut raw) = start().await;
    let good = l3();
    let stored = upload(&mut raw, &good).await.unwrap();
    let plan = raw
        .create_plan(plan_message(pb::create_plan_request::Anatomy::AnatomyId(
            stored.anatomy_id.clone(),
        )))
        .await
        .unwrap()
        .into_inner();
    let base = Baseline {
        plan,
        plans_listed: 1,
    };
    let name = good.structures[0].descriptor.as_ref().unwrap().name.clone();

    type Edit = Box<dyn Fn(&mut pb::AnatomyData)>;
    let cases: Vec<(&str, Edit, Option<&str>)> = vec![
        (
            "infinite coordinate",
            Box::new(|d| mesh(d).vertices_mm[4] = f64::INFINITY),
            Some("vertex 1"),
        ),
        (
            "empty mesh",
            Box::new(|d| {
                mesh(d).vertices_mm.clear();
                mesh(d).triangles.clear();
            }),
            None,
        ),
        (
            "index out of range",
            Box::new(|d| mesh(d).triangles[7] = 10_000_000),
            None,
        ),
        (
            "repeated-vertex triangle",
            Box::new(|d| {
                let m = mesh(d);
                m.triangles[1] = m.triangles[0];
            }),
            None,
        ),
        (
            "zero-area triangle",
            Box::new(|d| {
                // Three distinct collinear vertices, appended as a triangle.
                let m = mesh(d);
                let n = (m.vertices_mm.len() / 3) as u32;
                m.vertices_mm
                    .extend_from_slice(&[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
                m.triangles.extend_from_slice(&[n, n + 1, n + 2]);
            }),
            None,
        ),
        (
            "open mesh",
            Box::new(|d| {
                let m = mesh(d);
                m.triangles.truncate(m.triangles.len() - 3);
            }),
            None,
        ),
        (
            "coordinates in metres",
            Box::new(|d| {
                for structure in &mut d.structures {
                    let m = structure.mesh.as_mut().unwrap();
                    m.vertices_mm.iter_mut().for_each(|v| *v *= 0.001);
                }
            }),
            Some("metres"),
        ),
    ];
    for (case, edit, says) in cases {
        let mut data = good.clone();
        edit(&mut data);
        let status = refused(upload(&mut raw, &data).await, Code::InvalidArgument, case);
        assert_eq!(fields(&status), vec![name.clone()], "{case}: {status:?}");
        if let Some(s) = says {
            assert!(status.message().contains(s), "{case}: {status:?}");
        }
        unchanged(&mut raw, &base, case).await;
    }

    // Inward winding: the planner fixes it and the anatomy says so.
    let mut inward = good.clone();
    for t in mesh(&mut inward).triangles.chunks_mut(3) {
        t.swap(1, 2);
    }
    let fixed = upload(&mut raw, &inward).await.unwrap();
    assert_eq!(fixed.mesh_fixes.len(), 1, "{fixed:?}");

    // Descriptor faults.
    let mut unknown_level = good.clone();
    unknown_level.structures[0]
        .descriptor
        .as_mut()
        .unwrap()
        .level = 999;
    let status = refused(
        upload(&mut raw, &unknown_level).await,
        Code::InvalidArgument,
        "unknown level",
    );
    assert_eq!(fields(&status), vec!["header.structures[0].level"]);

    let mut duplicate = good.clone();
    let mut second = duplicate.structures[0].clone();
    second.descriptor.as_mut().unwrap().name = "again.stl".into();
    duplicate.structures.push(second);
    let status = refused(
        upload(&mut raw, &duplicate).await,
        Code::InvalidArgument,
        "duplicate level",
    );
    assert!(status.message().contains("more than one"), "{status:?}");

    let mut sideless = good.clone();
    let mut root = sideless.structures[0].clone();
    *root.descriptor.as_mut().unwrap() = pb::StructureDescriptor {
        role: pb::Role::NerveRoot as i32,
        level: pb::Level::L3 as i32,
        side: pb::Side::Unspecified as i32,
        name: "root.stl".into(),
    };
    sideless.structures.push(root);
    let status = refused(
        upload(&mut raw, &sideless).await,
        Code::InvalidArgument,
        "nerve root without side",
    );
    assert_eq!(
        fields(&status)[0],
        "header.structures[1].side",
        "{status:?}"
    );
    unchanged(&mut raw, &base, "descriptors").await;

    // Still serving: a valid plan works.
    raw.create_plan(plan_message(pb::create_plan_request::Anatomy::AnatomyId(
        stored.anatomy_id.clone(),
    )))
    .await
    .unwrap();
}

/// Request faults: margins, instrument sizes, levels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_requests_are_refused_naming_the_field() {
    let (_server, mut raw) = start().await;
    let stored = upload(&mut raw, &l3()).await.unwrap();
    let id = || pb::create_plan_request::Anatomy::AnatomyId(stored.anatomy_id.clone());
    let plan = raw
        .create_plan(plan_message(id()))
        .await
        .unwrap()
        .into_inner();
    let base = Baseline {
        plan,
        plans_listed: 1,
    };

    let instrument = |cannula: f64| pb::InstrumentOptions {
        cannula_outer_diameter_mm: Some(cannula),
        ..Default::default()
    };
    let safety = |cortex: f64| pb::SafetyOptions {
        cortex_margin_mm: Some(cortex),
        ..Default::default()
    };
    let cases: Vec<(&str, pb::CreatePlanRequest, &str)> = vec![
        (
            "negative cortex margin",
            pb::CreatePlanRequest {
                safety: Some(safety(-0.5)),
                ..plan_message(id())
            },
            "safety.cortex_margin_mm",
        ),
        (
            "absurd cortex margin",
            pb::CreatePlanRequest {
                safety: Some(safety(1e9)),
                ..plan_message(id())
            },
            "safety.cortex_margin_mm",
        ),
        (
            "NaN cortex margin",
            pb::CreatePlanRequest {
                safety: Some(safety(f64::NAN)),
                ..plan_message(id())
            },
            "safety.cortex_margin_mm",
        ),
        (
            "zero cannula",
            pb::CreatePlanRequest {
                instrument: Some(instrument(0.0)),
                ..plan_message(id())
            },
            "instrument.cannula_outer_diameter_mm",
        ),
        (
            "negative cannula",
            pb::CreatePlanRequest {
                instrument: Some(instrument(-3.0)),
                ..plan_message(id())
            },
            "instrument.cannula_outer_diameter_mm",
        ),
        (
            "cannula wider than a vertebral body",
            pb::CreatePlanRequest {
                instrument: Some(instrument(60.0)),
                ..plan_message(id())
            },
            "instrument.cannula_outer_diameter_mm",
        ),
        (
            "infinite cannula",
            pb::CreatePlanRequest {
                instrument: Some(instrument(f64::INFINITY)),
                ..plan_message(id())
            },
            "instrument.cannula_outer_diameter_mm",
        ),
        (
            "duplicate levels",
            pb::CreatePlanRequest {
                levels: vec![pb::Level::L3 as i32, pb::Level::L3 as i32],
                ..plan_message(id())
            },
            "levels",
        ),
        (
            "unknown level value",
            pb::CreatePlanRequest {
                levels: vec![4242],
                ..plan_message(id())
            },
            "levels[0]",
        ),
    ];
    for (case, message, field) in cases {
        let status = refused(raw.create_plan(message).await, Code::InvalidArgument, case);
        assert_eq!(
            fields(&status),
            vec![field.to_owned()],
            "{case}: {status:?}"
        );
        unchanged(&mut raw, &base, case).await;
    }

    // Zero margins are allowed (the surgeon's call), and the widest accepted cannula gives an
    // answer: an infeasible side is an answer, not an error.
    let zero = pb::CreatePlanRequest {
        safety: Some(pb::SafetyOptions {
            cortex_margin_mm: Some(0.0),
            canal_margin_mm: Some(0.0),
            nerve_root_margin_mm: Some(0.0),
            max_entry_incidence_deg: None,
            navigation_error_mm: None,
            navigation_error_deg: None,
        }),
        ..plan_message(id())
    };
    raw.create_plan(zero).await.unwrap();
    let wide = pb::CreatePlanRequest {
        instrument: Some(instrument(8.0)),
        ..plan_message(id())
    };
    let wide = raw.create_plan(wide).await.unwrap().into_inner();
    for side in wide.levels.iter().flat_map(|l| &l.sides) {
        assert!(
            !side.feasible,
            "an 8 mm cannula fits an L3 pedicle? {side:?}"
        );
        assert!(!side.reasons.is_empty());
    }
}

/// A codec that sends raw bytes as the request and decodes the answer as `pb::Plan`.
#[derive(Default)]
struct RawBytes;

struct RawEncoder;
struct PlanDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PlanDecoder {
    type Item = pb::Plan;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::Plan>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        prost::Message::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = pb::Plan;
    type Encoder = RawEncoder;
    type Decoder = PlanDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> PlanDecoder {
        PlanDecoder
    }
}

async fn send_raw(addr: SocketAddr, bytes: Vec<u8>) -> Result<pb::Plan, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/kyphoplan.v1.PlanningService/CreatePlan",
    );
    grpc.unary(tonic::Request::new(bytes), path, RawBytes)
        .await
        .map(|r| r.into_inner())
}

/// Bytes that are not the message they claim to be, and messages over the size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_refused_and_the_server_goes_on() {
    let (server, mut raw) = start().await;
    let stored = upload(&mut raw, &l3()).await.unwrap();
    let id = pb::create_plan_request::Anatomy::AnatomyId(stored.anatomy_id.clone());
    let good = prost::Message::encode_to_vec(&plan_message(id.clone()));
    let plan = raw
        .create_plan(plan_message(id.clone()))
        .await
        .unwrap()
        .into_inner();
    let base = Baseline {
        plan,
        plans_listed: 1,
    };

    // The raw codec itself works: the good bytes make a plan.
    send_raw(server.addr(), good.clone()).await.unwrap();
    let base = Baseline {
        plans_listed: base.plans_listed + 1,
        ..base
    };

    // A request that does not decode is the client's fault: INVALID_ARGUMENT naming the message
    // type, answered by the service's codec before the handler; nothing runs, nothing is stored,
    // and the server goes on.
    let truncated = good[..good.len() / 2].to_vec();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    // anatomy_id (field 1, a string) sent as a varint; levels (field 3) as a fixed32.
    let varint_for_string = vec![0x08, 0x01];
    let fixed32_for_enum = vec![0x1d, 0x01, 0x00, 0x00, 0x00];
    // Wire type 7 does not exist.
    let no_such_wire_type = vec![0x0f, 0x00];
    let huge_declared_length = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01];
    for (case, bytes) in [
        ("truncated", truncated),
        ("garbage", garbage),
        ("wrong wire type (varint for a string)", varint_for_string),
        ("wrong wire type (fixed32 for an enum)", fixed32_for_enum),
        ("no such wire type", no_such_wire_type),
        ("huge declared length", huge_declared_length),
    ] {
        let status = refused(
            send_raw(server.addr(), bytes).await,
            Code::InvalidArgument,
            case,
        );
        assert!(
            status
                .message()
                .starts_with("malformed kyphoplan.v1.CreatePlanRequest message: "),
            "{case}: {status:?}"
        );
        unchanged(&mut raw, &base, case).await;
        // A valid request right after is served.
        raw.get_plan(pb::GetPlanRequest {
            plan_id: base.plan.plan_id.clone(),
        })
        .await
        .unwrap_or_else(|s| panic!("{case}: not served afterwards: {s:?}"));
    }
    // A valid request in raw bytes still makes a plan.
    send_raw(server.addr(), good.clone()).await.unwrap();
    let base = Baseline {
        plans_listed: base.plans_listed + 1,
        ..base
    };

    // A unary message over --max-message-bytes: OUT_OF_RANGE from tonic.
    let mut big = vec![0u8; MAX_MESSAGE_BYTES + 1024];
    big[..good.len()].copy_from_slice(&good);
    let status = refused(
        send_raw(server.addr(), big).await,
        Code::OutOfRange,
        "oversized unary",
    );
    assert!(status.message().contains("too large"), "{status:?}");
    unchanged(&mut raw, &base, "oversized unary").await;

    // An upload chunk over the limit: RESOURCE_EXHAUSTED.
    let mut data = l3();
    let mesh = data.structures[0].mesh.as_mut().unwrap();
    let copy = mesh.vertices_mm.clone();
    while mesh.vertices_mm.len() * 8 < MAX_MESSAGE_BYTES + 1024 {
        mesh.vertices_mm.extend_from_slice(&copy);
    }
    let status = refused(
        upload(&mut raw, &data).await,
        Code::ResourceExhausted,
        "oversized chunk",
    );
    assert!(!status.message().is_empty());
    unchanged(&mut raw, &base, "oversized chunk").await;

    // Still serving.
    raw.create_plan(plan_message(id)).await.unwrap();
}

/// A client streaming a 50-million-triangle mesh is stopped as soon as it passes
/// `--max-triangles`, long before the mesh is in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifty_million_triangle_upload_is_refused_early() {
    let (_server, mut raw) = start().await;
    const TRIANGLES: usize = 50_000_000;
    const PER_CHUNK: usize = 60_000;
    let header = pb::UploadAnatomyChunk {
        chunk: Some(pb::upload_anatomy_chunk::Chunk::Header(pb::AnatomyHeader {
            labelmap: None,
            name: "huge".into(),
            frame: pb::Frame::Lps as i32,
            structures: vec![pb::StructureDescriptor {
                role: pb::Role::Forbidden as i32,
                level: 0,
                side: 0,
                name: "huge.stl".into(),
            }],
        })),
    };
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let chunk_triangles: Vec<u32> = (0..PER_CHUNK as u32 * 3).map(|i| i % 3).collect();
    let chunks = futures::stream::iter(0..TRIANGLES / PER_CHUNK).map(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
        pb::UploadAnatomyChunk {
            chunk: Some(pb::upload_anatomy_chunk::Chunk::Mesh(pb::MeshChunk {
                structure_index: 0,
                vertices_mm: vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                triangles: chunk_triangles.clone(),
            })),
        }
    });
    use futures::StreamExt;
    let stream = futures::stream::once(async move { header }).chain(chunks);
    let r = tokio::time::timeout(Duration::from_secs(60), raw.upload_anatomy(stream))
        .await
        .expect("refused within 60 s");
    let status = refused(r, Code::ResourceExhausted, "50 M triangles");
    assert!(status.message().contains("triangles"), "{status:?}");
    let pulled = sent.load(Ordering::Relaxed);
    let total = TRIANGLES / PER_CHUNK;
    assert!(
        pulled < total / 10,
        "the client streamed {pulled} of {total} chunks before the refusal"
    );
    eprintln!("refused after {pulled} of {total} chunks were pulled from the client");
}
