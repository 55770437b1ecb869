//! A behavioural fake of an SMMUv3 and of the memory it shares with the CPU, for host tests of
//! the driver and of crates built on it (enable the `testing` feature from their
//! `[dev-dependencies]`).
//!
//! This module owns [`FakeBus`] (physical memory as a vector of words, handed out in
//! [`FakeRegion`]s that implement [`DmaMemory`]), [`FakeSmmu`] (a register file that reacts as
//! the architecture, and QEMU, do to the writes the driver makes) and [`FakePlatform`]. It uses
//! `std` and is never built for the hypervisor.
//!
//! What [`FakeSmmu`] does:
//!
//! - CR0 writes are mirrored into CR0ACK, IRQ_CTRL into IRQ_CTRLACK, and a GBPA write with
//!   UPDATE completes at once (each can be switched off to test timeouts);
//! - a CMDQ_PROD write (and a GERRORN write, as in QEMU) consumes commands from the queue in
//!   memory while CMDQEN is set and CMDQ_ERR is not active: each command that
//!   [`Command::decode`] accepts is recorded and CONS advances past it (a CMD_SYNC completes at
//!   once); at one it rejects, CONS stops at it with ERR=CERROR_ILL and GERROR.CMDQ_ERR becomes
//!   active. So does a command the SMMU's features make ILLEGAL: CMD_ATC_INV without IDR0.ATS,
//!   CMD_PRI_RESP without IDR0.PRI (IHI 0070 4.5.1, 4.5.2). (QEMU checks opcodes only; this
//!   fake also rejects reserved bits and those two, which is stricter.)
//! - tests inject event records and PRI entries, which are written at PROD as the SMMU would,
//!   or, into a full queue, toggle PROD's overflow flag;
//! - [`FakeSmmu::ste`] walks the stream table from the registers, as the SMMU would, and
//!   [`FakeSmmu::watch_stes`] records chosen STEs at every CMD_SYNC it consumes.
//!
//! It has no translation, no caches, no stalls and no interrupts.

// The crate is `no_std` outside its own tests; this module is host-only.
#[cfg(not(test))]
extern crate std;

use std::cell::RefCell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use crate::command::{Command, Opcode};
use crate::event::EventRecord;
use crate::hardware::{RegisterAccess, RegisterOffset};
use crate::ids::{PhysAddr, StreamId};
use crate::page_request::PriEntry;
use crate::queue::{OVERFLOW_FLAG, QueueKind, QueuePointer, QueueSize, QueueState};
use crate::registers::{
    CmdqCons, CommandError, Cr0, Gbpa, Gerror, IdRegisters, QueueBase, StreamTableFormat,
    StrtabBase, StrtabBaseCfg, offset,
};
use crate::ste::{Ste, StreamTableL1Descriptor};
use crate::testing::FakeRegisters;

use super::memory::{DmaMemory, Platform};

/// Physical memory: `size` bytes from `base`, as 64-bit words. Clones share the memory.
#[derive(Clone, Debug)]
pub struct FakeBus {
    base: u64,
    words: Rc<RefCell<Vec<u64>>>,
}

impl FakeBus {
    /// `bytes` bytes of zeroed memory at physical address `base`.
    #[must_use]
    pub fn new(base: PhysAddr, bytes: usize) -> Self {
        Self {
            base: base.0,
            words: Rc::new(RefCell::new(vec![0; bytes / 8])),
        }
    }

    fn word_index(&self, addr: PhysAddr) -> Option<usize> {
        let offset = addr.0.checked_sub(self.base)?;
        if offset % 8 != 0 {
            return None;
        }
        usize::try_from(offset / 8).ok()
    }

    /// The word at `addr`, or `None` outside the memory or unaligned.
    #[must_use]
    pub fn read(&self, addr: PhysAddr) -> Option<u64> {
        let index = self.word_index(addr)?;
        self.words.borrow().get(index).copied()
    }

    /// Writes the word at `addr`; false (and nothing written) outside the memory or unaligned.
    pub fn write(&self, addr: PhysAddr, value: u64) -> bool {
        let Some(index) = self.word_index(addr) else {
            return false;
        };
        match self.words.borrow_mut().get_mut(index) {
            Some(word) => {
                *word = value;
                true
            }
            None => false,
        }
    }

