//! The guest's raw disk image: a header line the guest recognises, then a deterministic pattern.
//!
//! The guest reads the start of the disk over virtio-blk (DMA through the SMMU when there is
//! one) and compares it with a copy of the same bytes carried in its initramfs, so a device that
//! reads the wrong memory, or none, is caught byte for byte. It then writes a block of its own at
//! [`WRITE_TEST_OFFSET`] and reads it back; the image is rewritten on every run.

use crate::Result;
use std::path::Path;

/// Size of the image: 8 MiB.
pub(crate) const DISK_SIZE: usize = 8 << 20;
/// The first line of the disk.
pub(crate) const DISK_MAGIC: &str = "SMMU-HYP-DISK v1";
/// How many bytes at the start of the disk the guest checks (16 pages: the transfer spans several
/// pages, so a mapping that is right for one page only shows).
pub(crate) const CHECKED_HEAD_LEN: usize = 64 << 10;
/// Where the guest writes its own block (4 MiB), and how much (64 KiB).
pub(crate) const WRITE_TEST_OFFSET: usize = 4 << 20;
pub(crate) const WRITE_TEST_LEN: usize = 64 << 10;

// The written block lies on the disk, clear of the checked start, in whole 4 KiB blocks.
const _: () = assert!(WRITE_TEST_OFFSET + WRITE_TEST_LEN <= DISK_SIZE);
const _: () = assert!(WRITE_TEST_OFFSET >= CHECKED_HEAD_LEN);
const _: () =
    assert!(WRITE_TEST_OFFSET.is_multiple_of(4096) && WRITE_TEST_LEN.is_multiple_of(4096));
const _: () = assert!(CHECKED_HEAD_LEN.is_multiple_of(4096));

/// The header: the magic line, then a line describing the rest.
fn header() -> String {
    format!("{DISK_MAGIC}\nsize={DISK_SIZE} pattern=splitmix64-of-word-index\n")
}

/// The image's bytes `[0, len)`.
pub(crate) fn contents(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len.next_multiple_of(8));
    let mut index: u64 = 0;
    while bytes.len() < len {
        bytes.extend_from_slice(&splitmix64(index).to_le_bytes());
        index += 1;
    }
    bytes.truncate(len);
    let header = header();
    let end = header.len().min(len);
    if let (Some(target), Some(source)) = (bytes.get_mut(..end), header.as_bytes().get(..end)) {
        target.copy_from_slice(source);
    }
    bytes
}

/// The bytes the guest expects at the start of the disk.
pub(crate) fn expected_head() -> Vec<u8> {
    contents(CHECKED_HEAD_LEN)
}

/// Writes a fresh image to `path` (its parent directories are created).
pub(crate) fn make_disk(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, contents(DISK_SIZE))
        .map_err(|e| format!("writing the guest disk {}: {e}", path.display()))?;
    Ok(())
}

/// A well-mixed 64-bit value per index, so that no two words of the disk look alike.
fn splitmix64(index: u64) -> u64 {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_image_starts_with_the_magic_line_and_has_its_size() {
        let path = std::env::temp_dir().join(format!("xtask-disk-{}.img", std::process::id()));
        make_disk(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bytes.len(), DISK_SIZE);
        assert!(bytes.starts_with(b"SMMU-HYP-DISK v1\nsize=8388608 "));
        assert_eq!(&bytes[..CHECKED_HEAD_LEN], expected_head());
    }

    #[test]
    fn no_two_sectors_are_alike() {
        let bytes = contents(DISK_SIZE);
        let mut sectors: Vec<&[u8]> = bytes.chunks(512).collect();
        sectors.sort_unstable();
        sectors.dedup();
        assert_eq!(sectors.len(), DISK_SIZE / 512);
    }
}
