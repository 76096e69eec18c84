//! Which mainloop and block tile run one segmented GEMM (`pick_tile`), the kernel that implements
//! it, and the run-time switches that tests and the first GPU runs use to reach each of them.

use super::{Cuda, LowRankImpl};
use crate::backend::DType;
use anyhow::{bail, Result};

/// A mainloop's block tile: `WideTile` and `NarrowTile` in kernels/lowrank_linear.cu (dynamic shared
/// memory of 4 stages of BM × 40 + max(32 × (BN + 8), BN × 40) bf16), `wg` in
/// kernels/lowrank_wgmma.cu (5 stages of 128 × 64 + 64 × 128 bf16, plus 1 KB to align the base)
/// and `TmaTile<BN, PP, CL>` in kernels/lowrank_tma.cu (stages of 128 × 64 + 64 × BN bf16, 1 KB to
/// align, a full and an empty mbarrier per stage). `cluster`: blocks per thread-block cluster (1:
/// none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Tile {
    pub(super) file: &'static str,
    pub(super) name: &'static str,
    pub(super) bm: usize,
    pub(super) bn: usize,
    pub(super) smem_bytes: u32,
    pub(super) threads: u32,
    pub(super) cluster: u32,
}
pub(super) const WIDE: Tile = Tile {
    file: "lowrank_linear",
    name: "wide",
    bm: 128,
    bn: 128,
    smem_bytes: 4 * (128 * 40 + 128 * 40) * 2,
    threads: 256,
    cluster: 1,
};
pub(super) const NARROW: Tile = Tile {
    file: "lowrank_linear",
    name: "narrow",
    bm: 128,
    bn: 64,
    smem_bytes: 4 * (128 * 40 + 64 * 40) * 2,
    threads: 256,
    cluster: 1,
};
pub(super) const WGMMA: Tile = Tile {
    file: "lowrank_wgmma",
    name: "wgmma",
    bm: 128,
    bn: 128,
    smem_bytes: 5 * (128 * 64 + 64 * 128) * 2 + 1024,
    threads: 256,
    cluster: 1,
};
/// A producer warpgroup and two consumers; 4 stages of the 128 × 256 tile (193 KB: a fifth does
/// not fit Hopper's 227 KB), 6 of the 128 × 128 one (193 KB; a seventh would fit, and is unlikely
/// to pay with 64-deep stages).
pub(super) const TMA256: Tile = Tile {
    file: "lowrank_tma",
    name: "tma256",
    bm: 128,
    bn: 256,
    smem_bytes: 4 * (128 * 64 + 64 * 256) * 2 + 1024 + 2 * 4 * 8,
    threads: 384,
    cluster: 1,
};
pub(super) const TMA128: Tile = Tile {
    file: "lowrank_tma",
    name: "tma128",
    bm: 128,
    bn: 128,
    smem_bytes: 6 * (128 * 64 + 64 * 128) * 2 + 1024 + 2 * 6 * 8,
    threads: 384,
    cluster: 1,
};
/// The TMA kernel's ping-pong schedule: the 128 × 128 tile's stages, and two mbarriers for the
/// consumers' turns.
pub(super) const PINGPONG: Tile = Tile {
    file: "lowrank_tma",
    name: "pingpong",
    bm: 128,
    bn: 128,
    smem_bytes: TMA128.smem_bytes + 2 * 8,
    threads: 384,
    cluster: 1,
};
/// The TMA kernel's tiles in clusters of two blocks on vertically adjacent tiles, which share
/// their B tile: each block loads its A and half of B, multicast into both (the same stages).
pub(super) const MC256: Tile = Tile {
    name: "mc256",
    cluster: 2,
    ..TMA256
};
pub(super) const MC128: Tile = Tile {
    name: "mc128",
    cluster: 2,
    ..TMA128
};
/// The products of one call: y = [x | t]·[W0 ; Vt] and dx = [dy | s]·[W0ᵀ ; Ut] have an optional
/// W0 segment in slot 0 and the low-rank segment in slot 1; the projections have one NT segment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Role {
    Y,
    Dx,
    Project,
}

