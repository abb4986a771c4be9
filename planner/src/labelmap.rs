//! NIfTI label maps as anatomy (feature `labelmap`): read a `.nii` / `.nii.gz` segmentation
//! (TotalSegmentator, VerSe or a table of ids), take its voxel -> patient transform from the
//! header, and mesh each label into a closed, outward-wound 2-manifold in LPS.
//!
//! Frames: the NIfTI world (sform / qform) is RAS; [`LabelVolume::voxel_to_lps`] is converted
//! once, here, by negating x and y (`ras_to_lps`). Voxel indices `(i, j, k)` are the file's own
//! axes, `i` fastest, whatever their orientation (RAS, LPS, PIR, oblique, anisotropic).
//!
//! Meshing: each label is cropped to its bounding box plus one voxel of padding; its indicator
//! (inside -0.5, outside +0.5, sampled at voxel centres, never exactly at the iso-value 0) is
//! meshed by [`mesher::tetrahedra_surface`]. Every vertex is the midpoint between an inside
//! and an outside voxel centre, which lies on the label's voxel boundary (the shared face, edge or
//! corner of the two voxels), so the surface is a closed 2-manifold even where voxels touch only
//! at an edge or a corner, and no smoothing moves it off the label boundary. The surface is
//! made in index space (half-integer vertices) and simplified there by
//! [`mesher::simplify_flat`], whose exact collapses keep it the same set of points with about a
//! seventh of the triangles (fewer triangles make preparation cheaper), then placed in LPS.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use rayon::prelude::*;

use crate::anatomy::{AnatomyInput, Level, PatientFrame, Role, Side, Structure};
use crate::math::{Matrix3, Point, Real, Vector};
use crate::mesh::TriMesh;
use crate::mesher;

/// Largest label volume read, in voxels (e.g. 512 x 512 x 1024): bounds memory (2 bytes a voxel).
pub const MAX_VOXELS: usize = 512 * 512 * 1024;

/// What went wrong with a label map, for matching in code; the message says it for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelMapErrorKind {
    /// The file cannot be read or decompressed, or is no NIfTI-1 single file.
    Unreadable,
    /// A header field is invalid (dimensions, data type, offset).
    Header,
    /// The voxel values are not integer labels (0..=65535).
    NotInteger,
    /// No voxel carries a label.
    Empty,
    /// The voxel -> patient transform is missing, not finite or singular.
    DegenerateAffine,
    /// More voxels than the limit ([`MAX_VOXELS`], or the caller's, e.g. a server's).
    TooLarge,
    /// A requested level has no label in the map.
    MissingLevel,
    /// No complete vertebra is left to plan.
    NoCompleteVertebra,
    /// A `[labelmap.labels]` entry or convention name is not understood.
    BadTable,
}

/// A refused label map: names the file and the field, says why.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct LabelMapError {
    pub kind: LabelMapErrorKind,
    pub file: String,
    pub field: String,
    pub message: String,
}

fn err(
    kind: LabelMapErrorKind,
    file: &str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> LabelMapError {
    LabelMapError {
        kind,
        file: file.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Volume and geometry
// ---------------------------------------------------------------------------------------------

/// Which header transform gave the voxel -> patient geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XformSource {
    Sform,
    Qform,
}

/// An affine map `p_to = linear * p_from + offset_mm`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub linear: Matrix3<Real>,
    pub offset_mm: Vector,
}

impl Affine {
    pub fn apply(&self, p: &Point) -> Point {
        Point::from(self.linear * p.coords + self.offset_mm)
    }
}

/// A label volume: integer labels on a voxel grid with its voxel -> LPS transform.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelVolume {
    /// The file it came from (for messages).
    pub file: String,
    /// Voxels along `i`, `j`, `k`.
    pub dims: [usize; 3],
    /// Labels, `i` fastest then `j` then `k`; 0 is background.
    pub labels: Vec<u16>,
    /// Voxel index (centre of voxel `(i, j, k)` at `(i, j, k)`) -> LPS millimetres.
    pub voxel_to_lps: Affine,
    pub xform: XformSource,
}

impl LabelVolume {
    /// The label of voxel `(i, j, k)`.
    pub fn at(&self, i: usize, j: usize, k: usize) -> u16 {
        self.labels[i + self.dims[0] * (j + self.dims[1] * k)]
    }

    /// Voxel spacing along `i`, `j`, `k` in mm (column norms of the transform).
    pub fn spacing_mm(&self) -> [Real; 3] {
        [0, 1, 2].map(|c| self.voxel_to_lps.linear.column(c).norm())
    }
}

/// `ras_to_lps`: x and y negated (a rotation by 180 degrees about z).
fn ras_to_lps(a: Affine) -> Affine {
    let flip = Matrix3::from_diagonal(&Vector::new(-1.0, -1.0, 1.0));
    Affine {
        linear: flip * a.linear,
        offset_mm: flip * a.offset_mm,
    }
}

/// Read a `.nii` or `.nii.gz` label map (gzip recognised by its magic bytes).
pub fn read_nifti_labels(path: &Path) -> Result<LabelVolume, LabelMapError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| err(LabelMapErrorKind::Unreadable, &file, "file", e.to_string()))?;
    parse_nifti_labels(&file, &bytes)
}

/// Parse a label map from its bytes (`file` names it in errors). Never panics.
pub fn parse_nifti_labels(file: &str, bytes: &[u8]) -> Result<LabelVolume, LabelMapError> {
    parse_nifti_labels_within(file, bytes, MAX_VOXELS)
}

/// Whether a file starts as gzip does.
fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Most bytes a label map of `voxels` voxels may decompress to: 8 bytes a voxel (float64), plus
/// 1 MiB of header and extensions.
pub fn max_file_bytes(voxels: usize) -> u64 {
    (voxels as u64).saturating_mul(8).saturating_add(1 << 20)
}

