//! Mesh files: STL (binary and ASCII), OBJ and PLY into planner [`TriMesh`]es, and binary STL
//! out. Loaders never panic on malformed input: every failure is a [`MeshFileError`] naming the
//! file and the reason.
//!
//! STL is a triangle soup: its vertices are welded by exact coordinate equality (-0.0 equals
//! 0.0), so a closed surface comes out closed. OBJ and PLY keep their own vertex indexing.
//! STL stores f32; OBJ (read in f64) and PLY (float or double) keep their precision.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};

use kyphoplan_planner::math::Point;
use kyphoplan_planner::mesh::TriMesh;

/// A mesh file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct MeshFileError {
    pub path: PathBuf,
    pub reason: String,
}

fn err(path: &Path, reason: impl Into<String>) -> MeshFileError {
    MeshFileError {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Load a mesh by its extension (`.stl`, `.obj`, `.ply`, case-insensitive).
pub fn load_mesh(path: &Path) -> Result<TriMesh, MeshFileError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let load: fn(&Path) -> Result<TriMesh, MeshFileError> = match ext.as_str() {
        "stl" => load_stl,
        "obj" => load_obj,
        "ply" => load_ply,
        _ => {
            return Err(err(
                path,
                format!("unsupported mesh format '.{ext}' (expected .stl, .obj or .ply)"),
            ))
        }
    };
    // The parsers are third-party: a panic on a malformed file must not take the caller down.
    match std::panic::catch_unwind(|| load(path)) {
        Ok(r) => r,
        Err(_) => Err(err(path, "malformed file (the parser failed)")),
    }
}

fn open(path: &Path) -> Result<File, MeshFileError> {
    File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))
}

/// Welds vertices by exact coordinate equality.
#[derive(Default)]
struct Welder {
    index: HashMap<[u64; 3], u32>,
    vertices: Vec<Point>,
}

impl Welder {
    fn add(&mut self, p: [f64; 3]) -> u32 {
        // +0.0 turns -0.0 into 0.0 so that equal coordinates have equal bits.
        let key = [
            (p[0] + 0.0).to_bits(),
            (p[1] + 0.0).to_bits(),
            (p[2] + 0.0).to_bits(),
        ];
        let next = self.vertices.len() as u32;
        *self.index.entry(key).or_insert_with(|| {
            self.vertices.push(Point::new(p[0], p[1], p[2]));
            next
        })
    }
}

pub fn load_stl(path: &Path) -> Result<TriMesh, MeshFileError> {
    stl_from_reader(&mut BufReader::new(open(path)?), path)
}

/// Parse STL (binary or ASCII) held in memory; `path` names it in errors.
pub fn parse_stl(bytes: &[u8], path: &Path) -> Result<TriMesh, MeshFileError> {
    stl_from_reader(&mut Cursor::new(bytes), path)
}

fn stl_from_reader<R: Read + Seek>(reader: &mut R, path: &Path) -> Result<TriMesh, MeshFileError> {
    let triangles = stl_io::create_stl_reader(reader)
        .map_err(|e| err(path, format!("not a valid STL file: {e}")))?;
    let mut welder = Welder::default();
    let mut faces = Vec::new();
    for (i, t) in triangles.enumerate() {
        let t = t.map_err(|e| err(path, format!("triangle {i}: {e}")))?;
        let mut face = [0u32; 3];
        for (k, v) in t.vertices.iter().enumerate() {
            face[k] = welder.add([f64::from(v[0]), f64::from(v[1]), f64::from(v[2])]);
        }
        faces.push(face);
    }
    if faces.is_empty() {
        return Err(err(path, "the STL file has no triangles"));
    }
    Ok(TriMesh::new(welder.vertices, faces))
}

/// Write `mesh` as binary STL (coordinates rounded to f32, as the format stores them).
pub fn write_stl(path: &Path, mesh: &TriMesh) -> Result<(), MeshFileError> {
    let file = File::create(path).map_err(|e| err(path, format!("cannot create: {e}")))?;
    let mut out = BufWriter::new(file);
    let v = |p: &Point| stl_io::Vertex::new([p.x as f32, p.y as f32, p.z as f32]);
    let triangles = (0..mesh.triangles.len()).map(|i| {
        let [a, b, c] = mesh.triangle(i);
        let n = (b - a).cross(&(c - a));
        let n = if n.norm() > 0.0 { n.normalize() } else { n };
        stl_io::Triangle {
            normal: stl_io::Normal::new([n.x as f32, n.y as f32, n.z as f32]),
            vertices: [v(&a), v(&b), v(&c)],
        }
    });
    stl_io::write_stl(&mut out, triangles).map_err(|e| err(path, format!("cannot write: {e}")))?;
    out.flush()
        .map_err(|e| err(path, format!("cannot write: {e}")))
}

pub fn load_obj(path: &Path) -> Result<TriMesh, MeshFileError> {
    obj_from_reader(&mut BufReader::new(open(path)?), path)
}

