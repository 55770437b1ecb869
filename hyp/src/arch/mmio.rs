//! Volatile access to device registers at fixed physical addresses (identity-mapped at EL2).

/// A window of device registers, accessed with volatile loads and stores.
#[derive(Debug)]
pub struct DeviceWindow {
    base: usize,
    size: usize,
}

impl DeviceWindow {
    /// A window over `[base, base + size)`.
    ///
    /// # Safety
    ///
    /// The range must be a device's registers, mapped as device memory at EL2 for as long as the
    /// window exists, and every offset accessed must be a register of that device for which a
    /// read or write (of the width used) has no effect beyond the device.
    pub unsafe fn new(base: usize, size: usize) -> Self {
        Self { base, size }
    }

    fn address(&self, offset: usize, width: usize) -> Option<usize> {
        (offset.checked_add(width)? <= self.size && offset % width == 0).then(|| self.base + offset)
    }

    /// Reads the 32-bit register at `offset`, or `None` when it lies outside the window.
    #[must_use]
    pub fn read32(&self, offset: usize) -> Option<u32> {
        let address = self.address(offset, 4)?;
        // SAFETY: in bounds and aligned (checked above); `new`'s contract makes it a register.
        Some(unsafe { core::ptr::read_volatile(address as *const u32) })
    }

    /// Writes the 32-bit register at `offset`; returns `None` when it lies outside the window.
    pub fn write32(&mut self, offset: usize, value: u32) -> Option<()> {
        let address = self.address(offset, 4)?;
        // SAFETY: in bounds and aligned (checked above); `new`'s contract makes it a register.
        unsafe { core::ptr::write_volatile(address as *mut u32, value) };
        Some(())
    }

    /// Reads the 64-bit register at `offset`, or `None` when it lies outside the window.
    #[must_use]
    pub fn read64(&self, offset: usize) -> Option<u64> {
        let address = self.address(offset, 8)?;
        // SAFETY: in bounds and aligned (checked above); `new`'s contract makes it a register.
        Some(unsafe { core::ptr::read_volatile(address as *const u64) })
    }

    /// Writes the 64-bit register at `offset`; returns `None` when it lies outside the window.
    pub fn write64(&mut self, offset: usize, value: u64) -> Option<()> {
        let address = self.address(offset, 8)?;
        // SAFETY: in bounds and aligned (checked above); `new`'s contract makes it a register.
        unsafe { core::ptr::write_volatile(address as *mut u64, value) };
        Some(())
    }
}
