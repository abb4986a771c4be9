//! The anatomy-case directory (CONTRACT.md section 1): `case.toml` and the meshes it names, read
//! into an [`AnatomyInput`] and a validated [`PlanRequest`].
//!
//! Unknown keys are refused with the key named. Mesh paths are relative to the case directory and
//! must stay inside it (absolute paths, `..` escapes and symlinks leading out are refused).
//!
//! Extension: `mesh_root = "shared:SUBDIR"` makes mesh paths relative to `SUBDIR` of the shared
//! data directory instead (test data kept outside the repository, e.g. `anatomy/vhm-male-lumbar`);
//! the shared directory is given by the caller ([`ReadOptions::shared_root`]), `SUBDIR` must be a
//! plain relative path, and meshes must stay inside `SUBDIR` by the same rule as above.
//! Other extensions: `description` (one line: what the case is for) and a `[replay]` table of
//! comparison tolerances (read by `kyphoplan replay`).
//! Missing `[instrument]` / `[safety]` keys take [`Instrument::contract_default`] /
//! [`Safety::contract_default`], field by field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kyphoplan_planner::anatomy::{AnatomyInput, Level, PatientFrame, Role, Side, Structure};
use kyphoplan_planner::request::{
    Approach, Instrument, PlanRequest, Procedure, Safety, DEFAULT_APPROACHES, DEFAULT_PROCEDURE,
};
use serde::{Deserialize, Serialize};

use crate::mesh_io;

/// File name of the case description.
pub const CASE_FILE: &str = "case.toml";

/// A case the reader refuses: which file and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct CaseError {
    pub file: PathBuf,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseToml {
    pub name: String,
    /// Extension: one line saying what the case is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub frame: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Vec<String>>,
    /// Extension: `"shared:SUBDIR"`: mesh paths are relative to SUBDIR of the shared data
    /// directory instead of the case directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_root: Option<String>,
    #[serde(rename = "structure", default)]
    pub structures: Vec<StructureToml>,
    /// Extension: `"kyphoplasty"` (default) or `"vertebroplasty"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procedure: Option<String>,
    /// Extension: the allowed approaches in order of preference (default
    /// `["bilateral_transpedicular", "unipedicular"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approaches: Option<Vec<String>>,
    /// Extension: other cannulas (outer diameters, mm) a side may fall back to when the
    /// requested one does not fit through its pedicle, e.g. `[2.4]` for 13 G, or (kyphoplasty)
    /// when it is too small for a balloon (tried after the requested one, largest first; each
    /// different from the requested cannula).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cannula_alternatives_mm: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instrument: Option<InstrumentToml>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyToml>,
    /// Extension: tolerances of `kyphoplan replay` for this case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayToml>,
    /// Extension: the anatomy from a NIfTI label map (read with the SDK feature `labelmap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labelmap: Option<LabelMapToml>,
}

/// `[labelmap]`: a NIfTI label map inside the case directory, meshed label by label; its
/// vertebrae, spinal canal and forbidden labels join the `[[structure]]` meshes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelMapToml {
    /// `.nii` or `.nii.gz`, relative to the case directory.
    pub file: String,
    /// `"totalsegmentator"` (v2 "total" ids), `"verse"` or `"table"`; default `"table"` when
    /// `[labelmap.labels]` is given, else required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convention: Option<String>,
    /// Label id -> `"vertebra:L3"`, `"spinal_canal"`, `"forbidden"`, `"rib:T5:left"`, `"rib"`, `"lung"`, `"pleura"` or
    /// `"ignore"`; overrides the convention for those ids.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `[replay]`: per-case tolerances of the regression replay (defaults in `replay::Tolerances`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayToml {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_tolerance_mm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub angle_tolerance_deg: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clearance_tolerance_mm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_tolerance_fraction: Option<f64>,
}

/// Prefix of a `mesh_root` that names a subdirectory of the shared data directory.
pub const SHARED_PREFIX: &str = "shared:";

/// How to read a case.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// The shared data directory `mesh_root = "shared:..."` is resolved against (`None`: such
    /// cases are refused).
    pub shared_root: Option<PathBuf>,
}

