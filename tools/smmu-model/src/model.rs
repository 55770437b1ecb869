//! The modelled SMMU: its register file, its output queues, and the handle the driver and the
//! simulated PCIe functions share.
//!
//! This module owns [`SmmuModel`] (which implements [`RegisterAccess`] so that the real driver
//! runs on it unchanged), the register state and the side effects of register writes, the
//! writing of event and PRI queue entries with their overflow rules, GERROR, and the interrupt
//! and MSI signals. The translation of transactions lives in `translate`, commands in
//! `commands`, the functions in `pcie`.
//!
//! Everything happens synchronously: a CMDQ_PROD write consumes commands before it returns, a
//! CR0 write is acknowledged at once, a transaction is translated and its event written before
//! the call that issued it returns. So a test is deterministic, and an interleaving explorer
//! controls every ordering itself.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use smmu::hardware::{RegisterAccess, RegisterOffset};

use crate::caches::{ConfigCache, Tlb, TlbEntry};
use crate::commands::PendingInvalidation;
use crate::config::ModelConfig;
use crate::memory::PhysicalMemory;
use crate::pcie::Endpoint;
use crate::stall::Stalled;
use crate::trace::{Generation, Generations, TraceEvent};

/// Register offsets, as the model knows them (IHI 0070 6.2).
pub(crate) mod reg {
    pub(crate) const IDR0: u32 = 0x00;
    pub(crate) const IDR1: u32 = 0x04;
    pub(crate) const IDR2: u32 = 0x08;
    pub(crate) const IDR3: u32 = 0x0C;
    pub(crate) const IDR4: u32 = 0x10;
    pub(crate) const IDR5: u32 = 0x14;
    pub(crate) const IIDR: u32 = 0x18;
    pub(crate) const AIDR: u32 = 0x1C;
    pub(crate) const CR0: u32 = 0x20;
    pub(crate) const CR0ACK: u32 = 0x24;
    pub(crate) const CR1: u32 = 0x28;
    pub(crate) const CR2: u32 = 0x2C;
    pub(crate) const STATUSR: u32 = 0x40;
    pub(crate) const GBPA: u32 = 0x44;
    pub(crate) const IRQ_CTRL: u32 = 0x50;
    pub(crate) const IRQ_CTRLACK: u32 = 0x54;
    pub(crate) const GERROR: u32 = 0x60;
    pub(crate) const GERRORN: u32 = 0x64;
    pub(crate) const GERROR_IRQ_CFG0: u32 = 0x68;
    pub(crate) const GERROR_IRQ_CFG1: u32 = 0x70;
    pub(crate) const GERROR_IRQ_CFG2: u32 = 0x74;
    pub(crate) const STRTAB_BASE: u32 = 0x80;
    pub(crate) const STRTAB_BASE_CFG: u32 = 0x88;
    pub(crate) const CMDQ_BASE: u32 = 0x90;
    pub(crate) const CMDQ_PROD: u32 = 0x98;
    pub(crate) const CMDQ_CONS: u32 = 0x9C;
    pub(crate) const EVTQ_BASE: u32 = 0xA0;
    pub(crate) const EVTQ_IRQ_CFG0: u32 = 0xB0;
    pub(crate) const EVTQ_IRQ_CFG1: u32 = 0xB8;
    pub(crate) const EVTQ_IRQ_CFG2: u32 = 0xBC;
    pub(crate) const PRIQ_BASE: u32 = 0xC0;
    pub(crate) const PRIQ_IRQ_CFG0: u32 = 0xD0;
    pub(crate) const PRIQ_IRQ_CFG1: u32 = 0xD8;
    pub(crate) const PRIQ_IRQ_CFG2: u32 = 0xDC;
    /// Page 1.
    pub(crate) const EVTQ_PROD: u32 = 0x1_00A8;
    pub(crate) const EVTQ_CONS: u32 = 0x1_00AC;
    pub(crate) const PRIQ_PROD: u32 = 0x1_00C8;
    pub(crate) const PRIQ_CONS: u32 = 0x1_00CC;
}

