//! AdamW over a flat parameter buffer split into groups (weight decay on matrices only), with
//! clipping by global gradient norm folded into the fused update's gradient scale. A group may
//! step by heavy ball instead (DLRA heavy ball on the coefficients S), its velocity kept in the
//! first-moment buffer.

use super::PackedParams;
use crate::backend::{AdamW, Backend, Buffer, DType, HeavyBall, Mut, Ref};
use anyhow::{bail, ensure, Context, Result};

/// A contiguous run of parameters sharing a weight-decay setting and a learning-rate scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamGroup {
    pub offset: usize,
    pub len: usize,
    pub decay: bool,
    /// The group's learning rate is `lr_scale` times the schedule's; 0 holds the group fixed
    /// (no update, no decay, its moments untouched).
    pub lr_scale: f32,
    pub rule: GroupRule,
}

/// How a group's parameters are updated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GroupRule {
    AdamW,
    /// Heavy ball with friction γ and step h = the group's learning rate; velocity in `m`.
    HeavyBall {
        friction: f32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value (0 disables clipping).
    pub clip: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            clip: 1.0,
        }
    }
}

/// A step whose loss or gradient norm is not finite: the run cannot go on, and the step has
/// changed nothing (the training loop says which checkpoint to continue from).
#[derive(Debug, thiserror::Error)]
#[error("{what} at step {step}: training diverged")]
pub struct Diverged {
    /// The quantity that is not finite, with its value.
    pub what: String,
    pub step: u32,
}

/// What one optimiser step saw: the gradient norm before clipping and the scale applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    pub grad_norm: f64,
    pub clip_scale: f32,
}

/// AdamW state: f32 first and second moments of the trained groups only, one after another (a
/// group held fixed, such as LoRA's frozen base, keeps none).
pub struct AdamWOptimizer<B: Backend> {
    pub config: AdamWConfig,
    m: B::Buf,
    v: B::Buf,
    /// The trained groups, each with the offset of its moments in `m` and `v`.
    slots: Vec<Slot>,
    /// The trained groups as maximal contiguous (offset, len) runs: the gradient norm's windows.
    /// Held-fixed tensors between them (LoRA's base, a frozen W0, DLRA's bases) carry no gradient
    /// the norm needs (LoRA's base and a W0 have no gradient memory: each window must lie within
    /// one of `PackedParams`' runs, which `step` checks).
    norm_windows: Vec<(usize, usize)>,
    /// Parameters the groups tile.
    params: usize,
    /// Moments held: the trained groups' lengths summed.
    state_len: usize,
    /// Optimiser steps taken so far (bias correction uses step + 1).
    pub step: u32,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    group: ParamGroup,
    state: usize,
}

impl<B: Backend> AdamWOptimizer<B> {
    /// Groups must tile [0, n) in order; adjacent groups with the same decay are merged so the fused
    /// kernel runs over as few windows as possible.
    pub fn new(b: &B, config: AdamWConfig, n: usize, groups: &[ParamGroup]) -> Result<Self> {
        let mut merged: Vec<ParamGroup> = Vec::new();
        let mut next = 0;
        for g in groups {
            ensure!(
                g.offset == next,
                "parameter groups must tile the buffer in order (gap or overlap at {})",
                g.offset
            );
            next += g.len;
            match merged.last_mut() {
                Some(last)
                    if last.decay == g.decay
                        && last.lr_scale == g.lr_scale
                        && last.rule == g.rule =>
                {
                    last.len += g.len
                }
                _ => merged.push(*g),
            }
        }
        ensure!(next == n, "parameter groups cover {next} of {n} parameters");
        let mut slots = Vec::new();
        let mut state_len = 0;
        for group in merged.into_iter().filter(|g| g.lr_scale != 0.0) {
            slots.push(Slot {
                group,
                state: state_len,
            });
            state_len += group.len;
        }
        let mut norm_windows: Vec<(usize, usize)> = Vec::new();
        for s in &slots {
            match norm_windows.last_mut() {
                Some((offset, len)) if *offset + *len == s.group.offset => *len += s.group.len,
                _ => norm_windows.push((s.group.offset, s.group.len)),
            }
        }
        Ok(AdamWOptimizer {
            config,
            m: b.alloc(DType::F32, state_len.max(1))?,
            v: b.alloc(DType::F32, state_len.max(1))?,
            slots,
            norm_windows,
            params: n,
            state_len,
            step: 0,
        })
    }

