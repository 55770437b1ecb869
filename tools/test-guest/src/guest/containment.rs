//! Attacks on the hypervisor through devices that master memory without the SMMU, and through
//! the CPU state EL2 shares with the guest. Each check makes the attempt in full, then judges
//! it by what the guest can see; the hypervisor judges its side (its memory fingerprints) when
//! the guest powers off.
//!
//! Targets in hypervisor memory are chosen inside the boot device tree's first pages, which
//! the hypervisor fingerprints: an attack that got through is caught there even by a
//! hypervisor that checks nothing else.

use super::{Outcome, expect_external_abort, mmio_read32, mmio_write32};
use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering};

/// The hypervisor's boot device tree (the start of its carve-out).
const HYPERVISOR_TREE: u64 = 0x4000_0000;

/// Guest RAM the checks use for descriptors and tables, above the image and the DMA buffers of
/// the other checks.
const SCRATCH: usize = 0x4400_0000;

/// Data aborts taken since [`reset_aborts`].
static ABORTS: AtomicU32 = AtomicU32::new(0);

/// Called by the guest's exception handler for every data abort it steps over.
pub(super) fn note_abort() {
    ABORTS.fetch_add(1, Ordering::SeqCst);
}

fn reset_aborts() {
    ABORTS.store(0, Ordering::SeqCst);
}

fn aborts() -> u32 {
    ABORTS.load(Ordering::SeqCst)
}

fn write64(address: usize, value: u64) {
    // SAFETY: either guest RAM owned by these checks, or a device register the hypervisor must
    // refuse (the abort is caught and the store skipped).
    unsafe { core::ptr::write_volatile(address as *mut u64, value) }
}

fn read64(address: usize) -> u64 {
    // SAFETY: as `write64`; a refused load is skipped and leaves 0 in the register.
    unsafe { core::ptr::read_volatile(address as *const u64) }
}

/// QEMU's fw_cfg: its DMA interface reads a descriptor and copies data at any physical
/// address, without the SMMU. The attack copies the 4-byte signature item ("QEMU") over the
/// hypervisor's device tree.
pub(super) fn fw_cfg_dma() -> Outcome {
    const FW_CFG: usize = 0x0902_0000;
    const DMA_ADDRESS_HIGH: usize = FW_CFG + 0x10;
    const DMA_ADDRESS_LOW: usize = FW_CFG + 0x14;
    const SELECT: u32 = 0x08;
    const READ: u32 = 0x02;
    let descriptor = SCRATCH;
    // FWCfgDmaAccess, big-endian: control (key 0, the signature, in the upper half), length,
    // address.
    let control = (SELECT | READ).to_be();
    let length = 4u32.to_be();
    write64(descriptor, u64::from(control) | u64::from(length) << 32);
    write64(descriptor + 8, (HYPERVISOR_TREE + 0x40).to_be());
    reset_aborts();
    let outcome = expect_external_abort(|| {
        // The register is big-endian: the upper half first, the lower half starts the DMA.
        mmio_write32(
            DMA_ADDRESS_HIGH,
            ((descriptor as u64 >> 32) as u32).swap_bytes(),
        );
        mmio_write32(DMA_ADDRESS_LOW, (descriptor as u32).swap_bytes());
    });
    // The descriptor's control word is cleared by a transfer that ran.
    if read64(descriptor) as u32 != control {
        return Err("fw_cfg ran the DMA transfer");
    }
    outcome.map_err(|_| "fw_cfg's registers are reachable")
}

