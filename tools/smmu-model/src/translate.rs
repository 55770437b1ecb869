//! The translation of one transaction: configuration lookup (stream table, CD table), the
//! walks of both stages through the TLB, permission checks, and what a fault becomes (IHI 0070
//! 3.3, 3.12, 5.5, 7.3; ATS in 3.9.1).
//!
//! This module owns the order of the checks and the mapping of every failure to its event and
//! its fault model (terminate with abort or RAZ/WI, record or not, stall). It reads structures
//! through `structures`, walks through `walk`, caches through `caches`, and writes events
//! through the state's queue writer.

use crate::caches::{CachedCd, CachedSte, StagePermissions, TlbEntry, TlbTag};
use crate::events::{EventFields, class, id};
use crate::model::{State, cr0};
use crate::structures::{
    Cd, CdTableFormat, ContextTable, DefaultSubstream, Eats, Stage2, Ste, StreamConfig,
    StreamWorld, bits, decode_cd, decode_l1cd, decode_l1std, decode_ste,
};
use crate::trace::{AddressSpaceContent, Generation, TraceEvent, TransactionResult};
use crate::walk::{
    Access, Leaf, Permissions, Stage, Stage1Controls, Walk, WalkFault, stage1_permissions,
    stage2_permissions, walk,
};

/// A transaction as it arrives at the SMMU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Transaction {
    /// StreamID.
    pub sid: u32,
    /// SubstreamID (PASID), when SSV = 1.
    pub ssid: Option<u32>,
    /// The input address.
    pub address: u64,
    /// What it asks for.
    pub access: Access,
}

/// How a transaction ended, as its device sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// It may proceed to memory at this physical address.
    Completed {
        /// The output address.
        pa: u64,
    },
    /// Terminated with an abort.
    Aborted {
        /// The event the fault was (0 for a silent abort); recorded or not.
        event: u8,
    },
    /// Terminated with RAZ/WI (CD.A = 0): reads return zero, writes are dropped.
    RazWi {
        /// The event the fault was.
        event: u8,
    },
    /// Held by the SMMU until CMD_RESUME or CMD_STALL_TERM.
    Stalled {
        /// The stall tag in the event record.
        stag: u16,
    },
}

/// How a lookup uses the caches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Lookup {
    /// As the SMMU does: use and fill the caches.
    Cached,
    /// A side-effect-free look at what memory holds now (for the trace's `live` generation).
    Live,
}

/// The fault model that applies to a fault (IHI 0070 5.5): abort or RAZ/WI, record or not,
/// stall or not.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Disposition {
    pub(crate) abort: bool,
    pub(crate) record: bool,
    pub(crate) stall: bool,
}

impl Disposition {
    /// Configuration errors and the faults not covered by A/R/S: abort and record.
    const CONFIGURATION: Self = Self {
        abort: true,
        record: true,
        stall: false,
    };
    /// A silent abort (STE.Config = abort, GBPA.ABORT).
    const SILENT: Self = Self {
        abort: true,
        record: false,
        stall: false,
    };

    /// Stage 1's A, R, S from the CD.
    fn stage1(cd: Option<&Cd>) -> Self {
        cd.map_or(Self::CONFIGURATION, |cd| Self {
            abort: cd.abort,
            record: cd.record,
            stall: cd.stall,
        })
    }

    /// Stage 2's S2R, S2S from the STE (A is 1 at stage 2).
    fn stage2(stage2: &Stage2) -> Self {
        Self {
            abort: true,
            record: stage2.record,
            stall: stage2.stall,
        }
    }
}

/// A fault, with what its record says and how it is handled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Fault {
    pub(crate) id: u8,
    pub(crate) disposition: Disposition,
    pub(crate) s2: bool,
    pub(crate) class: u8,
    pub(crate) address2: u64,
    pub(crate) address2_is_fetch: bool,
    /// The record has no SSV/SubstreamID (F_STREAM_DISABLED).
    pub(crate) no_substream: bool,
    /// C_BAD_SUBSTREAMID's always-valid SubstreamID field.
    pub(crate) substream: Option<u32>,
    /// Whether the fault is one of the four translation-related faults.
    pub(crate) translation_related: bool,
}

impl Fault {
    fn configuration(id: u8) -> Self {
        Self {
            id,
            disposition: Disposition::CONFIGURATION,
            s2: false,
            class: 0,
            address2: 0,
            address2_is_fetch: false,
            no_substream: false,
            substream: None,
            translation_related: false,
        }
    }

