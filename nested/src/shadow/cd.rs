//! Shadow CD tables: one linear table per owned stream in hypervisor memory, read by the
//! physical SMMU through the CD window, written only here.
//!
//! A guest CD is read (through its table, see [`crate::guest_tables`]), validated
//! ([`crate::validate::cd`]) and its shadow written at the stream's slot, index = substream ID.
//! An invalid or unreadable CD gives a shadow with V = 0. While the physical SMMU can reach the
//! CD, the write goes through `smmu`'s hitless CD installer, each step followed by CFGI_CD and
//! CMD_SYNC: replacing a valid CD with another valid one never passes through V = 0 unless the
//! two differ in both the ASID and a table (the one case the architecture leaves no single
//! store for).

use smmu::cd::Cd;
use smmu::command::Cmd;
use smmu::driver::DmaMemory;
use smmu::entry::PhysicalCd;
use smmu::entry::install::{EntryWriter, install_cd};
use smmu::{StreamId, SubstreamId};

use crate::VirtualSmmu;
use crate::budget::{Budget, READ_COST, SYNC_COST};
use crate::counters::bump;
use crate::guest_tables::{GuestCdTable, read_cd};
use crate::interfaces::guest_memory::GuestMemory;
use crate::interfaces::interrupts::InterruptSink;
use crate::interfaces::physical::{PhysicalCommand, PhysicalSmmu};
use crate::validate::cd::{GuestCd, validate_cd};

/// The hitless installer's stores and syncs for one shadow CD.
struct ShadowCdWriter<'a, C, P> {
    memory: &'a mut C,
    physical: &'a mut P,
    offset: usize,
    psid: StreamId,
    ssid: SubstreamId,
}

impl<C: DmaMemory, P: PhysicalSmmu> EntryWriter for ShadowCdWriter<'_, C, P> {
    type Error = P::Error;

    fn write_qword(&mut self, index: usize, value: u64) {
        let offset = self.offset.saturating_add(index.saturating_mul(8));
        self.memory.write_u64(offset, value);
    }

    fn sync(&mut self) -> Result<(), P::Error> {
        // The driver's barrier before CMDQ_PROD orders the stores above before the command.
        self.physical.submit(&[PhysicalCommand::new(Cmd::CfgiCd {
            sid: self.psid,
            ssid: self.ssid,
            leaf: true,
        })])?;
        self.physical.sync().map(|_| ())
    }
}

/// An invalid CD, through the physical guard at compile time.
#[allow(clippy::panic)] // Const evaluation: a refusal stops the build, never the hypervisor.
const INVALID: PhysicalCd = match PhysicalCd::check(Cd::INVALID) {
    Ok(cd) => cd,
    Err(_) => panic!("the physical guard refuses an invalid CD"),
};

/// Reads the shadow CD at `offset`.
pub(crate) fn read_shadow(memory: &impl DmaMemory, offset: usize) -> Cd {
    let mut words = [0u64; 8];
    for (i, word) in words.iter_mut().enumerate() {
        *word = memory.read_u64(offset.saturating_add(i.saturating_mul(8)));
    }
    Cd::from_words(words)
}

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    /// Shadows CD `ssid` of `table` into the stream in `slot`; `live` if the physical SMMU may
    /// be reading that CD now.
    pub(crate) fn shadow_cd(
        &mut self,
        slot: usize,
        ssid: u32,
        table: &GuestCdTable,
        live: bool,
        budget: &mut Budget,
    ) {
        let (Some(offset), Some(psid)) = (
            self.cd_layout.offset(slot, ssid),
            self.streams.get(slot).map(|s| s.psid),
        ) else {
            return;
        };
        budget.charge(2 * READ_COST);
        let memory = &self.backends.guest_memory;
        let target = match read_cd(memory, table, ssid) {
            Err(_) => {
                self.counters.cd_lookup_faults = self.counters.cd_lookup_faults.saturating_add(1);
                Cd::INVALID
            }
            Ok(guest) => match validate_cd(&GuestCd(guest), &self.features, memory) {
                Ok(validated) => *validated.shadow(),
                Err(invalid) => {
                    bump(&mut self.counters.cd_rejections, invalid.index());
                    Cd::INVALID
                }
            },
        };
        // The validator only makes CDs the guard accepts; should one ever fail it, the
        // substream is blocked rather than handed to the SMMU.
        let target = PhysicalCd::check(target).unwrap_or_else(|_| {
            self.counters.physical_failures = self.counters.physical_failures.saturating_add(1);
            INVALID
        });
        let mut current = read_shadow(&self.backends.shadow_cds, offset);
        if current == *target.cd() {
            return;
        }
        self.counters.cd_installs = self.counters.cd_installs.saturating_add(1);
        if !live {
            // Nothing can fetch it: the installed STE is not nested, or this substream is
            // beyond its S1CDMax; the STE install that makes it reachable invalidates it.
            for (i, word) in target.words().iter().enumerate() {
                self.backends
                    .shadow_cds
                    .write_u64(offset.saturating_add(i.saturating_mul(8)), *word);
            }
            return;
        }
        let mut writer = ShadowCdWriter {
            memory: &mut self.backends.shadow_cds,
            physical: &mut self.backends.physical,
            offset,
            psid,
            ssid: SubstreamId(ssid),
        };
        match install_cd(&mut writer, &mut current, &target) {
            Ok(report) => {
                if report.syncs > 0 {
                    self.unsynced = false;
                }
                self.counters.install_syncs = self
                    .counters
                    .install_syncs
                    .saturating_add(u64::from(report.syncs));
                budget.charge(SYNC_COST.saturating_mul(u32::from(report.syncs)));
            }
            Err(_) => {
                self.counters.physical_failures = self.counters.physical_failures.saturating_add(1);
                budget.charge(SYNC_COST);
            }
        }
    }
}
