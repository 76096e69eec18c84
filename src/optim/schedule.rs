//! Learning-rate schedule: linear warm-up, then linear or cosine decay to a floor.

use anyhow::{ensure, Result};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Decay {
    Linear,
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    pub max_lr: f32,
    /// Fraction of `max_lr` reached at the last step.
    pub final_frac: f32,
    pub warmup_steps: u32,
    pub total_steps: u32,
    pub decay: Decay,
}

impl LrSchedule {
    pub fn new(
        max_lr: f32,
        final_frac: f32,
        warmup_steps: u32,
        total_steps: u32,
        decay: Decay,
    ) -> Result<Self> {
        ensure!(
            max_lr > 0.0 && max_lr.is_finite(),
            "learning rate must be positive, got {max_lr}"
        );
        ensure!(
            (0.0..=1.0).contains(&final_frac),
            "final learning-rate fraction must be in [0, 1], got {final_frac}"
        );
        ensure!(total_steps > 0, "the number of steps must be positive");
        ensure!(
            warmup_steps <= total_steps,
            "warm-up ({warmup_steps} steps) is longer than the run ({total_steps} steps): pass --warmup {total_steps} or less, or more --steps"
        );
        Ok(LrSchedule {
            max_lr,
            final_frac,
            warmup_steps,
            total_steps,
            decay,
        })
    }

    /// Learning rate at 1-based optimiser step `step`.
    pub fn lr(&self, step: u32) -> f32 {
        if step <= self.warmup_steps {
            return self.max_lr * step as f32 / self.warmup_steps.max(1) as f32;
        }
        let span = (self.total_steps - self.warmup_steps).max(1) as f32;
        let progress = ((step - self.warmup_steps) as f32 / span).min(1.0);
        let shape = match self.decay {
            Decay::Linear => 1.0 - progress,
            Decay::Cosine => 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
        };
        let floor = self.final_frac * self.max_lr;
        floor + (self.max_lr - floor) * shape
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_hits_hand_computed_points() {
        let s = LrSchedule::new(1.0, 0.1, 10, 110, Decay::Linear).unwrap();
        assert_eq!(s.lr(1), 0.1);
        assert_eq!(s.lr(10), 1.0);
        assert!((s.lr(60) - 0.55).abs() < 1e-6); // halfway down from 1.0 to 0.1
        assert!((s.lr(110) - 0.1).abs() < 1e-6);
        let c = LrSchedule::new(2.0, 0.0, 0, 100, Decay::Cosine).unwrap();
        assert!((c.lr(50) - 1.0).abs() < 1e-6); // cos(π/2) = 0 → half of max
        assert!(c.lr(100).abs() < 1e-6);
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(LrSchedule::new(0.0, 0.1, 1, 10, Decay::Linear).is_err());
        assert!(LrSchedule::new(1.0, 1.5, 1, 10, Decay::Linear).is_err());
        let e = LrSchedule::new(1.0, 0.1, 20, 10, Decay::Linear).unwrap_err();
        assert!(e.to_string().contains("warm-up"), "{e}");
    }
}
