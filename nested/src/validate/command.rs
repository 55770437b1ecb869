//! Guest commands: the allowlist, and what each becomes.
//!
//! Every opcode is handled explicitly. A command that does not decode (unknown opcode, a
//! reserved bit set, a reserved enumerated value) is CERROR_ILL, as the architecture lets an
//! SMMU choose (4.1.5: reserved fields "detected as non-zero" make the command malformed), and
//! so is every command this vSMMU does not implement (stage 2, EL2, EL3, PRI, stall; ATS when
//! not forwarded). Of the rest:
//!
//! | guest command | becomes |
//! |---|---|
//! | CFGI_STE, CFGI_STE_RANGE, CFGI_ALL | re-read and re-shadow the owned STEs in range (and their CDs) |
//! | CFGI_CD, CFGI_CD_ALL | re-read and re-shadow the CD(s) |
//! | TLBI_NH_ALL, _ASID, _VA, _VAA | the same, VMID replaced by the VM's |
//! | TLBI_NSNH_ALL | TLBI_NH_ALL for the VM's VMID |
//! | ATC_INV (ATS forwarded) | the same, virtual stream ID replaced by the physical one |
//! | PRI_RESP (PRI advertised) | forwarded with the physical stream ID if it names a group outstanding for the guest ([`crate::pri::response`]) |
//! | CMD_SYNC | at most one physical CMD_SYNC, then the guest's completion signal |
//! | PREFETCH_* | nothing (hints; a real SMMU may ignore them) |
//!
//! Stream IDs and substream IDs a command names but the VM does not own, or that are beyond
//! the advertised sizes, make the command have no effect: the architecture's choice for an
//! out-of-range parameter (4.1.7), and for an in-range stream with no device there is nothing
//! cached to invalidate. Nothing the guest names reaches another VM's stream: ownership is
//! looked up in this VM's own table, and the VMID is the VM's.

use smmu::command::{
    Cmd, Command, CommandDecodeError, Opcode, PriResponse, SyncCompletion, TlbiGranule, TlbiScope,
};
use smmu::{Ipa, StreamId, SubstreamId, VirtualStreamId, Vmid};

use crate::interfaces::physical::PhysicalCommand;
use crate::registers::id::VirtualFeatures;

/// A command as copied from the guest's command queue: an allegation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestCommand(pub Command);

/// How a guest's CMD_SYNC wants to be told of its completion.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestSync {
    /// CS.
    pub completion: SyncCompletion,
    /// MSIAddress (an IPA of the guest's; 0 for none).
    pub msi_address: Ipa,
    /// MSIData.
    pub msi_data: u32,
}

/// What a valid guest command does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CommandAction {
    /// Submit this to the physical SMMU.
    Forward(PhysicalCommand),
    /// Re-shadow the STEs (and their CDs) of the owned virtual streams in
    /// `[first, first + 2^count_log2)`.
    InvalidateStes {
        /// The first stream ID of the range.
        first: VirtualStreamId,
        /// log2 of the number of stream IDs (32 for all).
        count_log2: u8,
    },
    /// Re-shadow one CD of a stream.
    InvalidateCd {
        /// The stream.
        vsid: VirtualStreamId,
        /// The substream.
        ssid: SubstreamId,
    },
    /// Re-shadow every CD of a stream.
    InvalidateAllCds {
        /// The stream.
        vsid: VirtualStreamId,
    },
    /// Complete everything before, then signal.
    Sync(GuestSync),
    /// Answer a page request group, if it is outstanding for the guest.
    PriResponse {
        /// The stream.
        vsid: VirtualStreamId,
        /// The PASID, when SSV = 1.
        ssid: Option<SubstreamId>,
        /// PRGIndex.
        prg_index: u16,
        /// Resp.
        response: PriResponse,
    },
    /// Consumed, no effect.
    Nothing,
}

/// A guest command that passed the allowlist.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ValidatedCommand(CommandAction);

impl ValidatedCommand {
    /// What to do.
    #[must_use]
    pub const fn action(&self) -> &CommandAction {
        &self.0
    }
}

