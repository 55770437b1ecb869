//! (b) A VM's RAM, reached by copy and by IPA.
//!
//! The EL2 map leaves guest RAM out by design; the hypervisor reaches it only through an
//! accessor that checks every IPA range against the VM's RAM and copies (a per-CPU fixmap slot
//! or a non-executable alias: `hyp`'s choice). Nothing here keeps a reference into guest
//! memory: what the vSMMU reads is a copy, typed as a guest allegation until validated.
//!
//! Every request `nested` makes is at most [`MAX_COPY_BYTES`] long, so an implementation may
//! map a single page-pair for it; it must still check the whole range and refuse, not fault,
//! on an address outside RAM.

use core::fmt;

use smmu::{Ipa, IpaRange};

/// The longest copy `nested` asks for: one STE, CD or event record.
pub const MAX_COPY_BYTES: usize = 64;

/// Why a copy did not happen. Nothing was copied.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestMemoryError {
    /// Some byte of `[ipa, ipa + len)` is not RAM of this VM (or the range wraps).
    OutsideRam {
        /// The first address asked for.
        ipa: Ipa,
        /// How many bytes.
        len: usize,
    },
}

impl fmt::Debug for GuestMemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutsideRam { ipa, len } => {
                write!(f, "OutsideRam({:#x}+{len:#x})", ipa.0)
            }
        }
    }
}

/// Copy access to one VM's RAM.
///
/// Implementations copy naturally aligned 64-bit words with single-copy-atomic accesses where
/// the range allows it, as the SMMU reads structures, so a guest updating a descriptor word by
/// word on another vCPU is seen either before or after each word's store, never torn within
/// one.
pub trait GuestMemory {
    /// Whether every byte of `range` is RAM of this VM. A wrapping range never is.
    fn is_ram(&self, range: IpaRange) -> bool;

    /// Whether any byte of `range` is RAM of this VM.
    fn overlaps_ram(&self, range: IpaRange) -> bool;

    /// Copies `buffer.len()` bytes from `ipa` into `buffer`.
    ///
    /// # Errors
    ///
    /// [`GuestMemoryError::OutsideRam`] if any byte is not RAM; `buffer` is then unchanged.
    fn read(&self, ipa: Ipa, buffer: &mut [u8]) -> Result<(), GuestMemoryError>;

    /// Copies `data` to `ipa`.
    ///
    /// # Errors
    ///
    /// [`GuestMemoryError::OutsideRam`] if any byte is not RAM; nothing is written then.
    fn write(&mut self, ipa: Ipa, data: &[u8]) -> Result<(), GuestMemoryError>;
}

/// Reads `N` little-endian 64-bit words from `ipa` (at most [`MAX_COPY_BYTES`] bytes).
pub(crate) fn read_words<const N: usize>(
    memory: &impl GuestMemory,
    ipa: Ipa,
) -> Result<[u64; N], GuestMemoryError> {
    let mut bytes = [0u8; MAX_COPY_BYTES];
    let len = N.saturating_mul(8);
    let Some(buffer) = bytes.get_mut(..len) else {
        return Err(GuestMemoryError::OutsideRam { ipa, len });
    };
    memory.read(ipa, buffer)?;
    let mut words = [0u64; N];
    for (word, chunk) in words.iter_mut().zip(buffer.chunks_exact(8)) {
        let mut le = [0u8; 8];
        le.copy_from_slice(chunk);
        *word = u64::from_le_bytes(le);
    }
    Ok(words)
}

/// Writes `words` little-endian to `ipa` (at most [`MAX_COPY_BYTES`] bytes).
pub(crate) fn write_words<const N: usize>(
    memory: &mut impl GuestMemory,
    ipa: Ipa,
    words: &[u64; N],
) -> Result<(), GuestMemoryError> {
    let mut bytes = [0u8; MAX_COPY_BYTES];
    let len = N.saturating_mul(8);
    let Some(buffer) = bytes.get_mut(..len) else {
        return Err(GuestMemoryError::OutsideRam { ipa, len });
    };
    for (chunk, word) in buffer.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    memory.write(ipa, buffer)
}
