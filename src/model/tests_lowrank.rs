//! Low-rank models against the f64 reference: every gradient in every mode, and rank growth
//! leaving the function unchanged.

use super::tests::{assert_gradients_match_reference, micro, random_tokens, LowRankRef};
use super::{Gpt, GptConfig};
use crate::backend::cpu::Cpu;
use crate::backend::{Backend, Buffer};
use crate::lowrank::growth;
use crate::lowrank::{LowRankConfig, LowRankLayers, LowRankMode};

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
