//! GF(2^8) placeholder
