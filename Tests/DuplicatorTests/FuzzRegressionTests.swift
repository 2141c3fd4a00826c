import Foundation
import FuzzChecks
import Testing

/// Every committed fuzz input, seeds and crashes alike (Fuzz/Corpus/<Name>
/// and Fuzz/Crashes/<Name>), through its target's check (FuzzChecks), in
/// the ordinary test build: an input the fuzzer once crashed on stays a
/// test, without the fuzzer (docs/testing.md).
@Suite("FuzzRegressionTests")
struct FuzzRegressionTests {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz")

    static func inputs(_ name: String) -> [URL] {
        ["Corpus", "Crashes"].flatMap { folder -> [URL] in
            let directory = fuzzDirectory.appendingPathComponent(folder).appendingPathComponent(name)
            let files = (try? FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)) ?? []
            return files.filter { !$0.lastPathComponent.hasPrefix(".") }.sorted { $0.path < $1.path }
        }
    }

    @Test("each target's committed seeds and crash inputs pass its check", arguments: FuzzChecks.all.map(\.name))
    func committedInputs(name: String) throws {
        let check = try #require(FuzzChecks.all.first { $0.name == name }?.check)
        let files = Self.inputs(name)
        #expect(!files.isEmpty, "no seed corpus in Fuzz/Corpus/\(name)")
        for file in files {
            let bytes = try Data(contentsOf: file)
            bytes.withUnsafeBytes { check($0) }
        }
    }
}
