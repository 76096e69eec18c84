//! Host ↔ device copy time of a bf16 window through the CUDA backend (its host conversion and
//! staging, cuda/transfer.rs): `cargo run --release --example transfer_speed -- [values] [rounds]`
//! (defaults: 51511296, GPT-2 medium's token embedding, 5 rounds). Needs a GPU, or the emulated one
//! (`LD_LIBRARY_PATH=target/gpu-emu`, README). Prints each round's upload and download seconds and
//! a checksum of what came back.

use anyhow::{Context, Result};
use lowrank::backend::cuda::Cuda;
use lowrank::backend::{Backend, Buffer, DType};
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let n: usize = arg(0, "51511296")
        .parse()
        .context("values must be a number")?;
    let rounds: usize = arg(1, "5").parse().context("rounds must be a number")?;
    let cuda = Cuda::new()?;
    let src: Vec<f32> = (0..n).map(|i| (i as f32 * 0.618).sin()).collect();
    let mut buf = cuda.alloc(DType::BF16, n)?;
    let mut back = vec![0.0f32; n];
    println!("{}: {n} bf16 values", cuda.name());
    for round in 0..rounds {
        let t = Instant::now();
        cuda.upload(&src, buf.all_mut())?;
        cuda.synchronize()?;
        let up = t.elapsed().as_secs_f64();
        let t = Instant::now();
        cuda.download_into(buf.all(), &mut back)?;
        let down = t.elapsed().as_secs_f64();
        let sum: f64 = back.iter().map(|&x| x as f64).sum();
        println!("round {round}: upload {up:.3} s, download {down:.3} s (checksum {sum:.6})");
    }
    Ok(())
}
