//! Label maps uploaded as anatomy (issue 14): a stored [`pb::LabelMapData`] read and meshed by
//! the planner's `labelmap` module into structures of their own (after the anatomy's meshes),
//! and what was found ([`pb::LabelMapSummary`], one [`pb::LabelSource`] per meshed structure)
//! for `GetAnatomy`. The meshing is deterministic, so an anatomy prepared again from the store
//! (a cache miss, a restart) has the same meshes as when it was uploaded.

use std::collections::BTreeMap;

use kyphoplan_planner::anatomy::{AnatomyInput, PatientFrame};
use kyphoplan_planner::error::InputError;
use kyphoplan_planner::labelmap::{self, Convention, LabelMapError, LabelMapErrorKind, LabelTable};
use kyphoplan_planner::math::Point;
use kyphoplan_proto::{convert, pb};

use crate::error::ServiceError;
use crate::upload::SizeLimit;

/// An anatomy as the planner takes it, and what its label map (if any) held.
#[derive(Debug)]
pub struct Meshed {
    pub input: AnatomyInput,
    /// The label map's summary and, per structure meshed from it, its index in
    /// `input.structures` and where it came from.
    pub labelmap: Option<(pb::LabelMapSummary, Vec<(usize, pb::LabelSource)>)>,
}

/// A label map's error as the service says it: over the voxel limit RESOURCE_EXHAUSTED
/// (`label volume voxels`), otherwise INVALID_ARGUMENT naming `label_volume.<header field>`
/// (or the table entry) and the file.
pub fn label_error(e: LabelMapError, prefix: &str) -> ServiceError {
    let LabelMapError {
        kind,
        file,
        field,
        message,
    } = e;
    match kind {
        LabelMapErrorKind::TooLarge => ServiceError::ResourceExhausted {
            what: "label volume voxels",
            detail: format!("{file}: {field}: {message}"),
        },
        LabelMapErrorKind::BadTable => {
            // The table's fields are `labelmap.labels.<id>`: under the header's.
            let field = field.strip_prefix("labelmap.").unwrap_or(&field).to_owned();
            InputError::invalid(format!("{prefix}.{field}"), format!("{file:?}"), message).into()
        }
        LabelMapErrorKind::Unreadable
        | LabelMapErrorKind::Header
        | LabelMapErrorKind::NotInteger
        | LabelMapErrorKind::Empty
        | LabelMapErrorKind::DegenerateAffine
        | LabelMapErrorKind::MissingLevel
        | LabelMapErrorKind::NoCompleteVertebra => InputError::invalid(
            format!("label_volume.{field}"),
            format!("{file:?}"),
            message,
        )
        .into(),
    }
}

/// The convention of a header (`field` names it).
pub fn convention_from_pb(value: i32, field: &str) -> Result<Convention, InputError> {
    match pb::LabelConvention::try_from(value) {
        Ok(pb::LabelConvention::Totalsegmentator) => Ok(Convention::TotalSegmentator),
        Ok(pb::LabelConvention::Verse) => Ok(Convention::Verse),
        Ok(pb::LabelConvention::Table) => Ok(Convention::Table),
        Ok(pb::LabelConvention::Unspecified) | Err(_) => Err(InputError::invalid(
            field,
            value,
            "LABEL_CONVENTION_TOTALSEGMENTATOR, _VERSE or _TABLE is required",
        )),
    }
}

pub fn convention_to_pb(convention: Convention) -> pb::LabelConvention {
    match convention {
        Convention::TotalSegmentator => pb::LabelConvention::Totalsegmentator,
        Convention::Verse => pb::LabelConvention::Verse,
        Convention::Table => pb::LabelConvention::Table,
    }
}

/// A label map header checked (`prefix` names it: `header.labelmap` in an upload,
/// `labelmap.header` in an anatomy message): its file name, convention and label table.
pub fn check_header(
    header: &pb::LabelMapHeader,
    prefix: &str,
) -> Result<(String, LabelTable), ServiceError> {
    let pb::LabelMapHeader {
        file_name,
        convention,
        labels,
    } = header;
    if file_name.trim().is_empty() {
        return Err(InputError::invalid(
            format!("{prefix}.file_name"),
            "\"\"",
            "the label map needs a file name (it names the map in messages)",
        )
        .into());
    }
    let convention = convention_from_pb(*convention, &format!("{prefix}.convention"))?;
    let mut entries = BTreeMap::new();
    for (i, o) in labels.iter().enumerate() {
        let pb::LabelOverride { label, meaning } = o;
        let field = format!("{prefix}.labels[{i}].label");
        if !(1..=u32::from(u16::MAX)).contains(label) {
            return Err(InputError::invalid(field, label, "a label id is 1..=65535").into());
        }
        if entries.insert(label.to_string(), meaning.clone()).is_some() {
            return Err(InputError::invalid(field, label, "the label is given twice").into());
        }
    }
    let table = LabelTable::builtin(convention)
        .with_overrides(file_name, &entries)
        .map_err(|e| label_error(e, prefix))?;
    Ok((file_name.clone(), table))
}

