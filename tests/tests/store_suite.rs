//! One store test suite, run against both stores: the embedded redb store and the PostgreSQL
//! store (issue 16). Each case is a function of `&dyn Store`; `both!` makes a redb test and a
//! PostgreSQL test of it (the latter skipped without a cluster, see
//! `kyphoplan_tests::postgres`). Then what only PostgreSQL has: two stores (two replicas) on
//! one database, concurrent migrations, and the errors of an unreachable database.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use kyphoplan_server::error::ServiceError;
use kyphoplan_server::pg_store::{PgStore, CHUNK_BYTES};
use kyphoplan_server::store::{AnatomyDeletion, RedbStore, Store};
use kyphoplan_tests::postgres::{fresh_database, terminate_connections};

/// Bytes that no run of the same value could compress (a linear congruential sequence).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// Every plan `owner` may see, paging by `limit`: the ids in order.
fn list_all(store: &dyn Store, limit: usize, owner: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let (page, more) = store.plans_after(&after, limit, owner).unwrap();
        assert!(page.len() <= limit);
        for (id, bytes) in &page {
            assert_eq!(bytes, &plan_bytes(id), "plan {id}'s bytes");
        }
        out.extend(page.into_iter().map(|(id, _)| id));
        if !more {
            return out;
        }
        assert_eq!(out.len() % limit, 0, "a page followed by more is full");
        after = out.last().unwrap().clone();
    }
}

fn plan_bytes(id: &str) -> Vec<u8> {
    format!("plan-bytes-of-{id}").into_bytes()
}

/// An anatomy's data and metadata round-trip exactly, one spanning several chunks included;
/// owners see what they own and no more; a second put adds an owner and keeps the data.
fn anatomies_round_trip_with_their_owners(store: &dyn Store) {
    let big = noise(2 * CHUNK_BYTES + 12_345, 7);
    store
        .put_anatomy("big", &big, b"meta-1", Some("alice"), 10)
        .unwrap();
    store
        .put_anatomy("small", b"s", b"meta-s", None, 10)
        .unwrap();
    assert_eq!(
        store.anatomy("big", Some("alice")).unwrap(),
        Some(big.clone())
    );
    assert_eq!(store.anatomy("big", None).unwrap(), Some(big.clone()));
    assert_eq!(store.anatomy("big", Some("bob")).unwrap(), None);
    assert_eq!(store.anatomy_meta("big", Some("bob")).unwrap(), None);
    assert!(!store.owns_anatomy("big", Some("bob")).unwrap());
    assert_eq!(
        store.anatomy_meta("big", Some("alice")).unwrap().as_deref(),
        Some(&b"meta-1"[..])
    );
    // The same id again (content-addressed: the same data), by bob.
    store
        .put_anatomy("big", &big, b"meta-2", Some("bob"), 20)
        .unwrap();
    assert!(store.owns_anatomy("big", Some("bob")).unwrap());
    assert!(store.owns_anatomy("big", Some("alice")).unwrap());
    assert_eq!(store.anatomy("big", Some("bob")).unwrap(), Some(big));
    assert_eq!(
        store.anatomy_meta("big", None).unwrap().as_deref(),
        Some(&b"meta-2"[..])
    );
    assert_eq!(store.anatomy("none", None).unwrap(), None);
    assert!(!store.reupload_anatomy("none", Some("carol"), 30).unwrap());
    assert!(store.reupload_anatomy("small", Some("carol"), 30).unwrap());
    assert!(store.owns_anatomy("small", Some("carol")).unwrap());
    let (plans, anatomies) = store.record_ids().unwrap();
    assert!(plans.is_empty());
    assert_eq!(
        anatomies,
        BTreeSet::from(["big".to_owned(), "small".to_owned()])
    );
}

