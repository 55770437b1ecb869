//! The explorer of interleavings (below).
