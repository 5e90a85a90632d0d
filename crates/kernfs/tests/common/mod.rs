//! A test attribute that records what kernfs does to it.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kernfs::{AttrOps, Errno, ShowBuf};

#[derive(Default)]
pub struct Val {
    pub value: Mutex<Vec<u8>>,
    pub opens: AtomicUsize,
    pub releases: AtomicUsize,
    pub stores: AtomicUsize,
    pub shows: AtomicUsize,
    pub last_store_len: AtomicUsize,
}

impl Val {
    pub fn new(initial: &str) -> Arc<Val> {
        let v = Val::default();
        *v.value.lock().unwrap() = initial.as_bytes().to_vec();
        Arc::new(v)
    }

    pub fn releases(&self) -> usize {
        self.releases.load(Ordering::SeqCst)
    }

    pub fn opens(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }
}

impl AttrOps for Val {
    fn show(&self, out: &mut ShowBuf) -> Result<(), Errno> {
        self.shows.fetch_add(1, Ordering::SeqCst);
        out.push_bytes(&self.value.lock().unwrap())
    }

    fn store(&self, data: &[u8]) -> Result<usize, Errno> {
        self.stores.fetch_add(1, Ordering::SeqCst);
        self.last_store_len.store(data.len(), Ordering::SeqCst);
        *self.value.lock().unwrap() = data.to_vec();
        Ok(data.len())
    }

    fn seq_show(&self, out: &mut Vec<u8>) -> Result<(), Errno> {
        self.shows.fetch_add(1, Ordering::SeqCst);
        out.extend_from_slice(&self.value.lock().unwrap());
        Ok(())
    }

    fn open(&self) -> Result<(), Errno> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn release(&self) {
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
}