    /// The region of `bytes` bytes at `phys`, for the driver.
    #[must_use]
    pub fn region(&self, phys: PhysAddr, bytes: usize) -> FakeRegion {
        FakeRegion {
            bus: self.clone(),
            phys,
            size: bytes,
        }
    }
}

/// A region of a [`FakeBus`], as [`DmaMemory`].
#[derive(Clone, Debug)]
pub struct FakeRegion {
    bus: FakeBus,
    phys: PhysAddr,
    size: usize,
}

impl FakeRegion {
    fn address(&self, offset: usize) -> Option<PhysAddr> {
        if offset.checked_add(8)? > self.size {
            return None;
        }
        self.phys.checked_add(u64::try_from(offset).ok()?)
    }
}

impl DmaMemory for FakeRegion {
    fn phys(&self) -> PhysAddr {
        self.phys
    }

    fn size(&self) -> usize {
        self.size
    }

    fn read_u64(&self, offset: usize) -> u64 {
        self.address(offset)
            .and_then(|a| self.bus.read(a))
            .unwrap_or(0)
    }

    fn write_u64(&mut self, offset: usize, value: u64) {
        if let Some(a) = self.address(offset) {
            self.bus.write(a, value);
        }
    }
}

/// A platform whose barriers and pauses only count themselves.
#[derive(Clone, Debug, Default)]
pub struct FakePlatform {
    counts: Rc<RefCell<(u64, u64)>>,
}

impl FakePlatform {
    /// How many barriers have been issued.
    #[must_use]
    pub fn barriers(&self) -> u64 {
        self.counts.borrow().0
    }

    /// How many pauses (polls that found nothing) there have been.
    #[must_use]
    pub fn pauses(&self) -> u64 {
        self.counts.borrow().1
    }
}

impl Platform for FakePlatform {
    fn dma_barrier(&self) {
        self.counts.borrow_mut().0 += 1;
    }

    fn pause(&self) {
        self.counts.borrow_mut().1 += 1;
    }
}

/// How the fake reacts; every switch defaults to the architected behaviour.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(clippy::struct_excessive_bools)] // One switch per behaviour.
pub struct FakeBehaviour {
    /// Mirror CR0 into CR0ACK.
    pub acknowledge_cr0: bool,
    /// Complete a GBPA update at once.
    pub complete_gbpa_update: bool,
    /// Mirror IRQ_CTRL into IRQ_CTRLACK.
    pub acknowledge_irq_ctrl: bool,
    /// Consume commands when PROD is written.
    pub consume_commands: bool,
}

impl Default for FakeBehaviour {
    fn default() -> Self {
        Self {
            acknowledge_cr0: true,
            complete_gbpa_update: true,
            acknowledge_irq_ctrl: true,
            consume_commands: true,
        }
    }
}

#[derive(Debug)]
struct State {
    registers: FakeRegisters,
    bus: FakeBus,
    behaviour: FakeBehaviour,
    consumed: Vec<Command>,
    prod_writes: usize,
    writes: Vec<(RegisterOffset, u64)>,
    /// Streams whose STEs are recorded at every CMD_SYNC.
    watched: Vec<StreamId>,
    snapshots: Vec<Vec<Option<Ste>>>,
}

/// A fake SMMU. Clones share the device, so a test keeps one while the driver owns another.
#[derive(Clone, Debug)]
pub struct FakeSmmu {
    state: Rc<RefCell<State>>,
}

impl FakeSmmu {
    /// An SMMU with these ID registers, reset values elsewhere (GBPA as QEMU resets it), that
    /// reaches memory through `bus`.
    #[must_use]
    pub fn new(ids: IdRegisters, bus: &FakeBus) -> Self {
        let mut registers = FakeRegisters::with_id_registers(ids);
        registers.write32(offset::GBPA, 0x1000);
        Self {
            state: Rc::new(RefCell::new(State {
                registers,
                bus: bus.clone(),
                behaviour: FakeBehaviour::default(),
                consumed: Vec::new(),
                prod_writes: 0,
                writes: Vec::new(),
                watched: Vec::new(),
                snapshots: Vec::new(),
            })),
        }
    }

