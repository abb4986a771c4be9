//! Instrument and safety parameters, validated into types that cannot be wrong.
//!
//! There is deliberately no `Default` for [`Safety`]: the caller has the context. The values of
//! [`Instrument::contract_default`] and [`Safety::contract_default`] are the documented defaults of
//! the case format (`case.toml`), with their sources in the README.

use serde::{Deserialize, Serialize};

use crate::anatomy::Level;
use crate::error::InputError;

/// The working cannula and the balloon (inflatable bone tamp).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instrument {
    pub cannula_outer_diameter_mm: f64,
    pub cannula_working_length_mm: f64,
    pub balloon_lengths_mm: Vec<f64>,
    pub balloon_max_diameter_mm: f64,
}

/// Margins the cannula and balloon must keep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Safety {
    pub cortex_margin_mm: f64,
    pub canal_margin_mm: f64,
    pub nerve_root_margin_mm: f64,
    /// Steepest angle between the cannula axis and the bone's surface normal where the cannula
    /// docks, degrees: steeper and the trocar tip skives off the sloped cortex.
    #[serde(default = "default_max_entry_incidence_deg")]
    pub max_entry_incidence_deg: f64,
}

/// The contract default of [`Safety::max_entry_incidence_deg`] (plans written before the field
/// existed were made under the same limit or a looser one).
fn default_max_entry_incidence_deg() -> f64 {
    Safety::contract_default().max_entry_incidence_deg
}

impl Instrument {
    /// 10-11 gauge kyphoplasty cannula (Kyphon Express ~3.3 mm), Kyphon Xpander nominal lengths.
    pub fn contract_default() -> Self {
        Instrument {
            cannula_outer_diameter_mm: 3.4,
            cannula_working_length_mm: 150.0,
            balloon_lengths_mm: vec![10.0, 15.0, 20.0],
            balloon_max_diameter_mm: 16.0,
        }
    }

    pub fn cannula_radius_mm(&self) -> f64 {
        self.cannula_outer_diameter_mm * 0.5
    }

    /// Check every field; the error names the field.
    pub fn validate(&self) -> Result<(), InputError> {
        let field = |f: &str| format!("instrument.{f}");
        finite_in(
            &field("cannula_outer_diameter_mm"),
            self.cannula_outer_diameter_mm,
            0.5,
            8.0,
        )?;
        finite_in(
            &field("cannula_working_length_mm"),
            self.cannula_working_length_mm,
            20.0,
            400.0,
        )?;
        finite_in(
            &field("balloon_max_diameter_mm"),
            self.balloon_max_diameter_mm,
            2.0,
            40.0,
        )?;
        if self.balloon_lengths_mm.is_empty() {
            return Err(InputError::invalid(
                field("balloon_lengths_mm"),
                "[]",
                "give at least one balloon length",
            ));
        }
        for (i, l) in self.balloon_lengths_mm.iter().enumerate() {
            finite_in(
                &format!("instrument.balloon_lengths_mm[{i}]"),
                *l,
                2.0,
                60.0,
            )?;
        }
        if self.balloon_max_diameter_mm < self.cannula_outer_diameter_mm {
            return Err(InputError::invalid(
                field("balloon_max_diameter_mm"),
                self.balloon_max_diameter_mm,
                format!(
                    "smaller than the cannula ({} mm): the balloon could not pass it",
                    self.cannula_outer_diameter_mm
                ),
            ));
        }
        Ok(())
    }
}

impl Safety {
    /// Cortex 1 mm; canal 2 mm (dural sac ~1.5-3 mm from the medial pedicle wall; medial
    /// breaches over 2 mm are significant, Gertzbein-Robbins); nerve root 2 mm (root ~1.5-2 mm
    /// below the pedicle).
    pub fn contract_default() -> Self {
        Safety {
            cortex_margin_mm: 1.0,
            canal_margin_mm: 2.0,
            nerve_root_margin_mm: 2.0,
            max_entry_incidence_deg: DEFAULT_MAX_ENTRY_INCIDENCE_DEG,
        }
    }

    pub fn validate(&self) -> Result<(), InputError> {
        finite_in("safety.cortex_margin_mm", self.cortex_margin_mm, 0.0, 10.0)?;
        finite_in("safety.canal_margin_mm", self.canal_margin_mm, 0.0, 20.0)?;
        finite_in(
            "safety.nerve_root_margin_mm",
            self.nerve_root_margin_mm,
            0.0,
            20.0,
        )?;
        finite_in(
            "safety.max_entry_incidence_deg",
            self.max_entry_incidence_deg,
            0.0,
            89.0,
        )?;
        Ok(())
    }
}

fn finite_in(field: &str, v: f64, min: f64, max: f64) -> Result<(), InputError> {
    if !v.is_finite() {
        return Err(InputError::invalid(field, v, "must be a finite number"));
    }
    if v < min || v > max {
        let why = if v <= 0.0 && min >= 0.0 {
            format!("must be positive, between {min} and {max}")
        } else {
            format!("outside the accepted range {min} to {max}")
        };
        return Err(InputError::invalid(field, v, why));
    }
    Ok(())
}

/// Default of [`Safety::max_entry_incidence_deg`], degrees from the surface normal (45 degrees
/// to the surface). Brioschi, Cook and Arthurs, "Can a surgeon drill accurately at a specified
/// angle?", Vet Rec Open 2016;3:e000172 (55 surgeons and students, drill holes at 30-90 degrees
/// to the surface): 84.5 % held a perpendicular hole within 4 degrees, about 20 % a hole at 30-45
/// degrees to the surface; accuracy was limited at 60 degrees to the surface and below. The
/// default accepts the intermediate band (30-45 degrees from the normal) and refuses the band in
/// which four in five drillers missed their angle by more than 4 degrees.
pub const DEFAULT_MAX_ENTRY_INCIDENCE_DEG: f64 = 45.0;

/// A validated plan request: which levels, with which instrument and margins.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanRequest {
    levels: Option<Vec<Level>>,
    instrument: Instrument,
    safety: Safety,
}

impl PlanRequest {
    /// `levels: None` plans every vertebra of the anatomy.
    pub fn new(
        levels: Option<Vec<Level>>,
        instrument: Instrument,
        safety: Safety,
    ) -> Result<Self, InputError> {
        instrument.validate()?;
        safety.validate()?;
        if let Some(levels) = &levels {
            let mut seen = std::collections::BTreeSet::new();
            for l in levels {
                if !seen.insert(*l) {
                    return Err(InputError::invalid("levels", l, "requested more than once"));
                }
            }
        }
        Ok(PlanRequest {
            levels,
            instrument,
            safety,
        })
    }
    pub fn levels(&self) -> Option<&[Level]> {
        self.levels.as_deref()
    }
    pub fn instrument(&self) -> &Instrument {
        &self.instrument
    }
    pub fn safety(&self) -> &Safety {
        &self.safety
    }
}