    /// The moments `new` keeps per moment: the lengths of the groups that train.
    pub fn state_len(groups: &[ParamGroup]) -> usize {
        (groups.iter())
            .filter(|g| g.lr_scale != 0.0)
            .map(|g| g.len)
            .sum()
    }

    /// Where the moments of parameters [offset, offset + len) start in `m` and `v`.
    fn state_offset(&self, offset: usize, len: usize) -> Result<usize> {
        self.slots
            .iter()
            .find(|s| s.group.offset <= offset && offset + len <= s.group.offset + s.group.len)
            .map(|s| s.state + offset - s.group.offset)
            .with_context(|| {
                format!("parameters {offset}..{} have no optimiser state: they are held fixed or span groups", offset + len)
            })
    }

    /// The first and second moments of parameters [offset, offset + len), one trained group's.
    pub fn moments(&self, offset: usize, len: usize) -> Result<[Ref<'_, B::Buf>; 2]> {
        let s = self.state_offset(offset, len)?;
        Ok([self.m.at(s, len), self.v.at(s, len)])
    }
    pub fn moments_mut(&mut self, offset: usize, len: usize) -> Result<[Mut<'_, B::Buf>; 2]> {
        let s = self.state_offset(offset, len)?;
        Ok([self.m.at_mut(s, len), self.v.at_mut(s, len)])
    }

    /// Every moment held, (m, v), as a checkpoint stores them.
    pub fn state(&self) -> [Ref<'_, B::Buf>; 2] {
        [self.m.at(0, self.state_len), self.v.at(0, self.state_len)]
    }

