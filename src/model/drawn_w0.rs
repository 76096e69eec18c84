//! InRank's frozen W0, which its checkpoints leave out: nothing updates it, and it is GPT-2's init
//! of its tensor, so it is drawn again from the run's seed (`ParamLayout::init_tensor_into`) as
//! the run's start drew it. GPT-2 medium's are 805 MB of f32 each checkpoint would otherwise hold
//! (and the host copy it is written from with them).

use super::hf::canonical;
use super::params::ParamLayout;
use crate::train::tensor_file::TensorSource;
use anyhow::Result;
use std::collections::HashSet;

/// A checkpoint's tensors, completed by the W0 they lack, drawn from `seed` for `layout`.
pub struct DrawnW0<S> {
    stored: S,
    layout: ParamLayout,
    seed: u64,
    /// The layout's indices of the W0 the stored tensors lack.
    drawn: Vec<usize>,
}

impl<S: TensorSource> DrawnW0<S> {
    /// `stored` completed by the W0 of `layout` it does not hold (by canonical name), each drawn
    /// as a fresh start from `seed` draws it (`ParamLayout::init_tensor_into`).
    pub fn new(stored: S, layout: ParamLayout, seed: u64) -> Result<Self> {
        let listing = stored.listing()?;
        let held: HashSet<&str> = listing.iter().map(|(name, _)| canonical(name)).collect();
        let drawn = (layout.lowrank().iter())
            .filter_map(|lt| lt.w0)
            .filter(|&i| !held.contains(canonical(&layout.tensors()[i].name)))
            .collect();
        Ok(DrawnW0 {
            stored,
            layout,
            seed,
            drawn,
        })
    }

    /// The layout's index of W0 `name`, if it is one the stored tensors lack.
    fn drawn(&self, name: &str) -> Option<usize> {
        (self.drawn.iter().copied()).find(|&i| self.layout.tensors()[i].name == name)
    }
}

impl<S: TensorSource> TensorSource for DrawnW0<S> {
    fn listing(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let mut listing = self.stored.listing()?;
        listing.extend(self.drawn.iter().map(|&i| {
            let t = &self.layout.tensors()[i];
            (t.name.clone(), t.shape.clone())
        }));
        Ok(listing)
    }

    /// A W0 drawn into `dst`, on every core (`Rng::normals_into`).
    fn read_into(&mut self, name: &str, dst: &mut [f32]) -> Result<()> {
        let Some(index) = self.drawn(name) else {
            return self.stored.read_into(name, dst);
        };
        self.layout.init_tensor_into(index, self.seed, dst);
        Ok(())
    }

    fn skip(&mut self, name: &str) {
        if self.drawn(name).is_none() {
            self.stored.skip(name)
        }
    }

    fn finish(&mut self) -> Result<()> {
        self.stored.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::lowrank::{LowRankConfig, LowRankLayers, LowRankMode};
    use crate::model::{ActivationPlan, Gpt, GptConfig, Keep, Start};
    use crate::train::tensor_file::{read_all, HostTensor};

    fn inrank() -> LowRankConfig {
        LowRankConfig {
            mode: LowRankMode::Inrank,
            layers: LowRankLayers::All,
            rank_init: 4,
            ..Default::default()
        }
    }

    /// Tensors held in memory, as a source.
    struct Held(Vec<HostTensor>);

    impl TensorSource for Held {
        fn listing(&self) -> Result<Vec<(String, Vec<usize>)>> {
            Ok(self
                .0
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect())
        }
        fn read_into(&mut self, name: &str, dst: &mut [f32]) -> Result<()> {
            let t = self.0.iter().find(|t| t.name == name).unwrap();
            dst.copy_from_slice(&t.data);
            Ok(())
        }
    }

    const PLAN: ActivationPlan = ActivationPlan {
        batch: 1,
        seq: 8,
        keep: Keep::Nothing,
    };

    /// The tiny GPT with InRank layers as a fresh run's start draws it from seed 11.
    fn started() -> Gpt<Cpu> {
        let cfg = GptConfig::preset("tiny").unwrap();
        Gpt::starting(&Cpu, cfg, &inrank(), PLAN, Start::Init(11)).unwrap()
    }

    /// An InRank model's checkpoint tensors lack its W0; completed by their draws from the seed,
    /// they rebuild the model the start drew, value for value.
    #[test]
    fn a_checkpoint_without_w0_rebuilds_the_model_its_seed_started() {
        let (b, started) = (Cpu, started());
        let (cfg, lr, plan) = (*started.config(), inrank(), PLAN);
        let saved = (started.checkpoint_tensors(&b, Vec::new()).unwrap()).into_host_tensors();
        let w0s = (started.layout().tensors().iter())
            .filter(|t| t.name.ends_with(".lowrank_w0"))
            .count();
        // Every block's four matrices have one, and the checkpoint holds none of them.
        assert_eq!(w0s, 4 * cfg.n_layer);
        assert!(saved.iter().all(|t| !t.name.ends_with(".lowrank_w0")));
        assert_eq!(saved.len() + w0s, started.layout().tensors().len());
        let layout = started.layout().clone();
        let all = |m: &Gpt<Cpu>| m.to_hf_flat(&b, Vec::new()).unwrap().values;
        let rebuild = |source: DrawnW0<Held>| {
            let mut m = Gpt::unset(&b, cfg, &lr, plan).unwrap();
            m.load_hf_tensors(&b, source).unwrap();
            all(&m)
        };
        let source = DrawnW0::new(Held(saved.clone()), layout.clone(), 11).unwrap();
        assert_eq!(rebuild(source), all(&started));
        // Another seed draws other W0, and the stored tensors as they are.
        let other = rebuild(DrawnW0::new(Held(saved.clone()), layout.clone(), 12).unwrap());
        let differ = |t: &crate::model::TensorView| {
            let (at, n) = (t.offset, t.len());
            other[at..at + n] != all(&started)[at..at + n]
        };
        for t in layout.tensors() {
            assert_eq!(differ(t), t.name.ends_with(".lowrank_w0"), "{}", t.name);
        }
    }

    /// A checkpoint that holds a W0 (written before checkpoints left them out) gives its own.
    #[test]
    fn a_stored_w0_is_read_not_drawn() {
        let started = started();
        let mut whole = started.to_hf_tensors(&Cpu).unwrap();
        let name = "transformer.h.1.mlp.c_proj.lowrank_w0";
        let stored = whole.iter_mut().find(|t| t.name == name).unwrap();
        stored.data.iter_mut().for_each(|x| *x = 0.5);
        let source = DrawnW0::new(Held(whole), started.layout().clone(), 11).unwrap();
        let listed = source.listing().unwrap();
        assert_eq!(listed.iter().filter(|(n, _)| n == name).count(), 1);
        let read = read_all(source).unwrap();
        let w0 = read.iter().find(|t| t.name == name).unwrap();
        assert!(w0.data.iter().all(|&x| x == 0.5));
    }
}
