//! What the vSMMU advertises: ID register values derived from the physical SMMU and from what
//! the shadow can honour.
//!
//! The rules, each with its reason:
//!
//! - **Stage 1 only** (S1P=1, S2P=0, no HYP, VMID16=0): the guest's stage 1 is nested over the
//!   hypervisor's stage 2, which the guest neither sees nor configures.
//! - **Both stream table formats** (ST_LEVEL=2-level, which implies linear).
//! - **SSIDSIZE** is the physical one capped by the shadow CD table of a stream
//!   ([`crate::config::MAX_SHADOW_CDS_PER_STREAM`], and the memory given); CD2L only with
//!   substreams (the shadow flattens a two-level guest table into a linear one).
//! - **ATS** only if the physical SMMU has it and `hyp` forwards it. **PRI** only with ATS
//!   forwarded (a page request's answer is acted on by ATS) and a physical PRI queue in use
//!   ([`crate::interfaces::physical::PhysicalSmmu::pri_queue_position`]); PRIQS is the
//!   physical queue's (a guest grants its devices credits from it, and the physical queue is
//!   what those credits must fit: `hyp` is expected to trap credit writes, as IHI 0070 chapter
//!   8 advises). With PRI, IDR3.PPS = 1: every automatic response of the vSMMU carries the
//!   request's PASID. **Stall never** (STALL_MODEL=terminate only); **HTTU never** (the shadow
//!   CD would let a device set dirty bits in tables the guest did not ask for).
//! - **MSI with coherent access** (MSI=1, COHACC=1): Linux then completes CMD_SYNC by polling
//!   memory (MSIPOLL), the hypervisor performs the guest's sync MSI write into guest RAM, and a
//!   sync costs the guest no second trap. **SEV=1**: CMD_SYNC's SIG_SEV is honoured.
//! - **TERM_MODEL=1** (terminated transactions always abort; CD.A must be 1), as the shadow's
//!   physical CDs need anyway on SMMUs that only abort.
//! - **OAS** is the VM's IPA size (its "physical" address space), rounded down to an encoding.
//! - Granules, VAX, RIL, ASID16 and table endianness are the physical SMMU's: the guest's
//!   stage-1 tables and its range invalidations reach the physical SMMU as they are.
//! - No ATTR_TYPES_OVR / ATTR_PERMS_OVR: the STE attribute overrides are RES0 to the guest.

use smmu::registers::{Features, TableEndianness, Vax};
use smmu::translation::AddressSize;

/// The decoded form of what the vSMMU advertises, for the validators.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(clippy::struct_excessive_bools)] // One flag per advertised feature.
pub struct VirtualFeatures {
    /// IDR1.SIDSIZE.
    pub sid_bits: u8,
    /// IDR1.SSIDSIZE.
    pub ssid_bits: u8,
    /// IDR1.CMDQS.
    pub cmdqs: u8,
    /// IDR1.EVTQS.
    pub evtqs: u8,
    /// IDR0.ASID16.
    pub asid16: bool,
    /// IDR0.ATS.
    pub ats: bool,
    /// IDR0.PRI (and IDR3.PPS).
    pub pri: bool,
    /// IDR1.PRIQS (0 without PRI).
    pub priqs: u8,
    /// IDR3.RIL.
    pub ril: bool,
    /// IDR0.CD2L.
    pub cd2l: bool,
    /// IDR0.TTENDIAN.
    pub ttendian: TableEndianness,
    /// IDR5.OAS: the VM's IPA size.
    pub oas: AddressSize,
    /// IDR5.GRAN4K.
    pub gran4k: bool,
    /// IDR5.GRAN16K.
    pub gran16k: bool,
    /// IDR5.GRAN64K.
    pub gran64k: bool,
    /// IDR5.VAX.
    pub vax: Vax,
}

/// The largest queue size the vSMMU advertises: the architectural maximum. The consumer's
/// per-trap budget, not the queue size, bounds the work a trap does.
pub const MAX_VIRTUAL_QUEUE_LOG2: u8 = 19;

/// The AIDR value: SMMUv3.1. The vSMMU implements the v3.1 rules it relies on (TxSZ range
/// checks make a CD ILLEGAL) and picks, for each CONSTRAINED UNPREDICTABLE choice, the one
/// v3.2 mandates (guarded register writes while enabled are ignored).
pub const AIDR: u32 = 0x01;

