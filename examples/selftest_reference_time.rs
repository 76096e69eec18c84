//! The host's share of a GPU run's selftest. Each case's inputs are drawn on the host for the
//! device's side and the reference's, and the reference (the CPU in bf16) computes on the host:
//! this time is spent on the GPU machine whatever its GPU does. `cargo run --release --example
//! selftest_reference_time -- [filter]` runs the cases whose op contains `filter` (all by default)
//! and prints the slowest and the totals of (a) the reference side alone and (b) the whole
//! comparison, `selftest::check`, with the CPU in bf16 on both sides (so the device's compute done
//! on the host as well). First it times one draw of GPT-2 medium's MLP activations at 16384 rows
//! (the bench's largest operand) one normal after another and by `Rng::normal_vec`, side by side,
//! and checks that the values agree.

use anyhow::{ensure, Result};
use lowrank::backend::cpu::CpuBf16;
use lowrank::selftest::{all_cases, check};
use lowrank::util::rng::Rng;
use std::time::Instant;

fn main() -> Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let n = 16384 * 4096;
    let t = Instant::now();
    let mut rng = Rng::new(1);
    let one_by_one: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    let sequential = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let drawn = Rng::new(1).normal_vec(n, 1.0);
    let parallel = t.elapsed().as_secs_f64();
    ensure!(drawn == one_by_one, "normal_vec's values differ");
    println!(
        "{n} normals: one after another {sequential:.2} s, normal_vec {parallel:.2} s ({} threads)",
        rayon::current_num_threads()
    );
    drop((one_by_one, drawn));

    let (mut alone, mut compared) = (0.0, 0.0);
    let mut rows = Vec::new();
    for case in all_cases().into_iter().filter(|c| c.op().contains(&filter)) {
        let t = Instant::now();
        case.run(&CpuBf16, 1)?;
        let s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let outcome = check(&case, &CpuBf16, &CpuBf16, 1);
        let c = t.elapsed().as_secs_f64();
        ensure!(
            outcome.rel_err == 0.0,
            "{} {}: {outcome:?}",
            case.op(),
            case.shape()
        );
        (alone, compared) = (alone + s, compared + c);
        rows.push((s, c, case.op(), case.shape()));
    }
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("reference alone, compared (s):");
    for (s, c, op, shape) in rows.iter().take(10) {
        println!("{s:8.3} {c:8.3}  {op} {shape}");
    }
    println!(
        "{} cases: the reference side {alone:.1} s, the comparison {compared:.1} s",
        rows.len()
    );
    Ok(())
}
