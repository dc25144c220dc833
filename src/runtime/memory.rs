//! The C allocator under ONNX Runtime. With its arena off, ONNX Runtime takes every pass's working
//! memory from `malloc` and frees it after the pass; glibc then keeps freed memory per thread arena
//! (one per worker thread that ran a pass), and keeps large freed blocks unless they were mapped on
//! their own. Two settings decide how much of that comes back.

/// Sets glibc's malloc up for the service: at most `arenas` arenas (0: glibc's default of eight per
/// core), and with `return_pass_memory` every block over 256 KiB mapped on its own, so a pass's
/// buffers go back to the system when it ends. Call it once, before any other thread starts.
pub fn tune_allocator(arenas: usize, return_pass_memory: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocator parameters; it is called before the process
        // starts any other thread (see the caller), as glibc asks.
        unsafe {
            if arenas > 0 {
                libc::mallopt(libc::M_ARENA_MAX, i32::try_from(arenas).unwrap_or(i32::MAX));
            }
            if return_pass_memory {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (arenas, return_pass_memory);
}