    fn fetch(id: u8, address: u64) -> Self {
        Self {
            address2: address,
            address2_is_fetch: true,
            ..Self::configuration(id)
        }
    }

    fn silent() -> Self {
        Self {
            disposition: Disposition::SILENT,
            ..Self::configuration(0)
        }
    }

    fn bad_substream(ssid: u32) -> Self {
        Self {
            substream: Some(ssid),
            ..Self::configuration(id::C_BAD_SUBSTREAMID)
        }
    }

    fn stream_disabled() -> Self {
        Self {
            no_substream: true,
            ..Self::configuration(id::F_STREAM_DISABLED)
        }
    }

    /// A fault of the walk at `stage`, with the given class and word-3 address.
    fn walk<E>(
        fault: &WalkFault<E>,
        stage: Stage,
        class: u8,
        address2: u64,
        disposition: Disposition,
    ) -> Option<Self> {
        let id = match fault {
            WalkFault::Translation { .. } => id::F_TRANSLATION,
            WalkFault::AddressSize { .. } => id::F_ADDR_SIZE,
            WalkFault::AccessFlag { .. } => id::F_ACCESS,
            WalkFault::Fetch(_) => return None,
        };
        Some(Self::translation(id, stage, class, address2, disposition))
    }

    fn translation(
        id: u8,
        stage: Stage,
        class: u8,
        address2: u64,
        disposition: Disposition,
    ) -> Self {
        Self {
            id,
            disposition,
            s2: stage == Stage::Two,
            class,
            address2: if stage == Stage::Two { address2 } else { 0 },
            address2_is_fetch: false,
            no_substream: false,
            substream: None,
            translation_related: true,
        }
    }

    /// F_WALK_EABT: an external abort on a descriptor fetch.
    fn walk_abort(stage: Stage, class: u8, fetch_address: u64) -> Self {
        Self {
            s2: stage == Stage::Two,
            class,
            ..Self::fetch(id::F_WALK_EABT, fetch_address)
        }
    }
}

/// The configuration a transaction resolved to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Context {
    pub(crate) ste: Ste,
    /// The CD that translates this transaction at stage 1, and its index.
    pub(crate) cd: Option<(Cd, u32)>,
    /// The address-space generation the configuration is.
    pub(crate) generation: Option<Generation>,
}

/// A translation, before the permission check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Resolved {
    pub(crate) context: Context,
    pub(crate) pa: u64,
    /// The intermediate address, when stage 2 translated.
    pub(crate) ipa: Option<u64>,
    pub(crate) stage1: StagePermissions,
    pub(crate) stage2: StagePermissions,
    pub(crate) tlb_hit: bool,
    /// The generation of the TLB entry or of the configuration that walked.
    pub(crate) generation: Option<Generation>,
}

/// What an ATS Translation Request gets (PCIe Translation Completion).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AtsCompletion {
    /// Success: the translation and what it allows. A translation fault is a success with
    /// nothing allowed (R = W = 0).
    Success {
        /// The translated address of the request's page (4 KiB, the STU).
        pa: u64,
        /// R.
        read: bool,
        /// W.
        write: bool,
        /// Exe.
        exec: bool,
        /// The generation that resolved it.
        generation: Option<Generation>,
    },
    /// Unsupported Request: ATS is not allowed for the stream.
    UnsupportedRequest,
    /// Completer Abort: a configuration error.
    CompleterAbort,
}

/// The content that identifies a (StreamID, CD index)'s address space.
fn content(ste: &[u64; 8], cd: Option<&[u64; 8]>) -> AddressSpaceContent {
    let mut c = [0; 12];
    c[..4].copy_from_slice(&ste[..4]);
    if let Some(cd) = cd {
        c[4..].copy_from_slice(cd);
    }
    c
}

