//! Security of the gRPC server: TLS and mutual TLS (certificates made at test time with rcgen;
//! no key is committed), bearer tokens, records visible only to their owner, per-client planning
//! slots, health open without a token, and no token in the logs.
//!
//! Every server log line of this test binary goes into one buffer (a global tracing subscriber at
//! TRACE, so tonic's, hyper's and h2's own events are in it too).

use kyphoplan_tests::{code_of, default_request};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use kyphoplan_client::Code;
use kyphoplan_client::{Client, ClientError, ConnectOptions};
use kyphoplan_planner::anatomy::{AnatomyInput, Level};
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::request::{Instrument, Safety};
use kyphoplan_planner::synth;
use kyphoplan_proto::convert;
use kyphoplan_proto::pb;
use kyphoplan_server::Config;
use kyphoplan_tests::server::TestServer;

// ---------------------------------------------------------------------------------------------
// Log capture

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buffer
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Certificates

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl Pki {
    /// A CA, a server certificate for `localhost` and a client certificate, signed by the CA.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kyphoplan test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, file: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            std::fs::write(dir.path().join(format!("{file}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem()).unwrap();
        };
        leaf(vec!["localhost".into()], "server");
        leaf(vec!["client.kyphoplan.test".into()], "client");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client_options(&self, with_identity: bool) -> ConnectOptions {
        ConnectOptions {
            ca_cert_pem: Some(self.ca_pem.clone().into_bytes()),
            client_identity_pem: with_identity.then(|| {
                (
                    std::fs::read(self.path("client.pem")).unwrap(),
                    std::fs::read(self.path("client.key")).unwrap(),
                )
            }),
            tls_domain: Some("localhost".into()),
            token: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server

/// The test server, after the log capture is installed (every server line goes into it).
async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
    logs();
    TestServer::start(tweak).await
}

/// A random-enough token for a test (time and a counter through SHA-256 would be overkill).
fn token(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{tag}-{nanos:x}-{}-SECRETTOKEN",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn token_file(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn with_token(t: &str) -> ConnectOptions {
    ConnectOptions {
        token: Some(t.to_owned()),
        ..ConnectOptions::default()
    }
}

fn one_level(level: Level) -> AnatomyInput {
    synth::spine(&[level], &Pose::identity(), false).0
}

async fn health_of(channel: tonic::transport::Channel) -> Result<i32, tonic::Status> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    Ok(health
        .check(tonic_health::pb::HealthCheckRequest {
            service: kyphoplan_proto::SERVICE_NAME.into(),
        })
        .await?
        .into_inner()
        .status)
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_over_tls_matches_and_health_answers() {
    let pki = Pki::new();
    let server = start(|c| {
        c.tls_cert = Some(pki.path("server.pem"));
        c.tls_key = Some(pki.path("server.key"));
    })
    .await;
    let mut client = Client::connect_with(&server.url(), &pki.client_options(false))
        .await
        .unwrap();
    let stored = client.upload_anatomy(&one_level(Level::L3)).await.unwrap();
    let plan = client
        .create_plan(&stored.anatomy_id, &default_request(None))
        .await
        .unwrap();
    assert_eq!(plan.plan.levels.len(), 1);
    let again = client.get_plan(&plan.plan_id).await.unwrap();
    assert_eq!(
        kyphoplan_client::plan_json(&again.plan),
        kyphoplan_client::plan_json(&plan.plan)
    );

    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health_of(channel).await.unwrap(), SERVING);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_gets_nothing_from_a_tls_server() {
    let pki = Pki::new();
    let server = start(|c| {
        c.tls_cert = Some(pki.path("server.pem"));
        c.tls_key = Some(pki.path("server.key"));
    })
    .await;
    let outcome = async {
        let mut client = Client::connect(&format!("http://{}", server.addr())).await?;
        client.get_plan("anything").await
    };
    let r = tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .expect("the plaintext attempt ends within 10 s");
    match r {
        Ok(_) => panic!("a plaintext client got an answer from a TLS server"),
        // Connecting fails, or the first call does with a transport error (the TLS alert reads
        // as a broken HTTP/2 frame: INTERNAL, UNAVAILABLE or UNKNOWN depending on timing), never
        // NOT_FOUND: nothing was served.
        Err(e @ ClientError::Status { .. }) => {
            assert_ne!(e.code(), Some(Code::NotFound), "{e:?}");
        }
        Err(_) => {}
    }
    // A client that does not trust the server's CA is refused too.
    let stranger = Pki::new();
    let r = async {
        let mut client =
            Client::connect_with(&server.url(), &stranger.client_options(false)).await?;
        client.get_plan("anything").await
    }
    .await;
    assert!(
        !matches!(&r, Err(e) if e.code() == Some(Code::NotFound)) && r.is_err(),
        "an untrusted server certificate must fail the call"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new();
    let server = start(|c| {
        c.tls_cert = Some(pki.path("server.pem"));
        c.tls_key = Some(pki.path("server.key"));
        c.tls_client_ca = Some(pki.path("ca.pem"));
    })
    .await;
    let r = async {
        let mut client = Client::connect_with(&server.url(), &pki.client_options(false)).await?;
        client.get_plan("anything").await
    }
    .await;
    match r {
        Ok(_) => panic!("a client without a certificate got an answer"),
        Err(e @ ClientError::Status { .. }) => {
            assert_ne!(e.code(), Some(Code::NotFound), "{e:?}")
        }
        Err(_) => {}
    }
    // A certificate from another CA is refused as well.
    let other = Pki::new();
    let mut foreign = other.client_options(true);
    foreign.ca_cert_pem = Some(pki.ca_pem.clone().into_bytes());
    let r = async {
        let mut client = Client::connect_with(&server.url(), &foreign).await?;
        client.get_plan("anything").await
    }
    .await;
    assert!(
        !matches!(&r, Err(e) if e.code() == Some(Code::NotFound)) && r.is_err(),
        "a client certificate of another CA must be refused"
    );

    // With the CA's client certificate the call goes through.
    let mut client = Client::connect_with(&server.url(), &pki.client_options(true))
        .await
        .unwrap();
    assert_eq!(code_of(client.get_plan("anything").await), Code::NotFound);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_or_with_a_wrong_token_are_unauthenticated_but_health_answers() {
    let dir = tempfile::tempdir().unwrap();
    let good = token("good");
    let tokens = token_file(dir.path(), &[format!("alice:{good}")]);
    let server = start(|c| c.token_file = Some(tokens)).await;

    let mut anonymous = Client::connect(&server.url()).await.unwrap();
    let anatomy = one_level(Level::L3);
    assert_eq!(
        code_of(anonymous.upload_anatomy(&anatomy).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code_of(anonymous.get_plan("x").await),
        Code::Unauthenticated
    );
    let mut wrong = Client::connect_with(&server.url(), &with_token(&token("wrong")))
        .await
        .unwrap();
    assert_eq!(
        code_of(wrong.upload_anatomy(&anatomy).await),
        Code::Unauthenticated
    );
    // A prefix of the right token is wrong too.
    let mut prefix = Client::connect_with(&server.url(), &with_token(&good[..good.len() - 1]))
        .await
        .unwrap();
    assert_eq!(code_of(prefix.get_plan("x").await), Code::Unauthenticated);
    // The raw client without the header: UNAUTHENTICATED; with the wrong scheme as well.
    let mut raw = server.raw().await;
    let mut basic = tonic::Request::new(pb::ListPlansRequest::default());
    basic
        .metadata_mut()
        .insert("authorization", format!("Basic {good}").parse().unwrap());
    assert_eq!(
        code_of(raw.list_plans(basic).await.map_err(ClientError::from)),
        Code::Unauthenticated
    );

    // Reflection needs the token too; health does not.
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let channel = tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let status = reflection
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap_err();
        assert_eq!(
            ClientError::from(status).code(),
            Some(Code::Unauthenticated)
        );
    }
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health_of(channel).await.unwrap(), SERVING);

    // The right token works.
    let mut alice = Client::connect_with(&server.url(), &with_token(&good))
        .await
        .unwrap();
    let stored = alice.upload_anatomy(&anatomy).await.unwrap();
    alice
        .create_plan(&stored.anatomy_id, &default_request(None))
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tokens_plans_and_anatomies_are_not_found_under_another() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, b2) = (token("a"), token("b"), token("b2"));
    // b and b2 are the same principal (a rotated token); an unnamed line works too.
    let tokens = token_file(
        dir.path(),
        &[
            "# test tokens".into(),
            a.clone(),
            format!("bob:{b}"),
            format!("bob:{b2}"),
        ],
    );
    let server = start(|c| c.token_file = Some(tokens)).await;
    let mut alice = Client::connect_with(&server.url(), &with_token(&a))
        .await
        .unwrap();
    let mut bob = Client::connect_with(&server.url(), &with_token(&b))
        .await
        .unwrap();
    let mut bob2 = Client::connect_with(&server.url(), &with_token(&b2))
        .await
        .unwrap();

    let anatomy = one_level(Level::L3);
    let stored = alice.upload_anatomy(&anatomy).await.unwrap();
    let plan = alice
        .create_plan(&stored.anatomy_id, &default_request(None))
        .await
        .unwrap();

    // Bob sees none of it, and the answer does not tell that it exists.
    assert_eq!(code_of(bob.get_plan(&plan.plan_id).await), Code::NotFound);
    assert_eq!(
        code_of(bob.get_anatomy(&stored.anatomy_id).await),
        Code::NotFound
    );
    assert_eq!(
        code_of(
            bob.create_plan(&stored.anatomy_id, &default_request(None))
                .await
        ),
        Code::NotFound
    );
    let evaluation = bob
        .evaluate(
            &stored.anatomy_id,
            Level::L3,
            kyphoplan_planner::anatomy::Side::Left,
            [0.0, 40.0, 0.0],
            [0.0, 0.0, 0.0],
            &Instrument::contract_default(),
            &Safety::contract_default(),
        )
        .await;
    assert_eq!(code_of(evaluation), Code::NotFound);
    let request = bob.request(pb::ListPlansRequest::default());
    let listed = bob.raw().list_plans(request).await.unwrap().into_inner();
    assert!(listed.plans.is_empty(), "{listed:?}");

    // Uploading the same anatomy gives bob the same id, and his own plans of it.
    let bobs = bob.upload_anatomy(&anatomy).await.unwrap();
    assert_eq!(bobs.anatomy_id, stored.anatomy_id);
    let bob_plan = bob
        .create_plan(&bobs.anatomy_id, &default_request(None))
        .await
        .unwrap();
    assert_eq!(code_of(bob.get_plan(&plan.plan_id).await), Code::NotFound);
    // The rotated token is the same principal.
    bob2.get_plan(&bob_plan.plan_id).await.unwrap();
    assert_eq!(
        code_of(alice.get_plan(&bob_plan.plan_id).await),
        Code::NotFound
    );

    let request = alice.request(pb::ListPlansRequest::default());
    let alices = alice.raw().list_plans(request).await.unwrap().into_inner();
    let ids: Vec<&str> = alices.plans.iter().map(|p| p.plan_id.as_str()).collect();
    assert_eq!(ids, vec![plan.plan_id.as_str()]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_planning_slots_is_refused_while_others_plan() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (token("a"), token("b"));
    let tokens = token_file(dir.path(), &[format!("alice:{a}"), format!("bob:{b}")]);
    let server = start(|c| {
        c.token_file = Some(tokens);
        c.max_plans_per_client = 1;
        c.max_concurrent_plans = 4;
    })
    .await;
    let mut alice = Client::connect_with(&server.url(), &with_token(&a))
        .await
        .unwrap();
    let mut bob = Client::connect_with(&server.url(), &with_token(&b))
        .await
        .unwrap();
    let demo = synth::demo_anatomy();
    let a_id = alice.upload_anatomy(&demo).await.unwrap().anatomy_id;
    let b_id = bob
        .upload_anatomy(&one_level(Level::L4))
        .await
        .unwrap()
        .anatomy_id;

    // Alice's first plan holds her only slot while it streams.
    let message = convert::create_plan_request_to_pb(
        pb::create_plan_request::Anatomy::AnatomyId(a_id.clone()),
        &default_request(None),
    );
    let request = alice.request(message);
    let mut stream = alice
        .clone()
        .raw()
        .stream_plan(request)
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.levels_done, 1);

    let second = alice
        .create_plan(&a_id, &default_request(Some(vec![Level::L4])))
        .await;
    let Err(status @ ClientError::Status { .. }) = second else {
        panic!("alice's second plan is refused while her first runs");
    };
    assert_eq!(status.code(), Some(Code::ResourceExhausted), "{status:?}");
    assert!(status.to_string().contains("alice"), "{status:?}");
    // Bob is not held back by alice.
    bob.create_plan(&b_id, &default_request(None))
        .await
        .unwrap();
    drop(stream);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (good, wrong) = (token("logged-good"), token("logged-wrong"));
    let tokens = token_file(dir.path(), &[format!("carol:{good}")]);
    let server = start(|c| c.token_file = Some(tokens)).await;
    let mut carol = Client::connect_with(&server.url(), &with_token(&good))
        .await
        .unwrap();
    let stored = carol.upload_anatomy(&one_level(Level::L3)).await.unwrap();
    let plan = carol
        .create_plan(&stored.anatomy_id, &default_request(None))
        .await
        .unwrap();
    assert_eq!(code_of(carol.get_plan("nope").await), Code::NotFound);
    let mut stranger = Client::connect_with(&server.url(), &with_token(&wrong))
        .await
        .unwrap();
    assert_eq!(
        code_of(stranger.get_plan(&plan.plan_id).await),
        Code::Unauthenticated
    );
    server.shutdown().await;

    let text = log_text();
    assert!(
        text.contains("plan stored"),
        "the capture works: {} bytes",
        text.len()
    );
    assert!(text.contains("refused: missing or unknown bearer token"));
    for secret in [&good, &wrong] {
        assert!(!text.contains(secret.as_str()), "a token is in the logs");
        // Nor a large piece of it.
        assert!(!text.contains(&secret[..secret.len() - 4]));
    }
    assert!(
        !text.contains("SECRETTOKEN"),
        "a token of another test is in the logs"
    );
}

// ---------------------------------------------------------------------------------------------
// Replay

/// Run `replay` through `url` on its own thread (it starts its own client runtime).
async fn replay_through(
    url: String,
    root: PathBuf,
    connect: ConnectOptions,
    options: kyphoplan_cli::replay::ReplayOptions,
) -> Result<kyphoplan_cli::replay::ReplaySummary, String> {
    use kyphoplan_cli::replay::{self, Planner};
    let thread = std::thread::spawn(move || {
        let planner = Planner::Server {
            url: &url,
            connect: &connect,
        };
        replay::replay(&root, planner, &options, &|_, _, _| {})
    });
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap()
}

/// `replay --server` connects with the same options as the other `--server` commands: through
/// a server that asks for mutual TLS and a bearer token it plans and compares every case; the
/// same replay without the token gets no plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_connects_with_tls_a_client_certificate_and_a_token() {
    use kyphoplan_cli::replay::{Outcome, ReplayOptions};
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let good = token("replay");
    let tokens = token_file(dir.path(), &[format!("dave:{good}")]);
    let server = start(|c| {
        c.tls_cert = Some(pki.path("server.pem"));
        c.tls_key = Some(pki.path("server.key"));
        c.tls_client_ca = Some(pki.path("ca.pem"));
        c.token_file = Some(tokens);
    })
    .await;
    let root = dir.path().join("library");
    kyphoplan_client::case::write_case(&root.join("case-l4"), &one_level(Level::L4), None).unwrap();
    let connect = ConnectOptions {
        token: Some(good),
        ..pki.client_options(true)
    };

    // With --bless the golden is written from the server's plan; then it replays unchanged.
    let bless = ReplayOptions {
        bless: true,
        ..ReplayOptions::default()
    };
    let summary = replay_through(server.url(), root.clone(), connect.clone(), bless)
        .await
        .unwrap();
    assert!(
        matches!(summary.cases[0].outcome, Outcome::NoGolden { .. }),
        "{:?}",
        summary.cases[0].outcome
    );
    assert_eq!(summary.blessed.len(), 1);
    let plain = ReplayOptions::default();
    let summary = replay_through(server.url(), root.clone(), connect.clone(), plain.clone())
        .await
        .unwrap();
    assert_eq!(summary.failures(&plain), 0, "{:?}", summary.cases);
    assert!(
        matches!(&summary.cases[0].outcome, Outcome::Compared { differences, .. } if differences.is_empty()),
        "{:?}",
        summary.cases[0].outcome
    );

    // Without the token the case is not planned: the call is unauthenticated.
    let no_token = ConnectOptions {
        token: None,
        ..connect
    };
    let summary = replay_through(server.url(), root, no_token, plain.clone())
        .await
        .unwrap();
    assert_eq!(summary.failures(&plain), 1);
    match &summary.cases[0].outcome {
        Outcome::Error { reason } => assert!(
            reason.contains("Unauthenticated") || reason.contains("token"),
            "{reason}"
        ),
        other => panic!("planned without a token: {other:?}"),
    }
    server.shutdown().await;
}
