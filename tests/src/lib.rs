//! Support of the end-to-end tests ([`server`]: the in-process server and its clients), and the
//! anatomy case library of the regression replay ([`cases`]: the deterministic generator of
//! `tests/cases/synthetic/`).

pub mod cases;
pub mod server;
