//! The anatomy model: levels, sides, structure roles, patient frames, and the raw input a case
//! or an RPC hands to the planner.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::math::Point;
use crate::mesh::TriMesh;

/// A vertebral level, cranial to caudal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    T1,
    T2,
    T3,
    T4,
    T5,
    T6,
    T7,
    T8,
    T9,
    T10,
    T11,
    T12,
    L1,
    L2,
    L3,
    L4,
    L5,
    S1,
}

impl Level {
    pub const ALL: [Level; 18] = [
        Level::T1,
        Level::T2,
        Level::T3,
        Level::T4,
        Level::T5,
        Level::T6,
        Level::T7,
        Level::T8,
        Level::T9,
        Level::T10,
        Level::T11,
        Level::T12,
        Level::L1,
        Level::L2,
        Level::L3,
        Level::L4,
        Level::L5,
        Level::S1,
    ];

    pub fn name(self) -> &'static str {
        const NAMES: [&str; 18] = [
            "T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2",
            "L3", "L4", "L5", "S1",
        ];
        NAMES[self as usize]
    }

    /// Position from T1 (0) to S1 (17).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let up = s.trim().to_ascii_uppercase();
        Level::ALL
            .iter()
            .copied()
            .find(|l| l.name() == up)
            .ok_or_else(|| format!("unknown level '{s}' (expected T1..T12, L1..L5 or S1)"))
    }
}

/// The patient's left or right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Left, Side::Right];
    pub fn name(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }
    /// +1 for left, -1 for right: the sign of the vertebra frame's left axis on this side.
    pub fn sign(self) -> f64 {
        match self {
            Side::Left => 1.0,
            Side::Right => -1.0,
        }
    }
    pub fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Side {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "left" => Ok(Side::Left),
            "right" => Ok(Side::Right),
            _ => Err(format!("unknown side '{s}' (expected left or right)")),
        }
    }
}

/// One value for each side, indexed by [`Side`]: the left and right pedicles, nerve roots,
/// canal half-widths of a vertebra.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PerSide<T> {
    pub left: T,
    pub right: T,
}

impl<T> PerSide<T> {
    pub const fn new(left: T, right: T) -> Self {
        PerSide { left, right }
    }

    /// `f(Side::Left)`, then `f(Side::Right)`.
    pub fn from_fn(mut f: impl FnMut(Side) -> T) -> Self {
        let left = f(Side::Left);
        let right = f(Side::Right);
        PerSide { left, right }
    }

    /// `f(Side::Left)` and `f(Side::Right)`, run in parallel ([`rayon::join`]): the same values
    /// as [`PerSide::from_fn`] where `f` has no side effects.
    pub fn par_from_fn(f: impl Fn(Side) -> T + Sync) -> Self
    where
        T: Send,
    {
        let (left, right) = rayon::join(|| f(Side::Left), || f(Side::Right));
        PerSide { left, right }
    }

    /// The value of each side mapped by `f` (left first).
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> PerSide<U> {
        let left = f(self.left);
        let right = f(self.right);
        PerSide { left, right }
    }

    pub fn as_ref(&self) -> PerSide<&T> {
        PerSide {
            left: &self.left,
            right: &self.right,
        }
    }

    /// The values, left then right.
    pub fn iter(&self) -> std::array::IntoIter<&T, 2> {
        [&self.left, &self.right].into_iter()
    }

    /// The values with their sides, left then right.
    pub fn with_sides(&self) -> std::array::IntoIter<(Side, &T), 2> {
        [(Side::Left, &self.left), (Side::Right, &self.right)].into_iter()
    }
}

impl<T> std::ops::Index<Side> for PerSide<T> {
    type Output = T;
    fn index(&self, side: Side) -> &T {
        match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        }
    }
}

impl<T> std::ops::IndexMut<Side> for PerSide<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Left => &mut self.left,
            Side::Right => &mut self.right,
        }
    }
}

/// `[0]` left, `[1]` right: the indices of the `[T; 2]` arrays `PerSide` replaced, kept for
/// callers that still index by number. Panics on any other index.
impl<T> std::ops::Index<usize> for PerSide<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        match i {
            0 => &self.left,
            1 => &self.right,
            _ => panic!("PerSide index {i} out of range (0 left, 1 right)"),
        }
    }
}

impl<T> From<[T; 2]> for PerSide<T> {
    fn from([left, right]: [T; 2]) -> Self {
        PerSide { left, right }
    }
}

