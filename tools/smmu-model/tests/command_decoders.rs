//! Two independent readings of IHI 0070 chapter 4 side by side: the `smmu` crate's command
//! decoder (what the hypervisor validates guest commands with) and the model's (which decides
//! CERROR_ILL). For random commands they must agree on what is legal, except where a
//! difference is listed here with its reason; a new difference fails the test until it is
//! explained or fixed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use proptest::prelude::*;
use smmu::command::{Command, Opcode};
use smmu::driver::{CommandErrorKind, Error};
use smmu_conformance::Harness;
use smmu_model::{ModelConfig, ModelHarness};

/// Why the two decoders may differ on `words`, if they may.
fn known_difference(words: [u64; 2]) -> Option<&'static str> {
    let [w0, w1] = words;
    let opcode = (w0 & 0xff) as u8;
    let tg = (w1 >> 10) & 3;
    let ttl = (w1 >> 8) & 3;
    let num_scale = (w0 >> 12) & 0x1_f01f;
    let ssv = w0 & (1 << 11) != 0;
    let ssid = (w0 >> 12) & 0xf_ffff;
    match opcode {
        0x44 if (w0 >> 12) & 3 == 3 => Some(
            "CMD_RESUME: the crate reads bits 13:12 as one field with 3 reserved; they are Ac and \
             Ab, and Ab is ignored with Ac = retry (4.7.1)",
        ),
        0x12 | 0x13 | 0x22 | 0x23 | 0x2A
            if tg != 0 && num_scale == 0 && (ttl == 0 || (tg == 2 && ttl == 1)) =>
        {
            Some(
                "TLBI with TG != 0 and NUM = SCALE = TTL = 0 is a reserved encoding, CERROR_ILL \
                 (4.4.1.1); the crate accepts it",
            )
        }
        0x40 if w1 & 0x3f > 52 => {
            Some("CMD_ATC_INV Size above 52: the model's permitted choice of CERROR_ILL (4.5.1)")
        }
        0x02 if (w1 >> 5) & 0x1f != 0 => {
            Some("CMD_PREFETCH_ADDR Stride (SMMUv3.1 and later): the crate treats it as reserved")
        }
        0x18 | 0x1A => {
            Some("TLBI_EL3_*: CERROR_ILL on the Non-secure queue; the crate knows the opcode")
        }
        0x01 | 0x02 | 0x40 | 0x41 if !ssv && ssid != 0 => {
            Some("a SubstreamID with SSV = 0: the crate refuses it, the model ignores the field")
        }
        _ => None,
    }
}

/// Whether the model's SMMU consumed `words` (rather than stopping with CERROR_ILL).
fn model_accepts(harness: &mut ModelHarness, words: [u64; 2]) -> bool {
    let driver = harness.driver();
    driver.submit_raw(&[Command::from_words(words)]).unwrap();
    match driver.sync() {
        Ok(()) => true,
        Err(Error::CommandError {
            kind: CommandErrorKind::Illegal,
            ..
        }) => false,
        Err(other) => panic!("unexpected driver error {other:?}"),
    }
}

/// A command: a known opcode (or, rarely, another byte), its defined fields random, and now and
/// then one bit outside them.
fn command() -> impl Strategy<Value = [u64; 2]> {
    (
        0usize..Opcode::ALL.len() + 2,
        any::<u8>(),
        any::<[u64; 2]>(),
        proptest::option::weighted(0.25, 0u32..128),
    )
        .prop_map(|(which, other, random, stray)| {
            let opcode = Opcode::ALL.get(which).map_or(other, |o| o.value());
            let defined = Opcode::from_u8(opcode).map_or([0, 0], Opcode::defined_bits);
            let mut words = [
                (random[0] & defined[0] & !0xff) | u64::from(opcode),
                random[1] & defined[1],
            ];
            if let Some(bit) = stray {
                let (word, bit) = ((bit / 64) as usize, bit % 64);
                if word == 1 || bit >= 8 {
                    words[word] |= 1 << bit;
                }
            }
            words
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn the_crates_decoder_and_the_models_agree_on_legality(words in command()) {
        let mut harness = ModelHarness::new(ModelConfig::full()).unwrap();
        let model = model_accepts(&mut harness, words);
        let crate_decoder = Command::from_words(words).decode().is_ok();
        if model != crate_decoder {
            prop_assert!(
                known_difference(words).is_some(),
                "{:#018x?}: model {} but the crate {}",
                words,
                if model { "accepts" } else { "refuses" },
                if crate_decoder { "accepts" } else { "refuses" },
            );
        }
    }
}
