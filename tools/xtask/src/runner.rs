//! Running the hypervisor: on QEMU `virt` (live log decoding, console pass-through, timeout) or
//! on a user-supplied Arm FVP Base RevC model.
//!
//! Streams: the guest console (UART0) is QEMU's stdio and is passed through untouched; the
//! hypervisor's log (UART1) reaches us on a Unix socket and is decoded and prefixed `[hyp]`;
//! the runner's own messages start with `xtask:`.

use crate::Result;
use crate::image::{self, BuildOptions, Image};
use crate::log_decoder::{self, HypLog};
use crate::setup::{self, Tools};
use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The platforms the runner knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Board {
    /// QEMU's `virt` machine with the SMMUv3 in nested mode.
    QemuVirt,
    /// Arm's FVP Base RevC-2xAEMvA; needs the model from Arm (not available on CI machines).
    FvpBase,
}

impl Board {
    pub(crate) fn parse(name: &str) -> Result<Self> {
        match name {
            "qemu-virt" => Ok(Self::QemuVirt),
            "fvp-base" => Ok(Self::FvpBase),
            other => Err(format!("unknown board `{other}` (qemu-virt, fvp-base)").into()),
        }
    }

    /// Where the image is linked: FVP's TF-A loads BL33 at 0x8800_0000.
    pub(crate) fn image_base(self) -> Option<u64> {
        match self {
            Self::QemuVirt => None,
            Self::FvpBase => Some(0x8800_0000),
        }
    }
}

/// Where the guest kernel is loaded (2 MiB aligned, above the guest's device-tree window).
pub(crate) const LINUX_IMAGE_ADDRESS: u64 = 0x4400_0000;
/// Where the initramfs is loaded: 128 MiB above the kernel, room for any arm64 Image.
pub(crate) const INITRD_ADDRESS: u64 = 0x4c00_0000;

/// What the hypervisor boots at EL1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Guest {
    /// Nothing: the hypervisor boots, checks and powers off.
    None,
    /// A bare-metal ELF (the test guest), entered at its entry point.
    BareMetal { elf: PathBuf, args: String },
    /// An arm64 Linux `Image`, an initramfs, the kernel's command line, and a disk for
    /// virtio-blk.
    Linux {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
        disk: Option<PathBuf>,
    },
}

/// How to run.
#[derive(Clone, Debug)]
pub(crate) struct RunOptions {
    pub(crate) board: Board,
    pub(crate) guest: Guest,
    /// CPUs (and so at most vCPUs).
    pub(crate) smp: u32,
    /// Machine RAM, as QEMU's `-m` takes it.
    pub(crate) memory: String,
    pub(crate) gdb: bool,
    pub(crate) timeout: Duration,
    /// The hypervisor's command line (`/chosen/bootargs` of the tree it boots with).
    pub(crate) hyp_args: Option<String>,
    pub(crate) extra_qemu_args: Vec<String>,
    /// Print the log and console as they arrive.
    pub(crate) echo: bool,
    /// Where to keep the raw defmt stream.
    pub(crate) raw_log: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            board: Board::QemuVirt,
            guest: Guest::None,
            smp: 2,
            memory: "1G".into(),
            gdb: false,
            timeout: Duration::from_secs(120),
            hyp_args: None,
            extra_qemu_args: Vec::new(),
            echo: true,
            raw_log: None,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub(crate) struct RunOutcome {
    /// The hypervisor's log, decoded.
    pub(crate) log: HypLog,
    /// Everything the guest console printed.
    pub(crate) console: String,
    /// The run was stopped by the timeout.
    pub(crate) timed_out: bool,
    /// QEMU's own exit code (`None` when killed).
    pub(crate) qemu_exit: Option<i32>,
}

impl RunOutcome {
    /// The runner's exit code: the hypervisor's status, or a code for how the run failed.
    pub(crate) fn exit_code(&self) -> u8 {
        if self.timed_out {
            return 124;
        }
        match (self.log.exit_status, self.qemu_exit) {
            (Some(0), Some(0)) => 0,
            (Some(0), _) => 1,
            (Some(status), _) => u8::try_from(status).unwrap_or(u8::MAX).max(1),
            // QEMU ended without the hypervisor saying how: a crash, or QEMU refused to start.
            (None, _) => 3,
        }
    }

