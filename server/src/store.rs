//! The store: anatomies by id (canonical prost-encoded `AnatomyData`), their metadata
//! (prost-encoded `Anatomy`), and plans by id (prost-encoded `Plan`), behind one trait,
//! [`Store`], with two implementations: the embedded [`RedbStore`] in the data directory (the
//! default, one server) and [`crate::pg_store::PgStore`] on a PostgreSQL database that several
//! replicas share (`--store postgres://...`). Calls are blocking: the service runs them on
//! tokio's blocking threads.
//!
//! With authentication on, every record has owners (principal names): a plan has one owner, an
//! anatomy a set of (owner, anatomy) pairs (anatomies are content-addressed, so several
//! principals may upload the same one). A record and its owner are written in one transaction.
//! Look-ups take `owner: Option<&str>`: `None` (no authentication) sees everything,
//! `Some(name)` only what that name owns; anything else reads as absent.
//!
//! Lifecycle: each plan's creation time and anatomy, and when each anatomy was last uploaded,
//! are indexed for delete and purge. A delete or purge is one write transaction (the record,
//! its owners and its index entries go together or not at all); [`Store::compact`] then lets
//! the deleted bytes leave the disk (redb rewrites its file).
//!
//! The redb tables: `plan_owner` maps a plan to its one owner, `anatomy_owners` holds (owner,
//! anatomy) pairs, `plan_info` each plan's creation time and anatomy, `anatomy_plans` the
//! (anatomy, plan) pairs, `anatomy_time` when each anatomy was last uploaded, and
//! `request_plan` / `plan_request` a CreatePlan's request key and its plan, both ways.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use kyphoplan_proto::pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::ServiceError;

const ANATOMIES: TableDefinition<&str, &[u8]> = TableDefinition::new("anatomies");
const ANATOMY_META: TableDefinition<&str, &[u8]> = TableDefinition::new("anatomy_meta");
const PLANS: TableDefinition<&str, &[u8]> = TableDefinition::new("plans");
const PLAN_OWNER: TableDefinition<&str, &str> = TableDefinition::new("plan_owner");
const ANATOMY_OWNERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("anatomy_owners");
/// plan id -> (creation time, ms since the Unix epoch; anatomy id)
const PLAN_INFO: TableDefinition<&str, (u64, &str)> = TableDefinition::new("plan_info");
/// (anatomy id, plan id): the plans made for an anatomy.
const ANATOMY_PLANS: TableDefinition<(&str, &str), ()> = TableDefinition::new("anatomy_plans");
/// anatomy id -> when it was last uploaded (ms since the Unix epoch).
const ANATOMY_TIME: TableDefinition<&str, u64> = TableDefinition::new("anatomy_time");
/// (owner, CreatePlan request id) -> the plan stored for it (owner "" without authentication).
const REQUEST_PLAN: TableDefinition<(&str, &str), &str> = TableDefinition::new("request_plan");
/// plan id -> (owner, request id): the key that goes with the plan.
const PLAN_REQUEST: TableDefinition<&str, (&str, &str)> = TableDefinition::new("plan_request");

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "kyphoplan.redb";

/// A page of stored plans (id, encoded plan) and whether more follow.
pub type PlanPage = (Vec<(String, Vec<u8>)>, bool);

/// What a delete of an anatomy did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AnatomyDeletion {
    /// The caller's plans deleted with it (cascade), in id order.
    pub plan_ids: Vec<String>,
    /// The anatomy's data left the store (no owner remains).
    pub data_removed: bool,
}

/// What a purge removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub plan_ids: Vec<String>,
    pub anatomy_ids: Vec<String>,
}

impl Purged {
    pub fn is_empty(&self) -> bool {
        self.plan_ids.is_empty() && self.anatomy_ids.is_empty()
    }
}

/// What every store guarantees (tested against both by `tests/tests/store_suite.rs`): a write
/// is durable when it returns `Ok`; the same anatomy put twice, even at the same moment from two
/// servers, is stored once, and so is a plan put twice under one request key; a full store
/// answers [`ServiceError::StorageFull`], an unreachable one [`ServiceError::Unavailable`];
/// ids are ordered bytewise.
pub trait Store: Send + Sync {
    /// Whether the store answers now (cheap: the health service asks every
    /// `--health-check-ms`). redb: a read transaction; PostgreSQL: `SELECT 1` on a pooled
    /// connection.
    fn check(&self) -> Result<(), ServiceError>;

