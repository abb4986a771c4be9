//! The server's errors and the ONE place they become gRPC statuses.

use kyphoplan_planner::error::InputError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Everything an RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request or the anatomy was refused (names the field or structure).
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{kind} '{id}' not found")]
    NotFound { kind: &'static str, id: String },
    /// An anatomy cannot be deleted while the caller has plans made for it (without cascade).
    #[error("anatomy '{anatomy_id}' still has {plans} plan(s) of yours; delete them first or set cascade")]
    AnatomyHasPlans { anatomy_id: String, plans: usize },
    #[error("the request was cancelled")]
    Cancelled,
    #[error("the deadline passed before the work finished")]
    DeadlineExceeded,
    /// A configured limit was reached (size of an upload, concurrent plans).
    #[error("{what}: {detail}")]
    ResourceExhausted { what: &'static str, detail: String },
    /// The store failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The store's disk is full: nothing was stored. Free space. (The embedded store stops
    /// after a failed write, [`ServiceError::Unavailable`], until the health check has opened
    /// it again.)
    #[error("the server's storage is full, nothing was stored: {0}")]
    StorageFull(String),
    /// The server cannot do the work now (e.g. shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug: the planner panicked, stored data does not decode.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<redb::Error> for ServiceError {
    fn from(e: redb::Error) -> Self {
        match &e {
            redb::Error::Io(io) if is_storage_full(io) => ServiceError::StorageFull(e.to_string()),
            // redb refuses every call after a failed write until it is opened again (see
            // `RedbStore`'s `check`): the store is not available yet, nothing is wrong with
            // the call.
            redb::Error::PreviousIo => ServiceError::Unavailable(format!(
                "the embedded store failed a write and is being opened again: {e}"
            )),
            _ => ServiceError::Storage(e.to_string()),
        }
    }
}

/// ENOSPC or EDQUOT.
fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28 | 122))
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Input(input) => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(input.field(), input.to_string()),
            ),
            ServiceError::NotFound { kind, id } => Status::with_error_details(
                Code::NotFound,
                message,
                ErrorDetails::with_resource_info(kind, id, "", "no such resource"),
            ),
            ServiceError::AnatomyHasPlans { anatomy_id, plans } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_precondition_failure_violation(
                    "PLANS",
                    format!("anatomy/{anatomy_id}"),
                    format!("{plans} plan(s) were made for this anatomy"),
                ),
            ),
            ServiceError::Cancelled => Status::cancelled(message),
            ServiceError::DeadlineExceeded => Status::deadline_exceeded(message),
            ServiceError::ResourceExhausted { what, detail } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_quota_failure_violation(what, detail),
            ),
            ServiceError::Storage(_) => Status::internal(message),
            ServiceError::StorageFull(_) => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_quota_failure_violation("storage", "the store is full"),
            ),
            ServiceError::Unavailable(_) => Status::unavailable(message),
            ServiceError::Internal(_) => Status::internal(message),
        }
    }
}