/// CR0 bits.
pub(crate) mod cr0 {
    pub(crate) const SMMUEN: u32 = 1 << 0;
    pub(crate) const PRIQEN: u32 = 1 << 1;
    pub(crate) const EVENTQEN: u32 = 1 << 2;
    pub(crate) const CMDQEN: u32 = 1 << 3;
    pub(crate) const ATSCHK: u32 = 1 << 4;
}

/// GERROR bits.
pub(crate) mod gerror {
    pub(crate) const CMDQ_ERR: u32 = 1 << 0;
    pub(crate) const EVENTQ_ABT_ERR: u32 = 1 << 2;
    pub(crate) const PRIQ_ABT_ERR: u32 = 1 << 3;
    pub(crate) const MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
    pub(crate) const MSI_EVENTQ_ABT_ERR: u32 = 1 << 5;
    pub(crate) const MSI_PRIQ_ABT_ERR: u32 = 1 << 6;
    pub(crate) const MSI_GERROR_ABT_ERR: u32 = 1 << 7;
    pub(crate) const DEFINED: u32 = 0x1FD;
}

/// CMDQ_CONS.ERR values.
pub(crate) mod cerror {
    pub(crate) const ILL: u32 = 1;
    pub(crate) const ABT: u32 = 2;
}

/// The register file's state.
#[derive(Clone, Debug, Default)]
#[allow(clippy::struct_field_names)]
pub(crate) struct Registers {
    pub(crate) cr0: u32,
    pub(crate) cr1: u32,
    pub(crate) cr2: u32,
    pub(crate) gbpa: u32,
    pub(crate) irq_ctrl: u32,
    pub(crate) gerror: u32,
    pub(crate) gerrorn: u32,
    pub(crate) gerror_irq_cfg0: u64,
    pub(crate) gerror_irq_cfg1: u32,
    pub(crate) gerror_irq_cfg2: u32,
    pub(crate) strtab_base: u64,
    pub(crate) strtab_base_cfg: u32,
    pub(crate) cmdq_base: u64,
    pub(crate) cmdq_prod: u32,
    pub(crate) cmdq_cons: u32,
    pub(crate) evtq_base: u64,
    pub(crate) evtq_prod: u32,
    pub(crate) evtq_cons: u32,
    pub(crate) evtq_irq_cfg0: u64,
    pub(crate) evtq_irq_cfg1: u32,
    pub(crate) evtq_irq_cfg2: u32,
    pub(crate) priq_base: u64,
    pub(crate) priq_prod: u32,
    pub(crate) priq_cons: u32,
    pub(crate) priq_irq_cfg0: u64,
    pub(crate) priq_irq_cfg1: u32,
    pub(crate) priq_irq_cfg2: u32,
}

/// Interrupts and wake-ups the SMMU has signalled, counted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Signals {
    /// Event queue interrupts (wired or MSI).
    pub event_queue: u64,
    /// PRI queue interrupts.
    pub pri_queue: u64,
    /// GERROR interrupts.
    pub global_error: u64,
    /// CMD_SYNC completions with CS=IRQ.
    pub sync_interrupt: u64,
    /// CMD_SYNC completions with CS=SEV (on an SMMU with IDR0.SEV).
    pub sync_sev: u64,
    /// MSI writes made (each also counted above).
    pub msi_writes: u64,
}

/// A circular queue's geometry, from its BASE register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Queue {
    pub(crate) base: u64,
    pub(crate) log2: u32,
    pub(crate) entry_bytes: u64,
}

impl Queue {
    /// The queue a BASE register describes: LOG2SIZE capped at the ID register's maximum,
    /// the base aligned down to the queue's size (at least 32 bytes).
    pub(crate) fn from_base(register: u64, max_log2: u8, entry_bytes: u64) -> Self {
        let log2 = u32::try_from(register & 0x1f)
            .unwrap_or(0)
            .min(u32::from(max_log2));
        let bytes = (entry_bytes << log2).max(32);
        let base = (register & 0x000f_ffff_ffff_ffe0) & !(bytes - 1);
        Self {
            base,
            log2,
            entry_bytes,
        }
    }

