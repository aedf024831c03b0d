import CLinuxShims
import Glibc
import NIOCore

/// A socket option as (level, name, value), set with setsockopt.
public typealias SocketOptionSetting = (level: Int32, name: Int32, value: Int)

/// What a connection tells its owner (a client session, a server connection, a console session).
public protocol ConnectionDelegate: AnyObject {
    /// An outgoing connection is established.
    func connectionConnected(_ connection: Connection)
    /// An outgoing connection could not be established; it is closed, and no other call follows.
    func connectionFailed(_ connection: Connection, error: SocketError)
    /// One read's bytes. They are a slice of the loop's read buffer: keeping them is allowed (the next read
    /// then lands elsewhere), but costs that buffer.
    func connectionRead(_ connection: Connection, _ bytes: ByteBuffer)
    /// The read is handled: the time to flush what it produced.
    func connectionReadComplete(_ connection: Connection)
    /// Queued writes fell below the low watermark after having passed the high one.
    func connectionWritable(_ connection: Connection)
    /// The connection closed (by either side); `error` says why when a system call failed.
    func connectionClosed(_ connection: Connection, error: SocketError?)
}

extension ConnectionDelegate {
    public func connectionConnected(_ connection: Connection) {}
    public func connectionFailed(_ connection: Connection, error: SocketError) {}
    public func connectionWritable(_ connection: Connection) {}
}

/// A non-blocking socket with a queue of outgoing buffers, PgBouncer's sbuf in Swift.
///
/// Reads land in the loop's shared buffer and go to the delegate as they came; writes queue until `flush`,
/// which sends them in one `send` or `sendmsg` call. What the kernel does not take waits for EPOLLOUT.
/// Reads can be held (the peer of this connection cannot take more, or bytes wait for a server); holding is
/// lazy, so a hold released before the next readiness costs no system call.
public final class Connection: ReadinessHandler {
    private enum State {
        case connecting
        case open
        case closed
    }

    /// The loop outlives its connections; unchecked, as a checked reference costs reference counting on
    /// every read and write.
    public private(set) unowned(unsafe) var loop: EngineLoop
    public private(set) var fd: Int32
    public var delegate: ConnectionDelegate?
    private var state: State
    /// The events registered in epoll.
    private var interest: UInt32
    private var queued: [ByteBuffer] = []
    private var queuedBytes = 0
    private var waitingForWritable = false
    public private(set) var isWritable = true
    /// Set by the owner to stop reading; takes effect at the next readiness.
    public var readsHeld = false {
        didSet {
            if !readsHeld, oldValue, state == .open, interest & Self.readable == 0 {
                setInterest(interest | Self.readable)
            }
        }
    }
    private var closesWhenWritten = false
    private let peer: PeerAddress
    /// Set once TLS starts: reads are decrypted and writes encrypted through it.
    private var tls: TLSSession?
    /// The most bytes one send passes to the kernel. Unlimited unless SO_SNDBUF was set small
    /// (tcp_socket_buffer): one send larger than the buffer leaves a single big segment in flight, which
    /// the peer may acknowledge only after its delayed-ACK timer (40 ms), so a large result crawled at one
    /// segment per 40 ms. Sends of at most the buffer's size keep several segments going, as PgBouncer's
    /// packet-buffer-sized sends do.
    var sendLimit = Int.max

    /// The send limit that socket options imply: SO_SNDBUF's value, if they set it.
    static func sendLimit(for options: [SocketOptionSetting]) -> Int {
        options.last { $0.level == SOL_SOCKET && $0.name == SO_SNDBUF }.map { max($0.value, 1024) } ?? .max
    }

    /// Past this many queued bytes the connection is not writable (the peer's reads stop) until the queue
    /// falls below the low mark.
    public static let highWatermark = 128 * 1024
    public static let lowWatermark = 32 * 1024
    private static let readable = UInt32(EPOLLIN.rawValue) | UInt32(EPOLLRDHUP.rawValue)
    private static let writable = UInt32(EPOLLOUT.rawValue)

    init(loop: EngineLoop, fd: Int32, peer: PeerAddress, connecting: Bool) {
        self.loop = loop
        self.fd = fd
        self.peer = peer
        self.state = connecting ? .connecting : .open
        self.interest = connecting ? Self.writable : Self.readable
    }

    /// Watches an accepted socket.
    static func accepted(fd: Int32, peer: PeerAddress, on loop: EngineLoop) throws -> Connection {
        let connection = Connection(loop: loop, fd: fd, peer: peer, connecting: false)
        try loop.watch(fd, events: connection.interest, handler: connection)
        return connection
    }

