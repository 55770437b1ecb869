//! (a) A virtual device's MMIO, as a trapped guest access reaches it.
//!
//! `hyp` decodes a stage-2 data abort into an offset within the device's window, an access
//! width, a value (for a store) and the vCPU that made it, and calls [`MmioDevice`]. Each error
//! names one architected outcome ([`MmioError::outcome`]): an external abort injected into the
//! guest, or read-as-zero/write-ignored (the access completes, a load gets zero). Neither is
//! ever fatal to the hypervisor.

use core::fmt;

/// The width of a trapped access.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum AccessWidth {
    /// A byte.
    Bits8,
    /// A halfword.
    Bits16,
    /// A word.
    Bits32,
    /// A doubleword.
    Bits64,
}

impl AccessWidth {
    /// The width for an access of 2^`size_log2` bytes (ESR_EL2.SAS), if there is one.
    #[must_use]
    pub const fn from_size_log2(size_log2: u8) -> Option<Self> {
        match size_log2 {
            0 => Some(Self::Bits8),
            1 => Some(Self::Bits16),
            2 => Some(Self::Bits32),
            3 => Some(Self::Bits64),
            _ => None,
        }
    }

    /// The access size in bytes.
    #[must_use]
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Bits8 => 1,
            Self::Bits16 => 2,
            Self::Bits32 => 4,
            Self::Bits64 => 8,
        }
    }

    /// The bits a value of this width holds.
    #[must_use]
    pub const fn mask(self) -> u64 {
        match self {
            Self::Bits64 => u64::MAX,
            _ => (1 << (self.bytes() * 8)) - 1,
        }
    }
}

/// The vCPU that made an access, as `hyp` numbers a VM's vCPUs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VcpuId(pub u16);

impl fmt::Debug for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VcpuId({})", self.0)
    }
}

/// A byte offset into a virtual device's MMIO window.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MmioOffset(pub u64);

impl fmt::Debug for MmioOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MmioOffset({:#x})", self.0)
    }
}

/// What the guest observes for a refused access.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum MmioOutcome {
    /// A synchronous external abort is injected; the access has no effect.
    ExternalAbort,
    /// The access completes: a load returns zero, a store is dropped.
    ReadAsZeroWriteIgnored,
}

/// Why an access did not reach a register as asked.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum MmioError {
    /// The offset is beyond the device's window.
    OutsideWindow(MmioOffset),
    /// The width is one the architecture does not support there (an "illegal register
    /// access", CONSTRAINED UNPREDICTABLE; this device aborts it).
    UnsupportedWidth(AccessWidth),
    /// The access does not start on a boundary of its own size (also an illegal register
    /// access, aborted).
    Unaligned(MmioOffset),
    /// No register is defined there: RES0 (read as zero, writes ignored).
    Reserved(MmioOffset),
    /// A store to a read-only register, or to one Guarded by an enable that is set: ignored.
    WriteIgnored(MmioOffset),
}

impl MmioError {
    /// The architected outcome of this refusal.
    #[must_use]
    pub const fn outcome(self) -> MmioOutcome {
        match self {
            Self::OutsideWindow(_) | Self::UnsupportedWidth(_) | Self::Unaligned(_) => {
                MmioOutcome::ExternalAbort
            }
            Self::Reserved(_) | Self::WriteIgnored(_) => MmioOutcome::ReadAsZeroWriteIgnored,
        }
    }
}

/// A device whose registers a guest accesses through stage-2 faults.
///
/// `&mut self`: `hyp` holds the device behind one lock per VM and calls it from whichever vCPU
/// trapped; `vcpu` says which, for the device's records (the architecture gives no register a
/// per-vCPU view).
pub trait MmioDevice {
    /// A load of `width` at `offset`. The value is in the low bits.
    ///
    /// # Errors
    ///
    /// An [`MmioError`] whose [`outcome`](MmioError::outcome) the caller applies.
    fn mmio_read(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        vcpu: VcpuId,
    ) -> Result<u64, MmioError>;

    /// A store of the low `width` bits of `value` at `offset`.
    ///
    /// # Errors
    ///
    /// An [`MmioError`] whose [`outcome`](MmioError::outcome) the caller applies.
    fn mmio_write(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        value: u64,
        vcpu: VcpuId,
    ) -> Result<(), MmioError>;
}
