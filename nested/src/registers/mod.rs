//! Where a guest's MMIO access lands: the vSMMU's register file, page 0 and page 1.
//!
//! This module owns the register state and each register's architected rules: which accesses
//! are legal (32-bit to 32-bit registers and to either half of 64-bit ones, 64-bit to 64-bit
//! ones; a 64-bit access to two adjacent 32-bit registers acts as two 32-bit accesses; any
//! other width, or an unaligned access, is aborted), which bits are defined (the rest read as
//! zero), which registers are Guarded by an enable (a write while it is set, or while its
//! acknowledgement still shows it set, is ignored: the v3.2 behaviour, permitted in v3.1),
//! and how each update is acknowledged:
//!
//! - CR0ACK follows CR0 at once, except SMMUEN, whose acknowledgement waits until every owned
//!   stream's STE has been re-shadowed for the new state (a guest polling CR0ACK continues that
//!   work with each read);
//! - GBPA is written only together with UPDATE = 1 (otherwise ignored) and UPDATE reads 1 until
//!   the streams' STEs follow the new ABORT; a guest "bypass" is stage 2 alone, never a bypass
//!   of the hypervisor's stage 2;
//! - IRQ_CTRLACK follows IRQ_CTRL at once;
//! - GERRORN acknowledges errors by toggling; acknowledging CMDQ_ERR restarts the command queue.
//!
//! Undefined offsets of page 0 are RES0; page 1 has only EVENTQ_PROD/CONS and, with PRI
//! advertised, PRIQ_PROD/CONS, and the optional page-0 aliases of those are implemented. Without
//! PRI every PRI queue register (and CR0.PRIQEN, IRQ_CTRL.PRIQ_IRQEN, GERROR's PRI bits) is
//! RES0. The reactions to a write (the command queue, re-shadowing) are in
//! [`crate::command_queue`] and [`crate::shadow`]; the values advertised are in [`id`].

pub mod id;

use smmu::Ipa;
use smmu::driver::DmaMemory;
use smmu::queue::{OVERFLOW_FLAG, QueueKind, QueuePointer, QueueSize};
use smmu::registers::{Cr0, Gbpa, IrqCtrl, MAX_QUEUE_LOG2SIZE};

use crate::VirtualSmmu;
use crate::config::REGISTER_WINDOW_SIZE;
use crate::counters::bump;
use crate::interfaces::guest_memory::GuestMemory;
use crate::interfaces::interrupts::{InterruptSink, VirtualInterrupt};
use crate::interfaces::mmio::{AccessWidth, MmioError, MmioOffset};
use crate::interfaces::physical::PhysicalSmmu;

/// A register of the vSMMU, as trapped accesses are counted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[allow(missing_docs)] // The architecture's register names, without the SMMU_ prefix.
pub enum VirtualRegister {
    Idr0,
    Idr1,
    Idr2,
    Idr3,
    Idr4,
    Idr5,
    Iidr,
    Aidr,
    Cr0,
    Cr0Ack,
    Cr1,
    Cr2,
    Statusr,
    Gbpa,
    IrqCtrl,
    IrqCtrlAck,
    Gerror,
    Gerrorn,
    GerrorIrqCfg0,
    GerrorIrqCfg1,
    GerrorIrqCfg2,
    StrtabBase,
    StrtabBaseCfg,
    CmdqBase,
    CmdqProd,
    CmdqCons,
    EvtqBase,
    EvtqProd,
    EvtqCons,
    EvtqIrqCfg0,
    EvtqIrqCfg1,
    EvtqIrqCfg2,
    PriqBase,
    PriqProd,
    PriqCons,
    PriqIrqCfg0,
    PriqIrqCfg1,
    PriqIrqCfg2,
    /// Any offset without a register (RES0).
    Reserved,
}

impl VirtualRegister {
    /// How many there are, for counters.
    pub const COUNT: usize = 39;

