//! Tests of the CPU low-rank linear layer against naive f64 loops written from the definition, and
//! of its gradients against finite differences of L = Σ y ⊙ G.

use crate::backend::cpu::{Cpu, CpuBuf};
use crate::backend::{
    Backend, Buffer, DType, LinearEpilogue, LowRankGrads, LowRankShape, LowRankWeights,
    SCRATCH_ROW_ALIGN,
};
use crate::util::rng::Rng;

/// Offset of the Ut window inside its buffer: windows must be honoured, not just whole buffers.
const UT_OFFSET: usize = 5;

/// A layer on the host: Ut and Vt have a capacity ≥ rank rows, of which `sh.rank` are live.
struct Layer {
    sh: LowRankShape,
    x: Vec<f32>,
    w0: Option<Vec<f32>>,
    ut: Vec<f32>,
    vt: Vec<f32>,
    bias: Option<Vec<f32>>,
}

/// What the forward does after y.
enum After<'a> {
    Nothing,
    /// GELU(y) beside y.
    Gelu,
    /// y += this residual.
    Residual(&'a [f32]),
}

/// What the backward produced: s (padded), dx, dUt and dVt (all `cap` rows), db.
struct BackwardOut {
    s: Vec<f32>,
    dx: Vec<f32>,
    dut: Vec<f32>,
    dvt: Vec<f32>,
    db: Vec<f32>,
}

fn upload(data: &[f32]) -> CpuBuf {
    let mut b = Cpu.alloc(DType::F32, data.len()).unwrap();
    Cpu.upload(data, b.all_mut()).unwrap();
    b
}

impl Layer {
    fn random(sh: LowRankShape, cap: usize, base: bool, bias: bool, rng: &mut Rng) -> Self {
        let LowRankShape { n, n_in, n_out, .. } = sh;
        Layer {
            sh,
            x: rng.normal_vec(n * n_in, 1.0),
            w0: base.then(|| rng.normal_vec(n_in * n_out, 0.5)),
            ut: rng.normal_vec(cap * n_in, 0.5),
            vt: rng.normal_vec(cap * n_out, 0.5),
            bias: bias.then(|| rng.normal_vec(n_out, 1.0)),
        }
    }

    /// Runs the forward on the CPU backend: (t padded, y).
    fn forward(&self) -> (Vec<f32>, Vec<f32>) {
        let (t, y, _) = self.forward_with(After::Nothing);
        (t, y)
    }