impl VirtualFeatures {
    /// The features for a VM with `ipa_bits` of IPA space, `sid_bits` of virtual stream IDs and
    /// `ssid_bits` of substreams the shadow can hold, over a physical SMMU with `physical`.
    #[must_use]
    pub fn derive(
        physical: &Features,
        ipa_bits: u8,
        sid_bits: u8,
        ssid_bits: u8,
        forward_ats: bool,
    ) -> Self {
        let oas = AddressSize::ALL
            .iter()
            .copied()
            .filter(|size| size.bits() <= ipa_bits)
            .max()
            .unwrap_or(AddressSize::Bits32);
        let ssid_bits = ssid_bits.min(physical.ssidsize);
        Self {
            sid_bits,
            ssid_bits,
            cmdqs: MAX_VIRTUAL_QUEUE_LOG2,
            evtqs: MAX_VIRTUAL_QUEUE_LOG2,
            asid16: physical.asid16,
            ats: forward_ats && physical.ats,
            pri: false,
            priqs: 0,
            ril: physical.ril,
            cd2l: ssid_bits > 0,
            ttendian: physical.ttendian,
            oas,
            gran4k: physical.gran4k,
            gran16k: physical.gran16k,
            gran64k: physical.gran64k,
            // 56-bit VAs need VMSAv9-128 tables, which the shadow does not make: offer 52 bits
            // at most.
            vax: match physical.vax {
                Vax::Va48 => Vax::Va48,
                Vax::Va52 | Vax::Va56 => Vax::Va52,
            },
        }
    }

    /// The same features with PRI advertised if `pri_queue` (the physical SMMU has a PRI queue
    /// in use) and the rules above allow it.
    #[must_use]
    pub fn with_pri(self, physical: &Features, pri_queue: bool) -> Self {
        let pri = pri_queue && physical.pri && self.ats;
        Self {
            pri,
            priqs: if pri {
                physical.priqs.min(MAX_VIRTUAL_QUEUE_LOG2)
            } else {
                0
            },
            ..self
        }
    }

    /// SMMU_IDR0.
    #[must_use]
    pub fn idr0(&self) -> u32 {
        let ttendian = match self.ttendian {
            TableEndianness::Mixed => 0,
            TableEndianness::Little => 2,
            TableEndianness::Big => 3,
        };
        1 << 1 // S1P
            | 2 << 2 // TTF: AArch64
            | 1 << 4 // COHACC
            | u32::from(self.ats) << 10
            | u32::from(self.asid16) << 12
            | u32::from(self.pri) << 16
            | 1 << 13 // MSI
            | 1 << 14 // SEV
            | u32::from(self.cd2l) << 19
            | ttendian << 21
            | 1 << 24 // STALL_MODEL: terminate only
            | 1 << 26 // TERM_MODEL: abort only
            | 1 << 27 // ST_LEVEL: 2-level (and linear)
    }

    /// SMMU_IDR1.
    #[must_use]
    pub fn idr1(&self) -> u32 {
        u32::from(self.sid_bits & 0x3f)
            | u32::from(self.ssid_bits & 0x1f) << 6
            | u32::from(self.priqs & 0x1f) << 11
            | u32::from(self.evtqs & 0x1f) << 16
            | u32::from(self.cmdqs & 0x1f) << 21
    }

    /// SMMU_IDR3.
    #[must_use]
    pub fn idr3(&self) -> u32 {
        u32::from(self.pri) << 5 | u32::from(self.ril) << 10
    }

    /// SMMU_IDR5.
    #[must_use]
    pub fn idr5(&self) -> u32 {
        let vax = match self.vax {
            Vax::Va48 => 0,
            Vax::Va52 => 1,
            Vax::Va56 => 2,
        };
        u32::from(self.oas.encoding())
            | u32::from(self.gran4k) << 4
            | u32::from(self.gran16k) << 5
            | u32::from(self.gran64k) << 6
            | vax << 10
    }

    /// Whether `granule` is one the vSMMU advertises.
    #[must_use]
    pub fn supports_granule(&self, granule: smmu::translation::Granule) -> bool {
        use smmu::translation::Granule;
        match granule {
            Granule::Size4K => self.gran4k,
            Granule::Size16K => self.gran16k,
            Granule::Size64K => self.gran64k,
        }
    }
}
