import EngineTestSupport
import LifeguardCore
import LifeguardEngine
import Logging
import NIOCore
import PostgresWire
import Testing

@testable import Lifeguard

// MARK: Configuration

/// The database every test logs in to. Port 1 on 127.0.0.1: nothing listens there, and no test gets as far as
/// opening a server connection (see `makeShard`).
let testDatabase = "lgtest"
let testUser = "alice"
let testPassword = "s3cret"

func makeConfiguration(
    authType: AuthType, authFile: String? = "/nonexistent/userlist.txt", maxClientConn: Int = 100
) -> Configuration {
    var settings = Settings()
    settings.authType = authType
    settings.authFile = authFile
    settings.maxClientConn = maxClientConn
    settings.logConnections = false
    settings.logDisconnections = false
    settings.logPoolerErrors = false
    let database = DatabaseDefinition(name: testDatabase, host: "127.0.0.1", port: 1, maxDBConnections: 1)
    return Configuration(settings: settings, databases: [testDatabase: database])
}

func makeUserList() -> UserList {
    UserList(secrets: [testUser: testPassword])
}

/// A fresh shard on `loop`: ClientSession registers itself and its cancel key on it, so tests never share one.
func makeShard(on loop: EngineLoop, configuration: Configuration) -> PoolShard {
    let logger = Logger(label: "lifeguard.tests", factory: { _ in SwiftLogNoOpLogHandler() })
    let shard = ShardGroup(
        loops: LoopGroup(loops: [loop]), configuration: configuration, authFiles: AuthFiles(userList: makeUserList()), logger: logger
    ).first
    // Holding the database at its max_db_connections (1) with a server counted for another user keeps the
    // pool from launching one, so an authenticated client stays queued for its pool's first server.
    _ = shard.shared.launchServer(for: PoolKey(database: testDatabase, user: "someone else")) { _, _, _, _ in .launch }
    return shard
}

// MARK: A client connection

/// One client: a TCP connection from a test socket to a ClientSession on `loop`, which only runs while the
/// test turns it.
final class TestClient {
    let loop: EngineLoop
    let shard: PoolShard
    private(set) var session: ClientSession!
    let peer: PeerSocket
    private let listener: Listener

    init(shard: PoolShard, loop: EngineLoop) throws {
        self.loop = loop
        self.shard = shard
        var accepted: ClientSession?
        listener = try Listener.listen(
            on: try SocketAddress(ipAddress: "127.0.0.1", port: 0), backlog: 1, listenerOptions: [], loop: loop
        ) { connection in
            let session = ClientSession(connection: connection, shard: shard)
            session.start()
            accepted = session
        }
        peer = try PeerSocket(connectingTo: listener.localAddress!)
        try #require(loop.run(until: { accepted != nil }), "the loop did not accept the test connection")
        session = accepted
        listener.close()
    }

    /// A new loop, shard and client in one step.
    convenience init(configuration: Configuration) throws {
        let loop = try EngineLoop()
        try self.init(shard: makeShard(on: loop, configuration: configuration), loop: loop)
    }

    func send(_ buffer: ByteBuffer) throws {
        try peer.write(buffer)
        loop.settle()
    }

    /// Sends `buffer` one byte per read.
    func sendByteByByte(_ buffer: ByteBuffer, beforeLast: () throws -> Void = {}) throws {
        let bytes = Array(buffer.readableBytesView)
        for (index, byte) in bytes.enumerated() {
            if index == bytes.count - 1 { try beforeLast() }
            try send(ByteBuffer(bytes: [byte]))
        }
    }

    /// Every byte Lifeguard sent since the last call.
    func received() -> ByteBuffer {
        peer.readAvailable()
    }

    /// Every byte received so far, parsed into backend messages (fails the test on a partial message).
    func outboundMessages(sourceLocation: SourceLocation = #_sourceLocation) throws -> [BackendFrame] {
        try BackendFrame.parseAll(received(), sourceLocation: sourceLocation)
    }

    /// Lifeguard closed the connection (and everything it sent has been read).
    var isClosed: Bool { peer.isClosedByPeer }

    func finish() throws {
        peer.close()
        loop.settle()
    }
}

// MARK: Client packets