/// The voxel dimensions (i, j, k) a label map's header announces, read from the first bytes of
/// the file (`.nii`, or `.nii.gz` decompressed only as far as the header): `Ok(None)` while
/// the prefix is shorter than the 348-byte header. An upload checks its voxel limit with it
/// before the volume arrives. Errors as [`parse_nifti_labels`]'s for the header.
pub fn header_dims(file: &str, prefix: &[u8]) -> Result<Option<[usize; 3]>, LabelMapError> {
    let mut header = [0u8; 348];
    if is_gzip(prefix) {
        let mut decoder = flate2::read::MultiGzDecoder::new(prefix);
        let mut got = 0;
        while got < header.len() {
            match decoder.read(&mut header[got..]) {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => got += n,
            }
        }
    } else if prefix.len() < header.len() {
        return Ok(None);
    } else {
        header.copy_from_slice(&prefix[..348]);
    }
    let h = nifti::NiftiHeader::from_reader(&header[..])
        .map_err(|e| err(LabelMapErrorKind::Unreadable, file, "header", e.to_string()))?;
    dims_of(file, &h).map(Some)
}

/// The magic and the 3D dimensions of a header.
fn dims_of(file: &str, h: &nifti::NiftiHeader) -> Result<[usize; 3], LabelMapError> {
    use LabelMapErrorKind as K;
    if &h.magic != b"n+1\0" {
        return Err(err(
            K::Unreadable,
            file,
            "magic",
            "not a single-file NIfTI-1 (.nii); .hdr/.img pairs are not supported",
        ));
    }
    // Dimensions: 3D, or 4D+ with singleton extra axes.
    let ndim = h.dim[0] as usize;
    if !(1..=7).contains(&ndim) {
        return Err(err(K::Header, file, "dim[0]", format!("{ndim} dimensions")));
    }
    let mut dims = [1usize; 3];
    for (a, d) in dims.iter_mut().enumerate() {
        if a < ndim {
            *d = h.dim[a + 1] as usize;
        }
    }
    for a in 3..ndim {
        if h.dim[a + 1] > 1 {
            return Err(err(
                K::Header,
                file,
                format!("dim[{}]", a + 1),
                format!("{} (a label map has one 3D volume)", h.dim[a + 1]),
            ));
        }
    }
    if let Some(a) = dims.iter().position(|&d| d == 0) {
        return Err(err(K::Header, file, format!("dim[{}]", a + 1), "0 voxels"));
    }
    Ok(dims)
}

/// The voxel count of `dims`, or [`LabelMapErrorKind::TooLarge`] (field `dim`) over `max_voxels`.
pub fn check_voxels(
    file: &str,
    dims: [usize; 3],
    max_voxels: usize,
) -> Result<usize, LabelMapError> {
    let n = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .unwrap_or(usize::MAX);
    if n > max_voxels {
        return Err(err(
            LabelMapErrorKind::TooLarge,
            file,
            "dim",
            format!("{dims:?} = {n} voxels is over the limit of {max_voxels}"),
        ));
    }
    Ok(n)
}

