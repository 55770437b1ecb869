//! The answer to each trap a guest takes to EL2.
//!
//! [`handle`] is the whole policy: an HVC or SMC is an SMCCC call (PSCI proxied, the rest
//! refused); a stage-2 data abort is an MMIO access for a virtual device or an external abort;
//! an instruction abort is an external abort; anything else is an undefined instruction. It
//! touches the CPU and devices only through a [`TrapHost`], which the hypervisor implements
//! over the hardware (`crate::entry`) and tests implement over a fake.
//!
//! The common path is short by design: the syndrome is decoded once, the SMMU is looked at no
//! more than once per [`PollGate`] interval (not on every trap), and a log line is considered
//! only for the first occurrences of each kind ([`crate::stats`]).

use super::frame::TrapFrame;
use super::inject::{self, Exception, Injection};
use super::syndrome::{DataAbort, ExceptionClass, Trap, fault_ipa, instruction_length};
use crate::cpus::{SlotRefusal, SlotTable};
use crate::mmio::{Emulated, MmioAccess, MmioRegistry, emulate};
use crate::psci::{self, GuestCall};
use crate::stats::{Counters, ExitReason, GuestNoise};
use nested::VcpuId;
use smmu::{Ipa, IpaRange};

/// What every CPU needs to answer a guest's traps.
#[allow(
    missing_debug_implementations,
    reason = "the registry holds trait objects"
)]
pub struct VmConfig {
    /// Guest RAM.
    pub ram: IpaRange,
    /// The most vCPUs the guest may start.
    pub max_vcpus: usize,
    /// The emulated devices.
    pub mmio: MmioRegistry,
    /// Benchmark mode (`hyp.pmu=el2-visible`): the guest's PMU counts at EL2, and the floor
    /// calls are answered.
    pub bench_mode: bool,
}

/// State the trap path shares between CPUs.
#[derive(Debug)]
pub struct TrapState {
    /// Which CPU runs on which EL2 stack.
    pub slots: SlotTable,
    /// Exits and guest-caused log lines.
    pub counters: &'static Counters,
}

impl TrapState {
    /// Nothing claimed, counting into `counters`.
    #[must_use]
    pub const fn new(counters: &'static Counters) -> Self {
        Self {
            slots: SlotTable::new(),
            counters,
        }
    }
}

/// Why a CPU_ON was refused, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum CpuOnRefusal {
    /// The entry point is outside guest RAM or misaligned.
    EntryOutsideRam,
    /// The guest already runs as many vCPUs as it may.
    BeyondVcpuLimit,
}

/// Something the hypervisor may log about a trap; the handler has already rate-limited it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum TrapEvent {
    /// A data access with no device behind it, or refused by one: external abort injected.
    DataAbortInjected {
        /// The access was a store.
        write: bool,
        /// Its IPA.
        ipa: Ipa,
        /// Its virtual address.
        va: u64,
        /// The instruction.
        pc: u64,
        /// ISV: whether the syndrome described the access.
        syndrome_valid: bool,
    },
    /// An instruction fetch from outside guest RAM: external abort injected.
    InstructionAbortInjected {
        /// The address fetched.
        va: u64,
    },
    /// A trap the hypervisor does not emulate: undefined instruction injected.
    UndefinedInjected {
        /// Its class.
        class: ExceptionClass,
        /// Its syndrome.
        esr: u64,
        /// The instruction.
        pc: u64,
    },
    /// An SMCCC call the hypervisor does not offer.
    CallRefused {
        /// x0.
        function: u64,
    },
    /// A CPU_ON refused.
    CpuOnRefused {
        /// The target's MPIDR.
        target: u64,
        /// The entry point asked for.
        entry: u64,
        /// Why.
        why: CpuOnRefusal,
    },
    /// A vCPU starts (at most once per CPU: a started slot is never given back).
    VcpuStarting {
        /// Its MPIDR.
        target: u64,
        /// Where it enters the guest.
        entry: u64,
    },
}

