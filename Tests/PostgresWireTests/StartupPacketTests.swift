import NIOCore
import Testing

@testable import PostgresWire

private func int32(_ value: Int32) -> [UInt8] {
    let bits = UInt32(bitPattern: value)
    return [UInt8(bits >> 24), UInt8(truncatingIfNeeded: bits >> 16), UInt8(truncatingIfNeeded: bits >> 8),
            UInt8(truncatingIfNeeded: bits)]
}

private func buffer(_ bytes: [UInt8]) -> ByteBuffer {
    var buffer = ByteBufferAllocator().buffer(capacity: bytes.count)
    buffer.writeBytes(bytes)
    return buffer
}

/// A packet whose length field is computed from `payload` (everything after the length).
private func packet(_ payload: [UInt8]) -> [UInt8] {
    int32(Int32(payload.count + 4)) + payload
}

private func startupPayload(version: Int32 = StartupPacket.protocolVersion3, _ parameters: [(String, String)]) -> [UInt8] {
    var payload = int32(version)
    for (name, value) in parameters {
        payload += Array(name.utf8) + [0] + Array(value.utf8) + [0]
    }
    return payload + [0]
}

private func readError(_ bytes: [UInt8]) -> WireError? {
    var buf = buffer(bytes)
    do {
        _ = try StartupPacket.read(from: &buf)
        return nil
    } catch let error as WireError {
        return error
    } catch {
        return nil
    }
}

@Suite struct StartupPacketTests {
    @Test func startupWithParameters() throws {
        let parameters = [("user", "alice"), ("database", "shop"), ("application_name", "psql"), ("options", "")]
        var buf = buffer(packet(startupPayload(parameters)))
        let read = try StartupPacket.read(from: &buf)
        #expect(read == .startup(protocolVersion: 196_608, parameters: parameters))
        #expect(buf.readableBytes == 0)
    }

    @Test func startupWithoutParameters() throws {
        var buf = buffer(packet(startupPayload([])))
        #expect(try StartupPacket.read(from: &buf) == .startup(protocolVersion: 196_608, parameters: []))
    }

    @Test func startupKeepsOtherProtocolVersions() throws {
        var buf = buffer(packet(startupPayload(version: 3 << 16 | 2, [("user", "u")])))
        #expect(try StartupPacket.read(from: &buf) == .startup(protocolVersion: 196_610, parameters: [("user", "u")]))
        var old = buffer(packet(startupPayload(version: 2 << 16, [("user", "u")])))
        #expect(try StartupPacket.read(from: &old) == .startup(protocolVersion: 131_072, parameters: [("user", "u")]))
    }

