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
//! travel to the host, where the small algebra runs in f64.

use super::basis::{self, Scratch};
use super::integrator::{tangent_from_blocks, Cut};
use super::{FreshMoment, Keep, Moments};
use crate::backend::{Backend, Buffer};
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

/// Scratch for the widest layer: r basis rows (r ≤ capacity / 2) and 2r × 2r products.
fn scratch<B: Backend>(b: &B, places: &[Place]) -> Result<Scratch<B>> {
    let cap = places.iter().map(|p| p.layer.capacity).max().unwrap_or(0);
    let n = places
        .iter()
        .map(|p| p.layer.n_in.max(p.layer.n_out))
        .max()
        .unwrap_or(0);
    Scratch::new(b, cap.div_ceil(2).max(1), n, cap.max(1))
}

/// Downloads `rows × cols` row-major f32 at `off` as an f64 matrix.
fn matrix<B: Backend>(
    b: &B,
    buf: &B::Buf,
    off: usize,
    rows: usize,
    cols: usize,
) -> Result<Mat<f64>> {
    let x = b.download(buf.at(off, rows * cols))?;
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
    Ok((
        matrix(b, model.params(), p.mid, k, k)?,
        Moments {
            m: matrix(b, &opt.m, p.mid, k, k)?,
            v: matrix(b, &opt.v, p.mid, k, k)?,
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
    b.upload(&flat(state.m.as_ref(), sq), opt.m.at_mut(p.mid, sq))?;
    b.upload(&flat(state.v.as_ref(), sq), opt.v.at_mut(p.mid, sq))
}

/// Augments every layer's bases to twice its rank from the step's gradient (accumulated over its
/// micro-batches, not yet used by the optimiser) and replaces the gradient of S by the tangent
/// gradient in the new bases. Leaves the bases' own gradients zero.
pub fn augment<B: Backend>(
    b: &B,
    model: &mut Gpt<B>,
    opt: &mut AdamWOptimizer<B>,
    fresh: FreshMoment,
) -> Result<()> {
    let places = places(model)?;
    let mut work = scratch(b, &places)?;
    for (i, p) in places.iter().enumerate() {
        let live = model.lowrank().live[i];
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
        // The gradient rows are S·(G·V)ᵀ and S·(Uᵀ·G): with S diagonal, the same spans as G·V
        // and Gᵀ·U, and the products below carry a factor σ to divide out.
        let (n_in, n_out) = (p.layer.n_in, p.layer.n_out);
        for (t, (basis, n)) in [(p.ut, n_in), (p.vt, n_out)].into_iter().enumerate() {
            let bufs = model.optimizer_buffers();
            let seed = ((i as u64) << 1) | t as u64;
            basis::extend(
                b,
                bufs.params,
                basis,
                n,
                r,
                bufs.grads.at(basis, r * n),
                &mut work,
                seed,
            )
            .with_context(|| format!("DLRA augmentation of {}", p.layer.prefix))?;
        }
        let (params, grads) = (model.params(), model.grads());
        let left = work.row_products(
            b,
            params.at(p.ut, 2 * r * n_in),
            2 * r,
            grads.at(p.ut, r * n_in),
            r,
            n_in,
        )?;
        let top = work.row_products(
            b,
            grads.at(p.vt, r * n_out),
            r,
            params.at(p.vt, 2 * r * n_out),
            2 * r,
            n_out,
        )?;
        let sigma = |j: usize| match s[(j, j)] != 0.0 {
            true => s[(j, j)].recip(),
            false => 0.0,
        };
        // Ûᵀ·G·V = left·Σ⁻¹ and Uᵀ·G·V̂ = Σ⁻¹·top (a zero σ: that direction carries no gradient).
        let left = Mat::from_fn(2 * r, r, |a, j| left[(a, j)] * sigma(j));
        let top = Mat::from_fn(r, 2 * r, |j, c| top[(j, c)] * sigma(j));
        let g_s = tangent_from_blocks(left.as_ref(), top.as_ref());
        let padded = Mat::from_fn(2 * r, 2 * r, |a, c| match a < r && c < r {
            true => s[(a, c)],
            false => 0.0,
        });
        store_coefficients(b, model, opt, p, padded.as_ref(), &state.augmented(fresh))?;
        let sq = p.layer.capacity * p.layer.capacity;
        b.upload(&flat(g_s.as_ref(), sq), model.grads_mut().at_mut(p.mid, sq))?;
        model.lowrank_mut().live[i] = LiveRank {
            rank: r,
            width: 2 * r,
        };
    }
    clear_basis_grads(b, model)?;
    model.refresh_compute_copy(b)
}

/// Zeroes the gradients of the bases, which the optimiser must neither step nor count in the
/// gradient norm it clips by. Runs every step: it reads the layout's windows and copies nothing.
pub fn clear_basis_grads<B: Backend>(b: &B, model: &mut Gpt<B>) -> Result<()> {
    let windows: Vec<(usize, usize)> = model
        .layout()
        .lowrank()
        .iter()
        .filter(|lt| lt.layer.orthonormal_bases)
        .flat_map(|lt| [lt.ut, lt.vt])
        .map(|t| {
            let view = &model.layout().tensors()[t];
            (view.offset, view.len())
        })
        .collect();
    let grads = model.grads_mut();
    for (offset, len) in windows {
        b.fill(grads.at_mut(offset, len), 0.0)?;
    }
    Ok(())
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
    let mut work = scratch(b, &places)?;
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
            basis::rotate(
                b,
                model.params_mut(),
                basis,
                n,
                cap,
                rotation.as_ref(),
                &mut work,
            )?;
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