    /// Every register, in index order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Idr0,
        Self::Idr1,
        Self::Idr2,
        Self::Idr3,
        Self::Idr4,
        Self::Idr5,
        Self::Iidr,
        Self::Aidr,
        Self::Cr0,
        Self::Cr0Ack,
        Self::Cr1,
        Self::Cr2,
        Self::Statusr,
        Self::Gbpa,
        Self::IrqCtrl,
        Self::IrqCtrlAck,
        Self::Gerror,
        Self::Gerrorn,
        Self::GerrorIrqCfg0,
        Self::GerrorIrqCfg1,
        Self::GerrorIrqCfg2,
        Self::StrtabBase,
        Self::StrtabBaseCfg,
        Self::CmdqBase,
        Self::CmdqProd,
        Self::CmdqCons,
        Self::EvtqBase,
        Self::EvtqProd,
        Self::EvtqCons,
        Self::EvtqIrqCfg0,
        Self::EvtqIrqCfg1,
        Self::EvtqIrqCfg2,
        Self::PriqBase,
        Self::PriqProd,
        Self::PriqCons,
        Self::PriqIrqCfg0,
        Self::PriqIrqCfg1,
        Self::PriqIrqCfg2,
        Self::Reserved,
    ];

    /// The architecture's name (without the `SMMU_` prefix), for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Idr0 => "IDR0",
            Self::Idr1 => "IDR1",
            Self::Idr2 => "IDR2",
            Self::Idr3 => "IDR3",
            Self::Idr4 => "IDR4",
            Self::Idr5 => "IDR5",
            Self::Iidr => "IIDR",
            Self::Aidr => "AIDR",
            Self::Cr0 => "CR0",
            Self::Cr0Ack => "CR0ACK",
            Self::Cr1 => "CR1",
            Self::Cr2 => "CR2",
            Self::Statusr => "STATUSR",
            Self::Gbpa => "GBPA",
            Self::IrqCtrl => "IRQ_CTRL",
            Self::IrqCtrlAck => "IRQ_CTRLACK",
            Self::Gerror => "GERROR",
            Self::Gerrorn => "GERRORN",
            Self::GerrorIrqCfg0 => "GERROR_IRQ_CFG0",
            Self::GerrorIrqCfg1 => "GERROR_IRQ_CFG1",
            Self::GerrorIrqCfg2 => "GERROR_IRQ_CFG2",
            Self::StrtabBase => "STRTAB_BASE",
            Self::StrtabBaseCfg => "STRTAB_BASE_CFG",
            Self::CmdqBase => "CMDQ_BASE",
            Self::CmdqProd => "CMDQ_PROD",
            Self::CmdqCons => "CMDQ_CONS",
            Self::EvtqBase => "EVENTQ_BASE",
            Self::EvtqProd => "EVENTQ_PROD",
            Self::EvtqCons => "EVENTQ_CONS",
            Self::EvtqIrqCfg0 => "EVENTQ_IRQ_CFG0",
            Self::EvtqIrqCfg1 => "EVENTQ_IRQ_CFG1",
            Self::EvtqIrqCfg2 => "EVENTQ_IRQ_CFG2",
            Self::PriqBase => "PRIQ_BASE",
            Self::PriqProd => "PRIQ_PROD",
            Self::PriqCons => "PRIQ_CONS",
            Self::PriqIrqCfg0 => "PRIQ_IRQ_CFG0",
            Self::PriqIrqCfg1 => "PRIQ_IRQ_CFG1",
            Self::PriqIrqCfg2 => "PRIQ_IRQ_CFG2",
            Self::Reserved => "reserved",
        }
    }

    /// A dense index for counters.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether the register is 64 bits wide.
    #[must_use]
    pub const fn is_64bit(self) -> bool {
        matches!(
            self,
            Self::GerrorIrqCfg0
                | Self::StrtabBase
                | Self::CmdqBase
                | Self::EvtqBase
                | Self::EvtqIrqCfg0
                | Self::PriqBase
                | Self::PriqIrqCfg0
        )
    }

    /// Whether the register exists only with PRI advertised.
    #[must_use]
    pub const fn is_pri(self) -> bool {
        matches!(
            self,
            Self::PriqBase
                | Self::PriqProd
                | Self::PriqCons
                | Self::PriqIrqCfg0
                | Self::PriqIrqCfg1
                | Self::PriqIrqCfg2
        )
    }

    /// The register at byte `offset` of the window, and whether `offset` is the upper half of
    /// a 64-bit register. `offset` is 4-byte aligned.
    #[must_use]
    pub const fn at(offset: u64) -> (Self, bool) {
        let page1 = offset >= 0x1_0000;
        let within = offset & 0xffff;
        if page1 {
            return match within {
                0xA8 => (Self::EvtqProd, false),
                0xAC => (Self::EvtqCons, false),
                0xC8 => (Self::PriqProd, false),
                0xCC => (Self::PriqCons, false),
                _ => (Self::Reserved, false),
            };
        }
        let (register, high) = match within & !7 {
            0x68 => (Self::GerrorIrqCfg0, true),
            0x80 => (Self::StrtabBase, true),
            0x90 => (Self::CmdqBase, true),
            0xA0 => (Self::EvtqBase, true),
            0xB0 => (Self::EvtqIrqCfg0, true),
            0xC0 => (Self::PriqBase, true),
            0xD0 => (Self::PriqIrqCfg0, true),
            _ => (Self::Reserved, false),
        };
        if high {
            return (register, within & 4 != 0);
        }
        let register = match within {
            0x00 => Self::Idr0,
            0x04 => Self::Idr1,
            0x08 => Self::Idr2,
            0x0C => Self::Idr3,
            0x10 => Self::Idr4,
            0x14 => Self::Idr5,
            0x18 => Self::Iidr,
            0x1C => Self::Aidr,
            0x20 => Self::Cr0,
            0x24 => Self::Cr0Ack,
            0x28 => Self::Cr1,
            0x2C => Self::Cr2,
            0x40 => Self::Statusr,
            0x44 => Self::Gbpa,
            0x50 => Self::IrqCtrl,
            0x54 => Self::IrqCtrlAck,
            0x60 => Self::Gerror,
            0x64 => Self::Gerrorn,
            0x70 => Self::GerrorIrqCfg1,
            0x74 => Self::GerrorIrqCfg2,
            0x88 => Self::StrtabBaseCfg,
            0x98 => Self::CmdqProd,
            0x9C => Self::CmdqCons,
            // The optional page-0 aliases of the page-1 event queue pointers.
            0xA8 => Self::EvtqProd,
            0xAC => Self::EvtqCons,
            0xB8 => Self::EvtqIrqCfg1,
            0xBC => Self::EvtqIrqCfg2,
            // The optional page-0 aliases of the page-1 PRI queue pointers.
            0xC8 => Self::PriqProd,
            0xCC => Self::PriqCons,
            0xD8 => Self::PriqIrqCfg1,
            0xDC => Self::PriqIrqCfg2,
            _ => Self::Reserved,
        };
        (register, false)
    }
}

