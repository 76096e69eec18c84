//! `lowrank train` runs that stop before their last step: Ctrl-C, a diverging loss, a full disk.
//! Each says why, keeps a loadable checkpoint, and resumes from it.

mod common;

use common::{records, text, tmp, train, trajectory, SMALL};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[test]
fn ctrl_c_finishes_the_step_writes_a_checkpoint_and_exits_cleanly() {
    let dir = tmp("sigint");
    let mut args = vec!["train", "--out", dir.to_str().unwrap(), "--steps", "100000"];
    args.extend_from_slice(&SMALL);
    let child = Command::new(env!("CARGO_BIN_EXE_lowrank"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dir.join("metrics.jsonl").exists() || records(&dir).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "training made no progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted at step"));
    let step = records(&dir).last().unwrap()["step"].as_u64().unwrap();
    let latest = std::fs::read_to_string(dir.join("latest")).unwrap();
    assert_eq!(latest, format!("checkpoint-{step:07}"));
    // It resumes from there.
    let next = (step + 1).to_string();
    let o = train(
        &dir,
        &[
            "--steps",
            "100000",
            "--stop-at",
            &next,
            "--resume",
            dir.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        records(&dir).last().unwrap()["step"].as_u64(),
        Some(step + 1)
    );
}

/// `lowrank train` at a learning rate that overflows the weights after the first step, with a
/// checkpoint every `checkpoint_every` steps; the error's text.
fn diverge(dir: &std::path::Path, checkpoint_every: &str) -> String {
    let o = train(
        dir,
        &[
            "--steps",
            "50",
            "--lr",
            "1e30",
            "--clip",
            "0",
            "--checkpoint-every",
            checkpoint_every,
            "--warmup",
            "0",
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let err = text(&o);
    assert!(err.contains("training diverged"), "{err}");
    err
}

/// The step a divergence error names ("... at step N: training diverged").
fn diverged_at(err: &str) -> u64 {
    let (before, _) = err.split_once(": training diverged").expect("a divergence");
    let n = before.rsplit("at step ").next().unwrap();
    n.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no step in {err}"))
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_its_checkpoint() {
    let dir = tmp("nan");
    let err = diverge(&dir, "1");
    // Step 1 starts from the init, so its loss is finite and its checkpoint is written.
    let step = diverged_at(&err);
    assert!(step >= 2, "{err}");
    let last = format!("checkpoint-{:07}", step - 1);
    assert_eq!(std::fs::read_to_string(dir.join("latest")).unwrap(), last);
    assert!(dir.join(&last).join("model.safetensors").exists());
    // The error names that checkpoint and how to continue from it.
    assert!(err.contains(&last), "{err}");
    let resume = format!("--resume {}", dir.display());
    assert!(err.contains(&resume) && err.contains("lower --lr"), "{err}");
}

#[test]
fn a_run_diverging_before_its_first_checkpoint_says_there_is_none() {
    let dir = tmp("nan-early");
    let err = diverge(&dir, "1000");
    assert!(!dir.join("latest").exists());
    assert!(err.contains("before any checkpoint was written"), "{err}");
    assert!(!err.contains("--resume"), "{err}");
}

/// `lowrank train ARGS` where writing a file past 1 MiB fails as on a full disk: RLIMIT_FSIZE, with
/// SIGXFSZ ignored (an ignored signal stays ignored across exec) so that the write returns an
/// error instead of the signal killing the process. A checkpoint of the tiny model is ~30 MB;
/// metrics.jsonl and config.json stay far below the limit.
#[cfg(unix)]
fn train_on_a_full_disk(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(r#"trap "" XFSZ; ulimit -f 1024; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_lowrank"))
        .arg("train")
        .args(SMALL)
        .args(args)
        .output()
        .unwrap()
}

#[cfg(unix)]
#[test]
fn a_full_disk_at_a_checkpoint_stops_the_run_and_loses_nothing_written_before() {
    let (straight, run) = (tmp("disk-straight"), tmp("disk-full"));
    let o = train(&straight, &["--steps", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = train(&run, &["--steps", "4", "--stop-at", "2"]);
    assert!(o.status.success(), "{}", text(&o));

    // The resumed run reaches step 4 and cannot write its checkpoint.
    let dir = run.to_str().unwrap();
    let o = train_on_a_full_disk(&["--out", dir, "--steps", "4", "--resume", dir]);
    let said = text(&o);
    assert!(!o.status.success(), "{said}");
    for needle in [
        "the checkpoint of step 4 could not be written, so the run stops",
        "checkpoint-0000002, is intact: free some space and continue from it",
        &format!("--resume {dir}"),
        "File too large",
    ] {
        assert!(said.contains(needle), "no {needle:?} in:\n{said}");
    }
    assert_eq!(
        std::fs::read_to_string(run.join("latest")).unwrap(),
        "checkpoint-0000002"
    );
    let mut left: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "checkpoint-0000002",
            "config.json",
            "latest",
            "metrics.jsonl"
        ],
        "the failed checkpoint left files behind"
    );

    // What a killed process leaves of a checkpoint at a step the run never saves again: a
    // directory without its state.json. A directory of the user's own stays.
    let killed = run.join("checkpoint-0000009");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join(".model.safetensors.tmp-1"), [0u8; 4096]).unwrap();
    std::fs::create_dir_all(run.join("checkpoint-notes")).unwrap();

    // With space again, the resume ends where the uninterrupted run ended, and the first
    // checkpoint it writes removes the killed write's remains.
    let o = train(&run, &["--steps", "4", "--resume", dir]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(trajectory(&records(&straight)), trajectory(&records(&run)));
    assert!(!killed.exists(), "a killed write's directory stayed");
    assert!(run.join("checkpoint-notes").is_dir());
    assert!(run.join("checkpoint-0000004/state.json").is_file());
}

/// Periodic checkpoints are written behind the next steps: one that fails (a full disk) stops the
/// run at a later step, naming that checkpoint and the intact one before it, and the resumed run
/// still ends where the uninterrupted one did.
#[cfg(unix)]
#[test]
fn a_checkpoint_failing_behind_the_steps_stops_the_run_and_names_the_last_intact_one() {
    let (straight, run) = (tmp("disk-behind-straight"), tmp("disk-behind"));
    let every = ["--steps", "7", "--checkpoint-every", "2"];
    let o = train(&straight, &every);
    assert!(o.status.success(), "{}", text(&o));
    let o = train(&run, &[&every[..], &["--stop-at", "2"]].concat());
    assert!(o.status.success(), "{}", text(&o));

    // Resumed on a full disk: step 4's checkpoint fails while steps 5.. run.
    let dir = run.to_str().unwrap();
    let o = train_on_a_full_disk(&[&every[..], &["--out", dir, "--resume", dir]].concat());
    let said = text(&o);
    assert!(!o.status.success(), "{said}");
    for needle in [
        "the checkpoint of step 4 could not be written, so the run stops",
        "checkpoint-0000002, is intact",
        "File too large",
    ] {
        assert!(said.contains(needle), "no {needle:?} in:\n{said}");
    }
    assert_eq!(
        std::fs::read_to_string(run.join("latest")).unwrap(),
        "checkpoint-0000002"
    );
    let checkpoints: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(checkpoints, ["checkpoint-0000002"], "{said}");

    let o = train(&run, &[&every[..], &["--resume", dir]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(trajectory(&records(&straight)), trajectory(&records(&run)));
}
