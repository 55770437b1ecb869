//! `cargo xtask`: the project's host tooling.
//!
//! - `setup`: finds or installs QEMU, the cross toolchain and dtc (also run by `build`, `run`
//!   and `test`).
//! - `build`: builds the hypervisor image (ELF and raw binary).
//! - `run`: boots the hypervisor on QEMU (or a user-supplied FVP), decoding its log live.
//! - `test`: host tests of every crate, then the QEMU scenarios, with a closing summary line.

mod bench;
mod el2_code;
mod image;
mod linux;
mod log_decoder;
mod runner;
mod scenarios;
mod setup;
mod test;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  setup                 find or install QEMU (>= 9.2, nested SMMUv3), the aarch64-unknown-none
                        cross toolchain and dtc; prints what it installs and why
  build [--board B]     build the hypervisor image (ELF and raw binary) and the test guest under target/
  run [options] [-- <extra QEMU arguments>]
                        boot the hypervisor and a guest (by default an unmodified Debian arm64
                        kernel with a busybox initramfs doing virtio-blk I/O; the bare-metal test
                        guest when no kernel can be fetched), decode its log live, exit with its status
      --debian-kernel 6.12|6.1     which Debian kernel the default guest runs (default 6.12
                                   from bookworm-backports, or 6.1 when apt has no 6.12;
                                   6.1: bookworm's own), each fetched and cached on its own
      --kernel IMAGE --initrd FILE [--append ARGS]   a Linux guest of your own
      --guest ELF                  a bare-metal guest (entered at its ELF entry point)
      --test-guest                 the project's bare-metal test guest
      --append ARGS                the guest's command line (the test guest's mode: pmu,
                                   flood, bench; nothing for its containment checks)
      --no-guest                   the hypervisor alone
      --smp N                      CPUs, and so at most vCPUs (default 2)
      --mem SIZE                   machine RAM, as QEMU's -m (default 1G)
      --board qemu-virt|fvp-base   platform (default qemu-virt; fvp-base needs FVP_BASE_MODEL)
      --gdb                        QEMU waits for a debugger on localhost:1234 (no timeout)
      --timeout SECONDS            stop the run after this long (default 120)
      --hyp-args ARGS              the hypervisor's command line (e.g. hyp.selftest=...)
      --log-level LEVEL            defmt level compiled in: trace|debug|info|warn|error (default info)
  bench                 trap costs in retired instructions (QEMU -icount, PMU), deterministic
  decode ELF LOG        decode a raw defmt log written by the image ELF
  test [--list] [NAME...]
                        host tests of every crate and the QEMU scenarios; NAME selects a subset
                        (`host` is the host tests)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "setup" => setup::ensure().map(|_| ExitCode::SUCCESS),
        "build" => image::build_command(rest),
        "run" => runner::run_command(rest),
        "test" => test::test_command(rest),
        "decode" => decode_command(rest),
        "bench" => bench::bench_command(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => {
            eprintln!("xtask: unknown command `{other}`\n\n{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask decode ELF LOG`: decodes a raw defmt log (a scenario's `.defmt`, an FVP UART
/// capture) with the symbols of the image that wrote it.
fn decode_command(args: &[String]) -> Result<ExitCode> {
    let [elf, log] = args else {
        return Err("usage: cargo xtask decode ELF LOG".into());
    };
    let table = log_decoder::load_table(&std::fs::read(elf)?)?;
    let log_state = std::sync::Arc::new(std::sync::Mutex::new(log_decoder::HypLog::default()));
    log_decoder::decode_stream(&table, std::fs::File::open(log)?, &log_state, true, None);
    Ok(ExitCode::SUCCESS)
}

/// The workspace root (the parent of `tools/xtask`).
fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map(std::path::Path::to_path_buf)
        .unwrap_or(manifest)
}

/// A boxed error with a message, for tooling.
type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;
