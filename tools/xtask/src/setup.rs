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
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CrossToolchain {
    /// `rustup target add aarch64-unknown-none aarch64-unknown-none-softfloat` was done: the
    /// normal cargo builds for them, and
    /// links with the `rust-lld` that rustup ships inside the toolchain.
    RustupTarget { linker: Linker },
    /// Debian's packaged compiler with the library source, building `core` from source, and
    /// linking with Debian's LLD (Debian ships no `rust-lld`).
    DebianBuildStd {
        cargo: PathBuf,
        rustc: PathBuf,
        version: (u32, u32, u32),
        linker: Linker,
    },
}

impl CrossToolchain {
    /// The linker the build names explicitly (`CARGO_TARGET_AARCH64_UNKNOWN_NONE_LINKER`).
    pub(crate) fn linker(&self) -> &Linker {
        match self {
            Self::RustupTarget { linker } | Self::DebianBuildStd { linker, .. } => linker,
        }
    }
}

/// A linker for `aarch64-unknown-none`: an LLD the build runs by its full path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Linker {
    /// What the build runs, exactly.
    pub(crate) path: PathBuf,
    /// Its `--version` banner's first line.
    pub(crate) version: String,
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
            "QEMU {a}.{b}.{c} ({}); cross toolchain: ",
            self.qemu.display()
        )?;
        match &self.cross {
            CrossToolchain::RustupTarget { linker } => write!(
                f,
                "rustup's targets aarch64-unknown-none and -softfloat (installed), linked by rustup's {} ({})",
                linker.path.display(),
                linker.version
            ),
            CrossToolchain::DebianBuildStd {
                rustc,
                version: (a, b, c),
                linker,
                ..
            } => write!(
                f,
                "Debian's rustc {a}.{b}.{c} ({}) with -Zbuild-std (no rustup target installed), \
                 linked by {} ({}; named explicitly: Debian ships no rust-lld)",
                rustc.display(),
                linker.path.display(),
                linker.version
            ),
        }
    }
}