/// GERROR bits this vSMMU can raise: CMDQ_ERR, EVTQ_ABT_ERR, MSI_CMDQ_ABT_ERR,
/// MSI_EVTQ_ABT_ERR, MSI_GERROR_ABT_ERR; with PRI also [`GERROR_PRI`]. (No service failure
/// mode.)
pub(crate) const GERROR_DEFINED: u32 = 1 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 7;
/// GERROR.PRIQ_ABT_ERR.
pub(crate) const PRIQ_ABT_ERR: u32 = 1 << 3;
/// GERROR.MSI_PRIQ_ABT_ERR.
pub(crate) const MSI_PRIQ_ABT_ERR: u32 = 1 << 6;
/// The GERROR bits PRI adds.
pub(crate) const GERROR_PRI: u32 = PRIQ_ABT_ERR | MSI_PRIQ_ABT_ERR;
/// GERROR.CMDQ_ERR.
pub(crate) const CMDQ_ERR: u32 = 1;
/// GERROR.EVTQ_ABT_ERR.
pub(crate) const EVTQ_ABT_ERR: u32 = 1 << 2;
/// GERROR.MSI_CMDQ_ABT_ERR.
pub(crate) const MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
/// GERROR.MSI_EVTQ_ABT_ERR.
pub(crate) const MSI_EVTQ_ABT_ERR: u32 = 1 << 5;
/// GERROR.MSI_GERROR_ABT_ERR.
pub(crate) const MSI_GERROR_ABT_ERR: u32 = 1 << 7;

/// GBPA's defined fields without UPDATE: MemAttr, MTCFG, ALLOCCFG, SHCFG, NSCFG, PRIVCFG,
/// INSTCFG, ABORT.
const GBPA_FIELDS: u32 =
    0xf | 1 << 4 | 0xf << 8 | 0x3 << 12 | 0x3 << 14 | 0x3 << 16 | 0x3 << 18 | 1 << 20;
/// GBPA.UPDATE.
const GBPA_UPDATE: u32 = 1 << 31;
/// CR1's fields (queue and table cacheability and shareability).
const CR1_FIELDS: u32 = 0xfff;
/// CR2's fields here: RECINVSID and PTM (E2H is RES0 without HYP).
const CR2_FIELDS: u32 = 0b110;
/// A queue pointer's defined bits: WR/RD and the wrap bit (19:0).
const QUEUE_POINTER_BITS: u32 = 0xf_ffff;
/// The allocation hint (RA or WA) of a base register.
const ALLOCATE_HINT: u64 = 1 << 62;
/// An IRQ_CFG2: MemAttr and SH.
const IRQ_CFG2_FIELDS: u32 = 0x3f;
/// PRIQ_IRQ_CFG2: MemAttr, SH and LO (signal only for Last entries).
const PRIQ_IRQ_CFG2_FIELDS: u32 = IRQ_CFG2_FIELDS | 1 << 31;

/// The register state. Reset values: everything disabled and zero, GBPA as configured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct RegisterFile {
    pub(crate) cr0: Cr0,
    /// CR0ACK.SMMUEN: lags CR0.SMMUEN until the STEs follow.
    pub(crate) smmuen_ack: bool,
    pub(crate) cr1: u32,
    pub(crate) cr2: u32,
    pub(crate) gbpa: Gbpa,
    /// GBPA.UPDATE: set by a write, cleared when the STEs follow.
    pub(crate) gbpa_updating: bool,
    pub(crate) irq_ctrl: IrqCtrl,
    pub(crate) gerror: u32,
    pub(crate) gerrorn: u32,
    pub(crate) gerror_irq_cfg0: u64,
    pub(crate) gerror_irq_cfg1: u32,
    pub(crate) gerror_irq_cfg2: u32,
    pub(crate) strtab_base: u64,
    pub(crate) strtab_base_cfg: u32,
    pub(crate) cmdq_base: u64,
    pub(crate) cmdq_prod: u32,
    pub(crate) cmdq_cons: u32,
    pub(crate) evtq_base: u64,
    pub(crate) evtq_prod: u32,
    pub(crate) evtq_cons: u32,
    pub(crate) evtq_irq_cfg0: u64,
    pub(crate) evtq_irq_cfg1: u32,
    pub(crate) evtq_irq_cfg2: u32,
    pub(crate) priq_base: u64,
    pub(crate) priq_prod: u32,
    pub(crate) priq_cons: u32,
    pub(crate) priq_irq_cfg0: u64,
    pub(crate) priq_irq_cfg1: u32,
    pub(crate) priq_irq_cfg2: u32,
    /// GERROR bits defined on this vSMMU (with or without PRI).
    pub(crate) gerror_defined: u32,
}