impl State {
    /// STE lookup (IHI 0070 3.3.1): the stream table from the registers, through the cache.
    pub(crate) fn fetch_ste(&mut self, sid: u32, lookup: Lookup) -> Result<CachedSte, Fault> {
        let bad_streamid = || Fault {
            disposition: Disposition {
                record: self.regs.cr2 & 0b10 != 0,
                ..Disposition::CONFIGURATION
            },
            ..Fault::configuration(id::C_BAD_STREAMID)
        };
        let cfg = self.regs.strtab_base_cfg;
        let log2size = (cfg & 0x3f).min(u32::from(self.features().sidsize));
        if u64::from(sid) >> log2size != 0 {
            return Err(bad_streamid());
        }
        if lookup == Lookup::Cached
            && let Some(cached) = self.config_cache.ste(sid)
        {
            return Ok(cached);
        }
        let two_level = (cfg >> 16) & 3 == 1 && self.features().two_level_stream_table;
        // The base is aligned to the table's size by the configured LOG2SIZE (6.3.24).
        let literal_log2size = u64::from(cfg & 0x3f);
        let table_bytes = if two_level {
            let split = u64::from((cfg >> 6) & 0x1f);
            (8u64 << literal_log2size.saturating_sub(split).min(32)).max(64)
        } else {
            64u64 << literal_log2size.min(32)
        };
        let base = self.regs.strtab_base & 0x000f_ffff_ffff_ffc0 & !(table_bytes - 1);
        let address = if two_level {
            let split = (cfg >> 6) & 0x1f;
            let index = u64::from(sid >> split);
            let l1 = match (lookup, self.config_cache.l1std(index)) {
                (Lookup::Cached, Some(raw)) => raw,
                _ => {
                    let at = base + index * 8;
                    let raw = self
                        .memory
                        .read_u64(at)
                        .map_err(|_| Fault::fetch(id::F_STE_FETCH, at))?;
                    if lookup == Lookup::Cached {
                        self.config_cache.fill_l1std(index, raw);
                    }
                    raw
                }
            };
            let (table, entries) = decode_l1std(l1, split).ok_or_else(bad_streamid)?;
            let within = u64::from(sid) & ((1 << split) - 1);
            if within >= entries {
                return Err(bad_streamid());
            }
            table + within * 64
        } else {
            base + u64::from(sid) * 64
        };
        let mut raw = [0; 8];
        for (i, word) in (0u64..).zip(raw.iter_mut()) {
            *word = self
                .memory
                .read_u64(address + i * 8)
                .map_err(|_| Fault::fetch(id::F_STE_FETCH, address))?;
        }
        let generation = self.generations.observe(sid, None, content(&raw, None));
        let fetched = CachedSte { raw, generation };
        if lookup == Lookup::Cached {
            self.config_cache.fill_ste(sid, fetched);
        }
        Ok(fetched)
    }

    /// Reads a configuration structure's word at `address`, an IPA when stage 2 translates the
    /// stream (the CD table and its level-1 descriptors, IHI 0070 5.2 S1ContextPtr).
    fn config_address(&mut self, ste: &Ste, address: u64, lookup: Lookup) -> Result<u64, Fault> {
        match &ste.stage2 {
            Some(s2) => {
                let translated = self.stage2_walk(s2, address, class::CD, lookup)?;
                if !translated.1.privileged.read {
                    return Err(Fault::translation(
                        id::F_PERMISSION,
                        Stage::Two,
                        class::CD,
                        address,
                        Disposition::stage2(s2),
                    ));
                }
                Ok(translated.0)
            }
            None => Ok(address),
        }
    }

    /// CD lookup (IHI 0070 3.3.2): the CD at `index` of the stream's table, through the cache.
    fn fetch_cd(
        &mut self,
        sid: u32,
        ste: &Ste,
        table: &ContextTable,
        index: u32,
        lookup: Lookup,
    ) -> Result<(Cd, Generation), Fault> {
        let judge = |raw: [u64; 8], state: &Self| {
            decode_cd(raw, ste, state.features()).map_err(|_| Fault::configuration(id::C_BAD_CD))
        };
        if lookup == Lookup::Cached
            && let Some(cached) = self.config_cache.cd(sid, index)
        {
            return Ok((judge(cached.raw, self)?, cached.generation));
        }
        let ipa = match table.format {
            CdTableFormat::Linear => {
                let bytes = 64u64 << table.cdmax;
                (table.pointer & !(bytes - 1)) + u64::from(index) * 64
            }
            CdTableFormat::TwoLevel { leaf_bits } => {
                let l1_index = index >> leaf_bits;
                let l1_entries = 1u64 << table.cdmax.saturating_sub(leaf_bits);
                let l1_base = table.pointer & !((l1_entries * 8).max(64) - 1);
                let l1 = match (lookup, self.config_cache.l1cd(sid, l1_index)) {
                    (Lookup::Cached, Some(raw)) => raw,
                    _ => {
                        let ipa = l1_base + u64::from(l1_index) * 8;
                        let pa = self.config_address(ste, ipa, lookup)?;
                        let raw = self
                            .memory
                            .read_u64(pa)
                            .map_err(|_| Fault::fetch(id::F_CD_FETCH, pa))?;
                        if lookup == Lookup::Cached {
                            self.config_cache.fill_l1cd(sid, l1_index, raw);
                        }
                        raw
                    }
                };
                let leaf = decode_l1cd(l1).ok_or(Fault::bad_substream(index))?;
                let leaf_bytes = 64u64 << leaf_bits;
                let within = u64::from(index) & ((1 << leaf_bits) - 1);
                (leaf & !(leaf_bytes - 1)) + within * 64
            }
        };
        let pa = self.config_address(ste, ipa, lookup)?;
        let mut raw = [0; 8];
        for (i, word) in (0u64..).zip(raw.iter_mut()) {
            *word = self
                .memory
                .read_u64(pa + i * 8)
                .map_err(|_| Fault::fetch(id::F_CD_FETCH, pa))?;
        }
        let generation = self
            .generations
            .observe(sid, Some(index), content(&ste.raw, Some(&raw)));
        if lookup == Lookup::Cached {
            self.config_cache
                .fill_cd(sid, index, CachedCd { raw, generation });
        }
        Ok((judge(raw, self)?, generation))
    }

