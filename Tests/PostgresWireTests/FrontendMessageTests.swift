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
}
