//! End-to-end tests of the gRPC server, started in-process ([`TestServer`]) with a temporary data
//! directory, through the client SDK and the raw generated client.

use kyphoplan_tests::default_request;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use kyphoplan_client::{ClientError, Code};
use kyphoplan_planner::anatomy::{AnatomyInput, Level, Side};
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::planning;
use kyphoplan_planner::prepare::{PrepareOptions, PreparedAnatomy};
use kyphoplan_planner::request::{Instrument, PlanRequest, Safety};
use kyphoplan_planner::synth;
use kyphoplan_proto::convert;
use kyphoplan_proto::pb;
use kyphoplan_tests::server::TestServer;

fn one_level(level: Level) -> AnatomyInput {
    synth::spine(&[level], &Pose::identity(), false).0
}

fn in_process_plan(anatomy: &AnatomyInput, request: &PlanRequest) -> kyphoplan_planner::Plan {
    let prepared = PreparedAnatomy::prepare(anatomy.clone(), &PrepareOptions::standard()).unwrap();
    planning::plan(&prepared, request).unwrap()
}

/// The field violations `(field, description)` of a refusal, as the SDK types them.
fn field_violations(error: &ClientError) -> Vec<(String, String)> {
    match error {
        ClientError::Status {
            field_violations, ..
        } => field_violations
            .iter()
            .map(|v| (v.field.clone(), v.description.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_anatomy_uploaded_twice_has_one_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let anatomy = one_level(Level::L3);
    let first = client.upload_anatomy(&anatomy).await.unwrap();
    let second = client.upload_anatomy(&anatomy).await.unwrap();
    assert_eq!(first.anatomy_id.len(), 64);
    assert_eq!(first.anatomy_id, second.anatomy_id);
    assert_eq!(first, second);
    // The id is the documented content address.
    assert_eq!(
        first.anatomy_id,
        convert::anatomy_id(&convert::anatomy_to_pb(&anatomy))
    );
    let triangles: usize = anatomy
        .structures
        .iter()
        .map(|s| s.mesh.triangles.len())
        .sum();
    assert_eq!(first.total_triangle_count, triangles as u64);
    assert_eq!(first.levels, vec![pb::Level::L3 as i32]);
    assert_eq!(first.frame, pb::Frame::Lps as i32);
    // Prepared once: the second upload found it stored.
    assert_eq!(
        server.metrics().anatomies_prepared.load(Ordering::SeqCst),
        1
    );
    // A different name is a different anatomy.
    let mut renamed = anatomy.clone();
    renamed.name.push_str("-renamed");
    let third = client.upload_anatomy(&renamed).await.unwrap();
    assert_ne!(third.anatomy_id, first.anatomy_id);
    let got = client.get_anatomy(&first.anatomy_id).await.unwrap();
    assert_eq!(got, first);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_by_id_and_inline_match_the_in_process_plan_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let anatomy = one_level(Level::L4);
    let request = default_request(None);
    let expected = kyphoplan_client::plan_json(&in_process_plan(&anatomy, &request));

    let stored = client.upload_anatomy(&anatomy).await.unwrap();
    let by_id = client
        .create_plan(&stored.anatomy_id, &request)
        .await
        .unwrap();
    assert!(!by_id.plan_id.is_empty());
    assert_eq!(by_id.anatomy_id, stored.anatomy_id);
    assert_eq!(kyphoplan_client::plan_json(&by_id.plan), expected);
    assert!(
        !expected.contains(&by_id.plan_id),
        "plan_id is not in the plan JSON"
    );

    let inline = client.create_plan_inline(&anatomy, &request).await.unwrap();
    assert_eq!(kyphoplan_client::plan_json(&inline.plan), expected);
    assert_eq!(inline.anatomy_id, stored.anatomy_id);
    assert_ne!(inline.plan_id, by_id.plan_id);

    let fetched = client.get_plan(&by_id.plan_id).await.unwrap();
    assert_eq!(kyphoplan_client::plan_json(&fetched.plan), expected);

    let list = server
        .raw()
        .await
        .list_plans(pb::ListPlansRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.plans.len(), 1);
    assert!(!list.next_page_token.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_plan_reports_every_level_then_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let anatomy = synth::spine(&[Level::L3, Level::L4, Level::L5], &Pose::identity(), false).0;
    let request = default_request(None);
    let stored = client.upload_anatomy(&anatomy).await.unwrap();

    let message = convert::create_plan_request_to_pb(
        pb::create_plan_request::Anatomy::AnatomyId(stored.anatomy_id.clone()),
        &request,
    );
    let mut stream = server
        .raw()
        .await
        .stream_plan(message)
        .await
        .unwrap()
        .into_inner();
    let mut done = Vec::new();
    let mut levels = Vec::new();
    let mut plan = None;
    while let Some(progress) = stream.next().await {
        let progress = progress.unwrap();
        assert!(plan.is_none(), "the plan is the last message");
        assert_eq!(progress.levels_total, 3);
        match progress.event.unwrap() {
            pb::plan_progress::Event::Level(l) => {
                done.push(progress.levels_done);
                levels.push(l.level);
            }
            pb::plan_progress::Event::Plan(p) => plan = Some(p),
        }
    }
    assert_eq!(done, vec![1, 2, 3]);
    levels.sort();
    assert_eq!(
        levels,
        vec![
            pb::Level::L3 as i32,
            pb::Level::L4 as i32,
            pb::Level::L5 as i32
        ]
    );
    let plan = convert::plan_from_pb(plan.expect("a final plan")).unwrap();
    assert_eq!(
        kyphoplan_client::plan_json(&plan),
        kyphoplan_client::plan_json(&in_process_plan(&anatomy, &request))
    );

    // The SDK's stream gives the same.
    let mut seen = 0;
    let streamed = client
        .stream_plan(&stored.anatomy_id, &request, |_, d, t| {
            seen += 1;
            assert_eq!((d, t), (seen, 3));
        })
        .await
        .unwrap();
    assert_eq!(seen, 3);
    assert_eq!(streamed.plan, plan);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_stream_stops_the_work_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // One planner thread and one planning slot: a run that did not stop would block the next.
    let server = TestServer::start_in(dir.path(), |c| {
        c.planner_threads = 1;
        c.max_concurrent_plans = 1;
    })
    .await;
    let mut client = server.client().await;
    let anatomy = synth::demo_anatomy();
    let stored = client.upload_anatomy(&anatomy).await.unwrap();
    let request = default_request(None);
    let message = convert::create_plan_request_to_pb(
        pb::create_plan_request::Anatomy::AnatomyId(stored.anatomy_id.clone()),
        &request,
    );
    let mut raw = server.raw().await;
    let mut stream = raw.stream_plan(message).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.levels_done, 1);
    assert_eq!(first.levels_total, 5);
    drop(stream);

    // The run stops (cancelled, not completed) soon after.
    let m = server.metrics().clone();
    tokio::time::timeout(Duration::from_secs(20), async {
        while m.plans_cancelled.load(Ordering::SeqCst) == 0
            || m.plans_running.load(Ordering::SeqCst) != 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the cancelled run stops");
    assert_eq!(m.plans_completed.load(Ordering::SeqCst), 0);
    assert_eq!(m.plans_cancelled.load(Ordering::SeqCst), 1);

    // The slot is free again: a new plan works.
    let small = default_request(Some(vec![Level::L4]));
    let plan = client
        .create_plan(&stored.anatomy_id, &small)
        .await
        .unwrap();
    assert_eq!(plan.plan.levels.len(), 1);
    assert_eq!(m.plans_completed.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_stops_the_plan_with_deadline_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |c| c.planner_threads = 1).await;
    let mut client = server.client().await;
    let stored = client.upload_anatomy(&synth::demo_anatomy()).await.unwrap();
    // How long the whole plan takes here (the anatomy prepared and cached by this call), so
    // that the deadline falls in the middle of the run however fast the build is.
    let started = std::time::Instant::now();
    client
        .create_plan(&stored.anatomy_id, &default_request(None))
        .await
        .unwrap();
    let full = started.elapsed();
    let m = server.metrics().clone();
    assert_eq!(m.plans_completed.load(Ordering::SeqCst), 1);
    let message = convert::create_plan_request_to_pb(
        pb::create_plan_request::Anatomy::AnatomyId(stored.anatomy_id.clone()),
        &default_request(None),
    );
    let mut request = tonic::Request::new(message);
    request.set_timeout((full * 3 / 10).max(Duration::from_millis(5)));
    let status = server.raw().await.create_plan(request).await.unwrap_err();
    let status = ClientError::from(status);
    // The server answers DEADLINE_EXCEEDED just before the deadline (`service::DEADLINE_LEAD`,
    // counted from the call's arrival). The tonic client runs its own timer on the same
    // `grpc-timeout`, started when it sent the call, and reports it as CANCELLED "Timeout
    // expired"; under CI's load the answer can reach it after that timer (seen in a fresh-clone
    // CI run). Either way the server's run must stop, which is what follows.
    let client_timer = status.code() == Some(Code::Cancelled)
        && matches!(&status, ClientError::Status { message, .. } if message == "Timeout expired");
    assert!(
        status.code() == Some(Code::DeadlineExceeded) || client_timer,
        "{status:?}"
    );
    tokio::time::timeout(Duration::from_secs(20), async {
        while m.plans_running.load(Ordering::SeqCst) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the run stops");
    assert_eq!(
        m.plans_completed.load(Ordering::SeqCst),
        1,
        "the late run completed"
    );
    server.shutdown().await;
}

/// A plan of an inline anatomy cancelled while the anatomy is being prepared stops the
/// preparation too (nothing is cached), and the next call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_plan_during_preparation_stops_the_preparation() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |c| c.planner_threads = 1).await;
    let message = convert::create_plan_request_to_pb(
        pb::create_plan_request::Anatomy::InlineAnatomy(convert::anatomy_to_pb(
            &synth::demo_anatomy(),
        )),
        &default_request(None),
    );
    let mut raw = server.raw().await;
    let call = tokio::spawn(async move { raw.create_plan(message).await });
    let m = server.metrics().clone();
    tokio::time::timeout(Duration::from_secs(20), async {
        while m.prepares_running.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the preparation starts");
    call.abort();
    tokio::time::timeout(Duration::from_secs(20), async {
        while m.prepares_running.load(Ordering::SeqCst) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the cancelled preparation stops");
    assert_eq!(m.prepares_cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(m.anatomies_prepared.load(Ordering::SeqCst), 0);
    assert_eq!(m.plans_completed.load(Ordering::SeqCst), 0);

    // Still serving: a one-level anatomy plans.
    let mut client = server.client().await;
    let stored = client.upload_anatomy(&one_level(Level::L4)).await.unwrap();
    client
        .create_plan(&stored.anatomy_id, &default_request(None))
        .await
        .unwrap();
    assert_eq!(m.plans_completed.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_matches_the_in_process_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let anatomy = one_level(Level::L4);
    let request = default_request(None);
    let plan = in_process_plan(&anatomy, &request);
    let side = plan.levels[0]
        .sides
        .iter()
        .find(|s| s.feasible)
        .expect("a feasible side at L4");
    let t = side.trajectory.as_ref().unwrap();
    let prepared = PreparedAnatomy::prepare(anatomy.clone(), &PrepareOptions::standard()).unwrap();
    let instrument = Instrument::contract_default();
    let safety = Safety::contract_default();
    let expected = planning::evaluate(
        &prepared,
        Level::L4,
        side.side,
        t.bone_entry_mm,
        t.target_mm,
        &instrument,
        &safety,
    )
    .unwrap();
    assert!(expected.safe, "the planned trajectory evaluates safe");

    let stored = client.upload_anatomy(&anatomy).await.unwrap();
    let got = client
        .evaluate(
            &stored.anatomy_id,
            Level::L4,
            side.side,
            t.bone_entry_mm,
            t.target_mm,
            &instrument,
            &safety,
        )
        .await
        .unwrap();
    assert_eq!(got, expected);

    // A trajectory through the canal is unsafe, and says why.
    let other = if side.side == Side::Left {
        Side::Right
    } else {
        Side::Left
    };
    let bad = client
        .evaluate(
            &stored.anatomy_id,
            Level::L4,
            other,
            t.bone_entry_mm,
            t.target_mm,
            &instrument,
            &safety,
        )
        .await
        .unwrap();
    assert!(!bad.safe);
    assert!(!bad.violations.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_and_anatomies_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let anatomy = one_level(Level::L4);
    let request = default_request(None);
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let (anatomy_id, plan) = {
        let mut client = server.client().await;
        let stored = client.upload_anatomy(&anatomy).await.unwrap();
        let plan = client
            .create_plan(&stored.anatomy_id, &request)
            .await
            .unwrap();
        (stored.anatomy_id, plan)
    };
    server.shutdown().await;

    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let fetched = client.get_plan(&plan.plan_id).await.unwrap();
    assert_eq!(fetched.plan, plan.plan);
    assert_eq!(fetched.anatomy_id, anatomy_id);
    assert_eq!(fetched.create_time_unix_ms, plan.create_time_unix_ms);
    let meta = client.get_anatomy(&anatomy_id).await.unwrap();
    assert_eq!(meta.anatomy_id, anatomy_id);
    // The stored anatomy is prepared again from the store and plans the same.
    let again = client.create_plan(&anatomy_id, &request).await.unwrap();
    assert_eq!(again.plan, plan.plan);
    assert_eq!(
        server.metrics().anatomies_prepared.load(Ordering::SeqCst),
        1
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_and_reflection_lists_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", kyphoplan_proto::SERVICE_NAME] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "service '{service}'"
        );
    }

    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("expected a service list, got {msg:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.iter().any(|n| n == kyphoplan_proto::SERVICE_NAME),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );

        // What grpcurl asks before a call: the file that defines the service.
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                kyphoplan_proto::SERVICE_NAME.into(),
            )),
        };
        let mut resp = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.next().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = msg.message_response else {
            panic!("expected a file descriptor, got {msg:?}");
        };
        let file = <prost_types::FileDescriptorProto as prost::Message>::decode(
            files.file_descriptor_proto[0].as_slice(),
        )
        .unwrap();
        assert_eq!(file.package(), "kyphoplan.v1");
        assert!(file.service.iter().any(|s| s.name() == "PlanningService"));
    }
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("expected a service list, got {msg:?}");
        };
        assert!(list
            .service
            .iter()
            .any(|s| s.name == kyphoplan_proto::SERVICE_NAME));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_their_status_codes_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |c| c.max_triangles = 60_000).await;
    let mut client = server.client().await;
    let anatomy = one_level(Level::L3);
    let name = anatomy.structures[0].name.clone();

    // NaN vertex: INVALID_ARGUMENT naming the structure.
    let mut nan = anatomy.clone();
    nan.structures[0].mesh.vertices_mm[5].y = f64::NAN;
    let Err(status) = client.upload_anatomy(&nan).await else {
        panic!("a NaN vertex is refused");
    };
    assert_eq!(status.code(), Some(Code::InvalidArgument));
    let violations = field_violations(&status);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].0, name);
    assert!(violations[0].1.contains("vertex 5"), "{violations:?}");

    // Unknown plan: NOT_FOUND.
    let Err(status) = client.get_plan("no-such-plan").await else {
        panic!("an unknown plan is not found");
    };
    assert_eq!(status.code(), Some(Code::NotFound));
    // Unknown anatomy: NOT_FOUND too.
    let Err(status) = client
        .create_plan(&"0".repeat(64), &default_request(None))
        .await
    else {
        panic!("an unknown anatomy is not found");
    };
    assert_eq!(status.code(), Some(Code::NotFound));

    // Negative margin: INVALID_ARGUMENT naming safety.canal_margin_mm.
    let stored = client.upload_anatomy(&anatomy).await.unwrap();
    let mut raw = server.raw().await;
    let status: ClientError = raw
        .create_plan(pb::CreatePlanRequest {
            anatomy: Some(pb::create_plan_request::Anatomy::AnatomyId(
                stored.anatomy_id.clone(),
            )),
            levels: vec![],
            instrument: None,
            safety: Some(pb::SafetyOptions {
                cortex_margin_mm: None,
                canal_margin_mm: Some(-1.0),
                nerve_root_margin_mm: None,
                max_entry_incidence_deg: None,
                navigation_error_mm: None,
                navigation_error_deg: None,
            }),
            procedure: 0,
            approaches: vec![],
            cannula_alternatives_mm: vec![],
            request_id: String::new(),
        })
        .await
        .unwrap_err()
        .into();
    assert_eq!(status.code(), Some(Code::InvalidArgument));
    assert_eq!(field_violations(&status)[0].0, "safety.canal_margin_mm");

    // Unspecified level in a request: INVALID_ARGUMENT naming levels[0].
    let status: ClientError = raw
        .create_plan(pb::CreatePlanRequest {
            anatomy: Some(pb::create_plan_request::Anatomy::AnatomyId(
                stored.anatomy_id.clone(),
            )),
            levels: vec![pb::Level::Unspecified as i32],
            instrument: None,
            safety: None,
            procedure: 0,
            approaches: vec![],
            cannula_alternatives_mm: vec![],
            request_id: String::new(),
        })
        .await
        .unwrap_err()
        .into();
    assert_eq!(status.code(), Some(Code::InvalidArgument));
    assert_eq!(field_violations(&status)[0].0, "levels[0]");

    // A level the anatomy does not have.
    let status: ClientError = raw
        .create_plan(pb::CreatePlanRequest {
            anatomy: Some(pb::create_plan_request::Anatomy::AnatomyId(
                stored.anatomy_id.clone(),
            )),
            levels: vec![pb::Level::T4 as i32],
            instrument: None,
            safety: None,
            procedure: 0,
            approaches: vec![],
            cannula_alternatives_mm: vec![],
            request_id: String::new(),
        })
        .await
        .unwrap_err()
        .into();
    assert_eq!(status.code(), Some(Code::InvalidArgument));
    assert_eq!(field_violations(&status)[0].0, "levels");

    // An approach listed twice: INVALID_ARGUMENT naming approaches[1].
    let status: ClientError = raw
        .create_plan(pb::CreatePlanRequest {
            anatomy: Some(pb::create_plan_request::Anatomy::AnatomyId(
                stored.anatomy_id.clone(),
            )),
            levels: vec![],
            instrument: None,
            safety: None,
            procedure: pb::Procedure::Vertebroplasty as i32,
            approaches: vec![pb::Approach::Unipedicular as i32; 2],
            cannula_alternatives_mm: vec![],
            request_id: String::new(),
        })
        .await
        .unwrap_err()
        .into();
    assert_eq!(status.code(), Some(Code::InvalidArgument));
    assert_eq!(field_violations(&status)[0].0, "approaches[1]");

    // Unspecified frame in the upload header.
    let header = pb::UploadAnatomyChunk {
        chunk: Some(pb::upload_anatomy_chunk::Chunk::Header(pb::AnatomyHeader {
            labelmap: None,
            name: "x".into(),
            frame: pb::Frame::Unspecified as i32,
            structures: vec![],
        })),
    };
    let status: ClientError = raw
        .upload_anatomy(tokio_stream::iter(vec![header]))
        .await
        .unwrap_err()
        .into();
    assert_eq!(status.code(), Some(Code::InvalidArgument));
    assert_eq!(field_violations(&status)[0].0, "header.frame");

    // Too many triangles: RESOURCE_EXHAUSTED, for uploads and inline anatomies.
    let big = synth::demo_anatomy();
    let Err(status) = client.upload_anatomy(&big).await else {
        panic!("an anatomy over the triangle limit is refused");
    };
    assert_eq!(status.code(), Some(Code::ResourceExhausted), "{status:?}");
    let Err(status) = client
        .create_plan_inline(&big, &default_request(None))
        .await
    else {
        panic!("an inline anatomy over the triangle limit is refused");
    };
    assert_eq!(status.code(), Some(Code::ResourceExhausted), "{status:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_planning_slots_answer_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |c| {
        c.planner_threads = 1;
        c.max_concurrent_plans = 1;
    })
    .await;
    let mut client = server.client().await;
    let stored = client.upload_anatomy(&synth::demo_anatomy()).await.unwrap();
    let message = convert::create_plan_request_to_pb(
        pb::create_plan_request::Anatomy::AnatomyId(stored.anatomy_id.clone()),
        &default_request(None),
    );
    let mut raw = server.raw().await;
    let mut stream = raw.stream_plan(message).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.levels_done, 1);
    let Err(status) = client
        .create_plan(&stored.anatomy_id, &default_request(Some(vec![Level::L4])))
        .await
    else {
        panic!("a second plan while the only slot is busy is refused");
    };
    assert_eq!(status.code(), Some(Code::ResourceExhausted), "{status:?}");
    drop(stream);
    server.shutdown().await;
}

/// How an upload is chunked does not change the anatomy or its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunking_does_not_change_the_anatomy_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let anatomy = synth::spine(&[Level::L3, Level::L4], &Pose::identity(), true).0;
    let sdk = client.upload_anatomy(&anatomy).await.unwrap();

    // Small chunks, vertices-only and triangles-only, structures interleaved back to front.
    let data = convert::anatomy_to_pb(&anatomy);
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
    let mut per_structure: Vec<Vec<pb::MeshChunk>> = data
        .structures
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mesh = s.mesh.as_ref().unwrap();
            let mut out = Vec::new();
            for v in mesh.vertices_mm.chunks(3 * 777) {
                out.push(pb::MeshChunk {
                    structure_index: i as u32,
                    vertices_mm: v.to_vec(),
                    triangles: vec![],
                });
            }
            for t in mesh.triangles.chunks(3 * 1001) {
                out.push(pb::MeshChunk {
                    structure_index: i as u32,
                    vertices_mm: vec![],
                    triangles: t.to_vec(),
                });
            }
            out.reverse();
            out
        })
        .collect();
    loop {
        let mut any = false;
        for s in per_structure.iter_mut().rev() {
            if let Some(c) = s.pop() {
                any = true;
                chunks.push(pb::UploadAnatomyChunk {
                    chunk: Some(pb::upload_anatomy_chunk::Chunk::Mesh(c)),
                });
            }
        }
        if !any {
            break;
        }
    }
    assert!(chunks.len() > 20);
    let raw = server
        .raw()
        .await
        .upload_anatomy(tokio_stream::iter(chunks))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raw.anatomy_id, sdk.anatomy_id);
    assert_eq!(raw, sdk);
    server.shutdown().await;
}

