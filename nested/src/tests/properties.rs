//! Property tests: hostile register sequences and guest memory, the promises checked after
//! every step (the same driver as the fuzz target, `testing::hostile`).

use proptest::prelude::*;

use crate::testing::hostile;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn no_guest_input_breaks_isolation_or_bounds(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let report = hostile::run(&data);
        prop_assert!(report.operations <= data.len() as u64);
    }
}

#[test]
fn a_linux_start_then_noise_runs_clean() {
    // A fixed input that starts from Linux's reset and keeps the queue busy.
    let mut data = vec![1u8];
    for i in 0..50u8 {
        data.extend_from_slice(&[7, 4 + i % 30, 0x87, 5 + i % 20, 6, 0x86]);
    }
    let report = hostile::run(&data);
    assert!(report.commands > 100, "{report:?}");
    assert!(report.installs > 0, "{report:?}");
}

#[test]
fn a_linux_start_with_pri_then_page_requests_and_responses_runs_clean() {
    // Bit 1 of the first byte: the physical SMMU has PRI and the first VM forwards it. Page
    // requests for both VMs' streams (and none), bursts with CMD_PRI_RESPs, continuations.
    let mut data = vec![3u8];
    for i in 0..40u8 {
        let request = [
            0x45 | (i % 4) << 3,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            i,
            0,
            0,
            0,
            0,
            0,
            0,
            2,
            i,
        ];
        data.extend_from_slice(&request);
        data.extend_from_slice(&[7, 0x44 + i % 20, 6]);
    }
    let report = hostile::run(&data);
    assert!(report.operations >= 100, "{report:?}");
    assert!(report.page_requests >= 20, "{report:?}");
}
