//! The GICv3 as the hypervisor owns it and as a guest sees it.
//!
//! The hypervisor takes every physical interrupt at EL2 (HCR_EL2.IMO/FMO) and owns a few of
//! them (the SMMU's, its own timer, the virtual interface's maintenance interrupt); the guest
//! owns the rest. A guest's interrupts reach it through the list registers of the virtual CPU
//! interface; its accesses to the distributor and redistributors trap and are emulated here,
//! passed to the hardware only for the INTIDs it owns, and never for the registers that would
//! make the GIC read or write memory (LPIs).
//!
//! Policy only, tested on the host:
//! - [`ownership`]: who owns each INTID;
//! - [`distributor`]: the guest's GICD;
//! - [`redistributor`]: the guest's GICR frames (RD_base and SGI_base);
//! - [`list_registers`]: virtual interrupts, their list-register encoding, and the overflow
//!   queue behind the list registers;
//! - [`sgi`]: a guest's SGI (ICC_SGI1R_EL1 write), decoded and confined to its own CPUs.
//!
//! The hardware is reached through [`GicMmio`], which the hypervisor implements over the
//! EL2 map and tests implement over a fake register file.

pub mod distributor;
pub mod list_registers;
pub mod ownership;
pub mod redistributor;
pub mod sgi;

/// Access to the GIC's memory-mapped registers by physical address, at the widths the GIC
/// allows (bytes for priorities, words, doublewords for routing and TYPER).
pub trait GicMmio {
    /// Reads the byte at `address`.
    fn read8(&self, address: u64) -> u8;
    /// Reads the 32-bit register at `address`.
    fn read32(&self, address: u64) -> u32;
    /// Reads the 64-bit register at `address`.
    fn read64(&self, address: u64) -> u64;
    /// Writes the byte at `address`.
    fn write8(&self, address: u64, value: u8);
    /// Writes the 32-bit register at `address`.
    fn write32(&self, address: u64, value: u32);
    /// Writes the 64-bit register at `address`.
    fn write64(&self, address: u64, value: u64);
}

/// The first SPI.
pub const FIRST_SPI: u32 = 32;
/// One past the last INTID the distributor can implement (1020..1023 are special).
pub const INTID_LIMIT: u32 = 1020;
/// SGIs are 0..16, PPIs 16..32.
pub const FIRST_PPI: u32 = 16;
/// The SGI the hypervisor keeps for itself: one CPU tells another that it left a virtual
/// interrupt in its waiting set. The guest sees SGI 15 as unimplemented, and its own sends of
/// it are refused (Linux uses SGIs 0 to 7).
pub const KICK_SGI: u32 = 15;

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod fake {
    //! A GIC register file in memory: every address reads back what was last written there
    //! (a byte-addressed map), with a few registers preset.
    use super::GicMmio;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// The register file, byte by byte, and a log of writes (address, width in bytes, value).
    #[derive(Default)]
    pub(crate) struct FakeGic {
        pub(crate) bytes: RefCell<BTreeMap<u64, u8>>,
        pub(crate) writes: RefCell<Vec<(u64, u8, u64)>>,
    }

    impl FakeGic {
        pub(crate) fn set(&self, address: u64, width: u8, value: u64) {
            let mut bytes = self.bytes.borrow_mut();
            for i in 0..u64::from(width) {
                bytes.insert(address + i, (value >> (8 * i)) as u8);
            }
        }
        pub(crate) fn get(&self, address: u64, width: u8) -> u64 {
            let bytes = self.bytes.borrow();
            (0..u64::from(width)).fold(0, |value, i| {
                value | u64::from(*bytes.get(&(address + i)).unwrap_or(&0)) << (8 * i)
            })
        }
        fn write(&self, address: u64, width: u8, value: u64) {
            self.writes.borrow_mut().push((address, width, value));
            self.set(address, width, value);
        }
    }

    impl GicMmio for FakeGic {
        fn read8(&self, address: u64) -> u8 {
            self.get(address, 1) as u8
        }
        fn read32(&self, address: u64) -> u32 {
            self.get(address, 4) as u32
        }
        fn read64(&self, address: u64) -> u64 {
            self.get(address, 8)
        }
        fn write8(&self, address: u64, value: u8) {
            self.write(address, 1, u64::from(value));
        }
        fn write32(&self, address: u64, value: u32) {
            self.write(address, 4, u64::from(value));
        }
        fn write64(&self, address: u64, value: u64) {
            self.write(address, 8, value);
        }
    }
}
