import NIOCore
import Testing

@testable import PostgresWire

private func be32(_ value: Int32) -> [UInt8] {
    let bits = UInt32(bitPattern: value)
    return [UInt8(bits >> 24), UInt8(truncatingIfNeeded: bits >> 16), UInt8(truncatingIfNeeded: bits >> 8),
            UInt8(truncatingIfNeeded: bits)]
}

private func cstr(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }

private func written(_ write: (inout ByteBuffer) -> Void) -> [UInt8] {
    var buffer = ByteBufferAllocator().buffer(capacity: 0)
    write(&buffer)
    return Array(buffer.readableBytesView)
}

/// A typed message with a correct length field around `body`.
private func message(_ id: Character, _ body: [UInt8]) -> [UInt8] {
    [id.asciiValue!] + be32(Int32(body.count + 4)) + body
}

/// Splits one typed message off `buffer`, checking the length field; returns id and body.
private func readMessage(
    _ buffer: inout ByteBuffer, sourceLocation: SourceLocation = #_sourceLocation
) throws -> (UInt8, ByteBuffer) {
    let id = buffer.readInteger(as: UInt8.self)
    let length = buffer.readInteger(as: Int32.self)
    let readLength = try #require(length, sourceLocation: sourceLocation)
    try #require(readLength >= 4, sourceLocation: sourceLocation)
    let body = buffer.readSlice(length: Int(readLength) - 4)
    return (try #require(id, sourceLocation: sourceLocation), try #require(body, sourceLocation: sourceLocation))
}

private func single(_ write: (inout ByteBuffer) -> Void) throws -> (UInt8, ByteBuffer) {
    var buffer = ByteBufferAllocator().buffer(capacity: 0)
    write(&buffer)
    let result = try readMessage(&buffer)
    #expect(buffer.readableBytes == 0)
    return result
}

@Suite struct EncodingTests {
    // MARK: Exact bytes of backend messages

    @Test func authenticationOK() {
        #expect(written { $0.writeAuthenticationOK() } == [0x52, 0, 0, 0, 8, 0, 0, 0, 0])
    }

    @Test func authenticationCleartext() {
        #expect(written { $0.writeAuthenticationCleartext() } == [0x52, 0, 0, 0, 8, 0, 0, 0, 3])
    }

    @Test func authenticationMD5() {
        #expect(written { $0.writeAuthenticationMD5(salt: [0xDE, 0xAD, 0xBE, 0xEF]) }
            == [0x52, 0, 0, 0, 12, 0, 0, 0, 5, 0xDE, 0xAD, 0xBE, 0xEF])
    }

    @Test func authenticationSASL() {
        #expect(written { $0.writeAuthenticationSASL(mechanisms: ["SCRAM-SHA-256"]) }
            == message("R", be32(10) + cstr("SCRAM-SHA-256") + [0]))
        #expect(written { $0.writeAuthenticationSASL(mechanisms: ["SCRAM-SHA-256"]) }.count == 1 + 4 + 4 + 14 + 1)
        #expect(written { $0.writeAuthenticationSASL(mechanisms: ["A", "BC"]) }
            == [0x52, 0, 0, 0, 14, 0, 0, 0, 10, 0x41, 0, 0x42, 0x43, 0, 0])
    }

    @Test func authenticationSASLContinueAndFinal() {
        let data = Array("r=abc,s=c2FsdA==,i=4096".utf8)
        #expect(written { $0.writeAuthenticationSASLContinue(data) } == message("R", be32(11) + data))
        #expect(written { $0.writeAuthenticationSASLFinal(Array("v=xyz".utf8)) }
            == message("R", be32(12) + Array("v=xyz".utf8)))
        #expect(written { $0.writeAuthenticationSASLFinal([]) } == [0x52, 0, 0, 0, 8, 0, 0, 0, 12])
    }

    @Test func parameterStatus() {
        #expect(written { $0.writeParameterStatus(name: "client_encoding", value: "UTF8") }
            == message("S", cstr("client_encoding") + cstr("UTF8")))
        #expect(written { $0.writeParameterStatus(name: "a", value: "") } == [0x53, 0, 0, 0, 7, 0x61, 0, 0])
    }

    @Test func backendKeyData() {
        #expect(written { $0.writeBackendKeyData(processID: 0x0102_0304, secretKey: -2) }
            == [0x4B, 0, 0, 0, 12, 1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFE])
    }

    @Test func readyForQuery() {
        #expect(written { $0.writeReadyForQuery(.idle) } == [0x5A, 0, 0, 0, 5, 0x49])
        #expect(written { $0.writeReadyForQuery(.inTransaction) } == [0x5A, 0, 0, 0, 5, 0x54])
        #expect(written { $0.writeReadyForQuery(.failed) } == [0x5A, 0, 0, 0, 5, 0x45])
    }

    @Test func errorResponseFieldLayout() {
        let bytes = written {
            $0.writeErrorResponse(severity: "FATAL", code: "08P01", message: "no such database: x")
        }
        let body: [UInt8] = [UInt8(ascii: "S")] + cstr("FATAL") + [UInt8(ascii: "V")] + cstr("FATAL")
            + [UInt8(ascii: "C")] + cstr("08P01") + [UInt8(ascii: "M")] + cstr("no such database: x") + [0]
        #expect(bytes == message("E", body))
    }

    @Test func noticeResponseUsesN() {
        let bytes = written { $0.writeErrorResponse(severity: "WARNING", code: "01000", message: "m", notice: true) }
        #expect(bytes.first == UInt8(ascii: "N"))
        #expect(Array(bytes.dropFirst(5))
            == [0x53] + cstr("WARNING") + [0x56] + cstr("WARNING") + [0x43] + cstr("01000") + [0x4D] + cstr("m") + [0])
    }

    // MARK: Exact bytes of frontend messages

    @Test func startupMessage() {
        let bytes = written { $0.writeStartupMessage(parameters: [("user", "u"), ("database", "d")]) }
        let payload = [0, 3, 0, 0] + cstr("user") + cstr("u") + cstr("database") + cstr("d") + [0]
        #expect(bytes == be32(Int32(payload.count + 4)) + payload)
        #expect(written { $0.writeStartupMessage(parameters: []) } == [0, 0, 0, 9, 0, 3, 0, 0, 0])
    }

    @Test func cancelRequest() {
        #expect(written { $0.writeCancelRequest(processID: 7, secretKey: 0x7FFF_FFFF) }
            == [0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E, 0, 0, 0, 7, 0x7F, 0xFF, 0xFF, 0xFF])
    }

    @Test func sslRequest() {
        #expect(written { $0.writeSSLRequest() } == [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F])
    }

    @Test func passwordMessage() {
        #expect(written { $0.writePasswordMessage("md5abc") } == message("p", cstr("md5abc")))
        #expect(written { $0.writePasswordMessage("") } == [0x70, 0, 0, 0, 5, 0])
    }

    @Test func saslInitialResponse() {
        let data = Array("n,,n=,r=abc".utf8)
        #expect(written { $0.writeSASLInitialResponse(mechanism: "SCRAM-SHA-256", data: data) }
            == message("p", cstr("SCRAM-SHA-256") + be32(Int32(data.count)) + data))
    }

    @Test func saslResponse() {
        let data = Array("c=biws,r=abc,p=xyz".utf8)
        #expect(written { $0.writeSASLResponse(data) } == message("p", data))
    }

    @Test func queryAndTerminate() {
        #expect(written { $0.writeQuery("SELECT 1") } == message("Q", cstr("SELECT 1")))
        #expect(written { $0.writeTerminate() } == [0x58, 0, 0, 0, 4])
    }

    @Test func writeMessageAppendsAfterExistingBytes() {
        // The length is patched relative to where this message starts, not the buffer start.
        let bytes = written {
            $0.writeBytes([1, 2, 3])
            $0.writeReadyForQuery(.idle)
            $0.writeQuery("x")
            $0.writeMessage(UInt8(ascii: "!")) { body in body.writeBytes([9, 9]) }
        }
        #expect(bytes == [1, 2, 3] + [0x5A, 0, 0, 0, 5, 0x49] + message("Q", cstr("x")) + [0x21, 0, 0, 0, 6, 9, 9])
    }

    @Test func writeMessageAfterReaderIndexMoved() throws {
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        buffer.writeQuery("first")
        _ = try readMessage(&buffer)
        buffer.writeQuery("second")
        let (id, body) = try readMessage(&buffer)
        #expect(id == UInt8(ascii: "Q"))
        #expect(Array(body.readableBytesView) == cstr("second"))
    }

    // MARK: Decoders read what writers wrote

    @Test func decodeAuthentication() throws {
        let (id, body) = try single { $0.writeAuthenticationMD5(salt: [1, 2, 3, 4]) }
        #expect(id == BackendID.authentication)
        let auth = try #require(BackendMessage.authentication(body))
        #expect(auth.code == AuthenticationCode.md5Password)
        #expect(Array(auth.data.readableBytesView) == [1, 2, 3, 4])

        let (_, ok) = try single { $0.writeAuthenticationOK() }
        #expect(BackendMessage.authentication(ok)?.code == AuthenticationCode.ok)
        #expect(BackendMessage.authentication(ok)?.data.readableBytes == 0)

        let (_, sasl) = try single { $0.writeAuthenticationSASL(mechanisms: ["SCRAM-SHA-256", "X"]) }
        var mechanisms = try #require(BackendMessage.authentication(sasl)).data
        #expect(BackendMessage.authentication(sasl)?.code == AuthenticationCode.sasl)
        #expect(mechanisms.readNullTerminatedString() == "SCRAM-SHA-256")
        #expect(mechanisms.readNullTerminatedString() == "X")
        #expect(mechanisms.readNullTerminatedString() == "")
        #expect(mechanisms.readableBytes == 0)

        let (_, final) = try single { $0.writeAuthenticationSASLFinal(Array("v=1".utf8)) }
        #expect(BackendMessage.authentication(final)?.code == AuthenticationCode.saslFinal)
        #expect(BackendMessage.authentication(final).map { Array($0.data.readableBytesView) } == Array("v=1".utf8))

        #expect(BackendMessage.authentication(ByteBuffer(bytes: [0, 0, 0])) == nil)
    }

    @Test func decodeParameterStatus() throws {
        let (id, body) = try single { $0.writeParameterStatus(name: "TimeZone", value: "Europe/Paris") }
        #expect(id == BackendID.parameterStatus)
        let status = try #require(BackendMessage.parameterStatus(body))
        #expect(status.name == "TimeZone")
        #expect(status.value == "Europe/Paris")
        #expect(BackendMessage.parameterStatus(ByteBuffer(bytes: cstr("only-name"))) == nil)
    }

    @Test func decodeBackendKeyData() throws {
        let (id, body) = try single { $0.writeBackendKeyData(processID: 12345, secretKey: Int32.min) }
        #expect(id == BackendID.backendKeyData)
        let key = try #require(BackendMessage.backendKeyData(body))
        #expect(key.processID == 12345)
        #expect(key.secretKey == Int32.min)
        #expect(BackendMessage.backendKeyData(ByteBuffer(bytes: [0, 0, 0, 1, 0, 0])) == nil)
    }

    @Test(arguments: [TransactionStatus.idle, .inTransaction, .failed])
    func decodeReadyForQuery(status: TransactionStatus) throws {
        let (id, body) = try single { $0.writeReadyForQuery(status) }
        #expect(id == BackendID.readyForQuery)
        #expect(BackendMessage.readyForQuery(body) == status)
    }

    @Test func readyForQueryRejectsUnknownStatusAndEmptyBody() {
        #expect(BackendMessage.readyForQuery(ByteBuffer(bytes: [UInt8(ascii: "X")])) == nil)
        #expect(BackendMessage.readyForQuery(ByteBuffer()) == nil)
    }

    @Test func decodeErrorFields() throws {
        let (id, body) = try single {
            $0.writeErrorResponse(severity: "ERROR", code: "42P01", message: "relation \"t\" does not exist")
        }
        #expect(id == BackendID.errorResponse)
        let fields = BackendMessage.errorFields(body)
        #expect(fields == [
            UInt8(ascii: "S"): "ERROR", UInt8(ascii: "V"): "ERROR", UInt8(ascii: "C"): "42P01",
            UInt8(ascii: "M"): "relation \"t\" does not exist",
        ])
        let (noticeID, notice) = try single { $0.writeErrorResponse(severity: "LOG", code: "00000", message: "hi", notice: true) }
        #expect(noticeID == BackendID.noticeResponse)
        #expect(BackendMessage.errorFields(notice)[UInt8(ascii: "M")] == "hi")
        // A truncated field stops the read without crashing.
        #expect(BackendMessage.errorFields(ByteBuffer(bytes: [UInt8(ascii: "S")] + Array("ERR".utf8))) == [:])
    }

    @Test func decodePassword() throws {
        let (id, body) = try single { $0.writePasswordMessage("s3cret") }
        #expect(id == FrontendID.password)
        #expect(FrontendMessage.password(body) == "s3cret")
        #expect(FrontendMessage.password(ByteBuffer(bytes: Array("no-terminator".utf8))) == nil)
    }

    @Test func decodeSASLInitialResponse() throws {
        let data = Array("n,,n=,r=nonce".utf8)
        let (id, body) = try single { $0.writeSASLInitialResponse(mechanism: "SCRAM-SHA-256", data: data) }
        #expect(id == FrontendID.password)
        let initial = try #require(FrontendMessage.saslInitialResponse(body))
        #expect(initial.mechanism == "SCRAM-SHA-256")
        #expect(initial.data == data)

        // Length -1 means no data.
        let noData = ByteBuffer(bytes: cstr("SCRAM-SHA-256") + [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(FrontendMessage.saslInitialResponse(noData)?.data == [])
        // A length longer than what follows is rejected.
        let short = ByteBuffer(bytes: cstr("SCRAM-SHA-256") + be32(10) + [1, 2])
        #expect(FrontendMessage.saslInitialResponse(short) == nil)
    }

    @Test func decodersDoNotConsumeTheCallersBuffer() throws {
        let (_, body) = try single { $0.writeParameterStatus(name: "a", value: "b") }
        _ = BackendMessage.parameterStatus(body)
        #expect(BackendMessage.parameterStatus(body)?.name == "a")
    }
}
