//! The command queue: consumption, the model's own decoding of every command (IHI 0070
//! chapter 4), CERROR_ILL and CERROR_ABT, and what each command does.
//!
//! This module owns the ILLEGAL rules (4.1.3, and per command), the reserved-field policy
//! (4.1.5: [`ReservedFieldPolicy`]), and the completion of invalidations: consumed
//! CFGI_*/TLBI_*/ATC_INV commands are pending until a CMD_SYNC completes them (or at once, with
//! [`InvalidationTiming::AtConsumption`]).
//!
//! Out-of-range StreamID or SubstreamID parameters (4.1.7) are CONSTRAINED UNPREDICTABLE; the
//! model's choice is that they have no effect.

// Field extraction: every narrowing `as` here is of a value `bits` has already masked to the
// field's width, which fits the target type.
#![allow(clippy::cast_possible_truncation)]

use crate::caches::{AddressScope, TlbInvalidation};
use crate::config::{InvalidationTiming, ReservedFieldPolicy, StallSupport};
use crate::model::{State, cerror, cr0, gerror};
use crate::structures::{bit, bits, field_in_place};
use crate::trace::{ResponseCode, ResponseSource, TraceEvent};
use crate::translate::{Lookup, Transaction};
use crate::walk::Access;

/// An invalidation consumed and awaiting completion.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PendingInvalidation {
    /// CMD_CFGI_STE.
    Ste { sid: u32, leaf: bool },
    /// CMD_CFGI_STE_RANGE / CMD_CFGI_ALL.
    SteRange { sid: u32, range: u32 },
    /// CMD_CFGI_CD.
    Cd { sid: u32, ssid: u32, leaf: bool },
    /// CMD_CFGI_CD_ALL.
    CdAll { sid: u32 },
    /// A TLB invalidation.
    Tlb(TlbInvalidation),
    /// CMD_ATC_INV, sent to the function.
    Atc {
        sid: u32,
        ssid: Option<u32>,
        start: u64,
        end: u64,
    },
}

/// Why a command is not executed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CommandFailure {
    /// CERROR_ILL.
    Illegal,
}

/// Field masks (bits of words 0 and 1 outside the opcode).
mod field {
    pub(super) const SSEC: u64 = 1 << 10;
    pub(super) const SSV: u64 = 1 << 11;
    pub(super) const SSID: u64 = 0xf_ffff << 12;
    pub(super) const SID: u64 = 0xffff_ffff << 32;
    pub(super) const VMID: u64 = 0xffff << 32;
    pub(super) const ASID: u64 = 0xffff << 48;
    pub(super) const NUM: u64 = 0x1f << 12;
    pub(super) const SCALE: u64 = 0x1f << 20;
    pub(super) const LEAF: u64 = 1;
    pub(super) const TTL: u64 = 3 << 8;
    pub(super) const TG: u64 = 3 << 10;
    pub(super) const VA: u64 = !0xfff;
    pub(super) const IPA: u64 = 0x000f_ffff_ffff_f000;
}

impl State {
    /// Consumes commands while the queue is enabled, not empty and without an active error.
    pub(crate) fn process_commands(&mut self) {
        let queue = self.command_queue();
        // Each round consumes one entry; PROD cannot move while this runs.
        for _ in 0..=(1u64 << queue.log2) {
            if self.regs.cr0 & cr0::CMDQEN == 0 || self.active_errors() & gerror::CMDQ_ERR != 0 {
                return;
            }
            let (prod, cons) = (self.regs.cmdq_prod, self.regs.cmdq_cons);
            if queue.is_empty(prod, cons) {
                return;
            }
            let at = queue.entry(cons);
            let words = self
                .memory
                .read_u64(at)
                .and_then(|w0| Ok([w0, self.memory.read_u64(at + 8)?]));
            let index = queue.position(cons);
            let Ok(words) = words else {
                self.stop_commands(cerror::ABT);
                return;
            };
            let opcode = (words[0] & 0xff) as u8;
            match self.execute(words) {
                Ok(()) => {
                    self.trace.push(TraceEvent::Command {
                        opcode,
                        index,
                        illegal: false,
                    });
                    let err = self.regs.cmdq_cons & (0x7f << 24);
                    self.regs.cmdq_cons = queue.next(cons) | err;
                }
                Err(CommandFailure::Illegal) => {
                    self.trace.push(TraceEvent::Command {
                        opcode,
                        index,
                        illegal: true,
                    });
                    self.stop_commands(cerror::ILL);
                    return;
                }
            }
        }
    }