/// The subdirectory of the shared data directory a `mesh_root` value names, not yet checked
/// for existence: `shared:` followed by a relative path of plain components (no `..`, `.`,
/// root or prefix).
pub fn shared_subdir(mesh_root: &str) -> Result<PathBuf, String> {
    let rest = mesh_root.strip_prefix(SHARED_PREFIX).ok_or_else(|| {
        format!("mesh_root = \"{mesh_root}\": must start with \"{SHARED_PREFIX}\"")
    })?;
    let rel = Path::new(rest);
    let plain = !rest.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(format!(
            "mesh_root = \"{mesh_root}\": after \"{SHARED_PREFIX}\" must come a relative path without '..' or '.'"
        ));
    }
    Ok(rel.to_owned())
}

/// The canonical directory meshes of a `mesh_root` case are confined to.
fn shared_mesh_dir(mesh_root: &str, shared_root: Option<&Path>) -> Result<PathBuf, String> {
    let rel = shared_subdir(mesh_root)?;
    let shared_root = shared_root.ok_or_else(|| {
        format!("mesh_root = \"{mesh_root}\": no shared data directory was given (kyphoplan replay --shared DIR)")
    })?;
    let root = shared_root.canonicalize().map_err(|e| {
        format!(
            "mesh_root = \"{mesh_root}\": shared data directory {}: {e}",
            shared_root.display()
        )
    })?;
    let dir = root.join(&rel).canonicalize().map_err(|e| {
        format!(
            "mesh_root = \"{mesh_root}\": cannot open {}: {e}",
            root.join(&rel).display()
        )
    })?;
    if !dir.starts_with(&root) || !dir.is_dir() {
        return Err(format!(
            "mesh_root = \"{mesh_root}\": not a directory inside {}",
            root.display()
        ));
    }
    Ok(dir)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StructureToml {
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<String>,
    pub mesh: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstrumentToml {
    pub cannula_outer_diameter_mm: Option<f64>,
    pub cannula_working_length_mm: Option<f64>,
    pub balloon_lengths_mm: Option<Vec<f64>>,
    pub balloon_max_diameter_mm: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyToml {
    pub cortex_margin_mm: Option<f64>,
    pub canal_margin_mm: Option<f64>,
    pub nerve_root_margin_mm: Option<f64>,
    pub max_entry_incidence_deg: Option<f64>,
    /// Navigation error each side must tolerate (translation mm / rotation deg; README,
    /// "Tolerance to navigation error"); absent: no requirement.
    pub navigation_error_mm: Option<f64>,
    pub navigation_error_deg: Option<f64>,
}

/// A case read from disk.
#[derive(Clone, Debug)]
pub struct Case {
    pub dir: PathBuf,
    pub anatomy: AnatomyInput,
    pub request: PlanRequest,
    /// What the reader wants the user told: from a label map, the vertebrae refused (cut by
    /// the scan), labels ignored (ribs, lungs, unknown ids), pieces and cavities left out.
    pub notices: Vec<String>,
}

impl InstrumentToml {
    /// Missing keys take [`Instrument::contract_default`]'s values.
    pub fn resolve(&self) -> Instrument {
        self.resolve_for(Procedure::Kyphoplasty)
    }

    /// Missing keys take [`Instrument::default_for`] `procedure` (for vertebroplasty an 11 G
    /// needle).
    pub fn resolve_for(&self, procedure: Procedure) -> Instrument {
        let d = Instrument::default_for(procedure);
        let InstrumentToml {
            cannula_outer_diameter_mm,
            cannula_working_length_mm,
            balloon_lengths_mm,
            balloon_max_diameter_mm,
        } = self.clone();
        Instrument {
            cannula_outer_diameter_mm: cannula_outer_diameter_mm
                .unwrap_or(d.cannula_outer_diameter_mm),
            cannula_working_length_mm: cannula_working_length_mm
                .unwrap_or(d.cannula_working_length_mm),
            balloon_lengths_mm: balloon_lengths_mm.unwrap_or(d.balloon_lengths_mm),
            balloon_max_diameter_mm: balloon_max_diameter_mm.unwrap_or(d.balloon_max_diameter_mm),
        }
    }
}

impl SafetyToml {
    pub fn resolve(&self) -> Safety {
        let d = Safety::contract_default();
        let SafetyToml {
            cortex_margin_mm,
            canal_margin_mm,
            nerve_root_margin_mm,
            max_entry_incidence_deg,
            navigation_error_mm,
            navigation_error_deg,
        } = self.clone();
        Safety {
            cortex_margin_mm: cortex_margin_mm.unwrap_or(d.cortex_margin_mm),
            canal_margin_mm: canal_margin_mm.unwrap_or(d.canal_margin_mm),
            nerve_root_margin_mm: nerve_root_margin_mm.unwrap_or(d.nerve_root_margin_mm),
            max_entry_incidence_deg: max_entry_incidence_deg.unwrap_or(d.max_entry_incidence_deg),
            navigation_error_mm,
            navigation_error_deg,
        }
    }
}

/// The role of a `[[structure]]` table; `at` names it (`structure[2]`).
fn role_of(s: &StructureToml, at: &str) -> Result<Role, String> {
    let level = |required: bool| -> Result<Option<Level>, String> {
        match (&s.level, required) {
            (Some(l), true) => Level::from_str(l)
                .map(Some)
                .map_err(|e| format!("{at}.level: {e}")),
            (None, true) => Err(format!("{at}.level: required for role '{}'", s.role)),
            (Some(_), false) => Err(format!(
                "{at}.level: a '{}' has no level (only vertebra, nerve_root and rib do)",
                s.role
            )),
            (None, false) => Ok(None),
        }
    };
    let side = |required: bool| -> Result<Option<Side>, String> {
        match (&s.side, required) {
            (Some(v), true) => Side::from_str(v)
                .map(Some)
                .map_err(|e| format!("{at}.side: {e}")),
            (None, true) => Err(format!("{at}.side: required for role '{}'", s.role)),
            (Some(_), false) => Err(format!(
                "{at}.side: a '{}' has no side (only nerve_root and rib do)",
                s.role
            )),
            (None, false) => Ok(None),
        }
    };
    let missing = || format!("{at}: missing value");
    Ok(match s.role.as_str() {
        "vertebra" => {
            side(false)?;
            Role::Vertebra {
                level: level(true)?.ok_or_else(missing)?,
            }
        }
        "nerve_root" => Role::NerveRoot {
            level: level(true)?.ok_or_else(missing)?,
            side: side(true)?.ok_or_else(missing)?,
        },
        "rib" => Role::Rib {
            level: level(true)?.ok_or_else(missing)?,
            side: side(true)?.ok_or_else(missing)?,
        },
        "spinal_canal" | "skin" | "forbidden" | "pleura" => {
            level(false)?;
            side(false)?;
            match s.role.as_str() {
                "spinal_canal" => Role::SpinalCanal,
                "skin" => Role::Skin,
                "pleura" => Role::Pleura,
                _ => Role::Forbidden,
            }
        }
        other => {
            return Err(format!(
                "{at}.role: unknown role '{other}' (expected vertebra, spinal_canal, nerve_root, skin, forbidden, rib or pleura)"
            ))
        }
    })
}

/// The lexical checks of a structure's mesh path (no file access): not empty, relative, and no
/// `..` that leaves the directory. `mesh_path` adds the checks that need the file system.
pub fn check_mesh_path(mesh: &str, at: &str) -> Result<(), String> {
    use std::path::Component;
    let rel = Path::new(mesh);
    if mesh.is_empty() {
        return Err(format!("{at}.mesh: empty path"));
    }
    if rel.is_absolute() || rel.has_root() {
        return Err(format!(
            "{at}.mesh = \"{mesh}\": must be relative to the case directory"
        ));
    }
    let mut depth = 0usize;
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{at}.mesh = \"{mesh}\": leads outside the case directory"
                ))
            }
        }
    }
    Ok(())
}

