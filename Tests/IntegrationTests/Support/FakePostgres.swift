import Foundation
import Glibc

/// A TCP listener that plays PostgreSQL's side of one login as a hostile server would: it offers SCRAM, reads
/// Lifeguard's client-first-message, then sends what `afterClientFirst` returns (given the client's nonce).
final class FakePostgres: @unchecked Sendable {
    let port: Int
    private let listener: Int32

    init(afterClientFirst: @escaping @Sendable (_ clientNonce: String) -> [UInt8]) throws {
        let (listener, port) = try loopbackListener(backlog: 4)
        self.listener = listener
        self.port = port
        Thread.detachNewThread {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            defer { Glibc.close(connection) }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            guard Self.readPacket(connection, typed: false) != nil else { return }  // startup
            let mechanisms = Array("SCRAM-SHA-256".utf8) + [0, 0]
            Self.write(connection, Self.authentication(code: 10, mechanisms))
            guard let initial = Self.readPacket(connection, typed: true) else { return }
            let text = String(decoding: initial, as: UTF8.self)
            let nonce = text.components(separatedBy: "r=").last.map { String($0.prefix { $0 != "," && $0 != "\0" }) } ?? ""
            Self.write(connection, afterClientFirst(nonce))
            // Hold the connection until Lifeguard closes it.
            _ = Self.readPacket(connection, typed: true)
        }
    }

    deinit { Glibc.close(listener) }

    /// An `R` message with `code` and `data`.
    static func authentication(code: Int32, _ data: [UInt8] = []) -> [UInt8] {
        RawSocket.message("R", RawSocket.bigEndian(code) + data)
    }

    private static func write(_ fd: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// One packet's body (after the type byte, if `typed`, and the length).
    private static func readPacket(_ fd: Int32, typed: Bool) -> [UInt8]? {
        guard let header = readExactly(fd, typed ? 5 : 4) else { return nil }
        let lengthBytes = header.suffix(4)
        let length = lengthBytes.reduce(0) { $0 << 8 | Int($1) }
        guard length >= 4, length < 1 << 20 else { return nil }
        return readExactly(fd, length - 4)
    }

    private static func readExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let received = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + filled, count - filled, 0) }
            if received <= 0 { return nil }
            filled += received
        }
        return bytes
    }
}