    /// One line saying how the run ended.
    pub(crate) fn verdict(&self) -> String {
        if self.timed_out {
            return "timed out before the hypervisor reported an exit status".into();
        }
        match (self.log.exit_status, self.qemu_exit) {
            (Some(status), Some(0)) => format!("hypervisor exit status {status}"),
            (Some(status), qemu) => format!("hypervisor exit status {status}, QEMU exit {qemu:?}"),
            (None, qemu) => {
                format!("ended without an exit status from the hypervisor (QEMU exit {qemu:?})")
            }
        }
    }
}

/// The guest `run` was asked for.
enum GuestChoice {
    None,
    Elf(PathBuf),
    TestGuest,
    Linux {
        kernel: PathBuf,
        initrd: PathBuf,
        append: Option<String>,
    },
    DebianLinux,
}

/// `cargo xtask run [options] [-- extra QEMU args]`.
pub(crate) fn run_command(args: &[String]) -> Result<ExitCode> {
    let mut options = RunOptions::default();
    let mut build = BuildOptions::default();
    let mut guest_choice = GuestChoice::DebianLinux;
    let mut series = crate::linux::KernelSeries::default();
    let (mut kernel, mut initrd, mut append) = (None, None, None);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--board" => options.board = Board::parse(&value()?)?,
            "--gdb" => options.gdb = true,
            "--timeout" => options.timeout = Duration::from_secs(value()?.parse()?),
            "--hyp-args" => options.hyp_args = Some(value()?),
            "--smp" => options.smp = value()?.parse()?,
            "--mem" => options.memory = value()?,
            "--guest" => guest_choice = GuestChoice::Elf(PathBuf::from(value()?)),
            "--test-guest" => guest_choice = GuestChoice::TestGuest,
            "--no-guest" => guest_choice = GuestChoice::None,
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initrd" => initrd = Some(PathBuf::from(value()?)),
            "--append" => append = Some(value()?),
            "--debian-kernel" => series = crate::linux::KernelSeries::parse(&value()?)?,
            "--log-level" => build.log_level = value()?,
            "--" => {
                options.extra_qemu_args.extend(args.by_ref().cloned());
            }
            other => return Err(format!("run: unknown option `{other}`").into()),
        }
    }
    build.image_base = options.board.image_base();
    let tools = setup::ensure()?;
    let image = image::build(&tools, &build)?;
    if let Some(kernel) = kernel {
        let initrd = initrd.ok_or("--kernel needs --initrd")?;
        guest_choice = GuestChoice::Linux {
            kernel,
            initrd,
            append: append.take(),
        };
    }
    options.guest = match guest_choice {
        GuestChoice::None => Guest::None,
        GuestChoice::Elf(elf) => Guest::BareMetal {
            elf,
            args: append.unwrap_or_default(),
        },
        GuestChoice::TestGuest => Guest::BareMetal {
            elf: image::build_test_guest(&tools)?.elf,
            args: append.unwrap_or_default(),
        },
        GuestChoice::Linux {
            kernel,
            initrd,
            append,
        } => Guest::Linux {
            kernel,
            initrd,
            append: append.unwrap_or_else(|| crate::linux::KERNEL_COMMAND_LINE.into()),
            disk: None,
        },
        GuestChoice::DebianLinux => match debian_linux_guest(series) {
            Ok(guest) => guest,
            Err(error) => {
                println!(
                    "xtask: no Debian kernel ({error}); falling back to the bare-metal test guest"
                );
                Guest::BareMetal {
                    elf: image::build_test_guest(&tools)?.elf,
                    args: String::new(),
                }
            }
        },
    };
    options.raw_log = Some(crate::workspace_root().join("target/xtask/last-run.defmt"));
    let outcome = run(&tools, &image, &options)?;
    let mut code = outcome.exit_code();
    // Both guests print a `GUEST VERDICT:` line; a failing guest fails the run even when the
    // hypervisor itself ended cleanly.
    match crate::linux::find_verdict(&outcome.console) {
        Some(crate::linux::GuestVerdict::Pass(details)) => {
            println!("xtask: guest verdict: PASS {details}")
        }
        Some(crate::linux::GuestVerdict::Fail(reason)) => {
            println!("xtask: guest verdict: FAIL {reason}");
            code = code.max(1);
        }
        None if options.guest != Guest::None => println!("xtask: the guest printed no verdict"),
        None => {}
    }
    if let Some(figures) = crate::linux::dma_figures(&outcome.console, &outcome.log.lines) {
        println!("xtask: {}", figures.summary());
    }
    println!("xtask: {} (exit code {code})", outcome.verdict());
    Ok(ExitCode::from(code))
}