pub(super) fn kernel_name(role: Role, tile: Tile, out: DType) -> Result<&'static str> {
    Ok(match (role, tile.name, out) {
        (Role::Y, "wide", DType::BF16) => "lowrank_y_wide_bf16",
        (Role::Y, "wide", DType::F32) => "lowrank_y_wide_f32",
        (Role::Y, "narrow", DType::BF16) => "lowrank_y_narrow_bf16",
        (Role::Y, "narrow", DType::F32) => "lowrank_y_narrow_f32",
        (Role::Dx, "wide", DType::BF16) => "lowrank_dx_wide_bf16",
        (Role::Dx, "wide", DType::F32) => "lowrank_dx_wide_f32",
        (Role::Dx, "narrow", DType::BF16) => "lowrank_dx_narrow_bf16",
        (Role::Dx, "narrow", DType::F32) => "lowrank_dx_narrow_f32",
        (Role::Y, "wgmma", DType::BF16) => "lowrank_y_wgmma_bf16",
        (Role::Y, "wgmma", DType::F32) => "lowrank_y_wgmma_f32",
        (Role::Dx, "wgmma", DType::BF16) => "lowrank_dx_wgmma_bf16",
        (Role::Dx, "wgmma", DType::F32) => "lowrank_dx_wgmma_f32",
        (Role::Y, "tma256", DType::BF16) => "lowrank_y_tma256_bf16",
        (Role::Y, "tma256", DType::F32) => "lowrank_y_tma256_f32",
        (Role::Dx, "tma256", DType::BF16) => "lowrank_dx_tma256_bf16",
        (Role::Dx, "tma256", DType::F32) => "lowrank_dx_tma256_f32",
        (Role::Y, "tma128", DType::BF16) => "lowrank_y_tma128_bf16",
        (Role::Y, "tma128", DType::F32) => "lowrank_y_tma128_f32",
        (Role::Dx, "tma128", DType::BF16) => "lowrank_dx_tma128_bf16",
        (Role::Dx, "tma128", DType::F32) => "lowrank_dx_tma128_f32",
        (Role::Y, "pingpong", DType::BF16) => "lowrank_y_pingpong_bf16",
        (Role::Y, "pingpong", DType::F32) => "lowrank_y_pingpong_f32",
        (Role::Dx, "pingpong", DType::BF16) => "lowrank_dx_pingpong_bf16",
        (Role::Dx, "pingpong", DType::F32) => "lowrank_dx_pingpong_f32",
        (Role::Y, "mc256", DType::BF16) => "lowrank_y_mc256_bf16",
        (Role::Y, "mc256", DType::F32) => "lowrank_y_mc256_f32",
        (Role::Dx, "mc256", DType::BF16) => "lowrank_dx_mc256_bf16",
        (Role::Dx, "mc256", DType::F32) => "lowrank_dx_mc256_f32",
        (Role::Y, "mc128", DType::BF16) => "lowrank_y_mc128_bf16",
        (Role::Y, "mc128", DType::F32) => "lowrank_y_mc128_f32",
        (Role::Dx, "mc128", DType::BF16) => "lowrank_dx_mc128_bf16",
        (Role::Dx, "mc128", DType::F32) => "lowrank_dx_mc128_f32",
        (Role::Project, "narrow", DType::BF16) => "lowrank_project_narrow_bf16",
        (Role::Project, "narrow", DType::F32) => "lowrank_project_narrow_f32",
        _ => bail!("no low-rank kernel for this role, tile and {out:?} output"),
    })
}

/// The wide tile where it still gives every SM a block (on Hopper, unless `Mma` is asked for, a
/// wgmma version: `tma_tile`'s, its clustered twin for `Multicast`, the ping-pong one for
/// `Pingpong`, or the cp.async one for `Wgmma`), else the narrow one (twice the blocks); the
/// skinny projections always take the narrow tile (N = rank is small, and they are bound by reading
/// their input).
pub(super) fn pick_tile(cuda: &Cuda, role: Role, m: usize, n: usize) -> Result<Tile> {
    let gpu = Gpu {
        sms: cuda.info.sms.max(1) as usize,
        hopper: cuda.info.compute_capability.0 == 9,
        clusters: &|tile| super::clusters_that_fit(cuda, tile),
    };
    choose_tile(&gpu, cuda.lowrank_impl, forced_tma_width()?, role, m, n)
}

/// What of the GPU the tile choice reads: its SM count, whether it is a Hopper, and how many
/// clusters of a clustered tile's kernel fit on it at once (asked only for `Multicast`'s).
struct Gpu<'a> {
    sms: usize,
    hopper: bool,
    clusters: &'a dyn Fn(Tile) -> Result<usize>,
}

