//! The VM every CPU runs (one guest today): its trap-path configuration and its EL2 settings,
//! recorded once by the boot CPU before the guest runs and read by every CPU after.

use crate::arch::el2::{self, GuestEl2};
use crate::trap::handler::{TrapState, VmConfig};

/// The VMID of the (single) guest.
pub const GUEST_VMID: u16 = 1;

static VM: spin::Once<VmConfig> = spin::Once::new();

/// The trap path's state shared by the VM's vCPUs.
pub static TRAP_STATE: TrapState = TrapState::new(&crate::stats::COUNTERS);
static EL2: spin::Once<GuestEl2> = spin::Once::new();

/// Records the VM whose stage 2 is rooted at `stage2_root`. Called once, before entry.
pub fn set_vm(config: VmConfig, stage2_root: u64) {
    let el2 = GuestEl2 {
        vttbr: stage2_root | u64::from(GUEST_VMID) << 48,
        vtcr: el2::vtcr_el2(crate::stage2::T0SZ, crate::stage2::SL0_LEVEL0),
        mdcr: el2::mdcr_el2(config.bench_mode),
    };
    EL2.call_once(|| el2);
    VM.call_once(|| config);
}

/// The VM, once recorded.
#[must_use]
pub fn vm() -> Option<&'static VmConfig> {
    VM.get()
}

/// Configures this CPU's EL2 and GIC interfaces to run the guest. Every CPU calls it before
/// entering the guest.
pub fn configure_cpu() {
    if let Some(config) = EL2.get() {
        crate::interrupts::configure_cpu(crate::arch::sysreg::cpu_affinity());
        el2::configure(config);
    }
}
