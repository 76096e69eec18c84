//! Low-rank models against the f64 reference: every gradient in every mode, rank growth leaving
//! the function unchanged, and DLRA's augmentation and truncation.

use super::reference::{micro, random_tokens, LowRankRef};
use super::tests::{assert_decoding_matches_reference, assert_gradients_match_reference};
use super::{ActivationPlan, Gpt, GptConfig, Keep};
use crate::backend::cpu::Cpu;
use crate::backend::{Backend, Buffer};
use crate::lowrank::dlra::{schedule as dlra, FreshMoment};
use crate::lowrank::growth;
use crate::lowrank::LiveRank;
use crate::lowrank::{LowRankConfig, LowRankLayers, LowRankMode};
use crate::optim::{AdamWConfig, AdamWOptimizer};
use crate::train::checkpoint::RankState;
use faer::Mat;

fn config(mode: LowRankMode, layers: LowRankLayers) -> LowRankConfig {
    LowRankConfig {
        mode,
        layers,
        rank_init: 2,
        lora_alpha: Some(3.0),
        lora_base: (mode == LowRankMode::Lora).then(|| "set by the test".into()),
        ..Default::default()
    }
}

/// The reference's view of a model's low-rank layers at their live widths.
fn reference_layers(gpt: &Gpt<Cpu>, scale: f64) -> Vec<LowRankRef> {
    let lr = gpt.lowrank();
    lr.layers
        .iter()
        .zip(&lr.live)
        .map(|(l, live)| LowRankRef {
            prefix: l.prefix.clone(),
            width: live.width,
            scale,
        })
        .collect()
}

#[test]
fn every_gradient_matches_the_reference_in_every_low_rank_mode() {
    use LowRankLayers::*;
    use LowRankMode::*;
    // Micro layers (8×32, 8×24, 8×8) have capacity 4, buffer 1: width 3 of 4, one dormant row.
    for (mode, layers) in [
        (Efficient, Mlp),
        (Inrank, Mlp),
        (Lora, Mlp),
        (Efficient, All),
        (Inrank, Attn),
        (Dln, Mlp),
        // Width r = 2 of capacity 4: S is read as a 2 × 2 block at the start of its tensor.
        (Dlra, Mlp),
    ] {
        let cfg = config(mode, layers);
        let gpt = Gpt::with_lowrank(&Cpu, micro(), &cfg, 2, 5, 1).unwrap();
        let n = gpt.lowrank().layers.len();
        assert_eq!(n, if layers == All { 8 } else { 4 }, "{mode:?} {layers:?}");
        let scale = cfg.lora_scale() as f64;
        assert_eq!(scale, if mode == Lora { 1.5 } else { 1.0 });
        let refs = reference_layers(&gpt, scale);
        eprintln!("{mode:?} {layers:?}: widths {:?}", gpt.lowrank().live);
        assert_gradients_match_reference(gpt, &refs);
    }
    // LoRA training the embeddings too: their gradients (the tied head's and the lookup's) appear.
    let cfg = LowRankConfig {
        lora_embeddings: true,
        ..config(Lora, All)
    };
    let gpt = Gpt::with_lowrank(&Cpu, micro(), &cfg, 2, 5, 1).unwrap();
    let index = |name: &str| gpt.layout().tensors().iter().position(|t| t.name == name);
    let with_grad = |name: &str| gpt.has_gradient(index(name).unwrap());
    assert!(with_grad("transformer.wte.weight") && with_grad("transformer.wpe.weight"));
    assert!(!with_grad("transformer.ln_f.weight"));
    let refs = reference_layers(&gpt, cfg.lora_scale() as f64);
    assert_gradients_match_reference(gpt, &refs);
}

/// Decoding through every kind of low-rank layer (a frozen base, a middle factor, factors alone)
/// gives the reference's logits.
#[test]
fn decoding_matches_the_reference_in_every_low_rank_mode() {
    use LowRankLayers::*;
    use LowRankMode::*;
    for (mode, layers) in [(Efficient, All), (Lora, All), (Dln, Mlp), (Dlra, Attn)] {
        let cfg = config(mode, layers);
        let gpt = Gpt::with_lowrank(&Cpu, micro(), &cfg, 2, 6, 1).unwrap();
        let refs = reference_layers(&gpt, cfg.lora_scale() as f64);
        assert_decoding_matches_reference(gpt, &refs);
    }
}

