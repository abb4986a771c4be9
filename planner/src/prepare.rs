//! Preparation: validate the raw anatomy, bring it into LPS, build the clearance engines, the
//! vertebra frames and the keep-outs once, so that planning and evaluation only query.

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;

use crate::anatomy::{AnatomyInput, Level, PatientFrame, PerSide, Role, Side};
use crate::clearance::ClearanceMesh;
use crate::criteria::BONE_OUTSIDE_GRID_MM;
use crate::error::{InputError, PlanError};
use crate::frame::{self, VertebraFrame};
use crate::keepout::{self, KeepOut, KeepOutKind};
use crate::mesh::TriMesh;
use crate::pedicle::{self, Pedicle, PedicleFault};
use crate::plan::{KeepOutSource, StructureNotice};
use crate::validate::{validate_mesh, MeshCheck, WindingPolicy, VERTEBRA_SIZE_RANGE_MM};
use crate::voxel::{self, Grid, KeepOutGrid};

/// Options of preparation. No `Default`: the caller says what it accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrepareOptions {
    pub winding: WindingPolicy,
    /// Meshes with more triangles are refused before any work is done on them.
    pub max_triangles_per_mesh: usize,
}

impl PrepareOptions {
    /// Fix inward winding (and report it); at most 4 million triangles per mesh.
    pub fn standard() -> Self {
        PrepareOptions {
            winding: WindingPolicy::Fix,
            max_triangles_per_mesh: 4_000_000,
        }
    }
}

/// One vertebra, analysed.
pub struct PreparedVertebra {
    pub level: Level,
    pub structure: String,
    /// The bone surface, LPS.
    pub mesh: TriMesh,
    pub bone: ClearanceMesh,
    pub frame: VertebraFrame,
    /// Approximate signed distance to the bone surface (positive inside), grid frame
    /// (`frame.lps_to_grid`).
    pub bone_sdf: Grid<f32>,
    /// Keep-outs derived from this vertebra's bone (those not given as meshes).
    pub derived: Vec<KeepOut>,
    /// Approximate distance to the nearest canal / nerve-root / forbidden keep-out that applies
    /// to this vertebra (given or derived), on the grid of `bone_sdf`.
    pub canal_distance: KeepOutGrid,
    pub root_distance: KeepOutGrid,
    pub forbidden_distance: Option<KeepOutGrid>,
    /// Centres of the pedicle's coronal cross-sections, vertebra frame: the anatomical pedicle
    /// axis runs through them.
    pub pedicle_centroids: PerSide<Vec<crate::math::Point>>,
    /// Each pedicle measured from the mesh (isthmus, axis), or why it could not be: the
    /// transpedicular route is checked against it.
    pub pedicles: PerSide<Result<Pedicle, PedicleFault>>,
}

/// A validated anatomy in LPS with everything planning needs precomputed.
pub struct PreparedAnatomy {
    name: String,
    frame: PatientFrame,
    pub(crate) vertebrae: Vec<PreparedVertebra>,
    /// Keep-outs given as meshes, for every level.
    pub(crate) given: Vec<KeepOut>,
    pub(crate) skin: Option<ClearanceMesh>,
    mesh_fixes: Vec<StructureNotice>,
    /// The levels and sides with a `rib` mesh, and whether any `pleura` mesh was given: what an
    /// extrapedicular route would need (the planner never guesses them from the bone).
    ribs: BTreeSet<(Level, Side)>,
    has_pleura: bool,
}

/// One structure of an anatomy that passed validation.
pub struct ValidatedStructure {
    pub name: String,
    pub role: Role,
    /// LPS; inward winding flipped if the options fix it.
    pub mesh: TriMesh,
    /// The fix applied to the mesh, if any.
    pub fix: Option<crate::error::MeshFix>,
}

/// An anatomy that passed input validation (roles and every mesh), in LPS: the cheap first
/// stage of [`PreparedAnatomy::prepare`], which builds no frames, grids or BVHs.
pub struct ValidatedAnatomy {
    pub name: String,
    pub frame: PatientFrame,
    /// In input order.
    pub structures: Vec<ValidatedStructure>,
}

