//! A deep linear network f = W_L ⋯ W_1 trained by plain gradient descent: the original (every layer
//! d×d, ε-scaled random orthogonal) and the compressed one (width r̂, initialised from the top-r̂
//! singular vectors of a surrogate of the target), SCIENCE.md §4.
//!
//! One step reuses the forward pass: the prefix products P_l = W_l⋯W_1 are kept, the backward pass
//! carries B_l = ∂loss/∂P_l = W_{l+1}ᵀ·B_{l+1} down from B_L = ∂loss/∂W, and ∂loss/∂W_l = B_l·P_{l−1}ᵀ.
//! That is 3(L − 1) products a step, all into buffers allocated once.

use super::linalg::{matmul, n, random_orthogonal, svd, t, Mat};
use super::problem::Problem;
use crate::util::rng::Rng;

/// How the compressed network's layers start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum CompressedInit {
    /// W̃_1 = ε·V̂ᵀ, W̃_l = ε·I, W̃_L = ε·Û from the surrogate's top-r̂ singular vectors.
    Spectral,
    /// The original network's init at width r̂ (ε-scaled slices of random orthogonal matrices):
    /// the ablation that shows the init is what makes compression work.
    Random,
}

pub struct Dln {
    /// W_1 (w × d), W_2..W_{L−1} (w × w), W_L (d × w).
    layers: Vec<Mat>,
    /// Step size per layer.
    steps: Vec<f64>,
    /// prefix[l] = W_{l+1}⋯W_1 (0-based), so prefix[L−1] is the end-to-end matrix W.
    prefix: Vec<Mat>,
    /// back[l] = ∂loss/∂prefix[l].
    back: Vec<Mat>,
    grads: Vec<Mat>,
    threads: usize,
}

impl Dln {
    /// The original network: every layer ε·O_l with O_l a random d×d orthogonal matrix.
    pub fn original(d: usize, depth: usize, eps: f64, rng: &mut Rng) -> Dln {
        let layers = (0..depth)
            .map(|_| random_orthogonal(d, rng).scaled(eps))
            .collect();
        Dln::from_layers(layers)
    }

    /// The compressed network of width `width` for a problem whose target is estimated by `surrogate`.
    pub fn compressed(
        surrogate: &Mat,
        width: usize,
        depth: usize,
        eps: f64,
        init: CompressedInit,
        rng: &mut Rng,
    ) -> Dln {
        let d = surrogate.rows;
        let (first, last) = match init {
            CompressedInit::Spectral => {
                let s = svd(surrogate);
                (s.v.left_columns(width).transpose(), s.u.left_columns(width))
            }
            CompressedInit::Random => (
                random_orthogonal(d, rng).top_rows(width),
                random_orthogonal(d, rng).left_columns(width),
            ),
        };
        let middle = |rng: &mut Rng| match init {
            CompressedInit::Spectral => Mat::identity(width),
            CompressedInit::Random => random_orthogonal(width, rng),
        };
        let mut layers = vec![first.scaled(eps)];
        for _ in 0..depth - 2 {
            layers.push(middle(rng).scaled(eps));
        }
        layers.push(last.scaled(eps));
        Dln::from_layers(layers)
    }

    pub fn from_layers(layers: Vec<Mat>) -> Dln {
        let d = layers[0].cols;
        let prefix: Vec<Mat> = layers.iter().map(|w| Mat::zeros(w.rows, d)).collect();
        let back = prefix.clone();
        let grads = layers.iter().map(|w| Mat::zeros(w.rows, w.cols)).collect();
        let steps = vec![0.0; layers.len()];
        Dln {
            layers,
            steps,
            prefix,
            back,
            grads,
            threads: 1,
        }
    }

    /// Step η for the middle layers and α·η for the first and last.
    pub fn set_steps(&mut self, lr: f64, alpha: f64) {
        let last = self.layers.len() - 1;
        self.steps = (0..=last)
            .map(|l| if l == 0 || l == last { alpha * lr } else { lr })
            .collect();
    }

