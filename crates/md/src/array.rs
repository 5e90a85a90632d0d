//! The assembled array.
