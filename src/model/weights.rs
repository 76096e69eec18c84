//! The weights a model computes with: f32 masters and, on a backend computing in another dtype
//! (bf16 on CUDA), their copy in it, which the forward reads. Beside a copy only the tensors that
//! train keep an f32 master (`master_windows`): a tensor nothing updates (LoRA's base, InRank's
//! W0, every tensor of a model that runs forward only) is written into the copy when it is loaded
//! and lives there alone. A GPT-2 medium LoRA run holds 1.4 GB fewer on the GPU, and `eval` of
//! GPT-2 XL 6.2 GB fewer; a backend computing in f32 has no copy and masters of every tensor.

use super::gpt::Trained;
use super::params::{Init, ParamLayout};
use crate::backend::{Backend, Buffer, DType, Mut};
use crate::lowrank::{start_factors, LowRankConfig};
use crate::optim::PackedParams;
use crate::util::rng::Rng;
use anyhow::{Context, Result};

/// The parameter windows that keep f32 masters on a backend computing in `compute`: every
/// parameter without a copy; beside one, in a model that trains, those with a gradient (the
/// optimiser updates those alone: its groups are checked against the gradients' windows), and in
/// a model that runs forward only, none.
pub fn master_windows(
    layout: &ParamLayout,
    trained: Trained,
    trains: bool,
    compute: DType,
) -> Vec<(usize, usize)> {
    match (compute, trains) {
        (DType::F32, _) => vec![(0, layout.len())],
        (_, true) => trained.gradient_spans(layout),
        (_, false) => Vec::new(),
    }
}

/// A model's weights: f32 masters of `master_windows` and the compute copy of every parameter.
pub struct Weights<B: Backend> {
    masters: PackedParams<B>,
    /// None when the backend computes in f32: then the masters hold every parameter.
    copy: Option<B::Buf>,
}

impl<B: Backend> Weights<B> {
    /// Zeroed weights for `layout`, masters as `master_windows` says.
    pub fn new(b: &B, layout: &ParamLayout, trained: Trained, trains: bool) -> Result<Self> {
        let compute = b.compute_dtype();
        let windows = master_windows(layout, trained, trains, compute);
        let masters = PackedParams::new(b, &windows).context("allocating the parameters")?;
        let copy = match compute {
            DType::F32 => None,
            dtype => Some(
                (b.alloc(dtype, layout.len()))
                    .context("allocating the compute copy of the weights")?,
            ),
        };
        Ok(Weights { masters, copy })
    }

    /// What the forward and backward read: the copy, or where there is none the masters (then
    /// laid out as the parameters are).
    pub fn compute(&self) -> &B::Buf {
        self.copy.as_ref().unwrap_or(self.masters.buf())
    }

    /// The f32 masters, addressed by the parameters' offsets.
    pub fn masters(&self) -> &PackedParams<B> {
        &self.masters
    }

    /// The masters and the copy, apart: an optimiser step writes both.
    pub fn masters_and_copy(&mut self) -> (&mut PackedParams<B>, Option<&mut B::Buf>) {
        (&mut self.masters, self.copy.as_mut())
    }

