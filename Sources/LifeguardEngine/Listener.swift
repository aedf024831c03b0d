import CLinuxShims
import Glibc
import NIOCore

/// A listening socket on the loop: accepts pending connections when readable and hands each to
/// `onAccept`, already watched by the loop (its delegate must be set before the loop turns again).
///
/// Several loops can watch one listening socket (`alsoWatch`): each is woken alone (EPOLLEXCLUSIVE) and
/// takes a few connections per wake, so new clients spread over the loops.
public final class Listener: ReadinessHandler {
    public unowned let loop: EngineLoop
    private var fd: Int32
    /// The first listener of a socket owns it and closes it; the others only stop watching it.
    private let ownsSocket: Bool
    private let isUnixSocket: Bool
    private let onAccept: (Connection) -> Void
    /// Set on every accepted socket (TCP listeners only).
    private let acceptedOptions: [SocketOptionSetting]
    /// The largest send on an accepted socket (see `Connection.sendLimit`).
    private let sendLimit: Int
    /// Accepts per readiness, so that a connection storm does not starve established connections; small
    /// when loops share the socket, so that one loop does not take a whole burst.
    private let acceptsPerWake: Int

    private init(
        loop: EngineLoop, fd: Int32, ownsSocket: Bool, shared: Bool, isUnixSocket: Bool,
        acceptedOptions: [SocketOptionSetting], sendLimit: Int, onAccept: @escaping (Connection) -> Void
    ) throws {
        self.sendLimit = sendLimit
        self.loop = loop
        self.fd = fd
        self.ownsSocket = ownsSocket
        self.isUnixSocket = isUnixSocket
        self.acceptedOptions = acceptedOptions
        self.onAccept = onAccept
        self.acceptsPerWake = shared ? 4 : 64
        let events = UInt32(EPOLLIN.rawValue) | (shared ? UInt32(EPOLLEXCLUSIVE.rawValue) : 0)
        try loop.watch(fd, events: events, handler: self)
    }

    /// Listens on `address` (an IP address, or a Unix socket path given as a `.unixDomainSocket` address).
    /// `listenerOptions` go on the listening socket (accepted sockets inherit them); TCP_NODELAY is set on
    /// each accepted TCP socket.
    /// `shared`: other loops will watch the socket too (`alsoWatch`).
    public static func listen(
        on address: SocketAddress, backlog: Int32, listenerOptions: [SocketOptionSetting], loop: EngineLoop,
        shared: Bool = false, onAccept: @escaping (Connection) -> Void
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
                loop: loop, fd: fd, ownsSocket: true, shared: shared, isUnixSocket: isUnix,
                acceptedOptions: isUnix ? [] : [(Int32(IPPROTO_TCP), Int32(TCP_NODELAY), 1)],
                sendLimit: Connection.sendLimit(for: listenerOptions), onAccept: onAccept)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// The bound address (with the port the kernel chose for port 0).
    public var localAddress: SocketAddress? {
        fd >= 0 ? SocketAddress(localAddressOf: fd) : nil
    }

    /// Watches this listener's socket on `other` too; close the returned listener before this one.
    public func alsoWatch(on other: EngineLoop, onAccept: @escaping (Connection) -> Void) throws -> Listener {
        try Listener(
            loop: other, fd: fd, ownsSocket: false, shared: true, isUnixSocket: isUnixSocket,
            acceptedOptions: acceptedOptions, sendLimit: sendLimit, onAccept: onAccept)
    }

    /// Stops accepting on this loop; the owner also closes the socket. Call on the loop's thread, or with
    /// the loop parked.
    public func close() {
        guard fd >= 0 else { return }
        if ownsSocket {
            loop.unwatch(fd)
            Glibc.close(fd)
        } else {
            loop.unwatchAndRemove(fd)
        }
        fd = -1
    }

    func descriptorReady(_ events: UInt32) {
        for _ in 0..<acceptsPerWake where fd >= 0 {
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
                connection.sendLimit = sendLimit
                onAccept(connection)
            } catch {
                Glibc.close(client)
            }
        }
    }
}
