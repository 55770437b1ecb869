//! The SMMUv3 programming interface: register offsets, typed register values, and the decoding
//! of the ID registers into [`Features`].
//!
//! This module owns the names, offsets and field layouts of the registers in page 0 and page 1.
//! It does not touch hardware: reading and writing go through
//! [`RegisterAccess`](crate::hardware::RegisterAccess). Field positions are those of the project's
//! reference sheet (Arm IHI 0070, cross-checked against Linux and QEMU).

use crate::bits;
use crate::ids::PhysAddr;
use crate::translation::AddressSize;

/// The byte offset of a register from the SMMU's base address (page 1 registers are at
/// `0x1_0000` and above).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RegisterOffset(u32);

impl RegisterOffset {
    /// The offset `offset` bytes from the SMMU's base.
    #[must_use]
    pub const fn new(offset: u32) -> Self {
        Self(offset)
    }

    /// The offset in bytes.
    #[must_use]
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Whether the offset lies in page 1 (the second 64 KiB page).
    #[must_use]
    pub const fn is_page1(self) -> bool {
        self.0 >= PAGE1
    }
}

/// The offset of page 1 from the SMMU's base. Page 1 holds the event and PRI queue pointers so
/// that software can map them separately.
pub const PAGE1: u32 = 0x1_0000;

/// Named offsets of every register this crate knows.
pub mod offset {
    use super::{PAGE1, RegisterOffset};

    /// SMMU_IDR0: features.
    pub const IDR0: RegisterOffset = RegisterOffset(0x00);
    /// SMMU_IDR1: table and queue sizes.
    pub const IDR1: RegisterOffset = RegisterOffset(0x04);
    /// SMMU_IDR2: implementation defined here (VATOS base).
    pub const IDR2: RegisterOffset = RegisterOffset(0x08);
    /// SMMU_IDR3: later-revision features (HAD, FWB, RIL, BBML).
    pub const IDR3: RegisterOffset = RegisterOffset(0x0C);
    /// SMMU_IDR4: implementation defined.
    pub const IDR4: RegisterOffset = RegisterOffset(0x10);
    /// SMMU_IDR5: output address size, granules, VAX, STALL_MAX.
    pub const IDR5: RegisterOffset = RegisterOffset(0x14);
    /// SMMU_IIDR: implementer and product.
    pub const IIDR: RegisterOffset = RegisterOffset(0x18);
    /// SMMU_AIDR: architecture revision.
    pub const AIDR: RegisterOffset = RegisterOffset(0x1C);
    /// SMMU_CR0: global enables.
    pub const CR0: RegisterOffset = RegisterOffset(0x20);
    /// SMMU_CR0ACK: the enables the SMMU has acted on.
    pub const CR0ACK: RegisterOffset = RegisterOffset(0x24);
    /// SMMU_CR1: table and queue memory attributes.
    pub const CR1: RegisterOffset = RegisterOffset(0x28);
    /// SMMU_CR2: E2H, RECINVSID, PTM.
    pub const CR2: RegisterOffset = RegisterOffset(0x2C);
    /// SMMU_STATUSR.
    pub const STATUSR: RegisterOffset = RegisterOffset(0x40);
    /// SMMU_GBPA: global bypass attributes (what happens when SMMUEN=0).
    pub const GBPA: RegisterOffset = RegisterOffset(0x44);
    /// SMMU_IRQ_CTRL: wired interrupt enables.
    pub const IRQ_CTRL: RegisterOffset = RegisterOffset(0x50);
    /// SMMU_IRQ_CTRLACK.
    pub const IRQ_CTRLACK: RegisterOffset = RegisterOffset(0x54);
    /// SMMU_GERROR: global errors (active bits are GERROR ^ GERRORN).
    pub const GERROR: RegisterOffset = RegisterOffset(0x60);
    /// SMMU_GERRORN: software's acknowledgement of GERROR.
    pub const GERRORN: RegisterOffset = RegisterOffset(0x64);
    /// SMMU_GERROR_IRQ_CFG0 (64-bit): MSI address.
    pub const GERROR_IRQ_CFG0: RegisterOffset = RegisterOffset(0x68);
    /// SMMU_GERROR_IRQ_CFG1: MSI data.
    pub const GERROR_IRQ_CFG1: RegisterOffset = RegisterOffset(0x70);
    /// SMMU_GERROR_IRQ_CFG2: MSI attributes.
    pub const GERROR_IRQ_CFG2: RegisterOffset = RegisterOffset(0x74);
    /// SMMU_STRTAB_BASE (64-bit).
    pub const STRTAB_BASE: RegisterOffset = RegisterOffset(0x80);
    /// SMMU_STRTAB_BASE_CFG.
    pub const STRTAB_BASE_CFG: RegisterOffset = RegisterOffset(0x88);
    /// SMMU_CMDQ_BASE (64-bit).
    pub const CMDQ_BASE: RegisterOffset = RegisterOffset(0x90);
    /// SMMU_CMDQ_PROD.
    pub const CMDQ_PROD: RegisterOffset = RegisterOffset(0x98);
    /// SMMU_CMDQ_CONS (with the ERR field).
    pub const CMDQ_CONS: RegisterOffset = RegisterOffset(0x9C);
    /// SMMU_EVENTQ_BASE (64-bit).
    pub const EVTQ_BASE: RegisterOffset = RegisterOffset(0xA0);
    /// SMMU_EVENTQ_PROD, in page 1.
    pub const EVTQ_PROD: RegisterOffset = RegisterOffset(PAGE1 + 0xA8);
    /// SMMU_EVENTQ_CONS, in page 1.
    pub const EVTQ_CONS: RegisterOffset = RegisterOffset(PAGE1 + 0xAC);
    /// SMMU_EVENTQ_IRQ_CFG0 (64-bit).
    pub const EVTQ_IRQ_CFG0: RegisterOffset = RegisterOffset(0xB0);
    /// SMMU_EVENTQ_IRQ_CFG1.
    pub const EVTQ_IRQ_CFG1: RegisterOffset = RegisterOffset(0xB8);
    /// SMMU_EVENTQ_IRQ_CFG2.
    pub const EVTQ_IRQ_CFG2: RegisterOffset = RegisterOffset(0xBC);
    /// SMMU_PRIQ_BASE (64-bit).
    pub const PRIQ_BASE: RegisterOffset = RegisterOffset(0xC0);
    /// SMMU_PRIQ_PROD, in page 1.
    pub const PRIQ_PROD: RegisterOffset = RegisterOffset(PAGE1 + 0xC8);
    /// SMMU_PRIQ_CONS, in page 1.
    pub const PRIQ_CONS: RegisterOffset = RegisterOffset(PAGE1 + 0xCC);
    /// SMMU_PRIQ_IRQ_CFG0 (64-bit).
    pub const PRIQ_IRQ_CFG0: RegisterOffset = RegisterOffset(0xD0);
    /// SMMU_PRIQ_IRQ_CFG1.
    pub const PRIQ_IRQ_CFG1: RegisterOffset = RegisterOffset(0xD8);
    /// SMMU_PRIQ_IRQ_CFG2.
    pub const PRIQ_IRQ_CFG2: RegisterOffset = RegisterOffset(0xDC);
}

/// The access width of a register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RegisterWidth {
    /// A 32-bit register.
    Bits32,
    /// A 64-bit register.
    Bits64,
}

