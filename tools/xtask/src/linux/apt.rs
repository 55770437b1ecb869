//! Fetching arm64 Debian packages with the host's apt, without installing them.
//!
//! `apt-get download` puts the `.deb` in the cache and `dpkg -x` unpacks it into a directory of
//! its own; nothing is installed on the host. Making arm64 known to dpkg and refreshing the
//! package lists need root, and happen only when a lookup cannot succeed without them.

use crate::Result;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One version of a package, as `apt-cache show` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stanza {
    pub(crate) package: String,
    pub(crate) version: String,
    pub(crate) depends: String,
    /// Size of the `.deb` in bytes.
    pub(crate) size: Option<u64>,
}

/// A package version chosen for download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DebPackage {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) size: Option<u64>,
}

impl std::fmt::Display for DebPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:arm64 {}", self.name, self.version)?;
        if let Some(size) = self.size {
            write!(f, " ({})", human_size(size))?;
        }
        Ok(())
    }
}

/// The host's apt, made able to answer for arm64.
#[derive(Debug)]
pub(crate) struct Apt {
    /// `apt-get update` has run in this process (it runs at most once).
    updated: bool,
}

impl Apt {
    /// Checks for apt and dpkg, and that dpkg knows arm64 (adding it when root).
    pub(crate) fn new() -> Result<Self> {
        for tool in ["apt-get", "apt-cache", "dpkg"] {
            if command_stdout(Command::new(tool).arg("--version")).is_err() {
                return Err(format!(
                    "`{tool}` not found: fetching the Linux guest needs Debian's apt and dpkg"
                )
                .into());
            }
        }
        let mut apt = Self { updated: false };
        if !knows_arm64()? {
            if !is_root() {
                return Err(
                    "dpkg does not know the arm64 architecture and adding it needs root: \
                            run `dpkg --add-architecture arm64 && apt-get update` as root"
                        .into(),
                );
            }
            println!("xtask: guest: dpkg --add-architecture arm64 (to download arm64 packages)");
            command_stdout(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
            apt.update()?;
        }
        Ok(apt)
    }

    /// Every version apt knows of `package` for arm64; refreshes the lists once if it knows none.
    pub(crate) fn show(&mut self, package: &str) -> Result<Vec<Stanza>> {
        let query = |package: &str| {
            command_stdout(Command::new("apt-cache").args(["show", &format!("{package}:arm64")]))
                .map(|text| parse_stanzas(&text))
                .unwrap_or_default()
        };
        let stanzas = query(package);
        if !stanzas.is_empty() || self.updated {
            return Ok(stanzas);
        }
        if !is_root() {
            return Ok(stanzas);
        }
        println!("xtask: guest: apt knows no {package}:arm64; refreshing the package lists");
        self.update()?;
        Ok(query(package))
    }

    /// The exact version `name=version` for arm64, if apt can download it.
    pub(crate) fn find(&mut self, name: &str, version: &str) -> Option<DebPackage> {
        let text = command_stdout(
            Command::new("apt-cache").args(["show", &format!("{name}:arm64={version}")]),
        )
        .ok()?;
        let stanza = parse_stanzas(&text).into_iter().next()?;
        Some(DebPackage {
            name: stanza.package,
            version: stanza.version,
            size: stanza.size,
        })
    }

    /// The version apt would install of `name` for arm64.
    pub(crate) fn candidate(&mut self, name: &str) -> Result<DebPackage> {
        let stanzas = self.show(name)?;
        let policy =
            command_stdout(Command::new("apt-cache").args(["policy", &format!("{name}:arm64")]))
                .unwrap_or_default();
        let candidate = policy
            .lines()
            .find_map(|line| line.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .filter(|v| *v != "(none)");
        let stanza = stanzas
            .iter()
            .find(|s| Some(s.version.as_str()) == candidate)
            .or(stanzas.first())
            .ok_or_else(|| {
                format!("package {name}:arm64 not found by apt (is this Debian with arm64 lists?)")
            })?;
        Ok(DebPackage {
            name: stanza.package.clone(),
            version: stanza.version.clone(),
            size: stanza.size,
        })
    }

    /// Downloads `package` into `cache/debs` (unless it is there) and unpacks it into `into`,
    /// which is replaced.
    pub(crate) fn download_and_unpack(
        &self,
        package: &DebPackage,
        cache: &Path,
        into: &Path,
    ) -> Result<()> {
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs)?;
        let deb = debs.join(deb_file_name(&package.name, &package.version));
        if deb.exists() {
            println!("xtask: guest: using downloaded {}", deb.display());
        } else {
            println!("xtask: guest: downloading {package}");
            let output = Command::new("apt-get")
                .args(["download", "-q", "-o", "Acquire::Retries=3"])
                .arg(format!("{}:arm64={}", package.name, package.version))
                .current_dir(&debs)
                .stdout(Stdio::inherit())
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| format!("apt-get download: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "apt-get download {} failed ({}): {}",
                    package.name,
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )
                .into());
            }
            if !deb.exists() {
                return Err(format!("apt-get download did not write {}", deb.display()).into());
            }
            let size = std::fs::metadata(&deb)?.len();
            println!(
                "xtask: guest: downloaded {} ({})",
                deb.display(),
                human_size(size)
            );
        }
        let partial = into.with_extension("partial");
        remove_dir_if_present(&partial)?;
        remove_dir_if_present(into)?;
        println!("xtask: guest: unpacking into {}", into.display());
        command_stdout(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
        std::fs::rename(&partial, into)?;
        Ok(())
    }

