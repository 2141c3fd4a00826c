// swift-tools-version: 6.1
import PackageDescription

// Release builds use -O (not -Ounchecked) with whole-module optimisation, the
// SwiftPM default for `-c release`; the hot loop relies on specialisation of
// the generic session logic over the concrete IO.
let package = Package(
    name: "swift-duplicator",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "duplicator", targets: ["duplicator"]),
        .executable(name: "duplicator-testserver", targets: ["duplicator-testserver"]),
        .executable(name: "duplicator-testclient", targets: ["duplicator-testclient"]),
        .library(name: "Duplicator", targets: ["Duplicator"]),
        .library(name: "Ring", targets: ["Ring"]),
        .library(name: "LoadTools", targets: ["LoadTools"]),
        // For the fuzz targets (Fuzz/Package.swift); not for users.
        .library(name: "FuzzChecks", targets: ["FuzzChecks"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // --config FILE: a maintained YAML reader (libyaml inside), see ConfigFile.swift.
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CLiburing",
            pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]
        ),
        // epoll, eventfd and accept4 for the load tools and the proxy's epoll backend (not in Swift's Glibc module).
        .systemLibrary(name: "CLinuxSystem"),
        // What the proxy and the load tools both need of the system: socket
        // addresses, host:port text, errno errors, threads, clocks, signals.
        .target(name: "Platform", dependencies: ["CLinuxSystem"]),
        .target(name: "Ring", dependencies: ["CLiburing", "Platform"]),
        .target(
            name: "Duplicator",
            dependencies: [
                "Platform",
                "Ring",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .target(
            name: "LoadTools",
            dependencies: [
                "CLinuxSystem",
                "Platform",
                // The load client's io_uring path (RingLoadClientLoop); Ring knows nothing of load tools.
                "Ring",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // `duplicator replay`: capture readers, TCP reassembly, and the replayer
        // on the ring (or epoll). Pure readers apart from the runner's IO.
        .target(
            name: "Replay",
            dependencies: [
                "Duplicator",
                "Platform",
                "Ring",
                "CLinuxSystem",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .executableTarget(
            name: "duplicator",
            dependencies: [
                "CLinuxSystem",
                "Duplicator",
                "Replay",
                "LoadTools",
                "Platform",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "duplicator-testserver",
            dependencies: [
                "LoadTools",
                "Platform",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "duplicator-testclient",
            dependencies: [
                "LoadTools",
                "Platform",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // What the test targets share (a seeded generator); not in any product.
        .target(name: "TestSupport"),
        // What the fuzz targets assert of an input; the tests run it over the committed corpus (docs/testing.md).
        .target(name: "FuzzChecks", dependencies: ["Duplicator", "Platform", "Replay"]),
        .testTarget(name: "RingTests", dependencies: ["Ring", "CLiburing", "Platform", "TestSupport"]),
        .testTarget(name: "DuplicatorTests", dependencies: ["Duplicator", "Replay", "Ring", "LoadTools", "Platform", "TestSupport", "FuzzChecks"]),
        .testTarget(name: "LoadToolsTests", dependencies: ["LoadTools", "Platform", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
