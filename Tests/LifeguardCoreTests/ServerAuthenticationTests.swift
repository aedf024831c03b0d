import NIOCore
import PostgresWire
import Testing

@testable import LifeguardCore

/// Lifeguard logging in to a server, against a server side played by SCRAMServerExchange and MD5Password.
@Suite struct ServerAuthenticationTests {
    private let fixedRandom: (Int) -> [UInt8] = { Array(repeating: 7, count: $0) }

    private func request(_ code: Int32, _ data: [UInt8] = []) -> (Int32, ByteBuffer) {
        (code, ByteBuffer(bytes: data))
    }

    /// The body of the single PasswordMessage-type (`p`) message in `reply`.
    private func passwordBody(_ reply: ByteBuffer) throws -> ByteBuffer {
        var reply = reply
        let id = reply.readInteger(as: UInt8.self)
        let length = reply.readInteger(as: Int32.self)
        #expect(id == FrontendID.password)
        let body = length.flatMap { reply.readSlice(length: Int($0) - 4) }
        return try #require(body)
    }

    @Test func authenticationOkEndsTheLogin() throws {
        var auth = ServerAuthentication(user: "u", secret: nil, scramKeys: nil)
        var reply = ByteBuffer()
        let (code, data) = request(AuthenticationCode.ok)
        #expect(try auth.receive(code: code, data: data, into: &reply) == .authenticated)
        #expect(reply.readableBytes == 0)
    }

