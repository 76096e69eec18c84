//! Large host buffers on transparent huge pages. Many kernels (this machine's among them) give
//! huge pages only to memory that asks for them (`/sys/kernel/mm/transparent_hugepage/enabled`
//! = madvise), and a 4 KB page ends the hardware prefetcher's run and costs a TLB entry: the
//! memory-bound passes (AdamW, the gradient norm, the zeroing) stream GPT-2 small's 124 M values
//! several arrays at a time. A small gain, measured side by side against the build before
//! (benches/results/cpu-train-2026-12-06-hugepages.md): GPT-2 small's LoRA step 0.95×, its dense
//! step 0.995× (inside the machine's ±3 % noise); 0.92 M page faults at start-up become 0.15 M.

/// A transparent huge page on x86-64 (and on aarch64 with 4 KB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// `len` zeros, on huge pages where the kernel grants them. A large buffer's zeros come from a
/// fresh mapping that calloc leaves untouched (glibc maps every allocation above its threshold,
/// 128 KB to 32 MB, afresh), so the advice precedes every page fault; a smaller one may come
/// from heap memory touched before, whose pages khugepaged may merge later.
pub fn zeroed(len: usize) -> Vec<f32> {
    let v = vec![0.0f32; len];
    advise_huge_pages(&v);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(v: &[f32]) {
    let (start, bytes) = (v.as_ptr() as usize, std::mem::size_of_val(v));
    // The whole huge pages inside the buffer: the kernel backs only aligned 2 MB ranges.
    let (first, end) = (
        start.next_multiple_of(HUGE_PAGE),
        (start + bytes) / HUGE_PAGE * HUGE_PAGE,
    );
    if end > first {
        // SAFETY: [first, end) lies inside `v`'s allocation; MADV_HUGEPAGE changes how its pages
        // are backed, never their contents. It is advice: an error (a kernel without THP) only
        // leaves the small pages.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &[f32]) {}