/// The QEMU command line for the `virt` machine.
pub(crate) fn qemu_command(
    tools: &Tools,
    image: &Image,
    socket: &std::path::Path,
    options: &RunOptions,
) -> Command {
    let mut command = Command::new(&tools.qemu);
    command
        // SME is not offered to guests (CPTR_EL2.TSM traps it), so the CPU must not advertise it.
        .args([
            "-M",
            "virt,virtualization=on,iommu=smmuv3,gic-version=3",
            "-cpu",
            "max,sme=off",
        ])
        .arg("-smp")
        .arg(options.smp.to_string())
        .arg("-m")
        .arg(&options.memory)
        // No default NIC: PCI slot 1 stays free for the tests' `edu` device (stream ID 8).
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        // UART0: the guest console, on our stdio. UART1: the hypervisor's log, to our socket.
        .args([
            "-chardev",
            "stdio,id=console,signal=on",
            "-serial",
            "chardev:console",
        ])
        .arg("-chardev")
        .arg(format!(
            "socket,id=hyplog,path={},server=off",
            socket.display()
        ))
        .args(["-serial", "chardev:hyplog"])
        .arg("-kernel")
        .arg(&image.elf);
    let mut hyp_args: Vec<String> = options.hyp_args.iter().cloned().collect();
    match &options.guest {
        Guest::None => {}
        Guest::BareMetal { elf, args } => {
            command
                .arg("-device")
                .arg(format!("loader,file={}", elf.display()));
            let entry = crate::image::elf_entry(elf).unwrap_or(0);
            hyp_args.push(format!("hyp.guest=elf hyp.guest.entry={entry:#x}"));
            if !args.is_empty() {
                hyp_args.push(format!("-- {args}"));
            }
        }
        Guest::Linux {
            kernel,
            initrd,
            append,
            disk,
        } => {
            let initrd_size = std::fs::metadata(initrd).map(|m| m.len()).unwrap_or(0);
            command
                .arg("-device")
                .arg(format!(
                    "loader,file={},addr={LINUX_IMAGE_ADDRESS:#x},force-raw=on",
                    kernel.display()
                ))
                .arg("-device")
                .arg(format!(
                    "loader,file={},addr={INITRD_ADDRESS:#x},force-raw=on",
                    initrd.display()
                ));
            if let Some(disk) = disk {
                command.args(crate::linux::qemu_disk_args(disk));
            }
            hyp_args.push(format!(
                "hyp.guest=linux hyp.guest.image={LINUX_IMAGE_ADDRESS:#x} hyp.initrd={INITRD_ADDRESS:#x},{:#x} -- {append}",
                INITRD_ADDRESS + initrd_size
            ));
        }
    }
    if !hyp_args.is_empty() {
        // The hypervisor's own options first; a guest command line (after `--`) last.
        hyp_args.sort_by_key(|a| a.contains(" -- "));
        command.arg("-append").arg(hyp_args.join(" "));
    }
    if options.gdb {
        command.args(["-s", "-S"]);
    }
    command.args(&options.extra_qemu_args);
    command
}

/// Boots `image` and waits for the end of the run.
pub(crate) fn run(tools: &Tools, image: &Image, options: &RunOptions) -> Result<RunOutcome> {
    match options.board {
        Board::QemuVirt => run_qemu(tools, image, options),
        Board::FvpBase => run_fvp(image, options),
    }
}

fn socket_path() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("hyp-log-{}-{n}.sock", std::process::id()))
}

fn run_qemu(tools: &Tools, image: &Image, options: &RunOptions) -> Result<RunOutcome> {
    let table = log_decoder::load_table(&std::fs::read(&image.elf)?)?;
    let socket = socket_path();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    listener.set_nonblocking(true)?;
    let raw = match &options.raw_log {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            Some(std::fs::File::create(path)?)
        }
        None => None,
    };

    let mut command = qemu_command(tools, image, &socket, options);
    let interactive =
        options.echo && std::io::stdin().is_terminal() && std::env::var_os("CI").is_none();
    command.stdin(if interactive {
        Stdio::inherit()
    } else {
        Stdio::null()
    });
    command.stdout(Stdio::piped());
    if options.gdb {
        println!(
            "xtask: QEMU waits for a debugger: gdb-multiarch {} -ex 'target remote :1234'",
            image.elf.display()
        );
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting {}: {e}", tools.qemu.display()))?;

    let log = Arc::new(Mutex::new(HypLog::default()));
    let qemu_gone = Arc::new(AtomicBool::new(false));
    let log_thread = std::thread::scope(|scope| -> Result<_> {
        let log_for_thread = Arc::clone(&log);
        let gone = Arc::clone(&qemu_gone);
        let echo = options.echo;
        let decoder = scope.spawn(move || {
            // Wait for QEMU to connect; give up if it exits first.
            let stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break Some(stream),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if gone.load(Ordering::Acquire) {
                            break None;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break None,
                }
            };
            if let Some(stream) = stream {
                let _ = stream.set_nonblocking(false);
                log_decoder::decode_stream(&table, stream, &log_for_thread, echo, raw);
            }
        });

        let mut stdout = child.stdout.take().ok_or("no QEMU stdout")?;
        let echo = options.echo;
        let console_thread = scope.spawn(move || {
            let mut console = Vec::new();
            let mut buffer = [0u8; 4096];
            while let Ok(count) = stdout.read(&mut buffer) {
                if count == 0 {
                    break;
                }
                let bytes = buffer.get(..count).unwrap_or_default();
                if echo {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(bytes);
                    let _ = out.flush();
                    let mid_line = bytes.last().is_some_and(|&b| b != b'\n');
                    log_decoder::CONSOLE_MID_LINE.store(mid_line, Ordering::Release);
                }
                console.extend_from_slice(bytes);
            }
            String::from_utf8_lossy(&console).into_owned()
        });

        let start = Instant::now();
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if !options.gdb && start.elapsed() > options.timeout {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        qemu_gone.store(true, Ordering::Release);
        let _ = decoder.join();
        let console = console_thread.join().unwrap_or_default();
        Ok((status, timed_out, console))
    });
    let _ = std::fs::remove_file(&socket);
    let (status, timed_out, console) = log_thread?;
    let log = Arc::try_unwrap(log)
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
        .unwrap_or_default();
    Ok(RunOutcome {
        log,
        console,
        timed_out,
        qemu_exit: status.and_then(|s| s.code()),
    })
}

