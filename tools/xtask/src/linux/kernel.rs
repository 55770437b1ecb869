//! The guest kernel: an unmodified Debian arm64 kernel package, downloaded once and unpacked
//! under the cache.
//!
//! Two series can be asked for ([`KernelSeries`]), each cached in a directory of its own:
//! - `6.12` (the default): bookworm-backports' 6.12 (`linux-image-6.12.*+deb12-arm64-unsigned`),
//!   then any other 6.12 apt offers, then bookworm's 6.1 when apt has no 6.12 at all;
//! - `6.1`: bookworm's 6.1 (`linux-image-6.1.0-*-arm64-unsigned`) and nothing else.
//!
//! The exact package names come from the `linux-image-arm64` and `linux-image-6.12-arm64`
//! metapackages' dependencies, so they follow the archive. The unsigned package is preferred
//! (the same kernel without the Secure Boot signature); the signed one is taken when it is the
//! only one.

use super::apt::{self, Apt, DebPackage, Stanza};
use crate::Result;
use std::path::{Path, PathBuf};

/// Where the Image header keeps its magic, and the magic (`ARM\x64`).
const IMAGE_MAGIC_OFFSET: usize = 0x38;
const IMAGE_MAGIC: &[u8; 4] = b"ARM\x64";
const GZIP_MAGIC: &[u8; 2] = b"\x1f\x8b";

/// Which Debian kernel series the guest runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum KernelSeries {
    /// bookworm-backports' 6.12, falling back to bookworm's 6.1 when apt offers no 6.12.
    #[default]
    Linux6_12,
    /// bookworm's 6.1 only.
    Linux6_1,
}

impl KernelSeries {
    /// Every series, as `--debian-kernel` names them.
    pub(crate) const ALL: &[Self] = &[Self::Linux6_12, Self::Linux6_1];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Linux6_12 => "6.12",
            Self::Linux6_1 => "6.1",
        }
    }

    pub(crate) fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|series| series.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "unknown Debian kernel series `{name}` ({})",
                    names.join(", ")
                )
                .into()
            })
    }

    /// The suffix of this series' cache entries (`kernel{suffix}/`, `initramfs{suffix}.cpio`):
    /// none for the default, so that caches made before there was a choice stay valid.
    pub(crate) fn cache_suffix(self) -> &'static str {
        match self {
            Self::Linux6_12 => "",
            Self::Linux6_1 => "-6.1",
        }
    }

    /// The metapackages whose dependencies name this series' kernel packages.
    fn metapackages(self) -> &'static [&'static str] {
        match self {
            Self::Linux6_12 => &["linux-image-arm64", "linux-image-6.12-arm64"],
            Self::Linux6_1 => &["linux-image-arm64"],
        }
    }
}

impl std::fmt::Display for KernelSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unpacked kernel.
#[derive(Clone, Debug)]
pub(crate) struct Kernel {
    /// The arm64 `Image` (what QEMU's `-kernel` or a boot loader takes).
    pub(crate) image: PathBuf,
    /// The release, as `uname -r` prints it (e.g. `6.12.95+deb12-arm64`).
    pub(crate) release: String,
    /// `lib/modules/<release>` in the unpacked package.
    pub(crate) modules: PathBuf,
    /// `boot/config-<release>`.
    pub(crate) config: PathBuf,
    /// The Debian package and version it came from.
    pub(crate) package: String,
    pub(crate) package_version: String,
}

/// What a kernel image file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ImageFormat {
    /// A plain arm64 `Image`.
    Plain,
    /// A gzip stream (of an `Image`, once decompressed).
    Gzip,
    /// Anything else.
    Unknown,
}

pub(crate) fn image_format(head: &[u8]) -> ImageFormat {
    if head.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4) == Some(IMAGE_MAGIC.as_slice()) {
        ImageFormat::Plain
    } else if head.starts_with(GZIP_MAGIC) {
        ImageFormat::Gzip
    } else {
        ImageFormat::Unknown
    }
}

/// Downloads (once) and unpacks an arm64 Debian kernel of `series` under `cache`; returns where
/// its parts are. A later call finds it there without asking apt.
pub(crate) fn fetch_kernel(cache: &Path, series: KernelSeries) -> Result<Kernel> {
    let root = cache.join(format!("kernel{}", series.cache_suffix()));
    if let Some(package) = apt::read_stamp(&root) {
        println!(
            "xtask: guest: kernel {} {} (cached in {}; delete it to fetch again)",
            package.name,
            package.version,
            root.display()
        );
        return locate(&root, &package, cache);
    }
    let mut apt = Apt::new()?;
    let package = choose_kernel_package(&mut apt, series)?;
    println!("xtask: guest: kernel package {package}");
    apt.download_and_unpack(&package, cache, &root)?;
    let kernel = locate(&root, &package, cache)?;
    apt::write_stamp(&root, &package)?;
    Ok(kernel)
}

