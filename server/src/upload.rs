//! Anatomies as they arrive: an `UploadAnatomy` stream being assembled ([`UploadAssembly`]),
//! and the size limit an uploaded or inline anatomy must keep ([`SizeLimit`]).

use kyphoplan_planner::error::InputError;
use kyphoplan_proto::{convert, pb};
use tonic::Status;

use crate::error::ServiceError;

/// `--max-triangles`: most triangles of one anatomy, all meshes together, and three times as
/// many vertices.
#[derive(Clone, Copy, Debug)]
pub struct SizeLimit {
    pub max_triangles: u64,
}

impl SizeLimit {
    /// RESOURCE_EXHAUSTED (`anatomy triangles`, `anatomy vertices`) when over the limit.
    pub fn check(&self, triangles: u64, vertices: u64) -> Result<(), ServiceError> {
        let max = self.max_triangles;
        if triangles > max {
            return Err(ServiceError::ResourceExhausted {
                what: "anatomy triangles",
                detail: format!("{triangles} triangles is over the server's limit of {max}"),
            });
        }
        if vertices > max.saturating_mul(3) {
            return Err(ServiceError::ResourceExhausted {
                what: "anatomy vertices",
                detail: format!(
                    "{vertices} vertices is over the server's limit of {}",
                    max.saturating_mul(3)
                ),
            });
        }
        Ok(())
    }

    /// [`check`](Self::check) of a whole anatomy message (an inline anatomy).
    pub fn check_anatomy(&self, data: &pb::AnatomyData) -> Result<(), ServiceError> {
        let (triangles, vertices) = data.structures.iter().fold((0u64, 0u64), |(t, v), s| {
            s.mesh.as_ref().map_or((t, v), |m| {
                (
                    t + m.triangles.len() as u64 / 3,
                    v + m.vertices_mm.len() as u64 / 3,
                )
            })
        });
        self.check(triangles, vertices)
    }
}

/// An `UploadAnatomy` stream being assembled: the header (checked on arrival) and each
/// structure's mesh, the concatenation of its chunks, within a [`SizeLimit`] checked after
/// every chunk. Errors name the chunk by its 0-based index in the stream.
#[derive(Debug)]
pub struct UploadAssembly {
    limit: SizeLimit,
    /// Chunks taken so far: the index of the next one.
    received: usize,
    header: Option<pb::AnatomyHeader>,
    vertices: Vec<Vec<f64>>,
    triangles: Vec<Vec<u32>>,
    vertex_count: u64,
    triangle_count: u64,
}

impl UploadAssembly {
    pub fn new(limit: SizeLimit) -> UploadAssembly {
        UploadAssembly {
            limit,
            received: 0,
            header: None,
            vertices: Vec::new(),
            triangles: Vec::new(),
            vertex_count: 0,
            triangle_count: 0,
        }
    }

    /// Take the next item of the stream. A stream error is CANCELLED when the client cancelled,
    /// RESOURCE_EXHAUSTED (`message size`) for a chunk over the message limit, and otherwise
    /// INVALID_ARGUMENT (`chunk[i]`, undecodable). A chunk is refused (INVALID_ARGUMENT) when it
    /// is empty, a second header, a mesh before the header or of a structure the header does not
    /// have, or when the header names no anatomy or has a bad frame or descriptor; and
    /// RESOURCE_EXHAUSTED once the anatomy so far is over the size limit.
    pub fn push(
        &mut self,
        received: Result<pb::UploadAnatomyChunk, Status>,
    ) -> Result<(), ServiceError> {
        let index = self.received;
        let chunk = received.map_err(|s| stream_error(&s, index))?;
        self.add(chunk, index)?;
        self.limit.check(self.triangle_count, self.vertex_count)?;
        self.received += 1;
        Ok(())
    }

