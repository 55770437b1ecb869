//! Finding, and where possible installing, what the project needs on the host.
//!
//! Needs: QEMU >= 9.2 (its `virt` SMMUv3 supports nesting), a cross toolchain for
//! `aarch64-unknown-none`, and `dtc`. The cross toolchain is a rustup target when one is
//! installed; otherwise Debian's `rustc-web`/`cargo-web`/`rust-web-src` with `lld`, used with
//! `-Zbuild-std`. The defmt decoder is compiled into this tool, so it needs no install.
//!
//! When something is missing and this is a Debian machine and we are root, it is installed with
//! apt (saying what and why); otherwise the exact commands are printed. Checking alone runs a
//! handful of `--version` probes, well under two seconds.

use crate::Result;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest QEMU whose `virt` SMMUv3 offers nested translation.
const MIN_QEMU: (u32, u32) = (9, 2);
/// The oldest Rust compiler the workspace builds with (`rust-version` in Cargo.toml).
const MIN_RUSTC: (u32, u32) = (1, 88);

/// How the hypervisor is cross-compiled.
#[derive(Clone, Debug)]
pub(crate) enum CrossToolchain {
    /// `rustup target add aarch64-unknown-none` was done: the normal cargo builds for it.
    RustupTarget,
    /// Debian's packaged compiler with the library source, building `core` from source.
    DebianBuildStd { cargo: PathBuf, rustc: PathBuf },
}

/// Everything found.
#[derive(Clone, Debug)]
pub(crate) struct Tools {
    pub(crate) qemu: PathBuf,
    pub(crate) qemu_version: (u32, u32, u32),
    pub(crate) cross: CrossToolchain,
}

impl fmt::Display for Tools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, c) = self.qemu_version;
        write!(
            f,
            "QEMU {a}.{b}.{c} ({}), cross toolchain: ",
            self.qemu.display()
        )?;
        match &self.cross {
            CrossToolchain::RustupTarget => write!(f, "rustup target aarch64-unknown-none"),
            CrossToolchain::DebianBuildStd { cargo, .. } => {
                write!(f, "{} with -Zbuild-std (Debian rustc-web)", cargo.display())
            }
        }
    }
}

/// Finds everything, installing what is missing when it can. Idempotent.
pub(crate) fn ensure() -> Result<Tools> {
    let missing = match find_all() {
        Ok(tools) => return Ok(tools),
        Err(missing) => missing,
    };
    install(&missing)?;
    find_all().map_err(|missing| {
        for need in &missing {
            eprintln!("xtask: still missing: {}", need.describe());
        }
        let first = missing.first().map_or_else(String::new, Need::describe);
        format!("prerequisite missing: {first}").into()
    })
}

/// Something missing, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Need {
    /// No QEMU, or one older than 9.2 (found version given).
    Qemu(Option<(u32, u32, u32)>),
    /// No cross toolchain for aarch64-unknown-none.
    CrossToolchain,
    /// No dtc.
    Dtc,
}

impl Need {
    fn describe(&self) -> String {
        match self {
            Need::Qemu(None) => {
                "qemu-system-aarch64 (>= 9.2, for the nested SMMUv3 of `virt`)".into()
            }
            Need::Qemu(Some((a, b, c))) => {
                format!(
                    "qemu-system-aarch64 >= 9.2 (found {a}.{b}.{c}, whose SMMUv3 lacks nesting)"
                )
            }
            Need::CrossToolchain => "a Rust cross toolchain for aarch64-unknown-none".into(),
            Need::Dtc => "dtc (device-tree-compiler), to inspect and build device trees".into(),
        }
    }
}