/// Validate an anatomy: size limits, duplicate levels and nerve roots, at least one vertebra,
/// then every mesh by its role (vertebrae closed and of plausible size). The first fault is
/// returned, naming the structure.
pub fn validate_anatomy(
    input: AnatomyInput,
    options: &PrepareOptions,
) -> Result<ValidatedAnatomy, InputError> {
    match validate_anatomy_with(input, options, &|| false) {
        Ok(v) => Ok(v),
        Err(PlanError::Input(e)) => Err(e),
        Err(PlanError::Cancelled) => unreachable!("never cancelled"),
    }
}

/// [`validate_anatomy`] that polls `cancelled` before each mesh's validation.
fn validate_anatomy_with(
    input: AnatomyInput,
    options: &PrepareOptions,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<ValidatedAnatomy, PlanError> {
    let AnatomyInput {
        name,
        frame,
        structures,
    } = input;
    // Refuse oversize meshes before any work.
    for s in &structures {
        if s.mesh.triangles.len() > options.max_triangles_per_mesh {
            return Err(InputError::Mesh {
                structure: s.name.clone(),
                fault: crate::error::MeshFault::TooLarge {
                    triangles: s.mesh.triangles.len(),
                    limit: options.max_triangles_per_mesh,
                },
            }
            .into());
        }
    }
    // Roles: duplicates and missing pieces.
    let mut levels: BTreeMap<Level, String> = BTreeMap::new();
    let mut roots: BTreeMap<(Level, Side), String> = BTreeMap::new();
    for s in &structures {
        match s.role {
            Role::Vertebra { level } => {
                if let Some(first) = levels.get(&level) {
                    return Err(InputError::DuplicateLevel {
                        level,
                        first: first.clone(),
                        second: s.name.clone(),
                    }
                    .into());
                }
                levels.insert(level, s.name.clone());
            }
            Role::NerveRoot { level, side } => {
                if roots.insert((level, side), s.name.clone()).is_some() {
                    return Err(InputError::DuplicateNerveRoot {
                        structure: s.name.clone(),
                        level,
                        side,
                    }
                    .into());
                }
            }
            Role::SpinalCanal | Role::Skin | Role::Forbidden | Role::Rib { .. } | Role::Pleura => {}
        }
    }
    if levels.is_empty() {
        return Err(InputError::NoVertebra.into());
    }
    // Validate every mesh (in parallel; errors reported in input order), into LPS.
    let validated: Vec<Result<ValidatedStructure, PlanError>> = structures
        .into_par_iter()
        .map(|s| {
            if cancelled() {
                return Err(PlanError::Cancelled);
            }
            let check = match s.role {
                Role::Vertebra { .. } => MeshCheck {
                    closed: true,
                    size_range_mm: Some(VERTEBRA_SIZE_RANGE_MM),
                    winding: options.winding,
                    max_triangles: options.max_triangles_per_mesh,
                },
                _ => MeshCheck {
                    closed: false,
                    size_range_mm: None,
                    winding: options.winding,
                    max_triangles: options.max_triangles_per_mesh,
                },
            };
            let lps = s.mesh.mapped(|p| frame.to_lps(p));
            let (mesh, fix) = validate_mesh(lps, &check).map_err(|fault| InputError::Mesh {
                structure: s.name.clone(),
                fault,
            })?;
            // Open keep-outs and skin need no winding; closed ones must face outwards for
            // containment queries.
            let (mesh, fix) = if !check.closed
                && crate::validate::is_closed_manifold(&mesh)
                && mesh.signed_volume_mm3() < 0.0
            {
                match options.winding {
                    WindingPolicy::Fix => (
                        mesh.flipped(),
                        Some(crate::error::MeshFix::FlippedInwardWinding),
                    ),
                    WindingPolicy::Refuse => {
                        return Err(InputError::Mesh {
                            structure: s.name.clone(),
                            fault: crate::error::MeshFault::InwardWinding {
                                signed_volume_mm3: mesh.signed_volume_mm3(),
                            },
                        }
                        .into())
                    }
                }
            } else {
                (mesh, fix)
            };
            Ok(ValidatedStructure {
                name: s.name,
                role: s.role,
                mesh,
                fix,
            })
        })
        .collect();
    let mut out = Vec::with_capacity(validated.len());
    for v in validated {
        out.push(v?);
    }
    Ok(ValidatedAnatomy {
        name,
        frame,
        structures: out,
    })
}

impl PreparedAnatomy {
    pub fn prepare(input: AnatomyInput, options: &PrepareOptions) -> Result<Self, InputError> {
        match Self::prepare_with(input, options, &|| false) {
            Ok(p) => Ok(p),
            Err(PlanError::Input(e)) => Err(e),
            Err(PlanError::Cancelled) => unreachable!("never cancelled"),
        }
    }

    /// [`PreparedAnatomy::prepare`] that polls `cancelled` before each mesh's validation and
    /// between the steps of each vertebra (frame and clearance engine, keep-out grids), and stops
    /// with [`PlanError::Cancelled`] once it returns `true`: a client that went away frees the
    /// CPU within one step. Polling does not change what is prepared.
    pub fn prepare_with(
        input: AnatomyInput,
        options: &PrepareOptions,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Self, PlanError> {
        let ValidatedAnatomy {
            name,
            frame,
            structures,
        } = validate_anatomy_with(input, options, cancelled)?;
        let roots: BTreeSet<(Level, Side)> = structures
            .iter()
            .filter_map(|s| match s.role {
                Role::NerveRoot { level, side } => Some((level, side)),
                _ => None,
            })
            .collect();
        let ribs: BTreeSet<(Level, Side)> = structures
            .iter()
            .filter_map(|s| match s.role {
                Role::Rib { level, side } => Some((level, side)),
                _ => None,
            })
            .collect();
        let has_pleura = structures.iter().any(|s| s.role == Role::Pleura);
        let mut mesh_fixes = Vec::new();
        let mut given = Vec::new();
        let mut skin = None;
        let mut bones = Vec::new();
        for ValidatedStructure {
            name,
            role,
            mesh,
            fix,
        } in structures
        {
            if let Some(fix) = fix {
                mesh_fixes.push(StructureNotice {
                    structure: name.clone(),
                    fix,
                });
            }
            match role {
                Role::Vertebra { level } => bones.push((level, name, mesh)),
                Role::SpinalCanal => given.push(KeepOut::new(
                    KeepOutKind::Canal,
                    KeepOutSource::Given,
                    name,
                    mesh,
                )),
                Role::NerveRoot { side, .. } => given.push(KeepOut::new(
                    KeepOutKind::NerveRoot(side),
                    KeepOutSource::Given,
                    name,
                    mesh,
                )),
                // A rib is bone an extrapedicular cannula of its level and side passes through
                // (that context leaves it out, `keep_outs_extrapedicular`); every other cannula
                // keeps clear of it like of the pleura and any forbidden structure (the
                // keep-out is named by the structure).
                Role::Rib { level, side } => {
                    let mut k =
                        KeepOut::new(KeepOutKind::Forbidden, KeepOutSource::Given, name, mesh);
                    k.rib = Some((level, side));
                    given.push(k);
                }
                Role::Forbidden | Role::Pleura => given.push(KeepOut::new(
                    KeepOutKind::Forbidden,
                    KeepOutSource::Given,
                    name,
                    mesh,
                )),
                Role::Skin => skin = Some(ClearanceMesh::new(&mesh)),
            }
        }
        bones.sort_by_key(|b| b.0);
        let has_canal = given.iter().any(|k| k.kind == KeepOutKind::Canal);
        let vertebrae: Vec<Result<PreparedVertebra, PlanError>> = bones
            .into_par_iter()
            .map(|(level, structure, mesh)| {
                let root_given = PerSide::from_fn(|side| roots.contains(&(level, side)));
                prepare_vertebra(
                    level, structure, mesh, has_canal, root_given, &given, cancelled,
                )
            })
            .collect();
        let mut out = Vec::with_capacity(vertebrae.len());
        for v in vertebrae {
            out.push(v?);
        }
        Ok(PreparedAnatomy {
            name,
            frame,
            vertebrae: out,
            given,
            skin,
            mesh_fixes,
            ribs,
            has_pleura,
        })
    }

    /// Whether the anatomy has a `rib` mesh for `level` on `side`.
    pub fn has_rib(&self, level: Level, side: Side) -> bool {
        self.ribs.contains(&(level, side))
    }

    /// The `rib` mesh of `level` on `side` (the first given), as its keep-out.
    pub fn rib(&self, level: Level, side: Side) -> Option<&KeepOut> {
        self.given.iter().find(|k| k.rib == Some((level, side)))
    }

    /// The keep-outs of an extrapedicular cannula on `side` of `level`: every one of
    /// [`PreparedAnatomy::keep_outs`] but that level's rib of that side, which the cannula
    /// docks on and passes through.
    pub fn keep_outs_extrapedicular(&self, level: Level, side: Side) -> Vec<&KeepOut> {
        self.keep_outs(level)
            .into_iter()
            .filter(|k| k.rib != Some((level, side)))
            .collect()
    }

    /// Whether the anatomy has a `pleura` mesh.
    pub fn has_pleura(&self) -> bool {
        self.has_pleura
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The frame of the input, in which plans report coordinates.
    pub fn frame(&self) -> PatientFrame {
        self.frame
    }
    /// Vertebra levels, cranial to caudal.
    pub fn levels(&self) -> Vec<Level> {
        self.vertebrae.iter().map(|v| v.level).collect()
    }
    pub fn mesh_fixes(&self) -> &[StructureNotice] {
        &self.mesh_fixes
    }
    pub fn vertebra(&self, level: Level) -> Option<&PreparedVertebra> {
        self.vertebrae.iter().find(|v| v.level == level)
    }
    pub fn vertebrae(&self) -> &[PreparedVertebra] {
        &self.vertebrae
    }
    /// Every keep-out that applies to `level`: the given ones and the level's derived ones.
    pub fn keep_outs(&self, level: Level) -> Vec<&KeepOut> {
        let mut v: Vec<&KeepOut> = self.given.iter().collect();
        if let Some(vert) = self.vertebra(level) {
            v.extend(vert.derived.iter());
        }
        v
    }
    pub fn skin(&self) -> Option<&ClearanceMesh> {
        self.skin.as_ref()
    }
    /// Bytes held by the prepared anatomy.
    pub fn memory_bytes(&self) -> usize {
        let mesh_bytes = |m: &TriMesh| {
            m.vertices_mm.len() * std::mem::size_of::<crate::math::Point>()
                + m.triangles.len() * std::mem::size_of::<[u32; 3]>()
        };
        let keep = |k: &KeepOut| mesh_bytes(&k.mesh) + k.clearance.memory_bytes();
        let verts: usize = self
            .vertebrae
            .iter()
            .map(|v| {
                mesh_bytes(&v.mesh)
                    + v.bone.memory_bytes()
                    + v.bone_sdf.memory_bytes()
                    + v.canal_distance.memory_bytes()
                    + v.root_distance.memory_bytes()
                    + v.forbidden_distance
                        .as_ref()
                        .map_or(0, |g| g.memory_bytes())
                    + v.derived.iter().map(keep).sum::<usize>()
            })
            .sum();
        verts
            + self.given.iter().map(keep).sum::<usize>()
            + self.skin.as_ref().map_or(0, |s| s.memory_bytes())
    }
}

fn prepare_vertebra(
    level: Level,
    structure: String,
    mesh: TriMesh,
    has_canal: bool,
    root_given: PerSide<bool>,
    given: &[KeepOut],
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<PreparedVertebra, PlanError> {
    if cancelled() {
        return Err(PlanError::Cancelled);
    }
    // The clearance engine does not need the frame: build both at once.
    let (analysis, bone) = rayon::join(
        || frame::estimate(level, &mesh),
        || ClearanceMesh::new(&mesh),
    );
    let analysis = analysis?;
    if cancelled() {
        return Err(PlanError::Cancelled);
    }
    let frame = analysis.frame;
    let bone_sdf = analysis.sdf;
    let name = level.name();
    let mut derived = Vec::new();
    if !has_canal {
        derived.push(keepout::derived_canal(&frame, name));
    }
    for (side, given_root) in root_given.with_sides() {
        if !given_root {
            derived.push(keepout::derived_root(&frame, side, name));
        }
    }
    let grid_of = |kinds: &dyn Fn(KeepOutKind) -> bool| -> Option<Grid<f32>> {
        let meshes: Vec<&KeepOut> = given
            .iter()
            .chain(derived.iter())
            .filter(|k| kinds(k.kind))
            .collect();
        if meshes.is_empty() {
            return None;
        }
        let meshes: Vec<&TriMesh> = meshes.iter().map(|k| &k.mesh).collect();
        Some(voxel::unsigned_surface_distance_many(
            &meshes,
            &frame.lps_to_grid,
            &bone_sdf,
        ))
    };
    let far = || {
        Grid::filled(
            bone_sdf.origin,
            bone_sdf.spacing_mm,
            bone_sdf.dims,
            f32::INFINITY,
        )
    };
    let ((canal_distance, root_distance), (forbidden_distance, (pedicle_centroids, pedicles))) =
        rayon::join(
            || {
                rayon::join(
                    || KeepOutGrid::new(grid_of(&|k| k == KeepOutKind::Canal).unwrap_or_else(far)),
                    || {
                        KeepOutGrid::new(
                            grid_of(&|k| matches!(k, KeepOutKind::NerveRoot(_)))
                                .unwrap_or_else(far),
                        )
                    },
                )
            },
            || {
                rayon::join(
                    || grid_of(&|k| k == KeepOutKind::Forbidden).map(KeepOutGrid::new),
                    || {
                        let centroids =
                            PerSide::from_fn(|side| pedicle_centroids(&frame, &bone_sdf, side));
                        let (left, right) = rayon::join(
                            || pedicle::measure(&bone, &frame, &centroids[Side::Left], Side::Left),
                            || {
                                pedicle::measure(
                                    &bone,
                                    &frame,
                                    &centroids[Side::Right],
                                    Side::Right,
                                )
                            },
                        );
                        (centroids, PerSide { left, right })
                    },
                )
            },
        );
    Ok(PreparedVertebra {
        pedicle_centroids,
        pedicles,
        level,
        structure,
        mesh,
        bone,
        frame,
        bone_sdf,
        derived,
        canal_distance,
        root_distance,
        forbidden_distance,
    })
}

/// Centroids of the pedicle's coronal cross-sections on `side`, vertebra frame: in each slice between the posterior wall and the back of the canal, the connected bone
/// around the deepest point lateral of the canal.
fn pedicle_centroids(
    frame: &VertebraFrame,
    sdf: &Grid<f32>,
    side: Side,
) -> Vec<crate::math::Point> {
    use crate::math::Point;
    const STEP: f64 = 0.5;
    let sign = side.sign();
    let vertebra_to_grid = frame.vertebra_to_grid();
    let hw = frame.canal_half_width_mm[side];
    let (pz0, pz1) = frame.pedicle_z_range_mm[side];
    let (x0, x1) = (hw - 2.0, hw + 25.0);
    let (z0, z1) = (pz0 - 3.0, pz1 + 3.0);
    let nx = ((x1 - x0) / STEP) as usize + 1;
    let nz = ((z1 - z0) / STEP) as usize + 1;
    let mut out = Vec::new();
    let mut y = frame.posterior_wall_y_mm + 1.0;
    while y <= frame.canal_back_y_mm - 1.0 {
        let mut d = vec![0f32; nx * nz];
        let mut best = (0f32, usize::MAX);
        for k in 0..nz {
            for i in 0..nx {
                let p = Point::new(sign * (x0 + i as f64 * STEP), y, z0 + k as f64 * STEP);
                let v = sdf.sample(&(vertebra_to_grid * p), BONE_OUTSIDE_GRID_MM);
                d[k * nx + i] = v;
                if v > best.0 {
                    best = (v, k * nx + i);
                }
            }
        }
        if best.1 != usize::MAX {
            let mut seen = vec![false; nx * nz];
            let mut stack = vec![best.1];
            seen[best.1] = true;
            let (mut sx, mut sz, mut n) = (0.0, 0.0, 0usize);
            while let Some(c) = stack.pop() {
                let (i, k) = (c % nx, c / nx);
                sx += x0 + i as f64 * STEP;
                sz += z0 + k as f64 * STEP;
                n += 1;
                let mut push = |j: usize| {
                    if !seen[j] && d[j] > 0.0 {
                        seen[j] = true;
                        stack.push(j);
                    }
                };
                if i > 0 {
                    push(c - 1);
                }
                if i + 1 < nx {
                    push(c + 1);
                }
                if k > 0 {
                    push(c - nx);
                }
                if k + 1 < nz {
                    push(c + nx);
                }
            }
            out.push(Point::new(sign * sx / n as f64, y, sz / n as f64));
        }
        y += 1.0;
    }
    out
}
