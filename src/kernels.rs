//! The kernel images build.rs embedded, with ptxas's resource report per kernel and arch.

/// One kernels/*.cu file compiled to a fatbin (sm_80 and sm_90a cubins, compute_80 PTX).
#[derive(Debug)]
pub struct KernelFile {
    pub name: &'static str,
    pub fatbin: &'static [u8],
    pub resources: &'static [KernelResource],
}

/// ptxas's `-v` report for one entry function on one arch.
#[derive(Debug, serde::Serialize)]
pub struct KernelResource {
    pub kernel: &'static str,
    pub arch: &'static str,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The embedded image of kernels/`name`.cu, if the binary was built with kernels.
pub fn file(name: &str) -> Option<&'static KernelFile> {
    KERNEL_FILES.iter().find(|f| f.name == name)
}

/// Kernels whose sm_90a build spills registers and are not excused in kernels/spill-allow.txt
/// (one `kernel  reason` per line; `#` starts a comment).
pub fn unexcused_spills(allow_list: &str) -> Vec<&'static KernelResource> {
    let allowed: Vec<&str> = allow_list
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    KERNEL_FILES
        .iter()
        .flat_map(|f| f.resources.iter())
        .filter(|r| r.arch == "sm_90a" && (r.spill_stores > 0 || r.spill_loads > 0))
        .filter(|r| !allowed.contains(&r.kernel))
        .collect()
}

pub const SPILL_ALLOW_LIST: &str = include_str!("../kernels/spill-allow.txt");

#[cfg(test)]
mod tests {
    /// lowrank_tma.cu's warpgroups trade registers (setmaxnreg) within the block's pool of 384 ×
    /// the count it was launched with: the consumers' 256 × (232 − R) come only from the
    /// producer's 128 × (R − 40), which pays for them at R = 168, the most `__launch_bounds__(384,
    /// 1)` allows. Had ptxas given these kernels fewer, they would hang on the GPU (the emulator
    /// does not model the pool). A CPU-only build has no report to check; CI builds the kernels.
    #[test]
    fn tma_kernels_launch_with_the_registers_their_hand_off_needs() {
        let Some(file) = super::file("lowrank_tma") else {
            return;
        };
        let hopper: Vec<_> = file
            .resources
            .iter()
            .filter(|r| r.arch == "sm_90a")
            .collect();
        assert_eq!(
            hopper.len(),
            20,
            "y and dx, two tiles, the ping-pong schedule and the two tiles in clusters, two output dtypes"
        );
        for r in hopper {
            let regs = i64::from(r.registers);
            assert!(
                128 * (regs - 40) >= 256 * (232 - regs),
                "{} launches with {regs} registers: its consumers' setmaxnreg.inc 232 would wait \
                 forever for what the producer's dec 40 gives back",
                r.kernel
            );
        }
    }
}
