//! Support of the end-to-end tests ([`server`]: the in-process server and its clients), and the
//! anatomy case library of the regression replay ([`cases`]: the deterministic generator of
//! `tests/cases/synthetic/`, which lives in `kyphoplan_cli::cases` so that `kyphoplan replay` can
//! regenerate the library's meshes).

pub use kyphoplan_cli::cases;
pub mod server;