/// A virtio-mmio transport with a device attached (`-device virtio-rng-device`): its queues
/// are read and written by QEMU at guest-chosen physical addresses, without the SMMU. The
/// attack gives the entropy device a buffer in the hypervisor's device tree.
pub(super) fn virtio_mmio_dma() -> Outcome {
    const TRANSPORTS: usize = 0x0a00_0000;
    const MAGIC: u32 = 0x7472_6976;
    reset_aborts();
    // Look for an attached device (QEMU fills transports from the highest address down).
    let mut found = None;
    for index in (0..32).rev() {
        let base = TRANSPORTS + index * 0x200;
        if mmio_read32(base) == MAGIC && mmio_read32(base + 0x008) != 0 {
            found = Some(base);
            break;
        }
    }
    let probes = aborts();
    let base = found.unwrap_or(TRANSPORTS + 31 * 0x200);
    // A modern (version 2) transport, queue 0, one descriptor the device writes.
    let (descriptors, driver, device) = (SCRATCH + 0x1000, SCRATCH + 0x2000, SCRATCH + 0x3000);
    write64(descriptors, HYPERVISOR_TREE + 0x80);
    write64(descriptors + 8, 16 | 2 << 32); // length 16, VIRTQ_DESC_F_WRITE
    write64(driver, 1 << 16); // flags 0, index 1 (ring[0] = descriptor 0)
    write64(device, 0);
    let register = |offset: usize, value: u32| mmio_write32(base + offset, value);
    register(0x070, 0); // reset
    register(0x070, 1 | 2); // ACKNOWLEDGE | DRIVER
    register(0x024, 1);
    register(0x020, 1); // VIRTIO_F_VERSION_1
    register(0x070, 1 | 2 | 8); // FEATURES_OK
    register(0x030, 0);
    register(0x038, 1);
    register(0x080, descriptors as u32);
    register(0x084, 0);
    register(0x090, driver as u32);
    register(0x094, 0);
    register(0x0a0, device as u32);
    register(0x0a4, 0);
    register(0x044, 1); // QueueReady
    register(0x070, 1 | 2 | 4 | 8); // DRIVER_OK
    register(0x050, 0); // QueueNotify
    for _ in 0..1_000_000 {
        if read64(device) >> 16 & 0xffff != 0 {
            return Err("the virtio device wrote into hypervisor memory");
        }
        core::hint::spin_loop();
    }
    if found.is_some() {
        return Err("a virtio-mmio transport with a device is reachable");
    }
    // Every transport probe, and every register write after, must have been refused.
    if probes != 32 || aborts() != 32 + 16 {
        return Err("some virtio-mmio register accesses were not refused");
    }
    Ok(())
}

/// The redistributor of the guest's CPU 0 on QEMU virt.
const GICR: usize = 0x080a_0000;
const GICR_CTLR: usize = GICR;
const GICR_WAKER: usize = GICR + 0x14;
const GICR_TYPER: usize = GICR + 0x08;
const GICR_PROPBASER: usize = GICR + 0x70;
const GICR_PENDBASER: usize = GICR + 0x78;
const GICD_CTLR: usize = 0x0800_0000;
/// LPI INTIDs start here.
const FIRST_LPI: u64 = 8192;

