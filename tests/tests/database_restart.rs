//! The PostgreSQL store's database restarted under load (issue 16): its own test binary, as the
//! restart takes the tests' whole cluster down. Clients plan without pause through a replica;
//! the database is restarted (`pg_ctl restart -m fast`, as `.ci/run` started it: the variables
//! `KYPHOPLAN_TEST_PG_CTL`, `KYPHOPLAN_TEST_PG_DATA`, `KYPHOPLAN_TEST_PG_USER`). Meanwhile
//! every failed call is UNAVAILABLE (never INTERNAL, never a panic); after it the replica plans
//! again on new connections, and every acknowledged plan is there.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kyphoplan_client::{ClientError, Code};
use kyphoplan_planner::anatomy::Level;
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::synth;
use kyphoplan_tests::default_request;
use kyphoplan_tests::postgres::fresh_database;
use kyphoplan_tests::server::TestServer;

/// `pg_ctl -D DATA -m fast -w restart` as the cluster's user; false without the variables.
fn restart_database() -> bool {
    let (Ok(pg_ctl), Ok(data)) = (
        std::env::var("KYPHOPLAN_TEST_PG_CTL"),
        std::env::var("KYPHOPLAN_TEST_PG_DATA"),
    ) else {
        return false;
    };
    let user = std::env::var("KYPHOPLAN_TEST_PG_USER").unwrap_or_default();
    let mut command = if user.is_empty() || std::env::var("USER").as_deref() == Ok(&user) {
        Command::new(&pg_ctl)
    } else {
        let mut c = Command::new("runuser");
        c.args(["-u", &user, "--", &pg_ctl]);
        c
    };
    let status = command
        .args(["-D", &data, "-m", "fast", "-w", "restart"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("pg_ctl runs");
    assert!(status.success(), "pg_ctl restart failed");
    true
}

#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: KYPHOPLAN_TEST_POSTGRES (.ci/run starts a throw-away cluster)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restarted_under_load_answers_unavailable_then_serves_again() {
    let Some(url) = fresh_database("a_database_restarted_under_load") else {
        return;
    };
    if std::env::var("KYPHOPLAN_TEST_PG_CTL").is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "KYPHOPLAN_TEST_PG_CTL is not set: .ci/run sets it with the cluster it starts"
        );
        eprintln!(
            "SKIPPED: the tests' cluster was not started by .ci/run (no KYPHOPLAN_TEST_PG_CTL)"
        );
        return;
    }
    let server = TestServer::start(|c| c.store = Some(url.clone())).await;
    let mut client = server.client().await;
    let anatomy = synth::spine(&[Level::L2], &Pose::identity(), false).0;
    let anatomy_id = client.upload_anatomy(&anatomy).await.unwrap().anatomy_id;

    let acked: Arc<Mutex<Vec<kyphoplan_client::StoredPlan>>> = Arc::default();
    let failures: Arc<Mutex<Vec<ClientError>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await;
        let (acked, failures, stop, id) = (
            acked.clone(),
            failures.clone(),
            stop.clone(),
            anatomy_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.create_plan(&id, &default_request(None)).await {
                    Ok(plan) => acked.lock().unwrap().push(plan),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "no progress in 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restart = Instant::now();
    tokio::task::spawn_blocking(restart_database).await.unwrap();
    eprintln!("restarted in {:?}", restart.elapsed());
    let after_restart = acked.lock().unwrap().len();
    // Plans are made again after the restart.
    while acked.lock().unwrap().len() < after_restart + 3 {
        assert!(
            Instant::now() < deadline,
            "no plan acknowledged after the restart: {:?}",
            failures.lock().unwrap().last().map(ToString::to_string)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "planning again {:?} after the restart began",
        restart.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    for failure in failures.lock().unwrap().iter() {
        assert_eq!(
            failure.code(),
            Some(Code::Unavailable),
            "a call failed otherwise than UNAVAILABLE: {failure}"
        );
    }
    let acked = acked.lock().unwrap().clone();
    for plan in &acked {
        let got = client.get_plan(&plan.plan_id).await.unwrap();
        assert_eq!(got.plan, plan.plan, "plan {} changed", plan.plan_id);
    }
    {
        let failures = failures.lock().unwrap();
        eprintln!(
            "{} plans acknowledged, {} calls UNAVAILABLE during the restart \
             (first: {:?}, last: {:?})",
            acked.len(),
            failures.len(),
            failures.first().map(ToString::to_string),
            failures.last().map(ToString::to_string),
        );
    }
    server.shutdown().await;
}
