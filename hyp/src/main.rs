//! The hypervisor image: the entry point and the initial identity map that `aarch64-rt` enables
//! before any Rust code runs. Everything else is in the library (`hyp::boot`).

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod image {
    use aarch64_paging::descriptor::El23Attributes;
    use aarch64_rt::{InitialPagetable, entry, initial_pagetable};

    const DEVICE: usize = El23Attributes::VALID
        .union(El23Attributes::ATTRIBUTE_INDEX_0)
        .union(El23Attributes::ACCESSED)
        .union(El23Attributes::XN)
        .bits();
    const NORMAL: usize = El23Attributes::VALID
        .union(El23Attributes::ATTRIBUTE_INDEX_1)
        .union(El23Attributes::INNER_SHAREABLE)
        .union(El23Attributes::ACCESSED)
        .bits();

    // Level-1 blocks of 1 GiB, used only until `hyp::boot` installs the real, fine-grained map.
    initial_pagetable!({
        let mut table = [0; 512];
        // 0-1 GiB: devices on QEMU virt and FVP (UARTs, GIC, SMMU, ...).
        table[0] = DEVICE;
        // 1-4 GiB: RAM on QEMU virt (from 1 GiB) and FVP (from 2 GiB).
        table[1] = NORMAL | 0x4000_0000;
        table[2] = NORMAL | 0x8000_0000;
        table[3] = NORMAL | 0xc000_0000;
        // 256-257 GiB: QEMU virt's high PCIe ECAM.
        table[256] = DEVICE | 0x40_0000_0000;
        InitialPagetable(table)
    });

    // 64 pages (256 KiB), the lowest of which is an unmapped guard once the EL2 map is on. Boot
    // builds the vSMMU (`nested::VirtualSmmu::new` alone has a 59 KiB frame, and the value is
    // moved into its static); 128 KiB overflowed into the guard page.
    entry!(start, 64);

    fn start(x0: u64, _x1: u64, _x2: u64, _x3: u64) -> ! {
        hyp::boot::primary_main(x0)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "the hypervisor runs only on aarch64-unknown-none: use `cargo xtask build` or `cargo xtask run`"
    );
    std::process::exit(2);
}
