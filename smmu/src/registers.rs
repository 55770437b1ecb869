//! Register offsets and the decoding of the ID registers.