/// Why a guest command is illegal. Every variant has the same outcome: the queue stops at the
/// command with CMDQ_CONS.ERR = CERROR_ILL and GERROR.CMDQ_ERR active.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IllegalCommand {
    /// The command does not decode: unknown opcode, reserved bit, reserved value.
    Decode(CommandDecodeError),
    /// A stage-2 command on a vSMMU without stage 2.
    Stage2NotImplemented(Opcode),
    /// An EL2 command on a vSMMU without HYP.
    HypNotImplemented(Opcode),
    /// An EL3 command on the Non-secure queue.
    SecureOnly(Opcode),
    /// A command for a feature the vSMMU does not advertise (ATS, PRI, stall).
    FeatureNotAdvertised(Opcode),
    /// Range-invalidation fields (NUM, SCALE, TTL, TG) set without IDR3.RIL, or with TG = 0.
    RangeFieldsNotAllowed,
    /// TG != 0 with NUM = SCALE = TTL = 0 (reserved), or TG = 16K with TTL = 1 (reserved).
    ReservedRangeEncoding,
}

impl IllegalCommand {
    /// Every variant, for counters indexed by cause.
    pub const COUNT: usize = 7;

    /// A dense index for counters.
    #[must_use]
    pub const fn index(&self) -> usize {
        match self {
            Self::Decode(_) => 0,
            Self::Stage2NotImplemented(_) => 1,
            Self::HypNotImplemented(_) => 2,
            Self::SecureOnly(_) => 3,
            Self::FeatureNotAdvertised(_) => 4,
            Self::RangeFieldsNotAllowed => 5,
            Self::ReservedRangeEncoding => 6,
        }
    }
}

/// What the validator needs to know about the VM.
#[derive(Clone, Copy, Debug)]
pub struct CommandContext<'a, F: Fn(VirtualStreamId) -> Option<StreamId>> {
    /// What the vSMMU advertises.
    pub features: &'a VirtualFeatures,
    /// The VM's VMID.
    pub vmid: Vmid,
    /// The physical stream of a virtual one the VM owns.
    pub physical_stream: F,
}

fn check_scope(scope: &TlbiScope, ril: bool) -> Result<(), IllegalCommand> {
    let range_fields = scope.num != 0 || scope.scale != 0 || scope.ttl != 0;
    match scope.granule {
        TlbiGranule::Unspecified if range_fields => Err(IllegalCommand::RangeFieldsNotAllowed),
        TlbiGranule::Unspecified => Ok(()),
        _ if !ril => Err(IllegalCommand::RangeFieldsNotAllowed),
        _ if !range_fields => Err(IllegalCommand::ReservedRangeEncoding),
        TlbiGranule::Size16K if scope.ttl == 1 => Err(IllegalCommand::ReservedRangeEncoding),
        _ => Ok(()),
    }
}

