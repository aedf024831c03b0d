import EngineTestSupport
import LifeguardCore
import LifeguardEngine
import NIOCore
import PostgresWire
import Testing

@testable import Lifeguard

/// ClientSession on a real connection from a test socket: startup, authentication and the errors PgBouncer sends before login.
/// No server is ever connected; an authenticated client stays queued for its pool's first server.
@Suite struct ClientSessionTests {
    // MARK: SSL and GSSAPI encryption requests

    /// Neither TLS nor GSSAPI encryption exists yet: both requests are answered "N" and the plain-text
    /// StartupMessage that follows is served.
    @Test(arguments: ["SSLRequest", "GSSENCRequest"])
    func encryptionRequestIsAnsweredWithNThenStartupIsAccepted(request: String) throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        try client.send(request == "SSLRequest" ? ClientPacket.sslRequest : ClientPacket.gssEncRequest)

        #expect(Array(client.received().readableBytesView) == [UInt8(ascii: "N")])
        #expect(!client.isClosed)

        try client.send(ClientPacket.startup())
        let messages = try client.outboundMessages()
        try #require(messages.count == 1)
        #expect(try messages[0].authentication().code == 3)
        #expect(!client.isClosed)
        try client.finish()
    }

    /// As in PostgreSQL, each request is answered once: a client repeating one is cut off, and one of each
    /// is still fine.
    @Test func aRepeatedEncryptionRequestIsABadPacket() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        try client.send(ClientPacket.sslRequest)
        try client.send(ClientPacket.gssEncRequest)
        #expect(Array(client.received().readableBytesView) == [UInt8(ascii: "N"), UInt8(ascii: "N")])
        #expect(!client.isClosed)
        try client.send(ClientPacket.sslRequest)
        try expectFatalAndClosed(client, message: "bad packet header")
        try client.finish()
    }

    @Test func sslRequestAndStartupInOneReadAreBothHandled() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        var both = ClientPacket.sslRequest
        var startup = ClientPacket.startup()
        both.writeBuffer(&startup)
        try client.send(both)

        var bytes = client.received()
        #expect(bytes.readInteger(as: UInt8.self) == UInt8(ascii: "N"))
        let messages = try BackendFrame.parseAll(bytes)
        try #require(messages.count == 1)
        #expect(try messages[0].authentication().code == 3)
        try client.finish()
    }

    // MARK: Startup packet framing

    @Test func startupPacketSplitByteByByteIsAccepted() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        try client.sendByteByByte(ClientPacket.startup()) {
            // Nothing may be answered before the last byte of the packet has arrived.
            #expect(client.received().readableBytes == 0)
            #expect(!client.isClosed)
        }
        let messages = try client.outboundMessages()
        try #require(messages.count == 1)
        #expect(try messages[0].authentication().code == 3)
        #expect(!client.isClosed)
        try client.finish()
    }

    @Test func sslRequestAndStartupSplitByteByByteAreAccepted() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        try client.sendByteByByte(ClientPacket.sslRequest)
        #expect(Array(client.received().readableBytesView) == [UInt8(ascii: "N")])
        try client.sendByteByByte(ClientPacket.startup())
        let messages = try client.outboundMessages()
        try #require(messages.count == 1)
        #expect(try messages[0].authentication().code == 3)
        try client.finish()
    }

    @Test func protocolVersion2IsRefused() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .trust))
        try client.send(ClientPacket.startup([("user", testUser), ("database", testDatabase)], protocolVersion: 0x0002_0000))
        try expectFatalAndClosed(client, code: "08P01", message: "old V2 protocol not supported")
        #expect(client.shard.clientSessions.count == 0)
        try client.finish()
    }

    @Test func unknownStartupParameterIsRefused() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .trust))
        try client.send(ClientPacket.startup([("user", testUser), ("database", testDatabase), ("X", "1")]))
        try expectFatalAndClosed(client, message: "unsupported startup parameter: X")
        try client.finish()
    }

    @Test func missingUserIsRefused() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .trust))
        try client.send(ClientPacket.startup([("database", testDatabase)]))
        try expectFatalAndClosed(client, message: "no username supplied")
        try client.finish()
    }

    @Test func oversizedStartupPacketIsRefused() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .trust))
        var packet = ByteBuffer()
        packet.writeInteger(Int32(10_001))
        packet.writeInteger(Int32(196_608))
        try client.send(packet)
        let messages = try client.outboundMessages()
        try #require(messages.count == 1)
        let fields = try messages[0].errorFields()
        #expect(fields["S"] == "FATAL")
        #expect(fields["C"] == "08P01")
        #expect(fields["M"] == "bad packet header")
        #expect(client.isClosed)
        try client.finish()
    }

    @Test func startupPacketOfExactlyTheLimitIsAccepted() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        // StartupPacket.maxLength is 10000 bytes, length word included; pad a tracked parameter to reach it.
        let base = ClientPacket.startup([("user", testUser), ("database", testDatabase), ("application_name", "")])
        let padding = String(repeating: "a", count: 10_000 - base.readableBytes)
        let packet = ClientPacket.startup(
            [("user", testUser), ("database", testDatabase), ("application_name", padding)])
        try #require(packet.readableBytes == 10_000)
        try client.send(packet)
        let messages = try client.outboundMessages()
        try #require(messages.count == 1)
        #expect(try messages[0].authentication().code == 3)
        #expect(!client.isClosed)
        try client.finish()
    }

    // MARK: auth_type = plain

    @Test func plainAuthWrongPasswordFails() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        try client.send(ClientPacket.startup())
        let challenge = try client.outboundMessages()
        try #require(challenge.count == 1)
        let request = try challenge[0].authentication()
        #expect(request.code == 3)
        #expect(request.data.isEmpty)

        try client.send(ClientPacket.password("wrong"))
        try expectFatalAndClosed(
            client, code: PoolerError.passwordFailed.sqlState, message: "password authentication failed")
        #expect(client.shard.clientSessions.count == 0)
        try client.finish()
    }

    @Test func plainAuthRightPasswordQueuesClientForFirstServer() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        try client.send(ClientPacket.startup())
        let challenge = try client.outboundMessages()
        try #require(challenge.count == 1)
        #expect(try challenge[0].authentication().code == 3)

        try client.send(ClientPacket.password(testPassword))
        try expectQueuedForWelcome(client)
        try client.finish()
        #expect(client.shard.clientSessions.count == 0)
        #expect(client.session.pool?.clientCount == 0)
    }

    @Test func plainAuthPasswordPipelinedWithStartupIsAccepted() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        var packets = ClientPacket.startup()
        var password = ClientPacket.password(testPassword)
        packets.writeBuffer(&password)
        try client.send(packets)
        let messages = try client.outboundMessages()
        try #require(messages.count == 1)
        #expect(try messages[0].authentication().code == 3)
        try expectQueuedForWelcome(client)
        try client.finish()
    }

    @Test func plainAuthPasswordSplitByteByByteIsAccepted() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        try client.send(ClientPacket.startup())
        _ = client.received()
        try client.sendByteByByte(ClientPacket.password(testPassword))
        try expectQueuedForWelcome(client)
        try client.finish()
    }

    @Test func plainAuthUnknownUserFailsLikeAWrongPassword() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        try client.send(ClientPacket.startup(user: "mallory"))
        let challenge = try client.outboundMessages()
        try #require(challenge.count == 1)
        #expect(try challenge[0].authentication().code == 3)
        try client.send(ClientPacket.password(testPassword))
        try expectFatalAndClosed(
            client, code: PoolerError.passwordFailed.sqlState, message: "password authentication failed")
        try client.finish()
    }

    // MARK: auth_type = md5

    @Test func md5AuthAcceptsTheRightResponse() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .md5))
        try client.send(ClientPacket.startup())
        let challenge = try client.outboundMessages()
        try #require(challenge.count == 1)
        let request = try challenge[0].authentication()
        #expect(request.code == 5)
        try #require(request.data.count == 4)

        let answer = MD5Password.response(password: testPassword, user: testUser, salt: request.data)
        try client.send(ClientPacket.password(answer))
        try expectQueuedForWelcome(client)
        try client.finish()
    }

    @Test func md5AuthRefusesAResponseForAnotherSalt() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .md5))
        try client.send(ClientPacket.startup())
        let challenge = try client.outboundMessages()
        try #require(challenge.count == 1)
        let request = try challenge[0].authentication()
        try #require(request.code == 5 && request.data.count == 4)

        let otherSalt = request.data.map { $0 ^ 0xFF }
        let answer = MD5Password.response(password: testPassword, user: testUser, salt: otherSalt)
        try client.send(ClientPacket.password(answer))
        try expectFatalAndClosed(
            client, code: PoolerError.passwordFailed.sqlState, message: "password authentication failed")
        try client.finish()
    }

    // MARK: auth_type = trust

    @Test func trustRefusesAUserMissingFromTheAuthFile() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .trust))
        try client.send(ClientPacket.startup(user: "mallory"))
        try expectFatalAndClosed(
            client, code: PoolerError.trustFailed.sqlState, message: "\"trust\" authentication failed")
        try client.finish()
    }

    @Test func trustWithoutAuthFileAcceptsAnyUser() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .trust, authFile: nil))
        try client.send(ClientPacket.startup(user: "mallory"))
        try expectQueuedForWelcome(client)
        try client.finish()
    }

    @Test func trustKnownUserIsQueuedWithoutAnyChallenge() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .trust))
        try client.send(ClientPacket.startup())
        try expectQueuedForWelcome(client)
        try client.finish()
    }

    // MARK: Database lookup

    @Test func unknownDatabaseIsReportedAfterSuccessfulAuthentication() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .plain))
        try client.send(ClientPacket.startup(database: "nosuch"))
        let challenge = try client.outboundMessages()
        try #require(challenge.count == 1)
        #expect(try challenge[0].authentication().code == 3)

        try client.send(ClientPacket.password(testPassword))
        try expectFatalAndClosed(client, message: "no such database: nosuch")
        #expect(client.session.pool == nil)
        try client.finish()
    }

    @Test func unknownDatabaseWithTrustIsReportedAtOnce() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .trust))
        try client.send(ClientPacket.startup(database: "nosuch"))
        try expectFatalAndClosed(client, message: "no such database: nosuch")
        try client.finish()
    }

    // MARK: Limits

    @Test func maxClientConnRefusesTheSecondClient() throws {
        let loop = try EngineLoop()
        let shard = makeShard(on: loop, configuration: makeConfiguration(authType: .plain, maxClientConn: 1))
        let first = try TestClient(shard: shard, loop: loop)
        let second = try TestClient(shard: shard, loop: loop)
        #expect(shard.clientSessions.count == 2)

        try second.send(ClientPacket.startup())
        try expectFatalAndClosed(second, message: "no more connections allowed (max_client_conn)")
        #expect(shard.clientSessions.count == 1)

        // The first one is unaffected and still gets its challenge.
        try first.send(ClientPacket.startup())
        let messages = try first.outboundMessages()
        try #require(messages.count == 1)
        #expect(try messages[0].authentication().code == 3)
        #expect(!first.isClosed)

        try first.finish()
        try second.finish()
        #expect(shard.clientSessions.count == 0)
    }

    // MARK: Cancel

    @Test func cancelRequestWithUnknownKeyIsDroppedSilently() throws {
        let client = try TestClient(configuration: makeConfiguration(authType: .trust))
        try client.send(ClientPacket.cancel(processID: 1234, secretKey: 5678))
        #expect(client.received().readableBytes == 0)
        #expect(client.isClosed)
        #expect(client.shard.clientSessions.count == 0)
        try client.finish()
    }

    // MARK: Memory

    /// A closed client's session must be freed: under NIO it once kept its ChannelHandlerContext, which kept
    /// the session, and every connection leaked about 3 KB (RSS grew without bound under `pgbench -C`); the
    /// engine's connection must likewise let go of its delegate.
    @Test func closedSessionIsFreed() throws {
        let loop = try EngineLoop()
        let shard = makeShard(on: loop, configuration: makeConfiguration(authType: .trust))
        weak var freed: ClientSession?
        try {
            let client = try TestClient(shard: shard, loop: loop)
            freed = client.session
            try client.send(ClientPacket.startup())
            try expectQueuedForWelcome(client)
            try client.finish()
        }()
        loop.settle()
        #expect(shard.clientSessions.isEmpty)
        #expect(freed == nil, "the session outlived its connection")
    }
}

// MARK: Helpers

/// After a successful login the pool greets the client only once its first server has reported its
/// ParameterStatus set: until then nothing (not even AuthenticationOk) is written and the connection stays open.
private func expectQueuedForWelcome(_ client: TestClient, sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(client.received().readableBytes == 0, "nothing may be written before the pool's welcome",
            sourceLocation: sourceLocation)
    #expect(!client.isClosed, sourceLocation: sourceLocation)
    let pool = try #require(client.session.pool, "client has no pool after login", sourceLocation: sourceLocation)
    #expect(pool.key.database == testDatabase, sourceLocation: sourceLocation)
    #expect(pool.clientCount == 1, sourceLocation: sourceLocation)
    #expect(pool.welcomePrefix == nil, sourceLocation: sourceLocation)
    #expect(pool.serverCount == 0, sourceLocation: sourceLocation)
    #expect(client.session.server == nil, sourceLocation: sourceLocation)
}
