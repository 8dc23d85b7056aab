//! The parsers of user files against the fuzzer of `tests/src/fuzz.rs`: every committed
//! regression input, and a short seeded run of each target (`cargo xtask fuzz` runs longer).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use temper_tests::fuzz::{check, fuzz, regressions, targets};

#[test]
fn committed_regressions_neither_panic_nor_hang() {
    let scratch =
        std::env::temp_dir().join(format!("temper-fuzz-regressions-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for target in targets() {
        for (path, input) in regressions(&target) {
            let failure = check(&target, &input, &scratch);
            assert!(failure.is_none(), "{}: {failure:?}", path.display());
        }
    }
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn every_target_survives_a_short_seeded_run() {
    for target in targets() {
        let report = fuzz(&target, 1, Duration::from_secs(20), 150);
        assert!(report.inputs > 0, "{}: no input ran", target.name);
        if let Some(failure) = report.failures.first() {
            panic!(
                "{}: {} on input {:?}",
                target.name,
                failure.what,
                String::from_utf8_lossy(&failure.input)
            );
        }
    }
}