/// A queue's place in guest memory and its size, from its BASE register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct QueueGeometry {
    pub(crate) base: Ipa,
    pub(crate) size: QueueSize,
    pub(crate) entry_bytes: u64,
}

impl QueueGeometry {
    /// The geometry a BASE register value gives, with the size capped at `max_log2` (a larger
    /// LOG2SIZE behaves as the advertised maximum) and the base aligned down to the queue's
    /// size (the address bits below it are ignored).
    pub(crate) fn from_base(base: u64, max_log2: u8, entry_bytes: u64) -> Self {
        let log2 = u8::try_from(base & 0x1f)
            .unwrap_or(0)
            .min(max_log2)
            .min(MAX_QUEUE_LOG2SIZE);
        let size = match QueueSize::new(log2) {
            Ok(size) => size,
            Err(_) => unreachable!("log2 is capped at the architectural maximum just above"),
        };
        let bytes = (entry_bytes << log2).max(32);
        let address = base & 0x000f_ffff_ffff_ffe0 & !(bytes - 1);
        Self {
            base: Ipa(address),
            size,
            entry_bytes,
        }
    }

    /// The pointer a PROD or CONS register value holds (bits beyond the queue's are ignored).
    pub(crate) fn pointer(&self, raw: u32, kind: QueueKind) -> QueuePointer {
        let bits = (2u32 << self.size.log2()) - 1;
        let overflow = match kind {
            QueueKind::Command => 0,
            _ => raw & OVERFLOW_FLAG,
        };
        QueuePointer::from_raw(self.size, raw & bits | overflow, kind)
            .unwrap_or(QueuePointer::zero(self.size))
    }

    /// The IPA of entry `index`.
    pub(crate) fn entry(&self, index: u32) -> Option<Ipa> {
        self.base
            .checked_add(u64::from(index).checked_mul(self.entry_bytes)?)
    }
}

impl RegisterFile {
    pub(crate) fn reset(abort: bool, pri: bool) -> Self {
        Self {
            cr0: Cr0::default(),
            smmuen_ack: false,
            cr1: 0,
            cr2: 0,
            gbpa: Gbpa::default().with_abort(abort),
            gbpa_updating: false,
            irq_ctrl: IrqCtrl::default(),
            gerror: 0,
            gerrorn: 0,
            gerror_irq_cfg0: 0,
            gerror_irq_cfg1: 0,
            gerror_irq_cfg2: 0,
            strtab_base: 0,
            strtab_base_cfg: 0,
            cmdq_base: 0,
            cmdq_prod: 0,
            cmdq_cons: 0,
            evtq_base: 0,
            evtq_prod: 0,
            evtq_cons: 0,
            evtq_irq_cfg0: 0,
            evtq_irq_cfg1: 0,
            evtq_irq_cfg2: 0,
            priq_base: 0,
            priq_prod: 0,
            priq_cons: 0,
            priq_irq_cfg0: 0,
            priq_irq_cfg1: 0,
            priq_irq_cfg2: 0,
            gerror_defined: GERROR_DEFINED | if pri { GERROR_PRI } else { 0 },
        }
    }

    /// Completes the acknowledgements that wait for the STEs (called when none is dirty).
    pub(crate) fn settle_updates(&mut self) {
        self.smmuen_ack = self.cr0.smmuen();
        self.gbpa_updating = false;
    }

    /// CR0ACK.
    pub(crate) fn cr0ack(&self) -> u32 {
        self.cr0.with_smmuen(self.smmuen_ack).0
    }

    /// Whether SMMUEN is (or is becoming) 1: the STEs follow the guest's stream table.
    pub(crate) fn smmu_enabled(&self) -> bool {
        self.cr0.smmuen()
    }