/// The GIC's LPI tables: with LPIs enabled, the redistributor reads the pending table (and
/// writes it when an LPI is acknowledged) at the address in GICR_PENDBASER, without the
/// SMMU. The attack points it at the hypervisor's device tree and acknowledges every LPI whose
/// bit it finds set there: each is one bit of hypervisor memory read, and cleared.
pub(super) fn lpi_tables() -> Outcome {
    let typer = read64(GICR_TYPER);
    // A property table for LPIs 8192..16383 in guest RAM: priority 0xa0, enabled.
    let properties = SCRATCH + 0x1_0000;
    for i in 0..1024 {
        write64(properties + i * 8, 0xa1a1_a1a1_a1a1_a1a1);
    }
    // IDbits = 13: INTIDs up to 16383; inner-shareable, write-back.
    write64(GICR_PROPBASER, properties as u64 | 1 << 10 | 7 << 7 | 13);
    write64(GICR_PENDBASER, HYPERVISOR_TREE | 1 << 10 | 7 << 7);
    let (propbaser, pendbaser) = (read64(GICR_PROPBASER), read64(GICR_PENDBASER));
    // Wake the redistributor, enable group 1 in the distributor and the CPU interface.
    mmio_write32(GICR_WAKER, mmio_read32(GICR_WAKER) & !(1 << 1));
    for _ in 0..100_000 {
        if mmio_read32(GICR_WAKER) & 1 << 2 == 0 {
            break;
        }
    }
    mmio_write32(GICD_CTLR, mmio_read32(GICD_CTLR) | 1 << 4 | 1 << 1);
    // SAFETY: enables this guest's own GIC CPU interface (system registers, group 1 at the
    // lowest priority mask); interrupts stay masked at PSTATE.I, so nothing is taken.
    unsafe {
        asm!(
            "mrs {t}, icc_sre_el1",
            "orr {t}, {t}, #7",
            "msr icc_sre_el1, {t}",
            "isb",
            "mov {t}, #0xff",
            "msr icc_pmr_el1, {t}",
            "mov {t}, #1",
            "msr icc_igrpen1_el1, {t}",
            "isb",
            t = out(reg) _,
            options(nostack),
        );
    }
    mmio_write32(GICR_CTLR, mmio_read32(GICR_CTLR) | 1);
    let enabled = mmio_read32(GICR_CTLR) & 1 != 0;
    let mut acknowledged = 0u32;
    for _ in 0..64 {
        let intid: u64;
        // SAFETY: acknowledges the highest-priority pending interrupt of this guest's CPU
        // interface, if any (1023 when none is pending).
        unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) intid, options(nostack)) };
        if intid & 0xff_ffff == 1023 {
            break;
        }
        if intid >= FIRST_LPI {
            acknowledged += 1;
        }
        // SAFETY: ends the interrupt just acknowledged (priority drop and deactivation).
        unsafe { asm!("msr icc_eoir1_el1, {}", "isb", in(reg) intid, options(nostack)) };
    }
    if acknowledged != 0 {
        return Err("LPIs read from hypervisor memory were acknowledged");
    }
    if typer & 1 != 0 {
        return Err("GICR_TYPER offers LPIs (PLPIS)");
    }
    if propbaser != 0 || pendbaser != 0 {
        return Err("GICR_PROPBASER/PENDBASER hold guest-written addresses");
    }
    if enabled {
        return Err("GICR_CTLR.EnableLPIs could be set");
    }
    Ok(())
}

/// FP/SIMD registers across a trap taken while SMMU events are pending: EL2 must neither
/// change them nor leave its own data in them. `make_events_pending` leaves the SMMU with
/// unread event records (a DMA it blocked); then every vector register is loaded with a
/// pattern, an HVC traps to the hypervisor, and every register must come back unchanged.
pub(super) fn fp_simd_across_traps(make_events_pending: impl FnOnce() -> Outcome) -> Outcome {
    make_events_pending()?;
    let mut before = [0u64; 64];
    for (i, word) in before.iter_mut().enumerate() {
        *word = 0x0f0e_0d0c_0b0a_0908 ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    let mut after = [0u64; 64];
    // SAFETY: loads every vector register from `before`, makes an unknown SMCCC call (the
    // hypervisor answers NOT_SUPPORTED), and stores every vector register to `after`; the
    // clobbers name every register the block touches.
    unsafe {
        asm!(
            "ld1 {{v0.2d, v1.2d, v2.2d, v3.2d}}, [{src}], #64",
            "ld1 {{v4.2d, v5.2d, v6.2d, v7.2d}}, [{src}], #64",
            "ld1 {{v8.2d, v9.2d, v10.2d, v11.2d}}, [{src}], #64",
            "ld1 {{v12.2d, v13.2d, v14.2d, v15.2d}}, [{src}], #64",
            "ld1 {{v16.2d, v17.2d, v18.2d, v19.2d}}, [{src}], #64",
            "ld1 {{v20.2d, v21.2d, v22.2d, v23.2d}}, [{src}], #64",
            "ld1 {{v24.2d, v25.2d, v26.2d, v27.2d}}, [{src}], #64",
            "ld1 {{v28.2d, v29.2d, v30.2d, v31.2d}}, [{src}], #64",
            "movz x0, #0x1234",
            "movk x0, #0xc600, lsl #16",
            "hvc #0",
            "st1 {{v0.2d, v1.2d, v2.2d, v3.2d}}, [{dst}], #64",
            "st1 {{v4.2d, v5.2d, v6.2d, v7.2d}}, [{dst}], #64",
            "st1 {{v8.2d, v9.2d, v10.2d, v11.2d}}, [{dst}], #64",
            "st1 {{v12.2d, v13.2d, v14.2d, v15.2d}}, [{dst}], #64",
            "st1 {{v16.2d, v17.2d, v18.2d, v19.2d}}, [{dst}], #64",
            "st1 {{v20.2d, v21.2d, v22.2d, v23.2d}}, [{dst}], #64",
            "st1 {{v24.2d, v25.2d, v26.2d, v27.2d}}, [{dst}], #64",
            "st1 {{v28.2d, v29.2d, v30.2d, v31.2d}}, [{dst}], #64",
            src = inout(reg) before.as_ptr() => _,
            dst = inout(reg) after.as_mut_ptr() => _,
            out("x0") _, out("x1") _, out("x2") _, out("x3") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack),
        );
    }
    if before == after {
        Ok(())
    } else {
        Err("a vector register changed across a trap")
    }
}

