//! The EL2 runtime.
#![cfg_attr(not(test), no_std)]