    /// An SMMU with QEMU `virt`'s ID registers.
    #[must_use]
    pub fn qemu_virt(bus: &FakeBus) -> Self {
        Self::new(IdRegisters::QEMU_VIRT, bus)
    }

    /// Changes how the fake reacts from now on.
    pub fn set_behaviour(&self, behaviour: FakeBehaviour) {
        self.state.borrow_mut().behaviour = behaviour;
    }

    /// How the fake reacts now.
    #[must_use]
    pub fn behaviour(&self) -> FakeBehaviour {
        self.state.borrow().behaviour
    }

    /// Every command consumed so far, in order (replacements included).
    #[must_use]
    pub fn consumed(&self) -> Vec<Command> {
        self.state.borrow().consumed.clone()
    }

    /// How many times CMDQ_PROD has been written.
    #[must_use]
    pub fn prod_writes(&self) -> usize {
        self.state.borrow().prod_writes
    }

    /// Every register write the driver made, in order, with its value (32-bit writes widened).
    #[must_use]
    pub fn writes(&self) -> Vec<(RegisterOffset, u64)> {
        self.state.borrow().writes.clone()
    }

    /// Reads a register without side effects.
    #[must_use]
    pub fn peek32(&self, offset: RegisterOffset) -> u32 {
        self.state.borrow().registers.read32(offset)
    }

    /// Reads a 64-bit register without side effects.
    #[must_use]
    pub fn peek64(&self, offset: RegisterOffset) -> u64 {
        self.state.borrow().registers.read64(offset)
    }

    /// Sets a register without side effects, as a misbehaving SMMU would.
    pub fn poke32(&self, offset: RegisterOffset, value: u32) {
        self.state.borrow_mut().registers.write32(offset, value);
    }

    /// Raises global errors: toggles the GERROR bits in `errors` that are not already active.
    pub fn raise_global_errors(&self, errors: Gerror) {
        self.state.borrow_mut().raise(errors);
    }

    /// Consumes commands now, as a PROD write would (for a test that switched consumption
    /// back on).
    pub fn run_command_queue(&self) {
        self.state.borrow_mut().consume();
    }

    /// Writes `record` to the event queue as the SMMU would. False if it was lost: the queue
    /// is disabled, or full (then PROD.OVFLG toggles).
    pub fn inject_event(&self, record: &EventRecord) -> bool {
        let cr0 = Cr0(self.peek32(offset::CR0));
        cr0.evtqen()
            && self.state.borrow_mut().produce(
                offset::EVTQ_BASE,
                offset::EVTQ_PROD,
                offset::EVTQ_CONS,
                QueueKind::Event,
                &record.words(),
            )
    }

    /// Writes `entry` to the PRI queue as the SMMU would. False if it was lost.
    pub fn inject_page_request(&self, entry: &PriEntry) -> bool {
        let cr0 = Cr0(self.peek32(offset::CR0));
        cr0.priqen()
            && self.state.borrow_mut().produce(
                offset::PRIQ_BASE,
                offset::PRIQ_PROD,
                offset::PRIQ_CONS,
                QueueKind::PageRequest,
                &entry.words(),
            )
    }

    /// The STE the SMMU would use for `sid`, found by walking the stream table from
    /// STRTAB_BASE as the SMMU does; `None` where it would find no STE (out of range, SPAN=0,
    /// unreadable memory).
    #[must_use]
    pub fn ste(&self, sid: StreamId) -> Option<Ste> {
        self.state.borrow().ste(sid)
    }

    /// From now on, at every CMD_SYNC it consumes, the fake records the STEs of `sids` as
    /// [`FakeSmmu::ste`] finds them: what memory held when each sync completed.
    pub fn watch_stes(&self, sids: &[StreamId]) {
        let mut state = self.state.borrow_mut();
        state.watched = sids.to_vec();
        state.snapshots.clear();
    }

    /// The STEs of the watched streams at each CMD_SYNC consumed since
    /// [`FakeSmmu::watch_stes`], in order, one row per sync.
    #[must_use]
    pub fn ste_snapshots(&self) -> Vec<Vec<Option<Ste>>> {
        self.state.borrow().snapshots.clone()
    }
}