    /// 1 runs each product on the calling thread; 2 splits products over two rayon tasks.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads;
    }

    pub fn layers(&self) -> &[Mat] {
        &self.layers
    }

    pub fn width(&self) -> usize {
        self.layers[0].rows
    }

    pub fn parameter_count(&self) -> usize {
        self.layers.iter().map(|w| w.data.len()).sum()
    }

    /// Computes the prefix products; the end-to-end matrix is then `end_to_end()`.
    pub fn forward(&mut self) {
        self.prefix[0].data.copy_from_slice(&self.layers[0].data);
        for l in 1..self.layers.len() {
            let (done, rest) = self.prefix.split_at_mut(l);
            matmul(
                &mut rest[0],
                n(&self.layers[l]),
                n(&done[l - 1]),
                self.threads,
            );
        }
    }

    pub fn end_to_end(&self) -> &Mat {
        self.prefix.last().expect("depth ≥ 2")
    }

    /// Gradients of the problem's loss with respect to every layer, at the current weights; returns
    /// the loss. Runs `forward` first.
    pub fn gradients(&mut self, problem: &mut Problem) -> f64 {
        self.forward();
        let depth = self.layers.len();
        let loss = problem.loss_and_grad(&self.prefix[depth - 1], &mut self.back[depth - 1]);
        for l in (1..depth).rev() {
            let (below, above) = self.back.split_at_mut(l);
            let (grad, upstream, layer, input) = (
                &mut self.grads[l],
                &above[0],
                &self.layers[l],
                &self.prefix[l - 1],
            );
            // The two products are independent: on two threads, one each.
            if self.threads >= 2 {
                rayon::join(
                    || matmul(grad, n(upstream), t(input), 1),
                    || matmul(&mut below[l - 1], t(layer), n(upstream), 1),
                );
            } else {
                matmul(grad, n(upstream), t(input), 1);
                matmul(&mut below[l - 1], t(layer), n(upstream), 1);
            }
        }
        self.grads[0].data.copy_from_slice(&self.back[0].data);
        loss
    }

    /// One gradient-descent step; returns the loss before it, at the weights whose end-to-end
    /// matrix `end_to_end()` still holds afterwards.
    pub fn step(&mut self, problem: &mut Problem) -> f64 {
        let loss = self.gradients(problem);
        for ((w, g), &s) in self.layers.iter_mut().zip(&self.grads).zip(&self.steps) {
            w.data
                .iter_mut()
                .zip(&g.data)
                .for_each(|(x, gx)| *x -= s * gx);
        }
        loss
    }

    pub fn gradient(&self, layer: usize) -> &Mat {
        &self.grads[layer]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::dln::linalg::product;
    use crate::experiments::dln::problem::{ProblemSpec, Task};

    fn problem(task: Task) -> Problem {
        Problem::build(&ProblemSpec {
            task,
            d: 6,
            rank: 2,
            measurements: 40,
            observed: 0.5,
            seed: 3,
        })
        .unwrap()
    }

    fn loss_of(layers: &[Mat], problem: &mut Problem) -> f64 {
        let mut w = layers[0].clone();
        for layer in &layers[1..] {
            w = product(n(layer), n(&w));
        }
        problem.loss_and_grad(&w, &mut Mat::zeros(w.rows, w.cols))
    }

    #[test]
    fn gradients_match_central_differences_for_all_three_losses() {
        for task in [Task::Factorization, Task::Sensing, Task::Completion] {
            let mut p = problem(task);
            let mut rng = Rng::new(11);
            // Width 4 ≠ d = 6 so every transpose in the backward pass is exercised; scale 0.7 keeps
            // the loss away from its plateau so gradients are not tiny.
            let shapes = [(4, 6), (4, 4), (4, 4), (6, 4)];
            let layers: Vec<Mat> = shapes
                .iter()
                .map(|&(r, c)| Mat::gaussian(r, c, &mut rng).scaled(0.7))
                .collect();
            for threads in [1, 2] {
                let mut net = Dln::from_layers(layers.clone());
                net.set_threads(threads);
                net.gradients(&mut p);
                let h = 1e-6;
                for (l, layer) in layers.iter().enumerate() {
                    for i in 0..layer.data.len() {
                        let mut plus = layers.clone();
                        plus[l].data[i] += h;
                        let mut minus = layers.clone();
                        minus[l].data[i] -= h;
                        let fd = (loss_of(&plus, &mut p) - loss_of(&minus, &mut p)) / (2.0 * h);
                        let got = net.gradient(l).data[i];
                        assert!(
                            (got - fd).abs() <= 1e-6 * fd.abs().max(1e-3),
                            "{task:?} layer {l} entry {i}: {got} vs {fd}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn compressed_parameter_count_is_2_d_width_plus_middle_squares() {
        let surrogate = Mat::gaussian(30, 30, &mut Rng::new(4));
        for depth in [2, 3, 5] {
            let net = Dln::compressed(
                &surrogate,
                6,
                depth,
                1e-2,
                CompressedInit::Spectral,
                &mut Rng::new(5),
            );
            assert_eq!(
                net.parameter_count(),
                2 * 30 * 6 + (depth - 2) * 36,
                "depth {depth}"
            );
            assert_eq!(
                Dln::original(30, depth, 1e-2, &mut Rng::new(6)).parameter_count(),
                depth * 900
            );
        }
    }

    #[test]
    fn spectral_init_is_eps_power_times_top_singular_subspace() {
        // End to end ε^L·Û·V̂ᵀ, and Ûᵀ·S·V̂ is the diagonal of S's top singular values.
        let s = Mat::gaussian(12, 12, &mut Rng::new(7));
        let (eps, width) = (0.1, 4);
        let mut net = Dln::compressed(
            &s,
            width,
            3,
            eps,
            CompressedInit::Spectral,
            &mut Rng::new(8),
        );
        net.forward();
        let (u, vt) = (
            net.layers()[2].clone().scaled(1.0 / eps),
            net.layers()[0].clone().scaled(1.0 / eps),
        );
        let core = product(n(&product(t(&u), n(&s))), t(&vt));
        let spectrum = svd(&s).s;
        for (i, &sigma) in spectrum.iter().take(width).enumerate() {
            for j in 0..width {
                let want = if i == j { sigma } else { 0.0 };
                assert!(
                    (core.at(i, j).abs() - want).abs() < 1e-10,
                    "({i},{j}): {}",
                    core.at(i, j)
                );
            }
        }
        let want = product(n(&u), n(&vt)).scaled(eps.powi(3));
        assert!(net.end_to_end().distance(&want) < 1e-15);
    }
}