    /// The configuration for a transaction of `sid` with `ssid`: the STE, the substream rules
    /// (IHI 0070 5.2 S1CDMax, S1DSS; 7.3.7, 7.3.9) and the CD.
    pub(crate) fn resolve(
        &mut self,
        sid: u32,
        ssid: Option<u32>,
        lookup: Lookup,
    ) -> Result<Context, Fault> {
        let fetched = self.fetch_ste(sid, lookup)?;
        let e2h = self.regs.cr2 & 1 != 0;
        let ste = decode_ste(fetched.raw, self.features(), e2h)
            .map_err(|_| Fault::configuration(id::C_BAD_STE))?;
        let stream_generation = Some(fetched.generation);
        let no_cd = |generation| Context {
            ste,
            cd: None,
            generation,
        };
        match (ste.config, ste.table) {
            (StreamConfig::Abort, _) => Err(Fault::silent()),
            (StreamConfig::Stage1 | StreamConfig::Nested, Some(table)) => {
                let index = match ssid {
                    Some(ssid) => {
                        if self.features().ssidsize == 0
                            || table.cdmax == 0
                            || u64::from(ssid) >> table.cdmax != 0
                        {
                            return Err(Fault::bad_substream(ssid));
                        }
                        if ssid == 0 && table.default_substream == DefaultSubstream::Substream0 {
                            return Err(Fault::stream_disabled());
                        }
                        ssid
                    }
                    None if table.cdmax == 0 => 0,
                    None => match table.default_substream {
                        DefaultSubstream::Terminate => return Err(Fault::stream_disabled()),
                        DefaultSubstream::Bypass => return Ok(no_cd(stream_generation)),
                        DefaultSubstream::Substream0 => 0,
                    },
                };
                let (cd, generation) = self.fetch_cd(sid, &ste, &table, index, lookup)?;
                Ok(Context {
                    ste,
                    cd: Some((cd, index)),
                    generation: Some(generation),
                })
            }
            _ => match ssid {
                // A substream without stage 1 (IHI 0070 7.3.9).
                Some(ssid) => Err(Fault::bad_substream(ssid)),
                None => Ok(no_cd(stream_generation)),
            },
        }
    }