    @Test func equalityComparesParametersInOrder() {
        #expect(StartupPacket.startup(protocolVersion: 1, parameters: [("a", "b")])
            != .startup(protocolVersion: 1, parameters: [("a", "c")]))
        #expect(StartupPacket.startup(protocolVersion: 1, parameters: [("a", "b"), ("c", "d")])
            != .startup(protocolVersion: 1, parameters: [("c", "d"), ("a", "b")]))
        #expect(StartupPacket.startup(protocolVersion: 1, parameters: []) != .startup(protocolVersion: 2, parameters: []))
        #expect(StartupPacket.sslRequest != .gssEncryptionRequest)
        #expect(StartupPacket.cancel(processID: 1, secretKey: 2) != .cancel(processID: 1, secretKey: 3))
    }

    @Test func sslRequest() throws {
        let bytes: [UInt8] = [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F]
        var buf = buffer(bytes)
        #expect(try StartupPacket.read(from: &buf) == .sslRequest)
        #expect(buf.readableBytes == 0)
    }

    @Test func gssEncryptionRequest() throws {
        var buf = buffer([0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x30])
        #expect(try StartupPacket.read(from: &buf) == .gssEncryptionRequest)
        #expect(buf.readableBytes == 0)
    }

    @Test func cancelRequest() throws {
        var buf = buffer([0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E] + int32(4242) + int32(-123_456_789))
        #expect(try StartupPacket.read(from: &buf) == .cancel(processID: 4242, secretKey: -123_456_789))
        #expect(buf.readableBytes == 0)
    }

    @Test func shortCancelRequestThrows() {
        #expect(readError(packet(int32(StartupPacket.cancelRequestCode) + int32(1)))
            == .malformedStartup("short cancel request"))
    }

    @Test func readConsumesOnlyOnePacket() throws {
        let startup = packet(startupPayload([("user", "bob")]))
        var buf = buffer([0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F] + startup)
        #expect(try StartupPacket.read(from: &buf) == .sslRequest)
        #expect(buf.readableBytes == startup.count)
        #expect(try StartupPacket.read(from: &buf) == .startup(protocolVersion: 196_608, parameters: [("user", "bob")]))
        #expect(buf.readableBytes == 0)
    }

    @Test func partialPacketsReturnNilAndConsumeNothing() throws {
        let full = packet(startupPayload([("user", "alice"), ("database", "db")]))
        for count in 0..<full.count {
            var buf = buffer(Array(full[..<count]))
            let before = buf.readerIndex
            #expect(try StartupPacket.read(from: &buf) == nil, "\(count) bytes")
            #expect(buf.readerIndex == before, "\(count) bytes")
            #expect(buf.readableBytes == count)
        }
        // A partial packet behind an already-read prefix is also left alone.
        var buf = buffer([9, 9, 9] + Array(full.prefix(10)))
        buf.moveReaderIndex(forwardBy: 3)
        #expect(try StartupPacket.read(from: &buf) == nil)
        #expect(buf.readerIndex == 3)
    }

    @Test func partialCancelAndSSLReturnNil() throws {
        var ssl = buffer([0, 0, 0, 8, 0x04, 0xD2])
        #expect(try StartupPacket.read(from: &ssl) == nil)
        #expect(ssl.readableBytes == 6)
        var cancel = buffer([0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E, 0, 0, 0, 1])
        #expect(try StartupPacket.read(from: &cancel) == nil)
        #expect(cancel.readableBytes == 12)
    }

    @Test(arguments: [Int32.min, -1, 0, 4, 7])
    func lengthBelowEightThrows(length: Int32) {
        // Thrown as soon as the length is readable, before the rest arrives.
        #expect(readError(int32(length)) == .malformedStartup("invalid startup packet length \(length)"))
    }

    @Test func lengthAboveMaximumThrows() {
        #expect(readError(int32(10_001)) == .malformedStartup("invalid startup packet length 10001"))
        #expect(readError(int32(Int32.max)) == .malformedStartup("invalid startup packet length 2147483647"))
    }

    @Test func lengthAtMaximumIsAccepted() throws {
        // 10000 bytes: version + one parameter padded to fit + terminator.
        let valueLength = 10_000 - 4 - 4 - 2 - 1 - 1
        let parameters = [("x", String(repeating: "v", count: valueLength))]
        let bytes = packet(startupPayload(parameters))
        #expect(bytes.count == 10_000)
        var partial = buffer(Array(bytes.dropLast()))
        #expect(try StartupPacket.read(from: &partial) == nil)
        var buf = buffer(bytes)
        #expect(try StartupPacket.read(from: &buf) == .startup(protocolVersion: 196_608, parameters: parameters))
    }

    @Test func unterminatedParameterNameThrows() {
        // The parameter list never ends with an empty name.
        let payload = int32(StartupPacket.protocolVersion3) + Array("user\0alice\0".utf8)
        #expect(readError(packet(payload)) == .malformedStartup("unterminated startup parameter"))
        let cutName = int32(StartupPacket.protocolVersion3) + Array("us".utf8)
        #expect(readError(packet(cutName)) == .malformedStartup("unterminated startup parameter"))
    }

    @Test func parameterWithoutValueThrows() {
        let payload = int32(StartupPacket.protocolVersion3) + Array("user\0ali".utf8)
        #expect(readError(packet(payload)) == .malformedStartup("startup parameter user has no value"))
    }

    @Test func roundTripStartupMessage() throws {
        let parameters = [("user", "ünïcode"), ("database", "d b"), ("client_encoding", "UTF8")]
        var buf = ByteBufferAllocator().buffer(capacity: 0)
        buf.writeStartupMessage(parameters: parameters)
        #expect(buf.getInteger(at: 0, as: Int32.self) == Int32(buf.readableBytes))
        #expect(try StartupPacket.read(from: &buf) == .startup(protocolVersion: 196_608, parameters: parameters))
        #expect(buf.readableBytes == 0)
    }

    @Test func roundTripCancelAndSSLRequest() throws {
        var buf = ByteBufferAllocator().buffer(capacity: 0)
        buf.writeCancelRequest(processID: Int32.max, secretKey: Int32.min)
        buf.writeSSLRequest()
        #expect(try StartupPacket.read(from: &buf) == .cancel(processID: Int32.max, secretKey: Int32.min))
        #expect(try StartupPacket.read(from: &buf) == .sslRequest)
        #expect(try StartupPacket.read(from: &buf) == nil)
    }
}
