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

/// The value of `key` in a verdict's details, which are `key=value` words
/// (`kernel=6.12.95+deb12-arm64 iommu=none groups=0 ...`).
pub(crate) fn verdict_field<'a>(details: &'a str, key: &str) -> Option<&'a str> {
    details.split_whitespace().find_map(|word| {
        let (k, v) = word.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// A count in the verdict: `Some(Some(n))` for a number, `Some(None)` for `unknown` (the guest
/// could not count), `None` when the field is missing or malformed.
fn verdict_count(details: &str, key: &str) -> Option<Option<u64>> {
    match verdict_field(details, key)? {
        "unknown" => Some(None),
        value => value.parse().ok().map(Some),
    }
}

/// What the guest's IOMMU did during its disk I/O, from its verdict, beside what the hypervisor
/// counted over the same run: the two halves of "hypervisor traps per Linux DMA unmap".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LinuxDmaFigures {
    /// `iommu-maps=`: `iommu:map` tracepoint hits during the I/O phase; `None` when the guest
    /// could not count (`unknown`: no tracefs or no such event).
    pub(crate) maps: Option<u64>,
    /// `iommu-unmaps=`: `iommu:unmap` tracepoint hits during the I/O phase, likewise.
    pub(crate) unmaps: Option<u64>,
    /// The hypervisor's exit counters as it logged them at the end of the run (`exits: KIND N`),
    /// in log order. They cover the whole run (boot included), not only the guest's I/O phase.
    pub(crate) exits: Vec<(String, u64)>,
}

impl LinuxDmaFigures {
    /// The exits of the named kinds (every kind when `kinds` is empty) per guest unmap; `None`
    /// when the guest made no unmap or could not count them.
    pub(crate) fn exits_per_unmap(&self, kinds: &[&str]) -> Option<f64> {
        let unmaps = self.unmaps.filter(|&n| n > 0)?;
        let exits: u64 = self
            .exits
            .iter()
            .filter(|(kind, _)| kinds.is_empty() || kinds.contains(&kind.as_str()))
            .map(|(_, n)| n)
            .sum();
        #[allow(clippy::cast_precision_loss)]
        Some(exits as f64 / unmaps as f64)
    }

    /// One line for a person: the guest's counts, and the hypervisor's exits per unmap.
    pub(crate) fn summary(&self) -> String {
        let count = |n: Option<u64>| n.map_or_else(|| "unknown".to_string(), |n| n.to_string());
        let exits: u64 = self.exits.iter().map(|(_, n)| n).sum();
        let per_unmap = self
            .exits_per_unmap(&[])
            .map_or_else(String::new, |r| format!(", {r:.1} per guest unmap"));
        format!(
            "guest IOMMU during its I/O: {} maps, {} unmaps; hypervisor exits in the whole run: \
             {exits}{per_unmap}",
            count(self.maps),
            count(self.unmaps),
        )
    }
}

/// The guest's IOMMU map and unmap counts from its `GUEST VERDICT: PASS` line in `console`,
/// and the hypervisor's exit counters from its decoded log lines (`hyp_log`). `None` when there
/// is no passing verdict or it does not report the counts (a guest built before it did).
pub(crate) fn dma_figures(console: &str, hyp_log: &[String]) -> Option<LinuxDmaFigures> {
    let GuestVerdict::Pass(details) = find_verdict(console)? else {
        return None;
    };
    let maps = verdict_count(&details, "iommu-maps")?;
    let unmaps = verdict_count(&details, "iommu-unmaps")?;
    let exits = hyp_log
        .iter()
        .filter_map(|line| {
            let (_, rest) = line.split_once("exits: ")?;
            let mut words = rest.split_whitespace();
            let (kind, count) = (words.next()?, words.next()?.parse().ok()?);
            words.next().is_none().then(|| (kind.to_string(), count))
        })
        .collect();
    Some(LinuxDmaFigures {
        maps,
        unmaps,
        exits,
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

    const VSMMU_VERDICT: &str = "GUEST VERDICT: PASS kernel=6.12.95+deb12-arm64 \
        iommu=smmu3.0x0000000009050000 groups=1 vda-group=0 domain=DMA iommu-maps=52 \
        iommu-unmaps=48 read=64KiB-direct write+readback=64KiB@block1024 md5=5de96344";

    #[test]
    fn verdict_fields_are_found_by_key() {
        let details = match find_verdict(VSMMU_VERDICT) {
            Some(GuestVerdict::Pass(details)) => details,
            other => unreachable!("{other:?}"),
        };
        assert_eq!(
            verdict_field(&details, "iommu"),
            Some("smmu3.0x0000000009050000")
        );
        assert_eq!(verdict_field(&details, "domain"), Some("DMA"));
        assert_eq!(verdict_field(&details, "iommu-unmaps"), Some("48"));
        // A key matches whole, not as a prefix or suffix of another.
        assert_eq!(verdict_field(&details, "maps"), None);
        assert_eq!(verdict_field(&details, "unmaps"), None);
        assert_eq!(verdict_field(&details, "iommu-map"), None);
        assert_eq!(verdict_count(&details, "groups"), Some(Some(1)));
        assert_eq!(verdict_count("groups=unknown", "groups"), Some(None));
        assert_eq!(verdict_count("groups=-1", "groups"), None);
        assert_eq!(verdict_count("iommu=none", "groups"), None);
    }

    #[test]
    fn dma_figures_pair_the_guests_unmaps_with_the_hypervisors_exits() {
        let log: Vec<String> = [
            "0.12 INFO  SMMU: 65536 guest streams 0x0 to 0xffff translate through stage 2",
            "8.113 INFO  SMMU events: 0 in all, 0 stage-2 read faults",
            "8.113286 INFO  exits: Hvc 0",
            "8.113414 INFO  exits: Smc 8",
            "8.113520 INFO  exits: MmioHandled 470",
            "8.114176 INFO  exits: InterruptSgi 664",
            "8.2 INFO  exits: something else 3",
            "8.116766 INFO  hypervisor exit: status 0",
        ]
        .map(String::from)
        .to_vec();
        let console = format!("[    1.0] booting\r\nguest: insmod x\r\n{VSMMU_VERDICT}\r\n");
        let figures = dma_figures(&console, &log).unwrap();
        assert_eq!(figures.maps, Some(52));
        assert_eq!(figures.unmaps, Some(48));
        assert_eq!(
            figures.exits,
            [
                ("Hvc".to_string(), 0),
                ("Smc".to_string(), 8),
                ("MmioHandled".to_string(), 470),
                ("InterruptSgi".to_string(), 664),
            ]
        );
        assert_eq!(
            figures.exits_per_unmap(&["MmioHandled", "Hvc"]),
            Some(470.0 / 48.0)
        );
        assert_eq!(figures.exits_per_unmap(&[]), Some(1142.0 / 48.0));
        assert_eq!(
            figures.summary(),
            "guest IOMMU during its I/O: 52 maps, 48 unmaps; hypervisor exits in the whole run: \
             1142, 23.8 per guest unmap"
        );

        // Today's guest without an IOMMU: counted, but nothing to divide by.
        let none = "GUEST VERDICT: PASS kernel=6.1.0-57-arm64 iommu=none groups=0 vda-group=none \
                    domain=none iommu-maps=0 iommu-unmaps=0 read=64KiB-direct\n";
        let figures = dma_figures(none, &log).unwrap();
        assert_eq!((figures.maps, figures.unmaps), (Some(0), Some(0)));
        assert_eq!(figures.exits_per_unmap(&[]), None);
        assert!(
            figures
                .summary()
                .ends_with("0 maps, 0 unmaps; hypervisor exits in the whole run: 1142")
        );

        // A guest that could not count, a failing guest, a guest from before the counts.
        let unknown = "GUEST VERDICT: PASS iommu=none iommu-maps=unknown iommu-unmaps=unknown\n";
        let figures = dma_figures(unknown, &[]).unwrap();
        assert_eq!((figures.maps, figures.unmaps), (None, None));
        assert!(figures.exits.is_empty());
        assert_eq!(figures.exits_per_unmap(&[]), None);
        assert!(figures.summary().contains("unknown maps, unknown unmaps"));
        assert_eq!(dma_figures("GUEST VERDICT: FAIL no /dev/vda\n", &log), None);
        assert_eq!(
            dma_figures(
                "GUEST VERDICT: PASS kernel=6.12 iommu=none domain=none\n",
                &log
            ),
            None
        );
    }

    #[test]
    fn the_disk_is_attached_modern_only_behind_the_iommu() {
        let args = qemu_disk_args(Path::new("/t/disk.img"));
        assert!(args.contains(&"file=/t/disk.img,if=none,format=raw,id=guestdisk".to_string()));
        assert!(args.iter().any(|a| a.contains("iommu_platform=on")));
        assert!(args.iter().any(|a| a.contains("disable-legacy=on")));
    }
}
