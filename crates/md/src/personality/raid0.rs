//! Placeholder while the personality is being written (replaced in this session).
use super::{Geometry, GeometryError, Location, MemberRead, Personality};

/// Not yet written.
#[derive(Debug)]
pub struct Raid0(Geometry);

impl Raid0 {
    /// Not yet written.
    pub fn new(_g: Geometry) -> Result<Self, GeometryError> {
        Err(GeometryError("not yet written".into()))
    }
}

impl Personality for Raid0 {
    fn geometry(&self) -> &Geometry { &self.0 }
    fn array_bytes(&self) -> u64 { unreachable!() }
    fn readable_with(&self, _p: &[bool]) -> bool { unreachable!() }
    fn read(&self, _m: &dyn MemberRead, _o: u64, _b: &mut [u8]) -> std::io::Result<()> { unreachable!() }
    fn locate(&self, _o: u64) -> Vec<Location> { unreachable!() }
    fn io_hint(&self) -> u64 { unreachable!() }
}
