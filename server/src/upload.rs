//! Anatomies as they arrive: an `UploadAnatomy` stream being assembled ([`UploadAssembly`]),
//! and the size limit an uploaded or inline anatomy must keep ([`SizeLimit`]).

use kyphoplan_planner::error::InputError;
use kyphoplan_planner::labelmap;
use kyphoplan_proto::{convert, pb};
use tonic::Status;

use crate::error::ServiceError;

/// `--max-triangles`: most triangles of one anatomy, all meshes together, and three times as
/// many vertices; `--max-label-voxels`: most voxels of a label map (and
/// [`labelmap::max_file_bytes`] of them for its file).
#[derive(Clone, Copy, Debug)]
pub struct SizeLimit {
    pub max_triangles: u64,
    pub max_label_voxels: u64,
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

    /// RESOURCE_EXHAUSTED (`label volume bytes`) when a label map's file is longer than a map
    /// of the voxel limit can be.
    pub fn check_label_bytes(&self, file: &str, bytes: u64) -> Result<(), ServiceError> {
        let max =
            labelmap::max_file_bytes(usize::try_from(self.max_label_voxels).unwrap_or(usize::MAX));
        if bytes > max {
            return Err(ServiceError::ResourceExhausted {
                what: "label volume bytes",
                detail: format!(
                    "{file}: {bytes} bytes is more than a label map of the server's limit of {} voxels takes ({max} bytes)",
                    self.max_label_voxels
                ),
            });
        }
        Ok(())
    }