/// `plans_after` pages through exactly the plans an owner may see, in bytewise id order (the
/// oracle: a sorted list), whatever the page size; `None` sees all.
fn plan_pages_are_in_byte_order_and_filtered_by_owner(store: &dyn Store) {
    // Ids whose bytewise order differs from a locale's ("B" < "_" < "a"; "é" last).
    let ids = [
        "a", "B", "_x", "a0", "Z9", "é", "0", "aa", "A", "b", "ab", "~", "a-b",
    ];
    for (i, id) in ids.iter().enumerate() {
        let owner = if i % 3 == 0 { "bob" } else { "alice" };
        store
            .put_plan(id, &plan_bytes(id), Some(owner), i as u64, "anat")
            .unwrap();
    }
    let mut all: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    all.sort();
    let alice: Vec<String> = all
        .iter()
        .filter(|id| ids.iter().position(|x| x == id).unwrap() % 3 != 0)
        .cloned()
        .collect();
    for limit in [1, 2, 3, 5, 100] {
        assert_eq!(list_all(store, limit, None), all, "limit {limit}");
        assert_eq!(
            list_all(store, limit, Some("alice")),
            alice,
            "limit {limit}"
        );
    }
    assert!(list_all(store, 4, Some("mallory")).is_empty());
    assert_eq!(store.plan("é", None).unwrap(), Some(plan_bytes("é")));
    assert_eq!(store.plan("é", Some("mallory")).unwrap(), None);
    assert_eq!(store.plan("nope", None).unwrap(), None);
}

/// Deletes: owner only, cascade or refuse, a shared anatomy keeps its data for the other
/// owner; purge by age; every index entry goes with its record.
fn deletes_and_purges_keep_the_records_consistent(store: &dyn Store) {
    store
        .put_anatomy("shared", b"data", b"meta", Some("alice"), 100)
        .unwrap();
    store
        .put_anatomy("shared", b"data", b"meta", Some("bob"), 100)
        .unwrap();
    store
        .put_plan(
            "p-alice",
            &plan_bytes("p-alice"),
            Some("alice"),
            100,
            "shared",
        )
        .unwrap();
    store
        .put_plan("p-bob", &plan_bytes("p-bob"), Some("bob"), 100, "shared")
        .unwrap();
    assert!(matches!(
        store.delete_anatomy("shared", Some("alice"), false),
        Err(ServiceError::AnatomyHasPlans { plans: 1, .. })
    ));
    assert_eq!(
        store.delete_anatomy("shared", Some("carol"), true).unwrap(),
        None
    );
    assert_eq!(
        store.delete_anatomy("shared", Some("alice"), true).unwrap(),
        Some(AnatomyDeletion {
            plan_ids: vec!["p-alice".into()],
            data_removed: false,
        })
    );
    assert_eq!(
        store.anatomy("shared", Some("bob")).unwrap().as_deref(),
        Some(&b"data"[..])
    );
    assert!(!store.owns_anatomy("shared", Some("alice")).unwrap());
    assert_eq!(store.plan("p-alice", None).unwrap(), None);
    assert!(!store.delete_plan("p-bob", Some("alice")).unwrap());
    assert_eq!(
        store.delete_anatomy("shared", Some("bob"), true).unwrap(),
        Some(AnatomyDeletion {
            plan_ids: vec!["p-bob".into()],
            data_removed: true,
        })
    );
    assert_eq!(store.anatomy("shared", None).unwrap(), None);
    let (plans, anatomies) = store.record_ids().unwrap();
    assert!(plans.is_empty() && anatomies.is_empty());

    // Purge by age: plans by creation, anatomies by last upload; younger plans of a purged
    // anatomy stay.
    store.put_anatomy("a", b"m", b"meta", None, 100).unwrap();
    store.put_anatomy("b", b"n", b"meta", None, 100).unwrap();
    assert!(store.reupload_anatomy("b", None, 300).unwrap());
    store
        .put_plan("p-old", &plan_bytes("p-old"), None, 100, "a")
        .unwrap();
    store
        .put_plan("p-new", &plan_bytes("p-new"), None, 300, "a")
        .unwrap();
    assert!(matches!(
        store.delete_anatomy("a", None, false),
        Err(ServiceError::AnatomyHasPlans { plans: 2, .. })
    ));
    let purged = store.purge_before(200).unwrap();
    assert_eq!(purged.plan_ids, vec!["p-old".to_owned()]);
    assert_eq!(purged.anatomy_ids, vec!["a".to_owned()]);
    let (plans, anatomies) = store.record_ids().unwrap();
    assert_eq!(plans, BTreeSet::from(["p-new".to_owned()]));
    assert_eq!(anatomies, BTreeSet::from(["b".to_owned()]));
    assert!(store.purge_before(200).unwrap().is_empty());
    assert!(store.delete_plan("p-new", None).unwrap());
    assert!(!store.delete_plan("p-new", None).unwrap());
    store.compact().unwrap();
    assert_eq!(
        store.anatomy("b", None).unwrap().as_deref(),
        Some(&b"n"[..])
    );
}

