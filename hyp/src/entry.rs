//! Where the exception vectors land: `hyp_handle_exception`, called by `arch::vectors` with
//! the saved frame. A guest's synchronous exception goes to the trap path
//! ([`crate::trap::handler::handle`]) with [`Hardware`] as its host; an exception taken at EL2
//! itself is a hypervisor bug, reported in full before the run ends.

use crate::arch::power::{ExitStatus, exit};
use crate::arch::{el2, sysreg, vectors};
use crate::stats::{self, ExitReason};
use crate::trap::VectorKind;
use crate::trap::frame::TrapFrame;
use crate::trap::handler::{self, TrapEvent, TrapHost};
use crate::trap::inject::Injection;
use crate::trap::syndrome::{DataAbort, ExceptionClass};
use nested::VcpuId;
use smmu::Ipa;

/// The trap path's view of this CPU and the devices.
struct Hardware;

impl TrapHost for Hardware {
    fn vcpu(&self) -> VcpuId {
        #[allow(clippy::cast_possible_truncation, reason = "at most MAX_CPUS")]
        VcpuId(el2::cpu_index() as u16)
    }

    fn hpfar(&self) -> u64 {
        el2::hpfar()
    }

    fn guest_vector_base(&self) -> u64 {
        el2::guest_vector_base()
    }

    fn set_guest_exception_registers(&mut self, injection: &Injection) {
        el2::set_guest_exception_registers(
            injection.esr_el1,
            injection.far_el1,
            injection.elr_el1,
            injection.spsr_el1,
        );
    }

    fn mpidr(&self) -> u64 {
        sysreg::cpu_affinity()
    }

    fn send_sgi(&mut self, intid: u32, mpidr: u64) {
        crate::interrupts::send_sgi(intid, mpidr);
    }

    fn call_firmware(&mut self, function: u32, args: [u64; 3]) -> [u64; 4] {
        let mut all = [0u64; 17];
        all[..3].copy_from_slice(&args);
        let out = smccc::smc64(function, all);
        [out[0], out[1], out[2], out[3]]
    }

    fn standby(&mut self) {
        el2::wait_for_interrupt();
    }

    fn start_cpu(&mut self, slot: usize, target: u64, entry: Ipa, context: u64) -> Result<(), i64> {
        crate::cpus::start::start_cpu(slot, target, entry.0, context)
    }

    fn end_run(&mut self, reset: bool) {
        crate::report::end_run(reset)
    }

    fn install_floor_vectors(&mut self, save_all: bool) {
        vectors::install(if save_all {
            vectors::Table::FloorSaveAll
        } else {
            vectors::Table::FloorEmpty
        });
    }

    fn log(&mut self, event: TrapEvent) {
        log_event(&event);
    }
}

fn log_event(event: &TrapEvent) {
    match *event {
        TrapEvent::DataAbortInjected {
            write,
            ipa,
            va,
            pc,
            syndrome_valid,
        } => defmt::warn!(
            "guest {=str} at IPA {=u64:#x} (VA {=u64:#x}, PC {=u64:#x}, ISV {=bool}): external abort injected",
            if write { "write" } else { "read" },
            ipa.0,
            va,
            pc,
            syndrome_valid
        ),
        TrapEvent::InstructionAbortInjected { va } => defmt::warn!(
            "guest instruction abort at {=u64:#x}: external abort injected",
            va
        ),
        TrapEvent::UndefinedInjected { class, esr, pc } => defmt::warn!(
            "guest trap {} (ESR {=u64:#010x}) at {=u64:#x}: undefined instruction injected",
            class,
            esr,
            pc
        ),
        TrapEvent::CallRefused { function } => {
            defmt::info!("guest call {=u64:#x}: not supported", function)
        }
        TrapEvent::CpuOnRefused { target, entry, why } => defmt::warn!(
            "guest CPU_ON {=u64:#x} (entry {=u64:#x}) refused: {}",
            target,
            entry,
            why
        ),
        TrapEvent::VcpuStarting { target, entry } => {
            defmt::info!("vCPU {=u64:#x} starting at {=u64:#x}", target, entry)
        }
    }
}

/// Called by the vectors with the saved frame. Returning resumes at `frame.elr`.
#[unsafe(no_mangle)]
extern "C" fn hyp_handle_exception(frame: &mut TrapFrame, index: u64) {
    let kind = VectorKind::from_index(index);
    match kind {
        VectorKind::SyncLower => match crate::vm::vm() {
            Some(vm) => handler::handle(frame, vm, &crate::vm::TRAP_STATE, &mut Hardware),
            None => {
                report_unexpected(kind, frame);
                exit(ExitStatus::UnexpectedException);
            }
        },
        // Physical interrupts (HCR_EL2.IMO/FMO): the hypervisor's, or the guest's to inject.
        // From EL2 itself only where a self-test unmasks them.
        VectorKind::IrqLower
        | VectorKind::FiqLower
        | VectorKind::IrqCurrent
        | VectorKind::FiqCurrent => {
            crate::interrupts::handle(crate::interrupts::ThisCpu {
                mpidr: sysreg::cpu_affinity(),
            });
        }
        // SErrors stay the guest's (HCR_EL2.AMO clear): none should arrive.
        VectorKind::SErrorLower => {
            let _ = stats::count(ExitReason::Asynchronous);
        }
        // Anything taken at EL2 itself is a hypervisor bug: report it fully and stop.
        _ => {
            report_unexpected(kind, frame);
            exit(ExitStatus::UnexpectedException);
        }
    }
}

/// Logs an exception with its decoded syndrome.
fn report_unexpected(kind: VectorKind, frame: &TrapFrame) {
    let class = ExceptionClass::from_esr(frame.esr);
    defmt::error!(
        "unexpected exception {}: {} ESR={=u64:#010x} FAR={=u64:#x} ELR={=u64:#x} SPSR={=u64:#x}",
        kind,
        class,
        frame.esr,
        frame.far,
        frame.elr,
        frame.spsr
    );
    if matches!(
        class,
        ExceptionClass::DataAbortCurrent | ExceptionClass::DataAbortLower
    ) {
        let abort = DataAbort::from_esr(frame.esr);
        let access = if abort.write { "write" } else { "read" };
        if abort.syndrome_valid {
            defmt::error!(
                "data abort: {} on {=str} of {=u8} bytes via x{=u8} at {=u64:#x}",
                abort.status,
                access,
                1u8 << abort.access_size_log2,
                abort.register,
                frame.far
            );
        } else {
            // ISV=0: the syndrome does not describe the access (size, register).
            defmt::error!(
                "data abort: {} on {=str} at {=u64:#x} (ISV=0)",
                abort.status,
                access,
                frame.far
            );
        }
    }
}
