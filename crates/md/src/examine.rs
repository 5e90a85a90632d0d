//! Examine.
