//! The host's share of a GPU run's selftest: each case's inputs are drawn on the host for each
//! side, and the reference side (the CPU in bf16) computes on the host too, so this time is spent
//! on the GPU machine whatever its GPU does. `cargo run --release --example
//! selftest_reference_time -- [filter]` runs the cases whose op contains `filter` (all by default)
//! on the CPU reference, prints the slowest and the total. First it times one draw of GPT-2
//! medium's MLP activations at 16384 rows (the bench's largest operand) one normal after another
//! and by `Rng::normal_vec`, side by side, and checks that the values agree.

use anyhow::{ensure, Result};
use lowrank::backend::cpu::CpuBf16;
use lowrank::selftest::all_cases;
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

    let mut total = 0.0;
    let mut rows = Vec::new();
    for case in all_cases().into_iter().filter(|c| c.op().contains(&filter)) {
        let t = Instant::now();
        case.run(&CpuBf16, 1)?;
        let s = t.elapsed().as_secs_f64();
        total += s;
        rows.push((s, case.op(), case.shape()));
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (s, op, shape) in rows.iter().take(10) {
        println!("{s:8.3} s  {op} {shape}");
    }
    println!("{} cases, {total:.1} s on the reference side", rows.len());
    Ok(())
}