    /// Stops consumption at CONS with `error` in CMDQ_CONS.ERR, then activates CMDQ_ERR (the
    /// code is visible before the error, IHI 0070 7.1).
    fn stop_commands(&mut self, error: u32) {
        self.regs.cmdq_cons = (self.regs.cmdq_cons & !(0x7f << 24)) | error << 24;
        self.raise_error(gerror::CMDQ_ERR);
    }

    /// Queues or applies an invalidation, as the configured timing says.
    fn invalidate(&mut self, invalidation: PendingInvalidation) {
        match self.config.invalidation {
            InvalidationTiming::AtSync => self.pending.push(invalidation),
            InvalidationTiming::AtConsumption => self.apply(invalidation),
        }
    }

    fn apply(&mut self, invalidation: PendingInvalidation) {
        let cfg = self.regs.strtab_base_cfg;
        let split = ((cfg >> 16) & 3 == 1).then_some((cfg >> 6) & 0x1f);
        match invalidation {
            PendingInvalidation::Ste { sid, leaf } => {
                let l1 = split.map(|s| u64::from(sid >> s));
                self.config_cache.invalidate_ste(sid, leaf, l1);
            }
            PendingInvalidation::SteRange { sid, range } => {
                self.config_cache.invalidate_ste_range(sid, range, split);
            }
            PendingInvalidation::Cd { sid, ssid, leaf } => {
                self.config_cache.invalidate_cd(sid, ssid, leaf);
            }
            PendingInvalidation::CdAll { sid } => self.config_cache.invalidate_cd_all(sid),
            PendingInvalidation::Tlb(tlbi) => {
                self.tlb.invalidate(&tlbi);
            }
            PendingInvalidation::Atc {
                sid,
                ssid,
                start,
                end,
            } => {
                let removed = self
                    .endpoints
                    .get_mut(&sid)
                    .map_or(0, |e| e.invalidate_atc(ssid, start, end));
                self.trace.push(TraceEvent::AtcInvalidation {
                    sid,
                    ssid,
                    start,
                    end,
                    removed,
                });
            }
        }
    }

    /// Whether the reserved bits of `words` outside `allowed` make the command malformed.
    fn malformed(&self, words: [u64; 2], allowed: [u64; 2]) -> bool {
        let [w0, w1] = words;
        let reserved = (w0 & !(allowed[0] | 0xff)) | (w1 & !allowed[1]);
        // SSec = 1 is ILLEGAL on the Non-secure queue whatever the policy (4.1.6).
        if allowed[0] & field::SSEC != 0 && w0 & field::SSEC != 0 {
            return true;
        }
        self.config.reserved_fields == ReservedFieldPolicy::Reject && reserved != 0
    }

    /// The address scope of a TLBI by address (4.4.1.1). `Err` for the reserved combination
    /// TG != 0 with NUM = SCALE = TTL = 0.
    fn tlbi_scope(&self, words: [u64; 2], address: u64) -> Result<AddressScope, CommandFailure> {
        let [w0, w1] = words;
        let single = AddressScope {
            start: address,
            end: address.saturating_add(1),
            granule_shift: None,
            level: None,
        };
        if !self.features().ril {
            return Ok(single);
        }
        let tg = bits(w1, 11, 10);
        let granule_shift = match tg {
            0 => return Ok(single),
            1 => 12,
            2 => 14,
            _ => 16,
        };
        let (num, scale) = (bits(w0, 16, 12), bits(w0, 24, 20));
        let mut ttl = bits(w1, 9, 8) as u32;
        if tg == 2 && ttl == 1 {
            // 16 KiB level 1 needs 52-bit addresses: treated as 0.
            ttl = 0;
        }
        if num == 0 && scale == 0 && ttl == 0 {
            return Err(CommandFailure::Illegal);
        }
        let span = (num + 1)
            .checked_shl(u32::try_from(scale).unwrap_or(63))
            .and_then(|n| n.checked_shl(granule_shift))
            .unwrap_or(u64::MAX);
        Ok(AddressScope {
            start: address,
            end: address.saturating_add(span),
            granule_shift: Some(granule_shift),
            level: (ttl != 0).then_some(ttl),
        })
    }