    fn index(&self, pointer: u32) -> u32 {
        pointer & ((1 << self.log2) - 1)
    }

    fn wrap(&self, pointer: u32) -> bool {
        (pointer >> self.log2) & 1 == 1
    }

    pub(crate) fn is_empty(&self, prod: u32, cons: u32) -> bool {
        self.index(prod) == self.index(cons) && self.wrap(prod) == self.wrap(cons)
    }

    pub(crate) fn is_full(&self, prod: u32, cons: u32) -> bool {
        self.index(prod) == self.index(cons) && self.wrap(prod) != self.wrap(cons)
    }

    /// The pointer after `pointer` (index and wrap; the overflow bit kept).
    pub(crate) fn next(&self, pointer: u32) -> u32 {
        let combined = pointer & ((2 << self.log2) - 1);
        let next = (combined + 1) & ((2 << self.log2) - 1);
        next | (pointer & (1 << 31))
    }

    /// The address of the entry `pointer` names.
    pub(crate) fn entry(&self, pointer: u32) -> u64 {
        self.base + u64::from(self.index(pointer)) * self.entry_bytes
    }

    /// The queue index of `pointer`.
    pub(crate) fn position(&self, pointer: u32) -> u32 {
        self.index(pointer)
    }
}

/// What became of an entry the SMMU tried to write to an output queue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum QueueWrite {
    /// Written at this queue index.
    Written(u32),
    /// The queue is disabled or has an abort error active.
    Unavailable,
    /// The queue is full (or, for the PRI queue, in overflow): discarded.
    Full,
    /// The write aborted: GERROR.*_ABT_ERR is now active.
    Aborted,
}

/// Everything the model holds.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: ModelConfig,
    pub(crate) memory: PhysicalMemory,
    pub(crate) regs: Registers,
    pub(crate) config_cache: ConfigCache,
    pub(crate) tlb: Tlb,
    /// Invalidations consumed but not yet completed by a CMD_SYNC.
    pub(crate) pending: Vec<PendingInvalidation>,
    /// The simulated PCIe functions, by StreamID.
    pub(crate) endpoints: BTreeMap<u32, Endpoint>,
    /// PRG responses for a function that was busy when they were sent.
    pub(crate) mailbox: Vec<(u32, crate::pcie::PrgResponse)>,
    /// Transactions held stalled.
    pub(crate) stalls: Vec<Stalled>,
    /// Stall event records that could not be written yet (they are never discarded).
    pub(crate) pending_stall_events: Vec<[u64; 4]>,
    pub(crate) next_stag: u16,
    pub(crate) generations: Generations,
    pub(crate) trace: Vec<TraceEvent>,
    pub(crate) signals: Signals,
}

impl State {
    fn new(config: ModelConfig, memory: PhysicalMemory) -> Self {
        let regs = Registers {
            // QEMU's reset value, and a common one: bypass, incoming shareability.
            gbpa: 0x1000,
            ..Registers::default()
        };
        Self {
            config,
            memory,
            regs,
            config_cache: ConfigCache::default(),
            tlb: Tlb::default(),
            pending: Vec::new(),
            endpoints: BTreeMap::new(),
            mailbox: Vec::new(),
            stalls: Vec::new(),
            pending_stall_events: Vec::new(),
            next_stag: 1,
            generations: Generations::default(),
            trace: Vec::new(),
            signals: Signals::default(),
        }
    }

    pub(crate) fn features(&self) -> &crate::config::Features {
        &self.config.features
    }

    /// GERROR bits active now.
    pub(crate) fn active_errors(&self) -> u32 {
        (self.regs.gerror ^ self.regs.gerrorn) & gerror::DEFINED
    }

