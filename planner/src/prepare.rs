//! Preparation: validate the raw anatomy, bring it into LPS, build the clearance engines, the
//! vertebra frames and the keep-outs once, so that planning and evaluation only query.

use crate::anatomy::{AnatomyInput, Level, PatientFrame};
use crate::error::InputError;
use crate::plan::StructureNotice;
use crate::validate::WindingPolicy;

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

/// A validated anatomy in LPS with everything planning needs precomputed.
pub struct PreparedAnatomy {
    _todo: (),
}

impl PreparedAnatomy {
    pub fn prepare(input: AnatomyInput, options: &PrepareOptions) -> Result<Self, InputError> {
        let _ = (input, options);
        todo!()
    }
    pub fn name(&self) -> &str {
        todo!()
    }
    /// The frame of the input, in which plans report coordinates.
    pub fn frame(&self) -> PatientFrame {
        todo!()
    }
    /// Vertebra levels, cranial to caudal.
    pub fn levels(&self) -> Vec<Level> {
        todo!()
    }
    pub fn mesh_fixes(&self) -> &[StructureNotice] {
        todo!()
    }
    /// Bytes held by the prepared anatomy.
    pub fn memory_bytes(&self) -> usize {
        todo!()
    }
}
