//! Keeping the agent's resident memory small. glibc gives each thread that allocates its own
//! arena and keeps freed memory for reuse; after a burst (loading the kernel's BTF at start,
//! rendering a scrape of thousands of series) that memory stays resident although free.

/// Use at most two malloc arenas for the whole process (a node agent needs no more), and fixed
/// mmap/trim thresholds. glibc otherwise raises both after the first large free: once a
/// multi-megabyte scrape body has been freed, later bodies come from an arena's heap, whose free
/// top `malloc_trim` does not give back in a non-main arena (the soak held ~25 MiB that way).
/// With the thresholds fixed, every body over 256 KiB is its own mapping, unmapped when freed.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

/// Give freed heap memory back to the kernel (cheap: it only walks free chunks).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