macro_rules! registers {
    ($($(#[$meta:meta])* $variant:ident = $offset:ident, $width:ident;)*) => {
        /// Every register of the reference sheet, for code that must map an offset to a register
        /// (a trapped guest access) or iterate over them.
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        pub enum Register {
            $($(#[$meta])* $variant,)*
        }

        impl Register {
            /// Every register, in offset order within each page.
            pub const ALL: &'static [Register] = &[$(Register::$variant,)*];

            /// The register's offset from the SMMU's base.
            #[must_use]
            pub const fn offset(self) -> RegisterOffset {
                match self {
                    $(Register::$variant => offset::$offset,)*
                }
            }

            /// The register's access width.
            #[must_use]
            pub const fn width(self) -> RegisterWidth {
                match self {
                    $(Register::$variant => RegisterWidth::$width,)*
                }
            }

            /// The architecture's name for the register, without the `SMMU_` prefix.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(Register::$variant => stringify!($offset),)*
                }
            }

            /// The register that starts at `offset`, if any.
            #[must_use]
            pub fn from_offset(offset: RegisterOffset) -> Option<Register> {
                Self::ALL.iter().copied().find(|r| r.offset() == offset)
            }
        }
    };
}

registers! {
    /// SMMU_IDR0.
    Idr0 = IDR0, Bits32;
    /// SMMU_IDR1.
    Idr1 = IDR1, Bits32;
    /// SMMU_IDR2.
    Idr2 = IDR2, Bits32;
    /// SMMU_IDR3.
    Idr3 = IDR3, Bits32;
    /// SMMU_IDR4.
    Idr4 = IDR4, Bits32;
    /// SMMU_IDR5.
    Idr5 = IDR5, Bits32;
    /// SMMU_IIDR.
    Iidr = IIDR, Bits32;
    /// SMMU_AIDR.
    Aidr = AIDR, Bits32;
    /// SMMU_CR0.
    Cr0 = CR0, Bits32;
    /// SMMU_CR0ACK.
    Cr0Ack = CR0ACK, Bits32;
    /// SMMU_CR1.
    Cr1 = CR1, Bits32;
    /// SMMU_CR2.
    Cr2 = CR2, Bits32;
    /// SMMU_STATUSR.
    Statusr = STATUSR, Bits32;
    /// SMMU_GBPA.
    Gbpa = GBPA, Bits32;
    /// SMMU_IRQ_CTRL.
    IrqCtrl = IRQ_CTRL, Bits32;
    /// SMMU_IRQ_CTRLACK.
    IrqCtrlAck = IRQ_CTRLACK, Bits32;
    /// SMMU_GERROR.
    Gerror = GERROR, Bits32;
    /// SMMU_GERRORN.
    Gerrorn = GERRORN, Bits32;
    /// SMMU_GERROR_IRQ_CFG0.
    GerrorIrqCfg0 = GERROR_IRQ_CFG0, Bits64;
    /// SMMU_GERROR_IRQ_CFG1.
    GerrorIrqCfg1 = GERROR_IRQ_CFG1, Bits32;
    /// SMMU_GERROR_IRQ_CFG2.
    GerrorIrqCfg2 = GERROR_IRQ_CFG2, Bits32;
    /// SMMU_STRTAB_BASE.
    StrtabBase = STRTAB_BASE, Bits64;
    /// SMMU_STRTAB_BASE_CFG.
    StrtabBaseCfg = STRTAB_BASE_CFG, Bits32;
    /// SMMU_CMDQ_BASE.
    CmdqBase = CMDQ_BASE, Bits64;
    /// SMMU_CMDQ_PROD.
    CmdqProd = CMDQ_PROD, Bits32;
    /// SMMU_CMDQ_CONS.
    CmdqCons = CMDQ_CONS, Bits32;
    /// SMMU_EVENTQ_BASE.
    EvtqBase = EVTQ_BASE, Bits64;
    /// SMMU_EVENTQ_IRQ_CFG0.
    EvtqIrqCfg0 = EVTQ_IRQ_CFG0, Bits64;
    /// SMMU_EVENTQ_IRQ_CFG1.
    EvtqIrqCfg1 = EVTQ_IRQ_CFG1, Bits32;
    /// SMMU_EVENTQ_IRQ_CFG2.
    EvtqIrqCfg2 = EVTQ_IRQ_CFG2, Bits32;
    /// SMMU_PRIQ_BASE.
    PriqBase = PRIQ_BASE, Bits64;
    /// SMMU_PRIQ_IRQ_CFG0.
    PriqIrqCfg0 = PRIQ_IRQ_CFG0, Bits64;
    /// SMMU_PRIQ_IRQ_CFG1.
    PriqIrqCfg1 = PRIQ_IRQ_CFG1, Bits32;
    /// SMMU_PRIQ_IRQ_CFG2.
    PriqIrqCfg2 = PRIQ_IRQ_CFG2, Bits32;
    /// SMMU_EVENTQ_PROD (page 1).
    EvtqProd = EVTQ_PROD, Bits32;
    /// SMMU_EVENTQ_CONS (page 1).
    EvtqCons = EVTQ_CONS, Bits32;
    /// SMMU_PRIQ_PROD (page 1).
    PriqProd = PRIQ_PROD, Bits32;
    /// SMMU_PRIQ_CONS (page 1).
    PriqCons = PRIQ_CONS, Bits32;
}

// Accessor generators for register value types. Each names the architecture field and its bits.
macro_rules! flag32 {
    ($(#[$m:meta])* $get:ident, $with:ident, $bit:expr) => {
        $(#[$m])*
        #[must_use]
        pub const fn $get(self) -> bool {
            bits::bit(self.0 as u64, $bit)
        }
        #[doc = concat!("A copy with `", stringify!($get), "` set to `value`.")]
        #[must_use]
        pub const fn $with(self, value: bool) -> Self {
            Self(bits::low32(bits::set_bit(self.0 as u64, $bit, value)))
        }
    };
}

macro_rules! field32 {
    ($(#[$m:meta])* $get:ident, $with:ident, $hi:expr, $lo:expr) => {
        $(#[$m])*
        #[must_use]
        pub const fn $get(self) -> u8 {
            bits::get_u8(self.0 as u64, $hi, $lo)
        }
        #[doc = concat!("A copy with `", stringify!($get), "` set to `value` (truncated to the field).")]
        #[must_use]
        pub const fn $with(self, value: u8) -> Self {
            Self(bits::low32(bits::set(self.0 as u64, $hi, $lo, value as u64)))
        }
    };
}

/// SMMU_CR0: global enables. The SMMU reports what it has acted on in CR0ACK, same layout.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cr0(pub u32);

impl Cr0 {
    flag32!(
        /// SMMUEN (bit 0): translation enabled for all streams.
        smmuen, with_smmuen, 0
    );
    flag32!(
        /// PRIQEN (bit 1): PRI queue enabled.
        priqen, with_priqen, 1
    );
    flag32!(
        /// EVTQEN (bit 2): event queue enabled.
        evtqen, with_evtqen, 2
    );
    flag32!(
        /// CMDQEN (bit 3): command queue enabled.
        cmdqen, with_cmdqen, 3
    );
    flag32!(
        /// ATSCHK (bit 4): check ATS-translated transactions against the STE.
        atschk, with_atschk, 4
    );
}

/// SMMU_CR1: attributes of the SMMU's own accesses to queues and tables. The cacheability
/// fields use the CR1 encoding (0 non-cacheable, 1 write-back, 2 write-through), not TCR's.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cr1(pub u32);

impl Cr1 {
    field32!(
        /// QUEUE_IC (bits 1:0): queue inner cacheability.
        queue_ic, with_queue_ic, 1, 0
    );
    field32!(
        /// QUEUE_OC (bits 3:2): queue outer cacheability.
        queue_oc, with_queue_oc, 3, 2
    );
    field32!(
        /// QUEUE_SH (bits 5:4): queue shareability.
        queue_sh, with_queue_sh, 5, 4
    );
    field32!(
        /// TABLE_IC (bits 7:6): table inner cacheability.
        table_ic, with_table_ic, 7, 6
    );
    field32!(
        /// TABLE_OC (bits 9:8): table outer cacheability.
        table_oc, with_table_oc, 9, 8
    );
    field32!(
        /// TABLE_SH (bits 11:10): table shareability.
        table_sh, with_table_sh, 11, 10
    );
}

/// SMMU_CR2.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cr2(pub u32);

impl Cr2 {
    flag32!(
        /// E2H (bit 0): EL2 streams use the EL2-E2H translation regime.
        e2h, with_e2h, 0
    );
    flag32!(
        /// RECINVSID (bit 1): record C_BAD_STREAMID for out-of-range stream IDs.
        recinvsid, with_recinvsid, 1
    );
    flag32!(
        /// PTM (bit 2): private TLB maintenance (ignore broadcast TLBI).
        ptm, with_ptm, 2
    );
}

/// SMMU_STATUSR.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Statusr(pub u32);

impl Statusr {
    flag32!(
        /// DORMANT (bit 0): the SMMU has no cached state and may be powered down.
        dormant, with_dormant, 0
    );
}

/// SMMU_GBPA: what transactions do while SMMUEN=0.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Gbpa(pub u32);

impl Gbpa {
    field32!(
        /// SHCFG (bits 13:12): shareability override (1 uses the incoming value; QEMU's reset
        /// value 0x1000 is exactly this).
        shcfg, with_shcfg, 13, 12
    );
    flag32!(
        /// ABORT (bit 20): abort all incoming transactions instead of bypassing them.
        abort, with_abort, 20
    );
    flag32!(
        /// UPDATE (bit 31): written as 1 with new values; reads 1 until the update completes.
        update, with_update, 31
    );
}

/// SMMU_IRQ_CTRL: wired interrupt enables. IRQ_CTRLACK has the same layout.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IrqCtrl(pub u32);

impl IrqCtrl {
    flag32!(
        /// GERROR_IRQEN (bit 0).
        gerror_irqen, with_gerror_irqen, 0
    );
    flag32!(
        /// PRIQ_IRQEN (bit 1).
        priq_irqen, with_priq_irqen, 1
    );
    flag32!(
        /// EVTQ_IRQEN (bit 2).
        evtq_irqen, with_evtq_irqen, 2
    );
}

/// SMMU_GERROR (and GERRORN, same layout). An error is active while its GERROR and GERRORN
/// bits differ; software acknowledges by toggling the GERRORN bit.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Gerror(pub u32);

impl Gerror {
    /// The bits the architecture defines (0 and 2..=8).
    pub const DEFINED_BITS: u32 = 0x1FD;

    /// The errors that are active: those whose GERROR and GERRORN bits differ.
    #[must_use]
    pub const fn active(gerror: Gerror, gerrorn: Gerror) -> Gerror {
        Gerror((gerror.0 ^ gerrorn.0) & Self::DEFINED_BITS)
    }

    /// Whether no defined error bit is set.
    #[must_use]
    pub const fn is_clear(self) -> bool {
        self.0 & Self::DEFINED_BITS == 0
    }

    flag32!(
        /// CMDQ_ERR (bit 0): the command queue stopped on an error (see CMDQ_CONS.ERR).
        cmdq_err, with_cmdq_err, 0
    );
    flag32!(
        /// EVTQ_ABT_ERR (bit 2): an event queue write aborted, or an event was lost.
        evtq_abt_err, with_evtq_abt_err, 2
    );
    flag32!(
        /// PRIQ_ABT_ERR (bit 3): a PRI queue write aborted.
        priq_abt_err, with_priq_abt_err, 3
    );
    flag32!(
        /// MSI_CMDQ_ABT_ERR (bit 4): a CMD_SYNC MSI write aborted.
        msi_cmdq_abt_err, with_msi_cmdq_abt_err, 4
    );
    flag32!(
        /// MSI_EVTQ_ABT_ERR (bit 5): an event queue MSI write aborted.
        msi_evtq_abt_err, with_msi_evtq_abt_err, 5
    );
    flag32!(
        /// MSI_PRIQ_ABT_ERR (bit 6): a PRI queue MSI write aborted.
        msi_priq_abt_err, with_msi_priq_abt_err, 6
    );
    flag32!(
        /// MSI_GERROR_ABT_ERR (bit 7): a GERROR MSI write aborted.
        msi_gerror_abt_err, with_msi_gerror_abt_err, 7
    );
    flag32!(
        /// SFM_ERR (bit 8): the SMMU entered service failure mode.
        sfm_err, with_sfm_err, 8
    );
}

/// SMMU_*_IRQ_CFG0: the MSI target address, bits 51:2.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IrqCfg0(pub u64);

impl IrqCfg0 {
    /// ADDR (bits 51:2): the MSI doorbell address; 0 disables the MSI.
    #[must_use]
    pub const fn addr(self) -> PhysAddr {
        PhysAddr(self.0 & bits::mask(51, 2))
    }

    /// A copy with ADDR set (bits outside 51:2 of `addr` are dropped).
    #[must_use]
    pub const fn with_addr(self, addr: PhysAddr) -> Self {
        Self((self.0 & !bits::mask(51, 2)) | (addr.0 & bits::mask(51, 2)))
    }
}

/// SMMU_*_IRQ_CFG2: MSI memory attributes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IrqCfg2(pub u32);

impl IrqCfg2 {
    field32!(
        /// MEMATTR (bits 3:0): memory type of the MSI write.
        memattr, with_memattr, 3, 0
    );
    field32!(
        /// SH (bits 5:4): shareability of the MSI write.
        sh, with_sh, 5, 4
    );
}

/// SMMU_STRTAB_BASE.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StrtabBase(pub u64);

impl StrtabBase {
    /// RA (bit 62): read-allocate hint for stream table accesses.
    #[must_use]
    pub const fn ra(self) -> bool {
        bits::bit(self.0, 62)
    }

    /// A copy with RA set to `value`.
    #[must_use]
    pub const fn with_ra(self, value: bool) -> Self {
        Self(bits::set_bit(self.0, 62, value))
    }

    /// ADDR (bits 51:6): the stream table's physical address.
    #[must_use]
    pub const fn addr(self) -> PhysAddr {
        PhysAddr(self.0 & bits::mask(51, 6))
    }

    /// A copy with ADDR set (bits outside 51:6 of `addr` are dropped).
    #[must_use]
    pub const fn with_addr(self, addr: PhysAddr) -> Self {
        Self((self.0 & !bits::mask(51, 6)) | (addr.0 & bits::mask(51, 6)))
    }
}

/// The stream table format of STRTAB_BASE_CFG.FMT and IDR0.ST_LEVEL.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamTableFormat {
    /// A single array of STEs indexed by stream ID (0).
    Linear,
    /// Level-1 descriptors pointing at arrays of STEs (1).
    TwoLevel,
}

impl StreamTableFormat {
    /// Decodes the 2-bit field; 2 and 3 are reserved.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::Linear),
            1 => Some(Self::TwoLevel),
            _ => None,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

/// An error decoding a register value other than the ID registers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RegisterError {
    /// STRTAB_BASE_CFG.FMT holds a reserved encoding (2 or 3).
    ReservedStreamTableFormat(u8),
    /// CMDQ_CONS.ERR holds a value the architecture does not define (above 3).
    UnknownCommandError(u8),
}

/// SMMU_STRTAB_BASE_CFG.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StrtabBaseCfg(pub u32);

impl StrtabBaseCfg {
    field32!(
        /// LOG2SIZE (bits 5:0): log2 of the number of stream IDs the table covers.
        log2size, with_log2size, 5, 0
    );
    field32!(
        /// SPLIT (bits 10:6): the stream ID bit where a two-level table splits.
        split, with_split, 10, 6
    );

    /// FMT (bits 17:16).
    ///
    /// # Errors
    ///
    /// [`RegisterError::ReservedStreamTableFormat`] for 2 or 3.
    pub const fn fmt(self) -> Result<StreamTableFormat, RegisterError> {
        let raw = bits::get_u8(self.0 as u64, 17, 16);
        match StreamTableFormat::from_encoding(raw) {
            Some(f) => Ok(f),
            None => Err(RegisterError::ReservedStreamTableFormat(raw)),
        }
    }

    /// A copy with FMT set.
    #[must_use]
    pub const fn with_fmt(self, fmt: StreamTableFormat) -> Self {
        Self(bits::low32(bits::set(
            self.0 as u64,
            17,
            16,
            fmt.encoding() as u64,
        )))
    }
}

/// SMMU_CMDQ_BASE, SMMU_EVENTQ_BASE and SMMU_PRIQ_BASE share this layout.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QueueBase(pub u64);

impl QueueBase {
    /// RA (command queue) or WA (event and PRI queues), bit 62: allocation hint.
    #[must_use]
    pub const fn allocate_hint(self) -> bool {
        bits::bit(self.0, 62)
    }

    /// A copy with the allocation hint set to `value`.
    #[must_use]
    pub const fn with_allocate_hint(self, value: bool) -> Self {
        Self(bits::set_bit(self.0, 62, value))
    }

    /// ADDR (bits 51:5): the queue's physical address.
    #[must_use]
    pub const fn addr(self) -> PhysAddr {
        PhysAddr(self.0 & bits::mask(51, 5))
    }

    /// A copy with ADDR set (bits outside 51:5 of `addr` are dropped).
    #[must_use]
    pub const fn with_addr(self, addr: PhysAddr) -> Self {
        Self((self.0 & !bits::mask(51, 5)) | (addr.0 & bits::mask(51, 5)))
    }

    /// LOG2SIZE (bits 4:0): log2 of the number of entries.
    #[must_use]
    pub const fn log2size(self) -> u8 {
        bits::get_u8(self.0, 4, 0)
    }

    /// A copy with LOG2SIZE set (truncated to 5 bits).
    #[must_use]
    pub const fn with_log2size(self, log2size: u8) -> Self {
        Self(bits::set(self.0, 4, 0, log2size as u64))
    }
}

/// CMDQ_CONS.ERR: why the command queue stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CommandError {
    /// CERROR_NONE (0).
    None,
    /// CERROR_ILL (1): an illegal command (unknown opcode, bad field, reserved bit set).
    Illegal,
    /// CERROR_ABT (2): the command fetch aborted.
    Abort,
    /// CERROR_ATC_INV_SYNC (3): a CMD_SYNC failed because an ATC invalidation timed out.
    AtcInvalidationSync,
}

impl CommandError {
    /// The ERR field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

/// SMMU_CMDQ_CONS: the consumer pointer plus the ERR field (bits 30:24).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CmdqCons(pub u32);

impl CmdqCons {
    /// The bits that hold ERR.
    pub const ERR_MASK: u32 = 0x7F00_0000;

    /// The register without ERR: what [`QueuePointer::from_raw`](crate::queue::QueuePointer::from_raw)
    /// should validate.
    #[must_use]
    pub const fn pointer_bits(self) -> u32 {
        self.0 & !Self::ERR_MASK
    }

    /// ERR (bits 30:24).
    ///
    /// # Errors
    ///
    /// [`RegisterError::UnknownCommandError`] for a value above 3.
    pub const fn err(self) -> Result<CommandError, RegisterError> {
        match bits::get_u8(self.0 as u64, 30, 24) {
            0 => Ok(CommandError::None),
            1 => Ok(CommandError::Illegal),
            2 => Ok(CommandError::Abort),
            3 => Ok(CommandError::AtcInvalidationSync),
            other => Err(RegisterError::UnknownCommandError(other)),
        }
    }

    /// A copy with ERR set.
    #[must_use]
    pub const fn with_err(self, err: CommandError) -> Self {
        Self(bits::low32(bits::set(
            self.0 as u64,
            30,
            24,
            err.encoding() as u64,
        )))
    }
}

/// SMMU_IIDR: who made this SMMU.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Iidr(pub u32);

impl Iidr {
    /// Implementer (bits 11:0), a JEP106 code.
    #[must_use]
    pub const fn implementer(self) -> u16 {
        bits::get_u16(self.0 as u64, 11, 0)
    }
    /// Revision (bits 15:12).
    #[must_use]
    pub const fn revision(self) -> u8 {
        bits::get_u8(self.0 as u64, 15, 12)
    }
    /// Variant (bits 19:16).
    #[must_use]
    pub const fn variant(self) -> u8 {
        bits::get_u8(self.0 as u64, 19, 16)
    }
    /// ProductID (bits 31:20).
    #[must_use]
    pub const fn product_id(self) -> u16 {
        bits::get_u16(self.0 as u64, 31, 20)
    }
}

/// SMMU_AIDR: which SMMUv3.x this is.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Aidr(pub u32);

impl Aidr {
    /// ArchMinorRev (bits 3:0): the x of SMMUv3.x.
    #[must_use]
    pub const fn arch_minor_rev(self) -> u8 {
        bits::get_u8(self.0 as u64, 3, 0)
    }
    /// ArchMajorRev (bits 7:4): 0 for SMMUv3.
    #[must_use]
    pub const fn arch_major_rev(self) -> u8 {
        bits::get_u8(self.0 as u64, 7, 4)
    }
}

// ---------------------------------------------------------------------------------------------
// ID registers

/// The raw ID registers [`Features`] is decoded from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IdRegisters {
    /// SMMU_IDR0.
    pub idr0: u32,
    /// SMMU_IDR1.
    pub idr1: u32,
    /// SMMU_IDR3.
    pub idr3: u32,
    /// SMMU_IDR5.
    pub idr5: u32,
}

impl IdRegisters {
    /// The values QEMU's `virt` machine reports (QEMU 10.0, `iommu=smmuv3`).
    pub const QEMU_VIRT: IdRegisters = IdRegisters {
        idr0: 0x0d44_101b,
        idr1: 0x0273_0010,
        idr3: 0x1414,
        idr5: 0x74,
    };
}

/// IDR0.TTF: the translation table formats the SMMU can walk.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TranslationTableFormats {
    /// AArch32 (LPAE) only (1).
    AArch32,
    /// AArch64 only (2).
    AArch64,
    /// Both (3).
    AArch32AndAArch64,
}

/// IDR0.HTTU: hardware update of access and dirty flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Httu {
    /// No hardware update (0).
    None,
    /// Access flag only (1).
    AccessFlag,
    /// Access flag and dirty state (2).
    AccessFlagAndDirty,
}

/// IDR0.TTENDIAN: endianness of translation table walks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TableEndianness {
    /// Either, selected per CD/STE (0).
    Mixed,
    /// Little-endian only (2).
    Little,
    /// Big-endian only (3).
    Big,
}

/// IDR0.STALL_MODEL: whether faulting transactions can be stalled.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StallModel {
    /// Stall and terminate models both supported (0).
    StallAndTerminate,
    /// Terminate only; stalls are not supported (1).
    TerminateOnly,
    /// Stall forced: faulting transactions always stall (2).
    StallForced,
}

