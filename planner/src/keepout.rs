//! Keep-out zones: structures the cannula must stay clear of. Given as meshes (canal, dural sac,
//! nerve roots, other forbidden structures) or, when a case has bone only (the usual CT case),
//! derived conservatively from the bone: the vertebral foramen for the canal, and the zone just
//! below each pedicle where the exiting nerve root runs.

use crate::anatomy::{Level, Side};
use crate::clearance::ClearanceMesh;
use crate::frame::VertebraFrame;
use crate::math::{Point, Real};
use crate::mesh::TriMesh;
use crate::plan::{KeepOutSource, KeepOutSummary};

/// The dural sac lies about 1.5-3 mm inside the medial pedicle wall (clinical.md): the derived
/// canal is the foramen's convex outline inset by the low end of that range.
pub const DURAL_SAC_INSET_MM: Real = 1.5;
/// How far the derived canal extends above and below the closed ring of its vertebra, mm.
pub const DERIVED_CANAL_EXTENSION_MM: Real = 30.0;
/// The exiting root lies about 1.5-2 mm below the pedicle (clinical.md): the derived root zone
/// starts this far below the pedicle's inferior surface.
pub const ROOT_GAP_BELOW_PEDICLE_MM: Real = 1.5;
/// Height of the derived root zone below that gap, mm.
pub const ROOT_ZONE_HEIGHT_MM: Real = 12.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepOutKind {
    Canal,
    NerveRoot(Side),
    Forbidden,
}

impl KeepOutKind {
    pub fn name(self) -> &'static str {
        match self {
            KeepOutKind::Canal => "spinal_canal",
            KeepOutKind::NerveRoot(_) => "nerve_root",
            KeepOutKind::Forbidden => "forbidden",
        }
    }
}

/// One keep-out, in LPS, ready for exact clearance queries.
pub struct KeepOut {
    pub kind: KeepOutKind,
    pub source: KeepOutSource,
    /// The structure's name, or how it was derived.
    pub from: String,
    pub mesh: TriMesh,
    pub clearance: ClearanceMesh,
    /// The level and side of the `rib` this keep-out was given as: the one bone an
    /// extrapedicular cannula of that side may pass through (`None` for every other keep-out).
    pub rib: Option<(Level, Side)>,
}

impl KeepOut {
    pub fn new(kind: KeepOutKind, source: KeepOutSource, from: String, mesh: TriMesh) -> Self {
        let clearance = ClearanceMesh::new(&mesh);
        KeepOut {
            kind,
            source,
            from,
            mesh,
            clearance,
            rib: None,
        }
    }

    /// Whether the keep-out is a closed solid holding an end of the segment `a-b` (its
    /// distance is then 0 whatever the surface's).
    fn holds_an_end(&self, a: &Point, b: &Point) -> bool {
        self.clearance.is_closed()
            && (self.clearance.contains_point(a) || self.clearance.contains_point(b))
    }

    /// Distance from the segment to the keep-out, 0 when it touches, crosses or lies inside it.
    pub fn distance_to_segment(&self, a: &Point, b: &Point) -> Real {
        if self.holds_an_end(a, b) {
            return 0.0;
        }
        self.clearance.distance_to_segment(a, b)
    }

    /// [`KeepOut::distance_to_segment`] with a triangle at that distance when it is positive
    /// ([`ClearanceMesh::distance_to_segment_witness`]).
    pub fn distance_to_segment_witness(&self, a: &Point, b: &Point) -> (Real, Option<[Point; 3]>) {
        if self.holds_an_end(a, b) {
            return (0.0, None);
        }
        self.clearance.distance_to_segment_witness(a, b)
    }

    /// [`KeepOut::distance_to_segment`] where it is below `cap`, the same value; else infinity
    /// ([`ClearanceMesh::distance_to_segment_below`]).
    pub fn distance_to_segment_below(&self, a: &Point, b: &Point, cap: Real) -> Real {
        if self.holds_an_end(a, b) {
            return 0.0;
        }
        self.clearance.distance_to_segment_below(a, b, cap)
    }