    fn update(&mut self) -> Result<()> {
        println!("xtask: guest: apt-get update");
        let status = Command::new("apt-get")
            .args(["update", "-q", "-o", "Acquire::Retries=3"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get update: {e}"))?;
        self.updated = true;
        if !status.success() {
            return Err(format!("apt-get update failed ({status})").into());
        }
        Ok(())
    }
}

/// Installs host packages (decompressors), as root only.
pub(crate) fn install_host_packages(packages: &[&str]) -> Result<()> {
    if !is_root() {
        return Err(format!(
            "{} not installed, and installing needs root: apt-get install {}",
            packages.join(", "),
            packages.join(" ")
        )
        .into());
    }
    println!("xtask: guest: installing {}", packages.join(" "));
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            "Acquire::Retries=3",
        ])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("apt-get install: {e}"))?;
    if !status.success() {
        return Err(format!("apt-get install {} failed ({status})", packages.join(" ")).into());
    }
    Ok(())
}

/// Parses `apt-cache show` output (RFC 822-style stanzas separated by blank lines).
pub(crate) fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut stanzas = Vec::new();
    let mut current = Stanza::default();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if !current.package.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
            current = Stanza::default();
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Package" => current.package = value.to_string(),
            "Version" => current.version = value.to_string(),
            "Depends" => current.depends = value.to_string(),
            "Size" => current.size = value.parse().ok(),
            _ => {}
        }
    }
    stanzas
}

/// The file `apt-get download` writes: `name_version_arm64.deb`, with `:` in the version
/// (an epoch) written `%3a`.
pub(crate) fn deb_file_name(name: &str, version: &str) -> String {
    format!("{name}_{}_arm64.deb", version.replace(':', "%3a"))
}

/// `1.5 MiB`-style size.
pub(crate) fn human_size(bytes: u64) -> String {
    let mib = 1u64 << 20;
    if bytes >= mib {
        format!("{}.{} MiB", bytes / mib, (bytes % mib) * 10 / mib)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

/// Runs `command` and returns its standard output, or an error with its standard error.
pub(crate) fn command_stdout(command: &mut Command) -> Result<String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn knows_arm64() -> Result<bool> {
    let native = command_stdout(Command::new("dpkg").arg("--print-architecture"))?;
    let foreign = command_stdout(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    Ok(native
        .split_whitespace()
        .chain(foreign.split_whitespace())
        .any(|arch| arch == "arm64"))
}

fn remove_dir_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("removing {}: {e}", path.display()).into())
        }
        _ => Ok(()),
    }
}

/// A stamp file naming the package unpacked in a directory, written after a complete unpack.
pub(crate) fn stamp_path(dir: &Path) -> PathBuf {
    dir.join(".xtask-package")
}

pub(crate) fn write_stamp(dir: &Path, package: &DebPackage) -> Result<()> {
    std::fs::write(
        stamp_path(dir),
        format!("{}\n{}\n", package.name, package.version),
    )?;
    Ok(())
}

/// The package recorded in `dir`'s stamp, if the unpack there completed.
pub(crate) fn read_stamp(dir: &Path) -> Option<DebPackage> {
    let text = std::fs::read_to_string(stamp_path(dir)).ok()?;
    let mut lines = text.lines();
    Some(DebPackage {
        name: lines.next()?.to_string(),
        version: lines.next()?.to_string(),
        size: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn apt_cache_show_output_parses_into_stanzas() {
        let text = "Package: linux-image-arm64\nSource: linux-signed-arm64 (6.12.95+1~bpo12+1)\n\
                    Version: 6.12.95-1~bpo12+1\nArchitecture: arm64\n\
                    Depends: linux-image-6.12.95+deb12-arm64 (= 6.12.95-1~bpo12+1)\n\
                    Description: Linux for 64-bit ARMv8 machines (meta-package)\n This package\n\
                    Size: 1234\n\n\
                    Package: linux-image-arm64\nVersion: 6.1.176-1\n\
                    Depends: linux-image-6.1.0-50-arm64 (= 6.1.176-1)\n";
        let stanzas = parse_stanzas(text);
        assert_eq!(stanzas.len(), 2);
        assert_eq!(stanzas[0].version, "6.12.95-1~bpo12+1");
        assert_eq!(
            stanzas[0].depends,
            "linux-image-6.12.95+deb12-arm64 (= 6.12.95-1~bpo12+1)"
        );
        assert_eq!(stanzas[0].size, Some(1234));
        assert_eq!(stanzas[1].package, "linux-image-arm64");
        assert_eq!(stanzas[1].size, None);
    }

    #[test]
    fn deb_names_escape_the_epoch_like_apt() {
        assert_eq!(
            deb_file_name("busybox-static", "1:1.35.0-4+deb12u1+b1"),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb"
        );
        assert_eq!(human_size(92_332_276), "88.0 MiB");
        assert_eq!(human_size(822_236), "803 KiB");
        assert_eq!(human_size(1000), "1 KiB");
    }
}
