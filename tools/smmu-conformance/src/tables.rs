//! Translation tables and context descriptors the cases build in test pages: 4 KiB granule,
//! 39-bit input (levels 1 to 3) at both stages, written word by word through the harness, so
//! the same code works at EL2 and on the model.
//!
//! This module owns the descriptor formats the suite writes (VMSAv8-64 stage-1 and stage-2
//! page and table descriptors) and the page-table walk that places them. Next-level pointers
//! are written as physical addresses, or, for a stage 1 nested in stage 2, as the IPAs the
//! suite's stage 2 shows the table pages at ([`Addressing::Window`]).

use smmu::Asid;
use smmu::cd::Cd;
use smmu::entry::make::{
    ContextTable, ContextTableParameters, Mair, Stage1Parameters, Stage1Translation, TableAddress,
    make_cd,
};
use smmu::ste::{S1Dss, S1Fmt};
use smmu::translation::{AddressSize, Cacheability, Granule, Shareability};

use crate::harness::Harness;
use crate::suite::{CaseResult, IPA_WINDOW, PAGE, Stop, Suite};

/// How table pointers name test pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Addressing {
    /// By physical address.
    Physical,
    /// By the IPA the suite's stage 2 maps them at.
    Window,
}

/// What a stage-2 leaf allows (S2AP).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum S2Access {
    /// Read only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// What a stage-1 leaf allows (AP\[2:1\], for EL1 and EL0 alike).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum S1Access {
    /// Read only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// A table descriptor's type bits.
const TABLE: u64 = 0b11;
/// AF, inner shareable.
const AF_INNER: u64 = (1 << 10) | (0b11 << 8);
/// Stage-2 MemAttr: Normal, write-back.
const S2_NORMAL: u64 = 0b1111 << 2;
/// Stage-1 PXN and UXN: a device never executes.
const S1_XN: u64 = (1 << 53) | (1 << 54);
/// Stage-1 nG: the translation belongs to its ASID. Without it a leaf is global: its TLB
/// entries match every ASID and survive CMD_TLBI_NH_ASID, so two address spaces mapping the
/// same VA would share one translation.
const S1_NOT_GLOBAL: u64 = 1 << 11;
/// MAIR: index 0 Normal write-back (0xff), index 1 Device-nGnRE (0x04).
pub const MAIR: Mair = Mair(0x04ff);
/// Stage-1 input size: T0SZ = 25, 39-bit IOVAs from level 1.
pub const T0SZ: u8 = 25;