    /// A stage-2 walk of `ipa` (TLB first when cached). Returns the PA, what stage 2 allows,
    /// and the leaf's level and size.
    fn stage2_walk(
        &mut self,
        s2: &Stage2,
        ipa: u64,
        fault_class: u8,
        lookup: Lookup,
    ) -> Result<(u64, StagePermissions, u32, u32, u64), Fault> {
        let disposition = Disposition::stage2(s2);
        if ipa >> s2.geometry.input_bits != 0 {
            return Err(Fault::translation(
                id::F_TRANSLATION,
                Stage::Two,
                fault_class,
                ipa,
                disposition,
            ));
        }
        let tag = TlbTag::Stage2 { vmid: s2.vmid };
        if lookup == Lookup::Cached
            && let Some(entry) = self.tlb.lookup(tag, ipa)
        {
            let offset = ipa - entry.input_base;
            return Ok((
                entry.output_base + offset,
                entry.stage2,
                entry.level,
                entry.size_shift,
                entry.input_base,
            ));
        }
        let memory = self.memory.clone();
        let params = Walk {
            geometry: s2.geometry,
            root: s2.ttb,
            output_bits: s2.output_bits,
            stage: Stage::Two,
            access_flag_faults_disabled: s2.access_flag_faults_disabled,
            hierarchical_disabled: true,
        };
        let leaf =
            walk(&params, ipa, |pa| memory.read_u64(pa).map_err(|_| pa)).map_err(|fault| {
                match fault {
                    WalkFault::Fetch(pa) => Fault::walk_abort(Stage::Two, fault_class, pa),
                    other => Fault::walk(&other, Stage::Two, fault_class, ipa, disposition)
                        .unwrap_or_else(|| Fault::configuration(id::F_WALK_EABT)),
                }
            })?;
        let xnx = self.features().xnx;
        let permissions = StagePermissions {
            privileged: stage2_permissions(&leaf, xnx, true),
            unprivileged: stage2_permissions(&leaf, xnx, false),
        };
        let input_base = leaf.input_base(ipa);
        if lookup == Lookup::Cached {
            self.tlb.fill(TlbEntry {
                tag,
                input_base,
                size_shift: leaf.size_shift,
                granule_shift: s2.geometry.granule_shift,
                level: leaf.level,
                output_base: leaf.output_base(),
                intermediate_base: None,
                stage1: StagePermissions::ALL,
                stage2: permissions,
                generation: None,
            });
        }
        Ok((
            leaf.output,
            permissions,
            leaf.level,
            leaf.size_shift,
            input_base,
        ))
    }

    /// The stage-1 walk of `address` with `cd`'s tables: (leaf, permissions).
    fn stage1_walk(
        &mut self,
        context: &Context,
        cd: &Cd,
        address: u64,
        lookup: Lookup,
    ) -> Result<(Leaf, StagePermissions), Fault> {
        let disposition = Disposition::stage1(Some(cd));
        let translation_fault =
            || Fault::translation(id::F_TRANSLATION, Stage::One, class::IN, 0, disposition);
        let world = context.ste.world;
        let two_ranges = world != StreamWorld::El2;
        let upper = two_ranges && (address >> 55) & 1 == 1;
        let half = if upper { cd.ttb1 } else { cd.ttb0 };
        let Some(half) = half else {
            return Err(translation_fault());
        };
        let top = if half.top_byte_ignored { 55 } else { 63 };
        let input_bits = half.geometry.input_bits;
        let expected = if upper { u64::MAX } else { 0 };
        if top >= input_bits
            && bits(address, top, input_bits) != bits(expected, top - input_bits, 0)
        {
            return Err(translation_fault());
        }
        let stage2 = context.ste.stage2;
        let memory = self.memory.clone();
        let params = Walk {
            geometry: half.geometry,
            root: half.ttb,
            output_bits: cd.output_bits,
            stage: Stage::One,
            access_flag_faults_disabled: cd.access_flag_faults_disabled,
            hierarchical_disabled: half.hierarchical_disabled,
        };
        // Descriptor addresses are IPAs when nested: each goes through stage 2 first.
        let mut nested_fault = None;
        let leaf = walk(&params, address, |descriptor| {
            let pa = match &stage2 {
                Some(s2) => match self.stage2_walk(s2, descriptor, class::TT, lookup) {
                    Ok((pa, permissions, ..)) if permissions.privileged.read => pa,
                    Ok(_) => {
                        nested_fault = Some(Fault::translation(
                            id::F_PERMISSION,
                            Stage::Two,
                            class::TT,
                            descriptor,
                            Disposition::stage2(s2),
                        ));
                        return Err(descriptor);
                    }
                    Err(fault) => {
                        nested_fault = Some(fault);
                        return Err(descriptor);
                    }
                },
                None => descriptor,
            };
            memory.read_u64(pa).map_err(|_| {
                nested_fault = Some(Fault::walk_abort(Stage::One, class::TT, pa));
                pa
            })
        })
        .map_err(|fault| match (nested_fault, &fault) {
            (Some(nested), WalkFault::Fetch(_)) => nested,
            _ => Fault::walk(&fault, Stage::One, class::IN, 0, disposition)
                .unwrap_or_else(|| Fault::configuration(id::F_WALK_EABT)),
        })?;
        let controls = Stage1Controls {
            two_privilege_levels: world != StreamWorld::El2,
            wxn: cd.wxn,
            pan: cd.pan,
        };
        let permissions = StagePermissions {
            privileged: stage1_permissions(&leaf, controls, true),
            unprivileged: stage1_permissions(&leaf, controls, false),
        };
        Ok((leaf, permissions))
    }

