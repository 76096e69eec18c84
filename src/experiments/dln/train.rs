//! Training one network to tolerance with timing and a logged curve.

use super::network::Dln;
use super::problem::Problem;
use anyhow::{Context, Result};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Iteration budget; training stops earlier once the loss is below `tol`.
    pub iters: u64,
    pub tol: f64,
    /// Record the curve every this many iterations (and at the last one).
    pub log_every: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LogPoint {
    pub network: &'static str,
    pub iter: u64,
    pub seconds: f64,
    pub loss: f64,
    pub recovery_error: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub network: &'static str,
    pub width: usize,
    pub parameters: usize,
    pub threads: usize,
    /// First iteration whose loss is below the tolerance (the number of steps taken to get there).
    pub iters_to_tol: Option<u64>,
    pub seconds_to_tol: Option<f64>,
    pub iters_run: u64,
    pub seconds_run: f64,
    /// CPU time of all the process's threads over the run: on a shared machine, wall-clock time
    /// minus this (per thread) is time the run waited for a core.
    pub cpu_seconds_run: Option<f64>,
    pub iters_per_second: f64,
    pub final_loss: f64,
    pub final_recovery_error: f64,
    pub diverged: bool,
}

/// Runs gradient descent until the loss is below the tolerance, the budget is spent or the loss is
/// no longer finite. Time counts everything inside the loop, logging included.
pub fn train(
    name: &'static str,
    net: &mut Dln,
    threads: usize,
    problem: &mut Problem,
    opts: &TrainOptions,
) -> Result<(RunSummary, Vec<LogPoint>)> {
    net.set_threads(threads);
    if threads < 2 {
        return Ok(train_loop(name, net, threads, problem, opts));
    }
    // Run the loop on a worker of a dedicated pool: a join from inside the pool hands its second
    // half to the other worker directly, where a join from outside pays a cold injection (tens of
    // µs, comparable to one 100×100 product).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("starting the training threads")?;
    Ok(pool.install(|| train_loop(name, net, threads, problem, opts)))
}

fn train_loop(
    name: &'static str,
    net: &mut Dln,
    threads: usize,
    problem: &mut Problem,
    opts: &TrainOptions,
) -> (RunSummary, Vec<LogPoint>) {
    let mut curve = Vec::new();
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let (mut iter, mut loss) = (0, f64::NAN);
    while iter < opts.iters {
        loss = net.step(problem);
        let done = loss < opts.tol || !loss.is_finite() || iter + 1 == opts.iters;
        if iter % opts.log_every == 0 || done {
            let recovery_error = problem.recovery_error(net.end_to_end());
            curve.push(LogPoint {
                network: name,
                iter,
                seconds: start.elapsed().as_secs_f64(),
                loss,
                recovery_error,
            });
        }
        if done {
            break;
        }
        iter += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds_run = process_cpu_seconds()
        .zip(cpu_start)
        .map(|(end, begin)| end - begin);
    let last = curve.last().cloned();
    let reached = loss < opts.tol;
    let summary = RunSummary {
        network: name,
        width: net.width(),
        parameters: net.parameter_count(),
        threads,
        iters_to_tol: reached.then_some(iter),
        seconds_to_tol: reached.then(|| last.as_ref().map_or(seconds, |p| p.seconds)),
        iters_run: iter + 1,
        seconds_run: seconds,
        cpu_seconds_run,
        iters_per_second: (iter + 1) as f64 / seconds,
        final_loss: loss,
        final_recovery_error: last.map_or(f64::NAN, |p| p.recovery_error),
        diverged: !loss.is_finite(),
    };
    (summary, curve)
}

/// CPU time used so far by the threads of this process that are alive (Linux
/// /proc/self/task/*/schedstat, nanoseconds on CPU); None where that is unavailable. Call it while
/// the training threads exist.
fn process_cpu_seconds() -> Option<f64> {
    let mut total_ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total_ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total_ns as f64 * 1e-9)
}