    @Test func clearTextNeedsAPlainPassword() throws {
        var auth = ServerAuthentication(user: "u", secret: .plain("pw"), scramKeys: nil)
        var reply = ByteBuffer()
        #expect(try auth.receive(code: AuthenticationCode.cleartextPassword, data: ByteBuffer(), into: &reply) == .continueLogin)
        #expect(FrontendMessage.password(try passwordBody(reply)) == "pw")

        var hashed = ServerAuthentication(user: "u", secret: .md5(MD5Password.hash(password: "pw", user: "u")), scramKeys: nil)
        #expect(throws: PoolerError.self) {
            var reply = ByteBuffer()
            _ = try hashed.receive(code: AuthenticationCode.cleartextPassword, data: ByteBuffer(), into: &reply)
        }
    }

    @Test(arguments: [PasswordSecret.plain("pw"), .md5(MD5Password.hash(password: "pw", user: "u"))])
    func md5AnswersFromAPlainPasswordOrAStoredHash(secret: PasswordSecret) throws {
        let salt: [UInt8] = [1, 2, 3, 4]
        var auth = ServerAuthentication(user: "u", secret: secret, scramKeys: nil)
        var reply = ByteBuffer()
        _ = try auth.receive(code: AuthenticationCode.md5Password, data: ByteBuffer(bytes: salt), into: &reply)
        let answer = try #require(FrontendMessage.password(try passwordBody(reply)))
        #expect(answer == MD5Password.response(password: "pw", user: "u", salt: salt))
    }

    @Test func md5CannotBeAnsweredFromASCRAMSecret() {
        let secret = SCRAMSecret.derive(password: "pw", salt: [1, 2, 3], iterations: 16)
        var auth = ServerAuthentication(user: "u", secret: .scram(secret), scramKeys: nil)
        var reply = ByteBuffer()
        #expect(throws: PoolerError.self) {
            _ = try auth.receive(code: AuthenticationCode.md5Password, data: ByteBuffer(bytes: [1, 2, 3, 4]), into: &reply)
        }
    }

    /// Runs a whole SCRAM exchange against a server holding `serverSecret`.
    private func scramLogin(_ auth: inout ServerAuthentication, serverSecret: SCRAMSecret) throws {
        var server = SCRAMServerExchange(secret: serverSecret, nonceBytes: Array(repeating: 9, count: 18))
        var reply = ByteBuffer()
        var mechanisms = ByteBuffer()
        mechanisms.writeNullTerminatedString("SCRAM-SHA-256")
        mechanisms.writeInteger(UInt8(0))
        #expect(try auth.receive(code: AuthenticationCode.sasl, data: mechanisms, into: &reply) == .continueLogin)
        let (mechanism, clientFirst) = try #require(FrontendMessage.saslInitialResponse(try passwordBody(reply)))
        #expect(mechanism == "SCRAM-SHA-256")
        let serverFirst = try server.receiveClientFirst(clientFirst).get()

        reply.clear()
        _ = try auth.receive(code: AuthenticationCode.saslContinue, data: ByteBuffer(bytes: serverFirst), into: &reply)
        let clientFinal = Array(try passwordBody(reply).readableBytesView)
        let serverFinal = try server.receiveClientFinal(clientFinal).get()

        reply.clear()
        #expect(try auth.receive(code: AuthenticationCode.saslFinal, data: ByteBuffer(bytes: serverFinal), into: &reply)
            == .continueLogin)
        #expect(reply.readableBytes == 0)
    }

    @Test func scramWithAPlainPassword() throws {
        let serverSecret = SCRAMSecret.derive(password: "pw", salt: [5, 6, 7, 8], iterations: 64)
        var auth = ServerAuthentication(user: "u", secret: .plain("pw"), scramKeys: nil, random: fixedRandom)
        try scramLogin(&auth, serverSecret: serverSecret)
    }

    @Test func scramPassThroughWithRecoveredKeys() throws {
        let serverSecret = SCRAMSecret.derive(password: "pw", salt: [5, 6, 7, 8], iterations: 64)
        let clientKey = SCRAM.clientKey(saltedPassword: SCRAM.saltedPassword(password: Array("pw".utf8), salt: [5, 6, 7, 8], iterations: 64))
        var auth = ServerAuthentication(
            user: "u", secret: .scram(serverSecret), scramKeys: (clientKey, serverSecret.serverKey), random: fixedRandom)
        try scramLogin(&auth, serverSecret: serverSecret)
    }

    @Test func scramSecretWithoutClientKeysCannotLogIn() {
        let serverSecret = SCRAMSecret.derive(password: "pw", salt: [5, 6, 7, 8], iterations: 64)
        var auth = ServerAuthentication(user: "u", secret: .scram(serverSecret), scramKeys: nil)
        var mechanisms = ByteBuffer()
        mechanisms.writeNullTerminatedString("SCRAM-SHA-256")
        mechanisms.writeInteger(UInt8(0))
        var reply = ByteBuffer()
        do {
            _ = try auth.receive(code: AuthenticationCode.sasl, data: mechanisms, into: &reply)
            Issue.record("SCRAM started without keys")
        } catch {
            #expect(error.message.hasPrefix("cannot do SCRAM authentication"))
        }
    }

    @Test func wrongServerSignatureFailsTheLogin() throws {
        let serverSecret = SCRAMSecret.derive(password: "pw", salt: [5, 6, 7, 8], iterations: 64)
        let impostor = SCRAMSecret(
            iterations: serverSecret.iterations, salt: serverSecret.salt, storedKey: serverSecret.storedKey,
            serverKey: Array(repeating: 0, count: 32))
        var auth = ServerAuthentication(user: "u", secret: .plain("pw"), scramKeys: nil, random: fixedRandom)
        #expect(throws: PoolerError.self) { try scramLogin(&auth, serverSecret: impostor) }
    }

    @Test func unsupportedMethodsAreRefused() {
        var auth = ServerAuthentication(user: "u", secret: .plain("pw"), scramKeys: nil)
        var reply = ByteBuffer()
        #expect(throws: PoolerError.self) {
            _ = try auth.receive(code: 7, data: ByteBuffer(), into: &reply)  // GSSAPI
        }
        var mechanisms = ByteBuffer()
        mechanisms.writeNullTerminatedString("SCRAM-SHA-256-PLUS")
        mechanisms.writeInteger(UInt8(0))
        #expect(throws: PoolerError.self) {
            _ = try auth.receive(code: AuthenticationCode.sasl, data: mechanisms, into: &reply)
        }
    }
}