fn choose_kernel_package(apt: &mut Apt, series: KernelSeries) -> Result<DebPackage> {
    let metapackages = series.metapackages();
    let mut stanzas = Vec::new();
    for meta in metapackages {
        stanzas.extend(apt.show(meta)?);
    }
    let choices = rank_kernel_choices(&stanzas, series);
    if choices.is_empty() {
        let hint = if apt::is_root() {
            ""
        } else {
            " (as root, `apt-get update` may find them)"
        };
        return Err(format!(
            "no arm64 Linux {series} kernel package found by apt: none of {} names one{hint}",
            metapackages.join(", ")
        )
        .into());
    }
    for (name, version) in &choices {
        for candidate in [format!("{name}-unsigned"), name.clone()] {
            if let Some(package) = apt.find(&candidate, version) {
                return Ok(package);
            }
        }
    }
    Err(format!(
        "arm64 kernel packages named by the metapackages are not downloadable: {}",
        choices
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .into())
}

/// The kernel packages the metapackages depend on that `series` may take, best first; within a
/// rank, in apt's order. For 6.12: 6.12 from backports, other 6.12, 6.1, then anything else.
/// For 6.1: 6.1 only.
pub(crate) fn rank_kernel_choices(
    metapackages: &[Stanza],
    series: KernelSeries,
) -> Vec<(String, String)> {
    let mut choices: Vec<(u8, String, String)> = Vec::new();
    for stanza in metapackages {
        let Some((name, version)) = exact_dependency(&stanza.depends) else {
            continue;
        };
        if !name.starts_with("linux-image-") || choices.iter().any(|(_, n, _)| *n == name) {
            continue;
        }
        let is_6_1 = name.starts_with("linux-image-6.1.");
        let rank = match series {
            KernelSeries::Linux6_1 if is_6_1 => 0,
            KernelSeries::Linux6_1 => continue,
            KernelSeries::Linux6_12
                if name.starts_with("linux-image-6.12.") && version.contains("bpo") =>
            {
                0
            }
            KernelSeries::Linux6_12 if name.starts_with("linux-image-6.12.") => 1,
            KernelSeries::Linux6_12 if is_6_1 => 2,
            KernelSeries::Linux6_12 => 3,
        };
        choices.push((rank, name, version));
    }
    choices.sort_by_key(|(rank, _, _)| *rank);
    choices.into_iter().map(|(_, n, v)| (n, v)).collect()
}

/// `name (= version)` from the first dependency of a `Depends:` field.
fn exact_dependency(depends: &str) -> Option<(String, String)> {
    let first = depends.split([',', '|']).next()?.trim();
    let (name, rest) = first.split_once(' ')?;
    let version = rest
        .trim()
        .strip_prefix("(=")?
        .strip_suffix(')')?
        .trim()
        .to_string();
    Some((name.to_string(), version))
}

/// Finds the image, release, config and modules in an unpacked kernel package.
fn locate(root: &Path, package: &DebPackage, cache: &Path) -> Result<Kernel> {
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(|e| format!("{}: {e} (is the kernel package unpacked?)", boot.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("no boot/vmlinuz-* in {}", root.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or("bad vmlinuz file name")?
        .to_string();
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| root.join(dir).join(&release))
        .find(|dir| dir.is_dir())
        .ok_or_else(|| format!("no lib/modules/{release} in {}", root.display()))?;
    let config = boot.join(format!("config-{release}"));
    if !config.is_file() {
        return Err(format!("no {}", config.display()).into());
    }
    let image = plain_image(&vmlinuz, &cache.join(format!("Image-{release}")))?;
    Ok(Kernel {
        image,
        release,
        modules,
        config,
        package: package.name.clone(),
        package_version: package.version.clone(),
    })
}

/// `vmlinuz` itself when it is a plain Image; otherwise its gzip contents, written to
/// `decompressed` and checked.
fn plain_image(vmlinuz: &Path, decompressed: &Path) -> Result<PathBuf> {
    let head = read_head(vmlinuz)?;
    match image_format(&head) {
        ImageFormat::Plain => Ok(vmlinuz.to_path_buf()),
        ImageFormat::Gzip => {
            if !decompressed.exists() {
                println!(
                    "xtask: guest: {} is gzip-compressed; decompressing",
                    vmlinuz.display()
                );
                let output = std::process::Command::new("gzip")
                    .arg("-dc")
                    .arg(vmlinuz)
                    .output()
                    .map_err(|e| format!("gzip: {e}"))?;
                if !output.status.success() {
                    return Err(format!("gzip -dc {} failed", vmlinuz.display()).into());
                }
                if image_format(&output.stdout) != ImageFormat::Plain {
                    return Err(format!(
                        "{} decompresses to something that is not an arm64 Image",
                        vmlinuz.display()
                    )
                    .into());
                }
                std::fs::write(decompressed, &output.stdout)?;
            }
            Ok(decompressed.to_path_buf())
        }
        ImageFormat::Unknown => Err(format!(
            "{} is neither an arm64 Image (magic ARM\\x64 at 0x38) nor gzip",
            vmlinuz.display()
        )
        .into()),
    }
}

fn read_head(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .take(64)
        .read_to_end(&mut head)?;
    Ok(head)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn image_formats_are_told_apart_by_their_magic() {
        let mut plain = vec![0u8; 64];
        plain[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(image_format(&plain), ImageFormat::Plain);
        assert_eq!(image_format(b"\x1f\x8b\x08\x00rest"), ImageFormat::Gzip);
        assert_eq!(image_format(b"MZ\0\0"), ImageFormat::Unknown);
        assert_eq!(image_format(&[]), ImageFormat::Unknown);
    }

    fn meta(version: &str, depends: &str) -> Stanza {
        Stanza {
            package: "linux-image-arm64".into(),
            version: version.into(),
            depends: depends.into(),
            size: None,
        }
    }

    #[test]
    fn backports_6_12_is_preferred_then_other_6_12_then_6_1() {
        let stanzas = [
            meta(
                "6.1.176-1",
                "linux-image-6.1.0-50-arm64 (= 6.1.176-1), foo (>= 1)",
            ),
            meta(
                "6.12.117-1~deb12u1",
                "linux-image-6.12.117+deb12-arm64 (= 6.12.117-1~deb12u1)",
            ),
            meta(
                "6.12.95-1~bpo12+1",
                "linux-image-6.12.95+deb12-arm64 (= 6.12.95-1~bpo12+1)",
            ),
            meta("0", "linux-image-6.1.0-50-arm64 (= 6.1.176-1)"),
            meta("1", "something-else"),
        ];
        let choices = rank_kernel_choices(&stanzas, KernelSeries::Linux6_12);
        let names: Vec<&str> = choices.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-image-6.12.95+deb12-arm64",
                "linux-image-6.12.117+deb12-arm64",
                "linux-image-6.1.0-50-arm64",
            ]
        );
        assert_eq!(choices[0].1, "6.12.95-1~bpo12+1");
    }

    #[test]
    fn the_6_1_series_takes_6_1_only_newest_first_as_apt_lists_it() {
        // `apt-cache show linux-image-arm64:arm64` on bookworm with backports and security.
        let stanzas = [
            meta(
                "6.12.95-1~bpo12+1",
                "linux-image-6.12.95+deb12-arm64 (= 6.12.95-1~bpo12+1)",
            ),
            meta("6.1.192-3", "linux-image-6.1.0-57-arm64 (= 6.1.192-3)"),
            meta("6.1.176-1", "linux-image-6.1.0-50-arm64 (= 6.1.176-1)"),
        ];
        let choices = rank_kernel_choices(&stanzas, KernelSeries::Linux6_1);
        assert_eq!(
            choices,
            [
                ("linux-image-6.1.0-57-arm64".into(), "6.1.192-3".into()),
                ("linux-image-6.1.0-50-arm64".into(), "6.1.176-1".into()),
            ]
        );
        assert!(rank_kernel_choices(&stanzas[..1], KernelSeries::Linux6_1).is_empty());
    }

    #[test]
    fn series_are_named_and_cached_apart() {
        assert_eq!(KernelSeries::default(), KernelSeries::Linux6_12);
        for series in KernelSeries::ALL {
            assert_eq!(KernelSeries::parse(series.name()).unwrap(), *series);
        }
        assert!(KernelSeries::parse("5.10").is_err());
        // The default keeps the cache directory it had before there was a choice.
        assert_eq!(KernelSeries::Linux6_12.cache_suffix(), "");
        assert_ne!(
            KernelSeries::Linux6_1.cache_suffix(),
            KernelSeries::Linux6_12.cache_suffix()
        );
    }
}
