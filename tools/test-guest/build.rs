//! Links the guest at 0x4220_0000: guest RAM starts at 0x4200_0000 on QEMU virt and its first
//! 2 MiB hold the device tree the hypervisor writes.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let Ok(out) = std::env::var("OUT_DIR") else {
        return;
    };
    let script = "MEMORY\n{\n    image : ORIGIN = 0x42200000, LENGTH = 4M\n}\n";
    if std::fs::write(format!("{out}/memory.ld"), script).is_err() {
        return;
    }
    println!("cargo::rustc-link-search={out}");
    println!("cargo::rustc-link-arg-bins=-Timage.ld");
    println!("cargo::rustc-link-arg-bins=-Tmemory.ld");
}