    /// Parameters `offset..offset + len` where they are kept: their masters, else the copy. The
    /// window lies within one tensor (a tensor has a master or has none).
    pub fn window_mut(&mut self, offset: usize, len: usize) -> Mut<'_, B::Buf> {
        match &mut self.copy {
            Some(copy) if !self.masters.covers(offset, len) => copy.at_mut(offset, len),
            _ => self.masters.at_mut(offset, len),
        }
    }

    /// Sets the parameters as `start` says (`Start::Zero`: as allocated, zero); the copy of the
    /// masters' tensors follows at `refresh`.
    pub fn start(
        &mut self,
        b: &B,
        layout: &ParamLayout,
        lr: &LowRankConfig,
        start: Start,
    ) -> Result<()> {
        match start {
            // Tensor by tensor into where each is kept, as a checkpoint is read: straight into
            // it on a host backend, a device staging one tensor (not the whole layout: GPT-2
            // medium's 1.4 GB of f32), each drawn on every core; a tensor that starts at zero is
            // left as allocated. Then the factors, as `Factors` sets them.
            Start::Init(seed) => {
                for (i, t) in layout.tensors().iter().enumerate() {
                    if t.init == Init::Zeros {
                        continue;
                    }
                    let mut draw = |dst: &mut [f32]| {
                        layout.init_tensor_into(i, seed, dst);
                        Ok(())
                    };
                    b.upload_with(self.window_mut(t.offset, t.len()), &mut draw)?;
                }
                self.start(b, layout, lr, Start::Factors(seed))
            }
            // Each factor into its window, the rest left as allocated (zero) for the base: a
            // device stages the factors alone, not every parameter.
            Start::Factors(seed) => {
                for (offset, data) in start_factor_values(layout, lr, seed)? {
                    b.upload(&data, self.window_mut(offset, data.len()))?;
                }
                Ok(())
            }
            Start::Zero => Ok(()),
        }
    }

    /// Parameters `offset..end` cut where the masters' windows begin and end, as (start,
    /// length, whether the masters hold them), in order.
    fn pieces(&self, offset: usize, end: usize) -> Vec<(usize, usize, bool)> {
        let mut pieces = Vec::new();
        let mut at = offset;
        while at < end {
            let next = self.masters.windows().find(|&(o, l)| o + l > at);
            let (until, in_masters) = match next {
                Some((o, l)) if o <= at => ((o + l).min(end), true),
                Some((o, _)) => (o.min(end), false),
                None => (end, false),
            };
            pieces.push((at, until - at, in_masters));
            at = until;
        }
        pieces
    }

    /// Casts the masters into the copy (a tensor without a master is there already).
    pub fn refresh(&mut self, b: &B) -> Result<()> {
        let Some(copy) = &mut self.copy else {
            return Ok(());
        };
        for (offset, len) in self.masters.windows() {
            b.cast(self.masters.at(offset, len), copy.at_mut(offset, len))?;
        }
        Ok(())
    }

    /// Copies parameters `offset..offset + dst.len()` to the host from where each is kept, a run of
    /// masters or of the copy at a time (a device stages a bf16 run in pieces of its own).
    pub fn download_into(&self, b: &B, offset: usize, dst: &mut [f32]) -> Result<()> {
        for (at, n, in_masters) in self.pieces(offset, offset + dst.len()) {
            let dst = &mut dst[at - offset..][..n];
            match (in_masters, &self.copy) {
                (true, _) => b.download_into(self.masters.at(at, n), dst)?,
                (false, Some(copy)) => b.download_into(copy.at(at, n), dst)?,
                (false, None) => unreachable!("without a copy the masters hold every parameter"),
            }
        }
        Ok(())
    }

    /// The first parameter whose copy is not its master in the compute dtype, as (offset, master
    /// value, copy value); None when the copy is current or there is none. `chunk` values at a
    /// time are cast and compared.
    pub fn first_stale(&self, b: &B, chunk: usize) -> Result<Option<(usize, f32, f32)>> {
        let Some(copy) = &self.copy else {
            return Ok(None);
        };
        let largest = self.masters.windows().map(|(_, l)| l).max().unwrap_or(0);
        let chunk = chunk.clamp(1, largest.max(1));
        let mut current = b.alloc(copy.dtype(), chunk)?;
        let (mut want, mut have) = (vec![0.0; chunk], vec![0.0; chunk]);
        for (offset, len) in self.masters.windows() {
            for start in (offset..offset + len).step_by(chunk) {
                let n = chunk.min(offset + len - start);
                let (want, have) = (&mut want[..n], &mut have[..n]);
                b.cast(self.masters.at(start, n), current.at_mut(0, n))?;
                b.download_into(current.at(0, n), want)?;
                b.download_into(copy.at(start, n), have)?;
                if let Some(j) = (0..n).find(|&j| want[j].to_bits() != have[j].to_bits()) {
                    return Ok(Some((start + j, want[j], have[j])));
                }
            }
        }
        Ok(None)
    }
}