/// What the trap path needs from the CPU and the devices.
pub trait TrapHost {
    /// The trapping vCPU.
    fn vcpu(&self) -> VcpuId;
    /// HPFAR_EL2, for a stage-2 abort.
    fn hpfar(&self) -> u64;
    /// The guest's VBAR_EL1.
    fn guest_vector_base(&self) -> u64;
    /// Writes the guest's ESR_EL1, FAR_EL1, ELR_EL1 and SPSR_EL1 for an injection.
    fn set_guest_exception_registers(&mut self, injection: &Injection);
    /// This CPU's MPIDR affinity.
    fn mpidr(&self) -> u64;
    /// Sends SGI `intid` to the CPU `mpidr` (physically: it is injected there).
    fn send_sgi(&mut self, intid: u32, mpidr: u64);
    /// Forwards an SMCCC call to firmware; its x0..x3.
    fn call_firmware(&mut self, function: u32, args: [u64; 3]) -> [u64; 4];
    /// Waits for an interrupt (PSCI CPU_SUSPEND, emulated as standby).
    fn standby(&mut self);
    /// Starts CPU `target` on the EL2 stack of `slot`, to enter the guest at `entry` with
    /// `context` in x0; a PSCI error code if firmware refused.
    fn start_cpu(&mut self, slot: usize, target: u64, entry: Ipa, context: u64) -> Result<(), i64>;
    /// Ends the run as the guest asked (a report, the memory check, then power-off). On the
    /// hardware it does not return.
    fn end_run(&mut self, reset: bool);
    /// Benchmark mode: switches this CPU to the floor vectors.
    fn install_floor_vectors(&mut self, save_all: bool);
    /// Logs one event.
    fn log(&mut self, event: TrapEvent);
}

/// Answers a synchronous exception from the guest. Returning resumes it at `frame.elr` in
/// `frame.spsr`.
pub fn handle(frame: &mut TrapFrame, vm: &VmConfig, state: &TrapState, host: &mut impl TrapHost) {
    let counters = state.counters;
    match Trap::decode(frame.esr) {
        // HVC: ELR already points past the instruction.
        Trap::Hvc { .. } => {
            let _ = counters.count(ExitReason::Hvc);
            call(frame, vm, state, host);
        }
        // A trapped SMC: ELR points at the SMC itself.
        Trap::Smc { .. } => {
            let _ = counters.count(ExitReason::Smc);
            frame.elr += 4;
            call(frame, vm, state, host);
        }
        Trap::DataAbort(abort) => data_abort(frame, &abort, vm, counters, host),
        Trap::InstructionAbort => {
            if counters.count(ExitReason::InstructionAbort) {
                host.log(TrapEvent::InstructionAbortInjected { va: frame.far });
            }
            inject_exception(frame, Exception::InstructionAbort, host);
        }
        Trap::Other(ExceptionClass::SystemRegister) if sgi_write(frame, state, host) => {}
        Trap::Other(class) => {
            if counters.count(ExitReason::UndefinedInjected) {
                host.log(TrapEvent::UndefinedInjected {
                    class,
                    esr: frame.esr,
                    pc: frame.elr,
                });
            }
            inject_exception(frame, Exception::Undefined, host);
        }
    }
}

fn data_abort(
    frame: &mut TrapFrame,
    abort: &DataAbort,
    vm: &VmConfig,
    counters: &Counters,
    host: &mut impl TrapHost,
) {
    let ipa = fault_ipa(host.hpfar(), frame.far);
    if let Some(access) = MmioAccess::from_abort(abort, ipa)
        && emulate(&access, frame, &vm.mmio, host.vcpu()) == Emulated::Completed
    {
        let _ = counters.count(ExitReason::MmioHandled);
        frame.elr += instruction_length(frame.esr);
        return;
    }
    if counters.count(ExitReason::ExternalAbortInjected) {
        host.log(TrapEvent::DataAbortInjected {
            write: abort.write,
            ipa,
            va: frame.far,
            pc: frame.elr,
            syndrome_valid: abort.syndrome_valid,
        });
    }
    inject_exception(frame, Exception::DataAbort { write: abort.write }, host);
}

