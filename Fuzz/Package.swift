// swift-tools-version: 6.1
import PackageDescription

// libFuzzer targets for the parsers of untrusted input (docs/testing.md,
// `make fuzz`, scripts/fuzz.sh). A package of its own, so that the root
// package's builds never see them; built only with
// `-sanitize=fuzzer,address`, which gives each executable libFuzzer's main.
//
// One executable, Fuzz, runs the check of FuzzChecks.all that FUZZ_TARGET
// names; each target has a seed corpus, Corpus/<Name>/. The same checks run
// over every committed corpus and crash file in the root package's tests
// (FuzzRegressionTests), so a crash found once stays a regression test. A
// new target (a pcap reader) is a check in FuzzChecks, its row in
// FuzzChecks.all, and a seed folder.

// A path dependency's identity is the last component of its directory.
let rootDirectory = Context.packageDirectory.split(separator: "/").dropLast().last.map(String.init) ?? "swift-duplicator"

let package = Package(
    name: "DuplicatorFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(path: "..")],
    targets: [
        // The checks live in the root package (Sources/FuzzChecks), so that its tests run them too.
        .executableTarget(
            name: "Fuzz",
            dependencies: [.product(name: "FuzzChecks", package: rootDirectory)],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
    ],
    swiftLanguageModes: [.v6]
)