/// Parse OBJ text held in memory; `path` names it in errors.
pub fn parse_obj(bytes: &[u8], path: &Path) -> Result<TriMesh, MeshFileError> {
    obj_from_reader(&mut Cursor::new(bytes), path)
}

/// An OBJ stream without its `vt` and `vn` lines (blanked, so line numbers stay): kyphoplan
/// uses positions and faces only, and tobj's texture-coordinate and normal lookups overflow on
/// relative indices reaching before the first entry (`f 1/1/-4` with one normal; found by the
/// mesh_obj fuzzer). Without them, faces' `/vt/vn` parts are parsed and ignored.
struct ObjPositionsOnly<R> {
    inner: R,
    line: Vec<u8>,
    at: usize,
}

impl<R: BufRead> Read for ObjPositionsOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for ObjPositionsOnly<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.at == self.line.len() {
            self.line.clear();
            self.at = 0;
            self.inner.read_until(b'\n', &mut self.line)?;
            // The keyword as tobj sees it (it splits each line on whitespace).
            let keyword = std::str::from_utf8(&self.line)
                .ok()
                .and_then(|l| l.split_whitespace().next());
            if matches!(keyword, Some("vt" | "vn")) {
                self.line.clear();
                self.line.push(b'\n');
            }
        }
        Ok(&self.line[self.at..])
    }

    fn consume(&mut self, amount: usize) {
        self.at = (self.at + amount).min(self.line.len());
    }
}

fn obj_from_reader<R: BufRead>(reader: &mut R, path: &Path) -> Result<TriMesh, MeshFileError> {
    let options = tobj::LoadOptions {
        triangulate: true,
        single_index: false,
        ignore_points: true,
        ignore_lines: true,
    };
    // Materials are irrelevant: `mtllib` files are never opened (they could name any file).
    let mut reader = ObjPositionsOnly {
        inner: reader,
        line: Vec::new(),
        at: 0,
    };
    let (models, _materials) = tobj::load_obj_buf(&mut reader, &options, |_| {
        Err(tobj::LoadError::OpenFileFailed)
    })
    .map_err(|e| err(path, format!("not a valid OBJ file: {e}")))?;
    let mut vertices = Vec::new();
    let mut triangles = Vec::new();
    for model in &models {
        let mesh = &model.mesh;
        if mesh.positions.len() % 3 != 0 || mesh.indices.len() % 3 != 0 {
            return Err(err(
                path,
                format!("object '{}' is not a triangle mesh", model.name),
            ));
        }
        let offset = vertices.len() as u32;
        let count = (mesh.positions.len() / 3) as u32;
        vertices.extend(
            mesh.positions
                .chunks_exact(3)
                .map(|c| Point::new(c[0], c[1], c[2])),
        );
        for (i, t) in mesh.indices.chunks_exact(3).enumerate() {
            if let Some(bad) = t.iter().find(|&&k| k >= count) {
                return Err(err(
                    path,
                    format!(
                        "object '{}' face {i} refers to vertex {bad}, but it has {count}",
                        model.name
                    ),
                ));
            }
            triangles.push([t[0] + offset, t[1] + offset, t[2] + offset]);
        }
    }
    if triangles.is_empty() {
        return Err(err(path, "the OBJ file has no faces"));
    }
    Ok(TriMesh::new(vertices, triangles))
}

pub fn load_ply(path: &Path) -> Result<TriMesh, MeshFileError> {
    let file = open(path)?;
    let len = file
        .metadata()
        .map_err(|e| err(path, format!("cannot open: {e}")))?
        .len();
    ply_from_reader(&mut BufReader::new(file), len, path)
}

/// Parse PLY (ASCII or binary) held in memory; `path` names it in errors.
pub fn parse_ply(bytes: &[u8], path: &Path) -> Result<TriMesh, MeshFileError> {
    ply_from_reader(&mut Cursor::new(bytes), bytes.len() as u64, path)
}

/// The fewest bytes one element of `def` takes in the file: the header's element counts are
/// checked against the file length before the payload is read, so that a header declaring
/// 10^12 vertices is refused instead of looping or allocating.
fn ply_min_element_bytes(def: &ply_rs::ply::ElementDef, encoding: ply_rs::ply::Encoding) -> u64 {
    use ply_rs::ply::{Encoding, PropertyType, ScalarType};
    let size = |t: &ScalarType| -> u64 {
        match t {
            ScalarType::Char | ScalarType::UChar => 1,
            ScalarType::Short | ScalarType::UShort => 2,
            ScalarType::Int | ScalarType::UInt | ScalarType::Float => 4,
            ScalarType::Double => 8,
        }
    };
    match encoding {
        // Each value is at least one character, values are separated, lines end elements
        // (the last line may lack its end).
        Encoding::Ascii => (2 * def.properties.len() as u64).saturating_sub(1),
        Encoding::BinaryBigEndian | Encoding::BinaryLittleEndian => def
            .properties
            .values()
            .map(|p| match &p.data_type {
                PropertyType::Scalar(t) => size(t),
                // An empty list still stores its length.
                PropertyType::List(count, _) => size(count),
            })
            .sum(),
    }
}