/// [`parse_nifti_labels`] with at most `max_voxels` voxels (never more than [`MAX_VOXELS`]): a
/// gzipped map is checked against the limit from its header before its voxels are
/// decompressed, and is decompressed as a stream straight into the labels (never more than the
/// header, its extensions and its own voxels, [`max_file_bytes`] at most; the decompressed file
/// is never held whole: memory is the labels, 2 bytes a voxel).
pub fn parse_nifti_labels_within(
    file: &str,
    bytes: &[u8],
    max_voxels: usize,
) -> Result<LabelVolume, LabelMapError> {
    use LabelMapErrorKind as K;
    let max_voxels = max_voxels.min(MAX_VOXELS);
    let gzip = is_gzip(bytes);
    let (mut gz, mut plain);
    let reader: &mut dyn Read = if gzip {
        gz = flate2::read::MultiGzDecoder::new(bytes);
        &mut gz
    } else {
        plain = bytes;
        &mut plain
    };
    // Read up to `buf.len()` bytes; the count read (short only at the end of the data).
    let fill = |reader: &mut dyn Read, buf: &mut [u8]| -> Result<usize, LabelMapError> {
        let mut got = 0;
        while got < buf.len() {
            match reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(K::Unreadable, file, "gzip", e.to_string())),
            }
        }
        Ok(got)
    };
    let mut header = [0u8; 348];
    let got = fill(&mut *reader, &mut header)?;
    if got < 348 {
        return Err(err(
            K::Unreadable,
            file,
            "header",
            format!("{got} bytes: shorter than a NIfTI-1 header (348)"),
        ));
    }
    let h = nifti::NiftiHeader::from_reader(&header[..])
        .map_err(|e| err(K::Unreadable, file, "header", e.to_string()))?;
    let dims = dims_of(file, &h)?;
    let n = check_voxels(file, dims, max_voxels)?;
    let (size, kind) = match h.datatype {
        2 => (1, 'u'),
        256 => (1, 'i'),
        4 => (2, 'i'),
        512 => (2, 'u'),
        8 => (4, 'i'),
        768 => (4, 'u'),
        1024 => (8, 'i'),
        1280 => (8, 'u'),
        16 => (4, 'f'),
        64 => (8, 'f'),
        t => {
            return Err(err(
                K::NotInteger,
                file,
                "datatype",
                format!("{t}: not a scalar integer or real type"),
            ))
        }
    };
    let off = h.vox_offset;
    // The header, its extensions and the voxels: at most max_file_bytes of the voxel count.
    let limit = max_file_bytes(n);
    if !(off.is_finite() && off >= 348.0 && off.fract() == 0.0 && f64::from(off) < limit as f64) {
        return Err(err(K::Header, file, "vox_offset", format!("{off}")));
    }
    let off = off as usize;
    let past_end = |read: usize| {
        err(
            K::Header,
            file,
            "vox_offset",
            format!(
                "the data ({n} voxels x {size} bytes from byte {off}) run past the end of the file ({read} bytes{})",
                if gzip { " decompressed" } else { "" }
            ),
        )
    };
    // Skip the extensions.
    let skip = std::io::copy(
        &mut (&mut *reader).take((off - 348) as u64),
        &mut std::io::sink(),
    )
    .map_err(|e| err(K::Unreadable, file, "gzip", e.to_string()))? as usize;
    if skip < off - 348 {
        return Err(past_end(348 + skip));
    }
    let little = matches!(h.endianness, nifti::Endianness::Little);
    let (slope, inter) = (h.scl_slope as f64, h.scl_inter as f64);
    let scaled =
        slope.is_finite() && inter.is_finite() && slope != 0.0 && (slope, inter) != (1.0, 0.0);
    let value = |b: &[u8]| -> f64 {
        let mut a = [0u8; 8];
        a[..size].copy_from_slice(b);
        if !little {
            a[..size].reverse();
        }
        match (kind, size) {
            ('u', 1) => a[0] as f64,
            ('i', 1) => a[0] as i8 as f64,
            ('u', 2) => u16::from_le_bytes([a[0], a[1]]) as f64,
            ('i', 2) => i16::from_le_bytes([a[0], a[1]]) as f64,
            ('u', 4) => u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64,
            ('i', 4) => i32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64,
            ('f', 4) => f32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64,
            ('u', _) => u64::from_le_bytes(a) as f64,
            ('i', _) => i64::from_le_bytes(a) as f64,
            _ => f64::from_le_bytes(a),
        }
    };
    // The usual label maps (uint8, uint16, unscaled) are copied as they are; everything else
    // goes through the checked conversion.
    let direct = matches!((kind, size, scaled), ('u', 1 | 2, false));
    let mut labels: Vec<u16> = Vec::with_capacity(n);
    let mut any = false;
    const CHUNK_VOXELS: usize = 1 << 18;
    let mut chunk = vec![0u8; CHUNK_VOXELS.min(n) * size];
    while labels.len() < n {
        let want = (n - labels.len()).min(CHUNK_VOXELS) * size;
        let raw = &mut chunk[..want];
        let got = fill(&mut *reader, raw)?;
        if got < want {
            return Err(past_end(off + labels.len() * size + got));
        }
        if direct {
            // Into place, element by element over equal-length slices (vectorised).
            let before = labels.len();
            labels.resize(before + want / size, 0);
            let out = &mut labels[before..];
            if size == 1 {
                for (l, &b) in out.iter_mut().zip(raw.iter()) {
                    *l = u16::from(b);
                }
            } else if little {
                for (l, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *l = u16::from_le_bytes([c[0], c[1]]);
                }
            } else {
                for (l, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *l = u16::from_be_bytes([c[0], c[1]]);
                }
            }
            any = any || out.iter().any(|&l| l != 0);
            continue;
        }
        for b in raw.chunks_exact(size) {
            let mut x = value(b);
            if scaled {
                x = x * slope + inter;
            }
            if !(x.is_finite() && x.fract() == 0.0 && (0.0..=65535.0).contains(&x)) {
                let v = labels.len();
                let (i, j, k) = (
                    v % dims[0],
                    (v / dims[0]) % dims[1],
                    v / (dims[0] * dims[1]),
                );
                return Err(err(
                    K::NotInteger,
                    file,
                    "voxel data",
                    format!(
                        "voxel ({i}, {j}, {k}) holds {x}: labels must be integers 0..=65535 (is this an image rather than a segmentation?)"
                    ),
                ));
            }
            any |= x != 0.0;
            labels.push(x as u16);
        }
    }
    drop(chunk);
    if !any {
        return Err(err(
            K::Empty,
            file,
            "voxel data",
            "every voxel is 0: no label",
        ));
    }
    let (voxel_to_ras, xform) = voxel_to_ras(file, &h)?;
    Ok(LabelVolume {
        file: file.to_string(),
        dims,
        labels,
        voxel_to_lps: ras_to_lps(voxel_to_ras),
        xform,
    })
}

