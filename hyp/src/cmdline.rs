//! The hypervisor's command line: `/chosen/bootargs` of the device tree it booted with.
//!
//! It comes from the platform's boot chain (QEMU's `-append`, a bootloader), never from a guest.
//! Words before `--` are the hypervisor's own `key=value` options; everything after `--` is the
//! guest kernel's command line, passed through verbatim.
//!
//! | option | meaning |
//! |---|---|
//! | `hyp.guest=linux` | boot an arm64 Linux `Image` loaded at `hyp.guest.image` |
//! | `hyp.guest=elf` | boot a bare-metal guest whose entry point is `hyp.guest.entry` |
//! | `hyp.guest.image=ADDR` | where the loader put the Linux `Image` (2 MiB aligned) |
//! | `hyp.guest.entry=ADDR` | the bare-metal guest's entry point |
//! | `hyp.initrd=START,END` | where the loader put the initramfs, `[START, END)` |
//! | `hyp.smp=N` | how many vCPUs the guest may start (default: all CPUs) |
//! | `hyp.selftest=NAME` | run one of the hypervisor's self-tests instead of a guest |
//! | `hyp.pmu=el2-visible` | benchmark mode: the guest's PMU may count at EL2 (off by default) |
//!
//! Addresses are hexadecimal with or without `0x`.

/// What kind of guest to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum GuestKind {
    /// An arm64 Linux `Image` at this physical (and intermediate physical) address.
    Linux {
        /// Load address of the Image.
        image: u64,
    },
    /// A bare-metal ELF already loaded, entered at this address.
    BareMetal {
        /// Entry point.
        entry: u64,
    },
}

/// The parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CommandLine<'a> {
    /// The guest to boot, if any.
    pub guest: Option<GuestKind>,
    /// The initramfs, `[start, end)`.
    pub initrd: Option<(u64, u64)>,
    /// The most vCPUs to allow.
    pub smp: Option<u32>,
    /// A self-test to run.
    pub selftest: Option<&'a str>,
    /// Benchmark mode: leave EL2 visible to the guest's PMU (`hyp.pmu=el2-visible`), so that
    /// the guest can count the hypervisor's instructions. Otherwise EL2 is invisible to it.
    pub pmu_counts_el2: bool,
    /// The guest's own command line (after `--`).
    pub guest_args: &'a str,
}

