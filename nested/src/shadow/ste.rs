//! Building a stream's physical STE from the configuration the guest asked for.
//!
//! | guest asks | physical STE |
//! |---|---|
//! | stage 1 | nested: S1ContextPtr = the stream's shadow CD table in the CD window (an IPA), S1CDMax and S1DSS the guest's, CD fetch attributes the hypervisor's; stage 2 = the VM's domain, VMID forced; PPAR = 1 when PRI is forwarded |
//! | bypass (or disabled, GBPA.ABORT = 0) | stage 2 alone, the VM's domain |
//! | abort (or disabled, GBPA.ABORT = 1) | abort |
//! | an invalid or unreachable STE | V = 0: the SMMU aborts and records C_BAD_STE, forwarded |
//!
//! Every STE that lets traffic through carries the VM's stage 2 (made by `smmu`'s makers, which
//! set S2AA64 and the VMID), and every one passes the physical guard before `hyp` sees it.

use smmu::entry::PhysicalSte;
use smmu::entry::make::{
    ContextTable, ContextTableParameters, MakeError, Stage2Translation, make_abort_ste,
    make_nested_ste, make_stage2_ste,
};
use smmu::registers::Features;
use smmu::ste::{Eats, S1Fmt};
use smmu::translation::{Cacheability, Shareability};

use crate::config::CdLayout;
use crate::interfaces::physical::ShadowSte;
use crate::streams::ShadowConfig;

/// Why a shadow STE could not be built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BuildError {
    /// The maker refused.
    Make(MakeError),
    /// The stream's slot has no CD table in the window.
    NoCdSlot,
    /// The physical guard refused the result.
    Guard,
}

/// An abort STE, through the physical guard at compile time.
#[allow(clippy::panic)] // Const evaluation: a refusal stops the build, never the hypervisor.
const ABORT: PhysicalSte = match PhysicalSte::check(make_abort_ste()) {
    Ok(ste) => ste,
    Err(_) => panic!("the physical guard refuses an abort STE"),
};

/// An abort STE.
pub(crate) const fn abort() -> ShadowSte {
    ShadowSte::new(ABORT)
}

/// The physical STE for `config` on the stream in `slot`.
///
/// # Errors
///
/// A [`BuildError`]; the caller installs an abort STE instead.
pub(crate) fn build(
    config: &ShadowConfig,
    slot: usize,
    stage2: &Stage2Translation,
    physical: &Features,
    layout: &CdLayout,
    pri: bool,
) -> Result<ShadowSte, BuildError> {
    let ste = match config {
        ShadowConfig::Abort => make_abort_ste(),
        ShadowConfig::Blocked(_) => super::BLOCKED,
        ShadowConfig::Stage2Only => make_stage2_ste(stage2),
        ShadowConfig::Nested { table, s1dss, eats } => {
            let s1context_ptr = layout.table_ipa(slot).ok_or(BuildError::NoCdSlot)?;
            let context = ContextTable::new(
                ContextTableParameters {
                    s1context_ptr,
                    s1fmt: S1Fmt::Linear,
                    s1cdmax: table.s1cdmax,
                    s1dss: *s1dss,
                    s1cir: Cacheability::WriteBackWriteAllocate,
                    s1cor: Cacheability::WriteBackWriteAllocate,
                    s1csh: Shareability::InnerShareable,
                },
                physical,
            )
            .map_err(BuildError::Make)?;
            let mut ste = make_nested_ste(&context, stage2).map_err(BuildError::Make)?;
            if *eats == Eats::Translate && physical.ats {
                ste.set_eats(Eats::Translate);
            }
            if pri {
                // PPAR: the physical SMMU's automatic responses (PRI queue overflow) carry the
                // request's PASID, as the vSMMU's own do (IDR3.PPS) and as functions that
                // require a PASID on responses (the SVA ones) need.
                ste.set_ppar(true);
            }
            ste
        }
    };
    let ste = PhysicalSte::check(ste).map_err(|_| BuildError::Guard)?;
    Ok(ShadowSte::new(ste))
}