/// A UV sphere of `2 * segments * (rings - 1)` outward-wound triangles.
fn sphere(
    center: [f64; 3],
    radius_mm: f64,
    rings: usize,
    segments: usize,
) -> kyphoplan_planner::TriMesh {
    use kyphoplan_planner::math::Point;
    let mut v = vec![Point::new(center[0], center[1], center[2] + radius_mm)];
    for i in 1..rings {
        let theta = std::f64::consts::PI * i as f64 / rings as f64;
        for j in 0..segments {
            let phi = 2.0 * std::f64::consts::PI * j as f64 / segments as f64;
            v.push(Point::new(
                center[0] + radius_mm * theta.sin() * phi.cos(),
                center[1] + radius_mm * theta.sin() * phi.sin(),
                center[2] + radius_mm * theta.cos(),
            ));
        }
    }
    v.push(Point::new(center[0], center[1], center[2] - radius_mm));
    let south = (v.len() - 1) as u32;
    let at = |i: usize, j: usize| (1 + (i - 1) * segments + j % segments) as u32;
    let mut t = Vec::new();
    for j in 0..segments {
        t.push([0, at(1, j), at(1, j + 1)]);
        t.push([at(rings - 1, j), south, at(rings - 1, j + 1)]);
    }
    for i in 1..rings - 1 {
        for j in 0..segments {
            t.push([at(i, j), at(i + 1, j), at(i + 1, j + 1)]);
            t.push([at(i, j), at(i + 1, j + 1), at(i, j + 1)]);
        }
    }
    kyphoplan_planner::TriMesh::new(v, t)
}

