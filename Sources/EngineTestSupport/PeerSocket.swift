import Glibc
import LifeguardEngine
import NIOCore

/// The far end of a test connection: a plain blocking socket the test drives by hand while the engine loop
/// under test runs on the same thread (not linked into lifeguard).
public final class PeerSocket {
    public private(set) var fd: Int32

    /// Connects to `address` (a listener on the loop under test; the kernel completes the handshake from
    /// the backlog, so the loop need not run first).
    public init(connectingTo address: SocketAddress) throws {
        fd = socket(Int32(address.protocol.rawValue), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket") }
        guard address.withSockAddr({ Glibc.connect(fd, $0, socklen_t($1)) }) == 0 else {
            let error = SocketError("connect")
            Glibc.close(fd)
            throw error
        }
    }

    deinit { close() }

    public func write(_ bytes: ByteBuffer) throws {
        var rest = bytes
        while rest.readableBytes > 0 {
            let sent = rest.withUnsafeReadableBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw SocketError("send") }
            rest.moveReaderIndex(forwardBy: sent)
        }
    }

    /// Everything received so far, without waiting.
    public func readAvailable() -> ByteBuffer {
        var received = ByteBuffer()
        while true {
            var chunk = [UInt8](repeating: 0, count: 65_536)
            let count = recv(fd, &chunk, chunk.count, Int32(MSG_DONTWAIT))
            guard count > 0 else { return received }
            received.writeBytes(chunk[..<count])
        }
    }

    /// True once the other end has closed and everything it sent has been read.
    public var isClosedByPeer: Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 0
    }

    /// Shrinks the receive buffer, so that a test can fill it.
    public func setReceiveBuffer(_ bytes: Int32) {
        var value = bytes
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
}

extension EngineLoop {
    /// Turns the loop until `done` holds or `timeout` seconds pass; returns `done()`.
    @discardableResult
    public func run(until done: () -> Bool, timeout: Double = 5) -> Bool {
        let deadline = NIODeadline.now() + .nanoseconds(Int64(timeout * 1e9))
        while !done(), NIODeadline.now() < deadline {
            runOnce(maxWaitMilliseconds: 10)
        }
        return done()
    }

    /// Turns the loop until nothing is ready for `quiet` seconds: what a test sent has been handled.
    public func settle(quiet: Double = 0.02) {
        let milliseconds = Int32(quiet * 1000)
        for _ in 0..<3 { runOnce(maxWaitMilliseconds: milliseconds) }
    }
}
