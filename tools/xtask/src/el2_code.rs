//! A check of the hypervisor's compiled code: no instruction may touch the FP/SIMD (or SVE/SME)
//! registers. Those registers belong to the guest and EL2 saves none of them on a trap, so a
//! single compiler-chosen `movi v0.2d, #0` in EL2 code would corrupt the guest's state (and
//! could leave hypervisor data in its registers). The image is built for the soft-float target,
//! where the compiler does not use them; this check holds the image to that, instruction by
//! instruction, after every build.
//!
//! The classification follows the A64 top-level encoding table (bits 28:25): the scalar
//! floating-point and Advanced SIMD data-processing group (`x111`), SVE (`0010`), SME (`0000`
//! with bit 31 set), and the loads and stores (`x1x0`) whose bit 26 (V) names a SIMD&FP
//! register.

use object::{Object, ObjectSection, ObjectSymbol, SectionKind};

/// Whether the A64 instruction `word` reads or writes an FP/SIMD, SVE or SME register.
#[must_use]
pub(crate) fn uses_fp_simd(word: u32) -> bool {
    let op1 = (word >> 25) & 0xf;
    match op1 {
        // Data processing: scalar floating-point and Advanced SIMD.
        0b0111 | 0b1111 => true,
        // SVE.
        0b0010 => true,
        // SME (bit 31 set); otherwise reserved.
        0b0000 => word >> 31 == 1,
        // Loads and stores: V selects the SIMD&FP register file.
        _ if op1 & 0b0101 == 0b0100 => (word >> 26) & 1 == 1,
        _ => false,
    }
}

/// Fails, naming each offending instruction (address, word, symbol), if any executable section
/// of `elf` holds an instruction that uses an FP/SIMD register.
pub(crate) fn check_no_fp_simd(elf: &[u8]) -> Result<(), String> {
    let file = object::File::parse(elf).map_err(|e| e.to_string())?;
    let mut functions: Vec<(u64, String)> = file
        .symbols()
        .filter(|symbol| symbol.kind() == object::SymbolKind::Text)
        .filter_map(|symbol| Some((symbol.address(), symbol.name().ok()?.to_string())))
        .collect();
    functions.sort_unstable();
    let symbol_at = |address: u64| {
        let index = functions.partition_point(|(start, _)| *start <= address);
        index
            .checked_sub(1)
            .and_then(|i| functions.get(i))
            .map_or("?", |(_, name)| name.as_str())
    };
    let mut offenders = Vec::new();
    let mut instructions = 0usize;
    for section in file.sections() {
        if section.kind() != SectionKind::Text {
            continue;
        }
        let data = section.data().map_err(|e| e.to_string())?;
        for (index, bytes) in data.chunks_exact(4).enumerate() {
            let Ok(bytes) = <[u8; 4]>::try_from(bytes) else {
                continue;
            };
            let word = u32::from_le_bytes(bytes);
            instructions += 1;
            if uses_fp_simd(word) {
                let address = section.address() + 4 * index as u64;
                offenders.push(format!(
                    "{address:#x}: {word:#010x} in {}",
                    symbol_at(address)
                ));
            }
        }
    }
    if instructions == 0 {
        return Err("no executable section found".into());
    }
    if offenders.is_empty() {
        return Ok(());
    }
    let shown: Vec<_> = offenders.iter().take(10).cloned().collect();
    Err(format!(
        "EL2 code uses FP/SIMD registers, which belong to the guest ({} instructions):\n    {}",
        offenders.len(),
        shown.join("\n    ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp_and_simd_instructions_are_recognised() {
        for (word, what) in [
            (0x6f00_e400, "movi v0.2d, #0"),
            (0xad00_0100, "stp q0, q0, [x8]"),
            (0x3dc0_0020, "ldr q0, [x1]"),
            (0xfd00_03e0, "str d0, [sp]"),
            (0x9e67_0020, "fmov d0, x1"),
            (0x4c40_2c00, "ld1 {v0.2d-v3.2d}, [x0]"),
            (0x1e20_2008, "fcmp s0, #0.0"),
            (0x2518_e3e0, "ptrue p0.b (SVE)"),
            (0x4e28_5800, "aese v0.16b, v0.16b"),
        ] {
            assert!(uses_fp_simd(word), "{what} ({word:#010x})");
        }
    }

    #[test]
    fn integer_memory_and_system_instructions_are_not() {
        for (word, what) in [
            (0xa9bf_07e0, "stp x0, x1, [sp, #-16]!"),
            (0xf940_0020, "ldr x0, [x1]"),
            (0x8b02_0020, "add x0, x1, x2"),
            (0xd65f_03c0, "ret"),
            (0xd51c_c000, "msr vbar_el2, x0"),
            (0xd503_201f, "nop"),
            (0x1900_0400, "cpyfp [x0]!, [x0]!, x0! (MOPS)"),
            (0x1900_0000 | 0xc0_0000 | 0x400, "setp (MOPS)"),
            (0x0000_0000, "udf #0"),
            (0x9400_0000, "bl"),
            (0xb940_0020, "ldr w0, [x1]"),
            (0x3900_0020, "strb w0, [x1]"),
            (0xc85f_7c20, "ldxr x0, [x1]"),
        ] {
            assert!(!uses_fp_simd(word), "{what} ({word:#010x})");
        }
    }
}
