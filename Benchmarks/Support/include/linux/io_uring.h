/*
 * Seen only by the benchmark targets (an -Xcc -I in Benchmarks/Package.swift).
 *
 * Those targets import both `Benchmark`, which imports swift-system, whose C
 * module (CSystem, 1.8+) includes the kernel's <linux/io_uring.h>, and `Ring`,
 * whose C module (CLiburing) includes liburing 2.3's own copy of the same UAPI
 * header, <liburing/io_uring.h>. The two copies define `struct io_uring_sqe`
 * differently, so clang refuses to merge the two modules in one Swift target.
 * Pointing CSystem's include at liburing's copy makes both modules see one
 * definition. The proxy itself never imports swift-system and is unaffected.
 */
#include <liburing/compat.h>
#include <liburing/io_uring.h>