    /// The forward with `after` fused: (t padded, y, GELU(y) when asked for).
    fn forward_with(&self, after: After) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
        let (x, w0, vt) = (
            upload(&self.x),
            self.w0.as_deref().map(upload),
            upload(&self.vt),
        );
        let mut ut = Cpu.alloc(DType::F32, UT_OFFSET + self.ut.len()).unwrap();
        Cpu.upload(&self.ut, ut.at_mut(UT_OFFSET, self.ut.len()))
            .unwrap();
        let bias = self.bias.as_deref().map(upload);
        let mut t = upload(&vec![f32::NAN; self.sh.scratch_len()]);
        let mut y = upload(&vec![f32::NAN; self.sh.n * self.sh.n_out]);
        let gelu = matches!(after, After::Gelu);
        let mut g = gelu.then(|| upload(&vec![f32::NAN; self.sh.n * self.sh.n_out]));
        let r = match after {
            After::Residual(r) => Some(upload(r)),
            _ => None,
        };
        let epi = match (&mut g, &r) {
            (Some(g), _) => LinearEpilogue::Gelu(g.all_mut()),
            (_, Some(r)) => LinearEpilogue::Residual(r.all()),
            _ => LinearEpilogue::None,
        };
        let w = LowRankWeights {
            w0: w0.as_ref().map(|b| b.all()),
            ut: ut.at(UT_OFFSET, self.ut.len()),
            vt: vt.all(),
        };
        Cpu.lowrank_linear_forward(
            &self.sh,
            x.all(),
            w,
            bias.as_ref().map(|b| b.all()),
            t.all_mut(),
            y.all_mut(),
            epi,
        )
        .unwrap();
        let g = g.map(|g| g.as_slice().to_vec());
        (t.as_slice().to_vec(), y.as_slice().to_vec(), g)
    }

    /// Runs the backward with gradients starting at `init` (dUt, dVt, db).
    fn backward(&self, t: &[f32], dy: &[f32], init: [&[f32]; 3]) -> BackwardOut {
        self.backward_gelu(t, dy, init, None)
    }

    /// The backward, with the GELU input u fused when given.
    fn backward_gelu(
        &self,
        t: &[f32],
        dy: &[f32],
        init: [&[f32]; 3],
        gelu_input: Option<&[f32]>,
    ) -> BackwardOut {
        let u = gelu_input.map(upload);
        let (x, w0) = (upload(&self.x), self.w0.as_deref().map(upload));
        let (ut, vt, t, dy) = (upload(&self.ut), upload(&self.vt), upload(t), upload(dy));
        let mut s = upload(&vec![f32::NAN; self.sh.scratch_len()]);
        let mut dx = upload(&vec![f32::NAN; self.sh.n * self.sh.n_in]);
        // One gradient buffer, its windows out of order and apart (sentinels between them, which
        // must survive): [7 | dVt | 7 7 | dUt | db | 7].
        let [dut0, dvt0, db0] = init;
        let (dvt_at, dut_at) = (1, 3 + dvt0.len());
        let db_at = dut_at + dut0.len();
        let layout = [&[7.0][..], dvt0, &[7.0, 7.0], dut0, db0, &[7.0]].concat();
        let mut buf = upload(&layout);
        let w = LowRankWeights {
            w0: w0.as_ref().map(|b| b.all()),
            ut: ut.all(),
            vt: vt.all(),
        };
        let grads = LowRankGrads {
            buf: &mut buf,
            dut: dut_at,
            dvt: dvt_at,
            dbias: self.bias.is_some().then_some(db_at),
        };
        Cpu.lowrank_linear_backward(
            &self.sh,
            x.all(),
            w,
            t.all(),
            dy.all(),
            s.all_mut(),
            dx.all_mut(),
            u.as_ref().map(|u| u.all()),
            grads,
        )
        .unwrap();
        let out = buf.as_slice();
        let sentinels = [0, dut_at - 2, dut_at - 1, out.len() - 1].map(|i| out[i]);
        assert_eq!(
            sentinels, [7.0; 4],
            "the gradient buffer outside its windows was written"
        );
        BackwardOut {
            s: s.as_slice().to_vec(),
            dx: dx.as_slice().to_vec(),
            dut: out[dut_at..db_at].to_vec(),
            dvt: out[dvt_at..dvt_at + dvt0.len()].to_vec(),
            db: out[db_at..db_at + db0.len()].to_vec(),
        }
    }

    /// f64 forward from the definition: (t = x·U, n × k unpadded; y = x·W0 + t·Vᵀ + b).
    fn reference_forward(&self) -> (Vec<f64>, Vec<f64>) {
        let LowRankShape {
            n,
            n_in,
            n_out,
            rank: k,
        } = self.sh;
        let mut t = vec![0.0f64; n * k];
        for i in 0..n {
            for r in 0..k {
                t[i * k + r] = (0..n_in)
                    .map(|p| self.x[i * n_in + p] as f64 * self.ut[r * n_in + p] as f64)
                    .sum();
            }
        }
        let mut y = vec![0.0f64; n * n_out];
        for i in 0..n {
            for j in 0..n_out {
                let mut acc = self.bias.as_ref().map_or(0.0, |b| b[j] as f64);
                if let Some(w0) = &self.w0 {
                    acc += (0..n_in)
                        .map(|p| self.x[i * n_in + p] as f64 * w0[p * n_out + j] as f64)
                        .sum::<f64>();
                }
                acc += (0..k)
                    .map(|r| t[i * k + r] * self.vt[r * n_out + j] as f64)
                    .sum::<f64>();
                y[i * n_out + j] = acc;
            }
        }
        (t, y)
    }

    /// f64 gradients from the definition: (s, dx, dU as k × n_in, dV as k × n_out, db).
    fn reference_backward(&self, t: &[f64], dy: &[f32]) -> [Vec<f64>; 5] {
        let LowRankShape {
            n,
            n_in,
            n_out,
            rank: k,
        } = self.sh;
        let dy = |i: usize, j: usize| dy[i * n_out + j] as f64;
        let mut s = vec![0.0; n * k];
        for i in 0..n {
            for r in 0..k {
                s[i * k + r] = (0..n_out)
                    .map(|j| dy(i, j) * self.vt[r * n_out + j] as f64)
                    .sum();
            }
        }
        let mut dx = vec![0.0; n * n_in];
        for i in 0..n {
            for p in 0..n_in {
                let base: f64 = self.w0.as_ref().map_or(0.0, |w0| {
                    (0..n_out)
                        .map(|j| dy(i, j) * w0[p * n_out + j] as f64)
                        .sum()
                });
                let low: f64 = (0..k)
                    .map(|r| s[i * k + r] * self.ut[r * n_in + p] as f64)
                    .sum();
                dx[i * n_in + p] = base + low;
            }
        }
        let mut dut = vec![0.0; k * n_in];
        let mut dvt = vec![0.0; k * n_out];
        for r in 0..k {
            for p in 0..n_in {
                dut[r * n_in + p] = (0..n)
                    .map(|i| s[i * k + r] * self.x[i * n_in + p] as f64)
                    .sum();
            }
            for j in 0..n_out {
                dvt[r * n_out + j] = (0..n).map(|i| t[i * k + r] * dy(i, j)).sum();
            }
        }
        let db = (0..n_out).map(|j| (0..n).map(|i| dy(i, j)).sum()).collect();
        [s, dx, dut, dvt, db]
    }
}

