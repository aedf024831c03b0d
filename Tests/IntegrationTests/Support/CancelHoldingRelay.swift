import Foundation
import Glibc
import NIOConcurrencyHelpers

/// A TCP relay in front of PostgreSQL that passes every connection through, except CancelRequests: those it
/// swallows and keeps open, like a server slow to act on a cancel.
final class CancelHoldingRelay: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private let heldCancels = NIOLockedValueBox<[Int32]>([])

    init(targetPort: Int) throws {
        (listener, port) = try loopbackListener(backlog: 64)
        let listener = self.listener
        let held = heldCancels
        // Dedicated threads, not Dispatch: these loops block, and Dispatch's pool is as wide as the CPU count.
        Thread.detachNewThread {
            while true {
                let client = accept(listener, nil, nil)
                if client < 0 { return }
                Thread.detachNewThread { Self.serve(client, targetPort: targetPort, held: held) }
            }
        }
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for fd in heldCancels.withLockedValue({ $0 }) { close(fd) }
    }

    private static func serve(_ client: Int32, targetPort: Int, held: NIOLockedValueBox<[Int32]>) {
        var header = [UInt8](repeating: 0, count: 8)
        guard recv(client, &header, 8, Int32(MSG_PEEK | MSG_WAITALL)) == 8 else {
            close(client)
            return
        }
        if header == [0, 0, 0, 16, 4, 210, 22, 46] {  // length 16, code 80877102: CancelRequest
            held.withLockedValue { $0.append(client) }
            return
        }
        guard let upstream = try? RawSocket.connectedDescriptor(port: targetPort) else {
            close(client)
            return
        }
        Thread.detachNewThread { pump(from: upstream, to: client) }
        pump(from: client, to: upstream)
    }

    private static func pump(from source: Int32, to target: Int32) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(source, &buffer, buffer.count, 0)
            if count <= 0 { break }
            var sent = 0
            while sent < count {
                let written = buffer[sent..<count].withUnsafeBytes { send(target, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if written <= 0 { break }
                sent += written
            }
        }
        shutdown(target, Int32(SHUT_WR))
    }
}