/// The PMU, filtered to count only at EL2: the hypervisor's work must be invisible to it. Needs
/// QEMU's `-icount` (without it the instruction counter never moves, and this check could not
/// fail).
pub(super) fn pmu_blind_to_el2() -> Outcome {
    // PMEVTYPER0_EL0: INST_RETIRED (0x08), P (exclude EL1), U (exclude EL0), NSH (include EL2).
    const EL2_ONLY: u64 = 1 << 31 | 1 << 30 | 1 << 27;
    let (events_before, cycles_before): (u64, u64);
    // SAFETY: programs this CPU's PMU, which the hypervisor leaves to the guest.
    unsafe {
        asm!(
            "msr pmevtyper0_el0, {event}",
            "msr pmccfiltr_el0, {filter}",
            "mov {t}, #1",
            "orr {t}, {t}, #(1 << 31)",
            "msr pmcntenset_el0, {t}",
            "mrs {t}, pmcr_el0",
            "orr {t}, {t}, #1",
            "msr pmcr_el0, {t}",
            "isb",
            event = in(reg) EL2_ONLY | 0x08,
            filter = in(reg) EL2_ONLY,
            t = out(reg) _,
            options(nostack),
        );
        asm!(
            "isb",
            "mrs {e}, pmevcntr0_el0",
            "mrs {c}, pmccntr_el0",
            e = out(reg) events_before,
            c = out(reg) cycles_before,
            options(nostack),
        );
    }
    // A control that the counter runs at all: everything at EL1 counted once.
    for _ in 0..100 {
        let _ = super::hvc(0xc600_1234);
    }
    let (events_after, cycles_after): (u64, u64);
    // SAFETY: reads the counters programmed above.
    unsafe {
        asm!(
            "isb",
            "mrs {e}, pmevcntr0_el0",
            "mrs {c}, pmccntr_el0",
            e = out(reg) events_after,
            c = out(reg) cycles_after,
            options(nostack),
        );
    }
    let events = events_after.wrapping_sub(events_before) & 0xffff_ffff;
    let cycles = cycles_after.wrapping_sub(cycles_before);
    if events != 0 {
        return Err("the PMU counted instructions at EL2");
    }
    if cycles != 0 {
        return Err("the cycle counter ran at EL2");
    }
    // The control: the same counter, filtered to EL1, must count the loop (so a PMU that never
    // counts cannot pass this check).
    let el1: u64;
    // SAFETY: as above, with the EL1 filter (U excludes EL0 only).
    unsafe {
        asm!(
            "msr pmevtyper0_el0, {event}",
            "isb",
            "mrs {b}, pmevcntr0_el0",
            "mov {n}, #100",
            "1: subs {n}, {n}, #1",
            "b.ne 1b",
            "isb",
            "mrs {a}, pmevcntr0_el0",
            "sub {b}, {a}, {b}",
            event = in(reg) 1u64 << 30 | 0x08,
            b = out(reg) el1,
            a = out(reg) _,
            n = out(reg) _,
            options(nostack),
        );
    }
    if el1 & 0xffff_ffff < 100 {
        return Err("the PMU does not count at all (run under -icount)");
    }
    Ok(())
}