    /// Let the bytes of deleted records leave the disk (redb: rewrite the file; PostgreSQL:
    /// `VACUUM` of the tables). Waits for the calls in flight.
    fn compact(&self) -> Result<(), ServiceError>;

    /// Delete plan `id` if `owner` may see it, in one transaction; whether it was deleted.
    fn delete_plan(&self, id: &str, owner: Option<&str>) -> Result<bool, ServiceError>;

    /// Delete anatomy `id` for `owner`, in one transaction: `None` if `owner` may not see it.
    /// The owner's plans made for it refuse the delete unless `cascade` (then they go too).
    /// With other owners left only `owner`'s ownership goes; the data goes with the last owner
    /// (or at once without authentication).
    fn delete_anatomy(
        &self,
        id: &str,
        owner: Option<&str>,
        cascade: bool,
    ) -> Result<Option<AnatomyDeletion>, ServiceError>;

    /// Remove every plan created and every anatomy last uploaded before `cutoff_unix_ms`, with
    /// their owners, in one transaction (ids in order). A purged anatomy's younger plans stay
    /// (a plan holds all it needs); they are purged when they are old enough themselves.
    fn purge_before(&self, cutoff_unix_ms: u64) -> Result<Purged, ServiceError>;

    /// Every stored plan id and anatomy id (for consistency checks).
    fn record_ids(&self) -> Result<(BTreeSet<String>, BTreeSet<String>), ServiceError>;

    /// Whether `owner` may see anatomy `id` (stored, and owned by it when `owner` is given).
    fn owns_anatomy(&self, id: &str, owner: Option<&str>) -> Result<bool, ServiceError>;