    /// Decodes and executes one command.
    fn execute(&mut self, words: [u64; 2]) -> Result<(), CommandFailure> {
        use CommandFailure::Illegal;
        let f = *self.features();
        let [w0, w1] = words;
        let opcode = w0 & 0xff;
        let sid = bits(w0, 63, 32) as u32;
        let ssid = bits(w0, 31, 12) as u32;
        let ssv = bit(w0, 11);
        let vmid = bits(w0, 47, 32) as u16;
        let asid = bits(w0, 63, 48) as u16;
        let range_fields = if f.ril { field::NUM | field::SCALE } else { 0 };
        let range_fields1 = if f.ril { field::TTL | field::TG } else { 0 };
        let va = field_in_place(w1, 63, 12);
        let check = |allowed: [u64; 2]| {
            if self.malformed(words, allowed) {
                Err(Illegal)
            } else {
                Ok(())
            }
        };
        let sid_in_range = u64::from(sid) >> f.sidsize == 0;
        match opcode {
            // CMD_PREFETCH_CONFIG, CMD_PREFETCH_ADDR: fill the caches as a transaction would,
            // recording nothing (7.2: prefetched errors are not reported).
            0x01 | 0x02 => {
                let allowed1 = if opcode == 0x02 { field::VA | 0x3ff } else { 0 };
                check([
                    field::SSEC | field::SSV | field::SSID | field::SID,
                    allowed1,
                ])?;
                if self.smmu_enabled() && sid_in_range {
                    let ssid = ssv.then_some(ssid);
                    if opcode == 0x01 {
                        let _ = self.resolve(sid, ssid, Lookup::Cached);
                    } else {
                        let tx = Transaction {
                            sid,
                            ssid,
                            address: va,
                            access: Access::READ,
                        };
                        let _ = self.resolve_and_translate(&tx, Lookup::Cached);
                    }
                }
            }
            // CMD_CFGI_STE.
            0x03 => {
                check([field::SSEC | field::SID, field::LEAF])?;
                self.invalidate(PendingInvalidation::Ste {
                    sid,
                    leaf: bit(w1, 0),
                });
            }
            // CMD_CFGI_STE_RANGE (CMD_CFGI_ALL with Range 31).
            0x04 => {
                check([field::SSEC | field::SID, 0x1f])?;
                self.invalidate(PendingInvalidation::SteRange {
                    sid,
                    range: bits(w1, 4, 0) as u32,
                });
            }
            // CMD_CFGI_CD, CMD_CFGI_CD_ALL: ILLEGAL without stage 1.
            0x05 => {
                if !f.s1p {
                    return Err(Illegal);
                }
                check([field::SSEC | field::SSID | field::SID, field::LEAF])?;
                self.invalidate(PendingInvalidation::Cd {
                    sid,
                    ssid,
                    leaf: bit(w1, 0),
                });
            }
            0x06 => {
                if !f.s1p {
                    return Err(Illegal);
                }
                check([field::SSEC | field::SID, 0])?;
                self.invalidate(PendingInvalidation::CdAll { sid });
            }
            // CMD_TLBI_NH_*: ILLEGAL without stage 1.
            0x10..=0x13 => {
                if !f.s1p {
                    return Err(Illegal);
                }
                let tlbi = match opcode {
                    0x10 => {
                        check([field::VMID, 0])?;
                        TlbInvalidation::NhAll { vmid }
                    }
                    0x11 => {
                        check([field::VMID | field::ASID, 0])?;
                        TlbInvalidation::NhAsid { vmid, asid }
                    }
                    0x12 => {
                        check([
                            range_fields | field::VMID | field::ASID,
                            range_fields1 | field::LEAF | field::VA,
                        ])?;
                        let scope = self.tlbi_scope(words, va)?;
                        TlbInvalidation::NhVa { vmid, asid, scope }
                    }
                    _ => {
                        check([
                            range_fields | field::VMID,
                            range_fields1 | field::LEAF | field::VA,
                        ])?;
                        let scope = self.tlbi_scope(words, va)?;
                        TlbInvalidation::NhVaa { vmid, scope }
                    }
                };
                self.invalidate(PendingInvalidation::Tlb(tlbi));
            }
            // CMD_TLBI_EL2_*: ILLEGAL without IDR0.HYP.
            0x20..=0x23 => {
                if !f.hyp {
                    return Err(Illegal);
                }
                let tlbi = match opcode {
                    0x20 => {
                        check([0, 0])?;
                        TlbInvalidation::El2All
                    }
                    0x21 => {
                        check([field::ASID, 0])?;
                        TlbInvalidation::El2Asid { asid }
                    }
                    0x22 => {
                        check([
                            range_fields | field::ASID,
                            range_fields1 | field::LEAF | field::VA,
                        ])?;
                        let scope = self.tlbi_scope(words, va)?;
                        TlbInvalidation::El2Va { asid, scope }
                    }
                    _ => {
                        check([range_fields, range_fields1 | field::LEAF | field::VA])?;
                        let scope = self.tlbi_scope(words, va)?;
                        TlbInvalidation::El2Vaa { scope }
                    }
                };
                self.invalidate(PendingInvalidation::Tlb(tlbi));
            }
            // CMD_TLBI_S12_VMALL, CMD_TLBI_S2_IPA: ILLEGAL without stage 2.
            0x28 => {
                if !f.s2p {
                    return Err(Illegal);
                }
                check([field::VMID, 0])?;
                self.invalidate(PendingInvalidation::Tlb(TlbInvalidation::S12Vmall { vmid }));
            }
            0x2A => {
                if !f.s2p {
                    return Err(Illegal);
                }
                check([
                    range_fields | field::VMID,
                    range_fields1 | field::LEAF | field::IPA,
                ])?;
                let ipa = w1 & field::IPA;
                let scope = self.tlbi_scope(words, ipa)?;
                self.invalidate(PendingInvalidation::Tlb(TlbInvalidation::S2Ipa {
                    vmid,
                    scope,
                }));
            }
            // CMD_TLBI_NSNH_ALL.
            0x30 => {
                check([0, 0])?;
                self.invalidate(PendingInvalidation::Tlb(TlbInvalidation::NsnhAll));
            }
            // CMD_ATC_INV (4.5.1): ILLEGAL without ATS; Size above 52 is ILLEGAL here (the
            // architecture permits either that or an UNKNOWN span).
            0x40 => {
                if !f.ats {
                    return Err(Illegal);
                }
                check([
                    (1 << 9) | field::SSV | field::SSID | field::SID,
                    0x3f | field::VA,
                ])?;
                let size = bits(w1, 5, 0) as u32;
                if size > 52 {
                    return Err(Illegal);
                }
                if self.smmu_enabled() && sid_in_range {
                    let (start, end) = if size >= 52 {
                        (0, u64::MAX)
                    } else {
                        let span = 4096u64 << size;
                        let start = va & !(span - 1);
                        (start, start.saturating_add(span))
                    };
                    // Without PASID support the SubstreamID is ignored (SSV behaves as 0).
                    let ssid = (ssv && f.ssidsize != 0).then_some(ssid);
                    self.invalidate(PendingInvalidation::Atc {
                        sid,
                        ssid,
                        start,
                        end,
                    });
                }
            }
            // CMD_PRI_RESP (4.5.2): ILLEGAL without PRI or with Resp = 0b11.
            0x41 => {
                if !f.pri {
                    return Err(Illegal);
                }
                check([field::SSV | field::SSID | field::SID, 0x1ff | (3 << 12)])?;
                let code = match bits(w1, 13, 12) {
                    0 => ResponseCode::ResponseFailure,
                    1 => ResponseCode::InvalidRequest,
                    2 => ResponseCode::Success,
                    _ => return Err(Illegal),
                };
                if self.smmu_enabled() && sid_in_range {
                    let ssid = (ssv && f.ssidsize != 0).then_some(ssid);
                    let prg_index = bits(w1, 8, 0) as u16;
                    self.deliver_prg_response(sid, ssid, prg_index, code, ResponseSource::Command);
                }
            }
            // CMD_RESUME, CMD_STALL_TERM: ILLEGAL on an SMMU without the stall model.
            0x44 => {
                if f.stall_model == StallSupport::TerminateOnly {
                    return Err(Illegal);
                }
                check([field::SSEC | (3 << 12) | field::SID, 0xffff])?;
                let retry = bit(w0, 12);
                let abort = bit(w0, 13);
                self.resume(sid, bits(w1, 15, 0) as u16, retry, abort);
            }
            0x45 => {
                if f.stall_model == StallSupport::TerminateOnly {
                    return Err(Illegal);
                }
                check([field::SSEC | field::SID, 0])?;
                self.stall_term(sid);
            }
            // CMD_SYNC (4.7.3).
            0x46 => {
                check([
                    (3 << 12) | (3 << 22) | (0xf << 24) | (0xffff_ffff << 32),
                    0x000f_ffff_ffff_fffc,
                ])?;
                let cs = bits(w0, 13, 12);
                if cs == 3 {
                    return Err(Illegal);
                }
                self.complete_sync();
                match cs {
                    1 => {
                        self.signals.sync_interrupt += 1;
                        let data = bits(w0, 63, 32) as u32;
                        if !self.msi(w1, data) {
                            self.raise_error(gerror::MSI_CMDQ_ABT_ERR);
                        }
                    }
                    2 if f.sev => self.signals.sync_sev += 1,
                    _ => {}
                }
            }
            // Reserved, Secure-only (TLBI_EL3_*, TLBI_S_*, TLBI_SNH_ALL), and commands of
            // features not implemented (CFGI_VMS_PIDM, DPTI_*): CERROR_ILL.
            _ => return Err(Illegal),
        }
        Ok(())
    }

    /// CMD_SYNC's completion: every pending invalidation takes effect.
    fn complete_sync(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let invalidations = pending.len();
        for invalidation in pending {
            self.apply(invalidation);
        }
        self.trace.push(TraceEvent::SyncCompleted { invalidations });
    }
}