    /// The errors active now.
    pub(crate) fn active_errors(&self) -> u32 {
        (self.gerror ^ self.gerrorn) & self.gerror_defined
    }
}

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    /// The mask of address bits the advertised OAS allows, in bits 51 and below.
    fn address_bits(&self) -> u64 {
        let oas = u32::from(self.features.oas.bits()).min(52);
        (1u64 << oas) - 1
    }

    fn check_access(&mut self, offset: MmioOffset, width: AccessWidth) -> Result<(), MmioError> {
        let end = offset.0.checked_add(width.bytes());
        let refusal = if end.is_none_or(|end| end > REGISTER_WINDOW_SIZE) {
            Some(MmioError::OutsideWindow(offset))
        } else if matches!(width, AccessWidth::Bits8 | AccessWidth::Bits16) {
            Some(MmioError::UnsupportedWidth(width))
        } else if !offset.0.is_multiple_of(width.bytes()) {
            Some(MmioError::Unaligned(offset))
        } else {
            None
        };
        match refusal {
            Some(error) => {
                self.counters.aborted_accesses = self.counters.aborted_accesses.saturating_add(1);
                Err(error)
            }
            None => Ok(()),
        }
    }

    /// A trapped load.
    pub(crate) fn register_read(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
    ) -> Result<u64, MmioError> {
        self.check_access(offset, width)?;
        let (register, high) = VirtualRegister::at(offset.0);
        bump(&mut self.counters.register_reads, register.index());
        if width == AccessWidth::Bits64 && (high || !register.is_64bit()) {
            // Two adjacent 32-bit registers: as two 32-bit reads.
            let low = self.read32(offset.0);
            let upper = self.read32(offset.0 + 4);
            return match (low, upper) {
                (None, None) => Err(MmioError::Reserved(offset)),
                (low, upper) => {
                    Ok(u64::from(low.unwrap_or(0)) | u64::from(upper.unwrap_or(0)) << 32)
                }
            };
        }
        if width == AccessWidth::Bits64 {
            return self.read64(register).ok_or(MmioError::Reserved(offset));
        }
        self.read32(offset.0)
            .map(u64::from)
            .ok_or(MmioError::Reserved(offset))
    }

    /// A trapped store.
    pub(crate) fn register_write(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        self.check_access(offset, width)?;
        let (register, high) = VirtualRegister::at(offset.0);
        bump(&mut self.counters.register_writes, register.index());
        let value = value & width.mask();
        if width == AccessWidth::Bits64 && register.is_64bit() && !high {
            return self.write64(register, value, offset);
        }
        if width == AccessWidth::Bits64 {
            // Two adjacent 32-bit registers: as two 32-bit writes, low first.
            let low = self.write32(offset.0, low32(value));
            let upper = self.write32(offset.0 + 4, low32(value >> 32));
            return low.or(upper);
        }
        self.write32(offset.0, low32(value))
    }

    fn read64(&mut self, register: VirtualRegister) -> Option<u64> {
        let r = &self.registers;
        Some(match register {
            VirtualRegister::GerrorIrqCfg0 => r.gerror_irq_cfg0,
            VirtualRegister::StrtabBase => r.strtab_base,
            VirtualRegister::CmdqBase => r.cmdq_base,
            VirtualRegister::EvtqBase => r.evtq_base,
            VirtualRegister::EvtqIrqCfg0 => r.evtq_irq_cfg0,
            VirtualRegister::PriqBase if self.features.pri => r.priq_base,
            VirtualRegister::PriqIrqCfg0 if self.features.pri => r.priq_irq_cfg0,
            _ => return None,
        })
    }

    fn read32(&mut self, offset: u64) -> Option<u32> {
        let (register, high) = VirtualRegister::at(offset);
        if register.is_pri() && !self.features.pri {
            return None;
        }
        if register.is_64bit() {
            let whole = self.read64(register)?;
            return Some(low32(if high { whole >> 32 } else { whole }));
        }
        // Reads a guest polls while work is pending continue that work first.
        let polls_progress = match register {
            VirtualRegister::CmdqCons => self.command_queue_has_work(),
            VirtualRegister::Cr0Ack | VirtualRegister::Gbpa => self.streams.first_dirty().is_some(),
            _ => false,
        };
        if polls_progress {
            self.run();
        }
        let r = &self.registers;
        Some(match register {
            VirtualRegister::Idr0 => self.features.idr0(),
            VirtualRegister::Idr1 => self.features.idr1(),
            VirtualRegister::Idr3 => self.features.idr3(),
            VirtualRegister::Idr5 => self.features.idr5(),
            VirtualRegister::Aidr => id::AIDR,
            VirtualRegister::Idr2
            | VirtualRegister::Idr4
            | VirtualRegister::Iidr
            | VirtualRegister::Statusr => 0,
            VirtualRegister::Cr0 => r.cr0.0,
            VirtualRegister::Cr0Ack => r.cr0ack(),
            VirtualRegister::Cr1 => r.cr1,
            VirtualRegister::Cr2 => r.cr2,
            VirtualRegister::Gbpa => r.gbpa.0 | if r.gbpa_updating { GBPA_UPDATE } else { 0 },
            VirtualRegister::IrqCtrl | VirtualRegister::IrqCtrlAck => r.irq_ctrl.0,
            VirtualRegister::Gerror => r.gerror,
            VirtualRegister::Gerrorn => r.gerrorn,
            VirtualRegister::GerrorIrqCfg1 => r.gerror_irq_cfg1,
            VirtualRegister::GerrorIrqCfg2 => r.gerror_irq_cfg2,
            VirtualRegister::StrtabBaseCfg => r.strtab_base_cfg,
            VirtualRegister::CmdqProd => r.cmdq_prod,
            VirtualRegister::CmdqCons => r.cmdq_cons,
            VirtualRegister::EvtqProd => r.evtq_prod,
            VirtualRegister::EvtqCons => r.evtq_cons,
            VirtualRegister::EvtqIrqCfg1 => r.evtq_irq_cfg1,
            VirtualRegister::EvtqIrqCfg2 => r.evtq_irq_cfg2,
            VirtualRegister::PriqProd => r.priq_prod,
            VirtualRegister::PriqCons => r.priq_cons,
            VirtualRegister::PriqIrqCfg1 => r.priq_irq_cfg1,
            VirtualRegister::PriqIrqCfg2 => r.priq_irq_cfg2,
            VirtualRegister::GerrorIrqCfg0
            | VirtualRegister::StrtabBase
            | VirtualRegister::CmdqBase
            | VirtualRegister::EvtqBase
            | VirtualRegister::EvtqIrqCfg0
            | VirtualRegister::PriqBase
            | VirtualRegister::PriqIrqCfg0
            | VirtualRegister::Reserved => return None,
        })
    }

    fn write32(&mut self, offset: u64, value: u32) -> Result<(), MmioError> {
        let at = MmioOffset(offset);
        let (register, high) = VirtualRegister::at(offset);
        if register.is_pri() && !self.features.pri {
            return Err(MmioError::Reserved(at));
        }
        if register.is_64bit() {
            let old = self.read64(register).unwrap_or(0);
            let merged = if high {
                old & 0xffff_ffff | u64::from(value) << 32
            } else {
                old & !0xffff_ffff | u64::from(value)
            };
            return self.write64(register, merged, at);
        }
        let ignored = Err(MmioError::WriteIgnored(at));
        let r = &self.registers;
        let smmu_on = r.cr0.smmuen() || r.smmuen_ack;
        match register {
            VirtualRegister::Cr0 => {
                self.write_cr0(value);
                Ok(())
            }
            VirtualRegister::Cr1 => {
                if smmu_on || r.cr0.cmdqen() || r.cr0.evtqen() {
                    return ignored;
                }
                self.registers.cr1 = value & CR1_FIELDS;
                Ok(())
            }
            VirtualRegister::Cr2 => {
                if smmu_on {
                    return ignored;
                }
                self.registers.cr2 = value & CR2_FIELDS;
                Ok(())
            }
            VirtualRegister::Gbpa => self.write_gbpa(value, at),
            VirtualRegister::IrqCtrl => {
                let defined = if self.features.pri { 0b111 } else { 0b101 };
                self.registers.irq_ctrl = IrqCtrl(value & defined);
                Ok(())
            }
            VirtualRegister::Gerrorn => {
                let was_stopped = self.registers.active_errors() & CMDQ_ERR != 0;
                self.registers.gerrorn = value & self.registers.gerror_defined;
                if was_stopped && self.registers.active_errors() & CMDQ_ERR == 0 {
                    self.run();
                }
                Ok(())
            }
            VirtualRegister::GerrorIrqCfg1 => {
                if self.registers.irq_ctrl.gerror_irqen() {
                    return ignored;
                }
                self.registers.gerror_irq_cfg1 = value;
                Ok(())
            }
            VirtualRegister::GerrorIrqCfg2 => {
                if self.registers.irq_ctrl.gerror_irqen() {
                    return ignored;
                }
                self.registers.gerror_irq_cfg2 = value & IRQ_CFG2_FIELDS;
                Ok(())
            }
            VirtualRegister::StrtabBaseCfg => {
                if smmu_on {
                    return ignored;
                }
                // LOG2SIZE, SPLIT, FMT.
                self.registers.strtab_base_cfg = value & (0x3f | 0x1f << 6 | 0x3 << 16);
                Ok(())
            }
            VirtualRegister::CmdqProd => {
                self.registers.cmdq_prod = value & QUEUE_POINTER_BITS;
                if self.registers.cr0.cmdqen() {
                    self.run();
                }
                Ok(())
            }
            VirtualRegister::CmdqCons => {
                if self.registers.cr0.cmdqen() {
                    return ignored;
                }
                // ERR keeps its value: a write to it may be ignored.
                let err = self.registers.cmdq_cons & !QUEUE_POINTER_BITS;
                self.registers.cmdq_cons = err | value & QUEUE_POINTER_BITS;
                Ok(())
            }
            VirtualRegister::EvtqProd => {
                if self.registers.cr0.evtqen() {
                    return ignored;
                }
                self.registers.evtq_prod = value & (QUEUE_POINTER_BITS | OVERFLOW_FLAG);
                Ok(())
            }
            VirtualRegister::EvtqCons => {
                self.registers.evtq_cons = value & (QUEUE_POINTER_BITS | OVERFLOW_FLAG);
                Ok(())
            }
            VirtualRegister::EvtqIrqCfg1 => {
                if self.registers.irq_ctrl.evtq_irqen() {
                    return ignored;
                }
                self.registers.evtq_irq_cfg1 = value;
                Ok(())
            }
            VirtualRegister::EvtqIrqCfg2 => {
                if self.registers.irq_ctrl.evtq_irqen() {
                    return ignored;
                }
                self.registers.evtq_irq_cfg2 = value & IRQ_CFG2_FIELDS;
                Ok(())
            }
            VirtualRegister::PriqProd => {
                if self.registers.cr0.priqen() {
                    return ignored;
                }
                self.registers.priq_prod = value & (QUEUE_POINTER_BITS | OVERFLOW_FLAG);
                Ok(())
            }
            VirtualRegister::PriqCons => {
                self.registers.priq_cons = value & (QUEUE_POINTER_BITS | OVERFLOW_FLAG);
                Ok(())
            }
            VirtualRegister::PriqIrqCfg1 => {
                if self.registers.irq_ctrl.priq_irqen() {
                    return ignored;
                }
                self.registers.priq_irq_cfg1 = value;
                Ok(())
            }
            VirtualRegister::PriqIrqCfg2 => {
                if self.registers.irq_ctrl.priq_irqen() {
                    return ignored;
                }
                self.registers.priq_irq_cfg2 = value & PRIQ_IRQ_CFG2_FIELDS;
                Ok(())
            }
            VirtualRegister::Idr0
            | VirtualRegister::Idr1
            | VirtualRegister::Idr2
            | VirtualRegister::Idr3
            | VirtualRegister::Idr4
            | VirtualRegister::Idr5
            | VirtualRegister::Iidr
            | VirtualRegister::Aidr
            | VirtualRegister::Cr0Ack
            | VirtualRegister::Statusr
            | VirtualRegister::IrqCtrlAck
            | VirtualRegister::Gerror => ignored,
            VirtualRegister::Reserved => Err(MmioError::Reserved(at)),
            VirtualRegister::GerrorIrqCfg0
            | VirtualRegister::StrtabBase
            | VirtualRegister::CmdqBase
            | VirtualRegister::EvtqBase
            | VirtualRegister::EvtqIrqCfg0
            | VirtualRegister::PriqBase
            | VirtualRegister::PriqIrqCfg0 => ignored,
        }
    }

    fn write64(
        &mut self,
        register: VirtualRegister,
        value: u64,
        at: MmioOffset,
    ) -> Result<(), MmioError> {
        let address = self.address_bits();
        let r = &mut self.registers;
        let ignored = Err(MmioError::WriteIgnored(at));
        match register {
            VirtualRegister::GerrorIrqCfg0 => {
                if r.irq_ctrl.gerror_irqen() {
                    return ignored;
                }
                r.gerror_irq_cfg0 = value & address & !0b11;
            }
            VirtualRegister::EvtqIrqCfg0 => {
                if r.irq_ctrl.evtq_irqen() {
                    return ignored;
                }
                r.evtq_irq_cfg0 = value & address & !0b11;
            }
            VirtualRegister::StrtabBase => {
                if r.cr0.smmuen() || r.smmuen_ack {
                    return ignored;
                }
                r.strtab_base = value & (ALLOCATE_HINT | address & !0x3f);
            }
            VirtualRegister::CmdqBase => {
                if r.cr0.cmdqen() {
                    return ignored;
                }
                r.cmdq_base = value & (ALLOCATE_HINT | address & !0x1f | 0x1f);
            }
            VirtualRegister::EvtqBase => {
                if r.cr0.evtqen() {
                    return ignored;
                }
                r.evtq_base = value & (ALLOCATE_HINT | address & !0x1f | 0x1f);
            }
            VirtualRegister::PriqBase if self.features.pri => {
                if r.cr0.priqen() {
                    return ignored;
                }
                r.priq_base = value & (ALLOCATE_HINT | address & !0x1f | 0x1f);
            }
            VirtualRegister::PriqIrqCfg0 if self.features.pri => {
                if r.irq_ctrl.priq_irqen() {
                    return ignored;
                }
                r.priq_irq_cfg0 = value & address & !0b11;
            }
            _ => return Err(MmioError::Reserved(at)),
        }
        Ok(())
    }

    fn write_cr0(&mut self, value: u32) {
        let mut defined = Cr0::default()
            .with_smmuen(true)
            .with_evtqen(true)
            .with_cmdqen(true);
        if self.features.ats {
            defined = defined.with_atschk(true);
        }
        if self.features.pri {
            defined = defined.with_priqen(true);
        }
        let new = Cr0(value & defined.0);
        let old = self.registers.cr0;
        self.registers.cr0 = new;
        if old.cmdqen() && !new.cmdqen() {
            // Consumed commands still take effect.
            self.flush_batch();
        }
        if old.smmuen() != new.smmuen() {
            self.mark_all_streams_dirty();
        }
        self.run();
    }

    fn write_gbpa(&mut self, value: u32, at: MmioOffset) -> Result<(), MmioError> {
        // Written only with UPDATE = 1, and not while an update is in progress.
        if value & GBPA_UPDATE == 0 || self.registers.gbpa_updating {
            return Err(MmioError::WriteIgnored(at));
        }
        let new = Gbpa(value & GBPA_FIELDS);
        let old = self.registers.gbpa;
        self.registers.gbpa = new;
        self.registers.gbpa_updating = true;
        if old.abort() != new.abort() && !self.registers.smmu_enabled() {
            self.mark_all_streams_dirty();
        }
        self.run();
        Ok(())
    }

    /// Activates global errors `bits` that are not active already, and signals them (the
    /// GERROR interrupt and MSI, except for MSI_GERROR_ABT_ERR).
    pub(crate) fn raise_global_error(&mut self, bits: u32) {
        let new = bits & self.registers.gerror_defined & !self.registers.active_errors();
        if new == 0 {
            return;
        }
        self.registers.gerror ^= new;
        if new & !MSI_GERROR_ABT_ERR == 0 || !self.registers.irq_ctrl.gerror_irqen() {
            return;
        }
        self.backends
            .interrupts
            .raise(VirtualInterrupt::GlobalError);
        let address = Ipa(self.registers.gerror_irq_cfg0);
        let data = self.registers.gerror_irq_cfg1;
        if address.0 != 0 && !self.msi_write(address, data) {
            self.raise_global_error(MSI_GERROR_ABT_ERR);
        }
    }

    /// Performs an MSI write of `data` to `address` in guest RAM. False if it aborted.
    pub(crate) fn msi_write(&mut self, address: Ipa, data: u32) -> bool {
        match self
            .backends
            .guest_memory
            .write(address, &data.to_le_bytes())
        {
            Ok(()) => {
                self.counters.msi_writes = self.counters.msi_writes.saturating_add(1);
                true
            }
            Err(_) => {
                self.counters.msi_aborts = self.counters.msi_aborts.saturating_add(1);
                false
            }
        }
    }
}