/// A trapped write to one of the SGI registers (ICC_SGI1R_EL1, ICC_ASGI1R_EL1,
/// ICC_SGI0R_EL1), which trap once HCR_EL2.IMO is set: the SGI goes to the guest's CPUs it
/// names, and nowhere else. Every interrupt of the guest is Group 1, so only ICC_SGI1R_EL1
/// generates anything; the other two complete with no effect. `false` if the trap is not one
/// of these writes.
fn sgi_write(frame: &mut TrapFrame, state: &TrapState, host: &mut impl TrapHost) -> bool {
    // ISS of a trapped MSR: Op0 21:20, Op2 19:17, Op1 16:14, CRn 13:10, Rt 9:5, CRm 4:1,
    // Direction 0 (0 = write).
    let iss = frame.esr & 0x1ff_ffff;
    let register = iss & !(0x1f << 5) & !1;
    let sgi_register = |op2: u64| 3 << 20 | op2 << 17 | 12 << 10 | 11 << 1;
    let write = iss & 1 == 0;
    let op2 = (iss >> 17) & 0b111;
    if !write || !(5..=7).contains(&op2) || register != sgi_register(op2) {
        return false;
    }
    #[allow(clippy::cast_possible_truncation, reason = "Rt is 5 bits")]
    let value = frame.register(((iss >> 5) & 0x1f) as u8);
    if op2 == 5 {
        let request = crate::gic::sgi::SgiRequest::decode(value);
        let sender = host.mpidr();
        let mut cpus: heapless::Vec<u64, { crate::cpus::MAX_CPUS }> = state.slots.cpus().collect();
        cpus.sort_unstable();
        let named = if request.all_but_self {
            0
        } else {
            request.target_list.count_ones()
        };
        let mut sent = 0u32;
        // The hypervisor's own SGI reaches no one from the guest.
        let reserved = request.intid == crate::gic::KICK_SGI;
        for target in request.targets(sender, &cpus).filter(|_| !reserved) {
            host.send_sgi(request.intid, target);
            let _ = state.counters.count(ExitReason::SgiSent);
            sent += 1;
        }
        for _ in sent..named.max(u32::from(reserved)) {
            let _ = state.counters.count(ExitReason::SgiRefused);
        }
    }
    frame.elr += 4;
    true
}

/// Makes the guest take `exception` at its EL1 for the instruction at `frame.elr`.
fn inject_exception(frame: &mut TrapFrame, exception: Exception, host: &mut impl TrapHost) {
    let injection = inject::inject(
        exception,
        frame.esr,
        frame.elr,
        frame.spsr,
        frame.far,
        host.guest_vector_base(),
    );
    host.set_guest_exception_registers(&injection);
    frame.elr = injection.resume_at;
    frame.spsr = injection.resume_spsr;
}

/// An SMCCC call (HVC or SMC): PSCI is proxied, everything else refused.
fn call(frame: &mut TrapFrame, vm: &VmConfig, state: &TrapState, host: &mut impl TrapHost) {
    let [x0, x1, x2, x3, ..] = frame.registers;
    let result = match psci::decode(x0, x1, x2, x3) {
        GuestCall::Forward => {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "decode checked the upper half is zero"
            )]
            let out = host.call_firmware(x0 as u32, [x1, x2, x3]);
            frame.registers[1] = out[1];
            frame.registers[2] = out[2];
            frame.registers[3] = out[3];
            out[0]
        }
        GuestCall::CpuSuspend => {
            host.standby();
            0
        }
        GuestCall::CpuOn {
            target,
            entry,
            context,
        } => cpu_on(target, entry, context, vm, state, host),
        GuestCall::SystemOff => {
            host.end_run(false);
            0
        }
        GuestCall::SystemReset => {
            host.end_run(true);
            0
        }
        GuestCall::BenchFloor { save_all } if vm.bench_mode => {
            host.install_floor_vectors(save_all);
            0
        }
        GuestCall::BenchFloor { .. } | GuestCall::NotSupported => {
            if state.counters.count(ExitReason::UnsupportedCall) {
                host.log(TrapEvent::CallRefused { function: x0 });
            }
            psci::NOT_SUPPORTED
        }
    };
    frame.registers[0] = result;
}

