//! The embedded store (redb) in the data directory: anatomies by id (canonical prost-encoded
//! `AnatomyData`), their metadata (prost-encoded `Anatomy`), and plans by id (prost-encoded
//! `Plan`). Calls are blocking: the service runs them on tokio's blocking threads.
//!
//! With authentication on, every record has owners (principal names): `plan_owner` maps a plan
//! to its one owner, `anatomy_owners` holds (owner, anatomy) pairs (anatomies are
//! content-addressed, so several principals may upload the same one). A record and its owner are
//! written in one transaction. Look-ups take `owner: Option<&str>`: `None` (no authentication)
//! sees everything, `Some(name)` only what that name owns; anything else reads as absent.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::ServiceError;

const ANATOMIES: TableDefinition<&str, &[u8]> = TableDefinition::new("anatomies");
const ANATOMY_META: TableDefinition<&str, &[u8]> = TableDefinition::new("anatomy_meta");
const PLANS: TableDefinition<&str, &[u8]> = TableDefinition::new("plans");
const PLAN_OWNER: TableDefinition<&str, &str> = TableDefinition::new("plan_owner");
const ANATOMY_OWNERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("anatomy_owners");

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "kyphoplan.redb";

/// A page of stored plans (id, encoded plan) and whether more follow.
pub type PlanPage = (Vec<(String, Vec<u8>)>, bool);

pub struct Store {
    db: Database,
}

fn storage(e: impl Into<redb::Error>) -> ServiceError {
    ServiceError::from(e.into())
}

impl Store {
    /// Open (or create) the store in `data_dir`, creating the directory and tables.
    pub fn open(data_dir: &Path) -> Result<Self, ServiceError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            ServiceError::Storage(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let db = Database::create(data_dir.join(DB_FILE)).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(ANATOMIES).map_err(storage)?;
            txn.open_table(ANATOMY_META).map_err(storage)?;
            txn.open_table(PLANS).map_err(storage)?;
            txn.open_table(PLAN_OWNER).map_err(storage)?;
            txn.open_table(ANATOMY_OWNERS).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(Store { db })
    }

    fn get(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
    ) -> Result<Option<Vec<u8>>, ServiceError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(table).map_err(storage)?;
        Ok(table.get(id).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    /// Whether `owner` may see anatomy `id` (stored, and owned by it when `owner` is given).
    pub fn owns_anatomy(&self, id: &str, owner: Option<&str>) -> Result<bool, ServiceError> {
        let txn = self.db.begin_read().map_err(storage)?;
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

    /// Store an anatomy and its metadata once (a second put of the same id only adds `owner`).
    pub fn put_anatomy(
        &self,
        id: &str,
        data: &[u8],
        meta: &[u8],
        owner: Option<&str>,
    ) -> Result<(), ServiceError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut anatomies = txn.open_table(ANATOMIES).map_err(storage)?;
            if anatomies.get(id).map_err(storage)?.is_none() {
                anatomies.insert(id, data).map_err(storage)?;
            }
            let mut metas = txn.open_table(ANATOMY_META).map_err(storage)?;
            metas.insert(id, meta).map_err(storage)?;
            if let Some(o) = owner {
                let mut owners = txn.open_table(ANATOMY_OWNERS).map_err(storage)?;
                owners.insert((o, id), ()).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// Add `owner` to an anatomy already stored.
    pub fn add_anatomy_owner(&self, id: &str, owner: &str) -> Result<(), ServiceError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut owners = txn.open_table(ANATOMY_OWNERS).map_err(storage)?;
            owners.insert((owner, id), ()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// The encoded anatomy, if `owner` may see it.
    pub fn anatomy(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError> {
        if !self.owns_anatomy(id, owner)? {
            return Ok(None);
        }
        self.get(ANATOMIES, id)
    }

    /// The anatomy's metadata, if `owner` may see it.
    pub fn anatomy_meta(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Option<Vec<u8>>, ServiceError> {
        if !self.owns_anatomy(id, owner)? {
            return Ok(None);
        }
        self.get(ANATOMY_META, id)
    }

    /// Store a plan (and its owner) in one transaction; durable when this returns.
    pub fn put_plan(&self, id: &str, plan: &[u8], owner: Option<&str>) -> Result<(), ServiceError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut plans = txn.open_table(PLANS).map_err(storage)?;
            plans.insert(id, plan).map_err(storage)?;
            if let Some(o) = owner {
                let mut owners = txn.open_table(PLAN_OWNER).map_err(storage)?;
                owners.insert(id, o).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// The encoded plan, if `owner` may see it.
    pub fn plan(&self, id: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, ServiceError> {
        let txn = self.db.begin_read().map_err(storage)?;
        if let Some(o) = owner {
            let owners = txn.open_table(PLAN_OWNER).map_err(storage)?;
            let owned = owners
                .get(id)
                .map_err(storage)?
                .is_some_and(|v| v.value() == o);
            if !owned {
                return Ok(None);
            }
        }
        let table = txn.open_table(PLANS).map_err(storage)?;
        Ok(table.get(id).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    /// Up to `limit` plans with ids after `after` (exclusive; empty: from the start), in id
    /// order, and whether more follow.
    /// Only plans `owner` may see are counted and returned.
    pub fn plans_after(
        &self,
        after: &str,
        limit: usize,
        owner: Option<&str>,
    ) -> Result<PlanPage, ServiceError> {
        let txn = self.db.begin_read().map_err(storage)?;
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
