//! The embedded store (redb) in the data directory: anatomies by id (canonical prost-encoded
//! `AnatomyData`), their metadata (prost-encoded `Anatomy`), and plans by id (prost-encoded
//! `Plan`). Calls are blocking: the service runs them on tokio's blocking threads.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::ServiceError;

const ANATOMIES: TableDefinition<&str, &[u8]> = TableDefinition::new("anatomies");
const ANATOMY_META: TableDefinition<&str, &[u8]> = TableDefinition::new("anatomy_meta");
const PLANS: TableDefinition<&str, &[u8]> = TableDefinition::new("plans");

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

    pub fn has_anatomy(&self, id: &str) -> Result<bool, ServiceError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ANATOMY_META).map_err(storage)?;
        Ok(table.get(id).map_err(storage)?.is_some())
    }

    /// Store an anatomy and its metadata once (a second put of the same id is a no-op).
    pub fn put_anatomy(&self, id: &str, data: &[u8], meta: &[u8]) -> Result<(), ServiceError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut anatomies = txn.open_table(ANATOMIES).map_err(storage)?;
            if anatomies.get(id).map_err(storage)?.is_none() {
                anatomies.insert(id, data).map_err(storage)?;
            }
            let mut metas = txn.open_table(ANATOMY_META).map_err(storage)?;
            metas.insert(id, meta).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    pub fn anatomy(&self, id: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        self.get(ANATOMIES, id)
    }

    pub fn anatomy_meta(&self, id: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        self.get(ANATOMY_META, id)
    }

    pub fn put_plan(&self, id: &str, plan: &[u8]) -> Result<(), ServiceError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut plans = txn.open_table(PLANS).map_err(storage)?;
            plans.insert(id, plan).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    pub fn plan(&self, id: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        self.get(PLANS, id)
    }

    /// Up to `limit` plans with ids after `after` (exclusive; empty: from the start), in id
    /// order, and whether more follow.
    pub fn plans_after(&self, after: &str, limit: usize) -> Result<PlanPage, ServiceError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(PLANS).map_err(storage)?;
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
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok((out, false))
    }
}