/// The guest's PSCI CPU_ON: the new CPU enters the hypervisor first, then the guest.
fn cpu_on(
    target: u64,
    entry: u64,
    context: u64,
    vm: &VmConfig,
    state: &TrapState,
    host: &mut impl TrapHost,
) -> u64 {
    let refuse = |host: &mut _, why| {
        if state.counters.noise(GuestNoise::CpuOnRefused) {
            TrapHost::log(host, TrapEvent::CpuOnRefused { target, entry, why });
        }
        psci::INVALID_PARAMETERS
    };
    if !vm.ram.contains(Ipa(entry)) || !entry.is_multiple_of(4) {
        return refuse(host, CpuOnRefusal::EntryOutsideRam);
    }
    let slot = match state.slots.claim(target) {
        Ok(slot) => slot,
        Err(SlotRefusal::AlreadyOn) => return psci::ALREADY_ON,
        Err(SlotRefusal::NoFreeSlot) => return refuse(host, CpuOnRefusal::BeyondVcpuLimit),
    };
    if slot >= vm.max_vcpus {
        // Never started: nothing runs on this slot's stack, so it can be given back.
        state.slots.release_unstarted(slot);
        return refuse(host, CpuOnRefusal::BeyondVcpuLimit);
    }
    match host.start_cpu(slot, target, Ipa(entry), context) {
        Ok(()) => {
            host.log(TrapEvent::VcpuStarting { target, entry });
            0
        }
        Err(error) => {
            // Firmware refused (a bad MPIDR, a CPU already on): no CPU runs on the stack, so
            // the slot goes back, and a guest cannot use up slots with bogus targets.
            state.slots.release_unstarted(slot);
            error as u64
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::trap::syndrome::IL;
    use std::vec::Vec;

    const RAM: IpaRange = IpaRange::new(Ipa(0x4200_0000), 0x3e00_0000);
    const VBAR: u64 = 0x4220_8000;

    #[derive(Default)]
    struct Fake {
        hpfar: u64,
        sgis: Vec<(u32, u64)>,
        firmware: Vec<(u32, [u64; 3])>,
        started: Vec<(usize, u64, Ipa, u64)>,
        refuse_start: Option<i64>,
        ended: Option<bool>,
        floor: Option<bool>,
        injected: Option<Injection>,
        events: Vec<TrapEvent>,
    }

    impl TrapHost for Fake {
        fn vcpu(&self) -> VcpuId {
            VcpuId(0)
        }
        fn hpfar(&self) -> u64 {
            self.hpfar
        }
        fn guest_vector_base(&self) -> u64 {
            VBAR
        }
        fn set_guest_exception_registers(&mut self, injection: &Injection) {
            self.injected = Some(*injection);
        }
        fn mpidr(&self) -> u64 {
            0
        }
        fn send_sgi(&mut self, intid: u32, mpidr: u64) {
            self.sgis.push((intid, mpidr));
        }
        fn call_firmware(&mut self, function: u32, args: [u64; 3]) -> [u64; 4] {
            self.firmware.push((function, args));
            [1 << 16, 11, 22, 33]
        }
        fn standby(&mut self) {}
        fn start_cpu(
            &mut self,
            slot: usize,
            target: u64,
            entry: Ipa,
            context: u64,
        ) -> Result<(), i64> {
            match self.refuse_start {
                Some(code) => Err(code),
                None => {
                    self.started.push((slot, target, entry, context));
                    Ok(())
                }
            }
        }
        fn end_run(&mut self, reset: bool) {
            self.ended = Some(reset);
        }
        fn install_floor_vectors(&mut self, save_all: bool) {
            self.floor = Some(save_all);
        }
        fn log(&mut self, event: TrapEvent) {
            self.events.push(event);
        }
    }

    fn vm() -> VmConfig {
        VmConfig {
            ram: RAM,
            max_vcpus: 2,
            mmio: MmioRegistry::new(),
            bench_mode: false,
        }
    }

    fn state() -> TrapState {
        let state = TrapState::new(Box::leak(Box::new(Counters::new())));
        state.slots.claim_boot(0);
        state
    }

    fn hvc(x: [u64; 4]) -> TrapFrame {
        let mut frame = TrapFrame {
            esr: 0x16 << 26 | IL,
            elr: 0x4220_1004,
            spsr: 0x3c5,
            ..TrapFrame::default()
        };
        frame.registers[..4].copy_from_slice(&x);
        frame
    }

    fn smc(x: [u64; 4]) -> TrapFrame {
        TrapFrame {
            esr: 0x17 << 26 | IL,
            elr: 0x4220_1000,
            ..hvc(x)
        }
    }

    #[test]
    fn an_unknown_call_returns_not_supported_and_resumes_after_the_hvc() {
        let mut fake = Fake::default();
        let mut frame = hvc([0xc600_1234, 1, 2, 3]);
        handle(&mut frame, &vm(), &state(), &mut fake);
        assert_eq!(frame.registers[0], psci::NOT_SUPPORTED);
        assert_eq!(frame.registers[1..4], [1, 2, 3]);
        assert_eq!(frame.elr, 0x4220_1004);
        assert!(fake.firmware.is_empty());
    }

    #[test]
    fn a_forwarded_smc_steps_over_the_smc_and_returns_four_registers() {
        let mut fake = Fake::default();
        let mut frame = smc([u64::from(psci::function::VERSION), 0, 0, 0]);
        handle(&mut frame, &vm(), &state(), &mut fake);
        assert_eq!(frame.elr, 0x4220_1004);
        assert_eq!(frame.registers[..4], [1 << 16, 11, 22, 33]);
        assert_eq!(fake.firmware, [(psci::function::VERSION, [0, 0, 0])]);
    }

    #[test]
    fn cpu_on_is_checked_before_firmware_sees_it() {
        let on = |target, entry| [u64::from(psci::function::CPU_ON_64), target, entry, 9];
        let (vm, state) = (vm(), state());
        let mut fake = Fake::default();
        // Outside guest RAM, misaligned: refused, and logged.
        for entry in [0x4020_0000, 0x4220_0002, 0x8000_0000] {
            let mut frame = hvc(on(1, entry));
            handle(&mut frame, &vm, &state, &mut fake);
            assert_eq!(frame.registers[0], psci::INVALID_PARAMETERS, "{entry:#x}");
        }
        assert!(matches!(
            fake.events[0],
            TrapEvent::CpuOnRefused {
                why: CpuOnRefusal::EntryOutsideRam,
                ..
            }
        ));
        // The boot CPU itself: ALREADY_ON, firmware never asked.
        let mut frame = hvc(on(0, 0x4220_0000));
        handle(&mut frame, &vm, &state, &mut fake);
        assert_eq!(frame.registers[0], psci::ALREADY_ON);
        // A good one: slot 1, the guest's entry and context passed on.
        let mut frame = hvc(on(1, 0x4220_0000));
        handle(&mut frame, &vm, &state, &mut fake);
        assert_eq!(frame.registers[0], 0);
        assert_eq!(fake.started, [(1, 1, Ipa(0x4220_0000), 9)]);
        // Past the vCPU limit (2): refused, and the slot is given back.
        let mut frame = hvc(on(2, 0x4220_0000));
        handle(&mut frame, &vm, &state, &mut fake);
        assert_eq!(frame.registers[0], psci::INVALID_PARAMETERS);
        assert_eq!(state.slots.claim(7), Ok(2));
    }

    #[test]
    fn a_cpu_on_firmware_refuses_gives_its_slot_back() {
        let (vm, state) = (vm(), state());
        let mut fake = Fake {
            refuse_start: Some(-2),
            ..Fake::default()
        };
        let mut frame = hvc([u64::from(psci::function::CPU_ON_64), 0x77, 0x4220_0000, 0]);
        handle(&mut frame, &vm, &state, &mut fake);
        assert_eq!(frame.registers[0], psci::INVALID_PARAMETERS);
        assert_eq!(state.slots.claim(1), Ok(1), "slot 1 free again");
    }

    #[test]
    fn cpu_suspend_is_a_standby_and_never_reaches_firmware() {
        let mut fake = Fake::default();
        // A power-down request with an entry point in hypervisor memory.
        let call = [
            u64::from(psci::function::CPU_SUSPEND_64),
            1 << 16,
            0x4020_0000,
            0,
        ];
        let mut frame = smc(call);
        handle(&mut frame, &vm(), &state(), &mut fake);
        assert!(fake.firmware.is_empty());
        assert_eq!(frame.registers[0], 0);
        assert_eq!(frame.elr, 0x4220_1004);
    }

    #[test]
    fn system_off_and_reset_end_the_run() {
        for (function, reset) in [
            (psci::function::SYSTEM_OFF, false),
            (psci::function::SYSTEM_RESET, true),
        ] {
            let mut fake = Fake::default();
            handle(
                &mut smc([u64::from(function), 0, 0, 0]),
                &vm(),
                &state(),
                &mut fake,
            );
            assert_eq!(fake.ended, Some(reset));
        }
    }

    #[test]
    fn the_floor_calls_are_answered_only_in_benchmark_mode() {
        let call = [u64::from(psci::function::BENCH_FLOOR_SAVE_ALL), 0, 0, 0];
        let mut fake = Fake::default();
        let mut frame = hvc(call);
        handle(&mut frame, &vm(), &state(), &mut fake);
        assert_eq!(
            (frame.registers[0], fake.floor),
            (psci::NOT_SUPPORTED, None)
        );
        let bench = VmConfig {
            bench_mode: true,
            ..vm()
        };
        let mut frame = hvc(call);
        handle(&mut frame, &bench, &state(), &mut fake);
        assert_eq!((frame.registers[0], fake.floor), (0, Some(true)));
    }

    #[test]
    fn an_access_to_no_device_is_an_external_abort_at_the_guests_vector() {
        let mut fake = Fake {
            hpfar: 0x40200 << 4,
            ..Fake::default()
        };
        // LDR x0 from EL1h at IPA 0x4020_0000 (the hypervisor's image): ISV=1, SAS=3, SF=1.
        let mut frame = TrapFrame {
            esr: 0x24 << 26 | IL | 1 << 24 | 3 << 22 | 1 << 15 | 0b00_0111,
            elr: 0x4220_9290,
            spsr: 0x3c5,
            far: 0x4020_0000,
            ..TrapFrame::default()
        };
        handle(&mut frame, &vm(), &state(), &mut fake);
        let injected = fake.injected.unwrap();
        assert_eq!(injected.esr_el1, 0x25 << 26 | IL | 0x10);
        assert_eq!(
            (injected.elr_el1, injected.far_el1),
            (0x4220_9290, 0x4020_0000)
        );
        assert_eq!((frame.elr, frame.spsr), (VBAR + 0x200, 0x3c5));
        assert_eq!(
            fake.events[0],
            TrapEvent::DataAbortInjected {
                write: false,
                ipa: Ipa(0x4020_0000),
                va: 0x4020_0000,
                pc: 0x4220_9290,
                syndrome_valid: true
            }
        );
    }

    #[test]
    fn an_emulated_access_steps_over_the_instruction_by_its_length() {
        use nested::{AccessWidth, MmioDevice, MmioError, MmioOffset};
        struct Constant;
        impl MmioDevice for Constant {
            fn mmio_read(
                &mut self,
                _: MmioOffset,
                _: AccessWidth,
                _: VcpuId,
            ) -> Result<u64, MmioError> {
                Ok(0x55)
            }
            fn mmio_write(
                &mut self,
                _: MmioOffset,
                _: AccessWidth,
                _: u64,
                _: VcpuId,
            ) -> Result<(), MmioError> {
                Ok(())
            }
        }
        static DEVICE: spin::Mutex<Constant> = spin::Mutex::new(Constant);
        let mut vm = vm();
        vm.mmio
            .register(IpaRange::new(Ipa(0x080a_0000), 0x1_0000), &DEVICE)
            .unwrap();
        for (il, step) in [(IL, 4), (0, 2)] {
            let mut fake = Fake {
                hpfar: 0x80a0 << 4,
                ..Fake::default()
            };
            // LDR w3 (SAS=2), from AArch32 EL0 when IL = 0 (a 16-bit T32 load).
            let mut frame = TrapFrame {
                esr: 0x24 << 26 | il | 1 << 24 | 2 << 22 | 3 << 16 | 0b00_0111,
                elr: 0x1000,
                far: 0x8,
                ..TrapFrame::default()
            };
            handle(&mut frame, &vm, &state(), &mut fake);
            assert_eq!((frame.elr, frame.registers[3]), (0x1000 + step, 0x55));
            assert!(fake.injected.is_none());
        }
    }

    #[test]
    fn other_traps_are_undefined() {
        let state = state();
        let mut fake = Fake::default();
        // MRS of an IMPLEMENTATION DEFINED register (EC 0x18), and an MRS of ICC_SGI1R_EL1
        // (a read: the register is write-only, so the trap is not an SGI).
        for iss in [0x30_3d01, 3 << 20 | 5 << 17 | 12 << 10 | 11 << 1 | 1] {
            let mut frame = TrapFrame {
                esr: 0x18 << 26 | IL | iss,
                elr: 0x2000,
                spsr: 0x3c5,
                ..TrapFrame::default()
            };
            handle(&mut frame, &vm(), &state, &mut fake);
            assert_eq!(fake.injected.unwrap().esr_el1, IL);
            assert_eq!(frame.elr, VBAR + 0x200);
        }
    }

    #[test]
    fn a_guest_sgi_reaches_only_its_own_cpus() {
        let state = state();
        state.slots.claim(1).unwrap();
        let mut fake = Fake::default();
        // MSR ICC_SGI1R_EL1, x7: SGI 3 to CPUs 0..=3 of cluster 0; only 0 and 1 are the guest's.
        let msr = 3 << 20 | 5 << 17 | 12 << 10 | 7 << 5 | 11 << 1;
        let mut frame = TrapFrame {
            esr: 0x18 << 26 | IL | msr,
            elr: 0x2000,
            ..TrapFrame::default()
        };
        frame.registers[7] = 3 << 24 | 0b1111;
        handle(&mut frame, &vm(), &state, &mut fake);
        assert_eq!(fake.sgis, [(3, 0), (3, 1)]);
        assert_eq!(frame.elr, 0x2004);
        assert!(fake.injected.is_none());
        assert_eq!(state.counters.get(ExitReason::SgiSent), 2);
        assert_eq!(state.counters.get(ExitReason::SgiRefused), 2);
        // ICC_SGI0R_EL1 (Group 0: no guest interrupt is): completes, sends nothing.
        let sgi0r = 3 << 20 | 7 << 17 | 12 << 10 | 7 << 5 | 11 << 1;
        let mut frame = TrapFrame {
            esr: 0x18 << 26 | IL | sgi0r,
            elr: 0x2000,
            ..TrapFrame::default()
        };
        handle(&mut frame, &vm(), &state, &mut fake);
        assert_eq!(fake.sgis.len(), 2);
        assert_eq!(frame.elr, 0x2004);
    }

    #[test]
    fn the_hypervisors_sgi_is_never_sent_for_the_guest() {
        let state = state();
        state.slots.claim(1).unwrap();
        let mut fake = Fake::default();
        let msr = 3 << 20 | 5 << 17 | 12 << 10 | 7 << 5 | 11 << 1;
        for value in [
            u64::from(crate::gic::KICK_SGI) << 24 | 0b11,
            u64::from(crate::gic::KICK_SGI) << 24 | 1 << 40,
        ] {
            let mut frame = TrapFrame {
                esr: 0x18 << 26 | IL | msr,
                elr: 0x2000,
                ..TrapFrame::default()
            };
            frame.registers[7] = value;
            handle(&mut frame, &vm(), &state, &mut fake);
            assert_eq!(frame.elr, 0x2004);
        }
        assert!(fake.sgis.is_empty());
        assert_eq!(state.counters.get(ExitReason::SgiSent), 0);
        assert_eq!(state.counters.get(ExitReason::SgiRefused), 3);
    }
}