    /// Translates `address` in `context` (stage 1, stage 2, both, or bypass), through the TLB.
    fn translate_address(
        &mut self,
        context: Context,
        address: u64,
        lookup: Lookup,
    ) -> Result<Resolved, Fault> {
        let ste = context.ste;
        let oas = u32::from(self.features().oas_bits());
        let vmid = ste.stage2.map_or(ste.vmid, |s2| s2.vmid);
        let mut resolved = Resolved {
            context,
            pa: address,
            ipa: None,
            stage1: StagePermissions::ALL,
            stage2: StagePermissions::ALL,
            tlb_hit: false,
            generation: context.generation,
        };
        let Some((cd, _)) = context.cd else {
            // Stage 1 bypassed: the address must fit the IAS (= OAS here), then stage 2.
            if address >> oas != 0 {
                return Err(Fault::translation(
                    id::F_ADDR_SIZE,
                    Stage::One,
                    class::IN,
                    0,
                    Disposition::CONFIGURATION,
                ));
            }
            if let Some(s2) = &ste.stage2 {
                let (pa, permissions, ..) = self.stage2_walk(s2, address, class::IN, lookup)?;
                resolved.pa = pa;
                resolved.ipa = Some(address);
                resolved.stage2 = permissions;
            }
            return Ok(resolved);
        };
        let tag = match ste.stage2 {
            Some(_) => TlbTag::Nested {
                vmid,
                asid: cd.asid,
                global: false,
            },
            None => TlbTag::Stage1 {
                world: ste.world,
                vmid: if ste.world == StreamWorld::El1 {
                    vmid
                } else {
                    0
                },
                asid: cd.asid,
                global: false,
            },
        };
        if lookup == Lookup::Cached
            && let Some(entry) = self.tlb.lookup(tag, address)
        {
            let offset = address - entry.input_base;
            resolved.pa = entry.output_base + offset;
            resolved.ipa = entry.intermediate_base.map(|base| base + offset);
            resolved.stage1 = entry.stage1;
            resolved.stage2 = entry.stage2;
            resolved.tlb_hit = true;
            resolved.generation = entry.generation;
            return Ok(resolved);
        }
        let (leaf, stage1) = self.stage1_walk(&context, &cd, address, lookup)?;
        let global = leaf.descriptor & (1 << 11) == 0;
        resolved.stage1 = stage1;
        let mut size_shift = leaf.size_shift;
        let mut level = leaf.level;
        let mut granule = cd
            .ttb0
            .or(cd.ttb1)
            .map_or(12, |half| half.geometry.granule_shift);
        if let Some(s2) = &ste.stage2 {
            let ipa = leaf.output;
            let (pa, permissions, s2_level, s2_size, _) =
                self.stage2_walk(s2, ipa, class::IN, lookup)?;
            resolved.pa = pa;
            resolved.ipa = Some(ipa);
            resolved.stage2 = permissions;
            if s2_size < size_shift {
                size_shift = s2_size;
                level = s2_level;
                granule = s2.geometry.granule_shift;
            }
        } else {
            resolved.pa = leaf.output;
        }
        if lookup == Lookup::Cached {
            let input_base = address & !((1 << size_shift) - 1);
            let offset = address - input_base;
            let tag = match tag {
                TlbTag::Nested { vmid, asid, .. } => TlbTag::Nested { vmid, asid, global },
                TlbTag::Stage1 {
                    world, vmid, asid, ..
                } => TlbTag::Stage1 {
                    world,
                    vmid,
                    asid,
                    global,
                },
                other => other,
            };
            self.tlb.fill(TlbEntry {
                tag,
                input_base,
                size_shift,
                granule_shift: granule,
                level,
                output_base: resolved.pa - offset,
                intermediate_base: resolved.ipa.map(|ipa| ipa - offset),
                stage1: resolved.stage1,
                stage2: resolved.stage2,
                generation: context.generation,
            });
        }
        Ok(resolved)
    }

    /// Configuration and translation for `tx`, before the permission check.
    pub(crate) fn resolve_and_translate(
        &mut self,
        tx: &Transaction,
        lookup: Lookup,
    ) -> Result<Resolved, Fault> {
        let context = self.resolve(tx.sid, tx.ssid, lookup)?;
        self.translate_address(context, tx.address, lookup)
    }