/// LOWRANK_TMA_TILE: `auto` (the default: `tma_tile`'s choice), `128` or `256`, the TMA kernel's
/// tile width wherever it runs, so that `selftest` and `bench` can run each tile on any shape.
pub(crate) fn forced_tma_width() -> Result<Option<usize>> {
    static WIDTH: std::sync::OnceLock<std::result::Result<Option<usize>, String>> =
        std::sync::OnceLock::new();
    WIDTH
        .get_or_init(|| match std::env::var("LOWRANK_TMA_TILE").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(None),
            Ok("128") => Ok(Some(128)),
            Ok("256") => Ok(Some(256)),
            Ok(other) => Err(format!(
                "LOWRANK_TMA_TILE={other:?}: use `auto` (the default), `128` or `256`"
            )),
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// `pick_tile` on plain facts: the GPU's, the implementation asked for, and LOWRANK_TMA_TILE's
/// width if set.
fn choose_tile(
    gpu: &Gpu,
    imp: LowRankImpl,
    forced_tma: Option<usize>,
    role: Role,
    m: usize,
    n: usize,
) -> Result<Tile> {
    let (sms, clusters) = (gpu.sms, gpu.clusters);
    let wide_blocks = m.div_ceil(WIDE.bm) * n.div_ceil(WIDE.bn);
    if role == Role::Project || wide_blocks < sms {
        return Ok(NARROW);
    }
    Ok(match (gpu.hopper, imp) {
        (true, LowRankImpl::Fused) => tma_tile([(TMA256, sms), (TMA128, sms)], m, n, forced_tma),
        (true, LowRankImpl::Pingpong) => PINGPONG,
        // The clustered grid holds as many pairs as clusters fit, which an H100's GPCs may make
        // fewer than half its SMs: its waves are counted over those.
        (true, LowRankImpl::Multicast) => tma_tile(
            [(MC256, clusters(MC256)?), (MC128, clusters(MC128)?)],
            m,
            n,
            forced_tma,
        ),
        (true, LowRankImpl::Wgmma) => WGMMA,
        _ => WIDE,
    })
}

/// Of a 128 × 256 tile and a 128 × 128 one (the TMA kernel's, or their clustered twins), each
/// with the units its persistent grid holds at once (blocks, or clusters), the wide tile unless
/// its last wave leaves enough of the grid idle that the narrow one finishes first: time ∝ waves
/// × tile width, a wave being one unit per slot (a unit: `cluster` tiles one above the other),
/// with the wide tile's width counted at 0.9 for its halved shared-memory reads per FLOP (a
/// prediction to check against `bench`'s two rows, e.g. GPT-2 small's 768-wide dx at 8192 rows:
/// 192 wide blocks are 2 waves of 132, 384 narrow ones 3, so the 128-wide tile is predicted
/// faster there).
/// `forced`: LOWRANK_TMA_TILE's width, which tests and `bench` use to run either tile.
fn tma_tile([wide, narrow]: [(Tile, usize); 2], m: usize, n: usize, forced: Option<usize>) -> Tile {
    match forced {
        Some(256) => return wide.0,
        Some(_) => return narrow.0,
        None => {}
    }
    let cost = |(t, slots): (Tile, usize), tenths: usize| {
        let units = n.div_ceil(t.bn) * m.div_ceil(t.bm).div_ceil(t.cluster as usize);
        units.div_ceil(slots.max(1)) * t.bn * tenths
    };
    if cost(wide, 9) <= cost(narrow, 10) {
        wide.0
    } else {
        narrow.0
    }
}

/// The wgmma kernels' N-major descriptor offsets (leading, stride) in bytes: the PTX ISA's
/// canonical layout gives (8192, 1024) for our tiles; LOWRANK_WGMMA_NMAJOR=swap takes the other
/// reading, so one GPU run can tell which the hardware uses. To go once a GPU run has settled it.
pub(crate) fn wgmma_nmajor_offsets() -> Result<(i32, i32)> {
    static OFFSETS: std::sync::OnceLock<std::result::Result<(i32, i32), String>> =
        std::sync::OnceLock::new();
    OFFSETS
        .get_or_init(|| match std::env::var("LOWRANK_WGMMA_NMAJOR").as_deref() {
            Err(_) | Ok("") | Ok("canonical") => Ok((8192, 1024)),
            Ok("swap") => Ok((1024, 8192)),
            Ok(other) => Err(format!(
                "LOWRANK_WGMMA_NMAJOR={other:?}: use `canonical` (the default) or `swap`"
            )),
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_follow_the_grid_the_gpu_and_the_implementation() {
        // As many clusters of two as half the SMs (the emulator's answer; an H100's may be fewer).
        let name = |sms: usize, hopper, imp, role, m, n| {
            let clusters = move |_: Tile| Ok(sms / 2);
            let gpu = Gpu {
                sms,
                hopper,
                clusters: &clusters,
            };
            choose_tile(&gpu, imp, None, role, m, n).unwrap().name
        };
        let fused = LowRankImpl::Fused;
        // 16384 × 4096 outputs: 4096 wide blocks fill 132 SMs; the TMA kernel on Hopper (its
        // 128 × 256 tile: 16 waves of it against 32 of 128 × 128), mma.sync elsewhere.
        assert_eq!(name(132, true, fused, Role::Y, 16384, 4096), "tma256");
        assert_eq!(name(132, true, fused, Role::Dx, 16384, 1024), "tma256");
        assert_eq!(name(108, false, fused, Role::Y, 16384, 4096), "wide");
        assert_eq!(
            name(132, true, LowRankImpl::Mma, Role::Y, 16384, 4096),
            "wide"
        );
        assert_eq!(
            name(132, true, LowRankImpl::Wgmma, Role::Y, 16384, 4096),
            "wgmma"
        );
        assert_eq!(
            name(108, false, LowRankImpl::Wgmma, Role::Y, 16384, 4096),
            "wide"
        );
        let pingpong = LowRankImpl::Pingpong;
        assert_eq!(name(132, true, pingpong, Role::Dx, 8192, 768), "pingpong");
        assert_eq!(name(108, false, pingpong, Role::Y, 16384, 4096), "wide");
        assert_eq!(name(132, true, pingpong, Role::Y, 1024, 1024), "narrow");
        // Multicast: the TMA tile's choice, in clusters of two.
        let multicast = LowRankImpl::Multicast;
        assert_eq!(name(132, true, multicast, Role::Dx, 8192, 768), "mc128");
        assert_eq!(name(132, true, multicast, Role::Y, 8192, 3072), "mc256");
        assert_eq!(name(108, false, multicast, Role::Y, 16384, 4096), "wide");
        assert_eq!(name(132, true, multicast, Role::Y, 1024, 1024), "narrow");
        // Fewer clusters than half the SMs: GPT-2 small's dx into 768 columns at 8192 rows has 96
        // pairs of 128 × 256 tiles, 2 waves of 60 clusters, and 192 pairs of 128 × 128 ones, 4
        // waves: the wide tile (at 66 clusters the narrow one, 2 waves against 3, as above).
        let h100 = |clusters| Gpu {
            sms: 132,
            hopper: true,
            clusters,
        };
        let sixty = |_: Tile| Ok(60);
        let tile = |m, n| {
            choose_tile(&h100(&sixty), multicast, None, Role::Dx, m, n)
                .unwrap()
                .name
        };
        assert_eq!(tile(8192, 768), "mc256");
        // 16384 × 4096: 1024 pairs of wide tiles, 18 waves of 60 clusters, against 2048 pairs of
        // narrow ones, 35 waves (cost 18 × 0.9 × 256 against 35 × 128).
        assert_eq!(tile(16384, 4096), "mc256");
        // Where the kernels do not take the call, the cluster count is not asked for.
        let never = |_: Tile| -> Result<usize> { panic!("asked for clusters") };
        let pick = |imp, role, m, n| choose_tile(&h100(&never), imp, None, role, m, n);
        assert_eq!(pick(fused, Role::Dx, 8192, 768).unwrap().name, "tma128");
        assert_eq!(pick(multicast, Role::Y, 1024, 1024).unwrap().name, "narrow");
        assert_eq!(
            pick(multicast, Role::Project, 16384, 4096).unwrap().name,
            "narrow"
        );
        // A failed occupancy query is the call's error, not a wrong tile.
        let fails = |_: Tile| -> Result<usize> { bail!("cuOccupancyMaxActiveClusters failed") };
        assert!(choose_tile(&h100(&fails), multicast, None, Role::Y, 8192, 3072).is_err());
        // GPT-2 small's dx into 768 columns at 8192 rows: 192 wide blocks take 2 waves, 1.45 of
        // them busy; 384 of 128 × 128 take 3 full ones, predicted faster.
        assert_eq!(name(132, true, fused, Role::Dx, 8192, 768), "tma128");
        assert_eq!(name(132, true, fused, Role::Y, 8192, 3072), "tma256");
        // 1024 × 1024: 64 wide blocks leave SMs idle, so twice as many narrow ones.
        assert_eq!(name(132, true, fused, Role::Y, 1024, 1024), "narrow");
        // The selftest's ragged 2500 × 1000 → 1160 shape reaches the TMA tile in both products.
        assert_eq!(name(132, true, fused, Role::Y, 2500, 1160), "tma256");
        assert_eq!(name(132, true, fused, Role::Dx, 2500, 1000), "tma256");
        // The skinny projections always take the narrow tile.
        assert_eq!(name(132, true, fused, Role::Project, 16384, 4096), "narrow");
    }
}
