import Foundation
import Glibc

/// A TCP relay in front of PostgreSQL that passes every connection through, except that a server reply
/// containing `marker` gets a FATAL ErrorResponse appended in the same write (as when a backend is
/// terminated just after answering), and the connection is then closed.
final class FatalAfterMarkerRelay: @unchecked Sendable {
    let port: Int
    private let listener: Int32

    /// `listenPort` 0: any free port.
    init(targetPort: Int, marker: String, listenPort: Int = 0) throws {
        (listener, port) = try loopbackListener(backlog: 64, port: listenPort)
        let listener = self.listener
        let marker = Array(marker.utf8)
        Thread.detachNewThread {
            while true {
                let client = accept(listener, nil, nil)
                if client < 0 { return }
                guard let upstream = try? RawSocket.connectedDescriptor(port: targetPort) else {
                    close(client)
                    continue
                }
                Thread.detachNewThread { Self.pump(from: upstream, to: client, marker: marker) }
                Thread.detachNewThread { Self.pump(from: client, to: upstream, marker: nil) }
            }
        }
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private static let fatal: [UInt8] = RawSocket.message(
        "E",
        Array("SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0".utf8))

    private static func pump(from source: Int32, to target: Int32, marker: [UInt8]?) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(source, &buffer, buffer.count, 0)
            if count <= 0 { break }
            var chunk = Array(buffer[0..<count])
            let ending = marker.map { chunk.firstRange(of: $0) != nil } ?? false
            if ending { chunk += fatal }
            var sent = 0
            while sent < chunk.count {
                let written = chunk[sent...].withUnsafeBytes { send(target, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if written <= 0 { break }
                sent += written
            }
            if ending {
                shutdown(source, Int32(SHUT_RDWR))
                break
            }
        }
        shutdown(target, Int32(SHUT_WR))
    }
}
