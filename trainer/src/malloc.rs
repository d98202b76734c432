//! glibc malloc settings for training. Every step frees and re-allocates the same large buffers
//! (activations, the 47 MB word-embedding gradient of MiniLM, ...). With glibc's defaults,
//! blocks above its mmap threshold (adjusted up to 32 MiB at most) are unmapped on free and come
//! back from the kernel zero-filled page by page, and freed memory at the top of the heap is
//! trimmed, so the next step faults it in again: about 12 k page faults per MiniLM step on 2
//! cores. Raising both thresholds to 1 GiB keeps those buffers in the heap for reuse (RSS stays
//! at its peak between steps, which it reaches anyway). A `MALLOC_*_` variable or
//! `GLIBC_TUNABLES` set by the user wins.
pub fn keep_freed_buffers_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = [
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "GLIBC_TUNABLES",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
        if user_set {
            return;
        }
        const THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters, under glibc's own arena locks.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
        }
    }
}
