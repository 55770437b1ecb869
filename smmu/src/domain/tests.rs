//! Stage-2 domains against real `aarch64-paging` tables and the behavioural fake SMMU.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::cell::Cell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::{RwLock, RwLockReadGuard};

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{MemoryRegion, PageTable, Translation};
use proptest::prelude::*;

use super::invalidate::{Plan, plan};
use super::*;
use crate::PhysRange;
use crate::command::{Cmd, Command, TlbiGranule, TlbiScope};
use crate::driver::fake::{FakeBus, FakePlatform, FakeRegion, FakeSmmu};
use crate::driver::{Driver, DriverConfig, DriverMemory, Error as DriverError};
use crate::entry::make::{Stage2Translation, make_stage2_ste};
use crate::registers::IdRegisters;
use crate::ste::{Ste, StreamConfig};

// ---------------------------------------------------------------------------------------------
// Rig.

/// Tables from the heap; a table's address is its "physical" address. Counts allocations and
/// frees (a free would mean a table the SMMU may still walk was handed back).
#[derive(Clone, Default)]
struct HeapTables {
    allocated: Rc<Cell<usize>>,
    freed: Rc<Cell<usize>>,
}

impl Translation<Stage2Attributes> for HeapTables {
    fn allocate_table(&mut self) -> (NonNull<PageTable<Stage2Attributes>>, PhysicalAddress) {
        self.allocated.set(self.allocated.get() + 1);
        let table = NonNull::from(Box::leak(Box::new(PageTable::EMPTY)));
        (table, PhysicalAddress(table.as_ptr().expose_provenance()))
    }

    unsafe fn deallocate_table(&mut self, _table: NonNull<PageTable<Stage2Attributes>>) {
        // Counted, and leaked: tests must see zero.
        self.freed.set(self.freed.get() + 1);
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<Stage2Attributes>> {
        NonNull::new(std::ptr::with_exposed_provenance_mut(pa.0)).unwrap()
    }
}

type TestDriver = Driver<FakeSmmu, FakeRegion, FakePlatform>;
type Domain = Stage2Domain<HeapTables>;

const BUS: u64 = 0x4000_0000;
const CMDQ_ENTRIES: usize = 256;

/// QEMU `virt` without IDR3.RIL.
const NO_RIL: IdRegisters = IdRegisters {
    idr3: IdRegisters::QEMU_VIRT.idr3 & !(1 << 10),
    ..IdRegisters::QEMU_VIRT
};

/// QEMU `virt` without IDR0.VMID16.
const VMID8: IdRegisters = IdRegisters {
    idr0: IdRegisters::QEMU_VIRT.idr0 & !(1 << 18),
    ..IdRegisters::QEMU_VIRT
};

fn smmu(ids: IdRegisters) -> (FakeSmmu, TestDriver) {
    let bus = FakeBus::new(PhysAddr(BUS), 0x5_0000);
    let fake = FakeSmmu::new(ids, &bus);
    let memory = DriverMemory {
        stream_table_l1: bus.region(PhysAddr(BUS), 256 * 8),
        stream_table_l2_pool: bus.region(PhysAddr(BUS + 0x1_0000), 2 * 256 * 64),
        command_queue: bus.region(PhysAddr(BUS + 0x4_0000), CMDQ_ENTRIES * 16),
        event_queue: bus.region(PhysAddr(BUS + 0x4_1000), 8 * 32),
        pri_queue: None,
    };
    let driver = Driver::new(
        fake.clone(),
        memory,
        FakePlatform::default(),
        DriverConfig::DEFAULT,
    )
    .unwrap();
    (fake, driver)
}

/// The commands the fake consumed from index `from` on, decoded.
fn commands_since(fake: &FakeSmmu, from: usize) -> Vec<Cmd> {
    fake.consumed()[from..]
        .iter()
        .map(|c| c.decode().unwrap())
        .collect()
}

const SYNC: Cmd = Cmd::Sync {
    completion: crate::command::SyncCompletion::None,
    msh: 0,
    msi_attr: 0,
    msi_data: 0,
    msi_addr: PhysAddr(0),
};

fn is_sync(cmd: &Cmd) -> bool {
    matches!(cmd, Cmd::Sync { .. })
}

const VMID: Vmid = Vmid(5);
const PAGE: u64 = PAGE_SIZE;
/// Physical memory the pin table covers: 64 pages from here.
const RAM: u64 = 0x8000_0000;
const RAM_PAGES: usize = 64;
const BUDGET: u64 = 2048;

fn config(usage: Stage2Use) -> DomainConfig {
    DomainConfig {
        vmid: VMID,
        geometry: Stage2Geometry::QEMU_VIRT,
        walk: WalkAttributes::COHERENT,
        usage,
        record_faults: true,
        max_pages_per_call: BUDGET,
    }
}

fn domain() -> (HeapTables, Domain) {
    domain_with(config(Stage2Use::Stage2Only))
}

fn domain_with(config: DomainConfig) -> (HeapTables, Domain) {
    let tables = HeapTables::default();
    let domain = Stage2Domain::new(tables.clone(), config).unwrap();
    (tables, domain)
}

fn storage() -> Vec<u16> {
    vec![0xdead; RAM_PAGES]
}

fn pin_table(storage: &mut [u16]) -> PinTable<'_> {
    PinTable::new(PhysAddr(RAM), storage, BUDGET).unwrap()
}

fn ram(page: u64) -> PhysAddr {
    PhysAddr(RAM + page * PAGE)
}

fn pins_of(pins: &PinTable<'_>, page: u64) -> u16 {
    match pins.state(ram(page)) {
        Some(PageState::Pinned(n)) => n,
        other => panic!("page {page}: {other:?}"),
    }
}

/// Every completion in these tests depends on no other test having reported a command
/// failure in between (a global condition, by design); the test that provokes one takes the
/// lock exclusively.
static FAILURES: RwLock<()> = RwLock::new(());

fn no_failures() -> RwLockReadGuard<'static, ()> {
    FAILURES
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every level-3 descriptor of `[ipa, ipa + pages)`, as (ipa, pa, flags, valid).
fn leaves(domain: &Domain, ipa: u64, pages: u64) -> Vec<(u64, u64, Stage2Attributes, bool)> {
    let mut found = Vec::new();
    let region = MemoryRegion::new(ipa as usize, (ipa + pages * PAGE) as usize);
    domain
        .mapping()
        .walk_range(&region, &mut |chunk, descriptor, level| {
            if level == 3 {
                found.push((
                    chunk.start().0 as u64,
                    descriptor.output_address().0 as u64,
                    descriptor.flags(),
                    descriptor.is_valid(),
                ));
            }
            Ok(())
        })
        .unwrap();
    found
}

