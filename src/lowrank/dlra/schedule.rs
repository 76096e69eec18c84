//! The DLRA integrator on a GPT's low-rank layers (`lowrank train --lowrank dlra`, SCIENCE.md §3).
//!
//! Each layer is W = U·S·Vᵀ, stored as a compressed block Utᵀ·M·Vt with orthonormal rows in Ut
//! and Vt and M = S; the optimiser (AdamW) trains S alone, the bases move only here. A window of
//! K optimiser steps:
//! - before its first step, `augment`: the layer sits at its rank r with S = Σ diagonal (from the
//!   last truncation or the spectral init). Its backward pass has left dUt = S·(G·V)ᵀ and
//!   dVt = Sᵀ·(Uᵀ·G) in the gradient buffer (G = ∂L/∂W over the step's micro-batches), so G·V and
//!   Gᵀ·U come out by dividing rows by σ. The bases grow to 2r, S and its moments are padded, and
//!   the gradient of S becomes the tangent gradient in the new bases (its lower-right block, which
//!   would need G itself, is zero: the parallel integrator's step);
//! - inside the window the bases are frozen and AdamW steps the whole 2r × 2r S on Ûᵀ·G·V̂, which
//!   the backward computes as the middle factor's gradient;
//! - after its last step, `truncate`: the SVD S = P·Σ·Qᵀ cuts the rank back to r (or to the
//!   smallest rank within τ), the bases rotate, and S's moments are transported.
//!
//! K = 1 is the parallel integrator. The bases (n × 2r, n up to 4096) stay on the backend and
//! change there by GEMMs (`basis`); S, its moments and the r × r products the integrator needs
//! travel to the host, where the small algebra runs in f64. All layers go through each phase
//! together: their GEMMs are launched, their small products come back in one download, and the
//! host's algebra runs over the layers in parallel, so a window costs a handful of
//! synchronisations, not a handful per layer (at K = 1 on a GPU, every step).

use super::basis::{self, Extension, Products};
use super::integrator::{tangent_from_blocks, Cut};
use super::{FreshMoment, Keep, Moments};
use crate::backend::{Backend, Ref};
use crate::lowrank::growth::RankChange;
use crate::lowrank::{LiveRank, LowRankLayer};
use crate::model::Gpt;
use crate::optim::AdamWOptimizer;
use anyhow::{ensure, Context, Result};
use faer::{Mat, MatRef};
use rayon::prelude::*;

/// Where one layer's tensors sit in the flat buffers (the optimiser's moments share the offsets).
#[derive(Clone)]
struct Place {
    layer: LowRankLayer,
    ut: usize,
    vt: usize,
    mid: usize,
}

fn places<B: Backend>(model: &Gpt<B>) -> Result<Vec<Place>> {
    let offset = |t: usize| model.layout().tensors()[t].offset;
    model
        .layout()
        .lowrank()
        .iter()
        .map(|lt| {
            ensure!(
                lt.layer.orthonormal_bases,
                "{} is not a DLRA layer (a layout of another --lowrank mode)",
                lt.layer.prefix
            );
            let mid = lt.mid.context("a DLRA layer has a middle factor S")?;
            Ok(Place {
                layer: lt.layer.clone(),
                ut: offset(lt.ut),
                vt: offset(lt.vt),
                mid: offset(mid),
            })
        })
        .collect()
}

/// Downloads `rows × cols` row-major f32 at `off` as an f64 matrix.
fn matrix<B: Backend>(b: &B, window: Ref<B::Buf>, rows: usize, cols: usize) -> Result<Mat<f64>> {
    let x = b.download(window)?;
    Ok(Mat::from_fn(rows, cols, |i, j| x[i * cols + j] as f64))
}

/// Row-major f32 of `a`, zero-padded to `len`.
fn flat(a: MatRef<f64>, len: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..a.nrows())
        .flat_map(|i| (0..a.ncols()).map(move |j| a[(i, j)] as f32))
        .collect();
    x.resize(len, 0.0);
    x
}

