//! Support of the end-to-end tests ([`server`]: the in-process server and its clients), and the
//! anatomy case library of the regression replay ([`cases`]: the deterministic generator of
//! `tests/cases/synthetic/`, which lives in `kyphoplan_cli::cases` so that `kyphoplan replay` can
//! regenerate the library's meshes).

pub use kyphoplan_cli::cases;
pub mod server;

/// The contract-default request for `levels` (`None`: every level).
pub fn default_request(
    levels: Option<Vec<kyphoplan_planner::anatomy::Level>>,
) -> kyphoplan_planner::request::PlanRequest {
    use kyphoplan_planner::request::{Instrument, PlanRequest, Safety};
    PlanRequest::new(
        levels,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .expect("the contract defaults are valid")
}

/// The status code of a call that must be refused (panics on an answer or a connection error).
pub fn code_of<T>(r: Result<T, kyphoplan_client::ClientError>) -> kyphoplan_client::Code {
    match r {
        Err(kyphoplan_client::ClientError::Status { code, .. }) => code,
        Err(other) => panic!("expected a status, got {other}"),
        Ok(_) => panic!("expected a status, got an answer"),
    }
}
pub mod postgres;
