import CLinuxShims
import Glibc
import NIOCore

/// A listening socket on the loop: accepts every pending connection when readable and hands each to
/// `onAccept`, already watched by the loop (its delegate must be set before the loop turns again).
public final class Listener: ReadinessHandler {
    public unowned let loop: EngineLoop
    private var fd: Int32
    private let isUnixSocket: Bool
    private let onAccept: (Connection) -> Void
    /// Set on every accepted socket (TCP listeners only).
    private let acceptedOptions: [SocketOptionSetting]
    /// Accepts per readiness, so that a connection storm does not starve established connections.
    private static let acceptsPerWake = 64

    private init(
        loop: EngineLoop, fd: Int32, isUnixSocket: Bool, acceptedOptions: [SocketOptionSetting],
        onAccept: @escaping (Connection) -> Void
    ) throws {
        self.loop = loop
        self.fd = fd
        self.isUnixSocket = isUnixSocket
        self.acceptedOptions = acceptedOptions
        self.onAccept = onAccept
        try loop.watch(fd, events: UInt32(EPOLLIN.rawValue), handler: self)
    }

    /// Listens on `address` (an IP address, or a Unix socket path given as a `.unixDomainSocket` address).
    /// `listenerOptions` go on the listening socket (accepted sockets inherit them); TCP_NODELAY is set on
    /// each accepted TCP socket.
    public static func listen(
        on address: SocketAddress, backlog: Int32, listenerOptions: [SocketOptionSetting], loop: EngineLoop,
        onAccept: @escaping (Connection) -> Void
    ) throws -> Listener {
        let family = Int32(address.protocol.rawValue)
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket") }
        do {
            Connection.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            for (level, name, value) in listenerOptions { Connection.setOption(fd, level, name, value) }
            guard address.withSockAddr({ bind(fd, $0, socklen_t($1)) }) == 0 else { throw SocketError("bind") }
            guard Glibc.listen(fd, backlog) == 0 else { throw SocketError("listen") }
            let isUnix = family == AF_UNIX
            return try Listener(
                loop: loop, fd: fd, isUnixSocket: isUnix,
                acceptedOptions: isUnix ? [] : [(Int32(IPPROTO_TCP), Int32(TCP_NODELAY), 1)], onAccept: onAccept)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// The bound address (with the port the kernel chose for port 0).
    public var localAddress: SocketAddress? {
        fd >= 0 ? SocketAddress(localAddressOf: fd) : nil
    }

    public func close() {
        guard fd >= 0 else { return }
        loop.unwatch(fd)
        Glibc.close(fd)
        fd = -1
    }

    func descriptorReady(_ events: UInt32) {
        for _ in 0..<Self.acceptsPerWake where fd >= 0 {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let client = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { lifeguard_accept(fd, $0, &length) }
            }
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return  // EAGAIN, or out of descriptors: the backlog waits for the next readiness
            }
            for (level, name, value) in acceptedOptions { Connection.setOption(client, level, name, value) }
            do {
                let connection = try Connection.accepted(
                    fd: client, peer: PeerAddress(storage), on: loop)
                onAccept(connection)
            } catch {
                Glibc.close(client)
            }
        }
    }
}