/// IDR0.TERM_MODEL: how a terminated transaction ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TermModel {
    /// CD.A selects abort or RAZ/WI (0).
    AbortOrRazWi,
    /// Terminated transactions always abort; CD.A must be 1 (1).
    AbortOnly,
}

/// IDR3.BBML: break-before-make level supported for translation table changes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Bbml {
    /// Level 0: no relaxation (0).
    Level0,
    /// BBML1 (1).
    Level1,
    /// BBML2 (2).
    Level2,
}

/// IDR5.VAX: virtual address size supported by stage 1 (IHI 0070, 6.3.6 SMMU_IDR5).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Vax {
    /// 48-bit VAs (0b00).
    Va48,
    /// 52-bit VAs (0b01): with the 64 KiB granule, or with IDR5.DS.
    Va52,
    /// 56-bit VAs (0b10): VMSAv9-128 tables only (IDR5.D128 = 1).
    Va56,
}

/// Which queue a size limit belongs to, for [`IdError::QueueTooLarge`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum QueueName {
    /// The command queue (IDR1.CMDQS).
    Command,
    /// The event queue (IDR1.EVTQS).
    Event,
    /// The PRI queue (IDR1.PRIQS).
    PageRequest,
}

/// An ID register value the architecture does not define, or one that describes an SMMU this
/// driver cannot program.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum IdError {
    /// IDR0.S1P and IDR0.S2P are both 0: an SMMUv3 must support at least one stage.
    NoTranslationStage,
    /// IDR0.TTF is 0 (reserved).
    ReservedTtf,
    /// IDR0.HTTU is 3 (reserved).
    ReservedHttu,
    /// IDR0.TTENDIAN is 1 (reserved).
    ReservedTtendian,
    /// IDR0.STALL_MODEL is 3 (reserved).
    ReservedStallModel,
    /// IDR0.ST_LEVEL is 2 or 3 (reserved).
    ReservedStLevel(u8),
    /// IDR1.TABLES_PRESET, QUEUES_PRESET or REL is set (IHI 0070, 6.3.2): the stream table
    /// or queue base registers hold fixed values (REL: offsets from page 0) chosen by the
    /// implementation, not the memory the driver lays out and owns. An "embedded
    /// implementation", which Linux refuses too. (REL is RES0 without a PRESET bit; it is
    /// refused all the same.)
    PresetBaseAddresses {
        /// IDR1.TABLES_PRESET (bit 30).
        tables_preset: bool,
        /// IDR1.QUEUES_PRESET (bit 29).
        queues_preset: bool,
        /// IDR1.REL (bit 28).
        rel: bool,
    },
    /// IDR1.SIDSIZE is above 32.
    SidSizeTooLarge(u8),
    /// IDR1.SSIDSIZE is above 20.
    SsidSizeTooLarge(u8),
    /// A queue size in IDR1 is above the architectural maximum of 2^19 entries.
    QueueTooLarge {
        /// Which queue.
        queue: QueueName,
        /// The advertised log2 of its size.
        log2size: u8,
    },
    /// IDR3.BBML is 3 (reserved).
    ReservedBbml,
    /// IDR5.VAX is 0b11 (reserved; IHI 0070, 6.3.6).
    ReservedVax(u8),
}