/// The header's voxel -> RAS transform: sform if `sform_code > 0`, else qform if
/// `qform_code > 0` (NIfTI-1 method 3, then 2), checked finite and non-singular.
fn voxel_to_ras(
    file: &str,
    h: &nifti::NiftiHeader,
) -> Result<(Affine, XformSource), LabelMapError> {
    use LabelMapErrorKind as K;
    let (a, source, field) = if h.sform_code > 0 {
        let r = [h.srow_x, h.srow_y, h.srow_z].map(|row| row.map(|v| v as f64));
        let linear = Matrix3::new(
            r[0][0], r[0][1], r[0][2], r[1][0], r[1][1], r[1][2], r[2][0], r[2][1], r[2][2],
        );
        let offset_mm = Vector::new(r[0][3], r[1][3], r[2][3]);
        (
            Affine { linear, offset_mm },
            XformSource::Sform,
            "srow_x/srow_y/srow_z",
        )
    } else if h.qform_code > 0 {
        let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
        let a2 = 1.0 - (b * b + c * c + d * d);
        // NIfTI-1: a = sqrt(1 - b^2 - c^2 - d^2), or a 180 degree rotation when that is ~0.
        let (a, b, c, d) = if a2 < 1e-7 {
            let s = (b * b + c * c + d * d).sqrt();
            (0.0, b / s, c / s, d / s)
        } else {
            (a2.sqrt(), b, c, d)
        };
        let rot = Matrix3::new(
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        );
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let scale = Vector::new(
            h.pixdim[1] as f64,
            h.pixdim[2] as f64,
            h.pixdim[3] as f64 * qfac,
        );
        let linear = rot * Matrix3::from_diagonal(&scale);
        let offset_mm = Vector::new(h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64);
        (
            Affine { linear, offset_mm },
            XformSource::Qform,
            "quatern_b/c/d, pixdim",
        )
    } else {
        return Err(err(
            K::DegenerateAffine,
            file,
            "sform_code/qform_code",
            "both 0: the header gives no patient orientation",
        ));
    };
    let finite =
        a.linear.iter().all(|v| v.is_finite()) && a.offset_mm.iter().all(|v| v.is_finite());
    let norms: Real = (0..3).map(|c| a.linear.column(c).norm()).product();
    let det = a.linear.determinant();
    if !finite || norms.is_nan() || norms <= 0.0 || det.abs() < 1e-6 * norms {
        return Err(err(
            K::DegenerateAffine,
            file,
            field,
            format!(
                "the voxel -> patient transform is singular or not finite (determinant {det:.3e} mm^3)"
            ),
        ));
    }
    Ok((a, source))
}

// ---------------------------------------------------------------------------------------------
// Conventions
// ---------------------------------------------------------------------------------------------

/// What a label id stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelMeaning {
    /// A vertebra the planner knows (T1..T12, L1..L5, S1).
    Vertebra(Level),
    /// Spinal canal, dural sac or cord.
    SpinalCanal,
    /// Any structure to avoid (meshed as `forbidden`).
    Forbidden,
    /// A rib, meshed with role `rib` when its level (the thoracic vertebra it articulates
    /// with: rib N with TN) and side are known; a bare `"rib"` table entry (`None`) is ignored,
    /// and the plan says so.
    Rib(Option<(Level, Side)>),
    /// A lung (or lobe): its surface is the visceral pleura, meshed with role `pleura`.
    Lung,
    /// Known but not used (a vertebra the planner does not plan, an organ); the name says what.
    NotUsed(String),
}

/// The built-in label conventions, plus a plain table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convention {
    /// TotalSegmentator v2, task "total" (117 classes).
    TotalSegmentator,
    /// VerSe vertebra labels.
    Verse,
    /// Only the `[labelmap.labels]` table.
    Table,
}

impl FromStr for Convention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "totalsegmentator" => Ok(Convention::TotalSegmentator),
            "verse" => Ok(Convention::Verse),
            "table" => Ok(Convention::Table),
            _ => Err(format!(
                "unknown label convention {s:?} (expected \"totalsegmentator\", \"verse\" or \"table\")"
            )),
        }
    }
}

impl fmt::Display for Convention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Convention::TotalSegmentator => "totalsegmentator",
            Convention::Verse => "verse",
            Convention::Table => "table",
        })
    }
}

/// T1-T12 and L1-L5, slices of [`Level::ALL`] (which runs T1..T12, L1..L5, S1).
const THORACIC: &[Level] = Level::ALL.split_at(12).0;
const LUMBAR: &[Level] = Level::ALL.split_at(12).1.split_at(5).0;

/// Label id -> meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelTable {
    pub convention: Convention,
    pub meanings: BTreeMap<u16, LabelMeaning>,
}

impl LabelTable {
    /// The built-in table of a convention (empty for [`Convention::Table`]).
    ///
    /// - TotalSegmentator v2 "total": `class_map["total"]` in `totalsegmentator/map_to_binary.py`
    ///   of github.com/wasserth/TotalSegmentator (v2.x): 10-14 lung lobes, 25 sacrum,
    ///   26 vertebrae_S1, 27..31 vertebrae_L5..L1, 32..43 vertebrae_T12..T1, 44..50
    ///   vertebrae_C7..C1, 79 spinal_cord, 92..103 rib_left_1..12, 104..115 rib_right_1..12.
    ///   Rib N is meshed as `rib` of level TN on its side (the head of rib N articulates with
    ///   the body of TN, and of T(N-1) above it, and its tubercle with TN's transverse process:
    ///   Gray's Anatomy, "Ribs"); the lung lobes as `pleura` (a lung's surface is its visceral
    ///   pleura, within a few millimetres of the parietal pleura a cannula must not reach).
    ///   VerSe has neither.
    /// - VerSe (Sekuboyina et al., "VerSe: A Vertebrae labelling and segmentation benchmark",
    ///   Medical Image Analysis 2021; github.com/anjany/verse): 1-7 C1-C7, 8-19 T1-T12, 20-25
    ///   L1-L6, 26 sacrum, 28 T13.
    pub fn builtin(convention: Convention) -> LabelTable {
        let mut m = BTreeMap::new();
        match convention {
            Convention::TotalSegmentator => {
                for (id, name) in [
                    (10, "lung_upper_lobe_left"),
                    (11, "lung_lower_lobe_left"),
                    (12, "lung_upper_lobe_right"),
                    (13, "lung_middle_lobe_right"),
                    (14, "lung_lower_lobe_right"),
                ] {
                    let _ = name;
                    m.insert(id, LabelMeaning::Lung);
                }
                m.insert(25, LabelMeaning::NotUsed("sacrum".into()));
                m.insert(26, LabelMeaning::Vertebra(Level::S1));
                for (q, level) in LUMBAR.iter().rev().enumerate() {
                    m.insert(27 + q as u16, LabelMeaning::Vertebra(*level));
                }
                for (q, level) in THORACIC.iter().rev().enumerate() {
                    m.insert(32 + q as u16, LabelMeaning::Vertebra(*level));
                }
                for c in 1..=7u16 {
                    m.insert(51 - c, LabelMeaning::NotUsed(format!("vertebrae_C{c}")));
                }
                m.insert(79, LabelMeaning::SpinalCanal);
                for (q, level) in THORACIC.iter().enumerate() {
                    m.insert(92 + q as u16, LabelMeaning::Rib(Some((*level, Side::Left))));
                    m.insert(
                        104 + q as u16,
                        LabelMeaning::Rib(Some((*level, Side::Right))),
                    );
                }
            }
            Convention::Verse => {
                for c in 1..=7u16 {
                    m.insert(c, LabelMeaning::NotUsed(format!("C{c}")));
                }
                for (q, level) in THORACIC.iter().enumerate() {
                    m.insert(8 + q as u16, LabelMeaning::Vertebra(*level));
                }
                for (q, level) in LUMBAR.iter().enumerate() {
                    m.insert(20 + q as u16, LabelMeaning::Vertebra(*level));
                }
                m.insert(25, LabelMeaning::NotUsed("L6 (transitional)".into()));
                m.insert(26, LabelMeaning::NotUsed("sacrum".into()));
                m.insert(28, LabelMeaning::NotUsed("T13 (transitional)".into()));
            }
            Convention::Table => {}
        }
        LabelTable {
            convention,
            meanings: m,
        }
    }