    /// Restores `state()` from a checkpoint whose moments hold `len` values each, which
    /// `read(i, dst)` writes into `dst` (i = 0 for m, 1 for v): straight into the moments, on a
    /// host backend. One written before moments were kept for the trained groups alone (in the
    /// parameters' layout, one value per parameter) is read too, through a copy.
    pub fn load_state(
        &mut self,
        b: &B,
        len: usize,
        read: &mut dyn FnMut(usize, &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        let (held, n) = (self.state_len, self.params);
        if len == held {
            b.upload_with(self.m.at_mut(0, held), &mut |dst| read(0, dst))?;
            return b.upload_with(self.v.at_mut(0, held), &mut |dst| read(1, dst));
        }
        ensure!(len == n, "the checkpoint's optimiser state holds {len} values; this model's optimiser keeps {held} (for {n} parameters): was it written by another configuration?");
        for (i, moment) in [&mut self.m, &mut self.v].into_iter().enumerate() {
            let mut per_param = vec![0.0; n];
            read(i, &mut per_param)?;
            for s in &self.slots {
                let (from, len) = (s.group.offset, s.group.len);
                b.upload(&per_param[from..from + len], moment.at_mut(s.state, len))?;
            }
        }
        Ok(())
    }

    /// One step at learning rate `lr`: the trained groups' gradient norm is measured, the gradient
    /// clipped to `config.clip` (through the fused kernel's gradient scale), and AdamW run over
    /// each group.
    /// A non-finite norm is an error and leaves the weights untouched.
    /// `params` are the f32 masters (each trained group must have one: the gradients' windows
    /// are theirs); `compute_copy` receives the updated weights in the compute dtype.
    pub fn step(
        &mut self,
        b: &B,
        lr: f32,
        params: &mut PackedParams<B>,
        grads: &PackedParams<B>,
        mut compute_copy: Option<&mut B::Buf>,
    ) -> Result<StepReport> {
        // Every trained group lies in a norm window: each must have gradient memory.
        let missing = self
            .norm_windows
            .iter()
            .find(|&&(o, l)| !grads.covers(o, l) || !params.covers(o, l));
        if let Some(&(offset, len)) = missing {
            bail!("parameters {offset}..{} train but have no gradient or master memory: the optimiser's groups and the model's gradients disagree", offset + len);
        }
        let windows: Vec<_> = (self.norm_windows.iter())
            .map(|&(offset, len)| grads.at(offset, len))
            .collect();
        let grad_norm = b.sum_squares(&windows)?.sqrt();
        if !grad_norm.is_finite() {
            return Err(Diverged {
                what: format!("the gradient norm is {grad_norm}"),
                step: self.step + 1,
            }
            .into());
        }
        let clip = self.config.clip as f64;
        let clip_scale = if clip > 0.0 && grad_norm > clip {
            (clip / grad_norm) as f32
        } else {
            1.0
        };
        self.step += 1;
        for &Slot { group: g, state } in &self.slots {
            let weight_decay = match g.decay {
                true => self.config.weight_decay,
                false => 0.0,
            };
            let copy = compute_copy
                .as_deref_mut()
                .map(|c| c.at_mut(g.offset, g.len));
            let (p, grad) = (params.at_mut(g.offset, g.len), grads.at(g.offset, g.len));
            let m = self.m.at_mut(state, g.len);
            match g.rule {
                GroupRule::AdamW => {
                    let hp = AdamW {
                        lr: lr * g.lr_scale,
                        beta1: self.config.beta1,
                        beta2: self.config.beta2,
                        eps: self.config.eps,
                        weight_decay,
                        step: self.step,
                        grad_scale: clip_scale,
                    };
                    b.adamw(&hp, p, grad, m, self.v.at_mut(state, g.len), copy)?
                }
                GroupRule::HeavyBall { friction } => {
                    let hp = HeavyBall {
                        h: lr * g.lr_scale,
                        friction,
                        weight_decay,
                        grad_scale: clip_scale,
                    };
                    b.heavy_ball(&hp, p, grad, m, copy)?
                }
            }
        }
        Ok(StepReport {
            grad_norm,
            clip_scale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    /// Values (masters or gradients) of every parameter, these.
    fn whole(xs: &[f32]) -> PackedParams<Cpu> {
        let mut g = PackedParams::new(&Cpu, &[(0, xs.len())]).unwrap();
        Cpu.upload(xs, g.buf_mut().all_mut()).unwrap();
        g
    }

    #[test]
    fn clips_by_global_norm_decays_only_marked_groups_and_scales_group_lr() {
        // Gradient (3, 4): norm 5, clipped to 1 → scaled by 0.2. With m = v = 0 the first Adam step
        // moves each parameter by lr·sign(g) (m̂/√v̂ = g/|g|), plus lr·wd·p where decay applies;
        // the second group's learning rate is halved by its scale.
        let groups = [
            ParamGroup {
                offset: 0,
                len: 1,
                decay: true,
                lr_scale: 1.0,
                rule: GroupRule::AdamW,
            },
            ParamGroup {
                offset: 1,
                len: 1,
                decay: false,
                lr_scale: 0.5,
                rule: GroupRule::AdamW,
            },
        ];
        let cfg = AdamWConfig {
            eps: 0.0,
            weight_decay: 0.5,
            clip: 1.0,
            ..Default::default()
        };
        let mut opt = AdamWOptimizer::new(&Cpu, cfg, 2, &groups).unwrap();
        let (mut p, g) = (whole(&[2.0, 2.0]), whole(&[3.0, 4.0]));
        let rep = opt.step(&Cpu, 0.1, &mut p, &g, None).unwrap();
        assert!((rep.grad_norm - 5.0).abs() < 1e-12);
        assert!((rep.clip_scale - 0.2).abs() < 1e-7);
        let p = p.buf().as_slice();
        assert!(
            (p[0] - (2.0 - 0.1 * (1.0 + 0.5 * 2.0))).abs() < 1e-6,
            "{p:?}"
        );
        assert!((p[1] - (2.0 - 0.05)).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn the_norm_runs_over_the_trained_groups_alone() {
        // Groups: [0, 3) trained with decay, [3, 5) held fixed, [5, 6) and [6, 7) trained (one
        // norm window, two slots: their decay differs). Gradient (1, 2, 2 | 100, 100 | 4, 0): the
        // trained norm is √(1 + 4 + 4 + 16) = 5; the held tensors' 100s (never formed by a
        // backward that skips them) must not count.
        let group = |offset, len, decay, lr_scale| ParamGroup {
            offset,
            len,
            decay,
            lr_scale,
            rule: GroupRule::AdamW,
        };
        let groups = [
            group(0, 3, true, 1.0),
            group(3, 2, true, 0.0),
            group(5, 1, true, 1.0),
            group(6, 1, false, 1.0),
        ];
        let mut opt = AdamWOptimizer::new(&Cpu, AdamWConfig::default(), 7, &groups).unwrap();
        assert_eq!(opt.norm_windows, vec![(0, 3), (5, 2)]);
        let mut p = whole(&[0.0; 7]);
        let g = whole(&[1.0, 2.0, 2.0, 100.0, 100.0, 4.0, 0.0]);
        let rep = opt.step(&Cpu, 0.1, &mut p, &g, None).unwrap();
        assert_eq!(rep.grad_norm, 5.0);
        assert_eq!(&p.buf().as_slice()[3..5], &[0.0, 0.0]);
    }

    #[test]
    fn a_heavy_ball_group_keeps_its_velocity_in_m_and_a_zero_scale_group_is_frozen() {
        // Gradient (0, 3, 4): norm 5 under clip 10, unscaled. Group 0 (lr scale 0) stays put;
        // group 1 (AdamW) moves by lr·sign(g) = 0.1; group 2 (heavy ball, h = lr·2 = 0.2,
        // γ = 0.5, no decay): z = −0.2·4 = −0.8, p = 1 + 0.2·(−0.8) = 0.84.
        let group = |offset, lr_scale, rule| ParamGroup {
            offset,
            len: 1,
            decay: false,
            lr_scale,
            rule,
        };
        let groups = [
            group(0, 0.0, GroupRule::AdamW),
            group(1, 1.0, GroupRule::AdamW),
            group(2, 2.0, GroupRule::HeavyBall { friction: 0.5 }),
        ];
        let cfg = AdamWConfig {
            eps: 0.0,
            clip: 10.0,
            ..Default::default()
        };
        let mut opt = AdamWOptimizer::new(&Cpu, cfg, 3, &groups).unwrap();
        let (mut p, g) = (whole(&[1.0, 1.0, 1.0]), whole(&[0.0, 3.0, 4.0]));
        opt.step(&Cpu, 0.1, &mut p, &g, None).unwrap();
        let p = p.buf().as_slice();
        assert_eq!(p[0], 1.0);
        assert!((p[1] - 0.9).abs() < 1e-6, "{p:?}");
        assert!((p[2] - 0.84).abs() < 1e-6, "{p:?}");
        let [m, v] = opt.moments(2, 1).unwrap().map(|w| Cpu.download(w).unwrap());
        assert!((m[0] + 0.8).abs() < 1e-6 && v[0] == 0.0, "{m:?} {v:?}");
        // The frozen group keeps no moments: two values each, for groups 1 and 2.
        assert!(opt.moments(0, 1).is_err());
        assert_eq!(opt.state().map(|w| w.len), [2, 2]);
    }

    #[test]
    fn state_round_trips_and_a_checkpoint_in_the_parameters_layout_is_read() {
        let group = |offset, len, lr_scale| ParamGroup {
            offset,
            len,
            decay: false,
            lr_scale,
            rule: GroupRule::AdamW,
        };
        // Parameters 0..2 frozen, 2..5 trained, 5..6 frozen, 6..8 trained.
        let groups = [
            group(0, 2, 0.0),
            group(2, 3, 1.0),
            group(5, 1, 0.0),
            group(6, 2, 1.0),
        ];
        let new = || AdamWOptimizer::new(&Cpu, AdamWConfig::default(), 8, &groups).unwrap();
        // Moments served as a checkpoint's file serves them, each into the window it is given.
        let load = |opt: &mut AdamWOptimizer<Cpu>, m: &[f32], v: &[f32]| {
            assert_eq!(m.len(), v.len());
            opt.load_state(&Cpu, m.len(), &mut |i, dst| {
                dst.copy_from_slice([m, v][i]);
                Ok(())
            })
        };
        let mut opt = new();
        let m: Vec<f32> = (1..=5).map(|x| x as f32).collect();
        let v: Vec<f32> = (11..=15).map(|x| x as f32).collect();
        load(&mut opt, &m, &v).unwrap();
        let got = opt.moments(6, 2).unwrap().map(|w| Cpu.download(w).unwrap());
        assert_eq!(got, [vec![4.0, 5.0], vec![14.0, 15.0]]);
        // One value per parameter (the layout checkpoints had before): the trained windows.
        let mut old = new();
        let per_param: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let per_param_v: Vec<f32> = (0..8).map(|x| 10.0 + x as f32).collect();
        load(&mut old, &per_param, &per_param_v).unwrap();
        let got = old.state().map(|w| Cpu.download(w).unwrap());
        assert_eq!(got[0], vec![2.0, 3.0, 4.0, 6.0, 7.0]);
        assert_eq!(got[1], vec![12.0, 13.0, 14.0, 16.0, 17.0]);
        let e = load(&mut new(), &[0.0; 3], &[0.0; 3]).unwrap_err();
        assert!(e.to_string().contains("holds 3 values"), "{e}");
    }

    #[test]
    fn groups_must_tile_the_buffer_and_nan_gradients_stop_training() {
        let gap = [
            ParamGroup {
                offset: 0,
                len: 1,
                decay: true,
                lr_scale: 1.0,
                rule: GroupRule::AdamW,
            },
            ParamGroup {
                offset: 2,
                len: 1,
                decay: true,
                lr_scale: 1.0,
                rule: GroupRule::AdamW,
            },
        ];
        assert!(AdamWOptimizer::new(&Cpu, AdamWConfig::default(), 3, &gap).is_err());
        let short = [ParamGroup {
            offset: 0,
            len: 2,
            decay: true,
            lr_scale: 1.0,
            rule: GroupRule::AdamW,
        }];
        assert!(AdamWOptimizer::new(&Cpu, AdamWConfig::default(), 3, &short).is_err());
        let mut opt = AdamWOptimizer::new(&Cpu, AdamWConfig::default(), 2, &short[..]).unwrap();
        let (mut p, g) = (whole(&[1.0, 1.0]), whole(&[f32::NAN, 1.0]));
        let e = opt.step(&Cpu, 0.1, &mut p, &g, None).unwrap_err();
        assert!(e.to_string().contains("diverged"), "{e}");
        assert_eq!(
            p.buf().as_slice(),
            &[1.0, 1.0],
            "a diverged step must leave the weights untouched"
        );
        // Gradients that lack a trained parameter's: an error before anything moves.
        let mut partial = PackedParams::new(&Cpu, &[(1, 1)]).unwrap();
        Cpu.upload(&[1.0], partial.buf_mut().all_mut()).unwrap();
        let e = opt.step(&Cpu, 0.1, &mut p, &partial, None).unwrap_err();
        assert!(
            e.to_string().contains("no gradient or master memory"),
            "{e}"
        );
        assert_eq!(p.buf().as_slice(), &[1.0, 1.0]);
        // Masters that lack a trained parameter's (beside a compute copy, a frozen tensor has
        // none): the same error, and nothing moves.
        let mut masters = PackedParams::new(&Cpu, &[(1, 1)]).unwrap();
        Cpu.upload(&[1.0], masters.buf_mut().all_mut()).unwrap();
        let e = (opt.step(&Cpu, 0.1, &mut masters, &whole(&[1.0, 1.0]), None)).unwrap_err();
        assert!(
            e.to_string().contains("no gradient or master memory"),
            "{e}"
        );
        assert_eq!(masters.buf().as_slice(), &[1.0]);
    }
}
