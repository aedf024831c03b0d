import NIOCore

/// Writers for the messages the pooler produces itself. Each appends one whole message to a buffer.
extension ByteBuffer {
    /// Appends a typed message whose body is written by `body`; the length is patched in afterwards.
    @inlinable
    public mutating func writeMessage(_ id: UInt8, _ body: (inout ByteBuffer) -> Void) {
        writeInteger(id)
        let lengthIndex = writerIndex
        writeInteger(Int32(0))
        body(&self)
        setInteger(Int32(writerIndex - lengthIndex), at: lengthIndex)
    }

    // MARK: Backend messages (to clients)

    public mutating func writeAuthenticationOK() {
        writeMessage(BackendID.authentication) { $0.writeInteger(AuthenticationCode.ok) }
    }

    public mutating func writeAuthenticationCleartext() {
        writeMessage(BackendID.authentication) { $0.writeInteger(AuthenticationCode.cleartextPassword) }
    }

    public mutating func writeAuthenticationMD5(salt: [UInt8]) {
        writeMessage(BackendID.authentication) {
            $0.writeInteger(AuthenticationCode.md5Password)
            $0.writeBytes(salt)
        }
    }

    public mutating func writeAuthenticationSASL(mechanisms: [String]) {
        writeMessage(BackendID.authentication) {
            $0.writeInteger(AuthenticationCode.sasl)
            for mechanism in mechanisms { $0.writeNullTerminatedString(mechanism) }
            $0.writeInteger(UInt8(0))
        }
    }

    public mutating func writeAuthenticationSASLContinue(_ data: [UInt8]) {
        writeMessage(BackendID.authentication) {
            $0.writeInteger(AuthenticationCode.saslContinue)
            $0.writeBytes(data)
        }
    }

    public mutating func writeAuthenticationSASLFinal(_ data: [UInt8]) {
        writeMessage(BackendID.authentication) {
            $0.writeInteger(AuthenticationCode.saslFinal)
            $0.writeBytes(data)
        }
    }

    public mutating func writeParameterStatus(name: String, value: String) {
        writeMessage(BackendID.parameterStatus) {
            $0.writeNullTerminatedString(name)
            $0.writeNullTerminatedString(value)
        }
    }

    public mutating func writeBackendKeyData(processID: Int32, secretKey: Int32) {
        writeMessage(BackendID.backendKeyData) {
            $0.writeInteger(processID)
            $0.writeInteger(secretKey)
        }
    }

    public mutating func writeReadyForQuery(_ status: TransactionStatus) {
        writeMessage(BackendID.readyForQuery) { $0.writeInteger(status.rawValue) }
    }

    public mutating func writeCommandComplete(_ tag: String) {
        writeMessage(BackendID.commandComplete) { $0.writeNullTerminatedString(tag) }
    }

    /// An ErrorResponse or NoticeResponse with the three fields PgBouncer sends: severity, code, message.
    public mutating func writeErrorResponse(severity: String, code: String, message: String, notice: Bool = false) {
        writeMessage(notice ? BackendID.noticeResponse : BackendID.errorResponse) {
            $0.writeInteger(UInt8(ascii: "S"))
            $0.writeNullTerminatedString(severity)
            $0.writeInteger(UInt8(ascii: "V"))
            $0.writeNullTerminatedString(severity)
            $0.writeInteger(UInt8(ascii: "C"))
            $0.writeNullTerminatedString(code)
            $0.writeInteger(UInt8(ascii: "M"))
            $0.writeNullTerminatedString(message)
            $0.writeInteger(UInt8(0))
        }
    }

    // MARK: Frontend messages (to servers)

    public mutating func writeStartupMessage(parameters: [(String, String)]) {
        let lengthIndex = writerIndex
        writeInteger(Int32(0))
        writeInteger(StartupPacket.protocolVersion3)
        for (name, value) in parameters {
            writeNullTerminatedString(name)
            writeNullTerminatedString(value)
        }
        writeInteger(UInt8(0))
        setInteger(Int32(writerIndex - lengthIndex), at: lengthIndex)
    }

    public mutating func writeCancelRequest(processID: Int32, secretKey: Int32) {
        writeInteger(Int32(16))
        writeInteger(StartupPacket.cancelRequestCode)
        writeInteger(processID)
        writeInteger(secretKey)
    }

    public mutating func writeSSLRequest() {
        writeInteger(Int32(8))
        writeInteger(StartupPacket.sslRequestCode)
    }

    public mutating func writePasswordMessage(_ password: String) {
        writeMessage(FrontendID.password) { $0.writeNullTerminatedString(password) }
    }

    public mutating func writeSASLInitialResponse(mechanism: String, data: [UInt8]) {
        writeMessage(FrontendID.password) {
            $0.writeNullTerminatedString(mechanism)
            $0.writeInteger(Int32(data.count))
            $0.writeBytes(data)
        }
    }

    public mutating func writeSASLResponse(_ data: [UInt8]) {
        writeMessage(FrontendID.password) { $0.writeBytes(data) }
    }

    public mutating func writeQuery(_ sql: String) {
        writeMessage(FrontendID.query) { $0.writeNullTerminatedString(sql) }
    }

    public mutating func writeTerminate() {
        writeMessage(FrontendID.terminate) { _ in }
    }
}