impl State {
    fn ste(&self, sid: StreamId) -> Option<Ste> {
        let base = StrtabBase(self.registers.read64(offset::STRTAB_BASE)).addr();
        let cfg = StrtabBaseCfg(self.registers.read32(offset::STRTAB_BASE_CFG));
        if u64::from(sid.0) >> cfg.log2size() != 0 {
            return None;
        }
        let ste_base = match cfg.fmt().ok()? {
            StreamTableFormat::Linear => base.checked_add(u64::from(sid.0) * 64)?,
            StreamTableFormat::TwoLevel => {
                let split = cfg.split();
                let l1 = base.checked_add(u64::from(sid.0 >> split) * 8)?;
                let descriptor = StreamTableL1Descriptor::from_raw(self.bus.read(l1)?);
                let within = u64::from(sid.0) & ((1 << split) - 1);
                if within >= descriptor.ste_count() {
                    return None;
                }
                descriptor.l2_ptr().checked_add(within * 64)?
            }
        };
        let mut words = [0; 8];
        for (i, word) in (0u64..).zip(words.iter_mut()) {
            *word = self.bus.read(ste_base.checked_add(i * 8)?)?;
        }
        Some(Ste::from_words(words))
    }

    fn raise(&mut self, errors: Gerror) {
        let gerror = self.registers.read32(offset::GERROR);
        let gerrorn = self.registers.read32(offset::GERRORN);
        let new = errors.0 & !(gerror ^ gerrorn) & Gerror::DEFINED_BITS;
        self.registers.write32(offset::GERROR, gerror ^ new);
    }

    fn queue_size(&self, base: RegisterOffset, kind: QueueKind) -> Option<QueueSize> {
        let idr1 = u64::from(self.registers.read32(offset::IDR1));
        let max = match kind {
            QueueKind::Command => (idr1 >> 21) & 0x1f,
            QueueKind::Event => (idr1 >> 16) & 0x1f,
            QueueKind::PageRequest => (idr1 >> 11) & 0x1f,
        };
        let log2 = QueueBase(self.registers.read64(base)).log2size();
        QueueSize::new(log2.min(u8::try_from(max).ok()?)).ok()
    }

    fn consume(&mut self) {
        if !self.behaviour.consume_commands || !Cr0(self.registers.read32(offset::CR0)).cmdqen() {
            return;
        }
        let gerror = Gerror::active(
            Gerror(self.registers.read32(offset::GERROR)),
            Gerror(self.registers.read32(offset::GERRORN)),
        );
        if gerror.cmdq_err() {
            return;
        }
        let Some(size) = self.queue_size(offset::CMDQ_BASE, QueueKind::Command) else {
            return;
        };
        let base = QueueBase(self.registers.read64(offset::CMDQ_BASE)).addr();
        let prod_raw = self.registers.read32(offset::CMDQ_PROD);
        let cons_raw = CmdqCons(self.registers.read32(offset::CMDQ_CONS)).pointer_bits();
        let (Ok(prod), Ok(mut cons)) = (
            QueuePointer::from_raw(size, prod_raw, QueueKind::Command),
            QueuePointer::from_raw(size, cons_raw, QueueKind::Command),
        ) else {
            return;
        };
        for _ in 0..size.entries() {
            if QueueState::new(prod, cons).is_ok_and(QueueState::is_empty) {
                break;
            }
            let entry = base.checked_add(u64::from(cons.index()) * 16);
            let words =
                entry.and_then(|e| Some([self.bus.read(e)?, self.bus.read(e.checked_add(8)?)?]));
            let Some(words) = words else {
                self.stop(cons, CommandError::Abort);
                return;
            };
            let command = Command::from_words(words);
            if command.decode().is_err() || self.illegal_here(&command) {
                self.stop(cons, CommandError::Illegal);
                return;
            }
            if command.opcode_raw() == Opcode::Sync.value() && !self.watched.is_empty() {
                let row = self.watched.iter().map(|&sid| self.ste(sid)).collect();
                self.snapshots.push(row);
            }
            self.consumed.push(command);
            cons = cons.incremented();
        }
        self.registers.write32(offset::CMDQ_CONS, cons.raw());
    }

