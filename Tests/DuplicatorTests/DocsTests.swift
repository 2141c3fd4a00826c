import Foundation
import Testing
@testable import Duplicator

/// The documentation names what the code has: every metric family the
/// endpoint can serve is in docs/operations.md's table (or on the page that
/// table points to for it), so a new counter cannot go undocumented.
@Suite("Docs: the metrics tables follow the code")
struct DocsTests {
    static func read(_ path: String) throws -> String {
        try String(contentsOfFile: DistTests.root + "/" + path, encoding: .utf8)
    }

    @Test("every metric family of /metrics (PrometheusText.families(): every option that adds some, and the reload families) is named in docs/operations.md")
    func everyMetricIsDocumented() throws {
        let families = PrometheusText.families().map(\.name)
        #expect(families.count >= 30, "\(families)")
        let page = try Self.read("docs/operations.md")
        let missing = families.filter { !page.contains("`\($0)`") }
        #expect(missing.isEmpty, "not in docs/operations.md's metrics table: \(missing)")
    }
}