/// The largest log2 queue size IDR1 may advertise.
pub const MAX_QUEUE_LOG2SIZE: u8 = 19;
/// The largest IDR1.SIDSIZE.
pub const MAX_SIDSIZE: u8 = 32;
/// The largest IDR1.SSIDSIZE.
pub const MAX_SSIDSIZE: u8 = 20;
/// The largest output size the entries this crate makes can use, whatever IDR5.OAS says:
/// 52 bits, the most a VMSAv8-64 descriptor holds (with the 64 KiB granule, or DS). IDR5.OAS
/// 0b111 (56 bits, IHI 0070 6.3.6, SMMUv3.4 and later) is only reachable through VMSAv9-128
/// descriptors (it implies IDR5.D128 = 1), which this crate does not make.
pub const MAX_USABLE_OAS: AddressSize = AddressSize::Bits52;
/// IDR5.OAS 0b111, in bits.
const OAS_0B111_BITS: u8 = 56;

/// What an SMMU can do, decoded from IDR0, IDR1, IDR3 and IDR5. Field names are the
/// architecture's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(clippy::struct_excessive_bools)] // One flag per architected feature bit.
pub struct Features {
    /// IDR0.S2P (bit 0): stage-2 translation.
    pub s2p: bool,
    /// IDR0.S1P (bit 1): stage-1 translation.
    pub s1p: bool,
    /// IDR0.TTF (bits 3:2): table formats.
    pub ttf: TranslationTableFormats,
    /// IDR0.COHACC (bit 4): coherent access to tables, queues and memory.
    pub cohacc: bool,
    /// IDR0.BTM (bit 5): broadcast TLB maintenance.
    pub btm: bool,
    /// IDR0.HTTU (bits 7:6): hardware access/dirty update.
    pub httu: Httu,
    /// IDR0.HYP (bit 9): EL2 (hypervisor) stage-1 contexts.
    pub hyp: bool,
    /// IDR0.ATS (bit 10): PCIe ATS.
    pub ats: bool,
    /// IDR0.ASID16 (bit 12): 16-bit ASIDs.
    pub asid16: bool,
    /// IDR0.MSI (bit 13): message-signalled interrupts.
    pub msi: bool,
    /// IDR0.SEV (bit 14): the SMMU can send events to the PE (WFE wake-up).
    pub sev: bool,
    /// IDR0.PRI (bit 16): PCIe PRI page requests.
    pub pri: bool,
    /// IDR0.VMID16 (bit 18): 16-bit VMIDs.
    pub vmid16: bool,
    /// IDR0.CD2L (bit 19): two-level CD tables.
    pub cd2l: bool,
    /// IDR0.TTENDIAN (bits 22:21).
    pub ttendian: TableEndianness,
    /// IDR0.STALL_MODEL (bits 25:24).
    pub stall_model: StallModel,
    /// IDR0.TERM_MODEL (bit 26).
    pub term_model: TermModel,
    /// IDR0.ST_LEVEL (bits 28:27): the stream table formats supported (two-level implies linear
    /// too).
    pub st_level: StreamTableFormat,
    /// IDR1.SIDSIZE (bits 5:0): stream ID width in bits.
    pub sidsize: u8,
    /// IDR1.SSIDSIZE (bits 10:6): substream ID width in bits (0: no substreams).
    pub ssidsize: u8,
    /// IDR1.PRIQS (bits 15:11): log2 of the largest PRI queue; 0 without IDR0.PRI, where the
    /// field is IMPLEMENTATION SPECIFIC (IHI 0070, 6.3.2).
    pub priqs: u8,
    /// IDR1.EVTQS (bits 20:16): log2 of the largest event queue.
    pub evtqs: u8,
    /// IDR1.CMDQS (bits 25:21): log2 of the largest command queue.
    pub cmdqs: u8,
    /// IDR1.ATTR_TYPES_OVR (bit 27): incoming memory attributes can be overridden.
    pub attr_types_ovr: bool,
    /// IDR3.HAD (bit 2): hierarchical attribute disables.
    pub had: bool,
    /// IDR3.FWB (bit 8): stage-2 forced write-back.
    pub fwb: bool,
    /// IDR3.RIL (bit 10): range invalidation (TLBI NUM/SCALE).
    pub ril: bool,
    /// IDR3.BBML (bits 12:11).
    pub bbml: Bbml,
    /// IDR5.OAS (bits 2:0): the output address size as this crate uses it, capped at
    /// [`MAX_USABLE_OAS`]. STE.S2PS and CD.IPS are capped to OAS by the SMMU
    /// (IHI 0070 5.2, 5.4: eff_S2PS = MIN(S2PS, OAS)), so entries made within this size are
    /// right on any SMMU reporting at least as much.
    pub oas: AddressSize,
    /// IDR5.OAS as the SMMU reports it, in bits: 32 to 52, or 56 for 0b111.
    pub reported_oas_bits: u8,
    /// IDR5.GRAN4K (bit 4).
    pub gran4k: bool,
    /// IDR5.GRAN16K (bit 5).
    pub gran16k: bool,
    /// IDR5.GRAN64K (bit 6).
    pub gran64k: bool,
    /// IDR5.VAX (bits 11:10): stage-1 input size. Informational: this crate makes CDs with
    /// T0SZ 16..=39 (at most 48-bit VAs), which every value allows.
    pub vax: Vax,
    /// IDR5.STALL_MAX (bits 31:16): the most stalled transactions the SMMU holds at once.
    pub stall_max: u16,
}

