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