    /// Apply `[labelmap.labels]` entries (id -> "vertebra:L3" | "spinal_canal" | "forbidden" |
    /// "rib:T5:left" | "rib" | "lung" | "pleura" | "ignore"), replacing the convention's meaning
    /// of those ids.
    pub fn with_overrides(
        mut self,
        file: &str,
        entries: &BTreeMap<String, String>,
    ) -> Result<LabelTable, LabelMapError> {
        for (key, value) in entries {
            let field = format!("labelmap.labels.{key}");
            let id: u16 = key.trim().parse().map_err(|_| {
                err(
                    LabelMapErrorKind::BadTable,
                    file,
                    &field,
                    "the key must be a label id 1..=65535",
                )
            })?;
            if id == 0 {
                return Err(err(
                    LabelMapErrorKind::BadTable,
                    file,
                    &field,
                    "label 0 is the background",
                ));
            }
            let meaning = parse_meaning(value)
                .map_err(|m| err(LabelMapErrorKind::BadTable, file, &field, m))?;
            self.meanings.insert(id, meaning);
        }
        Ok(self)
    }
}

fn parse_meaning(value: &str) -> Result<LabelMeaning, String> {
    let v = value.trim();
    if let Some(rest) = v.strip_prefix("rib:") {
        let bad = || format!("{value:?}: a rib is \"rib:LEVEL:SIDE\", e.g. \"rib:T5:left\"");
        let (level, side) = rest.split_once(':').ok_or_else(bad)?;
        let level = level
            .trim()
            .parse::<Level>()
            .map_err(|e| format!("{value:?}: {e}"))?;
        let side = match side.trim() {
            "left" => Side::Left,
            "right" => Side::Right,
            _ => return Err(bad()),
        };
        return Ok(LabelMeaning::Rib(Some((level, side))));
    }
    if let Some(level) = v.strip_prefix("vertebra:") {
        return level
            .trim()
            .parse::<Level>()
            .map(LabelMeaning::Vertebra)
            .map_err(|e| format!("{value:?}: {e}"));
    }
    match v {
        "spinal_canal" | "spinal_cord" => Ok(LabelMeaning::SpinalCanal),
        "forbidden" => Ok(LabelMeaning::Forbidden),
        "rib" => Ok(LabelMeaning::Rib(None)),
        "lung" | "pleura" => Ok(LabelMeaning::Lung),
        "ignore" => Ok(LabelMeaning::NotUsed("ignored by the table".into())),
        _ => Err(format!(
            "{value:?}: expected \"vertebra:LEVEL\", \"spinal_canal\", \"forbidden\", \"rib:LEVEL:SIDE\", \"rib\", \"lung\", \"pleura\" or \"ignore\""
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Meshing
// ---------------------------------------------------------------------------------------------

/// Where a label lies in the volume: inclusive voxel bounds and voxel count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelBox {
    pub lo: [usize; 3],
    pub hi: [usize; 3],
    pub voxels: usize,
}

/// The bounding box of every label present: slabs of slices in parallel (rows of background
/// skipped whole), merged in slab order (min, max and counts: the same whatever the split).
pub fn label_boxes(volume: &LabelVolume) -> BTreeMap<u16, LabelBox> {
    let [nx, ny, nz] = volume.dims;
    let slice = nx * ny;
    if slice == 0 || nz == 0 {
        return BTreeMap::new();
    }
    const SLAB_SLICES: usize = 8;
    let slabs: Vec<BTreeMap<u16, LabelBox>> = volume
        .labels
        .par_chunks(slice * SLAB_SLICES)
        .enumerate()
        .map(|(s, slab)| {
            let mut boxes: BTreeMap<u16, LabelBox> = BTreeMap::new();
            for (r, row) in slab.chunks_exact(nx).enumerate() {
                if row.iter().all(|&l| l == 0) {
                    continue;
                }
                let (j, k) = (r % ny, s * SLAB_SLICES + r / ny);
                // Runs of one label along the row: voxels i0..i.
                let mut i0 = 0;
                while i0 < nx {
                    let l = row[i0];
                    let i = i0 + row[i0..].iter().take_while(|&&x| x == l).count();
                    if l != 0 {
                        let b = boxes.entry(l).or_insert(LabelBox {
                            lo: [i0, j, k],
                            hi: [i0, j, k],
                            voxels: 0,
                        });
                        for (a, (x0, x1)) in [(i0, i - 1), (j, j), (k, k)].into_iter().enumerate() {
                            b.lo[a] = b.lo[a].min(x0);
                            b.hi[a] = b.hi[a].max(x1);
                        }
                        b.voxels += i - i0;
                    }
                    i0 = i;
                }
            }
            boxes
        })
        .collect();
    let mut out: BTreeMap<u16, LabelBox> = BTreeMap::new();
    for (l, b) in slabs.into_iter().flatten() {
        match out.get_mut(&l) {
            None => {
                out.insert(l, b);
            }
            Some(a) => {
                for q in 0..3 {
                    a.lo[q] = a.lo[q].min(b.lo[q]);
                    a.hi[q] = a.hi[q].max(b.hi[q]);
                }
                a.voxels += b.voxels;
            }
        }
    }
    out
}

/// A face of the voxel volume, by voxel axis and end, with the patient direction it faces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeFace {
    /// 0 = i, 1 = j, 2 = k.
    pub axis: usize,
    /// The last index (true) or index 0 (false).
    pub high: bool,
    /// The LPS direction nearest the face's outward normal: "left", "right", "posterior",
    /// "anterior", "superior" or "inferior".
    pub direction: &'static str,
}

impl fmt::Display for VolumeFace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let axis = ["i", "j", "k"][self.axis];
        let end = if self.high { "last" } else { "0" };
        write!(f, "{} face (voxel {axis} = {end})", self.direction)
    }
}