/// Validates `command` for the VM described by `context`.
///
/// This is the only constructor of [`ValidatedCommand`]. There must be no second way: a
/// `ValidatedCommand` carries [`PhysicalCommand`]s with the VM's VMID and its own physical
/// streams, and the consumer forwards them without looking again.
///
/// # Errors
///
/// The [`IllegalCommand`] that makes it CERROR_ILL.
pub fn validate_command<F: Fn(VirtualStreamId) -> Option<StreamId>>(
    command: &GuestCommand,
    context: &CommandContext<'_, F>,
) -> Result<ValidatedCommand, IllegalCommand> {
    let features = context.features;
    let vmid = context.vmid;
    let in_range = |sid: StreamId| u64::from(sid.0) >> features.sid_bits == 0;
    let forward = |cmd: Cmd| {
        Ok(ValidatedCommand(CommandAction::Forward(
            PhysicalCommand::new(cmd),
        )))
    };
    let nothing = Ok(ValidatedCommand(CommandAction::Nothing));
    let cmd = command.0.decode().map_err(IllegalCommand::Decode)?;
    match cmd {
        Cmd::PrefetchConfig { .. } | Cmd::PrefetchAddr { .. } => nothing,
        Cmd::CfgiSte { sid, .. } => {
            if !in_range(sid) {
                return nothing;
            }
            Ok(ValidatedCommand(CommandAction::InvalidateStes {
                first: VirtualStreamId(sid.0),
                count_log2: 0,
            }))
        }
        Cmd::CfgiSteRange { sid, range } => {
            let count_log2 = range.saturating_add(1).min(32);
            let first = if count_log2 >= 32 {
                0
            } else {
                sid.0 & !((1u32 << count_log2) - 1)
            };
            Ok(ValidatedCommand(CommandAction::InvalidateStes {
                first: VirtualStreamId(first),
                count_log2,
            }))
        }
        Cmd::CfgiCd { sid, ssid, .. } => {
            if !in_range(sid) || u64::from(ssid.0) >> features.ssid_bits != 0 {
                return nothing;
            }
            Ok(ValidatedCommand(CommandAction::InvalidateCd {
                vsid: VirtualStreamId(sid.0),
                ssid,
            }))
        }
        Cmd::CfgiCdAll { sid } => {
            if !in_range(sid) {
                return nothing;
            }
            Ok(ValidatedCommand(CommandAction::InvalidateAllCds {
                vsid: VirtualStreamId(sid.0),
            }))
        }
        Cmd::TlbiNhAll { .. } | Cmd::TlbiNsnhAll => forward(Cmd::TlbiNhAll { vmid }),
        Cmd::TlbiNhAsid { asid, .. } => {
            if !features.asid16 && asid.0 > 0xff {
                return nothing;
            }
            forward(Cmd::TlbiNhAsid { vmid, asid })
        }
        Cmd::TlbiNhVa {
            asid, scope, addr, ..
        } => {
            check_scope(&scope, features.ril)?;
            if !features.asid16 && asid.0 > 0xff {
                return nothing;
            }
            forward(Cmd::TlbiNhVa {
                vmid,
                asid,
                scope,
                addr,
            })
        }
        Cmd::TlbiNhVaa { scope, addr, .. } => {
            check_scope(&scope, features.ril)?;
            forward(Cmd::TlbiNhVaa { vmid, scope, addr })
        }
        Cmd::TlbiEl3All | Cmd::TlbiEl3Va { .. } => Err(IllegalCommand::SecureOnly(cmd.opcode())),
        Cmd::TlbiEl2All
        | Cmd::TlbiEl2Asid { .. }
        | Cmd::TlbiEl2Va { .. }
        | Cmd::TlbiEl2Vaa { .. } => Err(IllegalCommand::HypNotImplemented(cmd.opcode())),
        Cmd::TlbiS12Vmall { .. } | Cmd::TlbiS2Ipa { .. } => {
            Err(IllegalCommand::Stage2NotImplemented(cmd.opcode()))
        }
        Cmd::AtcInv {
            sid,
            ssid,
            global,
            size,
            addr,
        } => {
            if !features.ats {
                return Err(IllegalCommand::FeatureNotAdvertised(cmd.opcode()));
            }
            let vsid = VirtualStreamId(sid.0);
            match (context.physical_stream)(vsid) {
                Some(psid) if in_range(sid) => forward(Cmd::AtcInv {
                    sid: psid,
                    ssid,
                    global,
                    size,
                    addr,
                }),
                _ => nothing,
            }
        }
        Cmd::PriResp {
            sid,
            ssid,
            prg_index,
            response,
        } => {
            if !features.pri {
                return Err(IllegalCommand::FeatureNotAdvertised(cmd.opcode()));
            }
            // Ownership, range and whether the group is outstanding are the response path's
            // to judge (and count); an out-of-range one has no effect there.
            Ok(ValidatedCommand(CommandAction::PriResponse {
                vsid: VirtualStreamId(sid.0),
                ssid,
                prg_index,
                response,
            }))
        }
        Cmd::Resume { .. } | Cmd::StallTerm { .. } => {
            Err(IllegalCommand::FeatureNotAdvertised(cmd.opcode()))
        }
        Cmd::Sync {
            completion,
            msi_data,
            msi_addr,
            ..
        } => Ok(ValidatedCommand(CommandAction::Sync(GuestSync {
            completion,
            msi_address: Ipa(msi_addr.0),
            msi_data,
        }))),
    }
}
