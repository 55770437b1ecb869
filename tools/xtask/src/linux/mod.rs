//! The Linux guest's assets for `cargo xtask run`: an unmodified Debian arm64 kernel, a busybox
//! initramfs whose `/init` exercises a virtio-blk disk by DMA, and that disk's image.
//!
//! Everything is fetched once with the host's apt (arm64 packages, downloaded and unpacked, never
//! installed) into a cache directory the caller chooses (`target/guest/`), then built from there
//! without network. Any error says why, so that the runner can fall back to the bare-metal guest.
//!
//! Layout of the cache: `debs/` (downloaded packages), `kernel/` and `busybox/` (unpacked, each
//! with a stamp naming its package), `initramfs.cpio`, `disk.img`; for a kernel series other than
//! the default, `kernel-6.1/`, `initramfs-6.1.cpio` and `disk-6.1.img` beside them (busybox and
//! the downloaded packages are shared).
//!
//! This module owns no QEMU process; it only says which arguments attach the disk.

mod apt;
mod cpio;
mod disk;
mod initramfs;
mod kernel;
mod modules;

pub(crate) use disk::make_disk;
pub(crate) use initramfs::{Initramfs, build_initramfs};
pub(crate) use kernel::{Kernel, KernelSeries, fetch_kernel};

use crate::Result;
use std::path::{Path, PathBuf};

/// The guest kernel's command line: console on the first PL011; a panic reboots at once (which
/// QEMU's `-no-reboot` turns into an exit), so a broken guest cannot hang the run.
pub(crate) const KERNEL_COMMAND_LINE: &str = "console=ttyAMA0 panic=-1";

/// The start of the line `/init` prints once, with `PASS` or `FAIL` after it.
pub(crate) const VERDICT_PREFIX: &str = "GUEST VERDICT: ";

/// Everything a run needs.
#[derive(Clone, Debug)]
pub(crate) struct GuestAssets {
    pub(crate) kernel: Kernel,
    pub(crate) initramfs: Initramfs,
    pub(crate) disk: PathBuf,
}

/// Fetches (once) the kernel of `series` and busybox, builds the initramfs and writes a fresh
/// disk image.
pub(crate) fn prepare(cache: &Path, series: KernelSeries) -> Result<GuestAssets> {
    std::fs::create_dir_all(cache)
        .map_err(|e| format!("creating the guest cache {}: {e}", cache.display()))?;
    let suffix = series.cache_suffix();
    let kernel = fetch_kernel(cache, series)?;
    let busybox = fetch_busybox(cache)?;
    let initramfs = build_initramfs(
        &kernel,
        &busybox,
        &cache.join(format!("initramfs{suffix}.cpio")),
    )?;
    println!(
        "xtask: guest: {} ({}; modules: {})",
        initramfs.path.display(),
        apt::human_size(initramfs.size),
        if initramfs.modules.is_empty() {
            "none".to_string()
        } else {
            initramfs.modules.join(" ")
        }
    );
    let disk = cache.join(format!("disk{suffix}.img"));
    make_disk(&disk)?;
    Ok(GuestAssets {
        kernel,
        initramfs,
        disk,
    })
}

/// Downloads (once) `busybox-static:arm64` and returns its `bin/busybox`.
pub(crate) fn fetch_busybox(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("busybox");
    let binary = root.join("bin/busybox");
    if let Some(package) = apt::read_stamp(&root)
        && binary.is_file()
    {
        println!(
            "xtask: guest: busybox {} {} (cached)",
            package.name, package.version
        );
        return Ok(binary);
    }
    let mut apt = apt::Apt::new()?;
    let package = apt.candidate("busybox-static")?;
    println!("xtask: guest: busybox package {package}");
    apt.download_and_unpack(&package, cache, &root)?;
    if !binary.is_file() {
        return Err(format!("busybox-static has no bin/busybox ({})", root.display()).into());
    }
    apt::write_stamp(&root, &package)?;
    Ok(binary)
}

/// QEMU arguments that attach `disk` as a modern-only virtio-blk PCI device that does its DMA
/// through the platform IOMMU when there is one.
pub(crate) fn qemu_disk_args(disk: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},if=none,format=raw,id=guestdisk", disk.display()),
        "-device".into(),
        "virtio-blk-pci,drive=guestdisk,disable-legacy=on,iommu_platform=on".into(),
    ]
}

/// How the guest judged its run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GuestVerdict {
    Pass(String),
    Fail(String),
}

/// The first verdict line in the guest's console output.
pub(crate) fn find_verdict(console: &str) -> Option<GuestVerdict> {
    console.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(VERDICT_PREFIX)?;
        if let Some(details) = rest.strip_prefix("PASS") {
            Some(GuestVerdict::Pass(details.trim().to_string()))
        } else {
            rest.strip_prefix("FAIL")
                .map(|reason| GuestVerdict::Fail(reason.trim().to_string()))
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_is_found_in_console_output() {
        let console = "[    2.1] virtio_blk virtio0: [vda] 16384 512-byte logical blocks\r\n\
                       guest: insmod /lib/modules/x/virtio_blk.ko\r\n\
                       GUEST VERDICT: PASS kernel=6.12 iommu=smmu3.0x0000000009050000\r\n";
        assert_eq!(
            find_verdict(console),
            Some(GuestVerdict::Pass(
                "kernel=6.12 iommu=smmu3.0x0000000009050000".into()
            ))
        );
        assert_eq!(
            find_verdict("GUEST VERDICT: FAIL no /dev/vda\n"),
            Some(GuestVerdict::Fail("no /dev/vda".into()))
        );
        assert_eq!(find_verdict("GUEST VERDICT: MAYBE\n"), None);
        assert_eq!(find_verdict(""), None);
    }

    #[test]
    fn the_disk_is_attached_modern_only_behind_the_iommu() {
        let args = qemu_disk_args(Path::new("/t/disk.img"));
        assert!(args.contains(&"file=/t/disk.img,if=none,format=raw,id=guestdisk".to_string()));
        assert!(args.iter().any(|a| a.contains("iommu_platform=on")));
        assert!(args.iter().any(|a| a.contains("disable-legacy=on")));
    }
}