/// S and its moments at width k.
fn coefficients<B: Backend>(
    b: &B,
    model: &Gpt<B>,
    opt: &AdamWOptimizer<B>,
    p: &Place,
    k: usize,
) -> Result<(Mat<f64>, Moments)> {
    let [m, v] = opt.moments(p.mid, k * k)?;
    Ok((
        matrix(b, model.params().at(p.mid, k * k), k, k)?,
        Moments {
            m: matrix(b, m, k, k)?,
            v: matrix(b, v, k, k)?,
        },
    ))
}

/// Writes S and its moments (entries beyond their width zeroed in the capacity² block).
fn store_coefficients<B: Backend>(
    b: &B,
    model: &mut Gpt<B>,
    opt: &mut AdamWOptimizer<B>,
    p: &Place,
    s: MatRef<f64>,
    state: &Moments,
) -> Result<()> {
    let sq = p.layer.capacity * p.layer.capacity;
    b.upload(&flat(s, sq), model.params_mut().at_mut(p.mid, sq))?;
    let [m, v] = opt.moments_mut(p.mid, sq)?;
    b.upload(&flat(state.m.as_ref(), sq), m)?;
    b.upload(&flat(state.v.as_ref(), sq), v)
}

/// Augments every layer's bases to twice its rank from the step's gradient (accumulated over its
/// micro-batches, not yet used by the optimiser) and replaces the gradient of S by the tangent
/// gradient in the new bases. Leaves the bases' own gradients zero. The layers go through each
/// phase together (one download per phase, the host's algebra in parallel over layers).
pub fn augment<B: Backend>(
    b: &B,
    model: &mut Gpt<B>,
    opt: &mut AdamWOptimizer<B>,
    fresh: FreshMoment,
) -> Result<()> {
    let places = places(model)?;
    let mut coeffs = Vec::with_capacity(places.len());
    for (p, live) in places.iter().zip(&model.lowrank().live) {
        let r = live.rank;
        ensure!(
            live.width == r,
            "{}: DLRA augments a layer at its rank, but it is {} wide at rank {r} (a checkpoint from the middle of a window with another --dlra-window?)",
            p.layer.prefix,
            live.width
        );
        let (s, state) = coefficients(b, model, opt, p, r)?;
        let off_diagonal = (0..r).any(|i| (0..r).any(|j| i != j && s[(i, j)] != 0.0));
        ensure!(
            !off_diagonal,
            "{}: S is not diagonal at the start of a DLRA window",
            p.layer.prefix
        );
        coeffs.push((s, state));
    }
    let ranks: Vec<usize> = model.lowrank().live.iter().map(|l| l.rank).collect();
    // The gradient rows are S·(G·V)ᵀ and S·(Uᵀ·G): with S diagonal, the same spans as G·V and
    // Gᵀ·U, and the products below carry a factor σ to divide out.
    let (params, grads) = (model.params(), model.grads()?);
    let jobs: Vec<Extension> = places
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            let (sides, r) = ([(p.ut, p.layer.n_in), (p.vt, p.layer.n_out)], ranks[i]);
            sides
                .into_iter()
                .enumerate()
                .map(move |(t, (basis, n))| Extension {
                    name: &p.layer.prefix,
                    basis: params.offset(basis, 2 * r * n),
                    dir: grads.offset(basis, r * n),
                    n,
                    r,
                    seed: ((i as u64) << 1) | t as u64,
                })
        })
        .collect();
    let bufs = model.optimizer_buffers()?;
    let (params, dirs) = (bufs.params.buf_mut(), bufs.grads.buf());
    (basis::extend(b, params, dirs, &jobs)).context("DLRA augmentation")?;

    // Ûᵀ·(G·V)·S and S·(Uᵀ·G)·V̂ of every layer, in one download.
    let shapes = ranks.iter().flat_map(|&r| [(2 * r, r), (r, 2 * r)]);
    let mut products = Products::new(b, shapes)?;
    let (params, grads) = (model.params(), model.grads()?);
    for (i, p) in places.iter().enumerate() {
        let (r, n_in, n_out) = (ranks[i], p.layer.n_in, p.layer.n_out);
        let (u_hat, gu) = (params.at(p.ut, 2 * r * n_in), grads.at(p.ut, r * n_in));
        let (v_hat, gv) = (params.at(p.vt, 2 * r * n_out), grads.at(p.vt, r * n_out));
        products.launch(b, 2 * i, u_hat, gu, n_in)?;
        products.launch(b, 2 * i + 1, gv, v_hat, n_out)?;
    }
    let blocks = products.download(b)?;
    let updates: Vec<(Mat<f64>, Mat<f64>, Moments)> = coeffs
        .into_par_iter()
        .zip(blocks.par_chunks(2))
        .map(|((s, state), lt)| {
            let r = s.nrows();
            let sigma = |j: usize| match s[(j, j)] != 0.0 {
                true => s[(j, j)].recip(),
                false => 0.0,
            };
            // Ûᵀ·G·V = left·Σ⁻¹ and Uᵀ·G·V̂ = Σ⁻¹·top (a zero σ: that direction carries no
            // gradient).
            let left = Mat::from_fn(2 * r, r, |a, j| lt[0][(a, j)] * sigma(j));
            let top = Mat::from_fn(r, 2 * r, |j, c| lt[1][(j, c)] * sigma(j));
            let g_s = tangent_from_blocks(left.as_ref(), top.as_ref());
            let padded = Mat::from_fn(2 * r, 2 * r, |a, c| match a < r && c < r {
                true => s[(a, c)],
                false => 0.0,
            });
            (padded, g_s, state.augmented(fresh))
        })
        .collect();
    for (i, (p, (padded, g_s, state))) in places.iter().zip(updates).enumerate() {
        store_coefficients(b, model, opt, p, padded.as_ref(), &state)?;
        let sq = p.layer.capacity * p.layer.capacity;
        b.upload(
            &flat(g_s.as_ref(), sq),
            model.grads_mut()?.at_mut(p.mid, sq),
        )?;
        let r = ranks[i];
        model.lowrank_mut().live[i] = LiveRank {
            rank: r,
            width: 2 * r,
        };
    }
    model.refresh_compute_copy(b)
}