#[test]
fn growing_the_rank_leaves_the_function_unchanged() {
    // Width 32: MLP layers 32×128 have capacity 16, buffer 4, rank limit 11.
    let cfg = GptConfig {
        n_embd: 32,
        n_head: 2,
        ..micro()
    };
    for mode in [LowRankMode::Efficient, LowRankMode::Inrank] {
        let lr = config(mode, LowRankLayers::Mlp);
        let mut gpt = Gpt::with_lowrank(&Cpu, cfg, &lr, 2, 6, 3).unwrap();
        // As after some training: the live rows of V are nonzero (inrank starts them at zero).
        let mut rng = crate::util::rng::Rng::new(8);
        for lt in gpt.layout().lowrank().to_vec() {
            let vt = gpt.layout().tensors()[lt.vt].offset;
            let live = rng.normal_vec(6 * lt.layer.n_out, 0.1);
            Cpu.upload(&live, gpt.params_mut().at_mut(vt, live.len()))
                .unwrap();
        }
        let inputs = random_tokens(12, cfg.vocab_size, 4);
        gpt.forward(&Cpu, &inputs, None).unwrap();
        let before = Cpu.download(gpt.logits()).unwrap();
        let widths: Vec<usize> = gpt.lowrank().live.iter().map(|l| l.width).collect();
        // α = 1 can never be exceeded, so every layer grows by the most a check allows: b − 1.
        let changes = growth::grow(&Cpu, &mut gpt, 1.0).unwrap();
        assert_eq!(changes.len(), 4, "{mode:?}");
        for (c, l) in changes.iter().zip(&gpt.lowrank().live) {
            assert_eq!((c.from, c.to), (2, 5), "{mode:?}");
            assert_eq!(l.width, 9);
        }
        assert_eq!(widths, vec![6; 4]);
        gpt.forward(&Cpu, &inputs, None).unwrap();
        let after = Cpu.download(gpt.logits()).unwrap();
        let scale = before.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let worst = before
            .iter()
            .zip(&after)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-6 * scale,
            "{mode:?}: logits moved by {worst} (scale {scale})"
        );
        // The newly live rows are really used: they had U random and V zero.
        let lt = &gpt.layout().lowrank()[0];
        let vt = &gpt.layout().tensors()[lt.vt];
        let vals = Cpu.download(gpt.params().at(vt.offset, vt.len())).unwrap();
        assert!(vals[6 * 128..9 * 128].iter().all(|&v| v == 0.0));
    }
}

/// The DLRA settings of `dlra_model`.
fn dlra_config() -> LowRankConfig {
    LowRankConfig {
        mode: LowRankMode::Dlra,
        rank_init: 3,
        ..Default::default()
    }
}

/// A DLRA model (MLP layers 16×64 and 64×16 at rank 3 of capacity 6) and its optimiser.
fn dlra_model() -> (Gpt<Cpu>, AdamWOptimizer<Cpu>) {
    let cfg = GptConfig {
        n_embd: 16,
        n_head: 2,
        ..micro()
    };
    let lr = dlra_config();
    let gpt = Gpt::with_lowrank(&Cpu, cfg, &lr, 2, 6, 3).unwrap();
    let n = gpt.layout().trainable_len();
    let opt = AdamWOptimizer::new(&Cpu, AdamWConfig::default(), n, &gpt.param_groups(&lr)).unwrap();
    (gpt, opt)
}

/// The loss on fixed tokens, with its gradients left in `grads` (zeroed first).
fn loss_and_grads(gpt: &mut Gpt<Cpu>) -> f32 {
    let vocab = gpt.config().vocab_size;
    let (inputs, targets) = (random_tokens(12, vocab, 4), random_tokens(12, vocab, 5));
    gpt.zero_grads(&Cpu).unwrap();
    let loss = gpt.forward(&Cpu, &inputs, Some(&targets)).unwrap().unwrap();
    gpt.backward(&Cpu, 1.0).unwrap();
    loss
}