impl<H: Harness> Suite<'_, H> {
    /// The address a table pointer holds for page `index`.
    fn table_address(&self, index: usize, addressing: Addressing) -> u64 {
        match addressing {
            Addressing::Physical => self.pa(index),
            Addressing::Window => Self::ipa(index),
        }
    }

    /// The page a table pointer names.
    fn page_named(&self, address: u64, addressing: Addressing) -> Option<usize> {
        match addressing {
            Addressing::Physical => (0..self.h.page_count()).find(|&i| self.pa(i) == address),
            Addressing::Window => address
                .checked_sub(IPA_WINDOW)
                .and_then(|offset| usize::try_from(offset / PAGE).ok())
                .filter(|&i| i < self.h.page_count()),
        }
    }

    /// Writes `leaf` for `input` in the 3-level table rooted at page `root`, allocating the
    /// tables between.
    fn place(&mut self, root: usize, input: u64, leaf: u64, addressing: Addressing) -> CaseResult {
        let index = |shift: u32| usize::try_from((input >> shift) & 511).unwrap_or(0);
        let mut table = root;
        for shift in [30, 21] {
            let word = index(shift);
            let descriptor = self.h.read_word(table, word);
            table = if descriptor & TABLE == TABLE {
                self.page_named(descriptor & 0x0000_ffff_ffff_f000, addressing)
                    .ok_or(Stop::Fail("a table descriptor names no test page"))?
            } else {
                let next = self.allocate()?;
                let pointer = self.table_address(next, addressing);
                self.h.write_word(table, word, pointer | TABLE);
                next
            };
        }
        self.h.write_word(table, index(12), leaf);
        self.h.barrier();
        Ok(())
    }

    /// A fresh, empty table root.
    ///
    /// # Errors
    ///
    /// [`Stop::NotApplicable`] when the pages run out.
    pub fn new_table(&mut self) -> Result<usize, Stop> {
        self.allocate()
    }

    /// Maps the page at `ipa` to `pa` in the stage-2 table rooted at `root`.
    ///
    /// # Errors
    ///
    /// [`Stop::NotApplicable`] when the pages run out.
    pub fn map_stage2(&mut self, root: usize, ipa: u64, pa: u64, access: S2Access) -> CaseResult {
        let s2ap = match access {
            S2Access::ReadOnly => 0b01,
            S2Access::ReadWrite => 0b11,
        };
        let leaf = (pa & !0xfff) | TABLE | S2_NORMAL | (s2ap << 6) | AF_INNER;
        self.place(root, ipa, leaf, Addressing::Physical)
    }

    /// Removes the stage-2 leaf of `ipa` (the table stays).
    ///
    /// # Errors
    ///
    /// As [`Suite::map_stage2`].
    pub fn unmap_stage2(&mut self, root: usize, ipa: u64) -> CaseResult {
        self.place(root, ipa, 0, Addressing::Physical)
    }

    /// Maps every test page at its window IPA ([`Suite::ipa`]), read-write.
    ///
    /// # Errors
    ///
    /// As [`Suite::map_stage2`].
    pub fn map_window(&mut self, root: usize) -> CaseResult {
        for index in 0..self.h.page_count() {
            let pa = self.pa(index);
            self.map_stage2(root, Self::ipa(index), pa, S2Access::ReadWrite)?;
        }
        Ok(())
    }

    /// Maps the page at `va` to `output` in the stage-1 table rooted at `root`, naming tables
    /// as `addressing` says.
    ///
    /// # Errors
    ///
    /// As [`Suite::map_stage2`].
    pub fn map_stage1(
        &mut self,
        root: usize,
        va: u64,
        output: u64,
        access: S1Access,
        addressing: Addressing,
    ) -> CaseResult {
        let ap = match access {
            S1Access::ReadWrite => 0b01,
            S1Access::ReadOnly => 0b11,
        };
        let leaf = (output & !0xfff) | TABLE | (ap << 6) | AF_INNER | S1_NOT_GLOBAL | S1_XN;
        self.place(root, va, leaf, addressing)
    }

    /// A valid CD for the stage-1 tables rooted at `root` (named as `addressing` says), with
    /// `asid`, as `smmu::entry::make` makes it (A = 1, R = 1, S = 0).
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`] if make refuses it.
    pub fn make_cd(&mut self, root: usize, asid: Asid, addressing: Addressing) -> Result<Cd, Stop> {
        let features = *self.h.driver().features();
        let ttb0 = self.table_address(root, addressing);
        fn parameters<A>(asid: Asid, ttb0: A) -> Stage1Parameters<A> {
            Stage1Parameters {
                asid,
                ttb0,
                t0sz: T0SZ,
                tg0: Granule::Size4K,
                ir0: Cacheability::WriteBackWriteAllocate,
                or0: Cacheability::WriteBackWriteAllocate,
                sh0: Shareability::InnerShareable,
                ips: AddressSize::Bits44,
                mair: MAIR,
            }
        }
        let cd = match addressing {
            Addressing::Physical => {
                Stage1Translation::new(parameters(asid, smmu::PhysAddr(ttb0)), &features)
                    .map(|t| make_cd(&t))
            }
            Addressing::Window => {
                Stage1Translation::new(parameters(asid, smmu::Ipa(ttb0)), &features)
                    .map(|t| make_cd(&t))
            }
        };
        cd.map_err(|_| Stop::Fail("the CD was refused by make"))
    }

    /// A CD table description for the table at page `table` (named as `addressing` says).
    ///
    /// # Errors
    ///
    /// [`Stop::NotApplicable`] if make refuses it for this SMMU (substreams or two-level CD
    /// tables it does not have).
    pub fn context_table<A: TableAddress>(
        &mut self,
        pointer: A,
        s1fmt: S1Fmt,
        s1cdmax: u8,
        s1dss: S1Dss,
    ) -> Result<ContextTable<A>, Stop> {
        let features = *self.h.driver().features();
        ContextTable::new(
            ContextTableParameters {
                s1context_ptr: pointer,
                s1fmt,
                s1cdmax,
                s1dss,
                s1cir: Cacheability::WriteBackWriteAllocate,
                s1cor: Cacheability::WriteBackWriteAllocate,
                s1csh: Shareability::InnerShareable,
            },
            &features,
        )
        .map_err(|_| Stop::NotApplicable("the SMMU does not support this CD table"))
    }
}