/// What a new model's parameters start as.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Start {
    /// Zero: a checkpoint replaces every value.
    Zero,
    /// GPT-2's init seeded by the value, each low-rank layer's factors from
    /// `lowrank::start_factors`.
    Init(u64),
    /// `Init`'s factors, every other value zero for a base checkpoint to fill (LoRA's,
    /// `load_lora_base`): GPT-2's init of them (GPT-2 medium's 355M draws) would be thrown away.
    Factors(u64),
}

/// Each low-rank layer's starting factors from `lowrank::start_factors` (each layer on its own
/// generator, seeded by `seed` and the layer's index), as (offset in the parameters, values):
/// the live rows of each factor tensor, from its start.
fn start_factor_values(
    layout: &ParamLayout,
    lr: &LowRankConfig,
    seed: u64,
) -> Result<Vec<(usize, Vec<f32>)>> {
    let mut values = Vec::new();
    for (i, lt) in layout.lowrank().iter().enumerate() {
        let l = &lt.layer;
        let width = l.width(l.start_rank(lr.rank_init));
        let mut rng = Rng::new(seed ^ (0xFAC7_0125 + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let f = start_factors(lr, l, width, &mut rng)?;
        let mid = lt.mid.zip(f.mid);
        for (t, data) in [(lt.ut, f.ut), (lt.vt, f.vt)].into_iter().chain(mid) {
            values.push((layout.tensors()[t].offset, data));
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{Cpu, CpuBf16};
    use crate::lowrank::{layer, LowRankConfig, LowRankMode};
    use crate::model::GptConfig;

    /// LoRA at rank 4 on every MLP matrix.
    fn lora_config() -> LowRankConfig {
        LowRankConfig {
            mode: LowRankMode::Lora,
            rank_init: 4,
            lora_base: Some("set by the test".into()),
            ..Default::default()
        }
    }

    /// The tiny GPT's layout with `lora_config`.
    fn lora_layout() -> ParamLayout {
        let config = GptConfig::preset("tiny").unwrap();
        ParamLayout::with_lowrank(&config, &layer::plan(&lora_config(), &config).unwrap())
    }

    const LORA: Trained = Trained::Lora { embeddings: false };

    /// Every parameter set to what `fill` writes into a host slice of them all, each tensor
    /// uploaded into where it is kept, as a start or a load writes it.
    fn set_all<B: Backend>(
        w: &mut Weights<B>,
        b: &B,
        layout: &ParamLayout,
        fill: impl Fn(&mut [f32]),
    ) {
        let mut all = vec![0.0; layout.len()];
        fill(&mut all);
        for t in layout.tensors() {
            let window = w.window_mut(t.offset, t.len());
            b.upload(&all[t.offset..t.offset + t.len()], window)
                .unwrap();
        }
    }
    /// 1 + 2⁻¹⁰: exact in f32, 1.0 in bf16 (8 significant bits).
    const FINE: f32 = 1.0 + 1.0 / 1024.0;

    #[test]
    fn beside_a_copy_only_the_factors_keep_masters_and_a_frozen_tensor_lives_in_the_copy() {
        let layout = lora_layout();
        let t = |suffix: &str| {
            let found = (layout.tensors().iter()).find(|t| t.name.ends_with(suffix));
            found.unwrap_or_else(|| panic!("no {suffix}"))
        };
        let factors: usize = (layout.tensors().iter())
            .filter(|t| t.name.ends_with(".lowrank_ut") || t.name.ends_with(".lowrank_vt"))
            .map(|t| t.len())
            .sum();
        let mut w = Weights::new(&CpuBf16, &layout, LORA, true).unwrap();
        assert_eq!(w.masters().buf().len(), factors);
        let (frozen, factor) = (t("wte.weight"), t("h.0.mlp.c_fc.lowrank_ut"));
        for t in [frozen, factor] {
            CpuBf16.fill(w.window_mut(t.offset, t.len()), FINE).unwrap();
        }
        // The factor's master holds FINE, its copy is stale (zero) until refreshed; the frozen
        // tensor went into the copy, rounded.
        let read = |w: &Weights<CpuBf16>, t: &crate::model::TensorView| {
            let mut v = vec![0.0; t.len()];
            w.download_into(&CpuBf16, t.offset, &mut v).unwrap();
            v
        };
        assert!(read(&w, frozen).iter().all(|&x| x == 1.0));
        assert!(read(&w, factor).iter().all(|&x| x == FINE));
        assert_eq!(w.compute().as_slice()[factor.offset], 0.0);
        let stale = w.first_stale(&CpuBf16, 5).unwrap();
        assert_eq!(stale, Some((factor.offset, 1.0, 0.0)));
        w.refresh(&CpuBf16).unwrap();
        assert_eq!(w.first_stale(&CpuBf16, 5).unwrap(), None);
        let copy = &w.compute().as_slice()[factor.offset..][..factor.len()];
        assert!(copy.iter().all(|&x| x == 1.0));
        // A read across the masters' edges: the whole model, each value where it is kept.
        let mut all = vec![f32::NAN; layout.len()];
        w.download_into(&CpuBf16, 0, &mut all).unwrap();
        for (i, &x) in all.iter().enumerate() {
            let want = match i {
                _ if (frozen.offset..frozen.offset + frozen.len()).contains(&i) => 1.0,
                _ if (factor.offset..factor.offset + factor.len()).contains(&i) => FINE,
                _ => 0.0,
            };
            assert_eq!(x, want, "parameter {i}");
        }
    }

    #[test]
    fn a_forward_only_model_keeps_its_weights_in_the_copy_and_f32_keeps_every_master() {
        let layout = lora_layout();
        let values = |v: &mut [f32]| v.fill(FINE);
        let mut w = Weights::new(&CpuBf16, &layout, LORA, false).unwrap();
        assert_eq!(w.masters().buf().len(), 0);
        set_all(&mut w, &CpuBf16, &layout, values);
        assert!(w.compute().as_slice().iter().all(|&x| x == 1.0));
        // One that trains: the factors' values into their masters exact, the rest into the copy
        // rounded, the factors' copy written at the refresh.
        let mut lora = Weights::new(&CpuBf16, &layout, LORA, true).unwrap();
        set_all(&mut lora, &CpuBf16, &layout, values);
        assert!(lora.masters().buf().as_slice().iter().all(|&x| x == FINE));
        let first = lora.masters().windows().next().unwrap().0;
        let stale = lora.first_stale(&CpuBf16, 5).unwrap();
        assert_eq!(stale, Some((first, 1.0, 0.0)));
        assert_eq!(lora.compute().as_slice()[first - 1], 1.0);
        lora.refresh(&CpuBf16).unwrap();
        assert!(lora.compute().as_slice().iter().all(|&x| x == 1.0));
        let mut f32s = Weights::new(&Cpu, &layout, LORA, true).unwrap();
        assert!(f32s.masters().is_whole(layout.len()));
        set_all(&mut f32s, &Cpu, &layout, values);
        assert!(f32s.compute().as_slice().iter().all(|&x| x == FINE));
        assert_eq!(f32s.first_stale(&Cpu, 5).unwrap(), None);
    }

    /// A dense run's rank log draws its MLP matrices' W0 again on resume (`init_block`): the
    /// values a fresh model's start gave them, on the f32 CPU and, rounded, in a bf16 copy.
    #[test]
    fn a_started_model_holds_what_its_seed_draws_again() {
        use super::super::params::BlockTensor::{FcProjWeight, FcWeight, QkvWeight};
        let config = GptConfig::preset("tiny").unwrap();
        let layout = ParamLayout::new(&config);
        let dense = LowRankConfig::default();
        let mut f32s = Weights::new(&Cpu, &layout, Trained::All, false).unwrap();
        f32s.start(&Cpu, &layout, &dense, Start::Init(7)).unwrap();
        let mut bf16s = Weights::new(&CpuBf16, &layout, Trained::All, false).unwrap();
        bf16s
            .start(&CpuBf16, &layout, &dense, Start::Init(7))
            .unwrap();
        for (layer, t) in [(0, FcWeight), (1, FcProjWeight), (1, QkvWeight)] {
            let view = layout.block(layer, t);
            let mut held = vec![f32::NAN; view.len()];
            f32s.download_into(&Cpu, view.offset, &mut held).unwrap();
            let drawn = layout.init_block(layer, t, 7);
            assert_eq!(held, drawn, "{}", view.name);
            assert_ne!(layout.init_block(layer, t, 8), drawn, "{}", view.name);
            bf16s
                .download_into(&CpuBf16, view.offset, &mut held)
                .unwrap();
            let rounded: Vec<f32> = (drawn.iter())
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect();
            assert_eq!(held, rounded, "{}", view.name);
        }
    }

    /// Every parameter a value of its own, fine-grained: reads that start inside a master window
    /// and end past it, or start before one and end inside it, give each value from where it is
    /// kept (the masters exact, the rest rounded).
    #[test]
    fn reads_across_the_masters_edges_take_each_value_from_where_it_is_kept() {
        let layout = lora_layout();
        let value = |i: usize| (i % 1000) as f32 * FINE + 1.0;
        let mut w = Weights::new(&CpuBf16, &layout, LORA, true).unwrap();
        let fill = |v: &mut [f32]| (v.iter_mut().enumerate()).for_each(|(i, x)| *x = value(i));
        set_all(&mut w, &CpuBf16, &layout, fill);
        let windows: Vec<_> = w.masters().windows().collect();
        let kept = |i: usize| match windows.iter().any(|&(o, l)| (o..o + l).contains(&i)) {
            true => value(i),
            false => half::bf16::from_f32(value(i)).to_f32(),
        };
        assert!(windows.len() > 1);
        for &(o, l) in &windows {
            for (start, n) in [(o + l / 2, l), (o - 5, 10), (o, l)] {
                let mut got = vec![f32::NAN; n];
                w.download_into(&CpuBf16, start, &mut got).unwrap();
                for (j, &x) in got.iter().enumerate() {
                    assert_eq!(x, kept(start + j), "parameter {} of {start}+{n}", start + j);
                }
            }
        }
    }

    /// On cpu-bf16, as on a GPU, LoRA's base keeps no f32 master: `load_lora_base` writes it into the
    /// compute copy, each value rounded to bf16 (as `half` rounds it; each W0 from the base's dense
    /// weight), and at the start, V being zero, the LoRA model computes its base's loss.
    #[test]
    fn a_lora_base_lands_in_the_bf16_copy_and_computes_the_bases_loss() {
        use crate::model::reference::random_tokens;
        use crate::model::{ActivationPlan, Gpt};
        use crate::train::tensor_file::{self, HostTensor};
        let b = &CpuBf16;
        let lr = lora_config();
        // A LoRA base has GPT-2's vocabulary.
        let cfg = GptConfig::preset("tiny").unwrap();
        let plan = ActivationPlan::new(2, 6);
        let mut base = Gpt::with_plan(b, cfg, &LowRankConfig::default(), plan, 5).unwrap();
        // Weights far from the init's, so that the loss is far from a uniform guess's.
        let n = base.layout().len();
        let values = crate::util::rng::Rng::new(9).normal_vec(n, 0.3);
        b.upload(&values, base.params_mut().buf_mut().all_mut())
            .unwrap();
        base.refresh_compute_copy(b).unwrap();
        let tensors: Vec<HostTensor> = base.to_hf_tensors(b).unwrap();
        let dir = std::env::temp_dir().join(format!("lowrank-bf16-base-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        tensor_file::save(&path, &tensors, Default::default()).unwrap();

        let mut lora = Gpt::with_plan(b, cfg, &lr, plan, 1).unwrap();
        lora.load_lora_base(b, path.to_str().unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let masters: usize = lora.params().windows().map(|(_, len)| len).sum();
        let mut factors = 0;
        for t in lora.layout().tensors() {
            let mut got = vec![0.0; t.len()];
            lora.weights().download_into(b, t.offset, &mut got).unwrap();
            if let Some(prefix) = t.name.strip_suffix(".lowrank_vt") {
                assert!(got.iter().all(|&x| x == 0.0), "{prefix}: V starts at zero");
            }
            if t.name.ends_with(".lowrank_ut") || t.name.ends_with(".lowrank_vt") {
                factors += t.len();
                continue;
            }
            let name = t.name.replace(".lowrank_w0", ".weight");
            let from = (tensors.iter()).find(|h| h.name == name).unwrap();
            for (i, (&g, &x)) in got.iter().zip(&from.data).enumerate() {
                let want = half::bf16::from_f32(x).to_f32();
                assert_eq!(g.to_bits(), want.to_bits(), "{}[{i}]", t.name);
            }
        }
        assert_eq!(masters, factors, "the factors alone keep f32 masters");
        let vocab = base.config().vocab_size;
        let (inputs, targets) = (random_tokens(12, vocab, 3), random_tokens(12, vocab, 4));
        let want = base.forward(b, &inputs, Some(&targets)).unwrap().unwrap();
        let got = lora.forward(b, &inputs, Some(&targets)).unwrap().unwrap();
        let uniform = (vocab as f32).ln();
        assert!(
            (want - uniform).abs() > 0.1,
            "{want} vs a uniform guess's {uniform}"
        );
        assert!(
            (got - want).abs() <= 2e-3 * want,
            "LoRA at its start {got}, base {want}"
        );
    }

    /// A LoRA run's fresh start (`Start::Factors`) draws the factors `Start::Init` draws (U
    /// random, V zero, as LoRA starts), leaves every other value zero for the base, and its bf16
    /// copy current, on cpu-bf16 as on the f32 CPU.
    #[test]
    fn a_lora_start_draws_the_inits_factors_alone() {
        use crate::model::{ActivationPlan, Gpt, Start};
        fn check<B: Backend>(b: &B) {
            let (cfg, plan) = (
                GptConfig::preset("tiny").unwrap(),
                ActivationPlan::new(1, 4),
            );
            let lr = lora_config();
            let start = |s| Gpt::starting(b, cfg, &lr, plan, s).unwrap();
            let (factors, init) = (start(Start::Factors(3)), start(Start::Init(3)));
            assert_eq!(factors.stale_compute_copy(b).unwrap(), None);
            let all = |gpt: &Gpt<B>| {
                let mut v = vec![0.0; gpt.layout().len()];
                gpt.weights().download_into(b, 0, &mut v).unwrap();
                v
            };
            let (f, i) = (all(&factors), all(&init));
            for t in factors.layout().tensors() {
                let (f, i) = (&f[t.offset..][..t.len()], &i[t.offset..][..t.len()]);
                if t.name.ends_with(".lowrank_ut") {
                    assert_eq!(f, i, "{}", t.name);
                    assert!(f.iter().any(|&x| x != 0.0), "{}: U is drawn", t.name);
                } else if t.name.ends_with(".lowrank_vt") {
                    assert!(
                        f.iter().chain(i).all(|&x| x == 0.0),
                        "{}: V starts at 0",
                        t.name
                    );
                } else {
                    assert!(f.iter().all(|&x| x == 0.0), "{}", t.name);
                    assert!(i.iter().any(|&x| x != 0.0) || t.name.contains("bias"));
                }
            }
        }
        check(&Cpu);
        check(&CpuBf16);
    }
}