/// The same upload from many threads at the same moment: one anatomy, every owner, the data
/// intact.
fn concurrent_puts_of_one_anatomy_store_it_once(store: &dyn Store) {
    concurrent_puts(&[store; 8]);
}

/// `stores[i]` puts the same anatomy at once as owner `o{i}` (several handles on one database
/// are several replicas).
fn concurrent_puts(stores: &[&dyn Store]) {
    let data = noise(CHUNK_BYTES + 1000, 11);
    let barrier = Barrier::new(stores.len());
    std::thread::scope(|s| {
        for (i, store) in stores.iter().enumerate() {
            let (data, barrier) = (&data, &barrier);
            s.spawn(move || {
                barrier.wait();
                store
                    .put_anatomy("same", data, b"meta", Some(&format!("o{i}")), 50)
                    .unwrap();
            });
        }
    });
    for store in stores {
        let (_, anatomies) = store.record_ids().unwrap();
        assert_eq!(anatomies, BTreeSet::from(["same".to_owned()]));
        assert_eq!(store.anatomy("same", None).unwrap(), Some(data.clone()));
        for i in 0..stores.len() {
            assert!(store.owns_anatomy("same", Some(&format!("o{i}"))).unwrap());
        }
    }
}

/// A plan put for a request key is stored once per (owner, key): a second put answers the
/// first plan's id and writes nothing; other owners and keys are apart; the key goes with its
/// plan (delete, purge), after which it stores anew.
fn a_request_key_stores_one_plan(store: &dyn Store) {
    let put = |id: &str, owner: Option<&str>, key: &str, time: u64| {
        store
            .put_plan_for_request(id, &plan_bytes(id), owner, time, "x", key)
            .unwrap()
    };
    assert_eq!(store.plan_for_request(Some("alice"), "k1").unwrap(), None);
    assert_eq!(put("p1", Some("alice"), "k1", 10), "p1");
    assert_eq!(put("p2", Some("alice"), "k1", 11), "p1", "the retry");
    assert_eq!(
        store.plan("p2", None).unwrap(),
        None,
        "the retry wrote nothing"
    );
    assert_eq!(
        store
            .plan_for_request(Some("alice"), "k1")
            .unwrap()
            .as_deref(),
        Some("p1")
    );
    // The key is per owner; no authentication is an owner of its own.
    assert_eq!(put("p3", Some("bob"), "k1", 12), "p3");
    assert_eq!(put("p4", None, "k1", 13), "p4");
    assert_eq!(put("p5", None, "k1", 14), "p4");
    assert_eq!(put("p6", Some("alice"), "k2", 15), "p6");
    let (plans, _) = store.record_ids().unwrap();
    assert_eq!(
        plans.into_iter().collect::<Vec<_>>(),
        ["p1", "p3", "p4", "p6"].map(String::from)
    );
    // Deleted or purged, the plan takes its key along: the same key stores a new plan.
    assert!(store.delete_plan("p1", Some("alice")).unwrap());
    assert_eq!(store.plan_for_request(Some("alice"), "k1").unwrap(), None);
    assert_eq!(put("p7", Some("alice"), "k1", 16), "p7");
    assert_eq!(
        store.purge_before(13).unwrap().plan_ids,
        ["p3"].map(String::from)
    );
    assert_eq!(store.plan_for_request(Some("bob"), "k1").unwrap(), None);
    assert_eq!(
        store.plan_for_request(None, "k1").unwrap().as_deref(),
        Some("p4")
    );
}

