//! Synthetic anatomy: parametric vertebrae T10..L5 from published morphometry, meshed as
//! watertight surfaces, with their pedicle axes known by construction. The built-in anatomy of
//! `kyphoplan demo` and the ground truth of the planner's tests.

use crate::anatomy::AnatomyInput;

/// The built-in anatomy of `kyphoplan demo`: L1 to L5 at mean morphometry, stacked as in the
/// body, bone only, LPS millimetres.
pub fn demo_anatomy() -> AnatomyInput {
    todo!("helper B")
}