    fn add(&mut self, chunk: pb::UploadAnatomyChunk, index: usize) -> Result<(), InputError> {
        let pb::UploadAnatomyChunk { chunk } = chunk;
        match (chunk, &self.header) {
            (None, _) => Err(InputError::invalid(
                format!("chunk[{index}]"),
                "empty",
                "a chunk carries a header or a mesh",
            )),
            (Some(pb::upload_anatomy_chunk::Chunk::Header(header)), None) => {
                if header.name.trim().is_empty() {
                    return Err(InputError::invalid(
                        "header.name",
                        "\"\"",
                        "the anatomy needs a name",
                    ));
                }
                convert::frame_from_pb(header.frame, "header.frame")?;
                for (i, d) in header.structures.iter().enumerate() {
                    convert::descriptor_from_pb(d.clone(), &format!("header.structures[{i}]"))?;
                }
                let n = header.structures.len();
                self.vertices = vec![Vec::new(); n];
                self.triangles = vec![Vec::new(); n];
                self.header = Some(header);
                Ok(())
            }
            (Some(pb::upload_anatomy_chunk::Chunk::Header(_)), Some(_)) => {
                Err(InputError::invalid(
                    format!("chunk[{index}].header"),
                    "second header",
                    "send the header once, first",
                ))
            }
            (Some(pb::upload_anatomy_chunk::Chunk::Mesh(_)), None) => Err(InputError::invalid(
                format!("chunk[{index}].mesh"),
                "mesh before header",
                "send the header first",
            )),
            (Some(pb::upload_anatomy_chunk::Chunk::Mesh(mesh)), Some(_)) => {
                let pb::MeshChunk {
                    structure_index,
                    vertices_mm,
                    triangles,
                } = mesh;
                let i = structure_index as usize;
                if i >= self.vertices.len() {
                    return Err(InputError::invalid(
                        format!("chunk[{index}].mesh.structure_index"),
                        structure_index,
                        format!("the header has {} structures", self.vertices.len()),
                    ));
                }
                self.vertex_count += vertices_mm.len() as u64 / 3;
                self.triangle_count += triangles.len() as u64 / 3;
                self.vertices[i].extend_from_slice(&vertices_mm);
                self.triangles[i].extend_from_slice(&triangles);
                Ok(())
            }
        }
    }

    /// The assembled anatomy (not yet converted: see [`convert::anatomy_from_pb`]);
    /// INVALID_ARGUMENT (`header`) if the stream sent no header.
    pub fn finish(self) -> Result<pb::AnatomyData, ServiceError> {
        let UploadAssembly {
            header,
            vertices,
            triangles,
            limit: _,
            received: _,
            vertex_count: _,
            triangle_count: _,
        } = self;
        let pb::AnatomyHeader {
            name,
            frame,
            structures,
        } = header
            .ok_or_else(|| InputError::invalid("header", "missing", "the upload sent no header"))?;
        Ok(pb::AnatomyData {
            name,
            frame,
            structures: structures
                .into_iter()
                .zip(vertices.into_iter().zip(triangles))
                .map(|(descriptor, (vertices_mm, triangles))| pb::Structure {
                    descriptor: Some(descriptor),
                    mesh: Some(pb::Mesh {
                        vertices_mm,
                        triangles,
                    }),
                })
                .collect(),
        })
    }
}