impl Features {
    /// Decodes the ID registers, rejecting any undefined encoding and fixed (preset) table or
    /// queue bases.
    ///
    /// # Errors
    ///
    /// The [`IdError`] variant naming the first such field found, in register order.
    pub const fn decode(id: &IdRegisters) -> Result<Features, IdError> {
        let idr0 = id.idr0 as u64;
        let idr1 = id.idr1 as u64;
        let idr3 = id.idr3 as u64;
        let idr5 = id.idr5 as u64;

        let s2p = bits::bit(idr0, 0);
        let s1p = bits::bit(idr0, 1);
        if !s1p && !s2p {
            return Err(IdError::NoTranslationStage);
        }
        let ttf = match bits::get(idr0, 3, 2) {
            1 => TranslationTableFormats::AArch32,
            2 => TranslationTableFormats::AArch64,
            3 => TranslationTableFormats::AArch32AndAArch64,
            _ => return Err(IdError::ReservedTtf),
        };
        let httu = match bits::get(idr0, 7, 6) {
            0 => Httu::None,
            1 => Httu::AccessFlag,
            2 => Httu::AccessFlagAndDirty,
            _ => return Err(IdError::ReservedHttu),
        };
        let ttendian = match bits::get(idr0, 22, 21) {
            0 => TableEndianness::Mixed,
            2 => TableEndianness::Little,
            3 => TableEndianness::Big,
            _ => return Err(IdError::ReservedTtendian),
        };
        let stall_model = match bits::get(idr0, 25, 24) {
            0 => StallModel::StallAndTerminate,
            1 => StallModel::TerminateOnly,
            2 => StallModel::StallForced,
            _ => return Err(IdError::ReservedStallModel),
        };
        let term_model = if bits::bit(idr0, 26) {
            TermModel::AbortOnly
        } else {
            TermModel::AbortOrRazWi
        };
        let st_level_raw = bits::get_u8(idr0, 28, 27);
        let st_level = match StreamTableFormat::from_encoding(st_level_raw) {
            Some(f) => f,
            None => return Err(IdError::ReservedStLevel(st_level_raw)),
        };

        let tables_preset = bits::bit(idr1, 30);
        let queues_preset = bits::bit(idr1, 29);
        let rel = bits::bit(idr1, 28);
        if tables_preset || queues_preset || rel {
            return Err(IdError::PresetBaseAddresses {
                tables_preset,
                queues_preset,
                rel,
            });
        }
        let sidsize = bits::get_u8(idr1, 5, 0);
        if sidsize > MAX_SIDSIZE {
            return Err(IdError::SidSizeTooLarge(sidsize));
        }
        let ssidsize = bits::get_u8(idr1, 10, 6);
        if ssidsize > MAX_SSIDSIZE {
            return Err(IdError::SsidSizeTooLarge(ssidsize));
        }
        // IHI 0070 6.3.2: without IDR0.PRI, PRIQS is IMPLEMENTATION SPECIFIC; it sizes nothing.
        let pri = bits::bit(idr0, 16);
        let priqs = if pri { bits::get_u8(idr1, 15, 11) } else { 0 };
        let evtqs = bits::get_u8(idr1, 20, 16);
        let cmdqs = bits::get_u8(idr1, 25, 21);
        // Checked in queue order so the error names the first offender deterministically.
        if cmdqs > MAX_QUEUE_LOG2SIZE {
            return Err(IdError::QueueTooLarge {
                queue: QueueName::Command,
                log2size: cmdqs,
            });
        }
        if evtqs > MAX_QUEUE_LOG2SIZE {
            return Err(IdError::QueueTooLarge {
                queue: QueueName::Event,
                log2size: evtqs,
            });
        }
        if priqs > MAX_QUEUE_LOG2SIZE {
            return Err(IdError::QueueTooLarge {
                queue: QueueName::PageRequest,
                log2size: priqs,
            });
        }

        let bbml = match bits::get(idr3, 12, 11) {
            0 => Bbml::Level0,
            1 => Bbml::Level1,
            2 => Bbml::Level2,
            _ => return Err(IdError::ReservedBbml),
        };

        // IHI 0070 6.3.6: every OAS encoding is defined; 0b111 (56 bits) is only usable
        // with descriptors this crate does not make, so it is used as the largest one it does.
        let (oas, reported_oas_bits) = match AddressSize::from_encoding(bits::get_u8(idr5, 2, 0)) {
            Some(oas) => (oas, oas.bits()),
            None => (MAX_USABLE_OAS, OAS_0B111_BITS),
        };
        let vax = match bits::get_u8(idr5, 11, 10) {
            0 => Vax::Va48,
            1 => Vax::Va52,
            2 => Vax::Va56,
            other => return Err(IdError::ReservedVax(other)),
        };

        Ok(Features {
            s2p,
            s1p,
            ttf,
            cohacc: bits::bit(idr0, 4),
            btm: bits::bit(idr0, 5),
            httu,
            hyp: bits::bit(idr0, 9),
            ats: bits::bit(idr0, 10),
            asid16: bits::bit(idr0, 12),
            msi: bits::bit(idr0, 13),
            sev: bits::bit(idr0, 14),
            pri,
            vmid16: bits::bit(idr0, 18),
            cd2l: bits::bit(idr0, 19),
            ttendian,
            stall_model,
            term_model,
            st_level,
            sidsize,
            ssidsize,
            priqs,
            evtqs,
            cmdqs,
            attr_types_ovr: bits::bit(idr1, 27),
            had: bits::bit(idr3, 2),
            fwb: bits::bit(idr3, 8),
            ril: bits::bit(idr3, 10),
            bbml,
            oas,
            reported_oas_bits,
            gran4k: bits::bit(idr5, 4),
            gran16k: bits::bit(idr5, 5),
            gran64k: bits::bit(idr5, 6),
            vax,
            stall_max: bits::get_u16(idr5, 31, 16),
        })
    }

