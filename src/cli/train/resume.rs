//! `train --resume DIR`: the run goes on with the settings it was started with, so the command the
//! interruption prints (`--resume DIR`) is the whole command. A flag given beside `--resume` sets
//! its setting for the rest of the run: the schedule's (`--steps`, `--lr`, ...) may change, those
//! that define the model and its data must equal the run's (`TrainConfig::resume_mismatch`).

use crate::lowrank::LowRankConfig;
use crate::train::TrainConfig;
use clap::parser::ValueSource;
use clap::ArgMatches;

/// Whether the argument `id` (its field name in `Args`) was given on the command line, rather
/// than left to its default.
pub fn on_command_line(m: &ArgMatches) -> impl Fn(&str) -> bool + '_ {
    move |id| m.value_source(id) == Some(ValueSource::CommandLine)
}

/// A resumed run's settings: `saved`'s, except those whose flags `given` (by `on_command_line`)
/// says this command line sets, which `flags` holds. Every field is listed, so a new setting does
/// not compile until it says which flags set it.
pub fn resumed_config(
    flags: &TrainConfig,
    saved: &TrainConfig,
    given: impl Fn(&str) -> bool,
) -> TrainConfig {
    macro_rules! pick {
        ($($id:literal)|+ => $($field:ident).+) => {
            if $(given($id))||+ {
                flags.$($field).+.clone()
            } else {
                saved.$($field).+.clone()
            }
        };
    }
    TrainConfig {
        model: pick!("model" => model),
        data: pick!("data" => data),
        val_data: pick!("val_data" => val_data),
        batch: pick!("batch" => batch),
        seq: pick!("seq" => seq),
        accum: pick!("accum" => accum),
        lr: pick!("lr" => lr),
        final_lr_frac: pick!("final_lr_frac" => final_lr_frac),
        warmup: pick!("warmup" => warmup),
        steps: pick!("steps" => steps),
        decay: pick!("decay" => decay),
        weight_decay: pick!("weight_decay" => weight_decay),
        clip: pick!("clip" => clip),
        eval_every: pick!("eval_every" => eval_every),
        eval_batches: pick!("eval_batches" => eval_batches),
        checkpoint_every: pick!("checkpoint_every" => checkpoint_every),
        seed: pick!("seed" => seed),
        lowrank: LowRankConfig {
            mode: pick!("mode" | "mlp_dln" => lowrank.mode),
            layers: pick!("lowrank_layers" | "mlp_dln" => lowrank.layers),
            rank_init: pick!("rank_init" => lowrank.rank_init),
            rank_buffer: pick!("rank_buffer" => lowrank.rank_buffer),
            rank_alpha: pick!("rank_alpha" => lowrank.rank_alpha),
            rank_warmup: pick!("rank_warmup" => lowrank.rank_warmup),
            rank_gap: pick!("rank_gap" => lowrank.rank_gap),
            stage1_steps: pick!("stage1_steps" => lowrank.stage1_steps),
            moment_transport: pick!("moment_transport" => lowrank.moment_transport),
            init: pick!("lowrank_init" => lowrank.init),
            lora_base: pick!("lora_base" => lowrank.lora_base),
            lora_alpha: pick!("lora_alpha" => lowrank.lora_alpha),
            lora_embeddings: pick!("lora_embeddings" => lowrank.lora_embeddings),
            rank_log_every: pick!("rank_log_every" => lowrank.rank_log_every),
            factor_lr_scale: pick!("factor_lr_scale" => lowrank.factor_lr_scale),
            dln_eps: pick!("dln_eps" => lowrank.dln_eps),
            dlra_window: pick!("dlra_window" => lowrank.dlra_window),
            dlra_tau: pick!("dlra_tau" => lowrank.dlra_tau),
            dlra_fresh_moment: pick!("dlra_fresh_moment" => lowrank.dlra_fresh_moment),
            dlra_rule: pick!("dlra_rule" => lowrank.dlra_rule),
            dlra_friction: pick!("dlra_friction" => lowrank.dlra_friction),
        },
        init_from: pick!("init_from" => init_from),
        recompute_gelu: pick!("recompute_gelu" => recompute_gelu),
        device: pick!("device" => device),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{config, Args};
    use super::{on_command_line, resumed_config};
    use crate::train::TrainConfig;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Train {
        #[command(flatten)]
        args: Args,
    }

    /// The settings `lowrank train ARGS` asks for, and which flags it gives.
    fn parse(args: &[&str]) -> (TrainConfig, clap::ArgMatches) {
        let m = Train::command()
            .try_get_matches_from([&["train"], args].concat())
            .unwrap();
        let cfg = config(&Train::from_arg_matches(&m).unwrap().args);
        (cfg, m)
    }

    /// Every setting, each flag away from its default.
    #[rustfmt::skip]
    const EVERY_FLAG: &[&str] = &[
        "--model", "gpt2", "--data", "d_train_*.bin", "--val-data", "d_val_*.bin", "--batch", "3",
        "--seq", "32", "--accum", "2", "--lr", "1e-3", "--final-lr-frac", "0.2", "--warmup", "7",
        "--steps", "40", "--decay", "linear", "--weight-decay", "0.05", "--clip", "0.5",
        "--eval-every", "9", "--eval-batches", "3", "--checkpoint-every", "11", "--seed", "5",
        "--lowrank", "lora", "--lowrank-layers", "all", "--rank-init", "6", "--rank-buffer", "20",
        "--rank-alpha", "0.8", "--rank-warmup", "4", "--rank-gap", "2", "--stage1-steps", "12",
        "--moment-transport", "slice", "--lowrank-init", "spectral", "--lora-base", "/base",
        "--lora-alpha", "3", "--lora-embeddings", "--rank-log-every", "6", "--factor-lr-scale", "2",
        "--dln-eps", "0.5", "--dlra-window", "3", "--dlra-tau", "0.1",
        "--dlra-fresh-moment", "mean", "--dlra-rule", "heavy-ball", "--dlra-friction", "0.3",
        "--init-from", "/ckpt", "--recompute-gelu", "--device", "cpu-bf16",
    ];

    /// A configuration's settings by name (the low-rank ones as `lowrank.NAME`).
    fn json(cfg: &TrainConfig) -> std::collections::BTreeMap<String, serde_json::Value> {
        let serde_json::Value::Object(top) = serde_json::to_value(cfg).unwrap() else {
            unreachable!()
        };
        let mut flat = std::collections::BTreeMap::new();
        for (k, v) in top {
            match v {
                serde_json::Value::Object(inner) if k == "lowrank" => {
                    flat.extend(inner.into_iter().map(|(k, v)| (format!("lowrank.{k}"), v)))
                }
                v => drop(flat.insert(k, v)),
            }
        }
        flat
    }

    #[test]
    fn a_resumed_run_keeps_its_settings_unless_a_flag_sets_them() {
        let (defaults, _) = parse(&[]);
        let (every, m) = parse(EVERY_FLAG);
        // Every field differs from its default, so each flag's id is checked below.
        let (d, e) = (json(&defaults), json(&every));
        let same: Vec<_> = d.iter().filter(|(k, v)| e[*k] == **v).collect();
        assert!(
            same.is_empty(),
            "EVERY_FLAG leaves these at their defaults: {same:?}"
        );
        let unchanged = resumed_config(&defaults, &every, |_| false);
        assert_eq!(unchanged, every, "no flag given: the saved run's settings");
        // Every flag given: each of its settings, none of the saved run's (an id that names no
        // argument reads as not given, leaving that setting at the saved default).
        assert_eq!(
            resumed_config(&every, &defaults, on_command_line(&m)),
            every
        );
        assert_ne!(every.lowrank, defaults.lowrank);
        // One flag: that setting alone.
        let (steps, m) = parse(&["--steps", "500"]);
        let resumed = resumed_config(&steps, &every, on_command_line(&m));
        assert_eq!(
            resumed,
            TrainConfig {
                steps: 500,
                ..every.clone()
            }
        );
        // --mlp-dln sets both the mode and the layers.
        let (dln, m) = parse(&["--mlp-dln"]);
        let resumed = resumed_config(&dln, &every, on_command_line(&m));
        assert_eq!(
            (resumed.lowrank.mode, resumed.lowrank.layers),
            (dln.lowrank.mode, dln.lowrank.layers)
        );
        assert_eq!(resumed.lowrank.rank_init, every.lowrank.rank_init);
    }
}