    /// The permission check of a resolved translation (stage 1 first).
    fn check_permissions(resolved: &Resolved, access: Access) -> Result<(), Fault> {
        let cd = resolved.context.cd.map(|(cd, _)| cd);
        if !resolved
            .stage1
            .for_privilege(access.privileged)
            .allow(access)
        {
            return Err(Fault::translation(
                id::F_PERMISSION,
                Stage::One,
                class::IN,
                0,
                Disposition::stage1(cd.as_ref()),
            ));
        }
        if !resolved
            .stage2
            .for_privilege(access.privileged)
            .allow(access)
            && let Some(s2) = &resolved.context.ste.stage2
        {
            return Err(Fault::translation(
                id::F_PERMISSION,
                Stage::Two,
                class::IN,
                resolved.ipa.unwrap_or(0),
                Disposition::stage2(s2),
            ));
        }
        Ok(())
    }

    /// The generation memory holds for `(sid, ssid)` now, without touching the caches.
    pub(crate) fn live_generation(&mut self, sid: u32, ssid: Option<u32>) -> Option<Generation> {
        if !self.smmu_enabled() {
            return None;
        }
        self.resolve(sid, ssid, Lookup::Live)
            .ok()
            .and_then(|context| context.generation)
    }

    /// The event record of `fault` for `tx`.
    pub(crate) fn event_record(
        tx: &Transaction,
        fault: &Fault,
        stall_tag: Option<u16>,
    ) -> [u64; 4] {
        let has_access_fields = fault.translation_related || fault.id == id::F_WALK_EABT;
        let ssid = if fault.no_substream {
            None
        } else {
            fault.substream.or(tx.ssid)
        };
        EventFields {
            id: fault.id,
            sid: tx.sid,
            ssid,
            substream_always_valid: fault.substream.is_some(),
            stall_tag,
            privileged: tx.access.privileged,
            instruction: tx.access.exec,
            read: !tx.access.write,
            s2: fault.s2,
            class: fault.class,
            has_access_fields,
            input: if has_access_fields || fault.id == id::F_TRANSL_FORBIDDEN {
                tx.address
            } else {
                0
            },
            address2: fault.address2,
            address2_is_fetch: fault.address2_is_fetch,
        }
        .encode()
    }

    /// What a fault does to its transaction (IHI 0070 5.5): stall, or terminate with abort or
    /// RAZ/WI, recording the event as the fault model says.
    fn terminate(&mut self, tx: &Transaction, fault: &Fault, payload: Option<Vec<u8>>) -> Outcome {
        let d = fault.disposition;
        if d.stall
            && self.features().can_stall()
            && fault.translation_related
            && let Some(stag) = self.stall(tx, fault, payload)
        {
            return Outcome::Stalled { stag };
        }
        if d.record {
            let record = Self::event_record(tx, fault, None);
            self.write_event(record);
        }
        if d.abort {
            Outcome::Aborted { event: fault.id }
        } else {
            Outcome::RazWi { event: fault.id }
        }
    }

    /// An untranslated transaction (or a retried stalled one): the full translation, its
    /// event if it faults, and a trace entry. `payload` is kept if the transaction stalls (a
    /// write's data, so the retry can perform it).
    pub(crate) fn transaction(&mut self, tx: &Transaction, payload: Option<Vec<u8>>) -> Outcome {
        let live = self.live_generation(tx.sid, tx.ssid);
        let (outcome, tlb_hit, resolved_generation) = if self.smmu_enabled() {
            match self
                .resolve_and_translate(tx, Lookup::Cached)
                .and_then(|r| Self::check_permissions(&r, tx.access).map(|()| r))
            {
                Ok(r) => (Outcome::Completed { pa: r.pa }, r.tlb_hit, r.generation),
                Err(fault) => (self.terminate(tx, &fault, payload), false, None),
            }
        } else if self.regs.gbpa & (1 << 20) != 0 {
            (Outcome::Aborted { event: 0 }, false, None)
        } else {
            (Outcome::Completed { pa: tx.address }, false, None)
        };
        self.trace.push(TraceEvent::Transaction {
            sid: tx.sid,
            ssid: tx.ssid,
            address: tx.address,
            access: tx.access,
            result: result_of(outcome),
            tlb_hit,
            resolved: resolved_generation,
            live,
        });
        outcome
    }

    /// Records `fault` for an ATS-related request if SMMU_CR2.REC_CFG_ATS asks for it
    /// (IHI 0070 3.9.1.2).
    fn record_ats_configuration_fault(&mut self, tx: &Transaction, fault: &Fault) {
        let rec_cfg_ats = self.regs.cr2 & 0b1000 != 0;
        let record = match fault.id {
            id::C_BAD_STREAMID => rec_cfg_ats && self.regs.cr2 & 0b10 != 0,
            0 => false,
            _ => rec_cfg_ats,
        };
        if record {
            let event = Self::event_record(tx, fault, None);
            self.write_event(event);
        }
    }