/// Unmaps, invalidates, syncs and completes.
fn unmap_fully(
    domain: &mut Domain,
    pins: &mut PinTable<'_>,
    driver: &mut TestDriver,
    ipa: u64,
    pages: u64,
) {
    let mut pending = domain.unmap(Ipa(ipa), pages * PAGE).unwrap();
    pending.invalidate(driver).unwrap();
    let proof = driver.sync_with_proof().unwrap();
    domain.complete(pins, pending, &proof).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Geometry and STE fields.

#[test]
fn start_levels_match_ipa_sizes_without_concatenation() {
    let cases: [(u8, u8, bool); 12] = [
        (48, 0, true),
        (44, 0, true),
        (40, 0, true),
        (39, 0, false),
        (39, 1, true),
        (31, 1, true),
        (30, 1, false),
        (30, 2, true),
        (25, 2, true),
        (24, 2, false),
        (49, 0, false),
        (44, 3, false),
    ];
    for (bits, level, ok) in cases {
        let geometry = Stage2Geometry::new(bits, level, AddressSize::Bits44);
        assert_eq!(geometry.is_ok(), ok, "{bits} bits from level {level}");
        if ok {
            assert_eq!(
                Stage2Geometry::for_ipa_bits(bits, AddressSize::Bits44),
                geometry
            );
        }
    }
    let g = Stage2Geometry::QEMU_VIRT;
    assert_eq!((g.t0sz(), g.s2sl0()), (20, StartLevel::Level0));
    let g = Stage2Geometry::new(39, 1, AddressSize::Bits40).unwrap();
    assert_eq!((g.t0sz(), g.s2sl0()), (25, StartLevel::Level1));
    let g = Stage2Geometry::new(30, 2, AddressSize::Bits40).unwrap();
    assert_eq!((g.t0sz(), g.s2sl0()), (34, StartLevel::Level2));
}

#[test]
fn geometry_is_checked_against_the_smmu() {
    let qemu = Features::decode(&IdRegisters::QEMU_VIRT).unwrap();
    assert_eq!(Stage2Geometry::QEMU_VIRT.check(&qemu), Ok(()));
    let wide = Stage2Geometry::new(48, 0, AddressSize::Bits44).unwrap();
    assert_eq!(
        wide.check(&qemu),
        Err(GeometryError::IpaBeyondOas {
            ipa_bits: 48,
            oas_bits: 44
        })
    );
    let big_output = Stage2Geometry::new(40, 0, AddressSize::Bits48).unwrap();
    assert!(matches!(
        big_output.check(&qemu),
        Err(GeometryError::OutputBeyondOas { .. })
    ));
}

/// QEMU `virt` with a 48-bit OAS: the rig's tables live on the host heap, whose addresses
/// (their "physical" addresses) need 47 bits, and the maker refuses an S2TTB beyond S2PS.
const OAS48: IdRegisters = IdRegisters {
    idr5: IdRegisters::QEMU_VIRT.idr5 & !0b111 | 0b101,
    ..IdRegisters::QEMU_VIRT
};

/// [`config`] with a 48-bit output size (see [`OAS48`]), IPA size and start level kept.
fn config_oas48(usage: Stage2Use) -> DomainConfig {
    DomainConfig {
        geometry: Stage2Geometry::new(44, 0, AddressSize::Bits48).unwrap(),
        ..config(usage)
    }
}

/// The STE `smmu::entry::make` makes from a domain's parameters, for an [`OAS48`] SMMU.
fn stage2_ste_of(domain: &Domain) -> Ste {
    let features = Features::decode(&OAS48).unwrap();
    make_stage2_ste(&Stage2Translation::new(domain.stage2_parameters(), &features).unwrap())
}

#[test]
fn the_stage2_ste_made_for_a_domain_reads_back_its_geometry_and_root() {
    let (_, domain) = domain_with(config_oas48(Stage2Use::Stage2Only));
    let ste = stage2_ste_of(&domain);
    assert!(ste.v());
    assert_eq!(ste.config(), StreamConfig::Stage2);
    assert_eq!(ste.s2vmid(), VMID);
    assert_eq!(ste.s2t0sz(), 20);
    assert_eq!(ste.s2sl0(), 2);
    assert_eq!(ste.s2tg(), Ok(Granule::Size4K));
    assert_eq!(ste.s2ps(), Ok(AddressSize::Bits48));
    assert_eq!(ste.s2ir0(), Cacheability::WriteBackWriteAllocate);
    assert_eq!(ste.s2or0(), Cacheability::WriteBackWriteAllocate);
    assert_eq!(ste.s2sh0(), Ok(Shareability::InnerShareable));
    assert!(ste.s2aa64());
    assert!(!ste.s2endi());
    assert!(ste.s2r());
    assert!(!ste.s2affd());
    assert!(!ste.s2ptw());
    assert_eq!(ste.s2ttb(), domain.root());
    assert!(domain.root().is_aligned(4096));
}

#[test]
fn domain_configuration_reaches_s2r_and_s2ptw() {
    let cases = [
        (Stage2Use::Stage2Only, false, false),
        (Stage2Use::Stage2Only, true, false),
        (Stage2Use::NestingParent, false, true),
        (Stage2Use::NestingParent, true, true),
    ];
    for (usage, record_faults, s2ptw) in cases {
        let (_, domain) = domain_with(DomainConfig {
            record_faults,
            ..config_oas48(usage)
        });
        let ste = stage2_ste_of(&domain);
        assert_eq!(ste.s2r(), record_faults, "{usage:?}");
        assert_eq!(ste.s2ptw(), s2ptw, "{usage:?}");
    }
}

#[test]
fn every_geometry_the_smmu_supports_makes_a_valid_stage2_ste() {
    // (IPA bits, start level, S2SL0 encoding).
    let cases: [(u8, u8, u8); 7] = [
        (48, 0, 2),
        (44, 0, 2),
        (40, 0, 2),
        (39, 1, 1),
        (31, 1, 1),
        (30, 2, 0),
        (25, 2, 0),
    ];
    let features = Features::decode(&OAS48).unwrap();
    for (bits, level, s2sl0) in cases {
        let geometry = Stage2Geometry::new(bits, level, AddressSize::Bits48).unwrap();
        assert_eq!(geometry.check(&features), Ok(()));
        let (_, domain) = domain_with(DomainConfig {
            geometry,
            ..config(Stage2Use::Stage2Only)
        });
        let translation = Stage2Translation::new(domain.stage2_parameters(), &features);
        let ste = make_stage2_ste(&translation.unwrap());
        assert_eq!(
            (ste.s2t0sz(), ste.s2sl0(), ste.s2ttb()),
            (64 - bits, s2sl0, domain.root()),
            "{bits} bits from level {level}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Map and unmap walk the real table.

#[test]
fn map_writes_page_descriptors_with_the_asked_attributes() {
    let (_, mut domain) = domain();
    let mut storage = storage();
    let mut pins = pin_table(&mut storage);
    domain
        .map(&mut pins, Ipa(0x1_0000), ram(4), 3 * PAGE, Permissions::RAM)
        .unwrap();
    domain
        .map(
            &mut pins,
            Ipa(0x2_0000),
            ram(9),
            PAGE,
            Permissions::DOORBELL,
        )
        .unwrap();

    let ram_leaves = leaves(&domain, 0x1_0000, 3);
    assert_eq!(ram_leaves.len(), 3);
    for (i, (ipa, pa, flags, valid)) in ram_leaves.into_iter().enumerate() {
        let i = i as u64;
        assert_eq!(ipa, 0x1_0000 + i * PAGE);
        assert_eq!(pa, ram(4 + i).0);
        assert!(valid);
        assert_eq!(
            flags,
            Permissions::RAM.attributes() | Stage2Attributes::TABLE_OR_PAGE
        );
        assert!(flags.contains(Stage2Attributes::XN | Stage2Attributes::ACCESS_FLAG));
    }
    let (_, pa, flags, _) = leaves(&domain, 0x2_0000, 1)[0];
    assert_eq!(pa, ram(9).0);
    assert!(flags.contains(Stage2Attributes::S2AP_ACCESS_WO));
    assert!(!flags.contains(Stage2Attributes::S2AP_ACCESS_RO));
    assert!(flags.contains(Stage2Attributes::MEMATTR_DEVICE_nGnRE));
    // Neighbours are untouched.
    assert_eq!(domain.translate(Ipa(0x1_0000 - PAGE)), None);
    assert_eq!(domain.translate(Ipa(0x1_3000)), None);
    assert_eq!(
        domain.translate(Ipa(0x1_2abc)).map(|t| t.0),
        Some(PhysAddr(ram(6).0 + 0xabc))
    );
    assert_eq!(domain.mapped_pages(), 4);
    for (page, count) in [(3, 0), (4, 1), (5, 1), (6, 1), (7, 0), (9, 1)] {
        assert_eq!(pins_of(&pins, page), count, "page {page}");
    }
}

#[test]
fn unmap_invalidates_descriptors_but_keeps_pages_pinned_until_completion() {
    let _guard = no_failures();
    let (_, mut driver) = smmu(IdRegisters::QEMU_VIRT);
    let (tables, mut domain) = domain();
    let mut storage = storage();
    let mut pins = pin_table(&mut storage);
    domain
        .map(
            &mut pins,
            Ipa(0x20_0000),
            ram(0),
            4 * PAGE,
            Permissions::RAM,
        )
        .unwrap();
    let mut pending = domain.unmap(Ipa(0x20_1000), 2 * PAGE).unwrap();
    for (ipa, _, _, valid) in leaves(&domain, 0x20_0000, 4) {
        let inside = (0x20_1000..0x20_3000).contains(&ipa);
        assert_eq!(valid, !inside, "{ipa:#x}");
    }
    assert_eq!(domain.translate(Ipa(0x20_1000)), None);
    assert_eq!((pins_of(&pins, 1), pins_of(&pins, 2)), (1, 1));
    assert_eq!((domain.mapped_pages(), domain.pending_pages()), (2, 2));

    pending.invalidate(&mut driver).unwrap();
    let proof = driver.sync_with_proof().unwrap();
    let unpinned = domain.complete(&mut pins, pending, &proof).unwrap();
    assert_eq!(
        unpinned,
        Unpinned {
            ipa: Ipa(0x20_1000),
            pages: 2
        }
    );
    assert_eq!(
        (pins_of(&pins, 0), pins_of(&pins, 1), pins_of(&pins, 2)),
        (1, 0, 0)
    );
    assert!(
        leaves(&domain, 0x20_1000, 2)
            .iter()
            .all(|l| l.1 == 0 && l.2.is_empty())
    );
    assert_eq!((domain.mapped_pages(), domain.pending_pages()), (2, 0));
    // The IPAs are free again.
    domain
        .map(&mut pins, Ipa(0x20_1000), ram(7), PAGE, Permissions::RAM)
        .unwrap();
    // Unmapping a whole 2 MiB table's worth never hands a table back.
    domain
        .map(
            &mut pins,
            Ipa(0x40_0000),
            ram(10),
            16 * PAGE,
            Permissions::RAM,
        )
        .unwrap();
    unmap_fully(&mut domain, &mut pins, &mut driver, 0x40_0000, 16);
    assert_eq!(tables.freed.get(), 0);
}

// ---------------------------------------------------------------------------------------------
// Edge cases: each refused, nothing changed.

#[test]
fn bad_ranges_are_refused_with_specific_errors() {
    let (_, mut domain) = domain();
    let mut storage = storage();
    let mut pins = pin_table(&mut storage);
    let limit = Stage2Geometry::QEMU_VIRT.ipa_limit();
    let cases: [(u64, u64, u64, DomainError); 9] = [
        (0x1000, RAM, 0, DomainError::EmptyRange),
        (0x1800, RAM, PAGE, DomainError::MisalignedIpa(Ipa(0x1800))),
        (
            0x1000,
            RAM + 8,
            PAGE,
            DomainError::MisalignedPhysical(PhysAddr(RAM + 8)),
        ),
        (0x1000, RAM, PAGE + 1, DomainError::MisalignedSize(PAGE + 1)),
        (
            0x1000,
            RAM,
            (BUDGET + 1) * PAGE,
            DomainError::TooLarge {
                pages: BUDGET + 1,
                budget: BUDGET,
            },
        ),
        (u64::MAX - 0xfff, RAM, PAGE, DomainError::AddressOverflow),
        (
            limit - PAGE,
            RAM,
            2 * PAGE,
            DomainError::BeyondIpaSize { end: limit + PAGE },
        ),
        (
            0x1000,
            (1 << 44) - PAGE,
            2 * PAGE,
            DomainError::BeyondOutputSize {
                end: (1 << 44) + PAGE,
            },
        ),
        (
            0x1000,
            u64::MAX - 0xfff,
            2 * PAGE,
            DomainError::AddressOverflow,
        ),
    ];
    for (ipa, pa, size, error) in cases {
        assert_eq!(
            domain.map(&mut pins, Ipa(ipa), PhysAddr(pa), size, Permissions::RAM),
            Err(error),
            "map {ipa:#x} -> {pa:#x} size {size:#x}"
        );
    }
    for (ipa, size, error) in [
        (0x1000, 0, DomainError::EmptyRange),
        (0x1001, PAGE, DomainError::MisalignedIpa(Ipa(0x1001))),
        (
            limit,
            PAGE,
            DomainError::BeyondIpaSize { end: limit + PAGE },
        ),
        (u64::MAX - 0xfff, PAGE, DomainError::AddressOverflow),
    ] {
        assert_eq!(domain.unmap(Ipa(ipa), size).err(), Some(error));
    }
    assert_eq!(domain.mapped_pages(), 0);
    assert!((0..RAM_PAGES as u64).all(|p| pins_of(&pins, p) == 0));
}

#[test]
fn overlapping_maps_and_unmaps_of_unmapped_pages_change_nothing() {
    let _guard = no_failures();
    let (_, mut driver) = smmu(IdRegisters::QEMU_VIRT);
    let (_, mut domain) = domain();
    let mut storage = storage();
    let mut pins = pin_table(&mut storage);
    domain
        .map(&mut pins, Ipa(0x4000), ram(0), 2 * PAGE, Permissions::RAM)
        .unwrap();
    let before = leaves(&domain, 0, 16);

    // Any overlap, even one page at either end, is refused before pinning.
    for ipa in [0x2000, 0x5000, 0x4000] {
        assert_eq!(
            domain.map(&mut pins, Ipa(ipa), ram(8), 3 * PAGE, Permissions::RAM),
            Err(DomainError::Overlap {
                ipa: Ipa(ipa.max(0x4000))
            })
        );
    }
    // Unmap of nothing, or of a range only partly mapped: refused, nothing unmapped.
    assert_eq!(
        domain.unmap(Ipa(0x8000), PAGE).err(),
        Some(DomainError::NotMapped { ipa: Ipa(0x8000) })
    );
    assert_eq!(
        domain.unmap(Ipa(0x4000), 3 * PAGE).err(),
        Some(DomainError::NotMapped { ipa: Ipa(0x6000) })
    );
    assert_eq!(
        domain.unmap(Ipa(0x3000), 2 * PAGE).err(),
        Some(DomainError::NotMapped { ipa: Ipa(0x3000) })
    );
    assert_eq!(leaves(&domain, 0, 16), before);
    assert_eq!(
        (pins_of(&pins, 0), pins_of(&pins, 1), pins_of(&pins, 8)),
        (1, 1, 0)
    );

    // A pending unmap keeps its IPAs: no remap, no second unmap.
    let mut pending = domain.unmap(Ipa(0x4000), PAGE).unwrap();
    assert_eq!(
        domain.map(&mut pins, Ipa(0x4000), ram(8), PAGE, Permissions::RAM),
        Err(DomainError::Overlap { ipa: Ipa(0x4000) })
    );
    assert_eq!(
        domain.unmap(Ipa(0x4000), 2 * PAGE).err(),
        Some(DomainError::UnmapInProgress { ipa: Ipa(0x4000) })
    );
    pending.invalidate(&mut driver).unwrap();
    let proof = driver.sync_with_proof().unwrap();
    domain.complete(&mut pins, pending, &proof).unwrap();
    assert_eq!(domain.mapped_pages(), 1);
}

#[test]
fn pins_outside_the_table_released_or_at_the_limit_refuse_the_whole_map() {
    let (_, mut domain) = domain();
    let mut storage = storage();
    let mut pins = pin_table(&mut storage);
    let last = RAM_PAGES as u64 - 1;
    // The range runs one page past the table: nothing pinned, nothing mapped.
    assert_eq!(
        domain.map(
            &mut pins,
            Ipa(0x1000),
            ram(last),
            2 * PAGE,
            Permissions::RAM
        ),
        Err(DomainError::Pin(PinError::OutsideTable {
            page: ram(last + 1)
        }))
    );
    assert_eq!(
        domain.map(
            &mut pins,
            Ipa(0x1000),
            PhysAddr(RAM - PAGE),
            PAGE,
            Permissions::RAM
        ),
        Err(DomainError::Pin(PinError::OutsideTable {
            page: PhysAddr(RAM - PAGE)
        }))
    );
    assert_eq!(pins_of(&pins, last), 0);

    pins.release(PhysRange::new(ram(3).0, PAGE)).unwrap();
    assert_eq!(
        domain.map(&mut pins, Ipa(0x1000), ram(2), 2 * PAGE, Permissions::RAM),
        Err(DomainError::Pin(PinError::Released { page: ram(3) }))
    );
    assert_eq!(pins_of(&pins, 2), 0);

    // Page 6 at the limit: a map of pages 5..=6 pins neither.
    for _ in 0..MAX_PINS {
        pins.pin(ram(6), 1).unwrap();
    }
    assert_eq!(
        domain.map(&mut pins, Ipa(0x1000), ram(5), 2 * PAGE, Permissions::RAM),
        Err(DomainError::Pin(PinError::CountOverflow { page: ram(6) }))
    );
    assert_eq!((pins_of(&pins, 5), pins_of(&pins, 6)), (0, MAX_PINS));
    assert!(leaves(&domain, 0, 4).iter().all(|l| !l.3));
    assert_eq!(domain.mapped_pages(), 0);
}

// ---------------------------------------------------------------------------------------------
// The commands an unmap costs.

fn s2_ipa(addr: u64, scope: TlbiScope) -> Cmd {
    Cmd::TlbiS2Ipa {
        vmid: VMID,
        scope,
        addr: Ipa(addr),
    }
}

fn range_scope(num: u8, scale: u8) -> TlbiScope {
    TlbiScope {
        num,
        scale,
        leaf: true,
        ttl: 3,
        granule: TlbiGranule::Size4K,
    }
}

const SINGLE: TlbiScope = TlbiScope {
    num: 0,
    scale: 0,
    leaf: true,
    ttl: 0,
    granule: TlbiGranule::Unspecified,
};

/// Maps `pages` pages at `ipa` (the pin table wraps around), unmaps them, invalidates and
/// syncs; returns the commands the invalidation and sync issued.
fn unmap_commands(ids: IdRegisters, usage: Stage2Use, ipa: u64, pages: u64) -> Vec<Cmd> {
    let _guard = no_failures();
    let (fake, mut driver) = smmu(ids);
    let (_, mut domain) = domain_with(config(usage));
    let mut storage = vec![0; 4096];
    let mut pins = PinTable::new(PhysAddr(RAM), &mut storage, BUDGET).unwrap();
    domain
        .map(&mut pins, Ipa(ipa), ram(0), pages * PAGE, Permissions::RAM)
        .unwrap();
    let mut pending = domain.unmap(Ipa(ipa), pages * PAGE).unwrap();
    let from = fake.consumed().len();
    pending.invalidate(&mut driver).unwrap();
    let proof = driver.sync_with_proof().unwrap();
    domain.complete(&mut pins, pending, &proof).unwrap();
    commands_since(&fake, from)
}

fn without_sync_details(commands: Vec<Cmd>) -> Vec<Cmd> {
    commands
        .into_iter()
        .map(|c| if is_sync(&c) { SYNC } else { c })
        .collect()
}

#[test]
fn one_page_without_ril_is_one_tlbi_s2_ipa_and_a_sync() {
    assert_eq!(
        without_sync_details(unmap_commands(NO_RIL, Stage2Use::Stage2Only, 0x7000, 1)),
        vec![s2_ipa(0x7000, SINGLE), SYNC]
    );
}

#[test]
fn one_page_with_ril_is_one_range_command_of_one_page_and_a_sync() {
    assert_eq!(
        without_sync_details(unmap_commands(
            IdRegisters::QEMU_VIRT,
            Stage2Use::Stage2Only,
            0x7000,
            1
        )),
        vec![s2_ipa(0x7000, range_scope(0, 0)), SYNC]
    );
}

#[test]
fn a_large_range_with_ril_is_split_into_num_and_scale_chunks() {
    // 291 pages = 0b1_0010_0011: 3 pages (NUM 2, SCALE 0), then 9 chunks of 32 (NUM 8,
    // SCALE 5) from 3 pages further on.
    let ipa = 0x10_0000;
    assert_eq!(
        without_sync_details(unmap_commands(
            IdRegisters::QEMU_VIRT,
            Stage2Use::Stage2Only,
            ipa,
            291
        )),
        vec![
            s2_ipa(ipa, range_scope(2, 0)),
            s2_ipa(ipa + 3 * PAGE, range_scope(8, 5)),
            SYNC
        ]
    );
    // 1024 pages: one command, one chunk of 2^10.
    assert_eq!(
        without_sync_details(unmap_commands(
            IdRegisters::QEMU_VIRT,
            Stage2Use::Stage2Only,
            ipa,
            1024
        )),
        vec![s2_ipa(ipa, range_scope(0, 10)), SYNC]
    );
}

#[test]
fn without_ril_small_ranges_go_page_by_page_and_large_ones_by_vmid() {
    let ipa = 0x30_0000;
    let mut expected: Vec<Cmd> = (0..PER_PAGE_LIMIT)
        .map(|page| s2_ipa(ipa + page * PAGE, SINGLE))
        .collect();
    expected.push(SYNC);
    assert_eq!(
        without_sync_details(unmap_commands(
            NO_RIL,
            Stage2Use::Stage2Only,
            ipa,
            PER_PAGE_LIMIT
        )),
        expected
    );
    assert_eq!(
        without_sync_details(unmap_commands(
            NO_RIL,
            Stage2Use::Stage2Only,
            ipa,
            PER_PAGE_LIMIT + 1
        )),
        vec![Cmd::TlbiS12Vmall { vmid: VMID }, SYNC]
    );
}

#[test]
fn a_nesting_parent_also_invalidates_stage1_after_a_sync() {
    assert_eq!(
        without_sync_details(unmap_commands(
            IdRegisters::QEMU_VIRT,
            Stage2Use::NestingParent,
            0x7000,
            2
        )),
        vec![
            // Two pages: one chunk of 2^1 (Linux's split).
            s2_ipa(0x7000, range_scope(0, 1)),
            SYNC,
            Cmd::TlbiNhAll { vmid: VMID },
            SYNC
        ]
    );
}

#[test]
fn wide_vmids_are_refused_on_an_smmu_with_8_bit_vmids() {
    let (_, mut driver) = smmu(VMID8);
    assert_eq!(
        driver.invalidate_vmid(Vmid(0x100)).err(),
        Some(InvalidationError::VmidTooWide(Vmid(0x100)))
    );
    assert!(driver.invalidate_vmid(Vmid(0xff)).is_ok());
}

/// The range commands `plan` makes for `pages` pages, as (first page, pages) each.
fn planned_ranges(pages: u64, leaf: bool) -> Option<Vec<(u64, u64)>> {
    match plan(VMID, 0, pages, leaf, true) {
        Plan::Ranges { commands, count } => Some(
            commands[..count]
                .iter()
                .map(|c| match c {
                    Cmd::TlbiS2Ipa { scope, addr, .. } => {
                        assert!(scope.num <= 31 && scope.scale <= 31);
                        assert_eq!(scope.granule, TlbiGranule::Size4K);
                        assert_eq!(scope.ttl, if leaf { 3 } else { 0 });
                        (addr.0 / PAGE, (u64::from(scope.num) + 1) << scope.scale)
                    }
                    other => panic!("{other:?}"),
                })
                .collect(),
        ),
        _ => None,
    }
}

proptest! {
    /// Range commands tile the range exactly, in order, in at most 13 commands. (From 2^32
    /// pages, 16 TiB, a chunk may need SCALE > 31 and the plan falls back to the VMID.)
    #[test]
    fn range_commands_tile_the_range_exactly(pages in 1u64..(1 << 32)) {
        let ranges = planned_ranges(pages, true).unwrap();
        prop_assert!(ranges.len() <= 13);
        let mut next = 0;
        for (first, count) in ranges {
            prop_assert_eq!(first, next);
            next += count;
        }
        prop_assert_eq!(next, pages);
    }

    /// Beyond what SCALE can express, the whole VMID is invalidated.
    #[test]
    fn ranges_beyond_scale_fall_back_to_the_vmid(high in 32u32..40, low in 0u64..(1 << 20)) {
        let pages = (1u64 << high) | low;
        prop_assert_eq!(plan(VMID, 0, pages, true, true), Plan::WholeVmid);
    }

    /// Non-leaf ranges never use NUM = SCALE = 0 and cover at least the range.
    #[test]
    fn non_leaf_ranges_avoid_the_single_page_encoding(pages in 1u64..4096) {
        let ranges = planned_ranges(pages, false).unwrap();
        prop_assert!(ranges.iter().all(|&(_, count)| count > 1 || pages > 1));
        let covered: u64 = ranges.iter().map(|r| r.1).sum();
        prop_assert!(covered == pages || covered == pages + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Release and the proof.

#[test]
fn a_mapped_page_stays_busy_until_a_fresh_proof_completes_its_unmap() {
    let _guard = no_failures();
    let (_, mut driver) = smmu(IdRegisters::QEMU_VIRT);
    let (_, mut domain) = domain();
    let mut storage = storage();
    let mut pins = pin_table(&mut storage);
    let page = PhysRange::new(ram(3).0, PAGE);
    domain
        .map(&mut pins, Ipa(0x9000), ram(3), PAGE, Permissions::RAM)
        .unwrap();
    let busy = Err(PinError::Busy { page: ram(3) });
    assert_eq!(pins.release(page), busy);
    assert_eq!(pins.reassign(PhysRange::new(ram(0).0, 8 * PAGE)), busy);

    let stale = driver.sync_with_proof().unwrap();
    let mut pending = domain.unmap(Ipa(0x9000), PAGE).unwrap();
    assert_eq!(pins.release(page), busy, "after unmap, before completion");

    // Never invalidated: refused, even with a proof taken after the unmap.
    let later = driver.sync_with_proof().unwrap();
    let refused = domain.complete(&mut pins, pending, &later).unwrap_err();
    assert_eq!(refused.reason, CompletionError::NotInvalidated);
    pending = refused.pending;

    pending.invalidate(&mut driver).unwrap();
    assert_eq!(pins.release(page), busy, "invalidated, not synced");
    for proof in [stale, later] {
        let refused = domain.complete(&mut pins, pending, &proof).unwrap_err();
        assert!(matches!(refused.reason, CompletionError::StaleProof { .. }));
        pending = refused.pending;
        assert_eq!(pins.release(page), busy);
    }

    let fresh = driver.sync_with_proof().unwrap();
    domain.complete(&mut pins, pending, &fresh).unwrap();
    assert_eq!(pins.release(page), Ok(()));
    assert_eq!(pins.state(ram(3)), Some(PageState::Released));
    assert_eq!(
        domain.map(&mut pins, Ipa(0x9000), ram(3), PAGE, Permissions::RAM),
        Err(DomainError::Pin(PinError::Released { page: ram(3) }))
    );
    pins.reassign(page).unwrap();
    domain
        .map(&mut pins, Ipa(0x9000), ram(3), PAGE, Permissions::RAM)
        .unwrap();
}

#[test]
fn an_invalidation_from_before_the_unmap_is_not_recorded() {
    let _guard = no_failures();
    let (_, mut driver) = smmu(IdRegisters::QEMU_VIRT);
    let (_, mut domain) = domain();
    let mut storage = storage();
    let mut pins = pin_table(&mut storage);
    domain
        .map(&mut pins, Ipa(0x9000), ram(3), PAGE, Permissions::RAM)
        .unwrap();
    let early = driver.invalidate_vmid(VMID).unwrap();
    let mut pending = domain.unmap(Ipa(0x9000), PAGE).unwrap();
    assert_eq!(
        pending.record(&early),
        Err(CompletionError::InvalidationBeforeUnmap)
    );
    let other_vmid = driver.invalidate_vmid(Vmid(6)).unwrap();
    assert_eq!(
        pending.record(&other_vmid),
        Err(CompletionError::InvalidationDoesNotCover)
    );
    let elsewhere = driver
        .invalidate_ipa_range(VMID, Ipa(0xa000), PAGE, true, Stage2Use::Stage2Only)
        .unwrap();
    assert_eq!(
        pending.record(&elsewhere),
        Err(CompletionError::InvalidationDoesNotCover)
    );
    // One VMID-wide invalidation after the unmap covers it.
    let all = driver.invalidate_vmid(VMID).unwrap();
    pending.record(&all).unwrap();
    let proof = driver.sync_with_proof().unwrap();
    domain.complete(&mut pins, pending, &proof).unwrap();
    assert_eq!(pins_of(&pins, 3), 0);
}

#[test]
fn a_nesting_parent_needs_the_stage1_invalidation_too() {
    let _guard = no_failures();
    let (_, mut driver) = smmu(IdRegisters::QEMU_VIRT);
    let (_, mut domain) = domain_with(config(Stage2Use::NestingParent));
    let mut storage = storage();
    let mut pins = pin_table(&mut storage);
    domain
        .map(&mut pins, Ipa(0x9000), ram(3), PAGE, Permissions::RAM)
        .unwrap();
    let mut pending = domain.unmap(Ipa(0x9000), PAGE).unwrap();
    let stage2_only = driver
        .invalidate_ipa_range(VMID, Ipa(0x9000), PAGE, true, Stage2Use::Stage2Only)
        .unwrap();
    assert_eq!(
        pending.record(&stage2_only),
        Err(CompletionError::InvalidationDoesNotCover)
    );
    pending.invalidate(&mut driver).unwrap();
    let proof = driver.sync_with_proof().unwrap();
    domain.complete(&mut pins, pending, &proof).unwrap();
}

#[test]
fn two_domains_mapping_one_page_pin_it_twice() {
    let _guard = no_failures();
    let (_, mut driver) = smmu(IdRegisters::QEMU_VIRT);
    let (_, mut first) = domain();
    let (_, mut second) = domain_with(DomainConfig {
        vmid: Vmid(6),
        ..config(Stage2Use::Stage2Only)
    });
    let mut storage = storage();
    let mut pins = pin_table(&mut storage);
    let page = PhysRange::new(ram(3).0, PAGE);
    first
        .map(&mut pins, Ipa(0x9000), ram(3), PAGE, Permissions::RAM)
        .unwrap();
    second
        .map(&mut pins, Ipa(0x5000), ram(3), PAGE, Permissions::RAM)
        .unwrap();
    assert_eq!(pins_of(&pins, 3), 2);

    let mut pending = first.unmap(Ipa(0x9000), PAGE).unwrap();
    pending.invalidate(&mut driver).unwrap();
    let proof = driver.sync_with_proof().unwrap();
    // Presented to the wrong domain: refused.
    let refused = second.complete(&mut pins, pending, &proof).unwrap_err();
    assert_eq!(refused.reason, CompletionError::WrongDomain);
    first.complete(&mut pins, refused.pending, &proof).unwrap();
    assert_eq!(pins_of(&pins, 3), 1);
    assert_eq!(pins.release(page), Err(PinError::Busy { page: ram(3) }));

    unmap_fully(&mut second, &mut pins, &mut driver, 0x5000, 1);
    assert_eq!(pins_of(&pins, 3), 0);
    assert_eq!(pins.release(page), Ok(()));
}

/// Who hears about the failed command: the next proof-producing sync, or a plain driver sync
/// (say, the stream-table code's). Either way the invalidation before it proves nothing.
#[derive(Clone, Copy, Debug)]
enum FailureReportedTo {
    ProofSync,
    PlainSync,
}

#[test]
fn a_command_failure_voids_earlier_invalidations_whoever_reports_it() {
    let _exclusive = FAILURES
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for reported_to in [FailureReportedTo::ProofSync, FailureReportedTo::PlainSync] {
        let (_, mut driver) = smmu(IdRegisters::QEMU_VIRT);
        let (_, mut domain) = domain();
        let mut storage = storage();
        let mut pins = pin_table(&mut storage);
        domain
            .map(&mut pins, Ipa(0x9000), ram(3), PAGE, Permissions::RAM)
            .unwrap();
        let mut pending = domain.unmap(Ipa(0x9000), PAGE).unwrap();
        pending.invalidate(&mut driver).unwrap();
        // An illegal command (a reserved bit set) after the invalidation: the driver replaces
        // it with a CMD_SYNC and a sync reports it. Had it been our TLBI, it would be gone.
        let illegal = Command::from_words([0x2a | 1 << 8, 0]);
        driver.submit_raw(&[illegal]).unwrap();
        let reported = match reported_to {
            FailureReportedTo::ProofSync => matches!(
                driver.sync_with_proof(),
                Err(InvalidationError::Driver(DriverError::CommandError { .. }))
            ),
            FailureReportedTo::PlainSync => {
                matches!(driver.sync(), Err(DriverError::CommandError { .. }))
            }
        };
        assert!(reported, "{reported_to:?}");
        let proof = driver.sync_with_proof().unwrap();
        let refused = domain.complete(&mut pins, pending, &proof).unwrap_err();
        assert_eq!(
            refused.reason,
            CompletionError::InvalidationMayBeLost,
            "{reported_to:?}"
        );
        assert_eq!(pins_of(&pins, 3), 1, "{reported_to:?}");
        let mut pending = refused.pending;
        pending.invalidate(&mut driver).unwrap();
        let proof = driver.sync_with_proof().unwrap();
        domain.complete(&mut pins, pending, &proof).unwrap();
        assert_eq!(pins_of(&pins, 3), 0, "{reported_to:?}");
    }
}

#[test]
fn a_proof_from_another_smmu_is_refused() {
    let _guard = no_failures();
    let (_, mut driver) = smmu(IdRegisters::QEMU_VIRT);
    // A second SMMU whose command queue sits elsewhere.
    let bus = FakeBus::new(PhysAddr(0x9000_0000), 0x5_0000);
    let other_fake = FakeSmmu::new(IdRegisters::QEMU_VIRT, &bus);
    let mut other = Driver::new(
        other_fake,
        DriverMemory {
            stream_table_l1: bus.region(PhysAddr(0x9000_0000), 256 * 8),
            stream_table_l2_pool: bus.region(PhysAddr(0x9001_0000), 256 * 64),
            command_queue: bus.region(PhysAddr(0x9004_0000), 16 * 16),
            event_queue: bus.region(PhysAddr(0x9004_1000), 8 * 32),
            pri_queue: None,
        },
        FakePlatform::default(),
        DriverConfig::DEFAULT,
    )
    .unwrap();
    let (_, mut domain) = domain();
    let mut storage = storage();
    let mut pins = pin_table(&mut storage);
    domain
        .map(&mut pins, Ipa(0x9000), ram(3), PAGE, Permissions::RAM)
        .unwrap();
    let mut pending = domain.unmap(Ipa(0x9000), PAGE).unwrap();
    pending.invalidate(&mut driver).unwrap();
    let wrong = other.sync_with_proof().unwrap();
    let refused = domain.complete(&mut pins, pending, &wrong).unwrap_err();
    assert_eq!(refused.reason, CompletionError::WrongSmmu);
    let right = driver.sync_with_proof().unwrap();
    domain.complete(&mut pins, refused.pending, &right).unwrap();
}

#[test]
fn pin_table_operations_check_their_ranges() {
    let mut storage = storage();
    assert_eq!(
        PinTable::new(PhysAddr(RAM + 1), &mut storage, BUDGET).err(),
        Some(PinError::Misaligned)
    );
    let mut small = vec![0; 4];
    assert_eq!(
        PinTable::new(PhysAddr(!0xfff), &mut small, BUDGET).err(),
        Some(PinError::AddressOverflow)
    );
    let mut pins = PinTable::new(PhysAddr(RAM), &mut storage, 4).unwrap();
    assert!(
        (0..RAM_PAGES as u64).all(|p| pins_of(&pins, p) == 0),
        "cleared"
    );
    assert_eq!(
        pins.release(PhysRange::new(RAM, 5 * PAGE)),
        Err(PinError::TooLarge {
            pages: 5,
            budget: 4
        })
    );
    assert_eq!(
        pins.release(PhysRange::new(RAM, 0)),
        Err(PinError::EmptyRange)
    );
    assert_eq!(
        pins.release(PhysRange::new(RAM + 1, PAGE)),
        Err(PinError::Misaligned)
    );
    assert_eq!(
        pins.release(PhysRange::new(
            RAM + (RAM_PAGES as u64 - 1) * PAGE,
            2 * PAGE
        )),
        Err(PinError::OutsideTable {
            page: PhysAddr(RAM + RAM_PAGES as u64 * PAGE)
        })
    );
    // Busy reports the first pinned page, and nothing is released.
    pins.pin(ram(2), 1).unwrap();
    assert_eq!(
        pins.release(PhysRange::new(RAM, 4 * PAGE)),
        Err(PinError::Busy { page: ram(2) })
    );
    assert_eq!(pins.state(ram(0)), Some(PageState::Pinned(0)));
}

// ---------------------------------------------------------------------------------------------
// Random sequences.

#[derive(Clone, Debug)]
enum Op {
    Map {
        domain: usize,
        ipa_page: u64,
        pa_page: u64,
        pages: u64,
    },
    Unmap {
        domain: usize,
        ipa_page: u64,
        pages: u64,
    },
    Invalidate(usize),
    Sync,
    Complete(usize),
    Release {
        pa_page: u64,
        pages: u64,
    },
    Reassign {
        pa_page: u64,
        pages: u64,
    },
}

const MODEL_IPA_PAGES: u64 = 24;
const MODEL_PA_PAGES: u64 = 12;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..MODEL_IPA_PAGES, 0..MODEL_PA_PAGES + 1, 1..4u64).prop_map(
            |(domain, ipa_page, pa_page, pages)| Op::Map { domain, ipa_page, pa_page, pages }
        ),
        3 => (0..2usize, 0..MODEL_IPA_PAGES, 1..4u64)
            .prop_map(|(domain, ipa_page, pages)| Op::Unmap { domain, ipa_page, pages }),
        2 => (0..8usize).prop_map(Op::Invalidate),
        1 => Just(Op::Sync),
        2 => (0..8usize).prop_map(Op::Complete),
        1 => (0..MODEL_PA_PAGES, 1..3u64).prop_map(|(pa_page, pages)| Op::Release { pa_page, pages }),
        1 => (0..MODEL_PA_PAGES, 1..3u64).prop_map(|(pa_page, pages)| Op::Reassign { pa_page, pages }),
    ]
}

/// The model: per domain, IPA page -> (PA page, still mapped?); pending unmaps by domain.
#[derive(Default)]
struct Model {
    entries: [HashMap<u64, (u64, bool)>; 2],
    released: std::collections::HashSet<u64>,
}

impl Model {
    fn pins(&self, pa_page: u64) -> u16 {
        let n = self
            .entries
            .iter()
            .flat_map(|d| d.values())
            .filter(|(pa, _)| *pa == pa_page)
            .count();
        u16::try_from(n).unwrap()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Pin counts always equal the number of mappings (live or awaiting completion) of each
    /// page, and a page is released only when no domain maps it.
    #[test]
    fn pin_counts_follow_live_mappings(ops in proptest::collection::vec(op(), 1..48)) {
        let _guard = no_failures();
        let (_, mut driver) = smmu(IdRegisters::QEMU_VIRT);
        let (_, first) = domain();
        let (_, second) = domain_with(DomainConfig { vmid: Vmid(6), ..config(Stage2Use::NestingParent) });
        let mut domains = [first, second];
        let mut storage = vec![0; MODEL_PA_PAGES as usize];
        let mut pins = PinTable::new(PhysAddr(RAM), &mut storage, BUDGET).unwrap();
        let mut model = Model::default();
        let mut pendings: Vec<(usize, PendingUnmap)> = Vec::new();
        let mut proof: Option<SyncProof> = None;

        for op in ops {
            match op {
                Op::Map { domain, ipa_page, pa_page, pages } => {
                    let result = domains[domain].map(
                        &mut pins, Ipa(ipa_page * PAGE), ram(pa_page), pages * PAGE, Permissions::RAM,
                    );
                    let free = (0..pages).all(|p| !model.entries[domain].contains_key(&(ipa_page + p)));
                    let inside = pa_page + pages <= MODEL_PA_PAGES;
                    let usable = (0..pages).all(|p| !model.released.contains(&(pa_page + p)));
                    prop_assert_eq!(result.is_ok(), free && inside && usable, "{:?}", result);
                    if result.is_ok() {
                        for p in 0..pages {
                            model.entries[domain].insert(ipa_page + p, (pa_page + p, true));
                        }
                    }
                }
                Op::Unmap { domain, ipa_page, pages } => {
                    let result = domains[domain].unmap(Ipa(ipa_page * PAGE), pages * PAGE);
                    let mapped = (0..pages).all(|p| {
                        model.entries[domain].get(&(ipa_page + p)).is_some_and(|e| e.1)
                    });
                    prop_assert_eq!(result.is_ok(), mapped, "{:?}", result);
                    if let Ok(pending) = result {
                        for p in 0..pages {
                            model.entries[domain].get_mut(&(ipa_page + p)).unwrap().1 = false;
                        }
                        pendings.push((domain, pending));
                    }
                }
                Op::Invalidate(i) => {
                    if let Some((_, pending)) = pendings.get_mut(i) {
                        pending.invalidate(&mut driver).unwrap();
                    }
                }
                Op::Sync => proof = Some(driver.sync_with_proof().unwrap()),
                Op::Complete(i) => {
                    if i < pendings.len() && let Some(proof) = proof {
                        let (domain, pending) = pendings.remove(i);
                        let eligible = pending
                            .invalidation()
                            .is_some_and(|inv| proof.sequence() > inv.sequence());
                        let (ipa, pages) = (pending.ipa().0 / PAGE, pending.pages());
                        match domains[domain].complete(&mut pins, pending, &proof) {
                            Ok(_) => {
                                prop_assert!(eligible);
                                for p in 0..pages {
                                    model.entries[domain].remove(&(ipa + p));
                                }
                            }
                            Err(refused) => {
                                prop_assert!(!eligible, "{:?}", refused.reason);
                                pendings.insert(i, (domain, refused.pending));
                            }
                        }
                    }
                }
                Op::Release { pa_page, pages } | Op::Reassign { pa_page, pages } => {
                    let range = PhysRange::new(ram(pa_page).0, pages * PAGE);
                    let release = matches!(op, Op::Release { .. });
                    let result = if release { pins.release(range) } else { pins.reassign(range) };
                    let inside = pa_page + pages <= MODEL_PA_PAGES;
                    let idle = (0..pages).all(|p| model.pins(pa_page + p) == 0);
                    prop_assert_eq!(result.is_ok(), inside && idle, "{:?}", result);
                    if result.is_ok() {
                        for p in 0..pages {
                            if release {
                                model.released.insert(pa_page + p);
                            } else {
                                model.released.remove(&(pa_page + p));
                            }
                        }
                    }
                }
            }
            for page in 0..MODEL_PA_PAGES {
                let expected = if model.released.contains(&page) {
                    prop_assert_eq!(model.pins(page), 0);
                    PageState::Released
                } else {
                    PageState::Pinned(model.pins(page))
                };
                prop_assert_eq!(pins.state(ram(page)), Some(expected), "page {}", page);
            }
        }
        // Whatever was left pending stays pinned: leak, never release.
        for (_, pending) in pendings {
            drop(pending);
        }
    }
}
