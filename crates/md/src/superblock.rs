//! Superblock.
