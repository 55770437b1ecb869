//! Links the bare-metal image: `aarch64-rt`'s section layout, a memory map placing the image at
//! `HYP_IMAGE_BASE` (QEMU virt's 0x4020_0000 unless set), and `defmt`'s symbol table. Host builds
//! (tests) need none of it.

#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a build script reports errors by panicking"
)]

use std::io::Write;

/// QEMU virt: RAM starts at 0x4000_0000 and QEMU puts the device tree there for an ELF image,
/// so the image starts 2 MiB above it. The carve-out [0x4000_0000, 0x4200_0000) holds the device
/// tree, the image, its stacks and table pools; guest RAM starts at the next 2 MiB boundary.
const DEFAULT_IMAGE_BASE: u64 = 0x4020_0000;
/// The image and everything it reserves after itself (bss, stacks, pools).
const IMAGE_SIZE: u64 = 30 << 20;

fn main() {
    println!("cargo::rerun-if-env-changed=HYP_IMAGE_BASE");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let base = match std::env::var("HYP_IMAGE_BASE") {
        Ok(text) => {
            let digits = text.trim_start_matches("0x").replace('_', "");
            u64::from_str_radix(&digits, 16)
                .unwrap_or_else(|_| panic!("HYP_IMAGE_BASE `{text}` is not hex"))
        }
        Err(_) => DEFAULT_IMAGE_BASE,
    };
    assert!(
        base % (2 << 20) == 0,
        "HYP_IMAGE_BASE must be 2 MiB aligned"
    );
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let mut file = std::fs::File::create(format!("{out}/memory.ld")).expect("create memory.ld");
    writeln!(
        file,
        "MEMORY\n{{\n    image : ORIGIN = {base:#x}, LENGTH = {IMAGE_SIZE:#x}\n}}"
    )
    .expect("write memory.ld");
    println!("cargo::rustc-link-search={out}");
    println!("cargo::rustc-link-arg-bins=-Timage.ld");
    println!("cargo::rustc-link-arg-bins=-Tmemory.ld");
    println!("cargo::rustc-link-arg-bins=-Tdefmt.x");
}