/// An anatomy far over the 16 MiB message limit gets through in chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_larger_than_one_message_gets_through_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let mut anatomy = one_level(Level::L4);
    anatomy.structures.push(kyphoplan_planner::Structure {
        name: "aorta-ish.stl".into(),
        role: kyphoplan_planner::Role::Forbidden,
        mesh: sphere([0.0, -250.0, 0.0], 20.0, 501, 1000),
    });
    let data = convert::anatomy_to_pb(&anatomy);
    let encoded_len = prost::Message::encoded_len(&data);
    assert!(encoded_len > 16 << 20, "{encoded_len} bytes");
    let stored = client.upload_anatomy(&anatomy).await.unwrap();
    assert_eq!(stored.anatomy_id, convert::anatomy_id(&data));
    let triangles: usize = anatomy
        .structures
        .iter()
        .map(|s| s.mesh.triangles.len())
        .sum();
    assert_eq!(stored.total_triangle_count, triangles as u64);
    assert!(triangles > 1_000_000);
    server.shutdown().await;
}

/// Issue 15 leftover through the server: a kyphoplasty request for a 13 G (2.4 mm) cannula of
/// its own with an 11 G (3.05 mm) alternative, larger than the requested one, is accepted; each
/// side states the refused 2.4 mm attempt (`CANNULA_TOO_SMALL_FOR_BALLOON`, value 2.4 mm,
/// limit 2.9 mm) and is planned with 3.05 mm, as in-process, JSON for JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kyphoplasty_cannula_too_small_for_a_balloon_falls_back_through_the_server() {
    use kyphoplan_planner::plan::ReasonCode;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let anatomy = one_level(Level::L3);
    let request = PlanRequest::new(
        None,
        Instrument {
            cannula_outer_diameter_mm: 2.4,
            ..Instrument::contract_default()
        },
        Safety::contract_default(),
    )
    .unwrap()
    .with_cannula_alternatives(vec![3.05])
    .unwrap();
    let expected = in_process_plan(&anatomy, &request);
    let got = client.create_plan_inline(&anatomy, &request).await.unwrap();
    assert_eq!(
        kyphoplan_client::plan_json(&got.plan),
        kyphoplan_client::plan_json(&expected)
    );
    for s in &got.plan.levels[0].sides {
        assert!(s.feasible, "{}: {:?}", s.side, s.reasons);
        assert_eq!(
            s.trajectory.as_ref().unwrap().cannula_outer_diameter_mm,
            3.05
        );
        let first = &s.attempts[0];
        assert_eq!(
            (first.cannula_outer_diameter_mm, first.feasible),
            (2.4, false)
        );
        let r = &first.reasons[0];
        assert_eq!(r.code, ReasonCode::CannulaTooSmallForBalloon);
        assert_eq!((r.value_mm, r.limit_mm), (Some(2.4), Some(2.9)));
    }
    server.shutdown().await;
}
