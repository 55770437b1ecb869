//! The guest's initramfs: busybox, the `/init` script, the kernel modules the disk needs and
//! the bytes the script expects on the disk, as one uncompressed `newc` archive.

use super::cpio::CpioWriter;
use super::disk;
use super::kernel::Kernel;
use super::modules::{self, ModuleTree};
use crate::Result;
use std::path::{Path, PathBuf};

/// The guest's `/init`.
pub(crate) const INIT_SCRIPT: &str = include_str!("init.sh");

/// The busybox applets `/init` runs, each a link to `/bin/busybox`.
pub(crate) const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "cat", "echo", "ls", "tr", "grep", "dmesg", "insmod", "usleep",
    "sleep", "readlink", "basename", "dd", "cmp", "md5sum", "cut", "uname", "sync", "poweroff",
];

/// What was built.
#[derive(Clone, Debug)]
pub(crate) struct Initramfs {
    pub(crate) path: PathBuf,
    /// The modules `/init` loads, in order.
    pub(crate) modules: Vec<String>,
    pub(crate) size: u64,
}

/// Writes the initramfs for `kernel` to `out`, with `busybox` (a static arm64 binary).
pub(crate) fn build_initramfs(kernel: &Kernel, busybox: &Path, out: &Path) -> Result<Initramfs> {
    let config = std::fs::read_to_string(&kernel.config)
        .map_err(|e| format!("{}: {e}", kernel.config.display()))?;
    let wanted = modules::wanted_modules(&config)?;
    let loadable = ModuleTree::open(&kernel.modules)?.resolve(&wanted)?;
    let busybox_binary =
        std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;

    let mut archive = CpioWriter::new(Vec::new());
    for dir in ["dev", "proc", "sys", "tmp", "etc/guest"] {
        archive.directory(dir)?;
    }
    // The kernel opens /dev/console for init before /init can mount devtmpfs.
    archive.char_device("dev/console", 0o600, 5, 1)?;
    archive.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    archive.file("bin/busybox", 0o755, &busybox_binary)?;
    for applet in APPLETS {
        archive.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    let mut load_list = String::new();
    for module in &loadable {
        let path = format!("/lib/modules/{}/{}", kernel.release, module.relative_path);
        archive.file(&path, 0o644, &module.contents)?;
        load_list.push_str(&path);
        load_list.push('\n');
    }
    archive.file("etc/guest/modules", 0o644, load_list.as_bytes())?;
    archive.file("etc/guest/env", 0o644, guest_env().as_bytes())?;
    archive.file("etc/guest/disk-start", 0o644, &disk::expected_head())?;
    let bytes = archive.finish()?;

    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(Initramfs {
        path: out.to_path_buf(),
        modules: loadable.into_iter().map(|m| m.name).collect(),
        size: bytes.len() as u64,
    })
}

/// `/etc/guest/env`: the disk layout, from the same constants that write the disk.
fn guest_env() -> String {
    const BLOCK: usize = 4096;
    format!(
        "DISK_MAGIC='{}'\nHEAD_BLOCKS={}\nWRITE_BLOCK={}\nWRITE_BLOCKS={}\n",
        disk::DISK_MAGIC,
        disk::CHECKED_HEAD_LEN / BLOCK,
        disk::WRITE_TEST_OFFSET / BLOCK,
        disk::WRITE_TEST_LEN / BLOCK,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_init_script_prints_one_verdict_of_each_kind_and_always_powers_off() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh\n"));
        let verdict_lines: Vec<&str> = INIT_SCRIPT
            .lines()
            .filter(|l| l.contains("echo \"GUEST VERDICT: "))
            .collect();
        // finish() and the watchdog.
        assert_eq!(verdict_lines.len(), 2, "{verdict_lines:?}");
        assert!(INIT_SCRIPT.contains("finish PASS \"kernel=$release"));
        assert!(INIT_SCRIPT.contains("GUEST VERDICT: FAIL timeout"));
        assert!(INIT_SCRIPT.contains("poweroff -n -f"));
        assert!(INIT_SCRIPT.contains("echo 3 >/proc/sys/vm/drop_caches"));
        assert!(INIT_SCRIPT.contains("iflag=direct"));
        assert!(INIT_SCRIPT.contains("mount -t devtmpfs"));
    }

    #[test]
    fn the_verdict_says_what_the_iommu_did_during_the_io() {
        let pass = INIT_SCRIPT
            .lines()
            .find(|l| l.starts_with("finish PASS"))
            .unwrap();
        for field in [
            " iommu=$iommu ",
            " groups=$groups ",
            " vda-group=$group ",
            " domain=$domain ",
            " iommu-maps=$maps ",
            " iommu-unmaps=$unmaps ",
        ] {
            assert!(pass.contains(field), "{field} missing from {pass}");
        }
        // Counting brackets the I/O: on before the first read, off after the read-back.
        let at = |text: &str| INIT_SCRIPT.find(text).unwrap();
        assert!(at("\ntrace_iommu_start\n") < at("stage \"reading the start of /dev/vda\""));
        assert!(at("stage \"reading back from /dev/vda\"") < at("\ntrace_iommu_stop\n"));
        assert!(at("\ntrace_iommu_stop\n") < at("finish PASS"));
        for path in [
            "events/iommu/map/enable",
            "events/iommu/unmap/enable",
            "/sys/kernel/tracing",
            "/sys/kernel/debug/tracing",
            "maps=unknown",
            "unmaps=unknown",
        ] {
            assert!(INIT_SCRIPT.contains(path), "{path}");
        }
    }

    #[test]
    fn every_busybox_command_the_script_names_is_linked() {
        // Commands a script like this might use; each one the script names must be linked.
        // (`timeout` is left out: the script has a variable of that name, not the applet.)
        let commands = [
            "basename",
            "cat",
            "chmod",
            "cmp",
            "cp",
            "cut",
            "dd",
            "dmesg",
            "find",
            "grep",
            "halt",
            "head",
            "hexdump",
            "insmod",
            "kill",
            "ln",
            "ls",
            "md5sum",
            "mkdir",
            "modprobe",
            "mount",
            "mv",
            "od",
            "poweroff",
            "readlink",
            "reboot",
            "rm",
            "sed",
            "seq",
            "sha256sum",
            "sleep",
            "sync",
            "tail",
            "tr",
            "umount",
            "uname",
            "usleep",
            "wc",
            "xargs",
        ];
        let code: String = INIT_SCRIPT
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for word in code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if commands.contains(&word) {
                assert!(APPLETS.contains(&word), "`{word}` is not linked");
            }
        }
        // `sh` is the interpreter of the `#!` line.
        for applet in APPLETS.iter().filter(|a| **a != "sh") {
            let used = code
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|w| w == *applet);
            assert!(used, "`{applet}` is linked but unused");
        }
    }

    #[test]
    fn the_guest_env_matches_the_disk_layout() {
        assert_eq!(
            guest_env(),
            "DISK_MAGIC='SMMU-HYP-DISK v1'\nHEAD_BLOCKS=16\nWRITE_BLOCK=1024\nWRITE_BLOCKS=16\n"
        );
    }
}
