//! Patient data lifecycle (issue 17): delete (owner only, idempotent, cascade, shared
//! anatomies), records that stay gone after a restart, deleted bytes that leave the data
//! directory, retention driven by an injected clock, and the audit trail line by line.

use kyphoplan_tests::{code_of, default_request};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kyphoplan_client::{Client, ClientError, Code, ConnectOptions};
use kyphoplan_planner::anatomy::{AnatomyInput, Level, Side};
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::request::{Instrument, Safety};
use kyphoplan_planner::synth;
use kyphoplan_proto::pb;
use kyphoplan_server::clock::ManualClock;
use kyphoplan_server::{Config, InProcessServer, Metrics};
use kyphoplan_tests::server::TestServer;
use serde_json::Value;

const DAY_MS: u64 = 24 * 3600 * 1000;

fn one_level(level: Level, name: &str) -> AnatomyInput {
    let mut anatomy = synth::spine(&[level], &Pose::identity(), false).0;
    anatomy.name = name.to_owned();
    anatomy
}

fn token(tag: &str) -> String {
    format!("{tag}-lifecycle-test-SECRETTOKEN-{}", std::process::id())
}

/// A token file with alice and bob; their tokens.
fn alice_and_bob(dir: &Path) -> (std::path::PathBuf, String, String) {
    let (a, b) = (token("a"), token("b"));
    let path = dir.join("tokens");
    std::fs::write(&path, format!("alice:{a}\nbob:{b}\n")).unwrap();
    (path, a, b)
}

async fn client_with(url: &str, token: &str) -> Client {
    let options = ConnectOptions {
        token: Some(token.to_owned()),
        ..ConnectOptions::default()
    };
    Client::connect_with(url, &options).await.unwrap()
}