    /// Activates the errors in `bits` that are not already active, and signals them.
    pub(crate) fn raise_error(&mut self, bits: u32) {
        let new = bits & !self.active_errors() & gerror::DEFINED;
        if new == 0 {
            return;
        }
        self.regs.gerror ^= new;
        if self.regs.irq_ctrl & 1 != 0 {
            self.signals.global_error += 1;
            let (address, data) = (self.regs.gerror_irq_cfg0, self.regs.gerror_irq_cfg1);
            if !self.msi(address, data) {
                // Recursion is bounded: the MSI error bit is then active and not raised again.
                self.raise_error(gerror::MSI_GERROR_ABT_ERR);
            }
        }
    }

    /// Writes an MSI if the SMMU has MSIs and `address` (IRQ_CFG0 / MSIAddress) is non-zero.
    /// False if the write aborted.
    pub(crate) fn msi(&mut self, address: u64, data: u32) -> bool {
        let address = address & 0x000f_ffff_ffff_fffc;
        if !self.features().msi || address == 0 {
            return true;
        }
        self.signals.msi_writes += 1;
        self.memory.write_u32(address, data).is_ok()
    }

    pub(crate) fn smmu_enabled(&self) -> bool {
        self.regs.cr0 & cr0::SMMUEN != 0
    }

    pub(crate) fn event_queue(&self) -> Queue {
        Queue::from_base(self.regs.evtq_base, self.features().evtqs, 32)
    }

    pub(crate) fn pri_queue(&self) -> Queue {
        Queue::from_base(self.regs.priq_base, self.features().priqs, 16)
    }

    pub(crate) fn command_queue(&self) -> Queue {
        Queue::from_base(self.regs.cmdq_base, self.features().cmdqs, 16)
    }

    /// Writes an event record (IHI 0070 7.2.1, 7.4): only while EVENTQEN is set and no
    /// EVENTQ_ABT_ERR is active; into a full queue it is discarded and the overflow condition
    /// entered (PROD.OVFLG toggled) unless already present.
    pub(crate) fn write_event(&mut self, record: [u64; 4]) -> QueueWrite {
        self.write_event_record(record, false)
    }

    /// Writes a stall event record: never discarded, so a full queue is not an overflow (the
    /// caller keeps the record until the queue is writable, IHI 0070 7.4).
    pub(crate) fn write_stall_event(&mut self, record: [u64; 4]) -> QueueWrite {
        self.write_event_record(record, true)
    }

    fn write_event_record(&mut self, record: [u64; 4], stall: bool) -> QueueWrite {
        let written = self.write_event_inner(record, stall);
        self.trace.push(TraceEvent::Event {
            record,
            written: matches!(written, QueueWrite::Written(_)),
        });
        written
    }

    fn write_event_inner(&mut self, record: [u64; 4], stall: bool) -> QueueWrite {
        if self.regs.cr0 & cr0::EVENTQEN == 0 || self.active_errors() & gerror::EVENTQ_ABT_ERR != 0
        {
            return QueueWrite::Unavailable;
        }
        let queue = self.event_queue();
        let (prod, cons) = (self.regs.evtq_prod, self.regs.evtq_cons);
        if queue.is_full(prod, cons) {
            if !stall && (prod >> 31) == (cons >> 31) {
                self.regs.evtq_prod ^= 1 << 31;
            }
            return QueueWrite::Full;
        }
        let at = queue.entry(prod);
        for (i, word) in (0u64..).zip(record) {
            if self.memory.write_u64(at + i * 8, word).is_err() {
                // A synchronous abort: PROD does not cover the entry.
                self.raise_error(gerror::EVENTQ_ABT_ERR);
                return QueueWrite::Aborted;
            }
        }
        let index = queue.position(prod);
        self.regs.evtq_prod = queue.next(prod);
        if self.regs.irq_ctrl & (1 << 2) != 0 {
            self.signals.event_queue += 1;
            let (address, data) = (self.regs.evtq_irq_cfg0, self.regs.evtq_irq_cfg1);
            if !self.msi(address, data) {
                self.raise_error(gerror::MSI_EVENTQ_ABT_ERR);
            }
        }
        QueueWrite::Written(index)
    }

