//! Rank growth (stage 1) and truncation (stage 2) of SCIENCE.md §1. A growth check runs every few
//! optimiser steps and reads each product's spectrum from its factors' Gram matrices, formed on
//! the backend (`spectrum`); the truncation runs once, on the host (QR cores in f64).
//!
//! Moment transport at truncation (`--moment-transport rotate`). Stage 2 replaces U (n_in × k) by
//! U' = Qu·P_r·√Σ_r (n_in × r). The gradient of the loss with respect to U' is G·V' where
//! G = ∂L/∂W, and G·V' = (G·V)·T_u with T_u = Rv⁺·Q_r·√Σ_r (see `linalg::Truncation`): every
//! gradient of U maps to the gradient of U' by right-multiplication with T_u. Adam's first moment
//! is a running average of gradients, so it maps exactly the same way: m_U' = m_U·T_u. The second
//! moment is an average of squared gradients, which no linear map carries exactly; we use
//! SCIENCE.md §3's rule v ← (M·√v·N)² with M = I, N = T_u: v_U' = (√v_U·T_u)², which is
//! non-negative, exact when T_u is a signed permutation-and-scaling, and of the right size
//! otherwise. V likewise with T_v = Ru⁺·P_r·√Σ_r. In the transposed storage (Ut = Uᵀ) both read
//! m_Ut' = T_uᵀ·m_Ut. `slice` keeps the first r rows of each moment untouched, as the reference
//! code does.

use super::config::MomentTransport;
use super::runtime::LiveRank;
use super::spectrum::live_spectra;
use crate::backend::Backend;
use crate::linalg::factor::to_transposed;
use crate::linalg::{explained_rank, CoreSvd};
use crate::model::Gpt;
use crate::optim::AdamWOptimizer;
use anyhow::{Context, Result};
use faer::{Mat, MatRef};

/// A rank change at a growth check.
#[derive(Clone, Debug, PartialEq)]
pub struct RankChange {
    pub layer: String,
    pub from: usize,
    pub to: usize,
}

/// Host copies of low-rank layer `i`'s live rows of Ut and Vt (M·Vt for a compressed block, so
/// that Utᵀ·Vt is the layer's product), with the live width.
pub fn live_factors<B: Backend>(
    b: &B,
    model: &Gpt<B>,
    i: usize,
) -> Result<(Vec<f32>, Vec<f32>, usize)> {
    let lt = &model.layout().lowrank()[i];
    let (l, k) = (&lt.layer, model.lowrank().live[i].width);
    let at = |t: usize, n: usize| {
        let off = model.layout().tensors()[t].offset;
        b.download(model.params().at(off, k * n))
    };
    let (ut, vt) = (at(lt.ut, l.n_in)?, at(lt.vt, l.n_out)?);
    let Some(mid) = lt.mid else {
        return Ok((ut, vt, k));
    };
    // A compressed block's product is Utᵀ·(M·Vt): fold M into Vt (k × k times k × n_out).
    let m = at(mid, k)?;
    let n = l.n_out;
    let mut folded = vec![0.0f32; k * n];
    for (row, m_row) in folded.chunks_mut(n).zip(m.chunks(k)) {
        for (&mjk, vt_row) in m_row.iter().zip(vt.chunks(n)) {
            row.iter_mut().zip(vt_row).for_each(|(o, &v)| *o += mjk * v);
        }
    }
    Ok((ut, folded, k))
}

/// One growth check: each layer's new rank is the smallest j ≥ r with explained ratio g(j) > α
/// (from the QR-core singular values of its live product), raised by at most b − 1 and capped at
/// R − b − 1; it never shrinks. The width follows as rank + buffer. Allocates nothing on the device.
pub fn grow<B: Backend>(b: &B, model: &mut Gpt<B>, alpha: f64) -> Result<Vec<RankChange>> {
    let spectra = live_spectra(b, model).context("rank check")?;
    let mut changes = Vec::new();
    for (i, s) in spectra.iter().enumerate() {
        let layer = model.layout().lowrank()[i].layer.clone();
        let (r, k) = (model.lowrank().live[i].rank, s.len());
        let limit = (r + layer.buffer.saturating_sub(1))
            .min(layer.max_rank)
            .max(r);
        let energy = s.iter().map(|x| x * x).sum();
        let new = explained_rank(s, energy, alpha, r)
            .unwrap_or(k)
            .clamp(r, limit);
        if new != r {
            changes.push(RankChange {
                layer: layer.prefix.clone(),
                from: r,
                to: new,
            });
        }
        model.lowrank_mut().live[i] = LiveRank {
            rank: new,
            width: layer.width(new),
        };
    }
    Ok(changes)
}