    /// Whether this SMMU's ID registers make `command` ILLEGAL (IHI 0070 4.5.1: ATC_INV when
    /// IDR0.ATS = 0; 4.5.2: PRI_RESP when IDR0.PRI = 0).
    fn illegal_here(&self, command: &Command) -> bool {
        let idr0 = self.registers.read32(offset::IDR0);
        let (ats, pri) = (idr0 & 1 << 10 != 0, idr0 & 1 << 16 != 0);
        match Opcode::from_u8(command.opcode_raw()) {
            Some(Opcode::AtcInv) => !ats,
            Some(Opcode::PriResp) => !pri,
            _ => false,
        }
    }

    fn stop(&mut self, cons: QueuePointer, error: CommandError) {
        self.registers
            .write32(offset::CMDQ_CONS, CmdqCons(cons.raw()).with_err(error).0);
        self.raise(Gerror::default().with_cmdq_err(true));
    }

    fn produce(
        &mut self,
        base_register: RegisterOffset,
        prod_register: RegisterOffset,
        cons_register: RegisterOffset,
        kind: QueueKind,
        words: &[u64],
    ) -> bool {
        let Some(size) = self.queue_size(base_register, kind) else {
            return false;
        };
        let base = QueueBase(self.registers.read64(base_register)).addr();
        let prod_raw = self.registers.read32(prod_register);
        let (Ok(prod), Ok(cons)) = (
            QueuePointer::from_raw(size, prod_raw, kind),
            QueuePointer::from_raw(size, self.registers.read32(cons_register), kind),
        ) else {
            return false;
        };
        if QueueState::new(prod, cons).is_ok_and(QueueState::is_full) {
            self.registers
                .write32(prod_register, prod_raw ^ OVERFLOW_FLAG);
            return false;
        }
        let bytes = u64::try_from(words.len() * 8).unwrap_or(0);
        let entry = base.checked_add(u64::from(prod.index()) * bytes);
        for (i, word) in (0u64..).zip(words) {
            if let Some(addr) = entry.and_then(|e| e.checked_add(i * 8)) {
                self.bus.write(addr, *word);
            }
        }
        self.registers
            .write32(prod_register, prod.incremented().raw());
        true
    }
}

impl RegisterAccess for FakeSmmu {
    fn read32(&self, offset: RegisterOffset) -> u32 {
        self.state.borrow().registers.read32(offset)
    }

    fn write32(&mut self, register: RegisterOffset, value: u32) {
        let mut state = self.state.borrow_mut();
        state.writes.push((register, u64::from(value)));
        let behaviour = state.behaviour;
        match register {
            r if r == offset::CR0 => {
                state.registers.write32(offset::CR0, value);
                if behaviour.acknowledge_cr0 {
                    state.registers.write32(offset::CR0ACK, value);
                }
            }
            r if r == offset::GBPA => {
                let update = Gbpa(value).update() && behaviour.complete_gbpa_update;
                let stored = if update {
                    Gbpa(value).with_update(false).0
                } else {
                    value
                };
                state.registers.write32(offset::GBPA, stored);
            }
            r if r == offset::IRQ_CTRL => {
                state.registers.write32(offset::IRQ_CTRL, value);
                if behaviour.acknowledge_irq_ctrl {
                    state.registers.write32(offset::IRQ_CTRLACK, value);
                }
            }
            r if r == offset::CMDQ_PROD => {
                state.registers.write32(offset::CMDQ_PROD, value);
                state.prod_writes += 1;
                state.consume();
            }
            r if r == offset::GERRORN => {
                state.registers.write32(offset::GERRORN, value);
                state.consume();
            }
            // Read-only registers ignore writes.
            r if r == offset::CR0ACK
                || r == offset::IRQ_CTRLACK
                || r == offset::GERROR
                || r.get() < offset::CR0.get() => {}
            _ => state.registers.write32(register, value),
        }
    }

    fn read64(&self, offset: RegisterOffset) -> u64 {
        self.state.borrow().registers.read64(offset)
    }

    fn write64(&mut self, offset: RegisterOffset, value: u64) {
        let mut state = self.state.borrow_mut();
        state.writes.push((offset, value));
        state.registers.write64(offset, value);
    }
}
