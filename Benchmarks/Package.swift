// swift-tools-version: 6.1
import PackageDescription

// Micro benchmarks of swift-duplicator's hot path, with ordo-one/benchmark.
// A package of its own (its own .build) so the root package keeps no
// benchmark dependency. Run from this folder:
//
//     swift package --disable-sandbox benchmark
//
// The "MallocInterposer" trait alone: it gives the malloc counters
// (`.mallocCountTotal`) and leaves out the default "RuntimeInterposer", whose
// package is not available on this machine.

// A path dependency's identity is the last component of its directory, so the
// root package is named after the folder it was cloned into.
let rootDirectory = Context.packageDirectory.split(separator: "/").dropLast().last.map(String.init) ?? "swift-duplicator"

let benchmarkDependencies: [Target.Dependency] = [
    .product(name: "Benchmark", package: "benchmark"),
    .product(name: "Ring", package: rootDirectory),
    .product(name: "Duplicator", package: rootDirectory),
]

// swift-system's C module (CSystem 1.8, pulled in by Benchmark) includes the
// kernel's <linux/io_uring.h>; Ring's C module includes liburing 2.3's own,
// older copy of it. Clang cannot merge the two `struct io_uring_sqe`s in one
// target, so the benchmark targets see a <linux/io_uring.h> that is
// liburing's copy (Support/include). The strict context hash makes clang
// build CSystem for them apart from the CSystem the Benchmark library was
// built against (the default module hash ignores include paths).
let headerSettings: [SwiftSetting] = [
    .unsafeFlags(["-Xcc", "-I\(Context.packageDirectory)/Support/include",
                  "-Xcc", "-Xclang", "-Xcc", "-fmodules-strict-context-hash"]),
]

let package = Package(
    name: "DuplicatorBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: ["RingNop", "BufferPoolCycle", "SessionEvents"].map { name in
        .executableTarget(
            name: name,
            dependencies: benchmarkDependencies,
            path: "Benchmarks/\(name)",
            swiftSettings: headerSettings,
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    },
    swiftLanguageModes: [.v6]
)