/// The faces of the volume a box touches.
pub fn touched_faces(volume: &LabelVolume, b: &LabelBox) -> Vec<VolumeFace> {
    let mut faces = Vec::new();
    for axis in 0..3 {
        for high in [false, true] {
            let touches = if high {
                b.hi[axis] + 1 == volume.dims[axis]
            } else {
                b.lo[axis] == 0
            };
            if !touches {
                continue;
            }
            let col: Vector = volume.voxel_to_lps.linear.column(axis).into();
            let out = if high { col } else { -col };
            let a = out.iamax();
            let direction = match (a, out[a] > 0.0) {
                (0, true) => "left",
                (0, false) => "right",
                (1, true) => "posterior",
                (1, false) => "anterior",
                (_, true) => "superior",
                (_, false) => "inferior",
            };
            faces.push(VolumeFace {
                axis,
                high,
                direction,
            });
        }
    }
    faces
}

/// One meshed label set: its largest piece, and the volumes of the other pieces.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelSurface {
    /// The largest piece (by enclosed volume), in LPS mm, outward wound.
    pub mesh_lps: TriMesh,
    /// Enclosed volume of the largest piece, in ml.
    pub volume_ml: Real,
    /// Enclosed volumes of the other pieces, largest first, in ml.
    pub other_pieces_ml: Vec<Real>,
    /// Volumes of the cavities enclosed by the label (unlabelled voxels inside it: inward-wound
    /// components), filled, in ml.
    pub cavities_ml: Vec<Real>,
}

/// Mesh the voxels whose label is in `ids`, inside `b` (the union of their boxes): cropped to
/// `b` plus one voxel of padding (outside the volume counts as background).
pub fn mesh_labels(volume: &LabelVolume, ids: &[u16], b: &LabelBox) -> LabelSurface {
    let n = [0, 1, 2].map(|a| b.hi[a] - b.lo[a] + 3);
    let mut values = Vec::with_capacity(n[0] * n[1] * n[2]);
    // Grid point (gi, gj, gk) is voxel (lo + g - 1); g = 0 and g = n - 1 are padding.
    let voxel = |g: usize, a: usize| -> Option<usize> {
        let v = (b.lo[a] + g).checked_sub(1)?;
        (g + 1 < n[a] && v < volume.dims[a]).then_some(v)
    };
    for gk in 0..n[2] {
        for gj in 0..n[1] {
            for gi in 0..n[0] {
                let inside = match (voxel(gi, 0), voxel(gj, 1), voxel(gk, 2)) {
                    (Some(i), Some(j), Some(k)) => ids.contains(&volume.at(i, j, k)),
                    _ => false,
                };
                values.push(if inside { -0.5 } else { 0.5 });
            }
        }
    }
    let t = volume.voxel_to_lps;
    let lo = b.lo.map(|x| x as Real - 1.0);
    // Meshed and simplified in index space, where every vertex is a half-integer and the
    // flatness tests of `simplify_flat` are exact; then placed in LPS.
    let surface = mesher::tetrahedra_surface(&values, n, |gi, gj, gk| {
        Point::new(lo[0] + gi as Real, lo[1] + gj as Real, lo[2] + gk as Real)
    });
    drop(values);
    let surface = mesher::simplify_flat(surface).mapped(|p| t.apply(p));
    // Outward in index space; a mirroring transform (e.g. RAS voxels in LPS) turns it inward.
    let surface = if t.linear.determinant() < 0.0 {
        surface.flipped()
    } else {
        surface
    };
    let mut pieces: Vec<(Real, TriMesh)> = mesher::connected_components(&surface)
        .into_iter()
        .map(|m| (m.signed_volume_mm3() / 1000.0, m))
        .collect();
    // Largest enclosed volume first; the stable sort keeps the components' order on ties.
    pieces.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut it = pieces.into_iter();
    let (volume_ml, mesh_lps) = it
        .next()
        .unwrap_or((0.0, TriMesh::new(Vec::new(), Vec::new())));
    let (other, cavities): (Vec<Real>, Vec<Real>) = it.map(|(v, _)| v).partition(|v| *v > 0.0);
    LabelSurface {
        mesh_lps,
        volume_ml,
        other_pieces_ml: other,
        cavities_ml: cavities.into_iter().map(Real::abs).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Anatomy
// ---------------------------------------------------------------------------------------------

/// A vertebra the label map holds but that cannot be planned.
#[derive(Clone, Debug, PartialEq)]
pub struct RefusedLevel {
    pub level: Level,
    /// The first of `labels`.
    pub label: u16,
    /// Every label id of the level.
    pub labels: Vec<u16>,
    /// The volume faces it touches.
    pub faces: Vec<VolumeFace>,
    pub message: String,
}

/// Where a structure of a label map came from.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelSource {
    /// The label ids meshed together.
    pub labels: Vec<u16>,
    /// Voxels carrying those labels.
    pub voxels: usize,
    /// Enclosed volume of the piece used (the largest), ml.
    pub volume_ml: Real,
    /// Enclosed volumes of the other pieces, left out, largest first, ml.
    pub other_pieces_ml: Vec<Real>,
    /// Volumes of the enclosed cavities filled, ml.
    pub cavities_ml: Vec<Real>,
}

/// A label map turned into anatomy (LPS), with what was refused and what was ignored.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelMapAnatomy {
    /// Frame LPS; one structure per complete vertebra, the canal, forbidden labels, ribs
    /// (by level and side) and lungs (as `pleura`).
    pub anatomy: AnatomyInput,
    /// Structure name -> where it came from (label ids, voxels, pieces).
    pub sources: BTreeMap<String, LabelSource>,
    /// Vertebrae touching the volume boundary, not planned.
    pub refused: Vec<RefusedLevel>,
    /// What the plan should say: ignored labels (ribs without a level, unknown ids), extra
    /// pieces, refused vertebrae.
    pub notices: Vec<String>,
}