/// Probes everything once: the tools, or every missing prerequisite.
fn find_all() -> Result<Tools, Vec<Need>> {
    let qemu = find_qemu();
    let cross = find_cross_toolchain();
    let dtc = command_succeeds("dtc", &["--version"]);
    match (qemu, cross, dtc) {
        (Ok((qemu, qemu_version)), Ok(cross), true) => Ok(Tools {
            qemu,
            qemu_version,
            cross,
        }),
        (qemu, cross, dtc) => {
            let mut missing = Vec::new();
            missing.extend(qemu.err());
            missing.extend(cross.err());
            if !dtc {
                missing.push(Need::Dtc);
            }
            Err(missing)
        }
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn command_succeeds(program: &str, args: &[&str]) -> bool {
    command_output(program, args).is_some()
}

/// Parses the first `X.Y[.Z]` after `marker` in `text`.
fn parse_version(text: &str, marker: &str) -> Option<(u32, u32, u32)> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let token = rest.split_whitespace().next()?;
    let mut parts = token
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

fn find_qemu() -> Result<(PathBuf, (u32, u32, u32)), Need> {
    let text = command_output("qemu-system-aarch64", &["--version"]).ok_or(Need::Qemu(None))?;
    let version = parse_version(&text, "version ").ok_or(Need::Qemu(None))?;
    if (version.0, version.1) < MIN_QEMU {
        return Err(Need::Qemu(Some(version)));
    }
    Ok((PathBuf::from("qemu-system-aarch64"), version))
}

fn find_cross_toolchain() -> Result<CrossToolchain, Need> {
    let installed = command_output("rustup", &["target", "list", "--installed"]);
    if installed.is_some_and(|list| {
        list.lines()
            .any(|line| line.trim() == "aarch64-unknown-none")
    }) {
        return Ok(CrossToolchain::RustupTarget);
    }
    let cargo = PathBuf::from("/usr/bin/cargo");
    let rustc = PathBuf::from("/usr/bin/rustc");
    let source = Path::new("/usr/lib/rustlib/src/rust/library/core");
    let version = command_output("/usr/bin/rustc", &["--version"])
        .and_then(|text| parse_version(&text, "rustc "));
    let new_enough = version.is_some_and(|(a, b, _)| (a, b) >= MIN_RUSTC);
    let has_linker = command_succeeds("rust-lld", &["-flavor", "gnu", "--version"]);
    if cargo.exists() && new_enough && source.exists() && has_linker {
        return Ok(CrossToolchain::DebianBuildStd { cargo, rustc });
    }
    Err(Need::CrossToolchain)
}

/// `/etc/os-release` as key/value pairs.
fn os_release() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

fn os_value(release: &[(String, String)], key: &str) -> String {
    release
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn is_root() -> bool {
    command_output("id", &["-u"]).is_some_and(|uid| uid.trim() == "0")
}

/// The apt commands that supply `missing` on this distribution.
fn install_plan(missing: &[Need], codename: &str) -> Vec<String> {
    let mut plan = Vec::new();
    let wants_backports =
        codename == "bookworm" && missing.iter().any(|n| matches!(n, Need::Qemu(_)));
    if wants_backports {
        plan.push(
            "enable bookworm-backports: add it to the `Suites:` line of /etc/apt/sources.list.d/debian.sources"
                .to_string(),
        );
    }
    plan.push("apt-get update".into());
    let mut packages = Vec::new();
    if missing.contains(&Need::CrossToolchain) {
        packages.extend(["rustc-web", "cargo-web", "rust-web-src", "lld-22"]);
    }
    if missing.contains(&Need::Dtc) {
        packages.push("device-tree-compiler");
    }
    if !packages.is_empty() {
        plan.push(format!("apt-get install -y {}", packages.join(" ")));
    }
    if missing.iter().any(|n| matches!(n, Need::Qemu(_))) {
        if wants_backports {
            plan.push("apt-get install -y -t bookworm-backports qemu-system-arm".into());
        } else {
            plan.push("apt-get install -y qemu-system-arm".into());
        }
    }
    plan
}

fn install(missing: &[Need]) -> Result<()> {
    let release = os_release();
    let id = os_value(&release, "ID");
    let like = os_value(&release, "ID_LIKE");
    let codename = os_value(&release, "VERSION_CODENAME");
    let debian_like = id == "debian" || id == "ubuntu" || like.contains("debian");
    let plan = install_plan(missing, &codename);
    for need in missing {
        println!("xtask: setup: missing {}", need.describe());
    }
    if !debian_like || !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        eprintln!("xtask: setup: cannot install here (needs root on Debian/Ubuntu). Run as root:");
        for step in &plan {
            eprintln!("    {step}");
        }
        eprintln!(
            "  or, with rustup and network access: rustup target add aarch64-unknown-none,\n  \
             and a QEMU >= 9.2 from your distribution."
        );
        return Err("prerequisites missing; see the commands above".into());
    }
    if codename == "bookworm" && missing.iter().any(|n| matches!(n, Need::Qemu(_))) {
        enable_bookworm_backports()?;
    }
    println!("xtask: setup: apt-get update");
    apt(&["update", "-q"])?;
    let mut packages: Vec<&str> = Vec::new();
    if missing.contains(&Need::CrossToolchain) {
        println!(
            "xtask: setup: installing rustc-web cargo-web rust-web-src lld-22 \
             (a compiler with library source, to build core for aarch64-unknown-none)"
        );
        packages.extend(["rustc-web", "cargo-web", "rust-web-src", "lld-22"]);
    }
    if missing.contains(&Need::Dtc) {
        println!("xtask: setup: installing device-tree-compiler (dtc)");
        packages.push("device-tree-compiler");
    }
    if !packages.is_empty() {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&packages);
        apt(&args)?;
    }
    if missing.iter().any(|n| matches!(n, Need::Qemu(_))) {
        println!("xtask: setup: installing qemu-system-arm (>= 9.2: the virt SMMUv3 with nesting)");
        if codename == "bookworm" {
            apt(&[
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-t",
                "bookworm-backports",
                "qemu-system-arm",
            ])?;
        } else {
            apt(&[
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "qemu-system-arm",
            ])?;
        }
    }
    Ok(())
}

fn apt(args: &[&str]) -> Result<()> {
    // Retries: a registry hiccup should not fail a fresh machine's first run.
    let status = Command::new("apt-get")
        .args(["-o", "Acquire::Retries=3"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get {} failed ({status})", args.join(" ")).into())
    }
}

/// Adds `bookworm-backports` to the machine's existing Debian source, on the same mirror.
fn enable_bookworm_backports() -> Result<()> {
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if let Ok(text) = std::fs::read_to_string(deb822) {
        if text.contains("bookworm-backports") {
            return Ok(());
        }
        let edited =
            add_backports_suite(&text).ok_or("no `Suites: bookworm` line in debian.sources")?;
        println!(
            "xtask: setup: enabling bookworm-backports in {} (QEMU 10 lives there)",
            deb822.display()
        );
        std::fs::write(deb822, edited)?;
        return Ok(());
    }
    let list = Path::new("/etc/apt/sources.list");
    let text = std::fs::read_to_string(list).map_err(|e| format!("{}: {e}", list.display()))?;
    if text.contains("bookworm-backports") {
        return Ok(());
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("deb ") && l.split_whitespace().nth(2) == Some("bookworm"))
        .ok_or("no `deb ... bookworm` line in /etc/apt/sources.list")?;
    let backports = line.replacen(" bookworm ", " bookworm-backports ", 1);
    println!(
        "xtask: setup: enabling bookworm-backports in {} (QEMU 10 lives there)",
        list.display()
    );
    std::fs::write(list, format!("{text}\n{backports}\n"))?;
    Ok(())
}

/// The deb822 text with `bookworm-backports` added to the first `Suites:` line naming `bookworm`.
fn add_backports_suite(text: &str) -> Option<String> {
    let mut done = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if !done
                && line.starts_with("Suites:")
                && line.split_whitespace().any(|w| w == "bookworm")
            {
                done = true;
                format!("{line} bookworm-backports")
            } else {
                line.to_string()
            }
        })
        .collect();
    done.then(|| lines.join("\n") + "\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_qemu_and_rustc_banners() {
        let qemu = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n";
        assert_eq!(parse_version(qemu, "version "), Some((10, 0, 2)));
        assert_eq!(
            parse_version("rustc 1.96.0 (ac68faa20 2026-05-25)", "rustc "),
            Some((1, 96, 0))
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2", "version "),
            Some((7, 2, 0))
        );
        assert_eq!(parse_version("nothing", "version "), None);
    }

    #[test]
    fn backports_are_added_to_the_bookworm_suites_line_only() {
        let text = "Types: deb\nURIs: http://mirror/debian\nSuites: bookworm bookworm-updates\n\n\
                    Types: deb\nSuites: bookworm-security\n";
        let edited = add_backports_suite(text).unwrap();
        assert!(edited.contains("Suites: bookworm bookworm-updates bookworm-backports\n"));
        assert!(edited.contains("Suites: bookworm-security\n"));
        assert_eq!(add_backports_suite("Suites: trixie\n"), None);
    }

    #[test]
    fn the_plan_uses_backports_for_qemu_only_on_bookworm() {
        let plan = install_plan(&[Need::Qemu(Some((7, 2, 0))), Need::Dtc], "bookworm");
        assert!(
            plan.iter()
                .any(|s| s.contains("-t bookworm-backports qemu-system-arm"))
        );
        assert!(plan.iter().any(|s| s.contains("device-tree-compiler")));
        let plan = install_plan(&[Need::Qemu(None)], "trixie");
        assert!(plan.iter().all(|s| !s.contains("backports")));
    }
}
