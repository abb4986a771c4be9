//! The shared store: a PostgreSQL database that several `kyphoplan-server` replicas use at once
//! (`--store postgres://...`), behind the same [`Store`] trait as the embedded redb store and
//! with the same guarantees (the store test suite runs against both).
//!
//! - Schema: the [`MIGRATIONS`], embedded, applied at start in one transaction under an
//!   advisory lock, so two replicas starting at once apply each exactly once
//!   (`kyphoplan_schema` records the versions applied).
//! - Anatomies are content-addressed (their id is the hash of their canonical encoding): one
//!   `anatomies` row (metadata, upload time) and the data in [`CHUNK_BYTES`] rows of
//!   `anatomy_chunks`, so a multi-million-triangle mesh is never one huge value. The same
//!   upload from two replicas at the same moment: `INSERT ... ON CONFLICT` makes the second
//!   wait for the first's commit and then only add its owner, so the data is stored once.
//! - Plans: one row with owner, anatomy id and creation time, indexed for `ListPlans`
//!   (owner, id), cascade deletes (anatomy id) and retention (creation time). A plan is
//!   acknowledged only after its `INSERT` committed (`synchronous_commit` as the database is
//!   configured: on by default).
//! - Ids are `COLLATE "C"`: bytewise order, as redb's, for `ListPlans` pages.
//! - Errors: an unreachable database (refused, closed, timed out waiting for a connection,
//!   shutting down) is [`ServiceError::Unavailable`]; a full one (SQLSTATE 53100, disk full)
//!   [`ServiceError::StorageFull`]; never a panic. The pool drops closed connections and
//!   connects anew, so the replica recovers when the database returns.
//!
//! The driver is async (tokio-postgres with a deadpool pool); the store's calls are blocking
//! like redb's, so the store owns a small runtime for the connections and blocks on it (the
//! service calls the store from tokio's blocking threads).

use std::collections::BTreeSet;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::error::ServiceError;
use crate::store::{AnatomyDeletion, PlanPage, Purged, Store};

/// Size of one `anatomy_chunks` row, bytes.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Connections per replica.
const POOL_SIZE: usize = 16;
/// Longest wait for a connection (from the pool or a new one) before the call is UNAVAILABLE.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock key that serialises migrations ("kyph" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b79_7068;

/// The schema, one migration per entry, applied in order; never edit one that has shipped,
/// add another.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE anatomies (
    id text COLLATE "C" PRIMARY KEY,
    meta bytea NOT NULL,
    size_bytes bigint NOT NULL,
    upload_time_ms bigint NOT NULL
);
CREATE INDEX anatomies_upload_time ON anatomies (upload_time_ms);
CREATE TABLE anatomy_chunks (
    anatomy_id text COLLATE "C" NOT NULL REFERENCES anatomies (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (anatomy_id, seq)
);
CREATE TABLE anatomy_owners (
    owner text COLLATE "C" NOT NULL,
    anatomy_id text COLLATE "C" NOT NULL REFERENCES anatomies (id) ON DELETE CASCADE,
    PRIMARY KEY (owner, anatomy_id)
);
CREATE INDEX anatomy_owners_anatomy ON anatomy_owners (anatomy_id);
CREATE TABLE plans (
    id text COLLATE "C" PRIMARY KEY,
    owner text COLLATE "C",
    anatomy_id text COLLATE "C" NOT NULL,
    create_time_ms bigint NOT NULL,
    plan bytea NOT NULL
);
CREATE INDEX plans_owner_id ON plans (owner, id);
CREATE INDEX plans_anatomy ON plans (anatomy_id, id);
CREATE INDEX plans_create_time ON plans (create_time_ms);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE plan_requests (
    owner text COLLATE "C" NOT NULL,
    request_id text COLLATE "C" NOT NULL,
    plan_id text COLLATE "C" NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    PRIMARY KEY (owner, request_id)
);
CREATE INDEX plan_requests_plan ON plan_requests (plan_id);
"#,
    ),
];