/// A command line the hypervisor cannot act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum CommandLineError {
    /// An option's value is not a number where one is needed.
    BadNumber(&'static str),
    /// `hyp.guest` names an unknown kind.
    UnknownGuestKind,
    /// `hyp.guest=linux` without `hyp.guest.image`, or `elf` without `hyp.guest.entry`.
    MissingAddress(&'static str),
    /// The initrd range is empty or backwards.
    BadInitrd,
    /// `hyp.pmu` is neither `el2-visible` nor `el2-hidden`.
    BadPmuMode,
}

fn hex(text: &str, option: &'static str) -> Result<u64, CommandLineError> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u64::from_str_radix(digits, 16).map_err(|_| CommandLineError::BadNumber(option))
}

impl<'a> CommandLine<'a> {
    /// Parses `text`. Unknown `hyp.*` options are ignored (so old images accept new runners);
    /// words that are not `hyp.*` options before `--` are ignored too.
    pub fn parse(text: &'a str) -> Result<Self, CommandLineError> {
        let (own, guest_args) = match text.find(" -- ") {
            Some(at) => (&text[..at], text[at + 4..].trim()),
            None => match text.strip_prefix("-- ") {
                Some(rest) => ("", rest.trim()),
                None => (text.strip_suffix(" --").unwrap_or(text), ""),
            },
        };
        let mut line = Self {
            guest_args,
            ..Self::default()
        };
        let (mut kind, mut image, mut entry) = (None, None, None);
        for word in own.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "hyp.guest" => kind = Some(value),
                "hyp.guest.image" => image = Some(hex(value, "hyp.guest.image")?),
                "hyp.guest.entry" => entry = Some(hex(value, "hyp.guest.entry")?),
                "hyp.initrd" => {
                    let (start, end) = value.split_once(',').ok_or(CommandLineError::BadInitrd)?;
                    let (start, end) = (hex(start, "hyp.initrd")?, hex(end, "hyp.initrd")?);
                    if end <= start {
                        return Err(CommandLineError::BadInitrd);
                    }
                    line.initrd = Some((start, end));
                }
                "hyp.smp" => {
                    line.smp = Some(
                        value
                            .parse()
                            .map_err(|_| CommandLineError::BadNumber("hyp.smp"))?,
                    );
                }
                "hyp.selftest" => line.selftest = Some(value),
                "hyp.pmu" => match value {
                    "el2-visible" => line.pmu_counts_el2 = true,
                    "el2-hidden" => line.pmu_counts_el2 = false,
                    _ => return Err(CommandLineError::BadPmuMode),
                },
                _ => {}
            }
        }
        line.guest = match kind {
            None => None,
            Some("linux") => Some(GuestKind::Linux {
                image: image.ok_or(CommandLineError::MissingAddress("hyp.guest.image"))?,
            }),
            Some("elf") => Some(GuestKind::BareMetal {
                entry: entry.ok_or(CommandLineError::MissingAddress("hyp.guest.entry"))?,
            }),
            Some(_) => return Err(CommandLineError::UnknownGuestKind),
        };
        Ok(line)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_linux_guest_line_splits_at_the_double_dash() {
        let line = CommandLine::parse(
            "hyp.guest=linux hyp.guest.image=0x44000000 hyp.initrd=48000000,0x48100000 hyp.smp=2 -- console=ttyAMA0 rdinit=/init",
        )
        .unwrap();
        assert_eq!(line.guest, Some(GuestKind::Linux { image: 0x4400_0000 }));
        assert_eq!(line.initrd, Some((0x4800_0000, 0x4810_0000)));
        assert_eq!(line.smp, Some(2));
        assert_eq!(line.guest_args, "console=ttyAMA0 rdinit=/init");
        assert_eq!(line.selftest, None);
    }

    #[test]
    fn a_bare_metal_guest_needs_its_entry_point() {
        let line = CommandLine::parse("hyp.guest=elf hyp.guest.entry=0x42200000").unwrap();
        assert_eq!(
            line.guest,
            Some(GuestKind::BareMetal { entry: 0x4220_0000 })
        );
        assert_eq!(line.guest_args, "");
        assert_eq!(
            CommandLine::parse("hyp.guest=elf"),
            Err(CommandLineError::MissingAddress("hyp.guest.entry"))
        );
        assert_eq!(
            CommandLine::parse("hyp.guest=linux"),
            Err(CommandLineError::MissingAddress("hyp.guest.image"))
        );
    }

    #[test]
    fn bad_values_are_refused_by_option() {
        assert_eq!(
            CommandLine::parse("hyp.guest=windows"),
            Err(CommandLineError::UnknownGuestKind)
        );
        assert_eq!(
            CommandLine::parse("hyp.guest=elf hyp.guest.entry=zz"),
            Err(CommandLineError::BadNumber("hyp.guest.entry"))
        );
        assert_eq!(
            CommandLine::parse("hyp.initrd=5,4"),
            Err(CommandLineError::BadInitrd)
        );
        assert_eq!(
            CommandLine::parse("hyp.initrd=5"),
            Err(CommandLineError::BadInitrd)
        );
        assert_eq!(
            CommandLine::parse("hyp.smp=two"),
            Err(CommandLineError::BadNumber("hyp.smp"))
        );
        assert_eq!(
            CommandLine::parse("hyp.pmu=on"),
            Err(CommandLineError::BadPmuMode)
        );
    }

    #[test]
    fn el2_is_hidden_from_the_guests_pmu_unless_benchmarking() {
        assert!(!CommandLine::parse("").unwrap().pmu_counts_el2);
        assert!(
            CommandLine::parse("hyp.pmu=el2-visible")
                .unwrap()
                .pmu_counts_el2
        );
        assert!(
            !CommandLine::parse("hyp.pmu=el2-hidden")
                .unwrap()
                .pmu_counts_el2
        );
    }

    #[test]
    fn empty_and_unknown_options_mean_no_guest() {
        assert_eq!(CommandLine::parse("").unwrap(), CommandLine::default());
        let line = CommandLine::parse("quiet hyp.future=1 hyp.selftest=el2-unmapped-read").unwrap();
        assert_eq!(line.selftest, Some("el2-unmapped-read"));
        assert_eq!(line.guest, None);
        assert_eq!(
            CommandLine::parse("-- init=/bin/sh").unwrap().guest_args,
            "init=/bin/sh"
        );
    }
}
