//! Support of the end-to-end tests, and the anatomy case library of the regression replay
//! ([`cases`]: the deterministic generator of `tests/cases/synthetic/`).

pub mod cases;