/// What a failed read of chunk `index` means.
fn stream_error(status: &Status, index: usize) -> ServiceError {
    match status.code() {
        tonic::Code::Cancelled => ServiceError::Cancelled,
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => {
            ServiceError::ResourceExhausted {
                what: "message size",
                detail: status.message().to_owned(),
            }
        }
        _ => ServiceError::Input(InputError::invalid(
            format!("chunk[{index}]"),
            "undecodable",
            status.message(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(structures: usize) -> pb::UploadAnatomyChunk {
        let descriptor = convert::descriptor_to_pb(
            "L3.stl",
            &kyphoplan_planner::Role::Vertebra {
                level: kyphoplan_planner::anatomy::Level::L3,
            },
        );
        pb::UploadAnatomyChunk {
            chunk: Some(pb::upload_anatomy_chunk::Chunk::Header(pb::AnatomyHeader {
                name: "test".into(),
                frame: pb::Frame::Lps as i32,
                structures: vec![descriptor; structures],
            })),
        }
    }

    fn mesh(structure_index: u32, vertices: usize, triangles: usize) -> pb::UploadAnatomyChunk {
        pb::UploadAnatomyChunk {
            chunk: Some(pb::upload_anatomy_chunk::Chunk::Mesh(pb::MeshChunk {
                structure_index,
                vertices_mm: vec![1.0; 3 * vertices],
                triangles: vec![0; 3 * triangles],
            })),
        }
    }

    fn field(e: ServiceError) -> String {
        match e {
            ServiceError::Input(e) => e.field().to_owned(),
            other => panic!("not an input error: {other}"),
        }
    }

    #[test]
    fn chunks_of_a_structure_are_concatenated_in_order() {
        let mut assembly = UploadAssembly::new(SizeLimit { max_triangles: 100 });
        assembly.push(Ok(header(2))).unwrap();
        assembly.push(Ok(mesh(1, 2, 0))).unwrap();
        assembly.push(Ok(mesh(0, 1, 1))).unwrap();
        assembly.push(Ok(mesh(1, 1, 2))).unwrap();
        let data = assembly.finish().unwrap();
        let counts: Vec<(usize, usize)> = data
            .structures
            .iter()
            .map(|s| {
                let m = s.mesh.as_ref().unwrap();
                (m.vertices_mm.len() / 3, m.triangles.len() / 3)
            })
            .collect();
        assert_eq!(counts, vec![(1, 1), (3, 2)]);
    }

    #[test]
    fn errors_name_the_chunk_by_its_index() {
        let mut assembly = UploadAssembly::new(SizeLimit { max_triangles: 100 });
        assert_eq!(
            field(assembly.push(Ok(mesh(0, 1, 1))).unwrap_err()),
            "chunk[0].mesh"
        );
        assembly.push(Ok(header(1))).unwrap();
        assert_eq!(
            field(assembly.push(Ok(header(1))).unwrap_err()),
            "chunk[1].header"
        );
        assert_eq!(
            field(assembly.push(Ok(mesh(1, 1, 1))).unwrap_err()),
            "chunk[1].mesh.structure_index"
        );
        assert_eq!(
            field(assembly.push(Err(Status::internal("garbage"))).unwrap_err()),
            "chunk[1]"
        );
        assert!(matches!(
            assembly.push(Err(Status::cancelled("gone"))),
            Err(ServiceError::Cancelled)
        ));
        let empty = UploadAssembly::new(SizeLimit { max_triangles: 100 });
        assert_eq!(field(empty.finish().unwrap_err()), "header");
    }

    #[test]
    fn the_size_limit_is_checked_after_every_chunk() {
        let mut assembly = UploadAssembly::new(SizeLimit { max_triangles: 4 });
        assembly.push(Ok(header(1))).unwrap();
        assembly.push(Ok(mesh(0, 12, 4))).unwrap();
        match assembly.push(Ok(mesh(0, 0, 1))) {
            Err(ServiceError::ResourceExhausted { what, detail }) => {
                assert_eq!(what, "anatomy triangles");
                assert_eq!(detail, "5 triangles is over the server's limit of 4");
            }
            other => panic!("{other:?}"),
        }
        let mut assembly = UploadAssembly::new(SizeLimit { max_triangles: 4 });
        assembly.push(Ok(header(1))).unwrap();
        assert!(matches!(
            assembly.push(Ok(mesh(0, 13, 0))),
            Err(ServiceError::ResourceExhausted {
                what: "anatomy vertices",
                ..
            })
        ));
    }
}
