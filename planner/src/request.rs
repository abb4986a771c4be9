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
    /// Navigation error a side must tolerate, translation in any direction, mm: with it (or
    /// with [`Safety::navigation_error_deg`]) a side is feasible only if its certified tolerance
    /// ([`crate::tolerance`]) covers both together; otherwise `ERROR_TOLERANCE_TOO_LOW`. Absent:
    /// no requirement (the tolerance is reported, and the search's worst-slack term prefers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub navigation_error_mm: Option<f64>,
    /// Navigation error a side must tolerate, rotation about the bone entry, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub navigation_error_deg: Option<f64>,
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
            navigation_error_mm: None,
            navigation_error_deg: None,
        }
    }

    /// The navigation error required (translation mm, rotation deg), when either is given (the
    /// other is then 0).
    pub fn navigation_error(&self) -> Option<(f64, f64)> {
        match (self.navigation_error_mm, self.navigation_error_deg) {
            (None, None) => None,
            (mm, deg) => Some((mm.unwrap_or(0.0), deg.unwrap_or(0.0))),
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
        if let Some(mm) = self.navigation_error_mm {
            finite_in("safety.navigation_error_mm", mm, 0.0, 10.0)?;
        }
        if let Some(deg) = self.navigation_error_deg {
            finite_in("safety.navigation_error_deg", deg, 0.0, 10.0)?;
        }
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
    procedure: Procedure,
    approaches: Vec<Approach>,
    cannula_alternatives_mm: Vec<f64>,
}

impl PlanRequest {
    /// `levels: None` plans every vertebra of the anatomy; the procedure and approaches are the
    /// defaults ([`DEFAULT_PROCEDURE`], [`DEFAULT_APPROACHES`]; see
    /// [`PlanRequest::with_procedure`]).
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
            procedure: DEFAULT_PROCEDURE,
            approaches: DEFAULT_APPROACHES.to_vec(),
            cannula_alternatives_mm: Vec::new(),
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

/// What is done to the vertebra.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Procedure {
    /// Balloon kyphoplasty (PKP): a working cannula per approach, a balloon, then cement.
    Kyphoplasty,
    /// Percutaneous vertebroplasty (PVP): cement through a needle, no balloon.
    Vertebroplasty,
}

impl Procedure {
    pub fn as_str(self) -> &'static str {
        match self {
            Procedure::Kyphoplasty => "kyphoplasty",
            Procedure::Vertebroplasty => "vertebroplasty",
        }
    }
}

impl std::fmt::Display for Procedure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Procedure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kyphoplasty" => Ok(Procedure::Kyphoplasty),
            "vertebroplasty" => Ok(Procedure::Vertebroplasty),
            _ => Err(format!(
                "unknown procedure {s:?}: kyphoplasty or vertebroplasty"
            )),
        }
    }
}

/// How the vertebral body is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approach {
    /// One cannula through each pedicle, each balloon (or tip) on its own side.
    BilateralTranspedicular,
    /// One cannula through one pedicle, aimed across so that the balloon (kyphoplasty) or the
    /// tip (vertebroplasty) is centred on the mid-sagittal plane.
    Unipedicular,
    /// Thoracic levels: one cannula per side, each through the pedicle if it can take one,
    /// else past it on its lateral side (docking on the rib head-neck, between rib head and
    /// pedicle, into the body; `search`'s `extrapedicular` module). Needs the level's `rib`
    /// meshes and a `pleura` mesh.
    Extrapedicular,
}

impl Approach {
    pub fn as_str(self) -> &'static str {
        match self {
            Approach::BilateralTranspedicular => "bilateral_transpedicular",
            Approach::Unipedicular => "unipedicular",
            Approach::Extrapedicular => "extrapedicular",
        }
    }
}

impl std::fmt::Display for Approach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Approach {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bilateral_transpedicular" => Ok(Approach::BilateralTranspedicular),
            "unipedicular" => Ok(Approach::Unipedicular),
            "extrapedicular" => Ok(Approach::Extrapedicular),
            _ => Err(format!(
                "unknown approach {s:?}: bilateral_transpedicular, unipedicular or extrapedicular"
            )),
        }
    }
}