/// Live columns of a padded scratch matrix.
fn live(padded: &[f32], sh: &LowRankShape) -> Vec<f32> {
    padded
        .chunks(sh.scratch_stride())
        .flat_map(|row| row[..sh.rank].to_vec())
        .collect()
}

/// max |out − want| / max |want|.
fn max_rel(what: &str, out: &[f32], want: &[f64]) -> f64 {
    assert_eq!(out.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    out.iter()
        .zip(want)
        .map(|(&o, &w)| (o as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

fn assert_close(what: &str, out: &[f32], want: &[f64]) {
    let err = max_rel(what, out, want);
    assert!(err < 1e-5, "{what}: max rel err {err}");
}

/// Ragged shapes (nothing a multiple of anything) and their capacities (cap > rank except once).
const SHAPES: [(LowRankShape, usize); 3] = [
    (
        LowRankShape {
            n: 13,
            n_in: 11,
            n_out: 9,
            rank: 5,
        },
        7,
    ),
    (
        LowRankShape {
            n: 33,
            n_in: 20,
            n_out: 17,
            rank: 3,
        },
        3,
    ),
    (
        LowRankShape {
            n: 7,
            n_in: 24,
            n_out: 41,
            rank: 9,
        },
        12,
    ),
];

#[test]
fn forward_matches_f64_reference_with_and_without_base_and_bias() {
    let mut rng = Rng::new(21);
    for (sh, cap) in SHAPES {
        for (base, bias) in [(true, true), (true, false), (false, true), (false, false)] {
            let layer = Layer::random(sh, cap, base, bias, &mut rng);
            let (t, y) = layer.forward();
            let (t_ref, y_ref) = layer.reference_forward();
            let tag = format!("{sh:?} base={base} bias={bias}");
            assert_close(&format!("y {tag}"), &y, &y_ref);
            assert_close(&format!("t {tag}"), &live(&t, &sh), &t_ref);
            assert_eq!(t.len(), sh.n * sh.scratch_stride());
            assert_eq!(sh.scratch_stride() % SCRATCH_ROW_ALIGN, 0);
            for row in t.chunks(sh.scratch_stride()) {
                assert!(row[sh.rank..].iter().all(|&v| v == 0.0), "t padding {tag}");
            }
        }
    }
}

#[test]
fn backward_matches_f64_reference_accumulates_and_leaves_dead_rank_rows_alone() {
    let mut rng = Rng::new(22);
    for (sh, cap) in SHAPES {
        for (base, bias) in [(true, true), (false, false), (true, false)] {
            let layer = Layer::random(sh, cap, base, bias, &mut rng);
            let (t, _) = layer.forward();
            let dy = rng.normal_vec(sh.n * sh.n_out, 1.0);
            let init_dut = rng.normal_vec(cap * sh.n_in, 1.0);
            let init_dvt = rng.normal_vec(cap * sh.n_out, 1.0);
            let init_db = rng.normal_vec(sh.n_out, 1.0);
            let out = layer.backward(&t, &dy, [&init_dut, &init_dvt, &init_db]);
            let (t_ref, _) = layer.reference_forward();
            let [s, dx, dut, dvt, db] = layer.reference_backward(&t_ref, &dy);
            let tag = format!("{sh:?} base={base} bias={bias}");
            assert_close(&format!("s {tag}"), &live(&out.s, &sh), &s);
            assert_close(&format!("dx {tag}"), &out.dx, &dx);
            let (live_ut, live_vt) = (sh.rank * sh.n_in, sh.rank * sh.n_out);
            let plus = |init: &[f32], grad: &[f64]| -> Vec<f64> {
                init.iter().zip(grad).map(|(&a, &g)| a as f64 + g).collect()
            };
            assert_close(
                &format!("dUt {tag}"),
                &out.dut[..live_ut],
                &plus(&init_dut, &dut),
            );
            assert_close(
                &format!("dVt {tag}"),
                &out.dvt[..live_vt],
                &plus(&init_dvt, &dvt),
            );
            assert_eq!(
                &out.dut[live_ut..],
                &init_dut[live_ut..],
                "dead dUt rows {tag}"
            );
            assert_eq!(
                &out.dvt[live_vt..],
                &init_dvt[live_vt..],
                "dead dVt rows {tag}"
            );
            if bias {
                assert_close(&format!("db {tag}"), &out.db, &plus(&init_db, &db));
            } else {
                assert_eq!(out.db, init_db, "db without a bias {tag}");
            }
        }
    }
}

/// GPT-2's tanh-approximated GELU in f64, from its definition.
fn gelu_f64(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// The fused GELU: forward, GELU of y beside an unchanged y; backward, dx scaled by GELU′(u), whose
/// reference is a central difference of the f64 GELU (not the closed form the code uses).
#[test]
fn fused_gelu_writes_gelu_of_y_and_scales_dx_by_its_derivative() {
    let mut rng = Rng::new(24);
    for (sh, cap) in SHAPES {
        let layer = Layer::random(sh, cap, true, true, &mut rng);
        let (t, y, g) = layer.forward_with(After::Gelu);
        let (_, y_ref) = layer.reference_forward();
        let tag = format!("{sh:?}");
        assert_close(&format!("y beside its GELU {tag}"), &y, &y_ref);
        let g_ref: Vec<f64> = y_ref.iter().map(|&v| gelu_f64(v)).collect();
        assert_close(&format!("GELU(y) {tag}"), &g.unwrap(), &g_ref);

        let dy = rng.normal_vec(sh.n * sh.n_out, 1.0);
        let u = rng.normal_vec(sh.n * sh.n_in, 1.5);
        let init = [
            vec![0.0; cap * sh.n_in],
            vec![0.0; cap * sh.n_out],
            vec![0.0; sh.n_out],
        ];
        let init = [&init[0][..], &init[1][..], &init[2][..]];
        let out = layer.backward_gelu(&t, &dy, init, Some(&u));
        let (t_ref, _) = layer.reference_forward();
        let [_, dx_ref, dut_ref, ..] = layer.reference_backward(&t_ref, &dy);
        let h = 1e-5;
        let want: Vec<f64> = dx_ref
            .iter()
            .zip(&u)
            .map(|(&d, &u)| {
                let u = u as f64;
                d * (gelu_f64(u + h) - gelu_f64(u - h)) / (2.0 * h)
            })
            .collect();
        assert_close(&format!("dx·GELU′(u) {tag}"), &out.dx, &want);
        // The factor gradients read dy and x, not the scaled dx.
        let live_ut = sh.rank * sh.n_in;
        assert_close(&format!("dUt {tag}"), &out.dut[..live_ut], &dut_ref);
    }
}

/// The fused residual: y + r against the f64 forward plus r.
#[test]
fn fused_residual_adds_the_residual_to_y() {
    let mut rng = Rng::new(25);
    for (sh, cap) in SHAPES {
        let layer = Layer::random(sh, cap, true, true, &mut rng);
        let r = rng.normal_vec(sh.n * sh.n_out, 3.0);
        let (_, y, _) = layer.forward_with(After::Residual(&r));
        let (_, y_ref) = layer.reference_forward();
        let want: Vec<f64> = y_ref.iter().zip(&r).map(|(&y, &r)| y + r as f64).collect();
        assert_close(&format!("y + r {sh:?}"), &y, &want);
    }
}

/// L(θ) = Σ y ⊙ G as f64, for finite differences.
fn weighted_loss(layer: &Layer, g: &[f32]) -> f64 {
    let (_, y) = layer.forward();
    y.iter().zip(g).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// One scalar parameter: `param` 0 x, 1 Ut, 2 Vt, 3 bias.
fn param_mut(layer: &mut Layer, param: usize, idx: usize) -> &mut f32 {
    match param {
        0 => &mut layer.x[idx],
        1 => &mut layer.ut[idx],
        2 => &mut layer.vt[idx],
        _ => &mut layer.bias.as_mut().expect("layer has a bias")[idx],
    }
}

/// Central difference of L along one parameter. y is affine in each single parameter, so a large
/// step has no truncation error and keeps f32 rounding small relative to the difference.
fn finite_difference(layer: &mut Layer, g: &[f32], param: usize, idx: usize) -> f64 {
    const STEP: f32 = 0.5;
    let old = *param_mut(layer, param, idx);
    let mut loss_at = |delta: f32| {
        *param_mut(layer, param, idx) = old + delta;
        weighted_loss(layer, g)
    };
    let diff = loss_at(STEP) - loss_at(-STEP);
    *param_mut(layer, param, idx) = old;
    diff / (2.0 * STEP as f64)
}

#[test]
fn gradients_match_finite_differences_of_weighted_sum_loss() {
    let mut rng = Rng::new(23);
    let (sh, cap) = SHAPES[0];
    let mut layer = Layer::random(sh, cap, true, true, &mut rng);
    let g = rng.normal_vec(sh.n * sh.n_out, 1.0);
    let (t, _) = layer.forward();
    let zeros = |len: usize| vec![0.0f32; len];
    let out = layer.backward(
        &t,
        &g,
        [
            &zeros(cap * sh.n_in),
            &zeros(cap * sh.n_out),
            &zeros(sh.n_out),
        ],
    );
    let grads = [&out.dx, &out.dut, &out.dvt, &out.db];
    for (param, grad) in grads.into_iter().enumerate() {
        let scale = grad.iter().fold(1.0f64, |m, &v| m.max(v.abs() as f64));
        // Every entry of the smaller tensors; for Ut and Vt this includes the dead rows ≥ rank,
        // whose derivative must be exactly zero.
        for idx in (0..grad.len()).step_by(1 + grad.len() / 40) {
            let fd = finite_difference(&mut layer, &g, param, idx);
            let err = (fd - grad[idx] as f64).abs() / scale;
            assert!(
                err < 1e-4,
                "param {param} idx {idx}: fd {fd} vs grad {}",
                grad[idx]
            );
        }
    }
}

#[test]
fn bad_shapes_and_dtypes_are_rejected_naming_the_window() {
    let sh = SHAPES[0].0;
    let layer = Layer::random(sh, 7, true, false, &mut Rng::new(24));
    let (x, ut, vt) = (upload(&layer.x), upload(&layer.ut), upload(&layer.vt));
    let w = LowRankWeights {
        w0: None,
        ut: ut.all(),
        vt: vt.all(),
    };
    let mut t = Cpu.alloc(DType::F32, sh.scratch_len()).unwrap();
    let mut y = Cpu.alloc(DType::F32, sh.n * sh.n_out).unwrap();
    let fwd = |sh: &LowRankShape, t: &mut CpuBuf, y: &mut CpuBuf| {
        let none = LinearEpilogue::None;
        Cpu.lowrank_linear_forward(sh, x.all(), w, None, t.all_mut(), y.all_mut(), none)
            .unwrap_err()
            .to_string()
    };
    let rank0 = LowRankShape { rank: 0, ..sh };
    assert!(fwd(&rank0, &mut t, &mut y).contains("rank must be at least 1"));
    let too_big = LowRankShape { rank: 8, ..sh };
    assert!(fwd(&too_big, &mut t, &mut y).contains("Ut window"));
    let mut short_t = Cpu.alloc(DType::F32, sh.n * sh.rank).unwrap();
    assert!(fwd(&sh, &mut short_t, &mut y).contains("t window"));
    let mut bf16_t = Cpu.alloc(DType::BF16, sh.scratch_len()).unwrap();
    assert!(fwd(&sh, &mut bf16_t, &mut y).contains("t is BF16, must be F32"));
    let mut epilogue_err = |epi: LinearEpilogue<CpuBuf>| {
        Cpu.lowrank_linear_forward(&sh, x.all(), w, None, t.all_mut(), y.all_mut(), epi)
            .unwrap_err()
            .to_string()
    };
    let mut bf16_gelu = Cpu.alloc(DType::BF16, sh.n * sh.n_out).unwrap();
    let err = epilogue_err(LinearEpilogue::Gelu(bf16_gelu.all_mut()));
    assert!(err.contains("gelu(y) is BF16, must be F32"), "{err}");
    let short = Cpu.alloc(DType::F32, sh.n * sh.n_out - 1).unwrap();
    let err = epilogue_err(LinearEpilogue::Residual(short.all()));
    assert!(err.contains("residual window"), "{err}");

    let dy = upload(&vec![1.0; sh.n * sh.n_out]);
    let mut s = Cpu.alloc(DType::F32, sh.scratch_len()).unwrap();
    let mut dx = Cpu.alloc(DType::F32, sh.n * sh.n_in).unwrap();
    let mut bwd = |grads: LowRankGrads<CpuBuf>| {
        Cpu.lowrank_linear_backward(
            &sh,
            x.all(),
            w,
            t.all(),
            dy.all(),
            s.all_mut(),
            dx.all_mut(),
            None,
            grads,
        )
        .unwrap_err()
        .to_string()
    };
    let (dut_len, dvt_len) = (sh.rank * sh.n_in, sh.rank * sh.n_out);
    let mut bf16_grads = Cpu.alloc(DType::BF16, dut_len + dvt_len).unwrap();
    let err = bwd(LowRankGrads {
        buf: &mut bf16_grads,
        dut: 0,
        dvt: dut_len,
        dbias: None,
    });
    assert!(err.contains("dUt is BF16, must be F32"), "{err}");
    let mut grads = Cpu.alloc(DType::F32, dut_len + dvt_len + sh.n_out).unwrap();
    let err = bwd(LowRankGrads {
        buf: &mut grads,
        dut: 0,
        dvt: dut_len - 1,
        dbias: None,
    });
    assert!(
        err.contains("the dUt window (0+") && err.contains("overlaps the dVt window"),
        "{err}"
    );
    let err = bwd(LowRankGrads {
        buf: &mut grads,
        dut: 0,
        dvt: dut_len,
        dbias: Some(dut_len + dvt_len + 1),
    });
    assert!(err.contains("db window has"), "{err}");
}