    /// Starts connecting to `address`; the delegate hears `connectionConnected` or `connectionFailed`.
    /// `options` are (level, name, value) socket options set before connecting.
    public static func connect(
        to address: SocketAddress, options: [SocketOptionSetting], on loop: EngineLoop,
        delegate: ConnectionDelegate
    ) throws -> Connection {
        let family = Int32(address.protocol.rawValue)
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket") }
        if family != AF_UNIX { setOption(fd, Int32(IPPROTO_TCP), Int32(TCP_NODELAY), 1) }
        for (level, name, value) in options { setOption(fd, level, name, value) }
        let result = address.withSockAddr { Glibc.connect(fd, $0, socklen_t($1)) }
        guard result == 0 || errno == EINPROGRESS else {
            let error = SocketError("connect", errorNumber: errno)
            Glibc.close(fd)
            throw error
        }
        let connection = Connection(loop: loop, fd: fd, peer: .resolved(address), connecting: true)
        connection.delegate = delegate
        connection.sendLimit = sendLimit(for: options)
        do {
            try loop.watch(fd, events: connection.interest, handler: connection)
        } catch {
            Glibc.close(fd)
            throw error
        }
        return connection
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int) {
        var value = Int32(clamping: value)
        _ = setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    public var isOpen: Bool { state != .closed }

    /// Whether the peer has gone, asked of the socket itself (a peek, no read): a connection whose reads are
    /// held does not hear of it otherwise. A system call: for slow paths only.
    public var peerHasGone: Bool {
        guard state != .closed else { return true }
        var byte: UInt8 = 0
        let count = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        if count == 0 { return true }
        return count < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR
    }

    /// The peer's address. Built when asked for: its text form costs an inet_ntop, a tenth of accepting a
    /// client, and only log lines and SHOW lists need it.
    public var remoteAddress: SocketAddress? { peer.socketAddress }

    /// The peer is on a Unix-domain socket (it may then enter the console by its user id).
    public var isUnixDomainSocket: Bool { peer.isUnixDomainSocket }

    /// The local end's address (getsockname, asked only when a log line or SHOW list needs it).
    public var localAddress: SocketAddress? {
        state == .closed ? nil : SocketAddress(localAddressOf: fd)
    }

    /// The peer's process and user, for a Unix-socket connection.
    public var peerCredentials: lifeguard_peer_credentials? {
        var credentials = lifeguard_peer_credentials()
        var length = socklen_t(MemoryLayout<lifeguard_peer_credentials>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else { return nil }
        return credentials
    }

    // MARK: Writing

    /// Queues `bytes`; nothing is sent before `flush`.
    public func write(_ bytes: ByteBuffer) {
        guard state != .closed, bytes.readableBytes > 0 else { return }
        if let tls {
            var ciphertext = ByteBuffer()
            do {
                try tls.send(bytes, into: &ciphertext)
            } catch {
                close(error: SocketError("TLS", reason: "\(error)"))
                return
            }
            if ciphertext.readableBytes > 0 { queue(ciphertext) }
            return
        }
        queue(bytes)
    }

    private func queue(_ bytes: ByteBuffer) {
        queued.append(bytes)
        queuedBytes += bytes.readableBytes
        if isWritable, queuedBytes > Self.highWatermark { isWritable = false }
    }

    /// Sends what is queued, as far as the kernel takes it.
    public func flush() {
        guard state == .open, !waitingForWritable, !queued.isEmpty else { return }
        sendQueued()
    }

    public func writeAndFlush(_ bytes: ByteBuffer) {
        write(bytes)
        flush()
    }

    private func sendQueued() {
        while !queued.isEmpty {
            let sent = queued.count == 1 ? sendOne() : sendGathered()
            if sent < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
                close(error: SocketError("write"))
                return
            }
            consume(sent)
        }
        if queued.isEmpty {
            // A queue that once held a flood gives its storage back.
            if queued.capacity > 64 { queued = [] }
            if waitingForWritable {
                waitingForWritable = false
                setInterest(interest & ~Self.writable)
            }
            if closesWhenWritten {
                close()
                return
            }
        } else if !waitingForWritable {
            waitingForWritable = true
            setInterest(interest | Self.writable)
        }
        if !isWritable, queuedBytes < Self.lowWatermark {
            isWritable = true
            delegate?.connectionWritable(self)
        }
    }

    private func sendOne() -> Int {
        let limit = sendLimit
        return queued[0].withUnsafeReadableBytes {
            send(fd, $0.baseAddress, min($0.count, limit), Int32(MSG_NOSIGNAL))
        }
    }

    /// One sendmsg for up to 64 queued buffers (at most `sendLimit` bytes of them).
    private func sendGathered() -> Int {
        var count = min(queued.count, 64)
        var room = sendLimit
        return withUnsafeTemporaryAllocation(of: iovec.self, capacity: count) { vectors in
            // The buffers stay in `queued` during the call, so their storage outlives the pointers.
            for index in 0..<count {
                queued[index].withUnsafeReadableBytes {
                    let length = min($0.count, room)
                    vectors[index] = iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: length)
                    room -= length
                }
                if room == 0 {
                    count = index + 1
                    break
                }
            }
            var message = msghdr()
            message.msg_iov = vectors.baseAddress
            message.msg_iovlen = count
            return sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
        }
    }