/// The procedure of the case format's default (`procedure` absent): balloon kyphoplasty.
pub const DEFAULT_PROCEDURE: Procedure = Procedure::Kyphoplasty;
/// The approaches of the case format's default (`approaches` absent), in order of preference:
/// bilateral transpedicular is the standard (clinical.md, "The procedure"); unipedicular is its
/// variant when one pedicle cannot take a cannula.
pub const DEFAULT_APPROACHES: [Approach; 2] =
    [Approach::BilateralTranspedicular, Approach::Unipedicular];
/// Vertebroplasty needle outer diameter when the case gives none, mm: 11 G (3.05 mm, standard
/// gauge table, clinical.md "Needle and cannula gauges"; lumbar vertebroplasty uses 10-11 G,
/// thoracic 13 G).
pub const VERTEBROPLASTY_NEEDLE_OUTER_DIAMETER_MM: f64 = 3.05;

impl Instrument {
    /// The default instrument of `procedure`: [`Instrument::contract_default`] for kyphoplasty;
    /// for vertebroplasty the same with an 11 G needle
    /// ([`VERTEBROPLASTY_NEEDLE_OUTER_DIAMETER_MM`]; the balloon fields are unused).
    pub fn default_for(procedure: Procedure) -> Self {
        let mut i = Instrument::contract_default();
        if procedure == Procedure::Vertebroplasty {
            i.cannula_outer_diameter_mm = VERTEBROPLASTY_NEEDLE_OUTER_DIAMETER_MM;
        }
        i
    }
}

impl PlanRequest {
    /// The same request for `procedure` with `approaches` allowed, in order of preference
    /// (validated: at least one, none twice; the error names the field `approaches`).
    pub fn with_procedure(
        mut self,
        procedure: Procedure,
        approaches: Vec<Approach>,
    ) -> Result<Self, InputError> {
        if approaches.is_empty() {
            return Err(InputError::invalid(
                "approaches",
                "[]",
                "allow at least one approach: bilateral_transpedicular, unipedicular or extrapedicular",
            ));
        }
        for (i, a) in approaches.iter().enumerate() {
            if approaches[..i].contains(a) {
                return Err(InputError::invalid(
                    format!("approaches[{i}]"),
                    a,
                    "listed more than once",
                ));
            }
        }
        self.procedure = procedure;
        self.approaches = approaches;
        Ok(self)
    }
    pub fn procedure(&self) -> Procedure {
        self.procedure
    }
    /// The allowed approaches, in order of preference.
    pub fn approaches(&self) -> &[Approach] {
        &self.approaches
    }

    /// The same request with other cannulas a side may fall back to when the requested one
    /// cannot be used: usually smaller ones, when it does not fit through its pedicle (e.g. 13
    /// G, 2.4 mm, for thoracic levels; clinical.md "Needle and cannula gauges"); for
    /// kyphoplasty also a larger one when the requested cannula is too small for a balloon
    /// catheter (`criteria::MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM`). Outer diameters in mm.
    /// Validated: each finite, positive and different from the requested cannula, none twice
    /// (the error names `cannula_alternatives_mm[i]`). Tried after the requested one, largest
    /// first.
    pub fn with_cannula_alternatives(mut self, diameters_mm: Vec<f64>) -> Result<Self, InputError> {
        let requested = self.instrument.cannula_outer_diameter_mm;
        for (i, &d) in diameters_mm.iter().enumerate() {
            let field = format!("cannula_alternatives_mm[{i}]");
            if !d.is_finite() || d <= 0.0 {
                return Err(InputError::invalid(
                    field,
                    d,
                    "must be a positive outer diameter in mm",
                ));
            }
            if d == requested {
                return Err(InputError::invalid(
                    field,
                    d,
                    format!("is the requested cannula ({requested} mm): list only other sizes"),
                ));
            }
            if diameters_mm[..i].contains(&d) {
                return Err(InputError::invalid(field, d, "listed more than once"));
            }
        }
        self.cannula_alternatives_mm = diameters_mm;
        Ok(self)
    }

    /// The cannula alternatives as given ([`PlanRequest::with_cannula_alternatives`]).
    pub fn cannula_alternatives_mm(&self) -> &[f64] {
        &self.cannula_alternatives_mm
    }
}