/// The planner's anatomy of a stored or inline anatomy message: its meshes, then the label
/// map's structures (meshed here, in the anatomy's frame), within `limit` (voxels, and the
/// triangles of all meshes together).
pub fn anatomy_input(data: pb::AnatomyData, limit: &SizeLimit) -> Result<Meshed, ServiceError> {
    let pb::AnatomyData {
        name,
        frame,
        structures,
        labelmap,
    } = data;
    let mut input = convert::anatomy_from_pb(pb::AnatomyData {
        name,
        frame,
        structures,
        labelmap: None,
    })?;
    let Some(pb::LabelMapData { header, nifti }) = labelmap else {
        return Ok(Meshed {
            input,
            labelmap: None,
        });
    };
    let header = header.ok_or_else(|| {
        InputError::invalid("labelmap.header", "unset", "a label map needs its header")
    })?;
    let (file, table) = check_header(&header, "labelmap.header")?;
    let max_voxels = usize::try_from(limit.max_label_voxels).unwrap_or(usize::MAX);
    let volume = labelmap::parse_nifti_labels_within(&file, &nifti, max_voxels)
        .map_err(|e| label_error(e, "labelmap.header"))?;
    let found = labelmap::anatomy_from_labels(&input.name, &volume, &table, None)
        .map_err(|e| label_error(e, "labelmap.header"))?;
    let labelmap::LabelMapAnatomy {
        anatomy,
        sources,
        refused,
        notices,
    } = found;
    let mut label_sources = Vec::new();
    for mut s in anatomy.structures {
        if input.frame == PatientFrame::Ras {
            // lps_to_ras: x and y negated, a rotation (winding kept), as the SDK's case reader.
            s.mesh = s.mesh.mapped(|p| Point::new(-p.x, -p.y, p.z));
        }
        if let Some(source) = sources.get(&s.name) {
            label_sources.push((input.structures.len(), source_to_pb(source)));
        }
        input.structures.push(s);
    }
    let (triangles, vertices) = input.structures.iter().fold((0u64, 0u64), |(t, v), s| {
        (
            t + s.mesh.triangles.len() as u64,
            v + s.mesh.vertices_mm.len() as u64,
        )
    });
    limit.check(triangles, vertices)?;
    let summary = pb::LabelMapSummary {
        file_name: file,
        convention: convention_to_pb(table.convention) as i32,
        dims: volume.dims.iter().map(|&d| d as u64).collect(),
        spacing_mm: volume.spacing_mm().to_vec(),
        refused: refused
            .iter()
            .map(|r| pb::RefusedVertebra {
                level: convert::level_to_pb(r.level) as i32,
                labels: r.labels.iter().map(|&l| u32::from(l)).collect(),
                faces: r
                    .faces
                    .iter()
                    .map(|f| pb::VolumeFace {
                        axis: ["i", "j", "k"][f.axis].to_owned(),
                        high: f.high,
                        direction: f.direction.to_owned(),
                    })
                    .collect(),
                message: r.message.clone(),
            })
            .collect(),
        notices,
    };
    Ok(Meshed {
        input,
        labelmap: Some((summary, label_sources)),
    })
}

fn source_to_pb(s: &labelmap::LabelSource) -> pb::LabelSource {
    let labelmap::LabelSource {
        labels,
        voxels,
        volume_ml,
        other_pieces_ml,
        cavities_ml,
    } = s;
    pb::LabelSource {
        labels: labels.iter().map(|&l| u32::from(l)).collect(),
        voxel_count: *voxels as u64,
        volume_ml: Some(*volume_ml),
        dropped_pieces_ml: other_pieces_ml.clone(),
        filled_cavities_ml: cavities_ml.clone(),
    }
}

/// Add what the label map held to an anatomy's metadata (made from its meshes alone): a
/// summary per meshed structure, the totals, the label map's summary.
pub fn complete_meta(meta: &mut pb::Anatomy, meshed: &Meshed) {
    let Some((summary, sources)) = &meshed.labelmap else {
        return;
    };
    for (index, source) in sources {
        let s = &meshed.input.structures[*index];
        let summary = pb::StructureSummary {
            descriptor: Some(convert::descriptor_to_pb(&s.name, &s.role)),
            vertex_count: s.mesh.vertices_mm.len() as u64,
            triangle_count: s.mesh.triangles.len() as u64,
            label: Some(source.clone()),
        };
        meta.total_vertex_count += summary.vertex_count;
        meta.total_triangle_count += summary.triangle_count;
        meta.structures.push(summary);
    }
    meta.labelmap = Some(summary.clone());
}
