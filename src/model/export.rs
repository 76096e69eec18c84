//! A trained model as a dense GPT-2: each low-rank layer's product W = W0 + Utᵀ·M·Vt, formed at its
//! live width, stored as the layer's `{prefix}.weight`, so that Hugging Face's GPT2LMHeadModel and
//! any other GPT-2 tool (our `eval`, `sample` and `--init-from` too) read it.

use super::params::LowRankTensors;
use super::Gpt;
use crate::backend::cpu::Cpu;
use crate::backend::{Backend, Buffer, DType, Gemm};
use crate::train::tensor_file::{HostTensor, Outgoing, Values};
use anyhow::{ensure, Result};

impl Gpt<Cpu> {
    /// Every parameter, laid out as `layout()`: `Cpu` computes in f32, so its masters are every
    /// tensor's (`Weights`).
    fn host_params(&self) -> &[f32] {
        let masters = self.params();
        assert!(masters.is_whole(self.layout().len()));
        masters.buf().as_slice()
    }

    /// Every tensor of the dense GPT-2 with this model's function, HF-named (f32): the dense
    /// ones borrowed from the weights, each low-rank layer's product formed when it is written
    /// (`tensor_file::save_views`), so that an export holds the model and one layer's product.
    pub fn dense_tensors(&self) -> Result<Vec<Outgoing<'_>>> {
        let (layout, values) = (self.layout(), self.host_params());
        let factors: Vec<usize> = (layout.lowrank().iter())
            .flat_map(|lt| [Some(lt.ut), Some(lt.vt), lt.w0, lt.mid])
            .flatten()
            .collect();
        let mut tensors: Vec<Outgoing> = (self.hf_spans().into_iter().enumerate())
            .filter(|(i, _)| !factors.contains(i))
            .map(|(_, t)| {
                let len = t.shape.iter().product::<usize>();
                Outgoing {
                    values: Values::Borrowed(&values[t.offset..t.offset + len]),
                    name: t.name,
                    shape: t.shape,
                }
            })
            .collect();
        for (lt, live) in layout.lowrank().iter().zip(&self.lowrank().live) {
            let (l, k) = (&lt.layer, live.width);
            tensors.push(Outgoing {
                name: format!("{}.weight", l.prefix),
                shape: vec![l.n_in, l.n_out],
                values: Values::Formed(Box::new(move || self.merged(lt, k))),
            });
        }
        Ok(tensors)
    }

    /// A low-rank layer's W = W0 + Utᵀ·M·Vt at live width `k`.
    fn merged(&self, lt: &LowRankTensors, k: usize) -> Result<Vec<f32>> {
        let b = &Cpu;
        let (layout, params, l) = (self.layout(), self.params(), &lt.layer);
        let offset = |i: usize| layout.tensors()[i].offset;
        // M (k × k): a trained middle's live block (dln's M, DLRA's S, stored contiguously at
        // the tensor's start), LoRA's (α/r)·I, or I.
        let mut m = vec![0.0f32; k * k];
        match lt.mid {
            Some(mid) => m.copy_from_slice(&self.host_params()[offset(mid)..][..k * k]),
            None => {
                let scale = self.lowrank().lora_scale().unwrap_or(1.0);
                (0..k).for_each(|p| m[p * k + p] = scale);
            }
        }
        let mut mid = b.alloc(DType::F32, k * k)?;
        b.upload(&m, mid.all_mut())?;
        let mut vt_eff = b.alloc(DType::F32, k * l.n_out)?;
        let vt = params.at(offset(lt.vt), k * l.n_out);
        b.gemm(&Gemm::new(k, l.n_out, k), mid.all(), vt, vt_eff.all_mut())?;
        let mut w = b.alloc(DType::F32, l.n_in * l.n_out)?;
        match lt.w0 {
            Some(w0) => b.cast(params.at(offset(w0), l.n_in * l.n_out), w.all_mut())?,
            None => b.fill(w.all_mut(), 0.0)?,
        }
        let ut = params.at(offset(lt.ut), k * l.n_in);
        let product = Gemm::new(l.n_in, l.n_out, k).trans_a().beta(1.0);
        b.gemm(&product, ut, vt_eff.all(), w.all_mut())?;
        Ok(w.into_vec())
    }
}

