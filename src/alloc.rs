//! The process's memory allocator: mimalloc instead of glibc's malloc. The daemon holds a
//! compact copy of the cluster for its whole life (hundreds of thousands of small objects at
//! 50k Services) and, on a full sync, builds and drops a ruleset several times that size. With
//! glibc the freed memory stays mapped between the long-lived objects it was interleaved with:
//! at 50k Services the daemon stayed at ~740 MiB after its first sync even after
//! `malloc_trim`; mimalloc's pages hold objects of one size class and go back to the kernel
//! once empty (BENCHMARKS.md, "Where the memory goes").

use libmimalloc_sys::{mi_option_set, mi_option_t};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Option numbers of the mimalloc v3 that `libmimalloc-sys` vendors (`mi_option_e` in its
// `mimalloc.h`; the crate names only the v2-era ones). `defaults_are_where_we_expect` checks
// them against their defaults (`options.c`).
const PURGE_DELAY: mi_option_t = 15;
const ARENA_EAGER_COMMIT: mi_option_t = 4;
const ALLOW_THP: mi_option_t = 43;

/// Tunes the allocator for a long-lived daemon, before it does any work: freed pages go back
/// to the kernel at once (`purge_delay` 0; the default waits a second, and then only when the
/// thread allocates again, which an idle thread never does), and arena memory is committed as
/// it is used rather than up front. At 50k Services: 303 -> 272 MiB of RSS.
///
/// And no transparent huge pages: mimalloc asks for them on its arenas (`MADV_HUGEPAGE`, which
/// the usual `madvise` THP setting then grants), so every first touch of an arena's 2 MiB
/// zeroes all of it, again after each purge. `kube-nft compile -f` at 50k Services spent a
/// third of its CPU in the kernel's `clear_page_erms`. mimalloc's own switch
/// (`MIMALLOC_ALLOW_THP=0`) is read when the process starts, before `main`, so the process
/// opts out itself (`PR_SET_THP_DISABLE` covers mappings already made, and is inherited by
/// child processes such as `demo`'s `ip` commands, harmlessly) and the option stops further
/// requests.
pub(crate) fn tune() {
    // SAFETY: mi_option_set has no preconditions; an option takes effect from its next read.
    unsafe {
        mi_option_set(PURGE_DELAY, 0);
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(ALLOW_THP, 0);
    }
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and touches no memory of ours. A kernel
    // without it refuses with EINVAL, which leaves THP as it was: nothing to handle.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// `runtime::daemon::Options::release_memory`: returns the calling thread's free pages to the
/// kernel now.
pub(crate) fn release() {
    // SAFETY: mi_collect has no preconditions; `force` also collects abandoned segments.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    use libmimalloc_sys::mi_option_get;

    #[test]
    fn defaults_are_where_we_expect() {
        // Read before `tune` (tests never call it): options.c sets purge_delay = 1000,
        // arena_eager_commit = 2 and allow_thp = 1. A renumbered option list fails here, not
        // silently.
        if std::env::vars().any(|(k, _)| k.starts_with("MIMALLOC_")) {
            panic!("MIMALLOC_* variables change the defaults this test checks");
        }
        // SAFETY: mi_option_get has no preconditions.
        let (purge, eager, thp) = unsafe {
            (
                mi_option_get(PURGE_DELAY),
                mi_option_get(ARENA_EAGER_COMMIT),
                mi_option_get(ALLOW_THP),
            )
        };
        assert_eq!((purge, eager, thp), (1000, 2, 1));
    }
}
