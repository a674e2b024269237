//! The process's memory allocator: mimalloc instead of glibc's malloc. The daemon holds a
//! compact copy of the cluster for its whole life (hundreds of thousands of small objects at
//! 50k Services) and, on a full sync, builds and drops a ruleset several times that size. With
//! glibc the freed memory stays mapped between the long-lived objects it was interleaved with:
//! at 50k Services the daemon stayed at ~740 MiB after its first sync even after
//! `malloc_trim`, against ~460 MiB with mimalloc, whose pages hold objects of one size class
//! and are returned to the kernel once empty (BENCHMARKS.md, "Where the memory goes").

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