    /// Writes a PRI queue entry (IHI 0070 chapter 8): only while PRIQEN (and SMMUEN) is set
    /// and no PRIQ_ABT_ERR is active; an active overflow condition inhibits writes, and a full
    /// queue enters it.
    pub(crate) fn write_page_request(&mut self, entry: [u64; 2]) -> QueueWrite {
        let enabled = self.regs.cr0 & cr0::PRIQEN != 0 && self.smmu_enabled();
        if !self.features().pri || !enabled || self.active_errors() & gerror::PRIQ_ABT_ERR != 0 {
            return QueueWrite::Unavailable;
        }
        let queue = self.pri_queue();
        let (prod, cons) = (self.regs.priq_prod, self.regs.priq_cons);
        let overflow_active = (prod >> 31) != (cons >> 31);
        if overflow_active {
            return QueueWrite::Full;
        }
        if queue.is_full(prod, cons) {
            self.regs.priq_prod ^= 1 << 31;
            return QueueWrite::Full;
        }
        let at = queue.entry(prod);
        for (i, word) in (0u64..).zip(entry) {
            if self.memory.write_u64(at + i * 8, word).is_err() {
                self.raise_error(gerror::PRIQ_ABT_ERR);
                return QueueWrite::Aborted;
            }
        }
        let index = queue.position(prod);
        self.regs.priq_prod = queue.next(prod);
        if self.regs.irq_ctrl & (1 << 1) != 0 {
            self.signals.pri_queue += 1;
            let (address, data) = (self.regs.priq_irq_cfg0, self.regs.priq_irq_cfg1);
            if !self.msi(address, data) {
                self.raise_error(gerror::MSI_PRIQ_ABT_ERR);
            }
        }
        QueueWrite::Written(index)
    }

    fn read32(&self, offset: u32) -> u32 {
        let f = self.features();
        let low = |v: u64| (v & 0xffff_ffff) as u32;
        let high = |v: u64| (v >> 32) as u32;
        match offset {
            reg::IDR0 => f.idr0(),
            reg::IDR1 => f.idr1(),
            reg::IDR3 => f.idr3(),
            reg::IDR5 => f.idr5(),
            reg::IIDR => self.config.iidr,
            reg::AIDR => self.config.aidr,
            reg::CR0 | reg::CR0ACK => self.regs.cr0,
            reg::CR1 => self.regs.cr1,
            reg::CR2 => self.regs.cr2,
            reg::GBPA => self.regs.gbpa,
            reg::IRQ_CTRL | reg::IRQ_CTRLACK => self.regs.irq_ctrl,
            reg::GERROR => self.regs.gerror,
            reg::GERRORN => self.regs.gerrorn,
            reg::GERROR_IRQ_CFG0 => low(self.regs.gerror_irq_cfg0),
            o if o == reg::GERROR_IRQ_CFG0 + 4 => high(self.regs.gerror_irq_cfg0),
            reg::GERROR_IRQ_CFG1 => self.regs.gerror_irq_cfg1,
            reg::GERROR_IRQ_CFG2 => self.regs.gerror_irq_cfg2,
            reg::STRTAB_BASE => low(self.regs.strtab_base),
            o if o == reg::STRTAB_BASE + 4 => high(self.regs.strtab_base),
            reg::STRTAB_BASE_CFG => self.regs.strtab_base_cfg,
            reg::CMDQ_BASE => low(self.regs.cmdq_base),
            o if o == reg::CMDQ_BASE + 4 => high(self.regs.cmdq_base),
            reg::CMDQ_PROD => self.regs.cmdq_prod,
            reg::CMDQ_CONS => self.regs.cmdq_cons,
            reg::EVTQ_BASE => low(self.regs.evtq_base),
            o if o == reg::EVTQ_BASE + 4 => high(self.regs.evtq_base),
            reg::EVTQ_IRQ_CFG0 => low(self.regs.evtq_irq_cfg0),
            o if o == reg::EVTQ_IRQ_CFG0 + 4 => high(self.regs.evtq_irq_cfg0),
            reg::EVTQ_IRQ_CFG1 => self.regs.evtq_irq_cfg1,
            reg::EVTQ_IRQ_CFG2 => self.regs.evtq_irq_cfg2,
            reg::PRIQ_BASE => low(self.regs.priq_base),
            o if o == reg::PRIQ_BASE + 4 => high(self.regs.priq_base),
            reg::PRIQ_IRQ_CFG0 => low(self.regs.priq_irq_cfg0),
            o if o == reg::PRIQ_IRQ_CFG0 + 4 => high(self.regs.priq_irq_cfg0),
            reg::PRIQ_IRQ_CFG1 => self.regs.priq_irq_cfg1,
            reg::PRIQ_IRQ_CFG2 => self.regs.priq_irq_cfg2,
            reg::EVTQ_PROD => self.regs.evtq_prod,
            reg::EVTQ_CONS => self.regs.evtq_cons,
            reg::PRIQ_PROD => self.regs.priq_prod,
            reg::PRIQ_CONS => self.regs.priq_cons,
            // IDR2 (no VATOS), IDR4 (IMPLEMENTATION DEFINED), STATUSR (no DORMANT), and every
            // reserved offset: zero.
            reg::IDR2 | reg::IDR4 | reg::STATUSR => 0,
            _ => 0,
        }
    }