/// Finds everything, installing what is missing when it can. Idempotent.
pub(crate) fn ensure() -> Result<Tools> {
    let missing = match find_all() {
        Ok(tools) => {
            println!("xtask: setup: {tools}");
            return Ok(tools);
        }
        Err(missing) => missing,
    };
    install(&missing)?;
    let tools = find_all().map_err(|missing| {
        for need in &missing {
            eprintln!("xtask: still missing: {}", need.describe());
        }
        let first = missing.first().map_or_else(String::new, Need::describe);
        format!("prerequisite missing: {first}")
    })?;
    println!("xtask: setup: {tools}");
    Ok(tools)
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
    RealMachine.output(Path::new(program), args)
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

/// What detection asks of the machine. The real machine answers by running commands and looking
/// at files; tests answer for a simulated one (a fresh Debian with rustup first on `PATH`, say).
trait Machine {
    /// The standard output of `program args`, if it ran and succeeded. A bare `program` is
    /// looked up on `PATH`.
    fn output(&self, program: &Path, args: &[&str]) -> Option<String>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// The full path of `name` on `PATH`, if it is there.
    fn which(&self, name: &str) -> Option<PathBuf>;
}

/// This machine.
struct RealMachine;

impl Machine for RealMachine {
    fn output(&self, program: &Path, args: &[&str]) -> Option<String> {
        let output = Command::new(program).args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn which(&self, name: &str) -> Option<PathBuf> {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    }
}

/// The LLD names Debian's `lld-N` packages install on `PATH`, newest first; `ld.lld` alone is
/// what the unversioned `lld` package (or a distribution's default LLVM) provides. The GNU
/// flavour is picked from the `ld.lld` name (a bare `lld-22` would need `-flavor gnu`).
const DEBIAN_LINKERS: &[&str] = &[
    "ld.lld-22",
    "ld.lld-21",
    "ld.lld-20",
    "ld.lld-19",
    "ld.lld-18",
    "ld.lld-17",
    "ld.lld-16",
    "ld.lld",
];

/// The package setup installs for the linker (it provides `ld.lld-22`).
const DEBIAN_LINKER_PACKAGE: &str = "lld-22";

/// Runs `path --version` exactly as the build will run the linker; its first line if it is an
/// LLD.
fn probe_linker(machine: &impl Machine, path: &Path, args: &[&str]) -> Option<Linker> {
    let banner = machine.output(path, args)?;
    let first = banner.lines().next()?.trim().to_string();
    first.contains("LLD").then_some(Linker {
        path: path.to_path_buf(),
        version: first,
    })
}

fn find_cross_toolchain() -> Result<CrossToolchain, Need> {
    detect_cross_toolchain(&RealMachine)
}

/// Chooses the cross toolchain: rustup's target if it is installed (with the `rust-lld` inside
/// that toolchain), else Debian's compiler with its library source and a Debian LLD found on
/// `PATH`. Every linker is probed by the path the build will use, never assumed.
fn detect_cross_toolchain(machine: &impl Machine) -> Result<CrossToolchain, Need> {
    let installed = machine.output(Path::new("rustup"), &["target", "list", "--installed"]);
    // Both targets: the hypervisor's (soft-float) and the test guest's.
    if installed.is_some_and(|list| {
        crate::image::TARGETS
            .iter()
            .all(|target| list.lines().any(|line| line.trim() == *target))
    }) {
        // rustc runs `rust-lld` from its own sysroot, not from PATH: check that very file.
        let sysroot = machine.output(Path::new("rustc"), &["--print", "sysroot"]);
        let host = machine
            .output(Path::new("rustc"), &["--print", "host-tuple"])
            .or_else(|| Some("x86_64-unknown-linux-gnu".into()));
        if let (Some(sysroot), Some(host)) = (sysroot, host) {
            let path = Path::new(sysroot.trim())
                .join("lib/rustlib")
                .join(host.trim())
                .join("bin/rust-lld");
            if let Some(linker) = probe_linker(machine, &path, &["-flavor", "gnu", "--version"]) {
                return Ok(CrossToolchain::RustupTarget { linker });
            }
        }
    }
    let cargo = PathBuf::from("/usr/bin/cargo");
    let rustc = PathBuf::from("/usr/bin/rustc");
    let source = Path::new("/usr/lib/rustlib/src/rust/library/core");
    let version = machine
        .output(&rustc, &["--version"])
        .and_then(|text| parse_version(&text, "rustc "));
    let version = version.filter(|&(a, b, _)| (a, b) >= MIN_RUSTC);
    let linker = DEBIAN_LINKERS.iter().find_map(|name| {
        let path = machine.which(name)?;
        probe_linker(machine, &path, &["--version"])
    });
    match (
        machine.exists(&cargo),
        version,
        machine.exists(source),
        linker,
    ) {
        (true, Some(version), true, Some(linker)) => Ok(CrossToolchain::DebianBuildStd {
            cargo,
            rustc,
            version,
            linker,
        }),
        _ => Err(Need::CrossToolchain),
    }
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
        packages.extend([
            "rustc-web",
            "cargo-web",
            "rust-web-src",
            DEBIAN_LINKER_PACKAGE,
        ]);
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
            "  or, with rustup and network access: rustup target add aarch64-unknown-none \
             aarch64-unknown-none-softfloat,\n  and a QEMU >= 9.2 from your distribution."
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
            "xtask: setup: installing rustc-web cargo-web rust-web-src {DEBIAN_LINKER_PACKAGE} \
             (a compiler with library source, to build core for aarch64-unknown-none, \
             and LLD to link it: ld.lld-22)"
        );
        packages.extend([
            "rustc-web",
            "cargo-web",
            "rust-web-src",
            DEBIAN_LINKER_PACKAGE,
        ]);
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
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    use std::collections::{BTreeMap, BTreeSet};

    /// A simulated machine: the commands that answer, the files that exist, what `PATH` finds.
    #[derive(Default)]
    struct Simulated {
        outputs: BTreeMap<(String, String), String>,
        files: BTreeSet<PathBuf>,
        on_path: BTreeMap<String, PathBuf>,
    }

    impl Simulated {
        fn answers(mut self, program: &str, args: &str, output: &str) -> Self {
            self.outputs
                .insert((program.into(), args.into()), output.into());
            self
        }
        fn file(mut self, path: &str) -> Self {
            self.files.insert(path.into());
            self
        }
        fn on_path(mut self, name: &str, path: &str) -> Self {
            self.on_path.insert(name.into(), path.into());
            self.file(path)
        }

        /// A fresh Debian 12 as CI gets it: rustup's stable proxies first on `PATH`, with the
        /// host target only; no Debian Rust, no LLD, no `rust-lld` anywhere.
        fn fresh_debian_with_rustup() -> Self {
            Self::default()
                .on_path("rustup", "/root/.cargo/bin/rustup")
                .on_path("rustc", "/root/.cargo/bin/rustc")
                .answers(
                    "rustup",
                    "target list --installed",
                    "x86_64-unknown-linux-gnu\n",
                )
                .answers(
                    "rustc",
                    "--print sysroot",
                    "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu\n",
                )
                .answers("rustc", "--print host-tuple", "x86_64-unknown-linux-gnu\n")
        }

        /// What `apt-get install` of setup's packages puts on the machine.
        fn install_debian_packages(self, packages: &[&str]) -> Self {
            packages
                .iter()
                .fold(self, |machine, package| match *package {
                    "rustc-web" => machine.file("/usr/bin/rustc").answers(
                        "/usr/bin/rustc",
                        "--version",
                        "rustc 1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)\n",
                    ),
                    "cargo-web" => machine.file("/usr/bin/cargo"),
                    "rust-web-src" => machine.file("/usr/lib/rustlib/src/rust/library/core"),
                    "lld-22" => machine
                        .on_path("ld.lld-22", "/usr/bin/ld.lld-22")
                        .on_path("lld-22", "/usr/bin/lld-22")
                        .answers(
                            "/usr/bin/ld.lld-22",
                            "--version",
                            "Debian LLD 22.1.0 (compatible with GNU linkers)\n",
                        ),
                    other => panic!("the simulation does not know package {other}"),
                })
        }
    }

    impl Machine for Simulated {
        fn output(&self, program: &Path, args: &[&str]) -> Option<String> {
            let key = (program.display().to_string(), args.join(" "));
            self.outputs.get(&key).cloned()
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.contains(path)
        }
        fn which(&self, name: &str) -> Option<PathBuf> {
            self.on_path.get(name).cloned()
        }
    }

    fn debian_packages_of_the_plan() -> Vec<&'static str> {
        vec![
            "rustc-web",
            "cargo-web",
            "rust-web-src",
            DEBIAN_LINKER_PACKAGE,
        ]
    }

    #[test]
    fn a_fresh_machine_with_rustup_first_needs_the_cross_toolchain() {
        let machine = Simulated::fresh_debian_with_rustup();
        assert_eq!(detect_cross_toolchain(&machine), Err(Need::CrossToolchain));
    }

    #[test]
    fn the_packages_setup_installs_are_enough_on_a_machine_without_rust_lld() {
        // The bug this pins: detection once required a `rust-lld` on PATH, which none of the
        // packages it installs provides, so a fresh machine stayed "missing" after installing.
        let machine = Simulated::fresh_debian_with_rustup()
            .install_debian_packages(&debian_packages_of_the_plan());
        let plan = install_plan(&[Need::CrossToolchain], "bookworm");
        assert!(plan.iter().any(|step| step.contains(DEBIAN_LINKER_PACKAGE)));
        let found = detect_cross_toolchain(&machine).unwrap();
        assert_eq!(
            found,
            CrossToolchain::DebianBuildStd {
                cargo: "/usr/bin/cargo".into(),
                rustc: "/usr/bin/rustc".into(),
                version: (1, 96, 0),
                linker: Linker {
                    path: "/usr/bin/ld.lld-22".into(),
                    version: "Debian LLD 22.1.0 (compatible with GNU linkers)".into(),
                },
            }
        );
    }

    #[test]
    fn a_rust_lld_on_path_is_never_what_the_debian_build_links_with() {
        // A hand-made `rust-lld` (the file CI once passed with) counts for nothing: without a
        // packaged LLD the toolchain is missing, and with one, the packaged one is named.
        let hand_made = Simulated::fresh_debian_with_rustup()
            .install_debian_packages(&["rustc-web", "cargo-web", "rust-web-src"])
            .on_path("rust-lld", "/usr/local/bin/rust-lld")
            .answers("/usr/local/bin/rust-lld", "--version", "LLD 19.1.7\n")
            .answers(
                "/usr/local/bin/rust-lld",
                "-flavor gnu --version",
                "LLD 19.1.7\n",
            );
        assert_eq!(
            detect_cross_toolchain(&hand_made),
            Err(Need::CrossToolchain)
        );
        let packaged = hand_made.install_debian_packages(&[DEBIAN_LINKER_PACKAGE]);
        let found = detect_cross_toolchain(&packaged).unwrap();
        assert_eq!(found.linker().path, Path::new("/usr/bin/ld.lld-22"));
    }

    #[test]
    fn a_linker_that_is_not_lld_or_does_not_run_is_passed_over() {
        let machine = Simulated::fresh_debian_with_rustup()
            .install_debian_packages(&["rustc-web", "cargo-web", "rust-web-src"])
            .on_path("ld.lld", "/usr/bin/ld.lld")
            .answers(
                "/usr/bin/ld.lld",
                "--version",
                "GNU ld (GNU Binutils) 2.40\n",
            )
            .on_path("ld.lld-21", "/usr/bin/ld.lld-21");
        assert_eq!(detect_cross_toolchain(&machine), Err(Need::CrossToolchain));
    }

    #[test]
    fn an_old_debian_compiler_is_not_a_cross_toolchain() {
        let machine = Simulated::fresh_debian_with_rustup()
            .install_debian_packages(&debian_packages_of_the_plan())
            .answers(
                "/usr/bin/rustc",
                "--version",
                "rustc 1.63.0 (4b91a6ea7 2022-08-08)\n",
            );
        assert_eq!(detect_cross_toolchain(&machine), Err(Need::CrossToolchain));
    }

    #[test]
    fn rustups_target_links_with_the_rust_lld_inside_the_toolchain() {
        let sysroot_lld = "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld";
        let machine = Simulated::fresh_debian_with_rustup()
            .answers(
                "rustup",
                "target list --installed",
                "aarch64-unknown-none\naarch64-unknown-none-softfloat\nx86_64-unknown-linux-gnu\n",
            )
            .file(sysroot_lld)
            .answers(sysroot_lld, "-flavor gnu --version", "LLD 20.1.8\n");
        assert_eq!(
            detect_cross_toolchain(&machine),
            Ok(CrossToolchain::RustupTarget {
                linker: Linker {
                    path: sysroot_lld.into(),
                    version: "LLD 20.1.8".into(),
                },
            })
        );
        // Only one of the two targets: Debian's toolchain (which builds both) is used.
        let one_target = Simulated::fresh_debian_with_rustup()
            .answers(
                "rustup",
                "target list --installed",
                "aarch64-unknown-none\n",
            )
            .install_debian_packages(&debian_packages_of_the_plan());
        assert!(matches!(
            detect_cross_toolchain(&one_target),
            Ok(CrossToolchain::DebianBuildStd { .. })
        ));
        // A target without its linker (a broken toolchain) falls back to Debian's, if present.
        let broken = Simulated::fresh_debian_with_rustup()
            .answers(
                "rustup",
                "target list --installed",
                "aarch64-unknown-none\n",
            )
            .install_debian_packages(&debian_packages_of_the_plan());
        assert!(matches!(
            detect_cross_toolchain(&broken),
            Ok(CrossToolchain::DebianBuildStd { .. })
        ));
    }

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