/// The mesh path of a structure, checked to stay inside the (canonical) case directory, also
/// through symlinks.
fn mesh_path(dir_canonical: &Path, mesh: &str, at: &str) -> Result<PathBuf, String> {
    check_mesh_path(mesh, at)?;
    let joined = dir_canonical.join(mesh);
    let canonical = joined.canonicalize().map_err(|e| {
        format!(
            "{at}.mesh = \"{mesh}\": cannot open {}: {e}",
            joined.display()
        )
    })?;
    if !canonical.starts_with(dir_canonical) {
        return Err(format!(
            "{at}.mesh = \"{mesh}\": leads outside the case directory (to {})",
            canonical.display()
        ));
    }
    if !canonical.is_file() {
        return Err(format!("{at}.mesh = \"{mesh}\": not a file"));
    }
    Ok(canonical)
}

/// Parse `case.toml` text (no file access).
pub fn parse_case_toml(text: &str) -> Result<CaseToml, String> {
    toml::from_str::<CaseToml>(text).map_err(|e| e.to_string().trim_end().to_owned())
}

/// Read a case directory (a `mesh_root = "shared:..."` case is refused: see [`read_case_with`]).
pub fn read_case(dir: &Path) -> Result<Case, CaseError> {
    read_case_with(dir, &ReadOptions::default())
}

