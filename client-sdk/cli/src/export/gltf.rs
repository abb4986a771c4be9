//! A binary glTF 2.0 scene (`.glb`) of the plan: the vertebrae, the cannulas (24-sided cylinders
//! of the outer diameter from the bone entry to the tip), the inflated balloons (capsules) and
//! the spinal canal keep-outs (translucent).
//!
//! Units and axes: every mesh's POSITION is in the case frame (`plan.frame`, LPS or RAS) in
//! **millimetres**, the same numbers as the plan JSON. One root node carries the change to glTF's
//! conventions: `scale` 0.001 (mm to metres) and a rotation of -90 degrees about x, so the
//! patient's superior axis (+z) is glTF's up (+y). Read a mesh's accessors to get plan
//! coordinates; apply the root node's transform to get metres in a y-up viewer.
//!
//! Node tree: root "case NAME" -> one node per level ("L3", bone mesh) -> its children
//! "L3 canal (derived)", "L3 left cannula", "L3 left balloon", ...; a given canal mesh hangs
//! under the root as "canal (given: FILE)".

use std::collections::BTreeMap;
use std::path::Path;

use gltf_json as json;
use json::validation::{Checked::Valid, USize64};
use kyphoplan_planner::keepout::KeepOutKind;
use kyphoplan_planner::math::{Point, Vector};
use kyphoplan_planner::mesh::TriMesh;
use kyphoplan_planner::plan::{KeepOutSource, Plan};
use kyphoplan_planner::prepare::PreparedAnatomy;

use super::{
    check_frames, feasible_sides, mesh_lps_to_case, point, side_title, vertebra_of, write_file,
    ExportError,
};

/// Sides of the cannula cylinder and of the balloon capsule's rings.
pub const CYLINDER_SIDES: usize = 24;
/// Latitude steps of each half-sphere of a balloon capsule.
const CAPSULE_HALF_RINGS: usize = 8;

/// The kinds of geometry, one material each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Bone,
    Cannula,
    Balloon,
    Canal,
}