/// `stores[i]` puts plan `c{i}` for the same owner and key at the same moment (several
/// handles on one database are several replicas): every one answers the same plan, the only
/// one stored.
fn concurrent_puts_for_one_request(stores: &[&dyn Store]) {
    let barrier = Barrier::new(stores.len());
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let barrier = &barrier;
                s.spawn(move || {
                    let id = format!("c{i}");
                    barrier.wait();
                    store
                        .put_plan_for_request(&id, &plan_bytes(&id), Some("carol"), 20, "x", "same")
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    let (plans, _) = stores[0].record_ids().unwrap();
    let made: BTreeSet<_> = plans.into_iter().filter(|p| p.starts_with('c')).collect();
    assert_eq!(made, BTreeSet::from([answers[0].clone()]));
}

fn concurrent_puts_for_one_request_store_one_plan(store: &dyn Store) {
    concurrent_puts_for_one_request(&[store; 8]);
}

/// What a store acknowledged is there when it is opened again (the first handle closed).
fn acknowledged_writes_survive_a_reopen(
    first: Box<dyn Store>,
    reopen: &dyn Fn() -> Box<dyn Store>,
) {
    first
        .put_anatomy("kept", b"kept-data", b"meta", Some("alice"), 1)
        .unwrap();
    for i in 0..20 {
        let id = format!("plan-{i:02}");
        first
            .put_plan(&id, &plan_bytes(&id), Some("alice"), 1, "kept")
            .unwrap();
    }
    drop(first);
    let again = reopen();
    assert_eq!(
        again.anatomy("kept", Some("alice")).unwrap().as_deref(),
        Some(&b"kept-data"[..])
    );
    assert_eq!(list_all(again.as_ref(), 7, Some("alice")).len(), 20);
}

fn redb() -> (tempfile::TempDir, Box<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Box::new(RedbStore::open(dir.path()).unwrap());
    (dir, store)
}

fn postgres(test: &str) -> Option<(String, Box<dyn Store>)> {
    let url = fresh_database(test)?;
    let store = Box::new(PgStore::connect(&url).unwrap());
    Some((url, store))
}

macro_rules! both {
    ($case:ident) => {
        mod $case {
            #[test]
            fn redb() {
                let (_dir, store) = super::redb();
                super::$case(store.as_ref());
            }

            #[test]
            #[cfg_attr(
                not(test_postgres),
                ignore = "needs PostgreSQL: KYPHOPLAN_TEST_POSTGRES"
            )]
            fn postgres() {
                if let Some((_url, store)) = super::postgres(stringify!($case)) {
                    super::$case(store.as_ref());
                }
            }
        }
    };
}

both!(anatomies_round_trip_with_their_owners);
both!(plan_pages_are_in_byte_order_and_filtered_by_owner);
both!(deletes_and_purges_keep_the_records_consistent);
both!(concurrent_puts_of_one_anatomy_store_it_once);
both!(a_request_key_stores_one_plan);
both!(concurrent_puts_for_one_request_store_one_plan);

mod acknowledged_writes_survive_a_reopen {
    use super::*;

    #[test]
    fn redb() {
        let (dir, store) = super::redb();
        let reopen = || -> Box<dyn Store> { Box::new(RedbStore::open(dir.path()).unwrap()) };
        super::acknowledged_writes_survive_a_reopen(store, &reopen);
    }