    /// A 32-bit register write and its side effects.
    // One arm per register, each reading as the register's description does.
    #[allow(clippy::collapsible_match)]
    fn write32(&mut self, offset: u32, value: u32) {
        let f = *self.features();
        let set_low = |r: &mut u64, v: u32| *r = (*r & !0xffff_ffff) | u64::from(v);
        let set_high = |r: &mut u64, v: u32| *r = (*r & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            reg::CR0 => {
                let mut mask = cr0::SMMUEN | cr0::EVENTQEN | cr0::CMDQEN;
                if f.pri {
                    mask |= cr0::PRIQEN;
                }
                if f.ats {
                    mask |= cr0::ATSCHK;
                }
                let before = self.regs.cr0;
                self.regs.cr0 = value & mask;
                let enabled = self.regs.cr0 & !before;
                if enabled & cr0::EVENTQEN != 0 {
                    self.flush_stall_events();
                }
                if before & cr0::SMMUEN != 0 && self.regs.cr0 & cr0::SMMUEN == 0 {
                    // SMMUEN 1 -> 0 terminates stalled transactions (6.3.9.6).
                    self.terminate_all_stalls();
                }
                if enabled & cr0::CMDQEN != 0 {
                    self.process_commands();
                }
            }
            reg::CR1 => self.regs.cr1 = value & 0xfff,
            reg::CR2 => {
                let mut mask = 0b0110;
                if f.hyp {
                    mask |= 1;
                }
                if f.ats {
                    mask |= 0b1000;
                }
                self.regs.cr2 = value & mask;
            }
            reg::GBPA => {
                // Only a write with Update set takes effect; it completes at once.
                if value & (1 << 31) != 0 {
                    self.regs.gbpa = value & 0x001f_3f1f;
                }
            }
            reg::IRQ_CTRL => {
                let mask = if f.pri { 0b111 } else { 0b101 };
                self.regs.irq_ctrl = value & mask;
            }
            reg::GERRORN => {
                let before = self.active_errors();
                self.regs.gerrorn = value & gerror::DEFINED;
                let cleared = before & !self.active_errors();
                if cleared & gerror::CMDQ_ERR != 0 {
                    self.process_commands();
                }
                if cleared & gerror::EVENTQ_ABT_ERR != 0 {
                    self.flush_stall_events();
                }
            }
            reg::GERROR_IRQ_CFG0 => set_low(&mut self.regs.gerror_irq_cfg0, value & !3),
            o if o == reg::GERROR_IRQ_CFG0 + 4 => {
                set_high(&mut self.regs.gerror_irq_cfg0, value & 0xf_ffff);
            }
            reg::GERROR_IRQ_CFG1 => self.regs.gerror_irq_cfg1 = value,
            reg::GERROR_IRQ_CFG2 => self.regs.gerror_irq_cfg2 = value & 0x3f,
            // The base registers are guarded by their enable: written while it is set, the
            // write is IGNORED (SMMUv3.2, 6.3.24 to 6.3.33).
            reg::STRTAB_BASE if !self.smmu_enabled() => {
                set_low(&mut self.regs.strtab_base, value & !0x3f);
            }
            o if o == reg::STRTAB_BASE + 4 && !self.smmu_enabled() => {
                set_high(&mut self.regs.strtab_base, value & 0x400f_ffff);
            }
            reg::STRTAB_BASE_CFG if !self.smmu_enabled() => {
                self.regs.strtab_base_cfg = value & 0x3_07ff;
            }
            reg::CMDQ_BASE if self.regs.cr0 & cr0::CMDQEN == 0 => {
                set_low(&mut self.regs.cmdq_base, value);
            }
            o if o == reg::CMDQ_BASE + 4 && self.regs.cr0 & cr0::CMDQEN == 0 => {
                set_high(&mut self.regs.cmdq_base, value & 0x400f_ffff);
            }
            reg::CMDQ_PROD => {
                self.regs.cmdq_prod = value & 0x000f_ffff;
                self.process_commands();
            }
            reg::CMDQ_CONS => {
                // The SMMU owns CONS while the queue is enabled.
                if self.regs.cr0 & cr0::CMDQEN == 0 {
                    self.regs.cmdq_cons = value & 0x7f0f_ffff;
                }
            }
            reg::EVTQ_BASE if self.regs.cr0 & cr0::EVENTQEN == 0 => {
                set_low(&mut self.regs.evtq_base, value);
            }
            o if o == reg::EVTQ_BASE + 4 && self.regs.cr0 & cr0::EVENTQEN == 0 => {
                set_high(&mut self.regs.evtq_base, value & 0x400f_ffff);
            }
            reg::EVTQ_IRQ_CFG0 => set_low(&mut self.regs.evtq_irq_cfg0, value & !3),
            o if o == reg::EVTQ_IRQ_CFG0 + 4 => {
                set_high(&mut self.regs.evtq_irq_cfg0, value & 0xf_ffff);
            }
            reg::EVTQ_IRQ_CFG1 => self.regs.evtq_irq_cfg1 = value,
            reg::EVTQ_IRQ_CFG2 => self.regs.evtq_irq_cfg2 = value & 0x3f,
            reg::PRIQ_BASE if self.regs.cr0 & cr0::PRIQEN == 0 => {
                set_low(&mut self.regs.priq_base, value);
            }
            o if o == reg::PRIQ_BASE + 4 && self.regs.cr0 & cr0::PRIQEN == 0 => {
                set_high(&mut self.regs.priq_base, value & 0x400f_ffff);
            }
            reg::PRIQ_IRQ_CFG0 => set_low(&mut self.regs.priq_irq_cfg0, value & !3),
            o if o == reg::PRIQ_IRQ_CFG0 + 4 => {
                set_high(&mut self.regs.priq_irq_cfg0, value & 0xf_ffff);
            }
            reg::PRIQ_IRQ_CFG1 => self.regs.priq_irq_cfg1 = value,
            reg::PRIQ_IRQ_CFG2 => self.regs.priq_irq_cfg2 = value & 0x3f,
            reg::EVTQ_PROD => {
                // The SMMU owns PROD while the queue is enabled.
                if self.regs.cr0 & cr0::EVENTQEN == 0 {
                    self.regs.evtq_prod = value & 0x800f_ffff;
                }
            }
            reg::EVTQ_CONS => {
                self.regs.evtq_cons = value & 0x800f_ffff;
                self.flush_stall_events();
            }
            reg::PRIQ_PROD => {
                if self.regs.cr0 & cr0::PRIQEN == 0 {
                    self.regs.priq_prod = value & 0x800f_ffff;
                }
            }
            reg::PRIQ_CONS => self.regs.priq_cons = value & 0x800f_ffff,
            // ID registers, CR0ACK, IRQ_CTRLACK, GERROR, STATUSR: read-only. Reserved
            // offsets (including page 0's aliases of the page-1 queue pointers): ignored.
            _ => {}
        }
    }
}