impl Kind {
    fn material(self) -> json::Material {
        let (name, rgba, metallic, roughness, blend) = match self {
            Kind::Bone => ("bone", [0.93, 0.90, 0.80, 1.0], 0.0, 0.7, false),
            Kind::Cannula => ("cannula", [0.55, 0.57, 0.60, 1.0], 0.9, 0.3, false),
            Kind::Balloon => ("balloon", [0.15, 0.40, 1.0, 0.55], 0.0, 0.4, true),
            Kind::Canal => ("canal", [1.0, 0.85, 0.1, 0.35], 0.0, 0.8, true),
        };
        json::Material {
            name: Some(name.to_string()),
            alpha_mode: Valid(if blend {
                json::material::AlphaMode::Blend
            } else {
                json::material::AlphaMode::Opaque
            }),
            double_sided: blend,
            pbr_metallic_roughness: json::material::PbrMetallicRoughness {
                base_color_factor: json::material::PbrBaseColorFactor(rgba),
                metallic_factor: json::material::StrengthFactor(metallic),
                roughness_factor: json::material::StrengthFactor(roughness),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Triangle soup with per-vertex normals, case frame, millimetres.
pub(crate) struct Surface {
    pub positions: Vec<Point>,
    pub normals: Vec<Vector>,
    pub triangles: Vec<[u32; 3]>,
}

impl Surface {
    /// A mesh with area-weighted vertex normals.
    pub fn from_mesh(mesh: &TriMesh) -> Surface {
        let mut normals = vec![Vector::zeros(); mesh.vertices_mm.len()];
        for i in 0..mesh.triangles.len() {
            let [a, b, c] = mesh.triangle(i);
            let n = (b - a).cross(&(c - a));
            for &v in &mesh.triangles[i] {
                normals[v as usize] += n;
            }
        }
        for n in &mut normals {
            *n = n.try_normalize(1e-12).unwrap_or_else(Vector::z);
        }
        Surface {
            positions: mesh.vertices_mm.clone(),
            normals,
            triangles: mesh.triangles.clone(),
        }
    }
}

/// A ring of a surface of revolution about `axis`: `center`, `radius`, and the normal's radial
/// and axial parts.
struct Ring {
    center: Point,
    radius: f64,
    normal_radial: f64,
    normal_axial: f64,
}

/// Two unit vectors completing `w` to a right-handed basis (u x v = w).
fn basis(w: &Vector) -> (Vector, Vector) {
    let helper = if w.x.abs() < 0.9 {
        Vector::x()
    } else {
        Vector::y()
    };
    let u = w.cross(&helper).normalize();
    let v = w.cross(&u);
    (u, v)
}

/// Surface of revolution through `rings` (ordered along `axis`), outward wound.
fn revolve(axis: &Vector, rings: &[Ring], sides: usize) -> Surface {
    let w = axis.normalize();
    let (u, v) = basis(&w);
    let mut positions = Vec::with_capacity(rings.len() * sides);
    let mut normals = Vec::with_capacity(rings.len() * sides);
    for r in rings {
        for j in 0..sides {
            let theta = std::f64::consts::TAU * j as f64 / sides as f64;
            let radial = u * theta.cos() + v * theta.sin();
            positions.push(r.center + radial * r.radius);
            normals.push((radial * r.normal_radial + w * r.normal_axial).normalize());
        }
    }
    let mut triangles = Vec::new();
    for k in 0..rings.len().saturating_sub(1) {
        for j in 0..sides {
            let j1 = (j + 1) % sides;
            let idx = |ring: usize, s: usize| (ring * sides + s) as u32;
            let (a, b, c, d) = (idx(k, j), idx(k, j1), idx(k + 1, j1), idx(k + 1, j));
            triangles.push([a, b, c]);
            triangles.push([a, c, d]);
        }
    }
    Surface {
        positions,
        normals,
        triangles,
    }
}

/// A closed cylinder of `radius` from `a` to `b` with flat caps.
pub(crate) fn cylinder(a: &Point, b: &Point, radius: f64, sides: usize) -> Surface {
    let axis = b - a;
    let ring = |center: Point, radius: f64, nr: f64, na: f64| Ring {
        center,
        radius,
        normal_radial: nr,
        normal_axial: na,
    };
    revolve(
        &axis,
        &[
            ring(*a, 0.0, 0.0, -1.0),
            ring(*a, radius, 0.0, -1.0),
            ring(*a, radius, 1.0, 0.0),
            ring(*b, radius, 1.0, 0.0),
            ring(*b, radius, 0.0, 1.0),
            ring(*b, 0.0, 0.0, 1.0),
        ],
        sides,
    )
}

/// A capsule: all points within `radius` of the segment `a`-`b`.
pub(crate) fn capsule(a: &Point, b: &Point, radius: f64, sides: usize) -> Surface {
    let axis = b - a;
    let w = axis.try_normalize(1e-12).unwrap_or_else(Vector::z);
    let mut rings = Vec::new();
    let n = CAPSULE_HALF_RINGS;
    for (center, range) in [(a, 0..=n), (b, n..=2 * n)] {
        for k in range {
            let phi =
                -std::f64::consts::FRAC_PI_2 + std::f64::consts::PI * k as f64 / (2 * n) as f64;
            rings.push(Ring {
                center: center + w * (radius * phi.sin()),
                radius: radius * phi.cos(),
                normal_radial: phi.cos(),
                normal_axial: phi.sin(),
            });
        }
    }
    revolve(&w, &rings, sides)
}

/// The BIN chunk under construction and the document's accessors into it.
struct Builder {
    root: json::Root,
    bin: Vec<u8>,
    buffer: json::Index<json::Buffer>,
    materials: BTreeMap<Kind, json::Index<json::Material>>,
}

impl Builder {
    fn new() -> Builder {
        let mut root = json::Root {
            asset: json::Asset {
                copyright: None,
                extensions: None,
                extras: Default::default(),
                generator: Some(format!(
                    "kyphoplan-client {} export::gltf",
                    env!("CARGO_PKG_VERSION")
                )),
                min_version: None,
                version: "2.0".to_string(),
            },
            ..Default::default()
        };
        // Byte length is set when the document is finished.
        let buffer = root.push(json::Buffer {
            byte_length: USize64(0),
            extensions: None,
            extras: Default::default(),
            name: Some("kyphoplan scene".to_string()),
            uri: None,
        });
        let materials = [Kind::Bone, Kind::Cannula, Kind::Balloon, Kind::Canal]
            .into_iter()
            .map(|k| (k, root.push(k.material())))
            .collect();
        Builder {
            root,
            bin: Vec::new(),
            buffer,
            materials,
        }
    }

    /// Append `bytes` 4-byte aligned as one buffer view.
    fn view(
        &mut self,
        bytes: &[u8],
        target: json::buffer::Target,
    ) -> json::Index<json::buffer::View> {
        while !self.bin.len().is_multiple_of(4) {
            self.bin.push(0);
        }
        let offset = self.bin.len();
        self.bin.extend_from_slice(bytes);
        self.root.push(json::buffer::View {
            buffer: self.buffer,
            byte_length: USize64::from(bytes.len()),
            byte_offset: Some(USize64::from(offset)),
            byte_stride: None,
            name: None,
            target: Some(Valid(target)),
            extensions: None,
            extras: Default::default(),
        })
    }

    fn vec3_accessor(
        &mut self,
        values: &[[f32; 3]],
        with_bounds: bool,
    ) -> json::Index<json::Accessor> {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| v.iter().flat_map(|c| c.to_le_bytes()))
            .collect();
        let view = self.view(&bytes, json::buffer::Target::ArrayBuffer);
        let (min, max) = if with_bounds {
            let mut min = [f32::INFINITY; 3];
            let mut max = [f32::NEG_INFINITY; 3];
            for v in values {
                for i in 0..3 {
                    min[i] = min[i].min(v[i]);
                    max[i] = max[i].max(v[i]);
                }
            }
            (Some(serde_json::json!(min)), Some(serde_json::json!(max)))
        } else {
            (None, None)
        };
        self.root.push(json::Accessor {
            buffer_view: Some(view),
            byte_offset: None,
            count: USize64::from(values.len()),
            component_type: Valid(json::accessor::GenericComponentType(
                json::accessor::ComponentType::F32,
            )),
            extensions: None,
            extras: Default::default(),
            type_: Valid(json::accessor::Type::Vec3),
            min,
            max,
            name: None,
            normalized: false,
            sparse: None,
        })
    }

    fn index_accessor(&mut self, triangles: &[[u32; 3]]) -> json::Index<json::Accessor> {
        let bytes: Vec<u8> = triangles
            .iter()
            .flat_map(|t| t.iter().flat_map(|i| i.to_le_bytes()))
            .collect();
        let view = self.view(&bytes, json::buffer::Target::ElementArrayBuffer);
        self.root.push(json::Accessor {
            buffer_view: Some(view),
            byte_offset: None,
            count: USize64::from(triangles.len() * 3),
            component_type: Valid(json::accessor::GenericComponentType(
                json::accessor::ComponentType::U32,
            )),
            extensions: None,
            extras: Default::default(),
            type_: Valid(json::accessor::Type::Scalar),
            min: None,
            max: None,
            name: None,
            normalized: false,
            sparse: None,
        })
    }

    /// A node named `name` with one mesh of `surface` in material `kind`.
    fn mesh_node(&mut self, name: &str, surface: &Surface, kind: Kind) -> json::Index<json::Node> {
        let to_f32 = |p: [f64; 3]| [p[0] as f32, p[1] as f32, p[2] as f32];
        let positions: Vec<[f32; 3]> = surface
            .positions
            .iter()
            .map(|p| to_f32([p.x, p.y, p.z]))
            .collect();
        let normals: Vec<[f32; 3]> = surface
            .normals
            .iter()
            .map(|n| to_f32([n.x, n.y, n.z]))
            .collect();
        let pos = self.vec3_accessor(&positions, true);
        let nor = self.vec3_accessor(&normals, false);
        let idx = self.index_accessor(&surface.triangles);
        let mut attributes = BTreeMap::new();
        attributes.insert(Valid(json::mesh::Semantic::Positions), pos);
        attributes.insert(Valid(json::mesh::Semantic::Normals), nor);
        let mesh = self.root.push(json::Mesh {
            extensions: None,
            extras: Default::default(),
            name: Some(name.to_string()),
            primitives: vec![json::mesh::Primitive {
                attributes,
                extensions: None,
                extras: Default::default(),
                indices: Some(idx),
                material: Some(self.materials[&kind]),
                mode: Valid(json::mesh::Mode::Triangles),
                targets: None,
            }],
            weights: None,
        });
        self.root.push(json::Node {
            mesh: Some(mesh),
            name: Some(name.to_string()),
            ..Default::default()
        })
    }

    /// The GLB file: header, JSON chunk (space padded), BIN chunk (zero padded).
    fn finish(mut self) -> Result<Vec<u8>, String> {
        while !self.bin.len().is_multiple_of(4) {
            self.bin.push(0);
        }
        self.root.buffers[self.buffer.value()].byte_length = USize64::from(self.bin.len());
        let mut json_bytes = self.root.to_vec().map_err(|e| e.to_string())?;
        while !json_bytes.len().is_multiple_of(4) {
            json_bytes.push(b' ');
        }
        let total = 12 + 8 + json_bytes.len() + 8 + self.bin.len();
        let total = u32::try_from(total).map_err(|_| "scene larger than 4 GiB".to_string())?;
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(b"glTF");
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&total.to_le_bytes());
        out.extend_from_slice(&(json_bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(b"JSON");
        out.extend_from_slice(&json_bytes);
        out.extend_from_slice(&(self.bin.len() as u32).to_le_bytes());
        out.extend_from_slice(b"BIN\0");
        out.extend_from_slice(&self.bin);
        Ok(out)
    }
}

/// The scene of `plan` over `anatomy` as GLB bytes.
pub fn to_glb(plan: &Plan, anatomy: &PreparedAnatomy) -> Result<Vec<u8>, ExportError> {
    check_frames(plan, anatomy)?;
    let frame = plan.frame;
    let mut b = Builder::new();
    let mut top = Vec::new();
    for level in &plan.levels {
        let vertebra = vertebra_of(anatomy, level.level)?;
        let name = level.level.name();
        let bone = Surface::from_mesh(&mesh_lps_to_case(frame, &vertebra.mesh));
        let node = b.mesh_node(name, &bone, Kind::Bone);
        let mut children = Vec::new();
        for k in &vertebra.derived {
            if k.kind == KeepOutKind::Canal {
                let s = Surface::from_mesh(&mesh_lps_to_case(frame, &k.mesh));
                children.push(b.mesh_node(&format!("{name} canal (derived)"), &s, Kind::Canal));
            }
        }
        for (side, t) in feasible_sides(level) {
            let title = side_title(level.level, side);
            let s = cylinder(
                &point(t.bone_entry_mm),
                &point(t.target_mm),
                0.5 * t.cannula_outer_diameter_mm,
                CYLINDER_SIDES,
            );
            children.push(b.mesh_node(&format!("{title} cannula"), &s, Kind::Cannula));
            if let Some(balloon) = &side.balloon {
                let c = point(balloon.center_mm);
                let axis = Vector::from(balloon.axis).normalize() * (0.5 * balloon.length_mm);
                let s = capsule(
                    &(c - axis),
                    &(c + axis),
                    0.5 * balloon.diameter_mm,
                    CYLINDER_SIDES,
                );
                children.push(b.mesh_node(&format!("{title} balloon"), &s, Kind::Balloon));
            }
        }
        if !children.is_empty() {
            b.root.nodes[node.value()].children = Some(children);
        }
        top.push(node);
    }
    // Given canal meshes are shared by all levels.
    let levels: Vec<_> = plan.levels.iter().map(|l| l.level).collect();
    if let Some(first) = levels.first() {
        for k in anatomy.keep_outs(*first) {
            if k.kind == KeepOutKind::Canal && k.source == KeepOutSource::Given {
                let s = Surface::from_mesh(&mesh_lps_to_case(frame, &k.mesh));
                top.push(b.mesh_node(&format!("canal (given: {})", k.from), &s, Kind::Canal));
            }
        }
    }
    let half = std::f32::consts::FRAC_1_SQRT_2;
    let root_node = b.root.push(json::Node {
        name: Some(format!("case {} ({}, mm)", plan.case, frame.name())),
        children: Some(top),
        scale: Some([0.001; 3]),
        rotation: Some(json::scene::UnitQuaternion([-half, 0.0, 0.0, half])),
        ..Default::default()
    });
    let scene = b.root.push(json::Scene {
        extensions: None,
        extras: Default::default(),
        name: Some(plan.case.clone()),
        nodes: vec![root_node],
    });
    b.root.scene = Some(scene);
    b.finish().map_err(|message| ExportError::Encode {
        path: "scene.glb".into(),
        message,
    })
}

/// Write the scene of `plan` over `anatomy` to `path` (`.glb`).
pub fn write_glb(plan: &Plan, anatomy: &PreparedAnatomy, path: &Path) -> Result<(), ExportError> {
    let bytes = to_glb(plan, anatomy).map_err(|e| match e {
        ExportError::Encode { message, .. } => ExportError::Encode {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    })?;
    write_file(path, &bytes)
}
