//! Keeping the agent's resident memory small. glibc gives each thread that allocates its own
//! arena and keeps freed memory for reuse; after a burst (loading the kernel's BTF at start,
//! rendering a scrape of thousands of series) that memory stays resident although free.

/// Use at most two malloc arenas for the whole process (a node agent needs no more).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
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