    #[test]
    #[cfg_attr(
        not(test_postgres),
        ignore = "needs PostgreSQL: KYPHOPLAN_TEST_POSTGRES"
    )]
    fn postgres() {
        if let Some((url, store)) = super::postgres("acknowledged_writes_survive_a_reopen") {
            let reopen = || -> Box<dyn Store> { Box::new(PgStore::connect(&url).unwrap()) };
            super::acknowledged_writes_survive_a_reopen(store, &reopen);
        }
    }
}

/// Two replicas on one database: a plan written by one is read by the other at once, and the
/// same upload on both at the same moment is one anatomy.
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: KYPHOPLAN_TEST_POSTGRES (.ci/run starts a throw-away cluster)"
)]
#[test]
fn two_replicas_share_one_database() {
    let Some(url) = fresh_database("two_replicas_share_one_database") else {
        return;
    };
    // Both start (and migrate) at the same moment: the advisory lock applies each migration
    // once, and neither fails.
    let barrier = Arc::new(Barrier::new(2));
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::connect(&url)
            })
        })
        .collect();
    let stores: Vec<PgStore> = starts
        .into_iter()
        .map(|h| h.join().unwrap().expect("a replica starts"))
        .collect();
    let (a, b) = (&stores[0], &stores[1]);
    a.put_plan("p1", &plan_bytes("p1"), Some("alice"), 5, "x")
        .unwrap();
    assert_eq!(b.plan("p1", Some("alice")).unwrap(), Some(plan_bytes("p1")));
    assert_eq!(list_all(b, 10, Some("alice")), vec!["p1".to_owned()]);
    // A plan id taken already is refused, not overwritten (another replica's plan stays).
    assert!(b.put_plan("p1", b"other", Some("bob"), 6, "x").is_err());
    assert_eq!(a.plan("p1", None).unwrap(), Some(plan_bytes("p1")));
    concurrent_puts(&[a, b, a, b]);
    // The same request on both replicas at once: one plan.
    concurrent_puts_for_one_request(&[a, b, a, b]);
}

/// An unreachable database is UNAVAILABLE, at start and on a call, never a panic.
#[test]
fn an_unreachable_database_is_unavailable() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://nobody@127.0.0.1:{port}/none");
    match PgStore::connect(&url) {
        Err(ServiceError::Unavailable(message)) => {
            assert!(message.contains("unreachable"), "{message}")
        }
        Err(other) => panic!("expected UNAVAILABLE, got {other:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
    let status = tonic::Status::from(ServiceError::Unavailable("x".into()));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(matches!(
        PgStore::connect("not a url at all ://"),
        Err(ServiceError::Storage(_))
    ));
}

/// The database drops every connection of a replica (as a restart does): the calls that meet a
/// dead connection answer UNAVAILABLE, and the replica recovers with new connections.
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: KYPHOPLAN_TEST_POSTGRES (.ci/run starts a throw-away cluster)"
)]
#[test]
fn a_replica_recovers_when_its_connections_are_dropped() {
    let Some((url, store)) = postgres("a_replica_recovers_when_its_connections_are_dropped") else {
        return;
    };
    store.put_plan("p", &plan_bytes("p"), None, 1, "x").unwrap();
    // Use several pooled connections, then have the database end them all.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| store.plan("p", None).unwrap());
        }
    });
    let killed = terminate_connections(&url);
    assert!(killed >= 1, "the store had connections to end");
    let mut unavailable = 0;
    let mut recovered = false;
    for _ in 0..40 {
        match store.plan("p", None) {
            Ok(found) => {
                assert_eq!(found, Some(plan_bytes("p")));
                recovered = true;
                break;
            }
            Err(ServiceError::Unavailable(_)) => unavailable += 1,
            Err(other) => panic!("a dropped connection must be UNAVAILABLE, got {other:?}"),
        }
    }
    assert!(
        recovered,
        "still failing after {unavailable} UNAVAILABLE answers"
    );
}