/// Stage 2: each layer's factors become the balanced rank-r truncation of its live product (the
/// buffer is dropped, rows ≥ r are zeroed), and AdamW's moments follow by `transport`.
pub fn truncate<B: Backend>(
    b: &B,
    model: &mut Gpt<B>,
    opt: &mut AdamWOptimizer<B>,
    transport: MomentTransport,
) -> Result<()> {
    for i in 0..model.layout().lowrank().len() {
        let (ut, vt, k) = live_factors(b, model, i)?;
        let lt = model.layout().lowrank()[i].clone();
        let r = model.lowrank().live[i].rank;
        let core = CoreSvd::of_transposed(&ut, &vt, k)
            .with_context(|| format!("truncation of {}", lt.layer.prefix))?;
        let tr = core.truncate(r);
        let cap = lt.layer.capacity;
        for (t, factor, map, n) in [
            (lt.ut, &tr.u, &tr.grad_map_u, lt.layer.n_in),
            (lt.vt, &tr.v, &tr.grad_map_v, lt.layer.n_out),
        ] {
            let off = model.layout().tensors()[t].offset;
            let mut rows = to_transposed(factor.as_ref());
            rows.resize(cap * n, 0.0);
            b.upload(&rows, model.params_mut().at_mut(off, cap * n))?;
            let window = Window { off, k, n, cap };
            transport_moments(b, opt, window, map.as_ref(), transport)?;
        }
        model.lowrank_mut().live[i] = LiveRank { rank: r, width: r };
    }
    model.lowrank_mut().truncated = true;
    model.refresh_compute_copy(b)
}

/// A factor's rows in the flat buffers: `cap` rows of `n`, of which the first `k` were live.
#[derive(Clone, Copy)]
struct Window {
    off: usize,
    k: usize,
    n: usize,
    cap: usize,
}

/// Rewrites one factor's moment rows: the first r (= map's columns) transported or sliced, the rest
/// zero (those rows are no longer live).
fn transport_moments<B: Backend>(
    b: &B,
    opt: &mut AdamWOptimizer<B>,
    w: Window,
    map: MatRef<f64>,
    transport: MomentTransport,
) -> Result<()> {
    let r = map.ncols();
    let [m, v] = opt.moments(w.off, w.k * w.n)?;
    let (m, v) = (b.download(m)?, b.download(v)?);
    let (mut m2, mut v2) = match transport {
        MomentTransport::Slice => (m[..r * w.n].to_vec(), v[..r * w.n].to_vec()),
        MomentTransport::Rotate => {
            let rows =
                |x: &[f32], f: fn(f32) -> f64| Mat::from_fn(w.k, w.n, |i, j| f(x[i * w.n + j]));
            let mm = map.transpose() * rows(&m, |x| x as f64);
            let sv = map.transpose() * rows(&v, |x| (x.max(0.0) as f64).sqrt());
            let flat = |a: &Mat<f64>, f: fn(f64) -> f32| {
                (0..r)
                    .flat_map(|i| (0..w.n).map(move |j| (i, j)))
                    .map(|(i, j)| f(a[(i, j)]))
                    .collect::<Vec<f32>>()
            };
            (flat(&mm, |x| x as f32), flat(&sv, |x| (x * x) as f32))
        }
    };
    m2.resize(w.cap * w.n, 0.0);
    v2.resize(w.cap * w.n, 0.0);
    let [m, v] = opt.moments_mut(w.off, w.cap * w.n)?;
    b.upload(&m2, m)?;
    b.upload(&v2, v)
}
