//! GIC interrupt numbers as the device tree and the board data name them.
//!
//! This module owns [`Interrupt`] and the decoding of a GICv3 interrupt specifier (the
//! three or four cells of the `arm,gic-v3` binding). It knows nothing of which device an
//! interrupt belongs to.

/// A wired interrupt of the GIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Interrupt {
    /// The interrupt's class, which decides how `number` becomes an INTID.
    pub kind: InterruptKind,
    /// The number within its class, as the device tree writes it (SPI 74 is INTID 106).
    pub number: u32,
    /// How the line signals.
    pub trigger: Trigger,
}

/// The class of a GIC interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InterruptKind {
    /// Shared peripheral interrupt: INTID 32 + number.
    Spi,
    /// Private peripheral interrupt: INTID 16 + number.
    Ppi,
    /// Extended SPI (GICv3.1): INTID 4096 + number.
    ExtendedSpi,
    /// Extended PPI (GICv3.1): INTID 1056 + number.
    ExtendedPpi,
}

/// How an interrupt line signals (the low four bits of the specifier's flags cell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Trigger {
    /// Rising edge (`IRQ_TYPE_EDGE_RISING`, 1).
    EdgeRising,
    /// Falling edge (`IRQ_TYPE_EDGE_FALLING`, 2).
    EdgeFalling,
    /// Active-high level (`IRQ_TYPE_LEVEL_HIGH`, 4).
    LevelHigh,
    /// Active-low level (`IRQ_TYPE_LEVEL_LOW`, 8).
    LevelLow,
}

impl Interrupt {
    /// A shared peripheral interrupt.
    #[must_use]
    pub const fn spi(number: u32, trigger: Trigger) -> Self {
        Self {
            kind: InterruptKind::Spi,
            number,
            trigger,
        }
    }

    /// A private peripheral interrupt.
    #[must_use]
    pub const fn ppi(number: u32, trigger: Trigger) -> Self {
        Self {
            kind: InterruptKind::Ppi,
            number,
            trigger,
        }
    }

    /// The GIC interrupt ID, or `None` if the number is outside its class.
    #[must_use]
    pub const fn intid(&self) -> Option<u32> {
        let (first, count) = match self.kind {
            InterruptKind::Spi => (32, 988),
            InterruptKind::Ppi => (16, 16),
            InterruptKind::ExtendedSpi => (4096, 1024),
            InterruptKind::ExtendedPpi => (1056, 64),
        };
        if self.number < count {
            Some(first + self.number)
        } else {
            None
        }
    }

    /// Decodes a GICv3 interrupt specifier: `<kind number flags>` with an optional fourth
    /// cell (a PPI partition phandle), which is ignored. `None` if the kind or the trigger
    /// is not one the binding defines.
    #[must_use]
    pub fn from_gic_v3_cells(cells: &[u32]) -> Option<Self> {
        let (kind, number, flags) = match cells {
            [kind, number, flags] | [kind, number, flags, _] => (*kind, *number, *flags),
            _ => return None,
        };
        let kind = match kind {
            0 => InterruptKind::Spi,
            1 => InterruptKind::Ppi,
            2 => InterruptKind::ExtendedSpi,
            3 => InterruptKind::ExtendedPpi,
            _ => return None,
        };
        // Bits 15:8 of a GICv2 PPI's flags hold a CPU mask; GICv3 ignores them.
        let trigger = match flags & 0xf {
            1 => Trigger::EdgeRising,
            2 => Trigger::EdgeFalling,
            4 => Trigger::LevelHigh,
            8 => Trigger::LevelLow,
            _ => return None,
        };
        let interrupt = Self {
            kind,
            number,
            trigger,
        };
        interrupt.intid().map(|_| interrupt)
    }

    /// The three cells of the GICv3 specifier for this interrupt, `<kind number flags>`: the
    /// inverse of [`Interrupt::from_gic_v3_cells`]. `None` if the number is outside its class
    /// (the GIC would not take it).
    #[must_use]
    pub const fn to_gic_v3_cells(&self) -> Option<[u32; 3]> {
        if self.intid().is_none() {
            return None;
        }
        let kind = match self.kind {
            InterruptKind::Spi => 0,
            InterruptKind::Ppi => 1,
            InterruptKind::ExtendedSpi => 2,
            InterruptKind::ExtendedPpi => 3,
        };
        let flags = match self.trigger {
            Trigger::EdgeRising => 1,
            Trigger::EdgeFalling => 2,
            Trigger::LevelHigh => 4,
            Trigger::LevelLow => 8,
        };
        Some([kind, self.number, flags])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn smmu_spis_of_qemu_virt_are_intids_106_to_109() {
        let intids: Vec<_> = (74..=77)
            .map(|n| Interrupt::spi(n, Trigger::EdgeRising).intid())
            .collect();
        assert_eq!(intids, [Some(106), Some(107), Some(108), Some(109)]);
    }

    #[test]
    fn specifiers_decode_per_the_gic_v3_binding() {
        let cases: &[(&[u32], Option<Interrupt>)] = &[
            (&[0, 74, 1], Some(Interrupt::spi(74, Trigger::EdgeRising))),
            (&[1, 9, 4], Some(Interrupt::ppi(9, Trigger::LevelHigh))),
            (&[1, 13, 0xf08], Some(Interrupt::ppi(13, Trigger::LevelLow))),
            (
                &[1, 9, 4, 0x8000],
                Some(Interrupt::ppi(9, Trigger::LevelHigh)),
            ),
            (&[0, 74, 0], None),
            (&[0, 74, 3], None),
            (&[4, 74, 1], None),
            (&[1, 16, 4], None),
            (&[0, 988, 4], None),
            (&[0, 74], None),
            (&[0, 74, 1, 0, 0], None),
        ];
        for (cells, expected) in cases {
            assert_eq!(Interrupt::from_gic_v3_cells(cells), *expected, "{cells:?}");
        }
    }

    #[test]
    fn every_valid_interrupt_encodes_to_cells_that_decode_back_to_it() {
        let kinds = [
            (InterruptKind::Spi, 988),
            (InterruptKind::Ppi, 16),
            (InterruptKind::ExtendedSpi, 1024),
            (InterruptKind::ExtendedPpi, 64),
        ];
        let triggers = [
            Trigger::EdgeRising,
            Trigger::EdgeFalling,
            Trigger::LevelHigh,
            Trigger::LevelLow,
        ];
        for (kind, count) in kinds {
            for trigger in triggers {
                for number in [0, 1, count - 1, count, u32::MAX] {
                    let interrupt = Interrupt {
                        kind,
                        number,
                        trigger,
                    };
                    let cells = interrupt.to_gic_v3_cells();
                    if number < count {
                        let cells = cells.unwrap();
                        assert_eq!(Interrupt::from_gic_v3_cells(&cells), Some(interrupt));
                    } else {
                        assert_eq!(cells, None, "{interrupt:?}");
                    }
                }
            }
        }
        assert_eq!(
            Interrupt::spi(74, Trigger::EdgeRising).to_gic_v3_cells(),
            Some([0, 74, 1])
        );
    }
}