/// The PostgreSQL store. Dropping it closes its connections.
pub struct PgStore {
    pool: Pool,
    /// The runtime the connections live on (taken on drop: see [`Drop`]).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio refuses inside async code (a server shutting
        // down): let it end in the background.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The error of a database call, as the service answers it.
fn db_error(e: tokio_postgres::Error) -> ServiceError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::DISK_FULL {
            return ServiceError::StorageFull(format!("PostgreSQL: {db}"));
        }
        let class = &code.code()[..2];
        // 08: connection exception; 57P0x: the server is shutting down or starting; 53300: too
        // many connections; 40001/40P01: serialization failure, deadlock (retry).
        if class == "08"
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            return ServiceError::Unavailable(format!("the store (PostgreSQL): {db}"));
        }
        return ServiceError::Storage(format!("PostgreSQL: {db}"));
    }
    // No answer from the database: the connection failed, closed or timed out.
    ServiceError::Unavailable(format!("the store (PostgreSQL) is unreachable: {e}"))
}

impl From<tokio_postgres::Error> for ServiceError {
    fn from(e: tokio_postgres::Error) -> Self {
        db_error(e)
    }
}

fn pool_error(e: PoolError) -> ServiceError {
    match e {
        PoolError::Backend(e) => db_error(e),
        other => {
            ServiceError::Unavailable(format!("the store (PostgreSQL) is unreachable: {other}"))
        }
    }
}

fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Connect to `url` (`postgres://USER:PASSWORD@HOST:PORT/DB` or key=value pairs) and
    /// apply the missing migrations. An unreachable database is [`ServiceError::Unavailable`].
    pub fn connect(url: &str) -> Result<Self, ServiceError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            ServiceError::Storage(format!("--store: not a PostgreSQL connection URL: {e}"))
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("kyphoplan-server");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kyphoplan-pg")
            .enable_all()
            .build()
            .map_err(|e| ServiceError::Internal(format!("cannot start the store runtime: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| ServiceError::Internal(format!("cannot build the store pool: {e}")))?;
        let store = PgStore {
            pool,
            runtime: Some(runtime),
        };
        // The caller may be async code (the server starting): migrate on a thread of our own.
        std::thread::scope(|s| {
            s.spawn(|| store.run(store.migrate()))
                .join()
                .unwrap_or_else(|_| Err(ServiceError::Internal("migration panicked".into())))
        })?;
        Ok(store)
    }

    /// Run `fut` on the store's runtime and wait for it (from a thread that may block).
    fn run<T>(
        &self,
        fut: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        match &self.runtime {
            Some(rt) => rt.block_on(fut),
            None => Err(ServiceError::Unavailable("the store is closed".into())),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, ServiceError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Run `query` with a pooled connection on the store's runtime and wait for it: the one
    /// way the store's calls reach the database. `?` turns a database error into the
    /// service's ([`db_error`]).
    fn with_client<T>(
        &self,
        query: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        self.run(async {
            let mut client = self.client().await?;
            query(&mut client).await
        })
    }

    /// Apply the missing [`MIGRATIONS`] in one transaction under an advisory lock: a second
    /// replica starting at once waits, then finds them applied.
    async fn migrate(&self) -> Result<(), ServiceError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        txn.batch_execute(
            "CREATE TABLE IF NOT EXISTS kyphoplan_schema (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let applied: BTreeSet<i32> = txn
            .query("SELECT version FROM kyphoplan_schema", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let newest = MIGRATIONS.last().map_or(0, |m| m.0);
        if let Some(&unknown) = applied.iter().find(|&&v| v > newest) {
            return Err(ServiceError::Storage(format!(
                "the database's schema is version {unknown}, newer than this server's \
                 ({newest}): upgrade the server"
            )));
        }
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            txn.batch_execute(sql).await?;
            txn.execute(
                "INSERT INTO kyphoplan_schema (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!(version, "store schema migrated");
        }
        Ok(txn.commit().await?)
    }

    async fn owns_anatomy_in(
        client: &impl GenericClient,
        id: &str,
        owner: Option<&str>,
    ) -> Result<bool, ServiceError> {
        let row = match owner {
            None => {
                client
                    .query_opt("SELECT 1 FROM anatomies WHERE id = $1", &[&id])
                    .await?
            }
            Some(o) => {
                client
                    .query_opt(
                        "SELECT 1 FROM anatomy_owners WHERE owner = $1 AND anatomy_id = $2",
                        &[&o, &id],
                    )
                    .await?
            }
        };
        Ok(row.is_some())
    }
}

impl Store for PgStore {
    fn check(&self) -> Result<(), ServiceError> {
        self.with_client(async |client| {
            client.simple_query("SELECT 1").await?;
            Ok(())
        })
    }

    fn compact(&self) -> Result<(), ServiceError> {
        self.with_client(async |client| {
            client
                .batch_execute(
                    "VACUUM plans, plan_requests, anatomies, anatomy_chunks, anatomy_owners",
                )
                .await?;
            Ok(())
        })
    }

    fn delete_plan(&self, id: &str, owner: Option<&str>) -> Result<bool, ServiceError> {
        self.with_client(async |client| {
            // Its request key goes with it (ON DELETE CASCADE).
            let n = client
                .execute(
                    "DELETE FROM plans WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
                    &[&id, &owner],
                )
                .await?;
            Ok(n > 0)
        })
    }

    fn delete_anatomy(
        &self,
        id: &str,
        owner: Option<&str>,
        cascade: bool,
    ) -> Result<Option<AnatomyDeletion>, ServiceError> {
        self.with_client(async |client| {
            let txn = client.transaction().await?;
            // Lock the anatomy's row: a concurrent upload or delete of it waits for us.
            let exists = txn
                .query_opt("SELECT 1 FROM anatomies WHERE id = $1 FOR UPDATE", &[&id])
                .await?
                .is_some();
            if !exists || !Self::owns_anatomy_in(&txn, id, owner).await? {
                return Ok(None);
            }
            let plan_ids: Vec<String> = txn
                .query(
                    "SELECT id FROM plans WHERE anatomy_id = $1 AND ($2::text IS NULL OR owner = $2) \
                     ORDER BY id",
                    &[&id, &owner],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !plan_ids.is_empty() && !cascade {
                return Err(ServiceError::AnatomyHasPlans {
                    anatomy_id: id.to_owned(),
                    plans: plan_ids.len(),
                });
            }
            txn.execute("DELETE FROM plans WHERE id = ANY($1)", &[&plan_ids])
                .await?;
            let data_removed = match owner {
                None => true,
                Some(o) => {
                    txn.execute(
                        "DELETE FROM anatomy_owners WHERE owner = $1 AND anatomy_id = $2",
                        &[&o, &id],
                    )
                    .await?;
                    txn.query_opt(
                        "SELECT 1 FROM anatomy_owners WHERE anatomy_id = $1 LIMIT 1",
                        &[&id],
                    )
                    .await?
                    .is_none()
                }
            };
            if data_removed {
                // Chunks and owners go with it (ON DELETE CASCADE).
                txn.execute("DELETE FROM anatomies WHERE id = $1", &[&id])
                    .await?;
            }
            txn.commit().await?;
            Ok(Some(AnatomyDeletion {
                plan_ids,
                data_removed,
            }))
        })
    }

    fn purge_before(&self, cutoff_unix_ms: u64) -> Result<Purged, ServiceError> {
        let cutoff = ms(cutoff_unix_ms);
        self.with_client(async |client| {
            let txn = client.transaction().await?;
            let ids = |rows: Vec<tokio_postgres::Row>| {
                let mut ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                ids.sort();
                ids
            };
            let plan_ids = ids(txn
                .query(
                    "DELETE FROM plans WHERE create_time_ms < $1 RETURNING id",
                    &[&cutoff],
                )
                .await?);
            let anatomy_ids = ids(txn
                .query(
                    "DELETE FROM anatomies WHERE upload_time_ms < $1 RETURNING id",
                    &[&cutoff],
                )
                .await?);
            txn.commit().await?;
            Ok(Purged {
                plan_ids,
                anatomy_ids,
            })
        })
    }

    fn record_ids(&self) -> Result<(BTreeSet<String>, BTreeSet<String>), ServiceError> {
        self.with_client(async |client| {
            let txn = snapshot(client).await?;
            let ids = async |sql: &str| -> Result<BTreeSet<String>, ServiceError> {
                Ok(txn
                    .query(sql, &[])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect())
            };
            let plans = ids("SELECT id FROM plans").await?;
            let anatomies = ids("SELECT id FROM anatomies").await?;
            txn.commit().await?;
            Ok((plans, anatomies))
        })
    }

    fn owns_anatomy(&self, id: &str, owner: Option<&str>) -> Result<bool, ServiceError> {
        self.with_client(async |client| Self::owns_anatomy_in(&*client, id, owner).await)
    }

    fn put_anatomy(
        &self,
        id: &str,
        data: &[u8],
        meta: &[u8],
        owner: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<(), ServiceError> {
        let now = ms(now_unix_ms);
        let size = i64::try_from(data.len()).unwrap_or(i64::MAX);
        self.with_client(async |client| {
            let txn = client.transaction().await?;
            // A concurrent put of the same id waits here for the other's commit, then finds
            // the row: only the first writes the data.
            let inserted: bool = txn
                .query_one(
                    "INSERT INTO anatomies (id, meta, size_bytes, upload_time_ms) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE \
                     SET meta = EXCLUDED.meta, upload_time_ms = EXCLUDED.upload_time_ms \
                     RETURNING (xmax = 0)",
                    &[&id, &meta, &size, &now],
                )
                .await?
                .get(0);
            if inserted {
                let insert = txn
                    .prepare(
                        "INSERT INTO anatomy_chunks (anatomy_id, seq, data) VALUES ($1, $2, $3)",
                    )
                    .await?;
                for (seq, chunk) in data.chunks(CHUNK_BYTES).enumerate() {
                    let seq = i32::try_from(seq).map_err(|_| {
                        ServiceError::Internal("anatomy too large for its chunk index".into())
                    })?;
                    txn.execute(&insert, &[&id, &seq, &chunk]).await?;
                }
            }
            if let Some(o) = owner {
                add_anatomy_owner(&txn, o, id).await?;
            }
            txn.commit().await?;
            Ok(())
        })
    }

    fn reupload_anatomy(
        &self,
        id: &str,
        owner: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<bool, ServiceError> {
        let now = ms(now_unix_ms);
        self.with_client(async |client| {
            let txn = client.transaction().await?;
            let n = txn
                .execute(
                    "UPDATE anatomies SET upload_time_ms = $2 WHERE id = $1",
                    &[&id, &now],
                )
                .await?;
            if n == 0 {
                return Ok(false);
            }
            if let Some(o) = owner {
                add_anatomy_owner(&txn, o, id).await?;
            }
            txn.commit().await?;
            Ok(true)
        })
    }

    fn anatomy(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError> {
        self.with_client(async |client| {
            // One snapshot: the ownership and every chunk as of the same moment.
            let txn = snapshot(client).await?;
            if !Self::owns_anatomy_in(&txn, id, owner).await? {
                return Ok(None);
            }
            let size: i64 = match txn
                .query_opt("SELECT size_bytes FROM anatomies WHERE id = $1", &[&id])
                .await?
            {
                Some(row) => row.get(0),
                None => return Ok(None),
            };
            let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            for row in txn
                .query(
                    "SELECT data FROM anatomy_chunks WHERE anatomy_id = $1 ORDER BY seq",
                    &[&id],
                )
                .await?
            {
                data.extend_from_slice(row.get::<_, &[u8]>(0));
            }
            txn.commit().await?;
            if data.len() as i64 != size {
                return Err(ServiceError::Internal(format!(
                    "anatomy '{id}' has {} of its {size} bytes in the store",
                    data.len()
                )));
            }
            Ok(Some(data))
        })
    }

    fn anatomy_meta(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError> {
        self.with_client(async |client| {
            let row = match owner {
                None => {
                    client
                        .query_opt("SELECT meta FROM anatomies WHERE id = $1", &[&id])
                        .await?
                }
                Some(o) => {
                    client
                        .query_opt(
                            "SELECT a.meta FROM anatomies a JOIN anatomy_owners o \
                             ON o.anatomy_id = a.id WHERE a.id = $1 AND o.owner = $2",
                            &[&id, &o],
                        )
                        .await?
                }
            };
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn put_plan(
        &self,
        id: &str,
        plan: &[u8],
        owner: Option<&str>,
        create_time_unix_ms: u64,
        anatomy_id: &str,
    ) -> Result<(), ServiceError> {
        let created = ms(create_time_unix_ms);
        self.with_client(async |client| {
            // One statement, one transaction: durable when it returns.
            insert_plan(&*client, id, plan, owner, created, anatomy_id).await
        })
    }

    fn plan_for_request(
        &self,
        owner: Option<&str>,
        request_id: &str,
    ) -> Result<Option<String>, ServiceError> {
        self.with_client(async |client| {
            let row = client
                .query_opt(
                    "SELECT plan_id FROM plan_requests WHERE owner = $1 AND request_id = $2",
                    &[&owner.unwrap_or(""), &request_id],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn put_plan_for_request(
        &self,
        id: &str,
        plan: &[u8],
        owner: Option<&str>,
        create_time_unix_ms: u64,
        anatomy_id: &str,
        request_id: &str,
    ) -> Result<String, ServiceError> {
        let created = ms(create_time_unix_ms);
        let key_owner = owner.unwrap_or("");
        self.with_client(async |client| {
            // The winner's plan may be deleted between our conflict and our look-up: then the
            // key is free again and we try once more.
            for _ in 0..3 {
                let txn = client.transaction().await?;
                insert_plan(&txn, id, plan, owner, created, anatomy_id).await?;
                // A second replica inserting the same key waits here for the first's commit,
                // then inserts nothing.
                let claimed = txn
                    .execute(
                        "INSERT INTO plan_requests (owner, request_id, plan_id) \
                         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        &[&key_owner, &request_id, &id],
                    )
                    .await?;
                if claimed == 1 {
                    txn.commit().await?;
                    return Ok(id.to_owned());
                }
                txn.rollback().await?;
                if let Some(row) = client
                    .query_opt(
                        "SELECT plan_id FROM plan_requests WHERE owner = $1 AND request_id = $2",
                        &[&key_owner, &request_id],
                    )
                    .await?
                {
                    return Ok(row.get(0));
                }
            }
            Err(ServiceError::Unavailable(format!(
                "request '{request_id}': its plan was stored and deleted three times meanwhile"
            )))
        })
    }

    fn plan(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError> {
        self.with_client(async |client| {
            let row = client
                .query_opt(
                    "SELECT plan FROM plans WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
                    &[&id, &owner],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn plans_after(
        &self,
        after: &str,
        limit: usize,
        owner: Option<&str>,
    ) -> Result<PlanPage, ServiceError> {
        // One more than asked: whether more follow.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT id, plan FROM plans \
                     WHERE id > $1 AND ($2::text IS NULL OR owner = $2) \
                     ORDER BY id LIMIT $3",
                    &[&after, &owner, &fetch],
                )
                .await?;
            let more = rows.len() > limit;
            let page = rows
                .iter()
                .take(limit)
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                .collect();
            Ok((page, more))
        })
    }
}

/// A read-only transaction on one snapshot (repeatable read).
async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, ServiceError> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// Add `owner` to anatomy `id`'s owners (once).
async fn add_anatomy_owner(
    client: &impl GenericClient,
    owner: &str,
    id: &str,
) -> Result<(), ServiceError> {
    client
        .execute(
            "INSERT INTO anatomy_owners (owner, anatomy_id) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
            &[&owner, &id],
        )
        .await?;
    Ok(())
}

/// Insert a plan row. A plain INSERT: an id taken already (which unique ids make impossible)
/// fails rather than replace another replica's plan.
async fn insert_plan(
    client: &impl GenericClient,
    id: &str,
    plan: &[u8],
    owner: Option<&str>,
    created_ms: i64,
    anatomy_id: &str,
) -> Result<(), ServiceError> {
    client
        .execute(
            "INSERT INTO plans (id, owner, anatomy_id, create_time_ms, plan) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&id, &owner, &anatomy_id, &created_ms, &plan],
        )
        .await?;
    Ok(())
}