/// Layer `i`'s (Ut, M, Vt) at live width k from `buf` (parameters or gradients), f64, row-major.
fn dlra_tensors(gpt: &Gpt<Cpu>, buf: &[f32], i: usize, k: usize) -> [Vec<f64>; 3] {
    let lt = &gpt.layout().lowrank()[i];
    let (n_in, n_out) = (lt.layer.n_in, lt.layer.n_out);
    let at = |t: usize, len: usize| {
        let off = gpt.layout().tensors()[t].offset;
        buf[off..off + len].iter().map(|&x| x as f64).collect()
    };
    [
        at(lt.ut, k * n_in),
        at(lt.mid.unwrap(), k * k),
        at(lt.vt, k * n_out),
    ]
}

/// W = Utᵀ·M·Vt (n_in × n_out) by plain loops.
fn product(t: &[Vec<f64>; 3], k: usize, n_in: usize, n_out: usize) -> Mat<f64> {
    Mat::from_fn(n_in, n_out, |i, o| {
        let mut w = 0.0;
        for a in 0..k {
            for c in 0..k {
                w += t[0][a * n_in + i] * t[1][a * k + c] * t[2][c * n_out + o];
            }
        }
        w
    })
}

fn max_abs(a: impl IntoIterator<Item = f64>) -> f64 {
    a.into_iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Augmentation leaves W unchanged, keeps the old basis vectors, adds orthonormal ones, and leaves
/// as S's gradient the backward's own Ûᵀ·G·V̂ (a second pass at the new bases) with the block
/// ŨᵀGṼ zeroed. The optimiser then moves S and leaves the bases alone.
#[test]
fn dlra_augmentation_keeps_w_and_gives_the_tangent_gradient_of_s() {
    let (mut gpt, mut opt) = dlra_model();
    let before = Cpu.download(gpt.params().buf().all()).unwrap();
    let loss = loss_and_grads(&mut gpt);
    dlra::augment(&Cpu, &mut gpt, &mut opt, FreshMoment::Zero).unwrap();
    let params = Cpu.download(gpt.params().buf().all()).unwrap();
    // DLRA trains every tensor: its gradients are the parameters' own layout.
    let every = [(0, gpt.layout().trainable_len())];
    assert_eq!(gpt.trained().gradient_spans(gpt.layout()), every);
    assert_eq!(gpt.layout().trainable_len(), gpt.layout().len());
    let tangent = Cpu.download(gpt.grads().unwrap().buf().all()).unwrap();
    let again = loss_and_grads(&mut gpt);
    assert!(
        (again - loss).abs() <= 1e-6 * loss.abs(),
        "{loss} → {again}"
    );
    let full = Cpu.download(gpt.grads().unwrap().buf().all()).unwrap();
    let (r, k) = (3, 6);
    for (i, lt) in gpt.layout().lowrank().iter().enumerate() {
        let (n_in, n_out) = (lt.layer.n_in, lt.layer.n_out);
        assert_eq!(gpt.lowrank().live[i], LiveRank { rank: r, width: k });
        let [ut0, _, vt0] = dlra_tensors(&gpt, &before, i, r);
        let [ut, _, vt] = dlra_tensors(&gpt, &params, i, k);
        for (rows, old, n) in [(&ut, &ut0, n_in), (&vt, &vt0, n_out)] {
            assert_eq!(&rows[..r * n], &old[..], "the old basis vectors are kept");
            for a in 0..k {
                for c in 0..k {
                    let dot: f64 = (0..n).map(|x| rows[a * n + x] * rows[c * n + x]).sum();
                    assert!((dot - f64::from(a == c)).abs() < 1e-6, "⟨{a}, {c}⟩ = {dot}");
                }
            }
        }
        let [_, g_s, _] = dlra_tensors(&gpt, &tangent, i, k);
        // The bases' gradients stay out of the optimiser: it holds no moments for them, so
        // neither steps them nor counts them in its norm (the_norm_runs_over_the_trained_groups_alone).
        for t in [lt.ut, lt.vt] {
            let view = &gpt.layout().tensors()[t];
            assert!(
                opt.moments(view.offset, view.len()).is_err(),
                "{} trained",
                view.name
            );
        }
        let [_, want, _] = dlra_tensors(&gpt, &full, i, k);
        let scale = max_abs(want.iter().copied());
        assert!(scale > 0.0);
        for a in 0..k {
            for c in 0..k {
                let (got, want) = (g_s[a * k + c], want[a * k + c]);
                match a >= r && c >= r {
                    true => assert_eq!(got, 0.0),
                    false => assert!(
                        (got - want).abs() <= 1e-4 * scale,
                        "layer {i} S gradient ({a}, {c}): {got} vs {want}"
                    ),
                }
            }
        }
    }
    // The optimiser moves S, never the bases.
    let bufs = gpt.optimizer_buffers().unwrap();
    opt.step(&Cpu, 1e-2, bufs.params, bufs.grads, bufs.compute_copy)
        .unwrap();
    let stepped = Cpu.download(gpt.params().buf().all()).unwrap();
    for i in 0..gpt.layout().lowrank().len() {
        let ([ut, s, vt], [ut2, s2, vt2]) = (
            dlra_tensors(&gpt, &params, i, k),
            dlra_tensors(&gpt, &stepped, i, k),
        );
        assert_eq!((ut, vt), (ut2, vt2));
        assert_ne!(s, s2);
    }
}

/// Truncation replaces W by its best rank-r approximation (Eckart–Young, from a dense f64 SVD of
/// the 2r-wide product), with orthonormal bases and a diagonal S.
#[test]
fn dlra_truncation_is_the_best_rank_r_approximation() {
    let (mut gpt, mut opt) = dlra_model();
    loss_and_grads(&mut gpt);
    dlra::augment(&Cpu, &mut gpt, &mut opt, FreshMoment::Zero).unwrap();
    // A full 6 × 6 S, as after steps inside a window.
    let mut rng = crate::util::rng::Rng::new(11);
    for lt in gpt.layout().lowrank().to_vec() {
        let off = gpt.layout().tensors()[lt.mid.unwrap()].offset;
        let s = rng.normal_vec(36, 1.0);
        Cpu.upload(&s, gpt.params_mut().at_mut(off, 36)).unwrap();
    }
    let before = Cpu.download(gpt.params().buf().all()).unwrap();
    let changes = dlra::truncate(&Cpu, &mut gpt, &mut opt, None).unwrap();
    assert!(changes.is_empty(), "the rank stays 3: {changes:?}");
    let after = Cpu.download(gpt.params().buf().all()).unwrap();
    for (i, lt) in gpt.layout().lowrank().iter().enumerate() {
        let (n_in, n_out) = (lt.layer.n_in, lt.layer.n_out);
        assert_eq!(gpt.lowrank().live[i], LiveRank { rank: 3, width: 3 });
        let w = product(&dlra_tensors(&gpt, &before, i, 6), 6, n_in, n_out);
        let svd = w.thin_svd().unwrap();
        let sigma = svd.S().column_vector();
        let top = Mat::from_fn(3, 3, |a, c| if a == c { sigma[a] } else { 0.0 });
        let best = svd.U().get(.., ..3) * top * svd.V().get(.., ..3).transpose();
        let t = dlra_tensors(&gpt, &after, i, 3);
        let got = product(&t, 3, n_in, n_out);
        let entries = (0..n_in).flat_map(|a| (0..n_out).map(move |o| (a, o)));
        let diff = max_abs(entries.clone().map(|(a, o)| got[(a, o)] - best[(a, o)]));
        let scale = max_abs(entries.map(|(a, o)| best[(a, o)]));
        assert!(diff <= 1e-5 * scale, "layer {i}: off by {diff} of {scale}");
        let s = &t[1];
        assert!(
            (0..3).all(|a| (0..3).all(|c| a == c || s[a * 3 + c] == 0.0)),
            "{s:?}"
        );
        let rest = dlra_tensors(&gpt, &after, i, 6);
        assert!(
            rest[0][3 * n_in..].iter().all(|&x| x == 0.0),
            "dropped rows are zeroed"
        );
    }
}

/// A checkpoint rebuilds the model at its live ranks: a DLRA layer at width 3 of capacity 6 with a
/// full 3 × 3 S (stored contiguously) gives the same logits after the round trip.
#[test]
fn a_checkpoint_rebuilds_a_low_rank_model_at_its_live_ranks() {
    let (mut gpt, _) = dlra_model();
    let mut rng = crate::util::rng::Rng::new(12);
    for lt in gpt.layout().lowrank().to_vec() {
        let off = gpt.layout().tensors()[lt.mid.unwrap()].offset;
        Cpu.upload(&rng.normal_vec(9, 1.0), gpt.params_mut().at_mut(off, 9))
            .unwrap();
    }
    gpt.refresh_compute_copy(&Cpu).unwrap();
    let inputs = random_tokens(12, gpt.config().vocab_size, 4);
    gpt.forward(&Cpu, &inputs, None).unwrap();
    let want = Cpu.download(gpt.logits()).unwrap();
    let ranks = RankState {
        live: gpt.lowrank().live.clone(),
        truncated: false,
    };
    let tensors = gpt.to_hf_tensors(&Cpu).unwrap();
    let plan = ActivationPlan {
        keep: Keep::Nothing,
        ..ActivationPlan::new(2, 6)
    };
    let (config, lowrank) = (*gpt.config(), dlra_config());
    let load = |ranks: Option<&RankState>| {
        Gpt::from_tensors(&Cpu, config, &lowrank, ranks, tensors.clone(), plan).unwrap()
    };
    let mut back = load(Some(&ranks));
    assert_eq!(back.lowrank().live, gpt.lowrank().live);
    back.forward(&Cpu, &inputs, None).unwrap();
    assert_eq!(Cpu.download(back.logits()).unwrap(), want);
    // Read at the capacity instead, the same tensors make another function.
    let mut wrong = load(None);
    wrong
        .lowrank_mut()
        .live
        .iter_mut()
        .for_each(|l| l.width = 6);
    wrong.forward(&Cpu, &inputs, None).unwrap();
    assert_ne!(Cpu.download(wrong.logits()).unwrap(), want);
}

/// The backend's spectra of the live products (Gram matrices, f32) equal the host's f64 QR cores
/// of the downloaded factors (with M folded in), for plain factors and for a middle factor.
#[test]
fn live_spectra_match_the_host_qr_cores() {
    let cfg = GptConfig {
        n_embd: 16,
        n_head: 2,
        ..micro()
    };
    for mode in [LowRankMode::Efficient, LowRankMode::Dlra] {
        let lr = LowRankConfig {
            mode,
            rank_init: 3,
            ..Default::default()
        };
        let mut gpt = Gpt::with_lowrank(&Cpu, cfg, &lr, 2, 6, 3).unwrap();
        let mut rng = crate::util::rng::Rng::new(13);
        for lt in gpt.layout().lowrank().to_vec() {
            for t in [Some(lt.ut), Some(lt.vt), lt.mid].into_iter().flatten() {
                let view = gpt.layout().tensors()[t].clone();
                let x = rng.normal_vec(view.len(), 1.0);
                Cpu.upload(&x, gpt.params_mut().at_mut(view.offset, view.len()))
                    .unwrap();
            }
        }
        let spectra = crate::lowrank::spectrum::live_spectra(&Cpu, &gpt).unwrap();
        assert_eq!(spectra.len(), 4);
        for (i, s) in spectra.iter().enumerate() {
            let (ut, vt, k) = growth::live_factors(&Cpu, &gpt, i).unwrap();
            let want = crate::linalg::CoreSvd::of_transposed(&ut, &vt, k)
                .unwrap()
                .s;
            assert_eq!(s.len(), want.len(), "{mode:?} layer {i}");
            for (got, want_s) in s.iter().zip(&want) {
                assert!(
                    (got - want_s).abs() <= 1e-4 * want[0],
                    "{mode:?} layer {i}: {s:?} vs {want:?}"
                );
            }
        }
    }
}

/// LoRA trains its factors alone: the backward leaves every other gradient zero, after an
/// optimiser step every other tensor (embeddings, attention, LayerNorms, biases, the frozen W0)
/// holds its value bit for bit, the factors move, and the gradient norm the optimiser clips by is
/// the factors' (an f64 sum over their gradients).
#[test]
fn lora_steps_move_only_the_factors() {
    let lr = config(LowRankMode::Lora, LowRankLayers::Mlp);
    let cfg = GptConfig {
        n_embd: 16,
        n_head: 2,
        ..micro()
    };
    let mut gpt = Gpt::with_lowrank(&Cpu, cfg, &lr, 2, 6, 3).unwrap();
    let n = gpt.layout().trainable_len();
    let mut opt =
        AdamWOptimizer::new(&Cpu, AdamWConfig::default(), n, &gpt.param_groups(&lr)).unwrap();
    let before = Cpu.download(gpt.params().buf().all()).unwrap();
    loss_and_grads(&mut gpt);
    let tensors = gpt.layout().tensors().to_vec();
    let is_factor = |name: &str| name.ends_with(".lowrank_ut") || name.ends_with(".lowrank_vt");
    let grads = gpt.grads().unwrap();
    let want = (tensors.iter().filter(|t| is_factor(&t.name)))
        .flat_map(|t| Cpu.download(grads.at(t.offset, t.len())).unwrap())
        .map(|g| g as f64 * g as f64)
        .sum::<f64>()
        .sqrt();
    assert!(want > 0.0);
    // The optimiser keeps moments, and the backward gradients, for the factors alone.
    let factors: usize = tensors
        .iter()
        .filter(|t| is_factor(&t.name))
        .map(|t| t.len())
        .sum();
    assert_eq!(opt.state().map(|w| w.len), [factors; 2]);
    assert_eq!(grads.buf().len(), factors);

    let bufs = gpt.optimizer_buffers().unwrap();
    let report = opt
        .step(&Cpu, 1e-2, bufs.params, bufs.grads, bufs.compute_copy)
        .unwrap();
    assert!(
        (report.grad_norm - want).abs() <= 1e-5 * want,
        "clipped norm {} vs the factors' {want}",
        report.grad_norm
    );
    let after = Cpu.download(gpt.params().buf().all()).unwrap();
    let window =
        |buf: &[f32], t: &crate::model::TensorView| buf[t.offset..t.offset + t.len()].to_vec();
    let mut moved = 0;
    for t in &tensors {
        match is_factor(&t.name) {
            true => moved += usize::from(window(&before, t) != window(&after, t)),
            false => assert_eq!(window(&before, t), window(&after, t), "{} moved", t.name),
        }
    }
    assert!(moved > 0, "no factor moved");
}

#[test]
fn a_step_fills_and_writes_only_the_gradients_the_backward_forms() {
    // The gradient buffer is set to a sentinel, then zero_grads and a forward and backward run:
    // every tensor with a gradient must come out finite and off the sentinel somewhere; every
    // other (LoRA's frozen base, InRank's W0) has no gradient memory at all (a write there would
    // panic), so the buffer holds exactly the tensors with one.
    const SENTINEL: f32 = 7.0;
    let lora_emb = LowRankConfig {
        lora_embeddings: true,
        ..config(LowRankMode::Lora, LowRankLayers::All)
    };
    let cases = [
        config(LowRankMode::Dense, LowRankLayers::Mlp),
        config(LowRankMode::Lora, LowRankLayers::All),
        lora_emb,
        config(LowRankMode::Inrank, LowRankLayers::Mlp),
    ];
    for lr in cases {
        let cfg = GptConfig {
            n_embd: 16,
            n_head: 2,
            ..micro()
        };
        let mut gpt = Gpt::with_lowrank(&Cpu, cfg, &lr, 2, 6, 3).unwrap();
        let spans = gpt.trained().gradient_spans(gpt.layout());
        assert!(!spans.is_empty(), "{:?}: no gradient at all", lr.mode);
        Cpu.fill(gpt.grads_mut().unwrap().buf_mut().all_mut(), SENTINEL)
            .unwrap();
        loss_and_grads(&mut gpt);
        let grads = gpt.grads().unwrap();
        let tensors = gpt.layout().tensors().to_vec();
        let mut with_gradient = 0;
        for (i, t) in tensors.iter().enumerate() {
            if gpt.has_gradient(i) {
                let g = Cpu.download(grads.at(t.offset, t.len())).unwrap();
                assert!(
                    g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != SENTINEL),
                    "{:?}: {} not formed",
                    lr.mode,
                    t.name
                );
                with_gradient += t.len();
            }
        }
        assert_eq!(grads.buf().len(), with_gradient, "{:?}", lr.mode);
    }
}
