//! The three problems of the deep-linear-network study (SCIENCE.md §4): a rank-r target Φ and what
//! the network is trained to match — Φ itself (factorisation), Gaussian linear measurements of Φ
//! (sensing), or a random subset of its entries (completion) — with the loss, its gradient with
//! respect to the end-to-end matrix W, and the surrogate of Φ that the compressed network starts from.

use super::linalg::{svd, Mat, Svd};
use super::sensing::Sensing;
use crate::util::rng::Rng;
use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Task {
    Factorization,
    Sensing,
    Completion,
}

/// What the user asked for; `Problem::build` checks it and draws the data.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProblemSpec {
    pub task: Task,
    pub d: usize,
    pub rank: usize,
    /// Number of Gaussian measurements (sensing only).
    pub measurements: usize,
    /// Fraction of entries observed (completion only).
    pub observed: f64,
    pub seed: u64,
}

impl ProblemSpec {
    pub fn validate(&self) -> Result<()> {
        let (d, r) = (self.d, self.rank);
        if d < 2 {
            bail!("--d {d}: the matrix dimension must be at least 2");
        }
        if r == 0 || r >= d {
            bail!("--rank {r} must be between 1 and d − 1 = {} (a rank-{r} target of a {d}×{d} matrix is not low-rank)", d - 1);
        }
        if 2 * r > d {
            bail!("--rank {r} is too large for --d {d}: the target's singular triplets are taken at spread indices k·d/(2r) < d/2, which needs 2·rank ≤ d; lower --rank or raise --d");
        }
        if self.task == Task::Sensing && self.measurements == 0 {
            bail!("--measurements must be positive for sensing");
        }
        if self.task == Task::Completion && !(self.observed > 0.0 && self.observed <= 1.0) {
            bail!("--observed {} must lie in (0, 1]: it is the fraction of the {d}×{d} entries the network sees", self.observed);
        }
        Ok(())
    }
}

enum Measurements {
    Full,
    Sensing(Sensing),
    /// 0/1 mask, row-major, and the number of ones.
    Completion {
        mask: Vec<f64>,
        observed: usize,
    },
}

pub struct Problem {
    pub target: Mat,
    measurements: Measurements,
}

impl Problem {
    pub fn build(spec: &ProblemSpec) -> Result<Problem> {
        spec.validate()?;
        let mut rng = Rng::new(spec.seed);
        let target = spread_spectrum_target(spec.d, spec.rank, &mut rng);
        let measurements = match spec.task {
            Task::Factorization => Measurements::Full,
            Task::Sensing => {
                Measurements::Sensing(Sensing::gaussian(&target, spec.measurements, &mut rng))
            }
            Task::Completion => {
                let mask = random_mask(spec.d * spec.d, spec.observed, &mut rng);
                completion(mask)?
            }
        };
        Ok(Problem {
            target,
            measurements,
        })
    }

    /// A sensing problem with given measurement matrices (for tests): A_i = a_i/m, a_i row-major.
    pub fn sensing_from(target: Mat, scaled_measurements: Vec<f32>) -> Problem {
        let sensing = Sensing::new(&target, scaled_measurements);
        Problem {
            target,
            measurements: Measurements::Sensing(sensing),
        }
    }

    /// A completion problem with a given 0/1 mask (for tests).
    pub fn completion_from(target: Mat, mask: Vec<f64>) -> Result<Problem> {
        Ok(Problem {
            measurements: completion(mask)?,
            target,
        })
    }

    pub fn factorization_from(target: Mat) -> Problem {
        Problem {
            target,
            measurements: Measurements::Full,
        }
    }

    pub fn d(&self) -> usize {
        self.target.rows
    }

    /// The training loss at end-to-end matrix `w`, writing ∂loss/∂W into `grad`:
    /// factorisation ½·mean((W − Φ)²); completion ½·Σ_observed (W − Φ)² / #observed;
    /// sensing ½·Σ_i (⟨A_i, W⟩ − y_i)².
    pub fn loss_and_grad(&mut self, w: &Mat, grad: &mut Mat) -> f64 {
        match &mut self.measurements {
            Measurements::Full => {
                let scale = 1.0 / w.data.len() as f64;
                residual_loss(w, &self.target, grad, |_| scale)
            }
            Measurements::Completion { mask, observed } => {
                let scale = 1.0 / *observed as f64;
                residual_loss(w, &self.target, grad, |i| mask[i] * scale)
            }
            Measurements::Sensing(s) => s.loss_and_grad(w, grad),
        }
    }

    /// The estimate of Φ that the compressed network's init is built from: Φ (factorisation),
    /// A*(y)/m = (1/m)·Σ y_i·A_i (sensing), observed entries divided by the observed fraction
    /// (completion).
    pub fn surrogate(&self) -> Mat {
        match &self.measurements {
            Measurements::Full => self.target.clone(),
            Measurements::Sensing(s) => s.surrogate(self.d()),
            Measurements::Completion { mask, observed } => {
                let fraction = *observed as f64 / mask.len() as f64;
                let mut s = self.target.clone();
                s.data
                    .iter_mut()
                    .zip(mask)
                    .for_each(|(x, m)| *x *= m / fraction);
                s
            }
        }
    }

    /// ‖W − Φ‖_F / ‖Φ‖_F.
    pub fn recovery_error(&self, w: &Mat) -> f64 {
        w.distance(&self.target) / self.target.frobenius()
    }
}