/// Build the anatomy of a label map: every complete vertebra (or only `levels`), the spinal
/// canal, forbidden labels, ribs and lungs, meshed in parallel (results in a fixed order).
///
/// A requested level without a label is an error; a vertebra touching the volume boundary is
/// refused (listed in [`LabelMapAnatomy::refused`]); no complete vertebra left is an error.
pub fn anatomy_from_labels(
    name: &str,
    volume: &LabelVolume,
    table: &LabelTable,
    levels: Option<&[Level]>,
) -> Result<LabelMapAnatomy, LabelMapError> {
    use LabelMapErrorKind as K;
    let file = volume.file.as_str();
    let boxes = label_boxes(volume);
    let meaning = |id: u16| table.meanings.get(&id);
    let mut notices = Vec::new();

    // Vertebra labels present, by level.
    let mut vertebrae: BTreeMap<Level, Vec<u16>> = BTreeMap::new();
    let mut canal: Vec<u16> = Vec::new();
    let mut forbidden: Vec<u16> = Vec::new();
    let mut ribs: BTreeMap<(Level, Side), Vec<u16>> = BTreeMap::new();
    let (mut bare_ribs, mut lungs, mut not_used, mut unknown) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &id in boxes.keys() {
        match meaning(id) {
            Some(LabelMeaning::Vertebra(l)) => vertebrae.entry(*l).or_default().push(id),
            Some(LabelMeaning::SpinalCanal) => canal.push(id),
            Some(LabelMeaning::Forbidden) => forbidden.push(id),
            Some(LabelMeaning::Rib(Some(level_side))) => {
                ribs.entry(*level_side).or_default().push(id)
            }
            Some(LabelMeaning::Rib(None)) => bare_ribs.push(id),
            Some(LabelMeaning::Lung) => lungs.push(id),
            Some(LabelMeaning::NotUsed(what)) => not_used.push(format!("{id} ({what})")),
            None => unknown.push(id.to_string()),
        }
    }
    let ids = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    if !bare_ribs.is_empty() {
        notices.push(format!(
            "rib labels {} ignored: their level and side are unknown (write \"rib:T5:left\" in [labelmap.labels])",
            ids(&bare_ribs)
        ));
    }
    if !not_used.is_empty() {
        notices.push(format!("labels not planned: {}", not_used.join(", ")));
    }
    if !unknown.is_empty() {
        notices.push(format!(
            "labels {} are not in the {} convention: ignored",
            unknown.join(", "),
            table.convention
        ));
    }

    let wanted: Vec<Level> = match levels {
        Some(ls) => {
            for l in ls {
                if !vertebrae.contains_key(l) {
                    let expected: Vec<String> = table
                        .meanings
                        .iter()
                        .filter(|(_, m)| **m == LabelMeaning::Vertebra(*l))
                        .map(|(id, _)| id.to_string())
                        .collect();
                    let hint = if expected.is_empty() {
                        format!("the {} convention has no label for it", table.convention)
                    } else {
                        format!(
                            "{} convention label {} has no voxel",
                            table.convention,
                            expected.join(" / ")
                        )
                    };
                    return Err(err(
                        K::MissingLevel,
                        file,
                        "levels",
                        format!("level {l} is requested but the label map has no {l}: {hint}"),
                    ));
                }
            }
            ls.to_vec()
        }
        None => vertebrae.keys().copied().collect(),
    };

    let union_box = |ids: &[u16]| -> LabelBox {
        let mut it = ids.iter().map(|id| boxes[id]);
        let first = it.next().unwrap_or(LabelBox {
            lo: [0; 3],
            hi: [0; 3],
            voxels: 0,
        });
        it.fold(first, |mut a, b| {
            for q in 0..3 {
                a.lo[q] = a.lo[q].min(b.lo[q]);
                a.hi[q] = a.hi[q].max(b.hi[q]);
            }
            a.voxels += b.voxels;
            a
        })
    };

    // (name, role, ids) of everything to mesh, in a fixed order.
    let mut jobs: Vec<(String, Role, Vec<u16>)> = Vec::new();
    let mut refused = Vec::new();
    for level in &wanted {
        let ids_l = &vertebrae[level];
        let b = union_box(ids_l);
        let faces = touched_faces(volume, &b);
        if !faces.is_empty() {
            let names: Vec<String> = faces.iter().map(|f| f.to_string()).collect();
            refused.push(RefusedLevel {
                level: *level,
                label: ids_l[0],
                labels: ids_l.clone(),
                faces,
                message: format!(
                    "label {} ({level}) touches the volume boundary at the {}: the vertebra is cut by the scan, not planned",
                    ids(ids_l),
                    names.join(", ")
                ),
            });
            continue;
        }
        jobs.push((
            level.name().to_string(),
            Role::Vertebra { level: *level },
            ids_l.clone(),
        ));
    }
    if jobs.is_empty() {
        let why: Vec<String> = refused.iter().map(|r| r.message.clone()).collect();
        return Err(err(
            K::NoCompleteVertebra,
            file,
            "labels",
            if why.is_empty() {
                format!("no vertebra label of the {} convention", table.convention)
            } else {
                format!("no complete vertebra: {}", why.join("; "))
            },
        ));
    }
    if !canal.is_empty() {
        jobs.push(("spinal_canal".to_string(), Role::SpinalCanal, canal));
    }
    for id in forbidden {
        jobs.push((format!("forbidden_{id}"), Role::Forbidden, vec![id]));
    }
    for ((level, side), ids_r) in ribs {
        jobs.push((
            format!("rib_{}_{level}", side.name()),
            Role::Rib { level, side },
            ids_r,
        ));
    }
    // Each lung label on its own: the two lungs are separate pieces, and only the largest
    // piece of a structure is kept.
    for id in lungs {
        jobs.push((format!("pleura_{id}"), Role::Pleura, vec![id]));
    }

    let surfaces: Vec<LabelSurface> = jobs
        .par_iter()
        .map(|(_, _, ids_j)| mesh_labels(volume, ids_j, &union_box(ids_j)))
        .collect();
    let mut structures = Vec::new();
    let mut sources = BTreeMap::new();
    for ((name_s, role, ids_j), s) in jobs.into_iter().zip(surfaces) {
        if !s.other_pieces_ml.is_empty() {
            let pieces: Vec<String> = s
                .other_pieces_ml
                .iter()
                .map(|v| format!("{:.3} ml", v))
                .collect();
            notices.push(format!(
                "{name_s} (label {}): largest piece used ({:.1} ml); {} other piece(s) left out: {}",
                ids(&ids_j),
                s.volume_ml,
                pieces.len(),
                pieces.join(", ")
            ));
        }
        if !s.cavities_ml.is_empty() {
            let total: Real = s.cavities_ml.iter().sum();
            notices.push(format!(
                "{name_s} (label {}): {} enclosed cavit{} ({total:.3} ml) filled",
                ids(&ids_j),
                s.cavities_ml.len(),
                if s.cavities_ml.len() == 1 { "y" } else { "ies" }
            ));
        }
        let voxels = ids_j.iter().map(|id| boxes[id].voxels).sum();
        sources.insert(
            name_s.clone(),
            LabelSource {
                labels: ids_j,
                voxels,
                volume_ml: s.volume_ml,
                other_pieces_ml: s.other_pieces_ml,
                cavities_ml: s.cavities_ml,
            },
        );
        structures.push(Structure {
            name: name_s,
            role,
            mesh: s.mesh_lps,
        });
    }
    for r in &refused {
        notices.push(r.message.clone());
    }
    Ok(LabelMapAnatomy {
        anatomy: AnatomyInput {
            name: name.to_string(),
            frame: PatientFrame::Lps,
            structures,
        },
        sources,
        refused,
        notices,
    })
}

