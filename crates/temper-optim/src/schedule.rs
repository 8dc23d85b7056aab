//! Learning-rate schedules as pure functions of the step, with the shapes of
//! `transformers`' schedulers.
//!
//! ```text
//! lr  ^         cosine (min_lr_ratio = 0.1)          linear                 constant
//!     |    ____                                 ____                    ___________
//!     |   /    ``--.__                         /    `--.__             /
//!     |  /           ``--.___ ___             /           `--.__      /
//!     | /                                    /                 `--   /
//!     +--warmup------------------ step       +--warmup----------      +--warmup-----
//! ```

use serde::{Deserialize, Serialize};

/// The schedule kind (`lr_scheduler` in a run configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Warmup, then the peak rate.
    Constant,
    /// Warmup, then a straight line down to `min_lr_ratio * learning_rate`.
    Linear,
    /// Warmup, then half a cosine down to `min_lr_ratio * learning_rate`.
    #[default]
    Cosine,
}

/// A learning-rate schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// The peak learning rate.
    pub learning_rate: f64,
    /// Steps of linear warmup from 0 to the peak.
    pub warmup_steps: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// The rate decays to `min_lr_ratio * learning_rate`.
    pub min_lr_ratio: f64,
}

/// The learning rate of optimizer step `step` (counted from 0), as
/// `get_{constant,linear,cosine}_schedule_with_warmup` (with `min_lr_ratio` as in
/// `get_cosine_with_min_lr_schedule_with_warmup`) give it.
pub fn lr_at(schedule: &LrSchedule, step: u64) -> f64 {
    let LrSchedule {
        kind,
        learning_rate,
        warmup_steps,
        total_steps,
        min_lr_ratio,
    } = *schedule;
    if step < warmup_steps {
        return learning_rate * step as f64 / warmup_steps.max(1) as f64;
    }
    let decay_steps = total_steps.saturating_sub(warmup_steps).max(1) as f64;
    let progress = ((step - warmup_steps) as f64 / decay_steps).min(1.0);
    let factor = match kind {
        ScheduleKind::Constant => return learning_rate,
        ScheduleKind::Linear => 1.0 - progress,
        ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    learning_rate * (factor * (1.0 - min_lr_ratio) + min_lr_ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind, min_lr_ratio: f64) -> LrSchedule {
        LrSchedule {
            kind,
            learning_rate: 1.0,
            warmup_steps: 4,
            total_steps: 12,
            min_lr_ratio,
        }
    }

    #[test]
    fn warmup_rises_linearly_from_zero() {
        for kind in [
            ScheduleKind::Constant,
            ScheduleKind::Linear,
            ScheduleKind::Cosine,
        ] {
            let rates: Vec<f64> = (0..5).map(|s| lr_at(&schedule(kind, 0.0), s)).collect();
            assert_eq!(rates, [0.0, 0.25, 0.5, 0.75, 1.0], "{kind:?}");
        }
    }

    #[test]
    fn decays_reach_the_minimum_at_the_end_and_stay_there() {
        let table = [
            (ScheduleKind::Linear, 0.0, [1.0, 0.5, 0.0, 0.0]),
            (ScheduleKind::Cosine, 0.0, [1.0, 0.5, 0.0, 0.0]),
            (ScheduleKind::Cosine, 0.1, [1.0, 0.55, 0.1, 0.1]),
            (ScheduleKind::Constant, 0.1, [1.0, 1.0, 1.0, 1.0]),
        ];
        for (kind, min, expected) in table {
            let rates: Vec<f64> = [4, 8, 12, 20]
                .iter()
                .map(|&s| lr_at(&schedule(kind, min), s))
                .collect();
            for (rate, want) in rates.iter().zip(expected) {
                assert!((rate - want).abs() < 1e-12, "{kind:?} min {min}: {rates:?}");
            }
        }
    }
}
