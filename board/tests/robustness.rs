//! No input makes discovery panic: truncated blobs, corrupted bytes, absurd property
//! lengths and random data all end in an error (or, for harmless corruption, a result).

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use board::{BlobError, BusRange, DiscoveryError, IommuMapEntry, RequesterId, discover};
use proptest::prelude::*;
use smmu::StreamId;

const FIXTURES: &[&[u8]] = &[
    include_bytes!("../testdata/qemu-virt.dtb"),
    include_bytes!("../testdata/fvp-base-revc.dtb"),
    include_bytes!("../testdata/qemu-virt-no-smmu.dtb"),
];

fn read_u32(blob: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes(blob[offset..offset + 4].try_into().unwrap())
}

fn write_u32(blob: &mut [u8], offset: usize, value: u32) {
    blob[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
}

/// The offsets of every `FDT_PROP` token of a well-formed blob.
fn property_offsets(blob: &[u8]) -> Vec<usize> {
    let mut offset = read_u32(blob, 8) as usize;
    let mut found = Vec::new();
    loop {
        match read_u32(blob, offset) {
            1 => {
                let name_end = blob[offset + 4..].iter().position(|&b| b == 0).unwrap();
                offset = (offset + 4 + name_end + 1).next_multiple_of(4);
            }
            3 => {
                found.push(offset);
                let len = read_u32(blob, offset + 4) as usize;
                offset = (offset + 12 + len).next_multiple_of(4);
            }
            2 | 4 => offset += 4,
            9 => return found,
            token => panic!("unexpected token {token:#x}"),
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    for fixture in FIXTURES {
        for length in 0..fixture.len() {
            let truncated = &fixture[..length];
            assert!(discover(truncated).is_err(), "length {length}");
            // Also with `totalsize` claiming the truncated length, which gets past the
            // first length check into the header and structure checks.
            if length >= 8 {
                let mut lying = truncated.to_vec();
                write_u32(&mut lying, 4, length as u32);
                assert!(
                    discover(&lying).is_err(),
                    "length {length} with totalsize fixed"
                );
            }
        }
    }
}

#[test]
fn a_blob_with_trailing_bytes_is_refused() {
    let mut padded = FIXTURES[0].to_vec();
    padded.extend_from_slice(&[0; 64]);
    assert_eq!(
        discover(&padded).unwrap_err(),
        DiscoveryError::Blob(BlobError::Length)
    );
}

#[test]
fn a_blob_padded_with_free_space_like_qemus_is_read_whole() {
    // QEMU hands over its DTB padded to 1 MiB, the padding inside `totalsize`.
    let mut padded = FIXTURES[0].to_vec();
    padded.resize(1 << 20, 0);
    write_u32(&mut padded, 4, 1 << 20);
    assert_eq!(board::blob_size(&padded[..40]), Ok(1 << 20));
    assert_eq!(discover(&padded).unwrap(), discover(FIXTURES[0]).unwrap());
}

#[test]
fn blob_size_checks_magic_and_bounds() {
    assert_eq!(board::blob_size(FIXTURES[0]), Ok(FIXTURES[0].len()));
    assert_eq!(
        board::blob_size(&FIXTURES[0][..7]),
        Err(DiscoveryError::Blob(BlobError::Length))
    );
    let mut blob = FIXTURES[0][..8].to_vec();
    write_u32(&mut blob, 4, 3 << 20);
    assert_eq!(
        board::blob_size(&blob),
        Err(DiscoveryError::Blob(BlobError::Length))
    );
    write_u32(&mut blob, 4, 39);
    assert_eq!(
        board::blob_size(&blob),
        Err(DiscoveryError::Blob(BlobError::Length))
    );
    write_u32(&mut blob, 0, 0xedfe_0dd0);
    assert_eq!(
        board::blob_size(&blob),
        Err(DiscoveryError::Blob(BlobError::Magic))
    );
}

#[test]
fn every_single_byte_corruption_is_survived() {
    for fixture in FIXTURES {
        for offset in 0..fixture.len() {
            for pattern in [0xff, 0x01, 0x80] {
                let mut corrupted = fixture.to_vec();
                corrupted[offset] ^= pattern;
                // Either outcome is fine; what matters is returning.
                let _ = discover(&corrupted);
            }
        }
    }
}

#[test]
fn absurd_property_lengths_are_errors() {
    for fixture in FIXTURES {
        let offsets = property_offsets(fixture);
        assert!(offsets.len() > 50);
        for &offset in &offsets {
            let total = fixture.len() as u32;
            for length in [
                u32::MAX,
                u32::MAX - 3,
                0x8000_0000,
                total,
                total - offset as u32,
            ] {
                let mut blob = fixture.to_vec();
                write_u32(&mut blob, offset + 4, length);
                assert!(
                    discover(&blob).is_err(),
                    "property at {offset:#x}, length {length:#x}"
                );
            }
            // A name offset past the strings block.
            let mut blob = fixture.to_vec();
            write_u32(&mut blob, offset + 8, u32::MAX);
            assert!(
                discover(&blob).is_err(),
                "property at {offset:#x}, name offset"
            );
        }
    }
}

#[test]
fn absurd_header_fields_are_errors() {
    let mut accepted = Vec::new();
    for word in 1..10 {
        for value in [0, 1, 3, u32::MAX, 0x8000_0000] {
            let mut blob = FIXTURES[0].to_vec();
            if value == read_u32(&blob, word * 4) {
                continue;
            }
            write_u32(&mut blob, word * 4, value);
            if discover(&blob).is_ok() {
                accepted.push((word, value));
            }
        }
    }
    // Only fields that may legitimately hold these values: a later `version` that is still
    // compatible with 17 (word 5), a lower `last_comp_version` (word 6), any boot CPU
    // (word 7), and a `size_dt_struct` smaller than the walk (word 9), which dtoolkit does
    // not use to bound the structure walk (the blob's length does).
    let allowed = |&(word, value): &(usize, u32)| match word {
        5 => value >= 17,
        6 => value <= 17,
        7 | 9 => true,
        _ => false,
    };
    let refused: Vec<_> = accepted.iter().filter(|field| !allowed(field)).collect();
    assert!(
        refused.is_empty(),
        "accepted absurd header fields: {refused:x?}"
    );
}

#[test]
fn deeply_nested_input_returns_instead_of_overflowing_the_stack() {
    let dtb = common::tree(|fdt| {
        for level in 0..10_000 {
            fdt.begin(&format!("n{level}"));
        }
        for _ in 0..10_000 {
            fdt.end();
        }
    });
    assert_eq!(discover(&dtb), Err(DiscoveryError::TooDeep));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = discover(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..1024),
        off_struct in 40u32..200,
        size_struct in 0u32..1024,
    ) {
        let total = 40 + 16 + body.len() as u32;
        let header = [0xd00d_feed, total, off_struct, total, 40, 17, 16, 0, 0, size_struct];
        let mut blob: Vec<u8> = header.iter().flat_map(|c: &u32| c.to_be_bytes()).collect();
        blob.extend_from_slice(&[0; 16]);
        blob.extend_from_slice(&body);
        let _ = discover(&blob);
    }

    #[test]
    fn random_word_overwrites_of_real_dtbs_never_panic(
        fixture in 0..FIXTURES.len(),
        writes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u32>()), 1..8),
    ) {
        let mut blob = FIXTURES[fixture].to_vec();
        for (index, value) in writes {
            let offset = index.index(blob.len() / 4) * 4;
            write_u32(&mut blob, offset, value);
        }
        let _ = discover(&blob);
    }

    #[test]
    fn a_derived_stream_id_range_is_exactly_the_map_image_of_the_buses(
        entries in proptest::collection::vec((0u32..0x400, 0u32..0x800, 0u32..0x400), 0..4),
        first_bus in 0u8..3,
        bus_count in 1u8..3,
    ) {
        let map: Vec<_> = entries
            .iter()
            .map(|&(rid_base, sid_base, length)| IommuMapEntry { rid_base, sid_base: StreamId(sid_base), length })
            .collect();
        let buses = BusRange::new(first_bus, first_bus + bus_count - 1).unwrap();
        let first_rid = u32::from(buses.first_requester_id().0);
        let rids = first_rid..=u32::from(buses.last_requester_id().0);
        let lookup = |rid: u32| board::stream_ids::stream_id(&map, u32::MAX, RequesterId(rid as u16));
        match board::stream_ids::stream_id_range(&map, u32::MAX, buses) {
            Ok(range) => {
                prop_assert_eq!(range.count(), u64::from(buses.bus_count()) * 256);
                for rid in rids {
                    prop_assert_eq!(lookup(rid), Some(StreamId(range.first.0 + (rid - first_rid))));
                }
            }
            Err(board::StreamIdError::Unmapped(rid)) => {
                prop_assert_eq!(lookup(u32::from(rid.0)), None);
            }
            Err(board::StreamIdError::NotContiguous(rid)) => {
                let rid = u32::from(rid.0);
                let first = lookup(first_rid).unwrap();
                prop_assert_ne!(lookup(rid), Some(StreamId(first.0 + (rid - first_rid))));
            }
            Err(board::StreamIdError::Masked(_)) => prop_assert!(false),
        }
    }
}
