//! glibc malloc settings for a long-running server: a cap on malloc arenas,
//! and handing freed memory back to the kernel after a burst.
//!
//! glibc gives a thread that meets contention an arena of its own, up to eight
//! per core, and memory freed in an arena is only reused by that arena. The
//! runtime's workers, its blocking threads (one flush each) and the embedded
//! store's I/O threads all allocate: after the same round of delivered traffic, resident
//! memory was 93–99 MiB with glibc's default and 82–86 MiB with two arenas
//! (BENCHMARKS.md, "Retention and resident memory").

/// Arenas when the operator has not chosen: one per core of a small host.
const DEFAULT_ARENA_MAX: i32 = 2;

/// Caps glibc's malloc arenas at [`DEFAULT_ARENA_MAX`] unless the environment
/// already sets a cap (`MALLOC_ARENA_MAX` or `GLIBC_TUNABLES`). Call it first
/// thing in `main`, before any thread starts. Returns the cap it applied.
pub fn cap_malloc_arenas() -> Option<i32> {
    if operator_chose_arenas(
        std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
    ) {
        return None;
    }
    set_arena_max(DEFAULT_ARENA_MAX)
}

fn operator_chose_arenas(malloc_arena_max_set: bool, glibc_tunables: Option<&str>) -> bool {
    malloc_arena_max_set
        || glibc_tunables.is_some_and(|tunables| tunables.contains("glibc.malloc.arena_max"))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: i32) -> Option<i32> {
    // SAFETY: mallopt only changes malloc's parameters; glibc serialises it
    // with allocation, and a cap set after arenas exist only stops new ones.
    let applied = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } == 1;
    applied.then_some(arenas)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) -> Option<i32> {
    None
}

/// Returns the memory malloc holds free to the kernel. glibc keeps what a
/// burst freed (thousands of closed connections' buffers) for reuse, so
/// resident memory stayed at its peak after the burst: 51 MiB after 3,000
/// slow connections closed, from 9 MiB before (BENCHMARKS.md, "Slow
/// connections"). Takes a few milliseconds; call it off the async workers.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim only returns free pages; glibc serialises it with allocation.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_cap_wins() {
        assert!(operator_chose_arenas(true, None));
        assert!(operator_chose_arenas(
            false,
            Some("glibc.malloc.check=0:glibc.malloc.arena_max=4")
        ));
        assert!(!operator_chose_arenas(false, Some("glibc.malloc.check=0")));
        assert!(!operator_chose_arenas(false, None));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_cap() {
        assert_eq!(set_arena_max(DEFAULT_ARENA_MAX), Some(DEFAULT_ARENA_MAX));
    }
}
