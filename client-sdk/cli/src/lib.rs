//! The `kyphoplan` command line (CONTRACT.md section 2) as a library, so that its tests and the
//! end-to-end tests can drive its parts: the readable tables ([`report`]), the exports planning
//! engineers look at ([`export`]: 3D Slicer markups, glTF scene, pictures, HTML plan report),
//! the regression replay ([`replay`]), the generator of the case library's synthetic cases
//! ([`cases`]) and `kyphoplan bench` ([`bench`](mod@bench)). The binary is
//! `src/main.rs`.
//!
//! Built on the SDK `kyphoplan-client`; the only client crate that depends on
//! `kyphoplan-server`, behind the default feature `server` (`kyphoplan bench` starts a server
//! in-process for its server figures).

pub mod bench;
pub mod cases;
pub mod demo;
pub mod export;
pub mod replay;
pub mod report;
