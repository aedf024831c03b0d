import NIOCore
import Testing

@testable import PostgresWire

@Suite struct FrontendMessageTests {
    private let flush: (UInt8, [UInt8]) = (FrontendID.flush, [])

    @Test func leadingFlushesAreSkippedAndTheRestKept() {
        let sync: (UInt8, [UInt8]) = (FrontendID.sync, [])
        var buffer = ByteBuffer(bytes: encode([flush, flush, sync, flush]))
        FrontendMessage.skipLeadingFlushes(&buffer)
        #expect(Array(buffer.readableBytesView) == encode([sync, flush]))
    }

    @Test func aFlushCutShortOrWithABodyIsKept() {
        let whole = encode([flush])
        var cut = ByteBuffer(bytes: whole.prefix(4))
        FrontendMessage.skipLeadingFlushes(&cut)
        #expect(cut.readableBytes == 4)
        var malformed = ByteBuffer(bytes: encode([(FrontendID.flush, [0])]))
        FrontendMessage.skipLeadingFlushes(&malformed)
        #expect(malformed.readableBytes == 6)
    }

    private func query(_ sql: String) -> ByteBuffer {
        ByteBuffer(bytes: encode([(FrontendID.query, Array(sql.utf8) + [0])]))
    }

    private func unnamedParse(_ sql: String, name: String = "") -> ByteBuffer {
        ByteBuffer(bytes: encode([(FrontendID.parse, Array(name.utf8) + [0] + Array(sql.utf8) + [0, 0, 0])]))
    }

    @Test(arguments: ["DEALLOCATE ALL", "deallocate prepare all;", "  Discard\tALL ;", "DISCARD ALL\n"])
    func statementDroppingCommandsAreRecognized(sql: String) {
        #expect(FrontendMessage.dropsAllStatements(query(sql)) == true)
        #expect(FrontendMessage.dropsAllStatements(unnamedParse(sql)) == true)
    }

    @Test(arguments: ["DEALLOCATE q", "DISCARD PLANS", "SELECT 'DEALLOCATE ALL'", "DEALLOCATE ALL; SELECT 1", ""])
    func otherCommandsAreNot(sql: String) {
        #expect(FrontendMessage.dropsAllStatements(query(sql)) == false)
    }

    @Test func namedParseAndLongQueriesAreNotRead() {
        #expect(FrontendMessage.dropsAllStatements(unnamedParse("DEALLOCATE ALL", name: "s")) == false)
        let long = "DEALLOCATE ALL" + String(repeating: " ", count: 100)
        #expect(FrontendMessage.dropsAllStatements(query(long)) == false)
    }

    @Test func aShortMessageCutShortIsUndecidedAndHostileLengthsAreNot() {
        let whole = query("DISCARD ALL")
        #expect(FrontendMessage.dropsAllStatements(whole.getSlice(at: 0, length: 8)!) == nil)
        #expect(FrontendMessage.dropsAllStatements(whole.getSlice(at: 0, length: 3)!) == nil)
        for length: UInt32 in [0x8000_0000, 0xFFFF_FFFF, 0] {
            var hostile = ByteBuffer(bytes: [FrontendID.query])
            hostile.writeInteger(length)
            #expect(FrontendMessage.dropsAllStatements(hostile) != true)
        }
    }
}
