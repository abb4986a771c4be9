//! A full store (issue 16): uploads fill a small file system until the store refuses; the
//! refusal is RESOURCE_EXHAUSTED saying the storage is full (never INTERNAL, never a panic),
//! nothing acknowledged before is lost, and once space is freed the store takes writes again.
//!
//! The file systems are real: `.ci/run` (as root) mounts an 8 MiB tmpfs holding a tablespace
//! of the tests' PostgreSQL (`KYPHOPLAN_TEST_PG_SMALL_TABLESPACE`) and a 16 MiB tmpfs for redb
//! data directories (`KYPHOPLAN_TEST_SMALL_FS`). Without them the tests are ignored
//! (`cfg(test_small_fs)`; under `CI=true` they run and fail saying what is missing). Space
//! is freed by dropping a filler the test wrote before the uploads: a table in the same
//! tablespace (PostgreSQL truncates a dropped table's files at once), a file beside the data
//! directory (redb).

use std::path::PathBuf;

use kyphoplan_client::{ClientError, Code};
use kyphoplan_planner::anatomy::AnatomyInput;
use kyphoplan_planner::anatomy::Level;
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::synth;
use kyphoplan_proto::convert;
use kyphoplan_server::pg_store::PgStore;
use kyphoplan_server::store::{RedbStore, Store};
use kyphoplan_tests::default_request;
use kyphoplan_tests::postgres::{drop_database, fresh_database_on_small_tablespace, run_sql};
use kyphoplan_tests::server::TestServer;
use prost::Message;

/// More uploads than any of the small file systems holds (each anatomy is ~1 MB encoded).
const MAX_UPLOADS: usize = 60;

/// The `i`-th anatomy: the synthetic L1-L3 moved by `i` mm (other bytes, another id).
fn anatomy(i: usize) -> AnatomyInput {
    let pose = Pose::translation(i as f64, 0.0, 0.0);
    synth::spine(&[Level::L1, Level::L2, Level::L3], &pose, false).0
}

/// Its canonical encoding (what the store holds) and content address.
fn encoded(anatomy: &AnatomyInput) -> (Vec<u8>, String) {
    let data = convert::anatomy_to_pb(anatomy);
    (data.encode_to_vec(), convert::anatomy_id(&data))
}

/// Upload new anatomies until the store refuses one; the ids acknowledged and the refusal.
async fn fill(client: &mut kyphoplan_client::Client) -> (Vec<String>, ClientError) {
    let mut acked = Vec::new();
    for i in 0..MAX_UPLOADS {
        match client.upload_anatomy(&anatomy(i)).await {
            Ok(meta) => acked.push(meta.anatomy_id),
            Err(e) => return (acked, e),
        }
    }
    panic!("{MAX_UPLOADS} uploads did not fill the small file system");
}

/// The refusal of a full store: RESOURCE_EXHAUSTED saying so.
fn assert_full(e: &ClientError) {
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("storage is full") && text.contains("nothing was stored"),
        "{text}"
    );
}

/// Every acknowledged anatomy is in `store`, byte for byte.
fn assert_kept(store: &dyn Store, acked: &[String]) {
    for (i, id) in acked.iter().enumerate() {
        let (bytes, expected_id) = encoded(&anatomy(i));
        assert_eq!(id, &expected_id, "upload {i}'s content address");
        let stored = store
            .anatomy(id, None)
            .unwrap_or_else(|e| panic!("anatomy {id}: {e}"))
            .unwrap_or_else(|| panic!("acknowledged anatomy {id} is gone"));
        assert!(stored == bytes, "anatomy {id}'s bytes changed");
    }
}