/// Truncates every layer by the SVD of its S to the rank `tau` allows (at most the layer's rank;
/// None: exactly it), rotating the bases and transporting S's moments. Returns the rank changes.
pub fn truncate<B: Backend>(
    b: &B,
    model: &mut Gpt<B>,
    opt: &mut AdamWOptimizer<B>,
    tau: Option<f64>,
) -> Result<Vec<RankChange>> {
    let places = places(model)?;
    let keep = |p: &Place| match tau {
        Some(tau) => Keep::Tolerance {
            tau,
            min: 1,
            max: p.layer.max_rank,
        },
        None => Keep::Rank(p.layer.max_rank),
    };
    // The SVDs of S (2r × 2r) dominate the host's share: taken for all layers at once, in parallel.
    let mut coeffs = Vec::with_capacity(places.len());
    for (p, live) in places.iter().zip(&model.lowrank().live) {
        coeffs.push(coefficients(b, model, opt, p, live.width)?);
    }
    let cuts: Vec<Cut> = coeffs
        .into_par_iter()
        .zip(&places)
        .map(|((s, state), p)| {
            Cut::of(s.as_ref(), &state, keep(p))
                .with_context(|| format!("DLRA truncation of {}", p.layer.prefix))
        })
        .collect::<Result<_>>()?;
    let mut changes = Vec::new();
    for (i, (p, cut)) in places.iter().zip(cuts).enumerate() {
        let live = model.lowrank().live[i];
        let cap = p.layer.capacity;
        for (basis, n, rotation) in [(p.ut, p.layer.n_in, &cut.p), (p.vt, p.layer.n_out, &cut.q)] {
            let params = model.params_mut();
            let at = params.offset(basis, cap * n);
            basis::rotate(b, params.buf_mut(), at, n, cap, rotation.as_ref())?;
        }
        store_coefficients(b, model, opt, p, cut.s().as_ref(), &cut.state)?;
        let to = cut.rank();
        if live.rank != to {
            changes.push(RankChange {
                layer: p.layer.prefix.clone(),
                from: live.rank,
                to,
            });
        }
        model.lowrank_mut().live[i] = LiveRank {
            rank: to,
            width: to,
        };
    }
    model.refresh_compute_copy(b)?;
    Ok(changes)
}