/// ½·Σ_i weight(i)·(W − Φ)_i², with gradient weight(i)·(W − Φ)_i.
fn residual_loss(w: &Mat, target: &Mat, grad: &mut Mat, weight: impl Fn(usize) -> f64) -> f64 {
    let mut loss = 0.0;
    for (i, ((g, x), y)) in grad
        .data
        .iter_mut()
        .zip(&w.data)
        .zip(&target.data)
        .enumerate()
    {
        let e = x - y;
        let we = weight(i) * e;
        *g = we;
        loss += we * e;
    }
    0.5 * loss
}

fn completion(mask: Vec<f64>) -> Result<Measurements> {
    let observed = mask.iter().filter(|&&m| m != 0.0).count();
    if observed == 0 {
        bail!("the completion mask observes no entry: raise --observed");
    }
    Ok(Measurements::Completion { mask, observed })
}

/// Exactly ⌊n·fraction⌋ entries (at least one) chosen uniformly without replacement, as the
/// reference code does.
fn random_mask(n: usize, fraction: f64, rng: &mut Rng) -> Vec<f64> {
    let count = ((n as f64 * fraction) as usize).clamp(1, n);
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut mask = vec![0.0; n];
    order[..count].iter().for_each(|&i| mask[i] = 1.0);
    mask
}

/// Φ = Σ_k σ_{i_k}·u_{i_k}·v_{i_k}ᵀ from the SVD of a d×d Gaussian matrix, at the spread indices
/// i_k = ⌊k·d/(2r)⌋, k < r, so the r singular values are distinct and well separated.
pub fn spread_spectrum_target(d: usize, rank: usize, rng: &mut Rng) -> Mat {
    let g = Mat::gaussian(d, d, rng);
    let Svd { u, s, v } = svd(&g);
    let picks: Vec<usize> = (0..rank).map(|k| k * d / (2 * rank)).collect();
    Mat::from_fn(d, d, |i, j| {
        picks.iter().map(|&p| u.at(i, p) * s[p] * v.at(j, p)).sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Edit = fn(&mut ProblemSpec);

    fn spec(task: Task) -> ProblemSpec {
        ProblemSpec {
            task,
            d: 20,
            rank: 3,
            measurements: 50,
            observed: 0.3,
            seed: 5,
        }
    }

    #[test]
    fn target_has_the_requested_rank_and_distinct_singular_values() {
        let phi = spread_spectrum_target(20, 3, &mut Rng::new(1));
        let s = svd(&phi).s;
        assert!(s[2] > 1e-6 && s[3] < 1e-12 * s[0], "{s:?}");
        assert!(s[0] > s[1] * 1.01 && s[1] > s[2] * 1.01, "{s:?}");
    }

    #[test]
    fn sensing_surrogate_is_adjoint_of_labels_over_m_by_hand() {
        // d = 2, m = 2, a_1 = [1 2; 3 4], a_2 = [0 1; −1 2], A_i = a_i/2, Φ = I.
        // y = (⟨A_1, I⟩, ⟨A_2, I⟩) = (2.5, 1); A*(y)/m = ½·(2.5·A_1 + A_2) = [0.625 1.5; 1.625 3].
        let p = Problem::sensing_from(
            Mat::identity(2),
            vec![1.0, 2.0, 3.0, 4.0, 0.0, 1.0, -1.0, 2.0],
        );
        let want = [0.625, 1.5, 1.625, 3.0];
        for (got, want) in p.surrogate().data.iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
    }

    #[test]
    fn completion_surrogate_rescales_observed_entries() {
        let target = Mat::from_fn(2, 2, |i, j| (1 + 2 * i + j) as f64);
        let p = Problem::completion_from(target, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        assert_eq!(p.surrogate().data, vec![2.0, 0.0, 0.0, 8.0]);
    }

    #[test]
    fn losses_are_zero_at_the_target_and_match_their_definitions() {
        for task in [Task::Factorization, Task::Sensing, Task::Completion] {
            let mut p = Problem::build(&spec(task)).unwrap();
            let mut grad = Mat::zeros(20, 20);
            let at_target = p.loss_and_grad(&p.target.clone(), &mut grad);
            assert!(at_target.abs() < 1e-20, "{task:?}: {at_target}");
            assert!(grad.frobenius() < 1e-12, "{task:?}");
        }
        // Factorisation at W = 0: ½·mean(Φ²).
        let mut p = Problem::build(&spec(Task::Factorization)).unwrap();
        let want = 0.5 * p.target.frobenius().powi(2) / 400.0;
        let got = p.loss_and_grad(&Mat::zeros(20, 20), &mut Mat::zeros(20, 20));
        assert!((got - want).abs() < 1e-14 * want);
    }

    #[test]
    fn bad_input_is_refused_with_the_flag_named() {
        let cases: [(Edit, &str); 5] = [
            (|s| s.rank = 20, "--rank 20"),
            (|s| s.rank = 0, "--rank 0"),
            (|s| s.rank = 11, "2·rank ≤ d"),
            (|s| (s.task, s.observed) = (Task::Completion, 0.0), "(0, 1]"),
            (|s| (s.task, s.observed) = (Task::Completion, 1.5), "(0, 1]"),
        ];
        for (edit, needle) in cases {
            let mut s = spec(Task::Factorization);
            edit(&mut s);
            let err = Problem::build(&s)
                .err()
                .expect("bad input accepted")
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        let mut full = spec(Task::Completion);
        full.observed = 1.0;
        assert!(Problem::build(&full).is_ok());
    }
}