    /// RESOURCE_EXHAUSTED (`label volume voxels`) when a label map's header announces more
    /// voxels than the limit.
    pub fn check_label_dims(&self, file: &str, dims: [usize; 3]) -> Result<(), ServiceError> {
        let max = usize::try_from(self.max_label_voxels).unwrap_or(usize::MAX);
        labelmap::check_voxels(file, dims, max)
            .map(|_| ())
            .map_err(|e| ServiceError::ResourceExhausted {
                what: "label volume voxels",
                detail: format!("{}: {}: {}", e.file, e.field, e.message),
            })
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
        self.check(triangles, vertices)?;
        if let Some(lm) = &data.labelmap {
            let file = lm
                .header
                .as_ref()
                .map_or("label map", |h| h.file_name.as_str());
            self.check_label_bytes(file, lm.nifti.len() as u64)?;
        }
        Ok(())
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
    /// The label map's file so far (the concatenation of its chunks).
    nifti: Vec<u8>,
    /// Its header's dimensions, once they have arrived (and were within the limit).
    label_dims: Option<[usize; 3]>,
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
            nifti: Vec::new(),
            label_dims: None,
        }
    }

    /// Take the next item of the stream. A stream error is CANCELLED when the client cancelled,
    /// RESOURCE_EXHAUSTED (`message size`) for a chunk over the message limit, and otherwise
    /// INVALID_ARGUMENT (`chunk[i]`, undecodable). A chunk is refused (INVALID_ARGUMENT) when it
    /// is empty, a second header, a mesh before the header or of a structure the header does not
    /// have, a label volume chunk without a header's `labelmap`, or when the header names no
    /// anatomy or has a bad frame, descriptor or label map header; and RESOURCE_EXHAUSTED once
    /// the anatomy so far is over the size limit (triangles, vertices; a label map's bytes, or
    /// its voxels as soon as its NIfTI header has arrived).
    pub fn push(
        &mut self,
        received: Result<pb::UploadAnatomyChunk, Status>,
    ) -> Result<(), ServiceError> {
        let index = self.received;
        let chunk = received.map_err(|s| stream_error(&s, index))?;
        self.add(chunk, index)?;
        self.limit.check(self.triangle_count, self.vertex_count)?;
        if let Some(lm) = self.header.as_ref().and_then(|h| h.labelmap.as_ref()) {
            let file = lm.file_name.as_str();
            self.limit
                .check_label_bytes(file, self.nifti.len() as u64)?;
            if self.label_dims.is_none() {
                let dims = labelmap::header_dims(file, &self.nifti)
                    .map_err(|e| crate::labelmap::label_error(e, "header.labelmap"))?;
                if let Some(dims) = dims {
                    self.limit.check_label_dims(file, dims)?;
                    self.label_dims = Some(dims);
                }
            }
        }
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
                if let Some(lm) = &header.labelmap {
                    crate::labelmap::check_header(lm, "header.labelmap").map_err(|e| match e {
                        ServiceError::Input(e) => e,
                        other => {
                            InputError::invalid("header.labelmap", "refused", other.to_string())
                        }
                    })?;
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
            (Some(pb::upload_anatomy_chunk::Chunk::LabelVolume(_)), None) => {
                Err(InputError::invalid(
                    format!("chunk[{index}].label_volume"),
                    "label volume before header",
                    "send the header (with labelmap) first",
                ))
            }
            (Some(pb::upload_anatomy_chunk::Chunk::LabelVolume(volume)), Some(header)) => {
                if header.labelmap.is_none() {
                    return Err(InputError::invalid(
                        format!("chunk[{index}].label_volume"),
                        "no labelmap in the header",
                        "a label volume needs the header's labelmap (file name, convention)",
                    ));
                }
                let pb::LabelVolumeChunk { data } = volume;
                self.nifti.extend_from_slice(&data);
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
            nifti,
            label_dims: _,
        } = self;
        let pb::AnatomyHeader {
            name,
            frame,
            structures,
            labelmap,
        } = header
            .ok_or_else(|| InputError::invalid("header", "missing", "the upload sent no header"))?;
        if labelmap.is_some() && nifti.is_empty() {
            return Err(InputError::invalid(
                "label_volume",
                "no bytes",
                "the header has a labelmap but no label volume chunk arrived",
            )
            .into());
        }
        Ok(pb::AnatomyData {
            name,
            frame,
            labelmap: labelmap.map(|header| pb::LabelMapData {
                header: Some(header),
                nifti,
            }),
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
                labelmap: None,
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

    fn limit(max_triangles: u64) -> SizeLimit {
        SizeLimit {
            max_triangles,
            max_label_voxels: 1000,
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
        let mut assembly = UploadAssembly::new(limit(100));
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
        let mut assembly = UploadAssembly::new(limit(100));
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
        let empty = UploadAssembly::new(limit(100));
        assert_eq!(field(empty.finish().unwrap_err()), "header");
    }

    #[test]
    fn the_size_limit_is_checked_after_every_chunk() {
        let mut assembly = UploadAssembly::new(limit(4));
        assembly.push(Ok(header(1))).unwrap();
        assembly.push(Ok(mesh(0, 12, 4))).unwrap();
        match assembly.push(Ok(mesh(0, 0, 1))) {
            Err(ServiceError::ResourceExhausted { what, detail }) => {
                assert_eq!(what, "anatomy triangles");
                assert_eq!(detail, "5 triangles is over the server's limit of 4");
            }
            other => panic!("{other:?}"),
        }
        let mut assembly = UploadAssembly::new(limit(4));
        assembly.push(Ok(header(1))).unwrap();
        assert!(matches!(
            assembly.push(Ok(mesh(0, 13, 0))),
            Err(ServiceError::ResourceExhausted {
                what: "anatomy vertices",
                ..
            })
        ));
    }

    fn label_header(file_name: &str) -> pb::UploadAnatomyChunk {
        pb::UploadAnatomyChunk {
            chunk: Some(pb::upload_anatomy_chunk::Chunk::Header(pb::AnatomyHeader {
                name: "labels".into(),
                frame: pb::Frame::Lps as i32,
                structures: Vec::new(),
                labelmap: Some(pb::LabelMapHeader {
                    file_name: file_name.into(),
                    convention: pb::LabelConvention::Verse as i32,
                    labels: Vec::new(),
                }),
            })),
        }
    }

    fn label_bytes(data: &[u8]) -> pb::UploadAnatomyChunk {
        pb::UploadAnatomyChunk {
            chunk: Some(pb::upload_anatomy_chunk::Chunk::LabelVolume(
                pb::LabelVolumeChunk {
                    data: data.to_vec(),
                },
            )),
        }
    }

    /// A NIfTI-1 file of `dims` uint16 voxels, all 0 but the first.
    fn nifti(dims: [usize; 3]) -> Vec<u8> {
        labelmap::encode_nifti_labels(&labelmap::LabelVolume {
            file: "seg.nii".into(),
            dims,
            labels: {
                let mut l = vec![0; dims.iter().product()];
                l[0] = 20;
                l
            },
            voxel_to_lps: labelmap::Affine {
                linear: kyphoplan_planner::math::Matrix3::identity(),
                offset_mm: kyphoplan_planner::math::Vector::zeros(),
            },
            xform: labelmap::XformSource::Sform,
        })
    }

    #[test]
    fn label_volume_chunks_are_concatenated_into_the_anatomy_message() {
        let bytes = nifti([4, 5, 6]);
        let mut assembly = UploadAssembly::new(limit(100));
        assembly.push(Ok(label_header("seg.nii"))).unwrap();
        for part in bytes.chunks(100) {
            assembly.push(Ok(label_bytes(part))).unwrap();
        }
        let data = assembly.finish().unwrap();
        assert!(data.structures.is_empty());
        let lm = data.labelmap.unwrap();
        assert_eq!(lm.nifti, bytes);
        assert_eq!(lm.header.unwrap().file_name, "seg.nii");
    }

    #[test]
    fn a_label_volume_over_the_voxel_limit_is_refused_once_its_header_arrives() {
        // 11 x 10 x 10 = 1100 voxels > the limit of 1000: refused with the chunk that completes
        // the 348-byte header, before the voxels are sent.
        let bytes = nifti([11, 10, 10]);
        let mut assembly = UploadAssembly::new(limit(100));
        assembly.push(Ok(label_header("seg.nii"))).unwrap();
        assembly.push(Ok(label_bytes(&bytes[..300]))).unwrap();
        match assembly.push(Ok(label_bytes(&bytes[300..400]))) {
            Err(ServiceError::ResourceExhausted { what, detail }) => {
                assert_eq!(what, "label volume voxels");
                assert!(detail.contains("seg.nii"), "{detail}");
                assert!(detail.contains("1100 voxels"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        // A file longer than a map of the limit can be: refused by its bytes.
        let mut assembly = UploadAssembly::new(limit(100));
        assembly.push(Ok(label_header("seg.nii"))).unwrap();
        let too_long = vec![0u8; labelmap::max_file_bytes(1000) as usize + 1];
        assert!(matches!(
            assembly.push(Ok(label_bytes(&too_long))),
            Err(ServiceError::ResourceExhausted {
                what: "label volume bytes",
                ..
            })
        ));
    }

    #[test]
    fn label_volume_chunks_need_a_header_with_a_labelmap() {
        let mut assembly = UploadAssembly::new(limit(100));
        assert_eq!(
            field(assembly.push(Ok(label_bytes(b"x"))).unwrap_err()),
            "chunk[0].label_volume"
        );
        assembly.push(Ok(header(1))).unwrap();
        assert_eq!(
            field(assembly.push(Ok(label_bytes(b"x"))).unwrap_err()),
            "chunk[1].label_volume"
        );
        let mut assembly = UploadAssembly::new(limit(100));
        assert_eq!(
            field(assembly.push(Ok(label_header(""))).unwrap_err()),
            "header.labelmap.file_name"
        );
        let mut assembly = UploadAssembly::new(limit(100));
        assembly.push(Ok(label_header("seg.nii"))).unwrap();
        assert_eq!(field(assembly.finish().unwrap_err()), "label_volume");
    }
}