/// Encode `volume` as a NIfTI-1 single file (uint16 labels, little endian, sform code 2 in RAS,
/// qform unset): for generated test and bench label maps. [`parse_nifti_labels`] reads it back
/// to the same labels and the same transform (to f32 rounding).
pub fn encode_nifti_labels(volume: &LabelVolume) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    let put_i16 = |h: &mut [u8], at: usize, v: i16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 =
        |h: &mut [u8], at: usize, v: f64| h[at..at + 4].copy_from_slice(&(v as f32).to_le_bytes());
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    put_i16(&mut h, 40, 3);
    for a in 0..7 {
        let d = if a < 3 { volume.dims[a] } else { 1 };
        put_i16(&mut h, 42 + 2 * a, d.min(i16::MAX as usize) as i16);
    }
    put_i16(&mut h, 70, 512); // uint16
    put_i16(&mut h, 72, 16);
    let spacing = volume.spacing_mm();
    put_f32(&mut h, 76, 1.0);
    for (a, s) in spacing.iter().enumerate() {
        put_f32(&mut h, 80 + 4 * a, *s);
    }
    put_f32(&mut h, 108, 352.0);
    h[123] = 2; // xyzt_units: mm
    put_i16(&mut h, 254, 2); // sform_code: aligned
    let t = volume.voxel_to_lps;
    let sign = [-1.0, -1.0, 1.0]; // lps_to_ras
    for (r, sign) in sign.iter().enumerate() {
        for c in 0..3 {
            put_f32(&mut h, 280 + 16 * r + 4 * c, sign * t.linear[(r, c)]);
        }
        put_f32(&mut h, 280 + 16 * r + 12, sign * t.offset_mm[r]);
    }
    h[344..348].copy_from_slice(b"n+1\0");
    h.reserve(2 * volume.labels.len());
    for l in &volume.labels {
        h.extend_from_slice(&l.to_le_bytes());
    }
    h
}