/// The header lines of a PLY file (through `end_header`), read ahead of ply-rs: its header
/// grammar panics on a number that does not fit 64 bits (`element vertex 99999999999999999999`),
/// so such numbers in `format` and `element` lines are refused here, naming the line.
fn ply_header_lines<R: BufRead>(reader: &mut R, path: &Path) -> Result<Vec<u8>, MeshFileError> {
    let mut header = Vec::new();
    for line_number in 1.. {
        let start = header.len();
        let read = reader
            .read_until(b'\n', &mut header)
            .map_err(|e| err(path, format!("not a valid PLY file: {e}")))?;
        if read == 0 {
            break;
        }
        let line = &header[start..];
        let first = line
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(line.len());
        let line = &line[first..];
        let longest_number = line
            .split(|b| !b.is_ascii_digit())
            .map(<[u8]>::len)
            .max()
            .unwrap_or(0);
        // u64::MAX has 20 digits: 19 always fit.
        if (line.starts_with(b"format") || line.starts_with(b"element")) && longest_number > 19 {
            return Err(err(
                path,
                format!(
                    "header line {line_number}: a number with {longest_number} digits is too large"
                ),
            ));
        }
        if line.starts_with(b"end_header") {
            break;
        }
    }
    Ok(header)
}

fn ply_from_reader<R: BufRead>(
    reader: &mut R,
    file_len: u64,
    path: &Path,
) -> Result<TriMesh, MeshFileError> {
    use ply_rs::ply::Property;
    let parser = ply_rs::parser::Parser::<ply_rs::ply::DefaultElement>::new();
    let mut reader = Cursor::new(ply_header_lines(reader, path)?).chain(reader);
    let header = parser
        .read_header(&mut reader)
        .map_err(|e| err(path, format!("not a valid PLY file: {e}")))?;
    for (name, def) in &header.elements {
        let min = ply_min_element_bytes(def, header.encoding);
        if def.count > 0 && min == 0 {
            return Err(err(
                path,
                format!(
                    "element '{name}' has no properties but a count of {}",
                    def.count
                ),
            ));
        }
        if (def.count as u64).saturating_mul(min) > file_len {
            return Err(err(
                path,
                format!(
                    "the header declares {} '{name}' elements, more than the file's {file_len} bytes can hold",
                    def.count
                ),
            ));
        }
    }
    let payload = parser
        .read_payload(&mut reader, &header)
        .map_err(|e| err(path, format!("not a valid PLY file: {e}")))?;
    let scalar = |p: &Property| -> Option<f64> {
        Some(match *p {
            Property::Char(v) => f64::from(v),
            Property::UChar(v) => f64::from(v),
            Property::Short(v) => f64::from(v),
            Property::UShort(v) => f64::from(v),
            Property::Int(v) => f64::from(v),
            Property::UInt(v) => f64::from(v),
            Property::Float(v) => f64::from(v),
            Property::Double(v) => v,
            _ => return None,
        })
    };
    let list = |p: &Property| -> Option<Vec<i64>> {
        Some(match p {
            Property::ListChar(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Property::ListUChar(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Property::ListShort(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Property::ListUShort(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Property::ListInt(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Property::ListUInt(v) => v.iter().map(|&x| i64::from(x)).collect(),
            _ => return None,
        })
    };
    let vertex_elements = payload
        .get("vertex")
        .ok_or_else(|| err(path, "the PLY file has no 'vertex' element"))?;
    let mut vertices = Vec::with_capacity(vertex_elements.len());
    for (i, v) in vertex_elements.iter().enumerate() {
        let coord = |name: &str| {
            v.get(name)
                .and_then(scalar)
                .ok_or_else(|| err(path, format!("vertex {i} has no numeric '{name}'")))
        };
        vertices.push(Point::new(coord("x")?, coord("y")?, coord("z")?));
    }
    let face_elements = payload
        .get("face")
        .ok_or_else(|| err(path, "the PLY file has no 'face' element"))?;
    let count = vertices.len() as i64;
    let mut triangles = Vec::with_capacity(face_elements.len());
    for (i, f) in face_elements.iter().enumerate() {
        let indices = f
            .get("vertex_indices")
            .or_else(|| f.get("vertex_index"))
            .and_then(list)
            .ok_or_else(|| {
                err(
                    path,
                    format!("face {i} has no integer list 'vertex_indices'"),
                )
            })?;
        if indices.len() < 3 {
            return Err(err(
                path,
                format!("face {i} has {} vertices", indices.len()),
            ));
        }
        if let Some(bad) = indices.iter().find(|&&k| k < 0 || k >= count) {
            return Err(err(
                path,
                format!("face {i} refers to vertex {bad}, but the file has {count}"),
            ));
        }
        // Polygons become triangle fans.
        for k in 1..indices.len() - 1 {
            triangles.push([indices[0] as u32, indices[k] as u32, indices[k + 1] as u32]);
        }
    }
    if triangles.is_empty() {
        return Err(err(path, "the PLY file has no faces"));
    }
    Ok(TriMesh::new(vertices, triangles))
}
