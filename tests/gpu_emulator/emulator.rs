//! The emulated GPU (tests/gpu-emu), built once for all the tests of this target, and the lowrank
//! binary run on it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The emulated GPU, built once for the tests of this target.
pub struct Emulator {
    pub dir: PathBuf,
    /// g++'s AddressSanitizer runtime, when the emulator was built with it.
    asan: Option<String>,
}

impl Emulator {
    /// Builds it, or None (the test is skipped) when the binary embeds no kernels to load.
    pub fn get() -> Option<&'static Emulator> {
        static EMULATOR: OnceLock<Option<Emulator>> = OnceLock::new();
        EMULATOR.get_or_init(Emulator::build).as_ref()
    }

    fn build() -> Option<Emulator> {
        if lowrank::kernels::NVCC_VERSION.is_none() {
            assert!(
                std::env::var("LOWRANK_REQUIRE_KERNELS").as_deref() != Ok("1"),
                "LOWRANK_REQUIRE_KERNELS=1 but the binary has no kernels"
            );
            eprintln!(
                "skipped: this binary was built without nvcc, so it embeds no kernels to load"
            );
            return None;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-emu");
        let asan = asan_runtime();
        if asan.is_none() {
            eprintln!(
                "note: g++ has no AddressSanitizer runtime: the kernels' memory accesses go unchecked"
            );
        }
        let build = Command::new("bash")
            .arg(root.join("tests/gpu-emu/build.sh"))
            .arg(&dir)
            .env(
                "LOWRANK_EMU_SANITIZE",
                if asan.is_some() { "address" } else { "" },
            )
            .output()
            .expect("bash runs");
        assert!(
            build.status.success(),
            "tests/gpu-emu/build.sh failed:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        Some(Emulator { dir, asan })
    }

    /// The lowrank binary with these arguments on the emulated GPU of this arch and SM count.
    pub fn run(&self, args: &[&str], arch: &str, sms: &str, env: &[(&str, &OsStr)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lowrank"));
        if let Some(lib) = &self.asan {
            // The ASan runtime must be the process's first library, and the sanitized libcuda.so
            // is preloaded for its static TLS (tests/gpu-emu/build.sh); leaks are not the question.
            let mut preload = std::ffi::OsString::from(lib);
            preload.push(" ");
            preload.push(self.dir.join("libcuda.so"));
            cmd.env("LD_PRELOAD", preload)
                .env("ASAN_OPTIONS", "detect_leaks=0");
        }
        cmd.args(args)
            .env("LD_LIBRARY_PATH", &self.dir)
            .env("LOWRANK_EMU_ARCH", arch)
            .env("LOWRANK_EMU_SMS", sms)
            .env_remove("LOWRANK_LOWRANK_IMPL")
            .env_remove("LOWRANK_WGMMA_NMAJOR")
            .env_remove("LOWRANK_TMA_TILE")
            .env_remove("LOWRANK_MERGE_BASE")
            .env_remove("LOWRANK_EMU_WGMMA");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("the binary runs")
    }
}

/// g++'s AddressSanitizer runtime library, if it has one.
fn asan_runtime() -> Option<String> {
    let out = Command::new("g++")
        .arg("-print-file-name=libasan.so")
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    // Without the library, g++ echoes the bare name back.
    Path::new(&path).is_absolute().then_some(path)
}