    /// An ATS Translation Request (IHI 0070 3.9.1.2, 5.2 EATS).
    pub(crate) fn ats_translation(&mut self, tx: &Transaction) -> AtsCompletion {
        let bad_request = |state: &mut Self| {
            let fault = Fault::configuration(id::F_BAD_ATS_TREQ);
            let record = Self::event_record(tx, &fault, None);
            state.write_event(record);
            AtsCompletion::UnsupportedRequest
        };
        if !self.smmu_enabled() {
            return bad_request(self);
        }
        let ste = match self.fetch_ste(tx.sid, Lookup::Cached).and_then(|fetched| {
            decode_ste(fetched.raw, self.features(), self.regs.cr2 & 1 != 0)
                .map_err(|_| Fault::configuration(id::C_BAD_STE))
        }) {
            Ok(ste) => ste,
            Err(fault) => {
                self.record_ats_configuration_fault(tx, &fault);
                return AtsCompletion::CompleterAbort;
            }
        };
        match (ste.config, ste.eats) {
            // Config = abort: silently UR.
            (StreamConfig::Abort, _) => return AtsCompletion::UnsupportedRequest,
            (_, Eats::Disabled) => return bad_request(self),
            _ => {}
        }
        let resolved = match self.resolve_and_translate(tx, Lookup::Cached) {
            Ok(resolved) => resolved,
            Err(fault) if fault.translation_related => {
                return AtsCompletion::Success {
                    pa: 0,
                    read: false,
                    write: false,
                    exec: false,
                    generation: None,
                };
            }
            Err(fault) => {
                self.record_ats_configuration_fault(tx, &fault);
                return AtsCompletion::CompleterAbort;
            }
        };
        let p = resolved.access_permissions(tx.access.privileged);
        AtsCompletion::Success {
            pa: resolved.pa & !0xfff,
            read: p.read,
            write: tx.access.write && p.write,
            exec: tx.access.exec && p.exec,
            generation: resolved.generation,
        }
    }

    /// A transaction marked Translated (IHI 0070 3.9.1.3): it bypasses translation, checked
    /// against STE.EATS when SMMU_CR0.ATSCHK = 1.
    pub(crate) fn translated_transaction(&mut self, tx: &Transaction) -> Outcome {
        let forbidden = |state: &mut Self| {
            let fault = Fault::configuration(id::F_TRANSL_FORBIDDEN);
            let record = Self::event_record(tx, &fault, None);
            state.write_event(record);
            Outcome::Aborted {
                event: id::F_TRANSL_FORBIDDEN,
            }
        };
        if !self.smmu_enabled() || !self.features().ats {
            return forbidden(self);
        }
        if self.regs.cr0 & cr0::ATSCHK != 0 {
            let ste = self.fetch_ste(tx.sid, Lookup::Cached).and_then(|fetched| {
                decode_ste(fetched.raw, self.features(), self.regs.cr2 & 1 != 0)
                    .map_err(|_| Fault::configuration(id::C_BAD_STE))
            });
            match ste {
                Err(fault) => {
                    self.record_ats_configuration_fault(tx, &fault);
                    return Outcome::Aborted { event: fault.id };
                }
                Ok(ste) if ste.config == StreamConfig::Abort => {
                    return Outcome::Aborted { event: 0 };
                }
                Ok(ste) if ste.eats == Eats::Disabled => return forbidden(self),
                Ok(_) => {}
            }
        }
        if tx.address >> self.features().oas_bits() != 0 {
            return Outcome::Aborted { event: 0 };
        }
        Outcome::Completed { pa: tx.address }
    }
}

impl Resolved {
    /// What both stages together allow an access of this privilege.
    pub(crate) fn access_permissions(&self, privileged: bool) -> Permissions {
        self.stage1
            .for_privilege(privileged)
            .intersect(self.stage2.for_privilege(privileged))
    }
}

/// The trace's view of an outcome.
pub(crate) fn result_of(outcome: Outcome) -> TransactionResult {
    match outcome {
        Outcome::Completed { pa } => TransactionResult::Completed { pa },
        Outcome::Aborted { event } => TransactionResult::Aborted { event },
        Outcome::RazWi { event } => TransactionResult::RazWi { event },
        Outcome::Stalled { stag } => TransactionResult::Stalled { stag },
    }
}
