//! Giving memory back after rooms close (glibc only; nothing happens elsewhere).
//!
//! glibc gives threads their own malloc arenas, up to 8 per core. A room's GStreamer streaming
//! threads come and go with it, so over time many arenas each keep the fragmented peak of what
//! their threads once held. Measured with the bench's idle scenario (rooms opened and left one
//! after another): 5 rooms 31 MiB, 20 rooms 110 MiB, 50 rooms 200-270 MiB, 100 rooms 250 MiB of
//! RSS with nothing running. With arenas capped at the core count, 50 rooms leave 50 MiB, and a
//! 16-participant room used the same CPU (0.77/0.74 against 0.78/0.73 cores, alternating runs).

/// Caps glibc's malloc arenas at the number of cores, unless `MALLOC_ARENA_MAX` is set (then
/// glibc's own reading of it stands). Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes allocator parameters; no thread allocates concurrently
        // because this runs before any is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Returns free heap pages to the system (after a room closes: its pipeline, peers and buffers
/// were just freed).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe; it only releases memory malloc considers free.
    unsafe {
        libc::malloc_trim(0);
    }
}
