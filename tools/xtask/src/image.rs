//! Building the hypervisor image for `aarch64-unknown-none-softfloat`: the ELF (for QEMU and
//! the log decoder) and a raw binary (for loaders that want one, such as TF-A's BL33 on FVP);
//! and the bare-metal test guest for `aarch64-unknown-none`.
//!
//! The hypervisor is built for the soft-float target so that the compiler never touches the
//! FP/SIMD registers at EL2: they belong to the guest, and EL2 saves none of them. After each
//! build, [`crate::el2_code`] checks the image's code for any FP/SIMD instruction anyway.

use crate::setup::{self, CrossToolchain, Tools};
use crate::{Result, workspace_root};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// The hypervisor's target: no FP/SIMD register is ever used.
pub(crate) const HYPERVISOR_TARGET: &str = "aarch64-unknown-none-softfloat";
/// The test guest's target (a guest may use FP/SIMD as it likes).
pub(crate) const GUEST_TARGET: &str = "aarch64-unknown-none";
/// The targets a cross toolchain must have.
pub(crate) const TARGETS: [&str; 2] = [HYPERVISOR_TARGET, GUEST_TARGET];

/// Cargo's setting for a target's linker or compiler flags, as an environment variable.
fn target_variable(target: &str, setting: &str) -> String {
    format!(
        "CARGO_TARGET_{}_{setting}",
        target.to_uppercase().replace('-', "_")
    )
}

/// Whether cross builds fail on warnings: under CI (`CI` set, as CI systems do), or when
/// `XTASK_DENY_WARNINGS=1` asks for it locally.
fn deny_warnings() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    set("CI") || set("XTASK_DENY_WARNINGS")
}

/// A built image.
#[derive(Clone, Debug)]
pub(crate) struct Image {
    /// The ELF, with the defmt symbol table.
    pub(crate) elf: PathBuf,
    /// The loadable segments as one flat binary, starting at the image base.
    pub(crate) bin: PathBuf,
}

/// What to build.
#[derive(Clone, Debug)]
pub(crate) struct BuildOptions {
    /// The defmt filter compiled in (`DEFMT_LOG`).
    pub(crate) log_level: String,
    /// The address the image is linked at (`HYP_IMAGE_BASE`), if not the QEMU virt default.
    pub(crate) image_base: Option<u64>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            image_base: None,
        }
    }
}

/// `cargo xtask build [--board B] [--log-level L]`: the hypervisor and the bare-metal test guest.
pub(crate) fn build_command(args: &[String]) -> Result<ExitCode> {
    let mut options = BuildOptions::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--board" => {
                let board = args.next().ok_or("--board needs a value")?;
                options.image_base = crate::runner::Board::parse(board)?.image_base();
            }
            "--log-level" => {
                options.log_level = args.next().ok_or("--log-level needs a value")?.clone()
            }
            other => return Err(format!("build: unknown option `{other}`").into()),
        }
    }
    let tools = setup::ensure()?;
    let image = build(&tools, &options)?;
    let guest = build_test_guest(&tools)?;
    for built in [&image.elf, &image.bin, &guest.elf] {
        println!("xtask: built {}", built.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the hypervisor with the cross toolchain found by setup, and checks that its code
/// uses no FP/SIMD register.
pub(crate) fn build(tools: &Tools, options: &BuildOptions) -> Result<Image> {
    let image = build_binary(tools, "hyp", HYPERVISOR_TARGET, options)?;
    crate::el2_code::check_no_fp_simd(&std::fs::read(&image.elf)?)
        .map_err(|e| format!("{}: {e}", image.elf.display()))?;
    Ok(image)
}

/// Builds the bare-metal test guest.
pub(crate) fn build_test_guest(tools: &Tools) -> Result<Image> {
    build_binary(tools, "test-guest", GUEST_TARGET, &BuildOptions::default())
}

/// The entry point of an ELF image.
pub(crate) fn elf_entry(elf: &std::path::Path) -> Result<u64> {
    use object::Object;
    let data = std::fs::read(elf)?;
    Ok(object::File::parse(&*data)?.entry())
}

/// Builds `package`'s binary of the same name for the bare-metal target. Each package is built
/// in its own cargo invocation: the hypervisor and the guest enable different, exclusive
/// `aarch64-rt` features (`el2`, `el1`), which one invocation would unify.
fn build_binary(
    tools: &Tools,
    package: &str,
    target: &str,
    options: &BuildOptions,
) -> Result<Image> {
    let root = workspace_root();
    let mut command = match &tools.cross {
        CrossToolchain::RustupTarget { .. } => {
            let mut command =
                Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            command.args(["build", "--target", target]);
            command
        }
        CrossToolchain::DebianBuildStd { cargo, rustc, .. } => {
            let mut command = Command::new(cargo);
            command.args([
                "build",
                "--target",
                target,
                "-Zbuild-std=core,alloc,compiler_builtins",
                "-Zbuild-std-features=compiler-builtins-mem",
            ]);
            // Debian's compiler, not rustup's proxy (which has no aarch64 target), throughout.
            let path = std::env::var("PATH").unwrap_or_default();
            command
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTC", rustc)
                .env("PATH", format!("/usr/bin:{path}"))
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("RUSTDOC")
                .env_remove("CARGO");
            command
        }
    };
    command
        .current_dir(&root)
        .args(["--release", "--package", package, "--bin", package]);
    // The linker setup found and probed, by its full path: never whatever `rust-lld` happens to
    // be on PATH (a fresh machine has none).
    command.env(
        target_variable(target, "LINKER"),
        &tools.cross.linker().path,
    );
    // CI holds code built only for the target to the same bar as host code: no warnings.
    // (Cargo caps lints of the `-Zbuild-std` crates, so this reaches only the project's code.)
    if deny_warnings() {
        command.env(target_variable(target, "RUSTFLAGS"), "-Dwarnings");
    }
    command.env("DEFMT_LOG", &options.log_level);
    match options.image_base {
        Some(base) => command.env("HYP_IMAGE_BASE", format!("{base:#x}")),
        None => command.env_remove("HYP_IMAGE_BASE"),
    };
    let status = command.status().map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building {package} failed ({status})").into());
    }
    let elf = root
        .join("target")
        .join(target)
        .join("release")
        .join(package);
    let bin = elf.with_extension("bin");
    write_raw_binary(&std::fs::read(&elf)?, &bin)?;
    Ok(Image { elf, bin })
}

/// Writes the ELF's loadable contents as a flat binary starting at the lowest load address.
fn write_raw_binary(elf: &[u8], out: &std::path::Path) -> Result<()> {
    use object::{Object, ObjectSegment};
    let file = object::File::parse(elf)?;
    let segments: Vec<(u64, &[u8])> = file
        .segments()
        .filter_map(|s| {
            s.data()
                .ok()
                .filter(|d| !d.is_empty())
                .map(|d| (s.address(), d))
        })
        .collect();
    let base = segments
        .iter()
        .map(|(a, _)| *a)
        .min()
        .ok_or("the ELF has no loadable data")?;
    let end = segments
        .iter()
        .map(|(a, d)| a + d.len() as u64)
        .max()
        .unwrap_or(base);
    let mut image = vec![0u8; usize::try_from(end - base)?];
    for (address, data) in segments {
        let start = usize::try_from(address - base)?;
        image
            .get_mut(start..start + data.len())
            .ok_or("segment outside the image")?
            .copy_from_slice(data);
    }
    std::fs::write(out, image)?;
    Ok(())
}
