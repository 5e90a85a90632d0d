//! io_uring engine (being written).
use std::collections::VecDeque;
use std::io;

use crate::engine::{Completion, Op, Shared};

pub(crate) struct UringQueue {}

impl UringQueue {
    pub(crate) fn new(_shared: &Shared, _depth: usize) -> io::Result<Self> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
    pub(crate) fn in_flight(&self) -> usize {
        0
    }
    pub(crate) fn submit(
        &mut self,
        _shared: &Shared,
        _pending: &mut VecDeque<Op>,
        _done: &mut VecDeque<Completion>,
    ) -> io::Result<()> {
        Ok(())
    }
    pub(crate) fn wait(
        &mut self,
        _shared: &Shared,
        _min: usize,
        _pending: &mut VecDeque<Op>,
        _done: &mut VecDeque<Completion>,
    ) -> io::Result<()> {
        Ok(())
    }
    pub(crate) fn flush(&mut self, _shared: &Shared, _member: usize, _done: &mut VecDeque<Completion>) -> Result<(), i32> {
        Err(libc::ENOSYS)
    }
    pub(crate) fn drain(&mut self, _shared: &Shared) {}
}