/// The modelled SMMU. Clones share the device: the driver owns one (as its
/// [`RegisterAccess`]), tests and the simulated functions keep others.
#[derive(Clone, Debug)]
pub struct SmmuModel {
    pub(crate) state: Rc<RefCell<State>>,
}

impl SmmuModel {
    /// An SMMU configured by `config`, reset (everything disabled, GBPA bypass), reaching
    /// memory through `memory`.
    #[must_use]
    pub fn new(config: ModelConfig, memory: &PhysicalMemory) -> Self {
        Self {
            state: Rc::new(RefCell::new(State::new(config, memory.clone()))),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> ModelConfig {
        self.state.borrow().config
    }

    /// The memory the SMMU reaches.
    #[must_use]
    pub fn memory(&self) -> PhysicalMemory {
        self.state.borrow().memory.clone()
    }

    /// The interrupts and wake-ups signalled so far.
    #[must_use]
    pub fn signals(&self) -> Signals {
        self.state.borrow().signals
    }

    /// Takes the trace recorded since the last call.
    pub fn take_trace(&self) -> Vec<TraceEvent> {
        std::mem::take(&mut self.state.borrow_mut().trace)
    }

    /// The TLB's entries now.
    #[must_use]
    pub fn tlb_entries(&self) -> Vec<TlbEntry> {
        self.state.borrow().tlb.entries().to_vec()
    }

    /// How many STEs and CDs the configuration cache holds.
    #[must_use]
    pub fn cached_structures(&self) -> (usize, usize) {
        self.state.borrow().config_cache.counts()
    }

    /// How many invalidations have been consumed but not completed by a CMD_SYNC.
    #[must_use]
    pub fn pending_invalidations(&self) -> usize {
        self.state.borrow().pending.len()
    }

    /// The address-space generation memory holds now for `sid`'s substream `ssid` (`None`:
    /// non-substream traffic), read without touching the caches. `None` where no address space
    /// is reachable (invalid STE, no stage 1 and no stage 2...).
    #[must_use]
    pub fn live_generation(&self, sid: u32, ssid: Option<u32>) -> Option<Generation> {
        self.state.borrow_mut().live_generation(sid, ssid)
    }

    /// Reads a register without side effects (reads have none in this model anyway).
    #[must_use]
    pub fn peek32(&self, offset: u32) -> u32 {
        self.state.borrow().read32(offset)
    }
}

impl RegisterAccess for SmmuModel {
    fn read32(&self, offset: RegisterOffset) -> u32 {
        self.state.borrow().read32(offset.get())
    }

    fn write32(&mut self, offset: RegisterOffset, value: u32) {
        self.state.borrow_mut().write32(offset.get(), value);
    }

    fn read64(&self, offset: RegisterOffset) -> u64 {
        let state = self.state.borrow();
        let low = u64::from(state.read32(offset.get()));
        let high = u64::from(state.read32(offset.get().wrapping_add(4)));
        high << 32 | low
    }

    fn write64(&mut self, offset: RegisterOffset, value: u64) {
        // One 64-bit access: both halves land before any side effect of the low half's
        // register is acted on (none of the 64-bit registers has one).
        let mut state = self.state.borrow_mut();
        let low = (value & 0xffff_ffff) as u32;
        let high = (value >> 32) as u32;
        state.write32(offset.get(), low);
        state.write32(offset.get().wrapping_add(4), high);
    }
}