/// The low 32 bits.
#[allow(clippy::cast_possible_truncation)] // Truncation to the low half is the point.
const fn low32(value: u64) -> u32 {
    value as u32
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_register_is_listed_once_in_index_order_with_a_name() {
        for (index, register) in VirtualRegister::ALL.into_iter().enumerate() {
            assert_eq!(register.index(), index);
            assert!(!register.name().is_empty());
        }
        let (register, _) = VirtualRegister::at(0x98);
        assert_eq!(register.name(), "CMDQ_PROD");
    }

    use super::*;

    #[test]
    fn every_offset_of_the_reference_sheet_decodes_to_its_register() {
        let cases = [
            (0x00, VirtualRegister::Idr0, false),
            (0x20, VirtualRegister::Cr0, false),
            (0x24, VirtualRegister::Cr0Ack, false),
            (0x44, VirtualRegister::Gbpa, false),
            (0x64, VirtualRegister::Gerrorn, false),
            (0x68, VirtualRegister::GerrorIrqCfg0, false),
            (0x6C, VirtualRegister::GerrorIrqCfg0, true),
            (0x80, VirtualRegister::StrtabBase, false),
            (0x84, VirtualRegister::StrtabBase, true),
            (0x88, VirtualRegister::StrtabBaseCfg, false),
            (0x94, VirtualRegister::CmdqBase, true),
            (0x98, VirtualRegister::CmdqProd, false),
            (0x9C, VirtualRegister::CmdqCons, false),
            (0xA4, VirtualRegister::EvtqBase, true),
            (0xA8, VirtualRegister::EvtqProd, false),
            (0x1_00A8, VirtualRegister::EvtqProd, false),
            (0x1_00AC, VirtualRegister::EvtqCons, false),
            (0xB4, VirtualRegister::EvtqIrqCfg0, true),
            (0xC0, VirtualRegister::PriqBase, false),
            (0xC4, VirtualRegister::PriqBase, true),
            (0x1_00C8, VirtualRegister::PriqProd, false),
            (0x1_00CC, VirtualRegister::PriqCons, false),
            (0xD0, VirtualRegister::PriqIrqCfg0, false),
            (0xD8, VirtualRegister::PriqIrqCfg1, false),
            (0xDC, VirtualRegister::PriqIrqCfg2, false),
            (0x1_00D0, VirtualRegister::Reserved, false),
            (0x1_0020, VirtualRegister::Reserved, false),
            (0xFFC, VirtualRegister::Reserved, false),
        ];
        for (offset, register, high) in cases {
            assert_eq!(VirtualRegister::at(offset), (register, high), "{offset:#x}");
        }
    }
}