impl Gpt<Cpu> {
    /// A LoRA model's factors as a PEFT adapter for Hugging Face's GPT-2 (Conv1D layers, so
    /// `fan_in_fan_out`): per layer `base_model.model.{prefix}.lora_A.weight` = Ut (r × n_in) and
    /// `lora_B.weight` = Vtᵀ (n_out × r), with W = W0 + (α/r)·Aᵀ·Bᵀ; the prefixes are the target
    /// modules.
    pub fn lora_adapter_tensors(&self) -> Result<(Vec<HostTensor>, Vec<String>)> {
        let (layout, lr) = (self.layout(), self.lowrank());
        ensure!(
            lr.lora_scale().is_some(),
            "only a LoRA run has an adapter: export the merged model instead"
        );
        let host = self.host_params();
        let mut tensors = Vec::new();
        let mut targets = Vec::new();
        for (lt, live) in layout.lowrank().iter().zip(&lr.live) {
            let (l, k) = (&lt.layer, live.width);
            let at = |i: usize, len: usize| {
                let off = layout.tensors()[i].offset;
                &host[off..off + len]
            };
            let vt = at(lt.vt, k * l.n_out);
            tensors.push(HostTensor {
                name: format!("base_model.model.{}.lora_A.weight", l.prefix),
                shape: vec![k, l.n_in],
                data: at(lt.ut, k * l.n_in).to_vec(),
            });
            tensors.push(HostTensor {
                name: format!("base_model.model.{}.lora_B.weight", l.prefix),
                shape: vec![l.n_out, k],
                data: (0..l.n_out * k)
                    .map(|i| vt[(i % k) * l.n_out + i / k])
                    .collect(),
            });
            targets.push(l.prefix.clone());
        }
        Ok((tensors, targets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lowrank::{LowRankConfig, LowRankLayers, LowRankMode};
    use crate::model::reference::{micro, random_tokens};
    use crate::util::rng::Rng;

    /// In every low-rank mode, a dense GPT-2 built from the exported tensors (through the dense
    /// path, which shares no code with the fused low-rank op) gives the low-rank model's logits.
    #[test]
    fn the_dense_export_computes_the_low_rank_models_function() {
        use LowRankLayers::*;
        use LowRankMode::*;
        for (mode, layers) in [
            (Efficient, Mlp),
            (Inrank, All),
            (Lora, All),
            (Dln, Mlp),
            (Dlra, Attn),
        ] {
            let cfg = LowRankConfig {
                mode,
                layers,
                rank_init: 2,
                lora_alpha: Some(3.0),
                lora_base: (mode == Lora).then(|| "set by the test".into()),
                ..Default::default()
            };
            let mut lowrank = Gpt::with_lowrank(&Cpu, micro(), &cfg, 2, 5, 1).unwrap();
            // Random values everywhere (LoRA's zero factor too), dormant rows included: the
            // export must read each layer at its live width only.
            let n = lowrank.layout().len();
            let values = Rng::new(4).normal_vec(n, 0.5);
            Cpu.upload(&values, lowrank.params_mut().buf_mut().all_mut())
                .unwrap();
            lowrank.refresh_compute_copy(&Cpu).unwrap();
            let inputs = random_tokens(10, micro().vocab_size, 2);
            lowrank.forward(&Cpu, &inputs, None).unwrap();
            let want = Cpu.download(lowrank.logits()).unwrap();

            let mut dense = Gpt::new(&Cpu, micro(), 2, 5, 9).unwrap();
            dense
                .load_hf_tensors(&Cpu, host_tensors(lowrank.dense_tensors().unwrap()))
                .unwrap();
            dense.forward(&Cpu, &inputs, None).unwrap();
            let got = Cpu.download(dense.logits()).unwrap();
            let vocab = micro().vocab_size;
            let (mut diff, mut norm) = (0.0f64, 0.0f64);
            for (row_got, row_want) in got
                .chunks(micro().padded_vocab)
                .zip(want.chunks(micro().padded_vocab))
            {
                for (g, w) in row_got[..vocab].iter().zip(&row_want[..vocab]) {
                    diff = diff.max((g - w).abs() as f64);
                    norm = norm.max(w.abs() as f64);
                }
            }
            assert!(
                diff <= 1e-5 * norm.max(1.0),
                "{mode:?} {layers:?}: logits differ by {diff} (scale {norm})"
            );
            if mode == Lora {
                assert_adapter_rebuilds_the_merged_weights(&lowrank, 3.0 / 2.0);
            } else {
                assert!(lowrank.lora_adapter_tensors().is_err());
            }
        }
    }

    fn host_tensors(tensors: Vec<Outgoing>) -> Vec<HostTensor> {
        (tensors.into_iter())
            .map(|t| t.into_host().unwrap())
            .collect()
    }

    /// PEFT's formula on the adapter, in f64 loops: W = W0 + scale·Aᵀ·Bᵀ for each layer, against
    /// the merged export.
    fn assert_adapter_rebuilds_the_merged_weights(gpt: &Gpt<Cpu>, scale: f64) {
        let (adapter, targets) = gpt.lora_adapter_tensors().unwrap();
        let merged = host_tensors(gpt.dense_tensors().unwrap());
        let base = gpt.to_hf_tensors(&Cpu).unwrap();
        let find =
            |ts: &[HostTensor], name: &str| ts.iter().find(|t| t.name == name).unwrap().clone();
        assert_eq!(targets.len(), 8);
        for prefix in targets {
            let a = find(
                &adapter,
                &format!("base_model.model.{prefix}.lora_A.weight"),
            );
            let b = find(
                &adapter,
                &format!("base_model.model.{prefix}.lora_B.weight"),
            );
            let (r, n_in, n_out) = (a.shape[0], a.shape[1], b.shape[0]);
            assert_eq!(b.shape, vec![n_out, r]);
            let w0 = find(&base, &format!("{prefix}.lowrank_w0"));
            let w = find(&merged, &format!("{prefix}.weight"));
            for i in 0..n_in {
                for o in 0..n_out {
                    let delta: f64 = (0..r)
                        .map(|p| a.data[p * n_in + i] as f64 * b.data[o * r + p] as f64)
                        .sum();
                    let want = w0.data[i * n_out + o] as f64 + scale * delta;
                    let got = w.data[i * n_out + o] as f64;
                    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{prefix}");
                }
            }
        }
    }
}