/// Read a case directory with options.
pub fn read_case_with(dir: &Path, options: &ReadOptions) -> Result<Case, CaseError> {
    let file = dir.join(CASE_FILE);
    let fail = |reason: String| CaseError {
        file: file.clone(),
        reason,
    };
    if !dir.is_dir() {
        return Err(CaseError {
            file: dir.to_owned(),
            reason: "no such case directory".into(),
        });
    }
    let text = std::fs::read_to_string(&file).map_err(|e| fail(format!("cannot read: {e}")))?;
    let toml = parse_case_toml(&text).map_err(fail)?;
    let dir_canonical = dir
        .canonicalize()
        .map_err(|e| fail(format!("cannot resolve the case directory: {e}")))?;

    let CaseSpec {
        name,
        frame,
        mesh_root,
        structures,
        request,
        labelmap,
    } = resolve_case_toml(toml).map_err(&fail)?;
    let mesh_dir = match &mesh_root {
        None => dir_canonical.clone(),
        Some(m) => shared_mesh_dir(m, options.shared_root.as_deref()).map_err(&fail)?,
    };
    let mut out = Vec::with_capacity(structures.len());
    for (i, s) in structures.into_iter().enumerate() {
        let at = format!("structure[{i}]");
        let path = mesh_path(&mesh_dir, &s.mesh, &at).map_err(&fail)?;
        let mesh = mesh_io::load_mesh(&path).map_err(|e| CaseError {
            file: path.clone(),
            reason: e.reason,
        })?;
        out.push(Structure {
            name: s.mesh,
            role: s.role,
            mesh,
        });
    }
    let mut anatomy = AnatomyInput {
        name,
        frame,
        structures: out,
    };
    let mut request = request;
    let mut notices = Vec::new();
    if let Some(lm) = labelmap {
        let path = mesh_path(&dir_canonical, &lm.file, "labelmap").map_err(&fail)?;
        let convention = lm.convention.as_deref().unwrap_or("table");
        let from_labels = labelmap_anatomy(
            &path,
            convention,
            &lm.labels,
            &anatomy.name,
            frame,
            &request,
        )
        .map_err(&fail)?;
        anatomy.structures.extend(from_labels.anatomy.structures);
        request = from_labels.request;
        notices = from_labels.notices;
    }
    Ok(Case {
        dir: dir.to_owned(),
        anatomy,
        request,
        notices,
    })
}

/// A label map read into anatomy in the case frame, with the request it leaves (levels refused
/// as cut by the scan taken out) and the notices to show.
#[derive(Clone, Debug)]
pub struct LabelMapCase {
    pub anatomy: AnatomyInput,
    pub request: PlanRequest,
    pub notices: Vec<String>,
}

/// Read and mesh a label map (`convention` by name, `labels` overriding ids), in `frame`,
/// for `request`'s levels. The error names the file and field.
#[cfg(feature = "labelmap")]
pub fn labelmap_anatomy(
    path: &Path,
    convention: &str,
    labels: &BTreeMap<String, String>,
    name: &str,
    frame: PatientFrame,
    request: &PlanRequest,
) -> Result<LabelMapCase, String> {
    use kyphoplan_planner::labelmap;
    let convention: labelmap::Convention = convention
        .parse()
        .map_err(|e| format!("labelmap.convention: {e}"))?;
    let table = labelmap::LabelTable::builtin(convention)
        .with_overrides(CASE_FILE, labels)
        .map_err(|e| e.to_string())?;
    let volume = labelmap::read_nifti_labels(path).map_err(|e| e.to_string())?;
    let lm = labelmap::anatomy_from_labels(name, &volume, &table, request.levels())
        .map_err(|e| e.to_string())?;
    let mut anatomy = lm.anatomy;
    if frame == PatientFrame::Ras {
        // lps_to_ras: x and y negated, a rotation (winding kept).
        for s in &mut anatomy.structures {
            s.mesh = s
                .mesh
                .mapped(|p| kyphoplan_planner::math::Point::new(-p.x, -p.y, p.z));
        }
    }
    anatomy.frame = frame;
    let request = match request.levels() {
        Some(levels) => {
            let kept: Vec<Level> = levels
                .iter()
                .copied()
                .filter(|l| !lm.refused.iter().any(|r| r.level == *l))
                .collect();
            PlanRequest::new(
                Some(kept),
                request.instrument().clone(),
                request.safety().clone(),
            )
            .map_err(|e| e.to_string())?
        }
        None => request.clone(),
    };
    Ok(LabelMapCase {
        anatomy,
        request,
        notices: lm.notices,
    })
}