    private func consume(_ sent: Int) {
        queuedBytes -= sent
        var left = sent
        var whole = 0
        while whole < queued.count, queued[whole].readableBytes <= left {
            left -= queued[whole].readableBytes
            whole += 1
        }
        if whole == queued.count {
            // Not removeAll(keepingCapacity:), whose generic path costs more than the write's bookkeeping.
            while !queued.isEmpty { queued.removeLast() }
        } else {
            if whole > 0 { queued.removeFirst(whole) }
            queued[0].moveReaderIndex(forwardBy: left)
        }
    }

    // MARK: TLS

    /// From now on the socket carries TLS through `session`: Lifeguard's side of a client's SSLRequest
    /// (the `S` already sent), or towards a server that answered `S` (its handshake starts at once).
    public func startTLS(_ session: TLSSession) throws {
        tls = session
        guard !session.isHandshakeDone else { return }
        try session.start()
        sendTLSOutput()
    }

    /// A client that began with a TLS hello (PostgreSQL 17's direct TLS): `received`, the bytes read so far,
    /// go to the handshake, and whatever they complete to the delegate as usual.
    public func startTLS(_ session: TLSSession, received: ByteBuffer) {
        tls = session
        receiveTLS(session, received)
    }

    /// The client agreed on ALPN "postgresql".
    public var tlsNegotiatedPostgreSQLProtocol: Bool { tls?.negotiatedPostgreSQLProtocol ?? false }

    /// The negotiated version and cipher, once the handshake is done; nil without TLS.
    public var tlsSummary: String? {
        guard let tls, tls.isHandshakeDone else { return nil }
        return tls.summary
    }

    /// The CN of the peer's verified certificate (client certificate authentication).
    public var tlsPeerCommonName: String? { tls?.peerCommonName }

    /// RFC 5929's tls-server-end-point data of Lifeguard's own certificate, for SCRAM channel binding.
    public var tlsServerEndPoint: [UInt8]? {
        guard let tls, tls.isHandshakeDone else { return nil }
        return tls.serverEndPoint
    }

    private func sendTLSOutput() {
        guard let tls else { return }
        var ciphertext = ByteBuffer()
        tls.takeOutput(into: &ciphertext)
        if ciphertext.readableBytes > 0 {
            queue(ciphertext)
            flush()
        }
    }

    /// A read under TLS: decrypted, answered (handshake, alerts) and handed on as plaintext.
    private func receiveTLS(_ tls: TLSSession, _ ciphertext: ByteBuffer) {
        var plaintext = ByteBuffer()
        do {
            try ciphertext.withUnsafeReadableBytes { try tls.receive($0, into: &plaintext) }
        } catch {
            sendTLSOutput()  // the alert that says why, if OpenSSL made one
            close(error: SocketError("TLS", reason: "\(error)"))
            return
        }
        sendTLSOutput()
        if plaintext.readableBytes > 0, let delegate {
            delegate.connectionRead(self, plaintext)
            delegate.connectionReadComplete(self)
        }
        if tls.peerClosed, state != .closed { close() }
    }

    // MARK: Moving between loops

    /// Whether the connection can move to another loop: open, with nothing queued to write.
    public var canMove: Bool { state == .open && queued.isEmpty && !closesWhenWritten }

    /// On the current loop's thread: stops watching the socket here, so that another loop can `attach` it.
    /// Nothing about it runs until then; bytes that arrive meanwhile wait in the kernel.
    public func detach() {
        precondition(canMove, "only an open connection with nothing queued moves")
        loop.unwatchAndRemove(fd)
    }

    /// On `newLoop`'s thread: watches the detached socket there, with the events it was watched for.
    public func attach(to newLoop: EngineLoop) throws {
        loop = newLoop
        do {
            try newLoop.watch(fd, events: interest, handler: self)
        } catch {
            close(error: SocketError("epoll_ctl"))
            throw error
        }
    }

    /// Closes a detached connection that no loop will adopt, without touching any loop; nobody is told.
    public func abandon() {
        guard state != .closed else { return }
        state = .closed
        Glibc.close(fd)
        fd = -1
        queued = []
        queuedBytes = 0
        delegate = nil
    }

    // MARK: Closing

    /// Closes at once; queued writes are dropped. The delegate hears `connectionClosed` after the current event.
    public func close() {
        close(error: nil)
    }

