//! What the modelled SMMU implements, and how it resolves the choices the architecture leaves
//! to an implementation.
//!
//! This module owns [`Features`] (encoded into the ID registers the driver probes, and read by
//! the rest of the model) and [`ModelConfig`] (features plus the IMPLEMENTATION DEFINED and
//! CONSTRAINED UNPREDICTABLE choices). Two presets: [`ModelConfig::qemu_virt`] (QEMU `virt`'s
//! ID registers: stage 1 and 2, no substreams, ATS, PRI, MSI or stall) and
//! [`ModelConfig::full`] (everything this model implements).

/// IDR0.STALL_MODEL.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StallSupport {
    /// 0b00: stall and terminate models both supported.
    StallAndTerminate,
    /// 0b01: terminate only.
    TerminateOnly,
    /// 0b10: stall forced.
    StallForced,
}

impl StallSupport {
    const fn encoding(self) -> u32 {
        match self {
            Self::StallAndTerminate => 0,
            Self::TerminateOnly => 1,
            Self::StallForced => 2,
        }
    }
}

/// What the modelled SMMU implements. Field names follow the ID registers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(clippy::struct_excessive_bools)] // One flag per ID-register bit.
pub struct Features {
    /// IDR0.S1P.
    pub s1p: bool,
    /// IDR0.S2P.
    pub s2p: bool,
    /// IDR0.COHACC.
    pub cohacc: bool,
    /// IDR0.HYP: EL2 StreamWorlds and the TLBI_EL2_* commands.
    pub hyp: bool,
    /// IDR0.ATS: ATS translation requests, translated traffic and CMD_ATC_INV.
    pub ats: bool,
    /// IDR0.NS1ATS: split-stage ATS (STE.EATS=0b10) is *not* supported.
    pub ns1ats: bool,
    /// IDR0.ASID16.
    pub asid16: bool,
    /// IDR0.MSI: MSIs for the queues, GERROR and CMD_SYNC.
    pub msi: bool,
    /// IDR0.SEV: CMD_SYNC with CS=SEV sends an event.
    pub sev: bool,
    /// IDR0.PRI: the PRI queue and CMD_PRI_RESP.
    pub pri: bool,
    /// IDR0.VMID16.
    pub vmid16: bool,
    /// IDR0.CD2L: two-level CD tables.
    pub cd2l: bool,
    /// IDR0.STALL_MODEL.
    pub stall_model: StallSupport,
    /// IDR0.TERM_MODEL: terminated transactions always abort (CD.A must be 1).
    pub term_model_abort_only: bool,
    /// IDR0.ST_LEVEL: two-level stream tables (linear ones are always supported).
    pub two_level_stream_table: bool,
    /// IDR1.SIDSIZE.
    pub sidsize: u8,
    /// IDR1.SSIDSIZE (0: no substreams).
    pub ssidsize: u8,
    /// IDR1.PRIQS.
    pub priqs: u8,
    /// IDR1.EVTQS.
    pub evtqs: u8,
    /// IDR1.CMDQS.
    pub cmdqs: u8,
    /// IDR3.HAD: hierarchical attribute disables in the CD.
    pub had: bool,
    /// IDR3.XNX: stage-2 XN is two bits (EL0/EL1 execute-never separately).
    pub xnx: bool,
    /// IDR3.RIL: range invalidation and TTL hints.
    pub ril: bool,
    /// IDR3.PPS: an overflow auto-response always carries the request's PASID.
    pub pps: bool,
    /// IDR3.BBML, raw (the model does not act on it).
    pub bbml: u8,
    /// IDR5.OAS encoding (0: 32 bits ... 6: 52 bits).
    pub oas: u8,
    /// IDR5.GRAN4K.
    pub gran4k: bool,
    /// IDR5.GRAN16K.
    pub gran16k: bool,
    /// IDR5.GRAN64K.
    pub gran64k: bool,
    /// IDR5.STALL_MAX: the most transactions the model holds stalled at once.
    pub stall_max: u16,
}