/// The raw status code of a DeletePlan (the SDK maps NOT_FOUND to `Ok(false)`).
async fn raw_delete_plan_code(client: &mut Client, plan_id: &str) -> tonic::Code {
    let request = client.request(pb::DeletePlanRequest {
        plan_id: plan_id.to_owned(),
    });
    match client.raw().delete_plan(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

/// Whether any file under `dir` holds `needle`.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let path = e.unwrap().path();
        if path.is_dir() {
            return dir_contains(&path, needle);
        }
        let bytes = std::fs::read(&path).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

/// The first four vertices of the first mesh as the packed little-endian doubles the store
/// keeps: a 96-byte pattern of this anatomy's geometry.
fn mesh_marker(anatomy: &AnatomyInput) -> Vec<u8> {
    anatomy.structures[0].mesh.vertices_mm[..4]
        .iter()
        .flat_map(|p| [p.x, p.y, p.z])
        .flat_map(f64::to_le_bytes)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_for_the_owner_idempotent_and_refused_while_plans_remain_unless_cascaded() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, a, b) = alice_and_bob(dir.path());
    let server = TestServer::start(|c| c.token_file = Some(tokens)).await;
    let mut alice = client_with(&server.url(), &a).await;
    let mut bob = client_with(&server.url(), &b).await;

    let stored = alice
        .upload_anatomy(&one_level(Level::L3, "delete-case"))
        .await
        .unwrap();
    let p1 = alice
        .create_plan(&stored.anatomy_id, &default_request(None))
        .await
        .unwrap();
    let p2 = alice
        .create_plan(&stored.anatomy_id, &default_request(None))
        .await
        .unwrap();

    // Another principal: NOT_FOUND, as for reads, and nothing is deleted.
    assert_eq!(
        raw_delete_plan_code(&mut bob, &p1.plan_id).await,
        tonic::Code::NotFound
    );
    assert!(!bob.delete_plan(&p1.plan_id).await.unwrap());
    assert_eq!(
        bob.delete_anatomy(&stored.anatomy_id, true).await.unwrap(),
        None
    );
    alice.get_plan(&p1.plan_id).await.unwrap();
    alice.get_plan(&p2.plan_id).await.unwrap();
    alice.get_anatomy(&stored.anatomy_id).await.unwrap();

    // Plans remain: refused, naming how many; nothing deleted.
    match alice.delete_anatomy(&stored.anatomy_id, false).await {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, Code::FailedPrecondition);
            assert!(message.contains("2 plan(s)"), "{message}");
        }
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    alice.get_plan(&p1.plan_id).await.unwrap();

    // The owner deletes a plan; twice is idempotent (NOT_FOUND, nothing changes).
    assert!(alice.delete_plan(&p1.plan_id).await.unwrap());
    assert_eq!(code_of(alice.get_plan(&p1.plan_id).await), Code::NotFound);
    assert!(!alice.delete_plan(&p1.plan_id).await.unwrap());
    assert_eq!(
        raw_delete_plan_code(&mut alice, &p1.plan_id).await,
        tonic::Code::NotFound
    );
    alice.get_plan(&p2.plan_id).await.unwrap();
    match alice.delete_anatomy(&stored.anatomy_id, false).await {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, Code::FailedPrecondition);
            assert!(message.contains("1 plan(s)"), "{message}");
        }
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }

    // Cascade: the anatomy and its remaining plan go together.
    let deleted = alice
        .delete_anatomy(&stored.anatomy_id, true)
        .await
        .unwrap()
        .expect("deleted");
    assert_eq!(deleted.deleted_plan_ids, vec![p2.plan_id.clone()]);
    assert!(deleted.data_removed);
    assert_eq!(code_of(alice.get_plan(&p2.plan_id).await), Code::NotFound);
    assert_eq!(
        code_of(alice.get_anatomy(&stored.anatomy_id).await),
        Code::NotFound
    );
    assert_eq!(
        code_of(
            alice
                .create_plan(&stored.anatomy_id, &default_request(None))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        alice
            .delete_anatomy(&stored.anatomy_id, true)
            .await
            .unwrap(),
        None
    );
    assert!(alice.list_plans(0, "").await.unwrap().plans.is_empty());
    // An empty id is bad input naming the field.
    match alice.delete_anatomy("", false).await {
        Err(ClientError::Status {
            code,
            field_violations,
            ..
        }) => {
            assert_eq!(code, Code::InvalidArgument);
            assert_eq!(field_violations[0].field, "anatomy_id");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_anatomy_goes_with_its_last_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, a, b) = alice_and_bob(dir.path());
    let server = TestServer::start(|c| c.token_file = Some(tokens)).await;
    let mut alice = client_with(&server.url(), &a).await;
    let mut bob = client_with(&server.url(), &b).await;
    let anatomy = one_level(Level::L2, "shared-case");

    let id = alice.upload_anatomy(&anatomy).await.unwrap().anatomy_id;
    assert_eq!(bob.upload_anatomy(&anatomy).await.unwrap().anatomy_id, id);
    let bobs_plan = bob.create_plan(&id, &default_request(None)).await.unwrap();

    // Alice (no plans of hers) gives up her ownership; bob keeps the anatomy and his plan.
    let r = alice.delete_anatomy(&id, false).await.unwrap().unwrap();
    assert!(!r.data_removed);
    assert!(r.deleted_plan_ids.is_empty());
    assert_eq!(code_of(alice.get_anatomy(&id).await), Code::NotFound);
    bob.get_anatomy(&id).await.unwrap();
    bob.get_plan(&bobs_plan.plan_id).await.unwrap();
    bob.create_plan(&id, &default_request(None)).await.unwrap();

    // Bob is the last owner: his plans refuse the delete, cascade takes them and the data.
    assert_eq!(
        code_of(bob.delete_anatomy(&id, false).await),
        Code::FailedPrecondition
    );
    let r = bob.delete_anatomy(&id, true).await.unwrap().unwrap();
    assert!(r.data_removed);
    assert_eq!(r.deleted_plan_ids.len(), 2);
    assert!(r.deleted_plan_ids.contains(&bobs_plan.plan_id));
    assert_eq!(code_of(bob.get_anatomy(&id).await), Code::NotFound);
    assert!(bob.list_plans(0, "").await.unwrap().plans.is_empty());

    // Uploading it again stores it again.
    assert_eq!(alice.upload_anatomy(&anatomy).await.unwrap().anatomy_id, id);
    alice
        .create_plan(&id, &default_request(None))
        .await
        .unwrap();
    assert_eq!(code_of(bob.get_anatomy(&id).await), Code::NotFound);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_records_stay_gone_after_a_restart_and_their_bytes_leave_the_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let gone_name = "MARKER-patient-0123456789-MARKER";
    let gone = one_level(Level::L4, gone_name);
    let kept = one_level(Level::L1, "kept-case");
    let marker = mesh_marker(&gone);

    let server = TestServer::start_in(data.path(), |_| {}).await;
    let mut client = server.client().await;
    let gone_id = client.upload_anatomy(&gone).await.unwrap().anatomy_id;
    let gone_plan = client
        .create_plan(&gone_id, &default_request(None))
        .await
        .unwrap();
    let kept_id = client.upload_anatomy(&kept).await.unwrap().anatomy_id;
    let kept_plan = client
        .create_plan(&kept_id, &default_request(None))
        .await
        .unwrap();
    assert!(dir_contains(data.path(), &marker), "the marker is stored");
    assert!(dir_contains(data.path(), gone_name.as_bytes()));

    let r = client
        .delete_anatomy(&gone_id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.deleted_plan_ids, vec![gone_plan.plan_id.clone()]);
    // The delete answers after the store compacted: the bytes are gone from every file.
    assert!(!dir_contains(data.path(), &marker), "mesh bytes remain");
    assert!(
        !dir_contains(data.path(), gone_name.as_bytes()),
        "name remains"
    );
    server.shutdown().await;

    let server = TestServer::start_in(data.path(), |_| {}).await;
    let mut client = server.client().await;
    assert_eq!(
        code_of(client.get_plan(&gone_plan.plan_id).await),
        Code::NotFound
    );
    assert_eq!(code_of(client.get_anatomy(&gone_id).await), Code::NotFound);
    let listed = client.list_plans(0, "").await.unwrap();
    let ids: Vec<&str> = listed.plans.iter().map(|p| p.plan_id.as_str()).collect();
    assert_eq!(ids, vec![kept_plan.plan_id.as_str()]);
    client.get_anatomy(&kept_id).await.unwrap();
    assert!(!dir_contains(data.path(), &marker));
    server.shutdown().await;
}

/// Polls (bounded) until `f` holds.
async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_old_records_by_the_injected_clock_and_audits_the_purge() {
    let data = tempfile::tempdir().unwrap();
    let audit = data.path().join("audit").join("audit.jsonl");
    let t0 = 1_750_000_000_000;
    let clock = Arc::new(ManualClock::new(t0));
    let mut config = Config::with_data_dir(data.path().join("store"));
    config.planner_threads = 2;
    config.retention_days = Some(2);
    config.retention_check_secs = 1;
    config.audit_log = Some(audit.clone());
    let metrics = Arc::new(Metrics::default());
    let server = InProcessServer::start_with_clock(config, metrics.clone(), clock.clone())
        .await
        .unwrap();
    let runs = || metrics.purge_runs.load(Ordering::SeqCst);
    wait_until("the first purge run", || runs() >= 1).await;
    let mut client = Client::connect(&server.url()).await.unwrap();

    let old_id = client
        .upload_anatomy(&one_level(Level::L3, "old"))
        .await
        .unwrap()
        .anatomy_id;
    let old_plan = client
        .create_plan(&old_id, &default_request(None))
        .await
        .unwrap();
    assert_eq!(old_plan.create_time_unix_ms, t0);
    assert_eq!(old_plan.purge_time_unix_ms, Some(t0 + 2 * DAY_MS));
    let fetched = client.get_plan(&old_plan.plan_id).await.unwrap();
    assert_eq!(fetched.purge_time_unix_ms, Some(t0 + 2 * DAY_MS));

    clock.advance_ms(DAY_MS);
    let new_id = client
        .upload_anatomy(&one_level(Level::L1, "new"))
        .await
        .unwrap()
        .anatomy_id;
    let new_plan = client
        .create_plan(&new_id, &default_request(None))
        .await
        .unwrap();
    let listed = client.list_plans(0, "").await.unwrap();
    let summary = |id: &str| {
        listed
            .plans
            .iter()
            .find(|p| p.plan_id == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        summary(&new_plan.plan_id).purge_time_unix_ms,
        Some(t0 + 3 * DAY_MS)
    );
    assert_eq!(summary(&old_plan.plan_id).create_time_unix_ms, t0);

    // Runs before the old records are due purge nothing.
    let before = runs();
    wait_until("two purge runs", || runs() >= before + 2).await;
    assert_eq!(metrics.records_purged.load(Ordering::SeqCst), 0);
    client.get_plan(&old_plan.plan_id).await.unwrap();

    // Two days and a millisecond after t0: the old plan and anatomy go, the new ones stay.
    clock.set(t0 + 2 * DAY_MS + 1);
    let before = runs();
    wait_until("a purge run after the clock moved", || runs() >= before + 2).await;
    assert_eq!(metrics.records_purged.load(Ordering::SeqCst), 2);
    assert_eq!(
        code_of(client.get_plan(&old_plan.plan_id).await),
        Code::NotFound
    );
    assert_eq!(code_of(client.get_anatomy(&old_id).await), Code::NotFound);
    client.get_plan(&new_plan.plan_id).await.unwrap();
    client.get_anatomy(&new_id).await.unwrap();

    let purges: Vec<Value> = audit_lines(&audit)
        .into_iter()
        .filter(|l| l["method"] == "Purge")
        .collect();
    assert_eq!(purges.len(), 1, "{purges:?}");
    assert_eq!(purges[0]["plan_ids"], serde_json::json!([old_plan.plan_id]));
    assert_eq!(purges[0]["anatomy_ids"], serde_json::json!([old_id]));
    assert_eq!(purges[0]["principal"], Value::Null);
    assert_eq!(purges[0]["outcome"], "OK");
    assert_eq!(purges[0]["time_unix_ms"], t0 + 2 * DAY_MS + 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_on_a_record_is_audited_without_tokens_or_patient_data() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, a, b) = alice_and_bob(dir.path());
    let audit = dir.path().join("audit.jsonl");
    let (audit_path, tokens_path) = (audit.clone(), tokens.clone());
    let server = TestServer::start(move |c| {
        c.token_file = Some(tokens_path);
        c.audit_log = Some(audit_path);
    })
    .await;
    let mut alice = client_with(&server.url(), &a).await;
    let mut bob = client_with(&server.url(), &b).await;
    let mut stranger = client_with(&server.url(), &token("wrong")).await;
    let case_name = "AUDIT-patient-98765";
    let anatomy = one_level(Level::L3, case_name);

    let id = alice.upload_anatomy(&anatomy).await.unwrap().anatomy_id;
    alice.get_anatomy(&id).await.unwrap();
    let plan = alice
        .create_plan(&id, &default_request(None))
        .await
        .unwrap();
    let streamed = alice
        .stream_plan(&id, &default_request(None), |_, _, _| {})
        .await
        .unwrap();
    let entry = [11.25, 37.5, 3.125];
    alice
        .evaluate(
            &id,
            Level::L3,
            Side::Left,
            entry,
            [1.0, 2.0, 3.0],
            &Instrument::contract_default(),
            &Safety::contract_default(),
        )
        .await
        .unwrap();
    alice.get_plan(&plan.plan_id).await.unwrap();
    alice.list_plans(0, "").await.unwrap();
    // Refused: someone else's id, and a wrong token.
    assert_eq!(code_of(bob.get_plan(&plan.plan_id).await), Code::NotFound);
    assert_eq!(
        code_of(stranger.get_plan(&plan.plan_id).await),
        Code::Unauthenticated
    );
    alice.delete_plan(&streamed.plan_id).await.unwrap();
    alice.delete_anatomy(&id, true).await.unwrap().unwrap();
    server.shutdown().await;

    let lines = audit_lines(&audit);
    // (method, principal, plan ids, anatomy ids, outcome)
    type Line<'a> = (&'a str, Value, Vec<&'a str>, Vec<&'a str>, &'a str);
    let expected: Vec<Line> = vec![
        ("UploadAnatomy", "alice".into(), vec![], vec![&id], "OK"),
        ("GetAnatomy", "alice".into(), vec![], vec![&id], "OK"),
        (
            "CreatePlan",
            "alice".into(),
            vec![&plan.plan_id],
            vec![&id],
            "OK",
        ),
        (
            "StreamPlan",
            "alice".into(),
            vec![&streamed.plan_id],
            vec![&id],
            "OK",
        ),
        (
            "EvaluateTrajectory",
            "alice".into(),
            vec![],
            vec![&id],
            "OK",
        ),
        ("GetPlan", "alice".into(), vec![&plan.plan_id], vec![], "OK"),
        (
            "ListPlans",
            "alice".into(),
            {
                let mut ids = vec![plan.plan_id.as_str(), streamed.plan_id.as_str()];
                ids.sort();
                ids
            },
            vec![],
            "OK",
        ),
        (
            "GetPlan",
            "bob".into(),
            vec![&plan.plan_id],
            vec![],
            "NOT_FOUND",
        ),
        ("GetPlan", Value::Null, vec![], vec![], "UNAUTHENTICATED"),
        (
            "DeletePlan",
            "alice".into(),
            vec![&streamed.plan_id],
            vec![],
            "OK",
        ),
        (
            "DeleteAnatomy",
            "alice".into(),
            vec![&plan.plan_id],
            vec![&id],
            "OK",
        ),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut previous_time = 0;
    for (line, (method, principal, plan_ids, anatomy_ids, outcome)) in lines.iter().zip(&expected) {
        let keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(
            keys,
            [
                "anatomy_ids",
                "duration_ms",
                "method",
                "outcome",
                "plan_ids",
                "principal",
                "time_unix_ms"
            ],
            "{line}"
        );
        assert_eq!(line["method"], *method, "{line}");
        assert_eq!(line["principal"], *principal, "{line}");
        assert_eq!(line["plan_ids"], serde_json::json!(plan_ids), "{line}");
        assert_eq!(
            line["anatomy_ids"],
            serde_json::json!(anatomy_ids),
            "{line}"
        );
        assert_eq!(line["outcome"], *outcome, "{line}");
        let time = line["time_unix_ms"].as_u64().unwrap();
        assert!(time >= previous_time && time <= now_ms + 1, "{line}");
        previous_time = time;
        let duration = line["duration_ms"].as_f64().unwrap();
        assert!((0.0..60_000.0).contains(&duration), "{line}");
    }
    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in [
        a.as_str(),
        b.as_str(),
        "SECRETTOKEN",
        case_name,
        "11.25",
        "37.5",
    ] {
        assert!(!text.contains(secret), "{secret} is in the audit log");
    }
    assert!(!text
        .as_bytes()
        .windows(8)
        .any(|w| w == anatomy.structures[0].mesh.vertices_mm[0].x.to_le_bytes()));
}