    /// An upper bound on [`KeepOut::distance_to_segment`] below `cap`, or infinity where the
    /// distance is at least `cap` ([`ClearanceMesh::distance_to_segment_at_most`]).
    pub fn distance_to_segment_at_most(&self, a: &Point, b: &Point, cap: Real) -> Real {
        if self.holds_an_end(a, b) {
            return 0.0;
        }
        self.clearance.distance_to_segment_at_most(a, b, cap)
    }

    /// `within(self.distance_to_segment(a, b))` for a monotone `within`, walked only as far
    /// as the verdict needs ([`crate::clearance::ClearanceMesh::segment_within`]).
    pub fn segment_within(&self, a: &Point, b: &Point, within: impl Fn(Real) -> bool) -> bool {
        if self.holds_an_end(a, b) {
            return within(0.0);
        }
        self.clearance.segment_within(a, b, within)
    }

    pub fn summary(&self, margin_mm: Real) -> KeepOutSummary {
        KeepOutSummary {
            kind: self.kind.name().to_string(),
            side: match self.kind {
                KeepOutKind::NerveRoot(s) => Some(s),
                _ => None,
            },
            source: self.source,
            from: self.from.clone(),
            margin_mm,
        }
    }
}

/// The canal derived from the foramen: its convex outline, inset by [`DURAL_SAC_INSET_MM`],
/// extruded along the superior axis.
pub fn derived_canal(frame: &VertebraFrame, level: &str) -> KeepOut {
    let (z0, z1) = frame.canal_z_range_mm;
    let outline = crate::polygon::offset_convex(&frame.canal_outline_xy_mm, -DURAL_SAC_INSET_MM);
    let mesh = prism(
        &outline,
        z0 - DERIVED_CANAL_EXTENSION_MM,
        z1 + DERIVED_CANAL_EXTENSION_MM,
    )
    .transformed(&frame.vertebra_to_lps());
    KeepOut::new(
        KeepOutKind::Canal,
        KeepOutSource::Derived,
        format!(
            "{level} vertebral foramen (convex outline inset {DURAL_SAC_INSET_MM} mm, extruded)"
        ),
        mesh,
    )
}

/// The exiting nerve root's zone on `side`, derived from the pedicle: a box below the pedicle
/// from the canal's edge outwards, behind the posterior wall.
pub fn derived_root(frame: &VertebraFrame, side: Side, level: &str) -> KeepOut {
    let edge = frame.canal_half_width_mm[side];
    let (lat0, lat1) = (edge - 4.0, edge + 20.0);
    let (x0, x1) = if side == Side::Left {
        (lat0, lat1)
    } else {
        (-lat1, -lat0)
    };
    let y0 = frame.posterior_wall_y_mm - 4.0;
    let y1 = frame.posterior_wall_y_mm + 12.0;
    let z1 = frame.pedicle_z_range_mm[side].0 - ROOT_GAP_BELOW_PEDICLE_MM;
    let z0 = z1 - ROOT_ZONE_HEIGHT_MM;
    let outline = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
    let mesh = prism(&outline, z0, z1).transformed(&frame.vertebra_to_lps());
    KeepOut::new(
        KeepOutKind::NerveRoot(side),
        KeepOutSource::Derived,
        format!(
            "{level} {side} exiting root zone ({ROOT_GAP_BELOW_PEDICLE_MM} mm below the pedicle)"
        ),
        mesh,
    )
}

/// A closed prism over a convex counter-clockwise polygon, from `z0` to `z1`, outward wound.
pub fn prism(outline: &[[Real; 2]], z0: Real, z1: Real) -> TriMesh {
    let n = outline.len();
    let mut vertices = Vec::with_capacity(2 * n);
    for p in outline {
        vertices.push(Point::new(p[0], p[1], z0));
    }
    for p in outline {
        vertices.push(Point::new(p[0], p[1], z1));
    }
    let mut triangles = Vec::new();
    let n32 = n as u32;
    for i in 1..n32 - 1 {
        // Bottom faces down (clockwise seen from above), top faces up.
        triangles.push([0, i + 1, i]);
        triangles.push([n32, n32 + i, n32 + i + 1]);
    }
    for i in 0..n32 {
        let j = (i + 1) % n32;
        triangles.push([i, j, n32 + j]);
        triangles.push([i, n32 + j, n32 + i]);
    }
    TriMesh::new(vertices, triangles)
}
