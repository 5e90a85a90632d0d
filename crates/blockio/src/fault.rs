//! Fault injection (interface; the injector is being written).

use std::fs::File;

use crate::dio::OpKind;

/// A member's fault injector.
#[derive(Debug, Default)]
pub struct Faults {}

impl Faults {
    /// Called by every engine before an op is issued.
    pub fn on_io(&self, _kind: OpKind, _file: &File, _offset: u64, _len: usize) -> Result<(), i32> {
        Ok(())
    }
    /// Called before a flush.
    pub fn on_flush(&self) -> Result<(), i32> {
        Ok(())
    }
    /// Called after a flush succeeded.
    pub fn flushed(&self) {}
}