/// Without the feature `labelmap` a `[labelmap]` case is refused, saying so.
#[cfg(not(feature = "labelmap"))]
pub fn labelmap_anatomy(
    path: &Path,
    _convention: &str,
    _labels: &BTreeMap<String, String>,
    _name: &str,
    _frame: PatientFrame,
    _request: &PlanRequest,
) -> Result<LabelMapCase, String> {
    Err(format!(
        "labelmap: {}: this build reads no label maps (kyphoplan-client without the feature `labelmap`)",
        path.display()
    ))
}

/// A case from a label map alone (`kyphoplan plan --labelmap`): frame LPS, the contract's
/// instrument and safety defaults, named after the file.
pub fn labelmap_case(
    path: &Path,
    convention: &str,
    levels: Option<Vec<Level>>,
) -> Result<Case, CaseError> {
    let fail = |reason: String| CaseError {
        file: path.to_owned(),
        reason,
    };
    let name = path
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_end_matches(".gz")
                .trim_end_matches(".nii")
                .to_string()
        })
        .unwrap_or_else(|| "labelmap".into());
    let request = PlanRequest::new(
        levels,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .map_err(|e| fail(e.to_string()))?;
    let prefix = format!("{}: ", path.display());
    let lm = labelmap_anatomy(
        path,
        convention,
        &BTreeMap::new(),
        &name,
        PatientFrame::Lps,
        &request,
    )
    // The reader's errors name the file already.
    .map_err(|e| fail(e.strip_prefix(&prefix).unwrap_or(&e).to_string()))?;
    Ok(Case {
        dir: path.parent().map(Path::to_owned).unwrap_or_default(),
        anatomy: lm.anatomy,
        request: lm.request,
        notices: lm.notices,
    })
}

/// A `case.toml` checked as far as possible without the file system.
#[derive(Clone, Debug)]
pub struct CaseSpec {
    pub name: String,
    pub frame: PatientFrame,
    /// `shared:SUBDIR`, its syntax checked ([`shared_subdir`]).
    pub mesh_root: Option<String>,
    /// At least one; mesh paths passed [`check_mesh_path`].
    pub structures: Vec<StructureSpec>,
    pub request: PlanRequest,
    /// `[labelmap]`, its file path checked lexically.
    pub labelmap: Option<LabelMapToml>,
}

/// One `[[structure]]`: its role and its mesh path as written.
#[derive(Clone, Debug)]
pub struct StructureSpec {
    pub role: Role,
    pub mesh: String,
}