    /// Store an anatomy and its metadata once (a second put of the same id only adds `owner`).
    /// `now_unix_ms` becomes its upload time (retention counts from the last upload).
    fn put_anatomy(
        &self,
        id: &str,
        data: &[u8],
        meta: &[u8],
        owner: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<(), ServiceError>;

    /// An anatomy already stored was uploaded again (by `owner`, if given): add the owner and
    /// make `now_unix_ms` its upload time. False if it is no longer stored (deleted meanwhile).
    fn reupload_anatomy(
        &self,
        id: &str,
        owner: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<bool, ServiceError>;

    /// The encoded anatomy, if `owner` may see it.
    fn anatomy(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError>;

    /// The anatomy's metadata, if `owner` may see it.
    fn anatomy_meta(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError>;

    /// Store a plan (its owner, creation time and anatomy) in one transaction; durable when
    /// this returns.
    fn put_plan(
        &self,
        id: &str,
        plan: &[u8],
        owner: Option<&str>,
        create_time_unix_ms: u64,
        anatomy_id: &str,
    ) -> Result<(), ServiceError>;

    /// The id of the plan stored for `owner`'s CreatePlan request `request_id`, if any.
    fn plan_for_request(
        &self,
        owner: Option<&str>,
        request_id: &str,
    ) -> Result<Option<String>, ServiceError>;

    /// [`Store::put_plan`] once per `owner`'s request `request_id` (a client's idempotency
    /// key), in one transaction: the id of the plan stored for it. That is `id` unless a plan
    /// was stored for the key before (a retry, or the same request on another replica at the
    /// same moment): then nothing is written and that plan's id is returned. The key goes
    /// with its plan (delete, purge).
    fn put_plan_for_request(
        &self,
        id: &str,
        plan: &[u8],
        owner: Option<&str>,
        create_time_unix_ms: u64,
        anatomy_id: &str,
        request_id: &str,
    ) -> Result<String, ServiceError>;

    /// The encoded plan, if `owner` may see it.
    fn plan(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError>;

    /// Up to `limit` plans with ids after `after` (exclusive; empty: from the start), in id
    /// order, and whether more follow. Only plans `owner` may see are counted and returned.
    fn plans_after(
        &self,
        after: &str,
        limit: usize,
        owner: Option<&str>,
    ) -> Result<PlanPage, ServiceError>;
}

/// The store `config` names: the PostgreSQL database of `--store`, else the embedded store in
/// `--data-dir`.
pub fn open(config: &crate::config::Config) -> Result<Box<dyn Store>, ServiceError> {
    match &config.store {
        Some(url) => Ok(Box::new(crate::pg_store::PgStore::connect(url)?)),
        None => Ok(Box::new(RedbStore::open(&config.data_dir)?)),
    }
}

/// The embedded store. Every call takes the database's read lock (redb orders the transactions itself);
/// only [`Store::compact`] takes the write lock, as redb's compaction needs the database alone,
/// and so does opening the database again after a failed write ([`Store::check`]).
pub struct RedbStore {
    /// `None` while it could not be opened again after a failed write.
    db: RwLock<Option<Database>>,
    data_dir: PathBuf,
}

/// The read-locked database of a [`RedbStore`].
struct OpenDb<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for OpenDb<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        // Only made when it is open (`RedbStore::db`).
        self.0.as_ref().expect("an open database")
    }
}

fn not_open() -> ServiceError {
    ServiceError::Unavailable(
        "the embedded store failed a write (is its disk full?) and cannot be opened again yet"
            .into(),
    )
}

type WriteTxn = redb::WriteTransaction;

/// Remove a plan and its owner and index entries inside `txn`; whether it was there.
fn remove_plan(txn: &WriteTxn, id: &str) -> Result<bool, ServiceError> {
    let mut plans = txn.open_table(PLANS).map_err(storage)?;
    let existed = plans.remove(id).map_err(storage)?.is_some();
    let mut owners = txn.open_table(PLAN_OWNER).map_err(storage)?;
    owners.remove(id).map_err(storage)?;
    let mut info = txn.open_table(PLAN_INFO).map_err(storage)?;
    let anatomy = info
        .remove(id)
        .map_err(storage)?
        .map(|v| v.value().1.to_owned());
    if let Some(anatomy) = anatomy {
        let mut by_anatomy = txn.open_table(ANATOMY_PLANS).map_err(storage)?;
        by_anatomy.remove((anatomy.as_str(), id)).map_err(storage)?;
    }
    let mut plan_request = txn.open_table(PLAN_REQUEST).map_err(storage)?;
    let key = plan_request.remove(id).map_err(storage)?.map(|v| {
        let (owner, request) = v.value();
        (owner.to_owned(), request.to_owned())
    });
    if let Some((owner, request)) = key {
        let mut request_plan = txn.open_table(REQUEST_PLAN).map_err(storage)?;
        request_plan
            .remove((owner.as_str(), request.as_str()))
            .map_err(storage)?;
    }
    Ok(existed)
}

/// Store a plan with its owner and index entries inside `txn`.
fn insert_plan(
    txn: &WriteTxn,
    id: &str,
    plan: &[u8],
    owner: Option<&str>,
    create_time_unix_ms: u64,
    anatomy_id: &str,
) -> Result<(), ServiceError> {
    let mut plans = txn.open_table(PLANS).map_err(storage)?;
    plans.insert(id, plan).map_err(storage)?;
    let mut info = txn.open_table(PLAN_INFO).map_err(storage)?;
    info.insert(id, (create_time_unix_ms, anatomy_id))
        .map_err(storage)?;
    let mut by_anatomy = txn.open_table(ANATOMY_PLANS).map_err(storage)?;
    by_anatomy.insert((anatomy_id, id), ()).map_err(storage)?;
    if let Some(o) = owner {
        let mut owners = txn.open_table(PLAN_OWNER).map_err(storage)?;
        owners.insert(id, o).map_err(storage)?;
    }
    Ok(())
}

/// Remove an anatomy's data, metadata, time and every owner inside `txn` (its plans stay).
fn remove_anatomy_data(txn: &WriteTxn, id: &str) -> Result<(), ServiceError> {
    txn.open_table(ANATOMIES)
        .map_err(storage)?
        .remove(id)
        .map_err(storage)?;
    txn.open_table(ANATOMY_META)
        .map_err(storage)?
        .remove(id)
        .map_err(storage)?;
    txn.open_table(ANATOMY_TIME)
        .map_err(storage)?
        .remove(id)
        .map_err(storage)?;
    let mut owners = txn.open_table(ANATOMY_OWNERS).map_err(storage)?;
    let names = owner_names(&owners, id)?;
    for name in &names {
        owners.remove((name.as_str(), id)).map_err(storage)?;
    }
    Ok(())
}

/// The owners of anatomy `id` (a scan of the owner pairs: deletes are rare).
fn owner_names(
    owners: &impl ReadableTable<(&'static str, &'static str), ()>,
    id: &str,
) -> Result<Vec<String>, ServiceError> {
    let mut out = Vec::new();
    for item in owners.iter().map_err(storage)? {
        let (k, _) = item.map_err(storage)?;
        let (name, anatomy) = k.value();
        if anatomy == id {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

fn storage(e: impl Into<redb::Error>) -> ServiceError {
    ServiceError::from(e.into())
}

/// Every record of table `def` in `from`, inserted into `to` (compaction by copy).
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<(), ServiceError> {
    let source = from.open_table(def).map_err(storage)?;
    let mut target = to.open_table(def).map_err(storage)?;
    for entry in source.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        target.insert(k.value(), v.value()).map_err(storage)?;
    }
    Ok(())
}

impl RedbStore {
    /// Open (or create) the store in `data_dir`, creating the directory and tables.
    pub fn open(data_dir: &Path) -> Result<Self, ServiceError> {
        Ok(RedbStore {
            db: RwLock::new(Some(Self::open_database(data_dir)?)),
            data_dir: data_dir.to_owned(),
        })
    }

    /// [`RedbStore::open`]'s database.
    fn open_database(data_dir: &Path) -> Result<Database, ServiceError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            ServiceError::Storage(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let db = Database::create(data_dir.join(DB_FILE)).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(ANATOMIES).map_err(storage)?;
            txn.open_table(ANATOMY_META).map_err(storage)?;
            let plans = txn.open_table(PLANS).map_err(storage)?;
            txn.open_table(PLAN_OWNER).map_err(storage)?;
            txn.open_table(ANATOMY_OWNERS).map_err(storage)?;
            let mut info = txn.open_table(PLAN_INFO).map_err(storage)?;
            let mut by_anatomy = txn.open_table(ANATOMY_PLANS).map_err(storage)?;
            let mut times = txn.open_table(ANATOMY_TIME).map_err(storage)?;
            txn.open_table(REQUEST_PLAN).map_err(storage)?;
            txn.open_table(PLAN_REQUEST).map_err(storage)?;
            // A store written before the lifecycle indexes existed: index its plans (from the
            // plans themselves) and date its anatomies from now.
            if info.len().map_err(storage)? == 0 && plans.len().map_err(storage)? > 0 {
                for item in plans.iter().map_err(storage)? {
                    let (k, v) = item.map_err(storage)?;
                    let plan = pb::Plan::decode(v.value()).map_err(|e| {
                        ServiceError::Internal(format!("stored plan does not decode: {e}"))
                    })?;
                    info.insert(
                        k.value(),
                        (plan.create_time_unix_ms, plan.anatomy_id.as_str()),
                    )
                    .map_err(storage)?;
                    by_anatomy
                        .insert((plan.anatomy_id.as_str(), k.value()), ())
                        .map_err(storage)?;
                }
            }
            let metas = txn.open_table(ANATOMY_META).map_err(storage)?;
            if times.len().map_err(storage)? < metas.len().map_err(storage)? {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                for item in metas.iter().map_err(storage)? {
                    let (k, _) = item.map_err(storage)?;
                    if times.get(k.value()).map_err(storage)?.is_none() {
                        times.insert(k.value(), now).map_err(storage)?;
                    }
                }
            }
        }
        txn.commit().map_err(storage)?;
        Ok(db)
    }

    fn db(&self) -> Result<OpenDb<'_>, ServiceError> {
        // A poisoned lock only means a panic elsewhere while holding it; redb's state is its own.
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(not_open());
        }
        Ok(OpenDb(guard))
    }

    /// Close the database and open it again: after a failed write (a full disk) redb refuses
    /// every call until then. Opening recovers the last commit.
    fn reopen(&self) -> Result<(), ServiceError> {
        let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
        // Closed first: the file is locked while it is open.
        *guard = None;
        *guard = Some(Self::open_database(&self.data_dir)?);
        tracing::info!(data_dir = %self.data_dir.display(), "embedded store opened again after a failed write");
        Ok(())
    }

    fn get(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
    ) -> Result<Option<Vec<u8>>, ServiceError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(table).map_err(storage)?;
        Ok(table.get(id).map_err(storage)?.map(|v| v.value().to_vec()))
    }
}

impl Store for RedbStore {
    /// Whether a write could begin now (without waiting for one in progress; nothing is
    /// written). After a failed write redb refuses every call: the database is opened again
    /// here (the health task calls this every `--health-check-ms`), which fails, NOT_SERVING,
    /// until there is room to recover.
    fn check(&self) -> Result<(), ServiceError> {
        if let Ok(db) = self.db() {
            match db.try_begin_write() {
                Ok(txn) => {
                    txn.abort().map_err(storage)?;
                    return Ok(());
                }
                Err(redb::TransactionError::WouldBlock) => return Ok(()),
                Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => {}
                Err(e) => return Err(storage(e)),
            }
        }
        self.reopen()
    }