    /// The ASID width in bits (8 or 16).
    #[must_use]
    pub const fn asid_bits(&self) -> u8 {
        if self.asid16 { 16 } else { 8 }
    }

    /// The VMID width in bits (8 or 16).
    #[must_use]
    pub const fn vmid_bits(&self) -> u8 {
        if self.vmid16 { 16 } else { 8 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu() -> Features {
        match Features::decode(&IdRegisters::QEMU_VIRT) {
            Ok(f) => f,
            Err(e) => unreachable!("QEMU's ID registers must decode: {e:?}"),
        }
    }

    #[test]
    fn qemu_virt_id_registers_decode_to_the_documented_features() {
        let f = qemu();
        assert!(f.s1p && f.s2p, "QEMU virt is always nested-capable");
        assert_eq!(f.ttf, TranslationTableFormats::AArch64);
        assert!(f.cohacc);
        assert!(!f.btm);
        assert_eq!(f.httu, Httu::None);
        assert!(!f.hyp);
        assert!(!f.ats && !f.pri && !f.msi && !f.sev);
        assert!(f.asid16 && f.vmid16);
        assert!(!f.cd2l);
        assert_eq!(f.ttendian, TableEndianness::Little);
        assert_eq!(f.stall_model, StallModel::TerminateOnly);
        assert_eq!(f.term_model, TermModel::AbortOnly);
        assert_eq!(f.st_level, StreamTableFormat::TwoLevel);
        assert_eq!(f.sidsize, 16);
        assert_eq!(f.ssidsize, 0);
        assert_eq!(f.priqs, 0);
        assert_eq!(f.cmdqs, 19);
        assert_eq!(f.evtqs, 19);
        assert!(!f.attr_types_ovr);
        assert!(f.ril);
        assert!(f.had, "IDR3 bit 2 is set in 0x1414");
        assert!(!f.fwb);
        assert_eq!(f.bbml, Bbml::Level2, "IDR3 bits 12:11 of 0x1414 are 0b10");
        assert_eq!(f.oas, AddressSize::Bits44);
        assert_eq!(f.oas.bits(), 44);
        assert_eq!(f.reported_oas_bits, 44);
        assert!(f.gran4k && f.gran16k && f.gran64k);
        assert_eq!(f.vax, Vax::Va48);
        assert_eq!(f.stall_max, 0);
        assert_eq!(f.asid_bits(), 16);
        assert_eq!(f.vmid_bits(), 16);
    }

    fn with(idr0: u32, idr1: u32, idr3: u32, idr5: u32) -> Result<Features, IdError> {
        Features::decode(&IdRegisters {
            idr0,
            idr1,
            idr3,
            idr5,
        })
    }

    const Q: IdRegisters = IdRegisters::QEMU_VIRT;

    #[test]
    fn single_bit_idr0_features_sit_at_their_architected_positions() {
        let base = Q.idr0 & !(1 << 5 | 1 << 9 | 1 << 10 | 1 << 13 | 1 << 14 | 1 << 16 | 1 << 19);
        type Getter = fn(&Features) -> bool;
        let cases: [(u32, Getter); 7] = [
            (5, |f| f.btm),
            (9, |f| f.hyp),
            (10, |f| f.ats),
            (13, |f| f.msi),
            (14, |f| f.sev),
            (16, |f| f.pri),
            (19, |f| f.cd2l),
        ];
        for (bit, get) in cases {
            let off = with(base, Q.idr1, Q.idr3, Q.idr5).map(|f| get(&f));
            let on = with(base | 1 << bit, Q.idr1, Q.idr3, Q.idr5).map(|f| get(&f));
            assert_eq!((off, on), (Ok(false), Ok(true)), "IDR0 bit {bit}");
        }
    }

    #[test]
    fn every_reserved_id_encoding_is_rejected_with_its_own_error() {
        let idr0 = |clear: u32, set: u32| (Q.idr0 & !clear) | set;
        let cases = [
            (
                with(idr0(0b11, 0), Q.idr1, Q.idr3, Q.idr5),
                IdError::NoTranslationStage,
            ),
            (
                with(idr0(0b1100, 0), Q.idr1, Q.idr3, Q.idr5),
                IdError::ReservedTtf,
            ),
            (
                with(idr0(0, 0b11 << 6), Q.idr1, Q.idr3, Q.idr5),
                IdError::ReservedHttu,
            ),
            (
                with(idr0(0b11 << 21, 1 << 21), Q.idr1, Q.idr3, Q.idr5),
                IdError::ReservedTtendian,
            ),
            (
                with(idr0(0, 0b11 << 24), Q.idr1, Q.idr3, Q.idr5),
                IdError::ReservedStallModel,
            ),
            (
                with(idr0(0b11 << 27, 2 << 27), Q.idr1, Q.idr3, Q.idr5),
                IdError::ReservedStLevel(2),
            ),
            (
                with(idr0(0, 3 << 27), Q.idr1, Q.idr3, Q.idr5),
                IdError::ReservedStLevel(3),
            ),
            (
                with(Q.idr0, (Q.idr1 & !0x3f) | 33, Q.idr3, Q.idr5),
                IdError::SidSizeTooLarge(33),
            ),
            (
                with(Q.idr0, Q.idr1 | 21 << 6, Q.idr3, Q.idr5),
                IdError::SsidSizeTooLarge(21),
            ),
            (
                with(Q.idr0, (Q.idr1 & !(0x1f << 21)) | 20 << 21, Q.idr3, Q.idr5),
                IdError::QueueTooLarge {
                    queue: QueueName::Command,
                    log2size: 20,
                },
            ),
            (
                with(Q.idr0, (Q.idr1 & !(0x1f << 16)) | 31 << 16, Q.idr3, Q.idr5),
                IdError::QueueTooLarge {
                    queue: QueueName::Event,
                    log2size: 31,
                },
            ),
            (
                with(idr0(0, 1 << 16), Q.idr1 | 20 << 11, Q.idr3, Q.idr5),
                IdError::QueueTooLarge {
                    queue: QueueName::PageRequest,
                    log2size: 20,
                },
            ),
            (
                with(Q.idr0, Q.idr1, Q.idr3 | 0b11 << 11, Q.idr5),
                IdError::ReservedBbml,
            ),
            (
                with(Q.idr0, Q.idr1, Q.idr3, Q.idr5 | 3 << 10),
                IdError::ReservedVax(3),
            ),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, Err(want), "case {i}");
        }
    }

    /// IHI 0070 6.3.2: TABLES_PRESET (30), QUEUES_PRESET (29) and REL (28) say the stream table
    /// and queue bases are fixed by the implementation, so the driver cannot place them.
    #[test]
    fn preset_or_relative_base_addresses_are_refused() {
        let refused = |tables_preset, queues_preset, rel| {
            Err(IdError::PresetBaseAddresses {
                tables_preset,
                queues_preset,
                rel,
            })
        };
        let cases = [
            (1 << 30, refused(true, false, false)),
            (1 << 29, refused(false, true, false)),
            (1 << 28, refused(false, false, true)),
            (0b111 << 28, refused(true, true, true)),
        ];
        for (bits, want) in cases {
            let f = with(Q.idr0, Q.idr1 | bits, Q.idr3, Q.idr5);
            assert_eq!(f.map(|_| ()), want, "IDR1 {bits:#x}");
        }
    }

    /// IHI 0070 6.3.2: "If SMMU_IDR0.PRI == 0, [PRIQS] has an IMPLEMENTATION SPECIFIC value."
    #[test]
    fn priqs_is_checked_only_where_the_smmu_has_pri() {
        let f = with(Q.idr0, Q.idr1 | 31 << 11, Q.idr3, Q.idr5);
        assert_eq!(f.map(|f| (f.pri, f.priqs)), Ok((false, 0)));
    }

    /// IHI 0070 6.3.6: every OAS encoding is defined. 0b111 is 56 bits (Reserved only up to
    /// SMMUv3.3) and is used as 52, the most the VMSAv8-64 entries this crate makes can output.
    #[test]
    fn oas_decodes_every_encoding_and_is_used_up_to_52_bits() {
        for (enc, reported, used) in [
            (0, 32, 32),
            (1, 36, 36),
            (2, 40, 40),
            (3, 42, 42),
            (4, 44, 44),
            (5, 48, 48),
            (6, 52, 52),
            (7, 56, 52),
        ] {
            let f = with(Q.idr0, Q.idr1, Q.idr3, (Q.idr5 & !7) | enc);
            assert_eq!(
                f.map(|f| (f.reported_oas_bits, f.oas.bits())),
                Ok((reported, used)),
                "OAS {enc:#05b}"
            );
        }
    }

    /// IHI 0070 6.3.6: VAX 0b00, 0b01 and 0b10 are 48-, 52- and 56-bit VAs; only 0b11 is
    /// reserved.
    #[test]
    fn vax_decodes_48_52_and_56_bits_and_refuses_only_0b11() {
        let cases = [
            (0, Ok(Vax::Va48)),
            (1, Ok(Vax::Va52)),
            (2, Ok(Vax::Va56)),
            (3, Err(IdError::ReservedVax(3))),
        ];
        for (enc, want) in cases {
            let f = with(Q.idr0, Q.idr1, Q.idr3, Q.idr5 | enc << 10);
            assert_eq!(f.map(|f| f.vax), want, "VAX {enc:#04b}");
        }
    }

    #[test]
    fn linear_only_stream_table_and_other_enum_values_decode() {
        let f = with(Q.idr0 & !(3 << 27), Q.idr1, Q.idr3, Q.idr5);
        assert_eq!(f.map(|f| f.st_level), Ok(StreamTableFormat::Linear));
        let f = with(
            (Q.idr0 & !(3 << 24 | 3 << 6)) | 2 << 24 | 2 << 6,
            Q.idr1,
            Q.idr3,
            Q.idr5,
        );
        assert_eq!(
            f.map(|f| (f.stall_model, f.httu)),
            Ok((StallModel::StallForced, Httu::AccessFlagAndDirty))
        );
        let f = with(Q.idr0, Q.idr1, Q.idr3, Q.idr5 | 1 << 10 | 0xabcd << 16);
        assert_eq!(f.map(|f| (f.vax, f.stall_max)), Ok((Vax::Va52, 0xabcd)));
    }

    #[test]
    fn register_offsets_match_the_reference_sheet() {
        let expected: [(Register, u32, RegisterWidth); 10] = [
            (Register::Idr0, 0x00, RegisterWidth::Bits32),
            (Register::Idr5, 0x14, RegisterWidth::Bits32),
            (Register::Gbpa, 0x44, RegisterWidth::Bits32),
            (Register::GerrorIrqCfg0, 0x68, RegisterWidth::Bits64),
            (Register::StrtabBase, 0x80, RegisterWidth::Bits64),
            (Register::CmdqCons, 0x9C, RegisterWidth::Bits32),
            (Register::EvtqProd, 0x100A8, RegisterWidth::Bits32),
            (Register::EvtqCons, 0x100AC, RegisterWidth::Bits32),
            (Register::PriqProd, 0x100C8, RegisterWidth::Bits32),
            (Register::PriqIrqCfg2, 0xDC, RegisterWidth::Bits32),
        ];
        for (reg, off, width) in expected {
            assert_eq!(reg.offset().get(), off, "{}", reg.name());
            assert_eq!(reg.width(), width, "{}", reg.name());
        }
        assert!(Register::EvtqProd.offset().is_page1());
        assert!(!Register::EvtqBase.offset().is_page1());
    }

    #[test]
    fn every_register_is_found_by_its_own_offset_and_no_two_overlap() {
        for &reg in Register::ALL {
            assert_eq!(Register::from_offset(reg.offset()), Some(reg));
            let len = match reg.width() {
                RegisterWidth::Bits32 => 4,
                RegisterWidth::Bits64 => 8,
            };
            for &other in Register::ALL {
                if other != reg {
                    let o = other.offset().get();
                    let r = reg.offset().get();
                    assert!(
                        o < r || o >= r + len,
                        "{} overlaps {}",
                        other.name(),
                        reg.name()
                    );
                }
            }
        }
        assert_eq!(
            Register::from_offset(RegisterOffset::new(0x4)),
            Some(Register::Idr1)
        );
        assert_eq!(Register::from_offset(RegisterOffset::new(0x6)), None);
    }

    #[test]
    fn control_register_fields_sit_at_their_architected_bits() {
        assert_eq!(Cr0::default().with_smmuen(true).0, 1 << 0);
        assert_eq!(Cr0::default().with_priqen(true).0, 1 << 1);
        assert_eq!(Cr0::default().with_evtqen(true).0, 1 << 2);
        assert_eq!(Cr0::default().with_cmdqen(true).0, 1 << 3);
        assert_eq!(Cr0::default().with_atschk(true).0, 1 << 4);
        let cr1 = Cr1::default()
            .with_queue_ic(1)
            .with_queue_oc(1)
            .with_queue_sh(3)
            .with_table_ic(1)
            .with_table_oc(1)
            .with_table_sh(3);
        assert_eq!(cr1.0, 0b11_01_01_11_01_01);
        assert_eq!(
            Cr2::default()
                .with_e2h(true)
                .with_recinvsid(true)
                .with_ptm(true)
                .0,
            0b111
        );
        assert_eq!(Gbpa::default().with_abort(true).0, 1 << 20);
        assert_eq!(Gbpa::default().with_update(true).0, 1 << 31);
        assert_eq!(Gbpa(0x1000).shcfg(), 1);
        assert_eq!(
            IrqCtrl::default()
                .with_gerror_irqen(true)
                .with_evtq_irqen(true)
                .0,
            0b101
        );
        assert_eq!(IrqCtrl::default().with_priq_irqen(true).0, 0b010);
        assert!(Statusr(1).dormant());
    }

    #[test]
    fn gerror_active_bits_are_the_difference_from_gerrorn() {
        let gerror = Gerror::default()
            .with_cmdq_err(true)
            .with_evtq_abt_err(true)
            .with_sfm_err(true);
        let gerrorn = Gerror::default().with_cmdq_err(true);
        let active = Gerror::active(gerror, gerrorn);
        assert!(!active.cmdq_err() && active.evtq_abt_err() && active.sfm_err());
        assert!(Gerror::active(gerror, gerror).is_clear());
        assert_eq!(Gerror(u32::MAX).0 & Gerror::DEFINED_BITS, 0x1FD);
        let all = Gerror::default()
            .with_priq_abt_err(true)
            .with_msi_cmdq_abt_err(true)
            .with_msi_evtq_abt_err(true)
            .with_msi_priq_abt_err(true)
            .with_msi_gerror_abt_err(true);
        assert_eq!(all.0, 0b1111_1000);
    }

    #[test]
    fn table_and_queue_base_registers_place_address_and_size() {
        let strtab = StrtabBase::default()
            .with_addr(PhysAddr(0x4_1234_5678_9fff))
            .with_ra(true);
        assert_eq!(strtab.0, 0x4000_0000_0000_0000 | 0x4_1234_5678_9fc0);
        assert_eq!(strtab.addr(), PhysAddr(0x4_1234_5678_9fc0));
        let cfg = StrtabBaseCfg::default()
            .with_log2size(16)
            .with_split(8)
            .with_fmt(StreamTableFormat::TwoLevel);
        assert_eq!(cfg.0, 16 | 8 << 6 | 1 << 16);
        assert_eq!(cfg.fmt(), Ok(StreamTableFormat::TwoLevel));
        assert_eq!(
            StrtabBaseCfg(2 << 16).fmt(),
            Err(RegisterError::ReservedStreamTableFormat(2))
        );
        let q = QueueBase::default()
            .with_addr(PhysAddr(0x8000_0020))
            .with_log2size(19)
            .with_allocate_hint(true);
        assert_eq!(q.0, 1 << 62 | 0x8000_0020 | 19);
        assert_eq!(
            (q.addr(), q.log2size(), q.allocate_hint()),
            (PhysAddr(0x8000_0020), 19, true)
        );
        let irq = IrqCfg0::default().with_addr(PhysAddr(0x0800_0043));
        assert_eq!(irq.addr(), PhysAddr(0x0800_0040));
        let cfg2 = IrqCfg2::default().with_memattr(0xf).with_sh(3);
        assert_eq!(cfg2.0, 0x3f);
    }

    #[test]
    fn cmdq_cons_err_decodes_the_four_architected_values() {
        let cases = [
            (0, CommandError::None),
            (1, CommandError::Illegal),
            (2, CommandError::Abort),
            (3, CommandError::AtcInvalidationSync),
        ];
        for (raw, want) in cases {
            let cons = CmdqCons(raw << 24 | 0x1_0005);
            assert_eq!(cons.err(), Ok(want));
            assert_eq!(cons.pointer_bits(), 0x1_0005);
            assert_eq!(CmdqCons(0x1_0005).with_err(want), cons);
        }
        assert_eq!(
            CmdqCons(4 << 24).err(),
            Err(RegisterError::UnknownCommandError(4))
        );
    }

    #[test]
    fn identification_registers_split_into_their_fields() {
        let iidr = Iidr(0x4b12_343b);
        assert_eq!(
            (
                iidr.implementer(),
                iidr.revision(),
                iidr.variant(),
                iidr.product_id()
            ),
            (0x43b, 3, 2, 0x4b1)
        );
        let aidr = Aidr(0x02);
        assert_eq!((aidr.arch_major_rev(), aidr.arch_minor_rev()), (0, 2));
    }
}