#[cfg_attr(
    not(all(test_postgres, test_small_fs)),
    ignore = "needs PostgreSQL (KYPHOPLAN_TEST_POSTGRES) and a small file system \
              (KYPHOPLAN_TEST_SMALL_FS): .ci/run, as root, starts and mounts both"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_postgresql_tablespace_answers_resource_exhausted_then_stores_again() {
    let Some((url, tablespace)) =
        fresh_database_on_small_tablespace("a_full_postgresql_tablespace")
    else {
        return;
    };
    let server = TestServer::start(|c| c.store = Some(url.clone())).await;
    let mut client = server.client().await;
    // 2 MB of filler in the same tablespace, uncompressed (EXTERNAL storage).
    let sql = |q: &str| {
        let (url, q) = (url.clone(), q.to_owned());
        tokio::task::spawn_blocking(move || run_sql(&url, &q))
    };
    sql(&format!(
        "CREATE TABLE filler (b bytea) TABLESPACE \"{tablespace}\"; \
         ALTER TABLE filler ALTER COLUMN b SET STORAGE EXTERNAL; \
         INSERT INTO filler SELECT convert_to(repeat('x', 1000000), 'UTF8') \
         FROM generate_series(1, 2)"
    ))
    .await
    .unwrap();

    let (acked, refusal) = fill(&mut client).await;
    assert_full(&refusal);
    assert!(
        refusal.to_string().contains("No space left on device"),
        "PostgreSQL's reason is passed on: {refusal}"
    );
    assert!(
        !acked.is_empty(),
        "nothing was stored before the store filled"
    );
    eprintln!("{} uploads acknowledged, then: {refusal}", acked.len());
    // Still full: a plan (a small row) may or may not fit; either way the answer is clear.
    let anatomy_id = acked[0].clone();
    match client
        .create_plan(&anatomy_id, &default_request(None))
        .await
    {
        Ok(_) => {}
        Err(e) => assert_full(&e),
    }
    // Reads go on while full, and nothing acknowledged is lost.
    let kept_in_database = {
        let (url, acked) = (url.clone(), acked.clone());
        // PgStore blocks: off the test's async workers.
        move || {
            let store = PgStore::connect(&url).unwrap();
            assert_kept(&store, &acked);
        }
    };
    tokio::task::spawn_blocking(kept_in_database.clone())
        .await
        .unwrap();
    for id in &acked {
        client.get_anatomy(id).await.unwrap();
    }

    // Space comes back: the same replica stores again, the refused upload and a plan.
    sql("DROP TABLE filler").await.unwrap();
    let refused = anatomy(acked.len());
    let stored = client.upload_anatomy(&refused).await.unwrap();
    assert_eq!(stored.anatomy_id, encoded(&refused).1);
    let plan = client
        .create_plan(&stored.anatomy_id, &default_request(None))
        .await
        .unwrap();
    assert_eq!(
        client.get_plan(&plan.plan_id).await.unwrap().plan,
        plan.plan
    );
    tokio::task::spawn_blocking(kept_in_database).await.unwrap();
    server.shutdown().await;
    tokio::task::spawn_blocking(move || drop_database(&url))
        .await
        .unwrap();
}

/// A fresh directory on the small file system for redb, or `None` after saying the test is
/// skipped (panics under `CI=true` without one).
fn small_dir(test: &str) -> Option<tempfile::TempDir> {
    const ENV: &str = "KYPHOPLAN_TEST_SMALL_FS";
    match std::env::var(ENV) {
        Ok(d) if !d.is_empty() => Some(
            tempfile::tempdir_in(PathBuf::from(d)).expect("a directory on the small file system"),
        ),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "{ENV} is not set: under CI=true the full-store tests must run (.ci/run, as root, \
             mounts a small tmpfs)"
        ),
        _ => {
            eprintln!("SKIPPED: {test}: no small file system ({ENV} not set; .ci/run mounts one when run as root)");
            None
        }
    }
}

/// The embedded store: after the failed write redb refuses every call until it is opened
/// again, which the health check does once there is room (no restart).
#[cfg_attr(
    not(test_small_fs),
    ignore = "needs a small file system: KYPHOPLAN_TEST_SMALL_FS (.ci/run, as root, mounts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redb_disk_answers_resource_exhausted_then_stores_again() {
    let Some(dir) = small_dir("a_full_redb_disk") else {
        return;
    };
    let data_dir = dir.path().join("data");
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0x5a; 4 << 20]).unwrap();
    let server = TestServer::start_in(&data_dir, |c| c.health_check_ms = 20).await;
    let mut client = server.client().await;
    let (acked, refusal) = fill(&mut client).await;
    assert_full(&refusal);
    assert!(
        !acked.is_empty(),
        "nothing was stored before the disk filled"
    );
    eprintln!("{} uploads acknowledged, then: {refusal}", acked.len());

    // Space comes back: the same server stores again (the refused upload), answering only
    // RESOURCE_EXHAUSTED or UNAVAILABLE until then.
    std::fs::remove_file(&filler).unwrap();
    let refused = anatomy(acked.len());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let stored = loop {
        match client.upload_anatomy(&refused).await {
            Ok(stored) => break stored,
            Err(e) => {
                assert!(
                    matches!(e.code(), Some(Code::ResourceExhausted | Code::Unavailable)),
                    "{e}"
                );
                assert!(
                    std::time::Instant::now() < deadline,
                    "not stored in 60 s: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(stored.anatomy_id, encoded(&refused).1);
    for id in &acked {
        client.get_anatomy(id).await.unwrap();
    }
    server.shutdown().await;
    // Nothing acknowledged is lost: every upload, byte for byte, the last one included.
    let mut all = acked;
    all.push(stored.anatomy_id);
    assert_kept(&RedbStore::open(&data_dir).unwrap(), &all);
}
