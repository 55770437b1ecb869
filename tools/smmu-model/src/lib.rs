//! A register-level reference model of an Arm SMMUv3 (IHI 0070), with simulated PCIe
//! functions, for host tests: the real `smmu` driver runs on it unchanged, through the same
//! [`RegisterAccess`](smmu::hardware::RegisterAccess), [`DmaMemory`](smmu::driver::DmaMemory)
//! and [`Platform`](smmu::driver::Platform) traits the hypervisor implements at EL2.
//!
//! QEMU's SMMU has no substreams, ATS, PRI, stall or MSI. This model has them, so that the
//! PASID lifecycle and PRI forwarding can be built and tested against something that behaves as
//! the architecture says, and the conformance suite (`smmu-conformance`) runs the same cases
//! here and on QEMU so that each keeps the other honest.
//!
//! # The pieces
//!
//! - [`memory`]: simulated physical memory, the driver's regions and platform, and a table
//!   allocator so `aarch64-paging` builds tables the model walks.
//! - [`config`]: what is implemented ([`Features`], encoded into the ID registers) and the
//!   implementation's choices; the `qemu_virt` and `full` presets.
//! - [`SmmuModel`] (`model`): registers, queues, GERROR, interrupts and MSIs.
//! - `commands`: the command queue, CERROR_ILL/ABT, and each command's effect.
//! - `translate`: stream table and CD table lookup, substreams, stage 1, stage 2 and nested
//!   walks ([`walk`]), permissions, faults and their events (the A/R/S fault model), ATS
//!   translation requests and translated traffic.
//! - [`caches`]: the configuration cache and the TLB, which keep every entry until an
//!   invalidation names it.
//! - `stall`: stalled transactions, CMD_RESUME and CMD_STALL_TERM.
//! - [`PcieFunction`] (`pcie`): DMA, ATS and its ATC, PRI page request groups, stop markers,
//!   and the function's reaction to PRG responses.
//! - [`events`]: event records and PRI queue entries, laid out by the model's own reading.
//! - [`structures`]: STE, CD and level-1 descriptors decoded and judged valid or ILLEGAL.
//! - [`trace`]: what happened, each translation tagged with the address-space generation that
//!   resolved it and the one memory held at the time.
//! - [`harness`]: [`ModelHarness`], the conformance suite's harness on this model.
//!
//! # Where the model chooses
//!
//! Where the architecture leaves a choice, the model takes the strictest one, so that software
//! relying on luck fails here: structures and translations stay cached until invalidated (valid
//! or not); invalidations complete only at the next CMD_SYNC ([`InvalidationTiming`]); a
//! non-zero reserved command field is CERROR_ILL ([`ReservedFieldPolicy`]); CMD_ATC_INV with
//! Size above 52 is CERROR_ILL; out-of-range StreamID/SubstreamID command parameters have no
//! effect; reserved structure fields are ignored; split-stage ATS is not implemented (NS1ATS);
//! there is no HTTU, no VMSAv8-32 and no 52-bit addressing.
//!
//! # Where QEMU (10.0) differs from the architecture
//!
//! Found while writing the model and the conformance suite; each is a case in the suite's
//! known-deviation list (`smmu_conformance::QEMU_DEVIATIONS`, every one confirmed by the suite
//! run from EL2 on QEMU, `hyp.selftest=conformance-suite`) or noted here:
//!
//! - A full event queue: QEMU drops the event and sets GERROR.EVTQ_ABT_ERR; the architecture
//!   (7.4) sets EVENTQ_PROD.OVFLG and raises no global error.
//! - CMD_ATC_INV, CMD_PRI_RESP and CMD_RESUME on an SMMU without ATS, PRI or stall, the
//!   TLBI_EL2_* commands without IDR0.HYP, and TLBI_EL3_* on the Non-secure queue: QEMU consumes
//!   them as no-ops; the architecture (4.5.1, 4.5.2, 4.7.1, 4.4.2) makes each CERROR_ILL.
//! - Two-level stream table (QEMU's `smmu_find_ste`): a level-2 table of SPAN holds 2^SPAN STEs
//!   for QEMU, 2^(SPAN-1) for the architecture (5.1), and a StreamID beyond it is C_BAD_STE
//!   there, C_BAD_STREAMID here (7.3.3). The driver always makes full spans, so neither shows.
//! - STE.S1CDMax != 0 with IDR1.SSIDSIZE = 0: QEMU reports C_BAD_STE; the architecture (5.2)
//!   says the field is IGNORED then.
//! - Page 1 of the register file: QEMU aliases it onto page 0; the architecture has the queue
//!   pointers only in page 1 (page 0's offsets are reserved).
//! - A failed DMA from `edu`: QEMU translates and reports each 4-byte access separately, so an
//!   8-byte transfer gives two events; a PCIe function issues up to Max Payload Size per
//!   transaction, which is what the model's functions do (one event per transaction).
//! - QEMU asserts (stops the machine) on a stage-2 STE with S2AA64 = 0; the architecture makes
//!   it ILLEGAL (C_BAD_STE) where VMSAv8-32 is not implemented.
//!
//! Not a deviation, but the one other difference the suite shows between this model's QEMU
//! preset and QEMU: QEMU completes an invalidation when it consumes the command, this model at
//! the next CMD_SYNC ([`InvalidationTiming::AtSync`]); the architecture allows both, so
//! `invalidation-completes-at-sync` is not applicable on QEMU.

pub mod caches;
mod commands;
pub mod config;
pub mod events;
pub mod harness;
pub mod memory;
mod model;
mod pcie;
mod stall;
pub mod structures;
pub mod trace;
mod translate;
pub mod walk;

pub use config::{Features, InvalidationTiming, ModelConfig, ReservedFieldPolicy, StallSupport};
pub use harness::ModelHarness;

pub use memory::{BusError, ModelPlatform, ModelRegion, ModelTables, PhysicalMemory};
pub use model::{Signals, SmmuModel};
pub use pcie::{
    AtcEntry, DmaReport, FunctionConfig, FunctionError, LateCompletion, PageRequest,
    PageRequestGroup, PcieFunction, PrgResponse, ResponseHandled,
};
pub use translate::{AtsCompletion, Outcome, Transaction};