enum ClientPacket {
    /// A StartupMessage with an arbitrary protocol version code.
    static func startup(_ parameters: [(String, String)], protocolVersion: Int32 = 196_608) -> ByteBuffer {
        var body = ByteBuffer()
        body.writeInteger(protocolVersion)
        for (name, value) in parameters {
            body.writeNullTerminatedString(name)
            body.writeNullTerminatedString(value)
        }
        body.writeInteger(UInt8(0))
        var packet = ByteBuffer()
        packet.writeInteger(Int32(4 + body.readableBytes))
        packet.writeBuffer(&body)
        return packet
    }

    static func startup(user: String = testUser, database: String = testDatabase) -> ByteBuffer {
        startup([("user", user), ("database", database)])
    }

    /// An 8-byte request with only a code: SSLRequest (80877103) or GSSENCRequest (80877104).
    static func request(code: Int32) -> ByteBuffer {
        var packet = ByteBuffer()
        packet.writeInteger(Int32(8))
        packet.writeInteger(code)
        return packet
    }

    static let sslRequest = request(code: 80_877_103)
    static let gssEncRequest = request(code: 80_877_104)

    static func cancel(processID: Int32, secretKey: Int32) -> ByteBuffer {
        var packet = ByteBuffer()
        packet.writeInteger(Int32(16))
        packet.writeInteger(Int32(80_877_102))
        packet.writeInteger(processID)
        packet.writeInteger(secretKey)
        return packet
    }

    /// PasswordMessage ('p').
    static func password(_ text: String) -> ByteBuffer {
        var packet = ByteBuffer()
        packet.writeInteger(UInt8(ascii: "p"))
        packet.writeInteger(Int32(4 + text.utf8.count + 1))
        packet.writeNullTerminatedString(text)
        return packet
    }
}

// MARK: Backend messages

/// One typed backend message read back from the handler's output.
struct BackendFrame {
    var id: UInt8
    var body: ByteBuffer

    var idCharacter: Character { Character(Unicode.Scalar(id)) }

    static func parseAll(_ buffer: ByteBuffer, sourceLocation: SourceLocation = #_sourceLocation) throws -> [BackendFrame] {
        var buffer = buffer
        var frames: [BackendFrame] = []
        while buffer.readableBytes > 0 {
            let id = buffer.readInteger(as: UInt8.self)
            let length = buffer.readInteger(as: Int32.self)
            let body = length.flatMap { $0 >= 4 ? buffer.readSlice(length: Int($0) - 4) : nil }
            guard let id, let body else {
                throw MalformedOutput("partial or malformed backend message (length \(length.map(String.init) ?? "?"))")
            }
            frames.append(BackendFrame(id: id, body: body))
        }
        return frames
    }

    /// The code of an AuthenticationRequest ('R') and the bytes after it.
    func authentication() throws -> (code: Int32, data: [UInt8]) {
        guard id == UInt8(ascii: "R") else { throw MalformedOutput("expected 'R', got '\(idCharacter)'") }
        var body = body
        guard let code = body.readInteger(as: Int32.self) else { throw MalformedOutput("'R' without a code") }
        return (code, Array(body.readableBytesView))
    }

    /// The fields of an ErrorResponse ('E'), by field type, parsed by hand.
    func errorFields() throws -> [Character: String] {
        guard id == UInt8(ascii: "E") else { throw MalformedOutput("expected 'E', got '\(idCharacter)'") }
        var body = body
        var fields: [Character: String] = [:]
        while true {
            guard let type = body.readInteger(as: UInt8.self) else { throw MalformedOutput("unterminated ErrorResponse") }
            if type == 0 { break }
            guard let value = body.readNullTerminatedString() else { throw MalformedOutput("unterminated field") }
            fields[Character(Unicode.Scalar(type))] = value
        }
        guard body.readableBytes == 0 else { throw MalformedOutput("bytes after the ErrorResponse terminator") }
        return fields
    }
}

struct MalformedOutput: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Asserts the session wrote exactly one FATAL ErrorResponse with `code` and `message` and closed the connection.
func expectFatalAndClosed(
    _ client: TestClient, code: String = "08P01", message: String,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let messages = try client.outboundMessages(sourceLocation: sourceLocation)
    try #require(messages.count == 1, "expected one ErrorResponse, got \(messages.map(\.idCharacter))",
                 sourceLocation: sourceLocation)
    let fields = try messages[0].errorFields()
    #expect(fields["S"] == "FATAL", sourceLocation: sourceLocation)
    #expect(fields["C"] == code, sourceLocation: sourceLocation)
    #expect(fields["M"] == message, sourceLocation: sourceLocation)
    #expect(client.isClosed, "connection still open after a FATAL error", sourceLocation: sourceLocation)
}