    /// Rewrite the database file with only the live records, so that the bytes of deleted
    /// records leave the data directory: every table copied into a fresh file beside it, which
    /// then replaces the old one by an atomic rename (a crash before the rename leaves the old
    /// file whole). redb's own `compact` is not enough: it moves pages towards the start of the
    /// file but does not overwrite the freed ones it cannot truncate, so deleted bytes could stay
    /// (seen with the request-key tables). Costs a copy of the live data per delete; deletes are
    /// rare. Waits for the store calls in flight; blocks the others meanwhile.
    fn compact(&self) -> Result<(), ServiceError> {
        let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
        let db = guard.as_ref().ok_or_else(not_open)?;
        let path = self.data_dir.join(DB_FILE);
        let fresh_path = self.data_dir.join(format!("{DB_FILE}.compacting"));
        let io = |what: &str, e: std::io::Error| {
            ServiceError::Storage(format!("compaction: cannot {what}: {e}"))
        };
        match std::fs::remove_file(&fresh_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&format!("remove {}", fresh_path.display()), e)),
        }
        let copy = || -> Result<(), ServiceError> {
            let fresh = Database::create(&fresh_path).map_err(storage)?;
            let from = db.begin_read().map_err(storage)?;
            let to = fresh.begin_write().map_err(storage)?;
            copy_table(&from, &to, ANATOMIES)?;
            copy_table(&from, &to, ANATOMY_META)?;
            copy_table(&from, &to, PLANS)?;
            copy_table(&from, &to, PLAN_OWNER)?;
            copy_table(&from, &to, ANATOMY_OWNERS)?;
            copy_table(&from, &to, PLAN_INFO)?;
            copy_table(&from, &to, ANATOMY_PLANS)?;
            copy_table(&from, &to, ANATOMY_TIME)?;
            copy_table(&from, &to, REQUEST_PLAN)?;
            copy_table(&from, &to, PLAN_REQUEST)?;
            to.commit().map_err(storage)?;
            Ok(())
        };
        if let Err(e) = copy() {
            // E.g. no room for the copy on a full disk: the old file stays in use, whole.
            let _ = std::fs::remove_file(&fresh_path);
            return Err(e);
        }
        // Closed before the rename (the file is locked while open), opened again after it.
        *guard = None;
        std::fs::rename(&fresh_path, &path).map_err(|e| io("replace the database file", e))?;
        if let Ok(dir) = std::fs::File::open(&self.data_dir) {
            // The rename made durable; where a directory cannot be synced it is at worst undone
            // by a crash, which leaves the old, complete file.
            let _ = dir.sync_all();
        }
        *guard = Some(Self::open_database(&self.data_dir)?);
        Ok(())
    }

    fn delete_plan(&self, id: &str, owner: Option<&str>) -> Result<bool, ServiceError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(storage)?;
        if !may_see_plan(&txn.open_table(PLAN_OWNER).map_err(storage)?, id, owner)? {
            return Ok(false);
        }
        let existed = remove_plan(&txn, id)?;
        txn.commit().map_err(storage)?;
        Ok(existed)
    }

    fn delete_anatomy(
        &self,
        id: &str,
        owner: Option<&str>,
        cascade: bool,
    ) -> Result<Option<AnatomyDeletion>, ServiceError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(storage)?;
        let owned = match owner {
            None => {
                let metas = txn.open_table(ANATOMY_META).map_err(storage)?;
                let found = metas.get(id).map_err(storage)?.is_some();
                found
            }
            Some(o) => {
                let owners = txn.open_table(ANATOMY_OWNERS).map_err(storage)?;
                let found = owners.get((o, id)).map_err(storage)?.is_some();
                found
            }
        };
        if !owned {
            return Ok(None);
        }
        let plan_ids = {
            let by_anatomy = txn.open_table(ANATOMY_PLANS).map_err(storage)?;
            let plan_owners = txn.open_table(PLAN_OWNER).map_err(storage)?;
            let mut ids = Vec::new();
            for item in by_anatomy.range((id, "")..).map_err(storage)? {
                let (k, _) = item.map_err(storage)?;
                let (anatomy, plan) = k.value();
                if anatomy != id {
                    break;
                }
                let mine = match owner {
                    None => true,
                    Some(o) => plan_owners
                        .get(plan)
                        .map_err(storage)?
                        .is_some_and(|w| w.value() == o),
                };
                if mine {
                    ids.push(plan.to_owned());
                }
            }
            ids
        };
        if !plan_ids.is_empty() && !cascade {
            return Err(ServiceError::AnatomyHasPlans {
                anatomy_id: id.to_owned(),
                plans: plan_ids.len(),
            });
        }
        for plan in &plan_ids {
            remove_plan(&txn, plan)?;
        }
        let data_removed = match owner {
            None => true,
            Some(o) => {
                let mut owners = txn.open_table(ANATOMY_OWNERS).map_err(storage)?;
                owners.remove((o, id)).map_err(storage)?;
                owner_names(&owners, id)?.is_empty()
            }
        };
        if data_removed {
            remove_anatomy_data(&txn, id)?;
        }
        txn.commit().map_err(storage)?;
        Ok(Some(AnatomyDeletion {
            plan_ids,
            data_removed,
        }))
    }

    fn purge_before(&self, cutoff_unix_ms: u64) -> Result<Purged, ServiceError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(storage)?;
        let mut purged = Purged::default();
        {
            let info = txn.open_table(PLAN_INFO).map_err(storage)?;
            for item in info.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                if v.value().0 < cutoff_unix_ms {
                    purged.plan_ids.push(k.value().to_owned());
                }
            }
            let times = txn.open_table(ANATOMY_TIME).map_err(storage)?;
            for item in times.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                if v.value() < cutoff_unix_ms {
                    purged.anatomy_ids.push(k.value().to_owned());
                }
            }
        }
        for plan in &purged.plan_ids {
            remove_plan(&txn, plan)?;
        }
        for anatomy in &purged.anatomy_ids {
            remove_anatomy_data(&txn, anatomy)?;
        }
        txn.commit().map_err(storage)?;
        Ok(purged)
    }

    fn record_ids(&self) -> Result<(BTreeSet<String>, BTreeSet<String>), ServiceError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(storage)?;
        let mut plans = BTreeSet::new();
        for item in txn
            .open_table(PLANS)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            plans.insert(item.map_err(storage)?.0.value().to_owned());
        }
        let mut anatomies = BTreeSet::new();
        for item in txn
            .open_table(ANATOMY_META)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            anatomies.insert(item.map_err(storage)?.0.value().to_owned());
        }
        Ok((plans, anatomies))
    }

    fn owns_anatomy(&self, id: &str, owner: Option<&str>) -> Result<bool, ServiceError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(storage)?;
        match owner {
            None => {
                let table = txn.open_table(ANATOMY_META).map_err(storage)?;
                Ok(table.get(id).map_err(storage)?.is_some())
            }
            Some(o) => {
                let table = txn.open_table(ANATOMY_OWNERS).map_err(storage)?;
                Ok(table.get((o, id)).map_err(storage)?.is_some())
            }
        }
    }

    fn put_anatomy(
        &self,
        id: &str,
        data: &[u8],
        meta: &[u8],
        owner: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<(), ServiceError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut anatomies = txn.open_table(ANATOMIES).map_err(storage)?;
            if anatomies.get(id).map_err(storage)?.is_none() {
                anatomies.insert(id, data).map_err(storage)?;
            }
            let mut metas = txn.open_table(ANATOMY_META).map_err(storage)?;
            metas.insert(id, meta).map_err(storage)?;
            let mut times = txn.open_table(ANATOMY_TIME).map_err(storage)?;
            times.insert(id, now_unix_ms).map_err(storage)?;
            if let Some(o) = owner {
                let mut owners = txn.open_table(ANATOMY_OWNERS).map_err(storage)?;
                owners.insert((o, id), ()).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    fn reupload_anatomy(
        &self,
        id: &str,
        owner: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<bool, ServiceError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(storage)?;
        {
            let metas = txn.open_table(ANATOMY_META).map_err(storage)?;
            if metas.get(id).map_err(storage)?.is_none() {
                return Ok(false);
            }
            if let Some(o) = owner {
                let mut owners = txn.open_table(ANATOMY_OWNERS).map_err(storage)?;
                owners.insert((o, id), ()).map_err(storage)?;
            }
            let mut times = txn.open_table(ANATOMY_TIME).map_err(storage)?;
            times.insert(id, now_unix_ms).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(true)
    }

    fn anatomy(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError> {
        if !self.owns_anatomy(id, owner)? {
            return Ok(None);
        }
        self.get(ANATOMIES, id)
    }

    fn anatomy_meta(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError> {
        if !self.owns_anatomy(id, owner)? {
            return Ok(None);
        }
        self.get(ANATOMY_META, id)
    }

    fn put_plan(
        &self,
        id: &str,
        plan: &[u8],
        owner: Option<&str>,
        create_time_unix_ms: u64,
        anatomy_id: &str,
    ) -> Result<(), ServiceError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(storage)?;
        insert_plan(&txn, id, plan, owner, create_time_unix_ms, anatomy_id)?;
        txn.commit().map_err(storage)
    }

    fn plan_for_request(
        &self,
        owner: Option<&str>,
        request_id: &str,
    ) -> Result<Option<String>, ServiceError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(REQUEST_PLAN).map_err(storage)?;
        Ok(table
            .get((owner.unwrap_or(""), request_id))
            .map_err(storage)?
            .map(|v| v.value().to_owned()))
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
        let key = (owner.unwrap_or(""), request_id);
        let db = self.db()?;
        // redb's write transactions take turns: the first of two at once stores, the second
        // finds its key.
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut request_plan = txn.open_table(REQUEST_PLAN).map_err(storage)?;
            if let Some(stored) = request_plan.get(key).map_err(storage)? {
                return Ok(stored.value().to_owned());
            }
            request_plan.insert(key, id).map_err(storage)?;
            let mut plan_request = txn.open_table(PLAN_REQUEST).map_err(storage)?;
            plan_request.insert(id, key).map_err(storage)?;
        }
        insert_plan(&txn, id, plan, owner, create_time_unix_ms, anatomy_id)?;
        txn.commit().map_err(storage)?;
        Ok(id.to_owned())
    }

    fn plan(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(storage)?;
        if !may_see_plan(&txn.open_table(PLAN_OWNER).map_err(storage)?, id, owner)? {
            return Ok(None);
        }
        let table = txn.open_table(PLANS).map_err(storage)?;
        Ok(table.get(id).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    fn plans_after(
        &self,
        after: &str,
        limit: usize,
        owner: Option<&str>,
    ) -> Result<PlanPage, ServiceError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(PLANS).map_err(storage)?;
        let owners = txn.open_table(PLAN_OWNER).map_err(storage)?;
        let range = if after.is_empty() {
            table.range::<&str>(..).map_err(storage)?
        } else {
            table
                .range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .map_err(storage)?
        };
        let mut out = Vec::new();
        for item in range {
            let (k, v) = item.map_err(storage)?;
            if let Some(o) = owner {
                let owned = owners
                    .get(k.value())
                    .map_err(storage)?
                    .is_some_and(|w| w.value() == o);
                if !owned {
                    continue;
                }
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok((out, false))
    }
}

/// May `owner` see plan `id` (`None`: the caller sees everything)? One rule for reads and deletes.
fn may_see_plan(
    owners: &impl ReadableTable<&'static str, &'static str>,
    id: &str,
    owner: Option<&str>,
) -> Result<bool, ServiceError> {
    let Some(o) = owner else {
        return Ok(true);
    };
    Ok(owners
        .get(id)
        .map_err(storage)?
        .is_some_and(|v| v.value() == o))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether any file under `dir` contains `needle`.
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

    fn plan_bytes(anatomy: &str, marker: &str) -> Vec<u8> {
        pb::Plan {
            plan_id: "p".into(),
            anatomy_id: anatomy.into(),
            case_name: marker.into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn deleted_bytes_leave_the_data_directory_after_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let marker = b"MARKER-patient-4711-MARKER";
        let mut mesh = Vec::new();
        for _ in 0..2000 {
            mesh.extend_from_slice(marker);
        }
        let plan_marker = "PLANMARK-patient-4711-PLANMARK";
        store
            .put_anatomy("a1", &mesh, b"meta", Some("alice"), 1)
            .unwrap();
        store
            .put_plan("p1", &plan_bytes("a1", plan_marker), Some("alice"), 1, "a1")
            .unwrap();
        // Something that stays, written after.
        store
            .put_anatomy("a2", b"other", b"meta2", Some("bob"), 1)
            .unwrap();
        assert!(dir_contains(dir.path(), marker));
        assert!(dir_contains(dir.path(), plan_marker.as_bytes()));

        let deletion = store.delete_anatomy("a1", Some("alice"), true).unwrap();
        assert_eq!(
            deletion,
            Some(AnatomyDeletion {
                plan_ids: vec!["p1".into()],
                data_removed: true
            })
        );
        // Committed, but the freed pages still hold the bytes: compaction is what removes them.
        assert!(dir_contains(dir.path(), marker), "compaction is needed");
        store.compact().unwrap();
        assert!(!dir_contains(dir.path(), marker), "mesh bytes remain");
        assert!(
            !dir_contains(dir.path(), plan_marker.as_bytes()),
            "plan bytes remain"
        );
        assert_eq!(store.anatomy("a2", Some("bob")).unwrap().unwrap(), b"other");
    }

    #[test]
    fn a_delete_removes_every_index_entry_and_a_purge_goes_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        store.put_anatomy("a", b"m", b"meta", None, 100).unwrap();
        store
            .put_plan("p-old", &plan_bytes("a", "x"), None, 100, "a")
            .unwrap();
        store
            .put_plan("p-new", &plan_bytes("a", "x"), None, 300, "a")
            .unwrap();
        assert!(matches!(
            store.delete_anatomy("a", None, false),
            Err(ServiceError::AnatomyHasPlans { plans: 2, .. })
        ));
        let purged = store.purge_before(200).unwrap();
        assert_eq!(purged.plan_ids, vec!["p-old".to_owned()]);
        assert_eq!(purged.anatomy_ids, vec!["a".to_owned()]);
        let (plans, anatomies) = store.record_ids().unwrap();
        assert_eq!(
            plans.into_iter().collect::<Vec<_>>(),
            vec!["p-new".to_owned()]
        );
        assert!(anatomies.is_empty());
        assert!(store.purge_before(200).unwrap().is_empty());
        assert!(!store.delete_plan("p-new", Some("mallory")).unwrap());
        assert!(store.delete_plan("p-new", None).unwrap());
        assert!(!store.delete_plan("p-new", None).unwrap());
    }
}