impl<T> From<PerSide<T>> for [T; 2] {
    fn from(p: PerSide<T>) -> Self {
        [p.left, p.right]
    }
}

impl<T> IntoIterator for PerSide<T> {
    type Item = T;
    type IntoIter = std::array::IntoIter<T, 2>;
    /// The values, left then right.
    fn into_iter(self) -> Self::IntoIter {
        [self.left, self.right].into_iter()
    }
}

impl<'a, T> IntoIterator for &'a PerSide<T> {
    type Item = &'a T;
    type IntoIter = std::array::IntoIter<&'a T, 2>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The patient frame the input coordinates are given in. Inside the planner everything is LPS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PatientFrame {
    /// DICOM: +x patient left, +y posterior, +z superior.
    #[serde(rename = "LPS")]
    Lps,
    /// NIfTI / 3D Slicer world: +x right, +y anterior, +z superior.
    #[serde(rename = "RAS")]
    Ras,
}

impl PatientFrame {
    pub fn name(self) -> &'static str {
        match self {
            PatientFrame::Lps => "LPS",
            PatientFrame::Ras => "RAS",
        }
    }

    /// Map a point of this frame to LPS (`ras_to_lps` negates x and y; its own inverse).
    pub fn to_lps(self, p: &Point) -> Point {
        match self {
            PatientFrame::Lps => *p,
            PatientFrame::Ras => ras_to_lps(p),
        }
    }

    /// Map an LPS point back to this frame.
    pub fn from_lps(self, p_lps: &Point) -> Point {
        // The RAS<->LPS flip is an involution.
        self.to_lps(p_lps)
    }

    /// Map a direction of this frame to LPS.
    pub fn dir_to_lps(self, v: &crate::math::Vector) -> crate::math::Vector {
        match self {
            PatientFrame::Lps => *v,
            PatientFrame::Ras => crate::math::Vector::new(-v.x, -v.y, v.z),
        }
    }

    /// Map an LPS direction back to this frame.
    pub fn dir_from_lps(self, v_lps: &crate::math::Vector) -> crate::math::Vector {
        // The RAS<->LPS flip is an involution.
        self.dir_to_lps(v_lps)
    }
}

impl FromStr for PatientFrame {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "LPS" => Ok(PatientFrame::Lps),
            "RAS" => Ok(PatientFrame::Ras),
            _ => Err(format!("unknown frame '{s}' (expected \"LPS\" or \"RAS\")")),
        }
    }
}

/// RAS to LPS: a rotation of 180 degrees about the superior axis.
pub fn ras_to_lps(p_ras: &Point) -> Point {
    Point::new(-p_ras.x, -p_ras.y, p_ras.z)
}

/// What a mesh is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum Role {
    Vertebra {
        level: Level,
    },
    /// Canal, dural sac or cord.
    SpinalCanal,
    NerveRoot {
        level: Level,
        side: Side,
    },
    Skin,
    /// Any other structure to avoid (vessels, pleura).
    Forbidden,
    /// A rib (head, neck, the start of the shaft) of a thoracic level: bone that an
    /// extrapedicular cannula may pass through, but not part of the vertebra. A transpedicular
    /// cannula must not hit it: the planner keeps clear of it like a `forbidden` structure.
    Rib {
        level: Level,
        side: Side,
    },
    /// The (parietal) pleura: a forbidden structure with its own name, kept clear of by every
    /// distance check like `forbidden` (by the canal margin). Never guessed from the bone.
    Pleura,
}

impl Role {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Role::Vertebra { .. } => "vertebra",
            Role::SpinalCanal => "spinal_canal",
            Role::NerveRoot { .. } => "nerve_root",
            Role::Skin => "skin",
            Role::Forbidden => "forbidden",
            Role::Rib { .. } => "rib",
            Role::Pleura => "pleura",
        }
    }
}

/// One mesh of the anatomy with its role. `name` identifies it in messages (a file name or an
/// RPC field path).
#[derive(Clone, Debug, PartialEq)]
pub struct Structure {
    pub name: String,
    pub role: Role,
    pub mesh: TriMesh,
}

/// The raw anatomy of a case, in its own frame, before validation.
#[derive(Clone, Debug, PartialEq)]
pub struct AnatomyInput {
    pub name: String,
    pub frame: PatientFrame,
    pub structures: Vec<Structure>,
}