/// Check a parsed `case.toml` without touching files: name, `mesh_root` syntax, frame, levels,
/// every structure's role and mesh path (lexically), instrument and safety. The error names
/// the field (`structure[2].level: ...`).
pub fn resolve_case_toml(toml: CaseToml) -> Result<CaseSpec, String> {
    let CaseToml {
        name,
        description: _,
        frame,
        levels,
        mesh_root,
        structures,
        procedure,
        approaches,
        cannula_alternatives_mm,
        instrument,
        safety,
        replay: _,
        labelmap,
    } = toml;
    if name.trim().is_empty() {
        return Err("name: must not be empty".into());
    }
    if let Some(m) = &mesh_root {
        shared_subdir(m)?;
    }
    let frame = PatientFrame::from_str(&frame).map_err(|e| format!("frame: {e}"))?;
    let levels = levels
        .map(|ls| {
            ls.iter()
                .enumerate()
                .map(|(i, l)| Level::from_str(l).map_err(|e| format!("levels[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    if structures.is_empty() && labelmap.is_none() {
        return Err(
            "no [[structure]] table and no [labelmap]: a case needs at least one vertebra".into(),
        );
    }
    if let Some(lm) = &labelmap {
        check_mesh_path(&lm.file, "labelmap")?;
        if lm.convention.is_none() && lm.labels.is_empty() {
            return Err("labelmap.convention: required (\"totalsegmentator\", \"verse\" or \"table\" with [labelmap.labels])".into());
        }
    }
    let structures = structures
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let at = format!("structure[{i}]");
            let role = role_of(&s, &at)?;
            check_mesh_path(&s.mesh, &at)?;
            Ok(StructureSpec { role, mesh: s.mesh })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let procedure = match procedure {
        Some(p) => Procedure::from_str(&p).map_err(|e| format!("procedure: {e}"))?,
        None => DEFAULT_PROCEDURE,
    };
    let approaches = match approaches {
        Some(a) => a
            .iter()
            .enumerate()
            .map(|(i, a)| Approach::from_str(a).map_err(|e| format!("approaches[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?,
        None => DEFAULT_APPROACHES.to_vec(),
    };
    let instrument = instrument.unwrap_or_default().resolve_for(procedure);
    let safety = safety.unwrap_or_default().resolve();
    let request = PlanRequest::new(levels, instrument, safety)
        .and_then(|r| r.with_procedure(procedure, approaches))
        .and_then(|r| r.with_cannula_alternatives(cannula_alternatives_mm.unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    Ok(CaseSpec {
        name,
        frame,
        mesh_root,
        structures,
        request,
        labelmap,
    })
}

/// Write `anatomy` as a case directory: one binary STL per structure and a case.toml naming
/// them (STL stores f32: coordinates are rounded to about 1e-5 mm).
pub fn write_case(
    dir: &Path,
    anatomy: &AnatomyInput,
    levels: Option<&[Level]>,
) -> Result<(), CaseError> {
    write_case_for(dir, anatomy, levels, None)
}

/// [`write_case`], and with `request` its procedure, approaches and cannula alternatives in the
/// case.toml (so that planning the directory asks what `request` asked; its instrument and
/// safety are not written: the case then takes the defaults of its procedure).
pub fn write_case_for(
    dir: &Path,
    anatomy: &AnatomyInput,
    levels: Option<&[Level]>,
    request: Option<&PlanRequest>,
) -> Result<(), CaseError> {
    std::fs::create_dir_all(dir).map_err(|e| CaseError {
        file: dir.to_owned(),
        reason: format!("cannot create: {e}"),
    })?;
    let AnatomyInput {
        name,
        frame,
        structures,
    } = anatomy;
    let mut tables = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for (i, s) in structures.iter().enumerate() {
        let Structure { name, role, mesh } = s;
        let base = ["stl", "obj", "ply"]
            .iter()
            .find_map(|ext| {
                let n = name.len();
                (n > ext.len() + 1
                    && name[n - ext.len() - 1..].eq_ignore_ascii_case(&format!(".{ext}")))
                .then(|| &name[..n - ext.len() - 1])
            })
            .unwrap_or(name);
        let stem: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let stem = if stem.is_empty() {
            format!("structure{i}")
        } else {
            stem
        };
        let mut file = format!("{stem}.stl");
        if !used.insert(file.clone()) {
            file = format!("{stem}-{i}.stl");
            used.insert(file.clone());
        }
        mesh_io::write_stl(&dir.join(&file), mesh).map_err(|e| CaseError {
            file: e.path,
            reason: e.reason,
        })?;
        let (level, side) = match role {
            Role::Vertebra { level } => (Some(level.to_string()), None),
            Role::NerveRoot { level, side } | Role::Rib { level, side } => {
                (Some(level.to_string()), Some(side.to_string()))
            }
            Role::SpinalCanal | Role::Skin | Role::Forbidden | Role::Pleura => (None, None),
        };
        tables.push(StructureToml {
            role: role.kind_name().to_owned(),
            level,
            side,
            mesh: file,
        });
    }
    let toml = CaseToml {
        name: name.clone(),
        description: None,
        frame: frame.name().to_owned(),
        levels: levels.map(|ls| ls.iter().map(|l| l.to_string()).collect()),
        mesh_root: None,
        structures: tables,
        procedure: request.map(|r| r.procedure().as_str().to_owned()),
        approaches: request.map(|r| {
            r.approaches()
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect()
        }),
        cannula_alternatives_mm: request
            .map(|r| r.cannula_alternatives_mm().to_vec())
            .filter(|a| !a.is_empty()),
        instrument: None,
        safety: None,
        replay: None,
        labelmap: None,
    };
    let text = toml::to_string(&toml).map_err(|e| CaseError {
        file: dir.join(CASE_FILE),
        reason: format!("cannot encode: {e}"),
    })?;
    std::fs::write(dir.join(CASE_FILE), text).map_err(|e| CaseError {
        file: dir.join(CASE_FILE),
        reason: format!("cannot write: {e}"),
    })
}