    /// Sends what is queued (with `last`), then closes: at once when the peer is not reading, otherwise once
    /// it is written or `grace` seconds have passed. A peer that stops reading can never hold it open.
    public func closeAfterWriting(_ last: ByteBuffer? = nil, grace: Double = 1) {
        guard state == .open else {
            close()
            return
        }
        guard isWritable else {
            close()
            return
        }
        readsHeld = true
        closesWhenWritten = true
        if let last { write(last) }
        if queued.isEmpty {
            close()
            return
        }
        flush()
        if state != .closed {
            loop.schedule(after: grace) { self.close() }  // a no-op if it closed meanwhile
        }
    }

    private func close(error: SocketError?) {
        guard state != .closed else { return }
        let wasConnecting = state == .connecting
        state = .closed
        loop.unwatch(fd)
        Glibc.close(fd)
        fd = -1
        queued = []
        queuedBytes = 0
        loop.deferTask { [self] in
            let delegate = self.delegate
            self.delegate = nil
            if wasConnecting {
                delegate?.connectionFailed(self, error: error ?? SocketError("connect", errorNumber: ECONNABORTED))
            } else {
                delegate?.connectionClosed(self, error: error)
            }
        }
    }

    // MARK: Readiness

    func descriptorReady(_ events: UInt32) {
        switch state {
        case .connecting:
            finishConnecting()
        case .open:
            if events & Self.writable != 0, waitingForWritable {
                sendQueued()
                if state == .closed { return }
            }
            if events & UInt32(EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0, readsHeld {
                // Reported whether asked for or not: with reads held, nothing else would notice the end.
                var code: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
                close(error: code != 0 ? SocketError("read", errorNumber: code) : nil)
                return
            }
            if events & ~Self.writable != 0 { readReady() }
        case .closed:
            break
        }
    }

    private func finishConnecting() {
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length) != 0 { code = errno }
        guard code == 0 else {
            close(error: SocketError("connect", errorNumber: code))
            return
        }
        state = .open
        setInterest(readsHeld ? 0 : Self.readable)
        delegate?.connectionConnected(self)
        // Writes queued before the connection was up go now.
        if state == .open { flush() }
    }

    private func readReady() {
        if readsHeld {
            if interest & Self.readable != 0 { setInterest(interest & ~Self.readable) }
            return
        }
        loop.readBuffer.clear()
        var failure: Int32 = 0
        let count = loop.readBuffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { pointer in
            let count = Glibc.read(fd, pointer.baseAddress, pointer.count)
            if count < 0 { failure = errno }
            return max(count, 0)
        }
        if count > 0 {
            if let tls { return receiveTLS(tls, loop.readBuffer) }
            guard let delegate else { return }
            delegate.connectionRead(self, loop.readBuffer)
            delegate.connectionReadComplete(self)
        } else if failure == 0 {
            close()  // end of stream
        } else if failure != EAGAIN, failure != EWOULDBLOCK, failure != EINTR {
            close(error: SocketError("read", errorNumber: failure))
        }
    }

    private func setInterest(_ events: UInt32) {
        guard events != interest, state != .closed else { return }
        interest = events
        loop.changeEvents(of: fd, to: events)
    }
}

/// A peer's address as accept or connect gave it.
enum PeerAddress {
    case ipv4(sockaddr_in)
    case ipv6(sockaddr_in6)
    case unixDomainSocket
    case resolved(SocketAddress)
    case unknown

    init(_ storage: sockaddr_storage) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            self = .ipv4(withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) })
        case AF_INET6:
            self = .ipv6(withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) })
        case AF_UNIX:
            self = .unixDomainSocket
        default:
            self = .unknown
        }
    }

    var socketAddress: SocketAddress? {
        switch self {
        case .ipv4(let address): return SocketAddress(address)
        case .ipv6(let address): return SocketAddress(address)
        case .unixDomainSocket:
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            return SocketAddress(address)
        case .resolved(let address): return address
        case .unknown: return nil
        }
    }

    var isUnixDomainSocket: Bool {
        switch self {
        case .unixDomainSocket: return true
        case .resolved(let address): return address.protocol == .unix
        case .ipv4, .ipv6, .unknown: return false
        }
    }
}

extension SocketAddress {
    /// The address a socket is bound to (getsockname).
    init?(localAddressOf fd: Int32) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard result == 0 else { return nil }
        self.init(storage)
    }

    /// The address in a sockaddr_storage (accept, getsockname).
    init?(_ storage: sockaddr_storage) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            self = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee) }
            }
        case AF_INET6:
            self = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee) }
            }
        case AF_UNIX:
            self = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_un.self, capacity: 1) { SocketAddress($0.pointee) }
            }
        default:
            return nil
        }
    }
}