/// Runs on Arm's FVP Base RevC model.
///
/// The model is not redistributable and cannot be installed on the project's machines, so this
/// path is untested here. It expects `FVP_BASE_MODEL` (the `FVP_Base_RevC-2xAEMvA` binary),
/// `FVP_TFA_BL1` and `FVP_TFA_FIP` (TF-A for `fvp`, built with the hypervisor's raw binary as
/// BL33, which it loads at 0x8800_0000). The hypervisor's log goes to a file that is decoded
/// when the model ends.
fn run_fvp(image: &Image, options: &RunOptions) -> Result<RunOutcome> {
    let need = |name: &str| {
        std::env::var(name).map_err(|_| {
            format!(
                "{name} is not set: `--board fvp-base` needs FVP_BASE_MODEL, FVP_TFA_BL1 and \
                 FVP_TFA_FIP (TF-A with {} as BL33); see README.md",
                image.bin.display()
            )
        })
    };
    let model = need("FVP_BASE_MODEL")?;
    let bl1 = need("FVP_TFA_BL1")?;
    let fip = need("FVP_TFA_FIP")?;
    let log_file = crate::workspace_root().join("target/xtask/fvp-uart1.defmt");
    if let Some(dir) = log_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut command = Command::new(model);
    command
        .args(["-C", "bp.secureflashloader.fname"])
        .arg(&bl1)
        .args(["-C", "bp.flashloader0.fname"])
        .arg(&fip)
        .args([
            "-C",
            "pctl.startup=0.0.0.0",
            "-C",
            "cluster0.NUM_CORES=2",
            "-C",
            "cluster1.NUM_CORES=0",
        ])
        .args([
            "-C",
            "bp.ve_sysregs.exit_on_shutdown=1",
            "-C",
            "bp.vis.disable_visualisation=1",
        ])
        .args([
            "-C",
            "bp.terminal_0.start_telnet=0",
            "-C",
            "bp.terminal_1.start_telnet=0",
        ])
        .args(["-C", "pci.pci_smmuv3.mmu.SMMU_IDR0=0x0fee1fff"])
        .arg("-C")
        .arg(format!("bp.pl011_uart1.out_file={}", log_file.display()))
        .args(&options.extra_qemu_args);
    println!("xtask: starting FVP (untested on this project's machines): {command:?}");
    let status = command
        .status()
        .map_err(|e| format!("starting the FVP model: {e}"))?;
    let table = log_decoder::load_table(&std::fs::read(&image.elf)?)?;
    let log = Arc::new(Mutex::new(HypLog::default()));
    log_decoder::decode_stream(
        &table,
        std::fs::File::open(&log_file)?,
        &log,
        options.echo,
        None,
    );
    let log = Arc::try_unwrap(log)
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
        .unwrap_or_default();
    Ok(RunOutcome {
        log,
        console: String::new(),
        timed_out: false,
        qemu_exit: status.code(),
    })
}

/// The default Linux guest: an unmodified Debian arm64 kernel of `series` (fetched once with
/// apt, cached under `target/guest/`), the tooling's busybox initramfs, and a fresh virtio-blk
/// disk.
pub(crate) fn debian_linux_guest(series: crate::linux::KernelSeries) -> Result<Guest> {
    let assets = crate::linux::prepare(&crate::workspace_root().join("target/guest"), series)?;
    println!(
        "xtask: guest: Linux {} ({} {}), initramfs {} KiB",
        assets.kernel.release,
        assets.kernel.package,
        assets.kernel.package_version,
        assets.initramfs.size / 1024
    );
    Ok(Guest::Linux {
        kernel: assets.kernel.image,
        initrd: assets.initramfs.path,
        append: crate::linux::KERNEL_COMMAND_LINE.into(),
        disk: Some(assets.disk),
    })
}
