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
//! K = 1 is the parallel integrator: augment, one tangent step, truncate. The factors are small
//! (at most 2r rows), so the linear algebra runs on the host in f64, in parallel over layers.

use super::{Dlra, FreshMoment, Keep, Moments};
use crate::backend::{Backend, Buffer};
use crate::linalg::factor::{from_transposed, to_transposed};
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

/// Host copies of one layer at live width k: bases, coefficients and their moments.
struct HostLayer {
    place: Place,
    dlra: Dlra,
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

/// Factor storage (k × n rows of Uᵀ) of a basis U (n × k), zero-padded to `cap` rows.
fn basis_rows(u: MatRef<f64>, cap: usize) -> Vec<f32> {
    let mut x = to_transposed(u);
    x.resize(cap * u.nrows(), 0.0);
    x
}

/// Layer `p` at width `k` on the host.
fn download<B: Backend>(
    b: &B,
    model: &Gpt<B>,
    opt: &AdamWOptimizer<B>,
    p: &Place,
    k: usize,
) -> Result<Dlra> {
    let (n_in, n_out) = (p.layer.n_in, p.layer.n_out);
    let w = model.params();
    Ok(Dlra {
        u: from_transposed(&b.download(w.at(p.ut, k * n_in))?, k, n_in),
        v: from_transposed(&b.download(w.at(p.vt, k * n_out))?, k, n_out),
        s: matrix(b, w, p.mid, k, k)?,
        state: Moments {
            m: matrix(b, &opt.m, p.mid, k, k)?,
            v: matrix(b, &opt.v, p.mid, k, k)?,
        },
    })
}

/// Writes a layer's bases, S and S's moments back (rows and entries beyond its rank zeroed).
fn upload<B: Backend>(
    b: &B,
    model: &mut Gpt<B>,
    opt: &mut AdamWOptimizer<B>,
    h: &HostLayer,
) -> Result<()> {
    let (p, d) = (&h.place, &h.dlra);
    let (cap, n_in, n_out) = (p.layer.capacity, p.layer.n_in, p.layer.n_out);
    let params = model.params_mut();
    b.upload(
        &basis_rows(d.u.as_ref(), cap),
        params.at_mut(p.ut, cap * n_in),
    )?;
    b.upload(
        &basis_rows(d.v.as_ref(), cap),
        params.at_mut(p.vt, cap * n_out),
    )?;
    let sq = cap * cap;
    b.upload(&flat(d.s.as_ref(), sq), params.at_mut(p.mid, sq))?;
    b.upload(&flat(d.state.m.as_ref(), sq), opt.m.at_mut(p.mid, sq))?;
    b.upload(&flat(d.state.v.as_ref(), sq), opt.v.at_mut(p.mid, sq))
}

/// G·V (n × r) from the gradient rows S·(G·V)ᵀ (r × n) of a diagonal S: row j divided by σ_j (a
/// zero σ gives a zero column: that direction has no gradient to carry).
fn unscale(rows: &[f32], s: MatRef<f64>, n: usize) -> Mat<f64> {
    Mat::from_fn(n, s.nrows(), |i, j| {
        let sigma = s[(j, j)];
        match sigma != 0.0 {
            true => rows[j * n + i] as f64 / sigma,
            false => 0.0,
        }
    })
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
    let mut jobs = Vec::with_capacity(places.len());
    for (p, live) in places.iter().zip(&model.lowrank().live) {
        let r = live.rank;
        ensure!(
            live.width == r,
            "{}: DLRA augments a layer at its rank, but it is {} wide at rank {r} (a checkpoint from the middle of a window with another --dlra-window?)",
            p.layer.prefix,
            live.width
        );
        let dlra = download(b, model, opt, p, r)?;
        let off_diagonal = (0..r).any(|i| (0..r).any(|j| i != j && dlra.s[(i, j)] != 0.0));
        ensure!(
            !off_diagonal,
            "{}: S is not diagonal at the start of a DLRA window",
            p.layer.prefix
        );
        let grads = model.grads();
        let dut = b.download(grads.at(p.ut, r * p.layer.n_in))?;
        let dvt = b.download(grads.at(p.vt, r * p.layer.n_out))?;
        jobs.push((p.clone(), dlra, dut, dvt));
    }
    let done: Vec<(HostLayer, Mat<f64>)> = jobs
        .into_par_iter()
        .map(|(place, mut dlra, dut, dvt)| {
            let gu = unscale(&dut, dlra.s.as_ref(), place.layer.n_in);
            let gv = unscale(&dvt, dlra.s.as_ref(), place.layer.n_out);
            dlra.augment_with(gu.as_ref(), gv.as_ref(), fresh);
            let g_s = dlra.tangent_gradient(gu.as_ref(), gv.as_ref());
            (HostLayer { place, dlra }, g_s)
        })
        .collect();
    for (i, (h, g_s)) in done.iter().enumerate() {
        upload(b, model, opt, h)?;
        let sq = h.place.layer.capacity * h.place.layer.capacity;
        b.upload(
            &flat(g_s.as_ref(), sq),
            model.grads_mut().at_mut(h.place.mid, sq),
        )?;
        let rank = model.lowrank().live[i].rank;
        model.lowrank_mut().live[i] = LiveRank {
            rank,
            width: h.dlra.rank(),
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
    let mut jobs = Vec::with_capacity(places.len());
    for (p, live) in places.iter().zip(&model.lowrank().live) {
        jobs.push((p.clone(), download(b, model, opt, p, live.width)?));
    }
    let done: Vec<HostLayer> = jobs
        .into_par_iter()
        .map(|(place, mut dlra)| {
            let max = place.layer.max_rank;
            let keep = match tau {
                Some(tau) => Keep::Tolerance { tau, min: 1, max },
                None => Keep::Rank(max),
            };
            dlra.truncate(keep)
                .with_context(|| format!("DLRA truncation of {}", place.layer.prefix))?;
            Ok(HostLayer { place, dlra })
        })
        .collect::<Result<_>>()?;
    let mut changes = Vec::new();
    for (i, h) in done.iter().enumerate() {
        upload(b, model, opt, h)?;
        let (from, to) = (model.lowrank().live[i].rank, h.dlra.rank());
        if from != to {
            changes.push(RankChange {
                layer: h.place.layer.prefix.clone(),
                from,
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
