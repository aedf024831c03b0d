import NIOCore

/// The first packet a client sends: it has a length but no type byte, and a 4-byte code saying what it is.
public enum StartupPacket: Equatable, Sendable {
    case startup(protocolVersion: Int32, parameters: [(String, String)])
    case sslRequest
    case gssEncryptionRequest
    case cancel(processID: Int32, secretKey: Int32)

    public static let sslRequestCode: Int32 = 80_877_103
    public static let gssEncryptionRequestCode: Int32 = 80_877_104
    public static let cancelRequestCode: Int32 = 80_877_102
    public static let protocolVersion3: Int32 = 196_608
    /// PostgreSQL refuses startup packets larger than this, and so do we.
    public static let maxLength = 10_000

    public static func == (lhs: StartupPacket, rhs: StartupPacket) -> Bool {
        switch (lhs, rhs) {
        case let (.startup(v1, p1), .startup(v2, p2)):
            return v1 == v2 && p1.elementsEqual(p2, by: { $0 == $1 })
        case (.sslRequest, .sslRequest), (.gssEncryptionRequest, .gssEncryptionRequest):
            return true
        case let (.cancel(a1, b1), .cancel(a2, b2)):
            return a1 == a2 && b1 == b2
        default:
            return false
        }
    }

    /// Reads one whole startup packet from `buffer` if it has arrived, consuming it.
    /// Returns nil when more bytes are needed.
    public static func read(from buffer: inout ByteBuffer) throws -> StartupPacket? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: Int32.self) else { return nil }
        guard length >= 8, length <= maxLength else {
            throw WireError.malformedStartup("invalid startup packet length \(length)")
        }
        guard buffer.readableBytes >= Int(length) else { return nil }
        var packet = buffer.readSlice(length: Int(length))!
        packet.moveReaderIndex(forwardBy: 4)
        let code = packet.readInteger(as: Int32.self)!
        switch code {
        case sslRequestCode:
            return .sslRequest
        case gssEncryptionRequestCode:
            return .gssEncryptionRequest
        case cancelRequestCode:
            guard let pid = packet.readInteger(as: Int32.self), let key = packet.readInteger(as: Int32.self) else {
                throw WireError.malformedStartup("short cancel request")
            }
            return .cancel(processID: pid, secretKey: key)
        default:
            var parameters: [(String, String)] = []
            // Drivers send a handful (user, database, application_name, client_encoding, ...): one allocation.
            parameters.reserveCapacity(8)
            while true {
                guard let name = packet.readNullTerminatedString() else {
                    throw WireError.malformedStartup("unterminated startup parameter")
                }
                if name.isEmpty { break }
                guard let value = packet.readNullTerminatedString() else {
                    throw WireError.malformedStartup("startup parameter \(name) has no value")
                }
                parameters.append((name, value))
            }
            return .startup(protocolVersion: code, parameters: parameters)
        }
    }
}
