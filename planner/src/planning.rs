//! The top of the journey: plan every requested level and side, or evaluate one trajectory.

use crate::anatomy::{Level, Side};
use crate::error::InputError;
use crate::plan::{Evaluation, LevelPlan, Plan};
use crate::prepare::PreparedAnatomy;
use crate::request::{Instrument, PlanRequest, Safety};

/// Planning stopped before it finished.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("planning was cancelled")]
    Cancelled,
}

/// Hooks a caller (the server's streaming RPC, the CLI's progress bar) gives a plan run.
pub struct PlanControl<'a> {
    /// Polled between candidate batches; `true` stops the run with [`PlanError::Cancelled`].
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
    /// Called once per finished level (in any order), with the number done and the total.
    pub on_level: &'a (dyn Fn(&LevelPlan, usize, usize) + Sync),
}

impl PlanControl<'static> {
    pub fn none() -> Self {
        PlanControl {
            cancelled: &|| false,
            on_level: &|_, _, _| {},
        }
    }
}

/// Plan every requested level of `anatomy` (both sides).
pub fn plan(anatomy: &PreparedAnatomy, request: &PlanRequest) -> Result<Plan, InputError> {
    match plan_with(anatomy, request, &PlanControl::none()) {
        Ok(p) => Ok(p),
        Err(PlanError::Input(e)) => Err(e),
        Err(PlanError::Cancelled) => unreachable!("never cancelled"),
    }
}

/// [`plan`] with cancellation and progress.
pub fn plan_with(
    anatomy: &PreparedAnatomy,
    request: &PlanRequest,
    control: &PlanControl<'_>,
) -> Result<Plan, PlanError> {
    let _ = (anatomy, request, control);
    todo!()
}

/// Measure a given trajectory (e.g. dragged by the surgeon): `entry_mm` is any point on the
/// approach behind the tip (skin or bone entry), `target_mm` the tip, both in the case frame.
pub fn evaluate(
    anatomy: &PreparedAnatomy,
    level: Level,
    side: Side,
    entry_mm: [f64; 3],
    target_mm: [f64; 3],
    instrument: &Instrument,
    safety: &Safety,
) -> Result<Evaluation, InputError> {
    let _ = (anatomy, level, side, entry_mm, target_mm, instrument, safety);
    todo!()
}