/// The output address size in bits of an OAS/IPS/PS encoding (7 reads as 52).
#[must_use]
pub const fn address_size_bits(encoding: u8) -> u8 {
    match encoding {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

impl Features {
    /// QEMU `virt` (QEMU 10.0, `iommu=smmuv3`): IDR0=0x0d44101b, IDR1=0x02730010, IDR3=0x1414,
    /// IDR5=0x74.
    pub const QEMU_VIRT: Self = Self {
        s1p: true,
        s2p: true,
        cohacc: true,
        hyp: false,
        ats: false,
        ns1ats: false,
        asid16: true,
        msi: false,
        sev: false,
        pri: false,
        vmid16: true,
        cd2l: false,
        stall_model: StallSupport::TerminateOnly,
        term_model_abort_only: true,
        two_level_stream_table: true,
        sidsize: 16,
        ssidsize: 0,
        priqs: 0,
        evtqs: 19,
        cmdqs: 19,
        had: true,
        xnx: true,
        ril: true,
        pps: false,
        bbml: 2,
        oas: 4,
        gran4k: true,
        gran16k: true,
        gran64k: true,
        stall_max: 0,
    };

    /// Everything the model implements: QEMU's set plus EL2 contexts, ATS (full, not
    /// split-stage), PRI, MSI, SEV, 20-bit substreams with two-level CD tables, and the stall
    /// model (with RAZ/WI termination).
    pub const FULL: Self = Self {
        hyp: true,
        ats: true,
        ns1ats: true,
        msi: true,
        sev: true,
        pri: true,
        cd2l: true,
        stall_model: StallSupport::StallAndTerminate,
        term_model_abort_only: false,
        ssidsize: 20,
        priqs: 19,
        stall_max: 32,
        ..Self::QEMU_VIRT
    };

    /// SMMU_IDR0.
    #[must_use]
    pub const fn idr0(&self) -> u32 {
        let ttf_aarch64 = 2 << 2;
        let ttendian_little = 2 << 21;
        (self.s2p as u32)
            | (self.s1p as u32) << 1
            | ttf_aarch64
            | (self.cohacc as u32) << 4
            | (self.hyp as u32) << 9
            | (self.ats as u32) << 10
            | (self.ns1ats as u32) << 11
            | (self.asid16 as u32) << 12
            | (self.msi as u32) << 13
            | (self.sev as u32) << 14
            | (self.pri as u32) << 16
            | (self.vmid16 as u32) << 18
            | (self.cd2l as u32) << 19
            | ttendian_little
            | self.stall_model.encoding() << 24
            | (self.term_model_abort_only as u32) << 26
            | (self.two_level_stream_table as u32) << 27
    }

    /// SMMU_IDR1.
    #[must_use]
    pub const fn idr1(&self) -> u32 {
        (self.sidsize as u32 & 0x3f)
            | (self.ssidsize as u32 & 0x1f) << 6
            | (self.priqs as u32 & 0x1f) << 11
            | (self.evtqs as u32 & 0x1f) << 16
            | (self.cmdqs as u32 & 0x1f) << 21
    }

    /// SMMU_IDR3.
    #[must_use]
    pub const fn idr3(&self) -> u32 {
        (self.had as u32) << 2
            | (self.xnx as u32) << 4
            | (self.pps as u32) << 5
            | (self.ril as u32) << 10
            | (self.bbml as u32 & 3) << 11
    }

    /// SMMU_IDR5.
    #[must_use]
    pub const fn idr5(&self) -> u32 {
        (self.oas as u32 & 7)
            | (self.gran4k as u32) << 4
            | (self.gran16k as u32) << 5
            | (self.gran64k as u32) << 6
            | (self.stall_max as u32) << 16
    }

    /// The output address size in bits.
    #[must_use]
    pub const fn oas_bits(&self) -> u8 {
        address_size_bits(self.oas)
    }

    /// Whether the granule of `shift` (12, 14 or 16) is implemented.
    #[must_use]
    pub const fn granule_supported(&self, shift: u32) -> bool {
        match shift {
            12 => self.gran4k,
            14 => self.gran16k,
            16 => self.gran64k,
            _ => false,
        }
    }

    /// Whether transactions can stall at all.
    #[must_use]
    pub const fn can_stall(&self) -> bool {
        !matches!(self.stall_model, StallSupport::TerminateOnly)
    }
}

/// What the model does with a non-zero reserved field in a command (IHI 0070 4.1.5 lets an
/// implementation do either).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReservedFieldPolicy {
    /// Treat the command as malformed: CERROR_ILL.
    Reject,
    /// Ignore the reserved bits.
    Ignore,
}

/// When invalidations (CFGI_*, TLBI_*, ATC_INV) take effect. The architecture guarantees
/// completion only at a later CMD_SYNC; an implementation may complete them earlier.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InvalidationTiming {
    /// At the next CMD_SYNC (the latest the architecture allows): a missing sync is observable.
    AtSync,
    /// As soon as the command is consumed.
    AtConsumption,
}

/// The model's configuration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ModelConfig {
    /// What is implemented.
    pub features: Features,
    /// Reserved command fields.
    pub reserved_fields: ReservedFieldPolicy,
    /// When invalidations complete.
    pub invalidation: InvalidationTiming,
    /// SMMU_AIDR (0x02: SMMUv3.2, the revision whose features the presets advertise).
    pub aidr: u32,
    /// SMMU_IIDR.
    pub iidr: u32,
}

impl ModelConfig {
    /// QEMU `virt`'s feature set, with the model's strict choices (reserved command fields
    /// rejected, invalidations completed only by CMD_SYNC).
    #[must_use]
    pub const fn qemu_virt() -> Self {
        Self {
            features: Features::QEMU_VIRT,
            reserved_fields: ReservedFieldPolicy::Reject,
            invalidation: InvalidationTiming::AtSync,
            aidr: 0x02,
            iidr: 0,
        }
    }

    /// Every feature the model implements, with the same strict choices.
    #[must_use]
    pub const fn full() -> Self {
        Self {
            features: Features::FULL,
            ..Self::qemu_virt()
        }
    }

    /// The same configuration with other features.
    #[must_use]
    pub const fn with_features(self, features: Features) -> Self {
        Self { features, ..self }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use smmu::registers::{Features as DriverFeatures, IdRegisters};

    #[test]
    fn the_qemu_preset_encodes_qemus_id_registers() {
        let f = Features::QEMU_VIRT;
        assert_eq!(
            IdRegisters {
                idr0: f.idr0(),
                idr1: f.idr1(),
                idr3: f.idr3(),
                idr5: f.idr5(),
            },
            IdRegisters::QEMU_VIRT
        );
    }

    #[test]
    fn the_full_preset_decodes_with_the_drivers_probe() {
        let f = Features::FULL;
        let ids = IdRegisters {
            idr0: f.idr0(),
            idr1: f.idr1(),
            idr3: f.idr3(),
            idr5: f.idr5(),
        };
        let decoded = DriverFeatures::decode(&ids).expect("the full preset is a valid SMMU");
        assert!(decoded.ats && decoded.pri && decoded.msi && decoded.sev && decoded.cd2l);
        assert_eq!(
            (decoded.ssidsize, decoded.priqs, decoded.stall_max),
            (20, 19, 32)
        );
    }
}
