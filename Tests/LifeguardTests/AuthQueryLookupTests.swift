import NIOCore
import Testing

@testable import Lifeguard

/// The auth query's DataRow comes from the network: every length in it is checked.
@Suite struct AuthQueryLookupTests {
    private func row(_ columns: [String?], count: Int16? = nil) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(count ?? Int16(columns.count))
        for column in columns {
            if let column {
                buffer.writeInteger(Int32(column.utf8.count))
                buffer.writeString(column)
            } else {
                buffer.writeInteger(Int32(-1))
            }
        }
        return buffer
    }

    @Test func theSecondColumnIsThePassword() {
        #expect(AuthQueryLookup.password(inRow: row(["someuser", "md5abc"])) == .some("md5abc"))
        #expect(AuthQueryLookup.password(inRow: row([nil, "md5abc"])) == .some("md5abc"))
    }

    @Test func aNullPasswordIsNotAMissingRow() {
        #expect(AuthQueryLookup.password(inRow: row(["someuser", nil])) == .some(nil))
    }

    @Test func shortOrLyingRowsAreNotRead() {
        #expect(AuthQueryLookup.password(inRow: row(["someuser"])) == .none, "one column")
        #expect(AuthQueryLookup.password(inRow: row(["someuser"], count: 2)) == .none, "says two, has one")
        var lying = row(["someuser"])
        lying.writeInteger(Int32(1_000_000))
        lying.writeString("short")
        lying.moveReaderIndex(to: 0)
        lying.setInteger(Int16(2), at: 0)
        #expect(AuthQueryLookup.password(inRow: lying) == .none, "a length past the end")
        var huge = row(["someuser"], count: 2)
        huge.writeInteger(Int32.max)
        #expect(AuthQueryLookup.password(inRow: huge) == .none)
        #expect(AuthQueryLookup.password(inRow: ByteBuffer()) == .none)
    }
}
