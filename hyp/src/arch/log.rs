//! The hypervisor's log: `defmt` frames on its own PL011 (UART1 on QEMU virt), decoded on the
//! host by `cargo xtask run`. The guest keeps its own UART; the two streams never mix.
//!
//! The logger is usable from any CPU and from exception handlers: a frame is written with
//! interrupts masked under a spin lock that records its owner, so an exception taken while this
//! CPU is mid-frame (a nested log) terminates the broken frame instead of deadlocking.

use super::sysreg;
use arm_pl011_uart::{
    DataBits, LineConfig, PL011Registers, Parity, StopBits, Uart, UniqueMmioPointer,
};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

/// Owner of the frame in progress: a CPU affinity, or `NO_OWNER`.
static OWNER: AtomicU64 = AtomicU64::new(NO_OWNER);
const NO_OWNER: u64 = u64::MAX;

/// The UART, the frame encoder and the interrupt mask to restore; touched only by the CPU
/// recorded in `OWNER`.
static STATE: OwnedState = OwnedState(UnsafeCell::new(LoggerState {
    uart: None,
    encoder: defmt::Encoder::new(),
    saved_daif: 0,
    nesting: 0,
}));

struct OwnedState(UnsafeCell<LoggerState>);

// SAFETY: the cell is only dereferenced by the CPU that holds `OWNER` (see `owned_state`).
unsafe impl Sync for OwnedState {}

/// The logger state.
///
/// # Safety
///
/// The calling CPU must hold `OWNER`, and must not keep the reference past releasing it.
unsafe fn owned_state() -> &'static mut LoggerState {
    // SAFETY: the caller holds OWNER, so no other reference to the state exists.
    unsafe { &mut *STATE.0.get() }
}

/// Takes `OWNER` for this CPU, spinning while another CPU holds it.
fn lock(me: u64) {
    while OWNER
        .compare_exchange(NO_OWNER, me, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
}

struct LoggerState {
    uart: Option<Uart<'static>>,
    encoder: defmt::Encoder,
    saved_daif: u64,
    /// How many frames were started on top of an unfinished one by the owning CPU.
    nesting: u32,
}

/// Starts logging on the PL011 at `base`. Until this is called, log frames are dropped.
///
/// # Safety
///
/// `base` must be the address of a PL011's registers, mapped as device memory in the current
/// translation regime for as long as the hypervisor runs, and used by nothing else.
pub unsafe fn init(base: usize) {
    let Some(pointer) = NonNull::new(base as *mut PL011Registers) else {
        return;
    };
    // SAFETY: the caller guarantees `base` is an exclusively owned, mapped PL011.
    let mut uart = Uart::new(unsafe { UniqueMmioPointer::new(pointer) });
    let config = LineConfig {
        data_bits: DataBits::Bits8,
        parity: Parity::None,
        stop_bits: StopBits::One,
    };
    // QEMU ignores the divisors; the values match its 24 MHz UART clock at 115200 baud.
    if uart.enable(config, 115_200, 24_000_000).is_err() {
        return;
    }
    let daif = sysreg::mask_interrupts();
    lock(sysreg::cpu_affinity());
    // SAFETY: this CPU holds OWNER until the store below.
    unsafe { owned_state() }.uart = Some(uart);
    OWNER.store(NO_OWNER, Ordering::Release);
    sysreg::restore_interrupts(daif);
}

fn write_bytes(uart: &mut Option<Uart<'static>>, bytes: &[u8]) {
    if let Some(uart) = uart {
        for &byte in bytes {
            while uart.is_tx_fifo_full() {
                core::hint::spin_loop();
            }
            uart.write_word(byte);
        }
    }
}

#[defmt::global_logger]
struct Logger;

// SAFETY: `acquire` masks interrupts and takes the owner lock before any frame byte is written,
// and `release` ends the frame before giving both back, so frames from different CPUs never
// interleave; a nested acquire on the owning CPU is handled without re-locking.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        let daif = sysreg::mask_interrupts();
        let me = sysreg::cpu_affinity();
        if OWNER.load(Ordering::Acquire) == me {
            // Nested: an exception interrupted this CPU's own frame. Terminate it (the decoder
            // drops the broken frame) and start a new one; the outer frame ends up garbled.
            // SAFETY: this CPU holds OWNER (checked just above).
            let state = unsafe { owned_state() };
            state.nesting += 1;
            write_bytes(&mut state.uart, &[0]);
            let LoggerState { uart, encoder, .. } = state;
            encoder.start_frame(|bytes| write_bytes(uart, bytes));
            return;
        }
        lock(me);
        // SAFETY: this CPU now holds OWNER.
        let state = unsafe { owned_state() };
        state.saved_daif = daif;
        let LoggerState { uart, encoder, .. } = state;
        encoder.start_frame(|bytes| write_bytes(uart, bytes));
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: defmt calls release only after acquire, so this CPU holds OWNER.
        let state = unsafe { owned_state() };
        let LoggerState {
            uart,
            encoder,
            saved_daif,
            nesting,
        } = state;
        encoder.end_frame(|bytes| write_bytes(uart, bytes));
        if *nesting > 0 {
            // The end of a nested frame: the outer acquire still holds the lock.
            *nesting -= 1;
            return;
        }
        let daif = *saved_daif;
        OWNER.store(NO_OWNER, Ordering::Release);
        sysreg::restore_interrupts(daif);
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: defmt calls write only between acquire and release, so this CPU holds OWNER.
        let state = unsafe { owned_state() };
        let LoggerState { uart, encoder, .. } = state;
        encoder.write(bytes, |bytes| write_bytes(uart, bytes));
    }
}

defmt::timestamp!("{=u64:us}", {
    let (count, frequency) = sysreg::counter();
    if frequency == 0 {
        0
    } else {
        count.saturating_mul(1_000_000) / frequency
    }
});
