import Foundation
import Glibc

/// A TCP listener that plays PostgreSQL's side of one login as a hostile server would: it offers SCRAM, reads
/// Lifeguard's client-first-message, then sends what `afterClientFirst` returns (given the client's nonce).
final class FakePostgres: @unchecked Sendable {
    let port: Int
    private let listener: Int32

    init(afterClientFirst: @escaping @Sendable (_ clientNonce: String) -> [UInt8]) throws {
        port = freePort()
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var reuse: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &reuse, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(listener, 4) == 0 else { throw PGConnection.Failure(message: "fake server: bind failed") }
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
