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
        let step = try auth.receive(code: AuthenticationCode.saslContinue, data: ByteBuffer(bytes: serverFirst), into: &reply)
        if case .deriveSaltedPassword(let request) = step {
            // The daemon runs this on a thread pool; the answer is the same.
            auth.receiveSaltedPassword(request.derive(), into: &reply)
        }
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
            #expect(error.message.hasPrefix("wrong password type"))
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

    /// SASL's first steps, up to the server-first-message `serverFirst` (its nonce must extend the client's).
    private func saslContinue(_ auth: inout ServerAuthentication, serverFirst: (String) -> String) throws
        -> ServerAuthentication.Step
    {
        var reply = ByteBuffer()
        var mechanisms = ByteBuffer()
        mechanisms.writeNullTerminatedString("SCRAM-SHA-256")
        mechanisms.writeInteger(UInt8(0))
        _ = try auth.receive(code: AuthenticationCode.sasl, data: mechanisms, into: &reply)
        let (_, clientFirst) = try #require(FrontendMessage.saslInitialResponse(try passwordBody(reply)))
        let nonce = String(decoding: clientFirst, as: UTF8.self).components(separatedBy: "r=").last ?? ""
        reply.clear()
        return try auth.receive(
            code: AuthenticationCode.saslContinue, data: ByteBuffer(string: serverFirst(nonce)), into: &reply)
    }

    /// A password login asks for PBKDF2 instead of running it: the daemon does it off the event loop.
    @Test func scramWithAPasswordAsksForTheSaltedPassword() throws {
        var auth = ServerAuthentication(user: "u", secret: .plain("pw"), scramKeys: nil, random: fixedRandom)
        let step = try saslContinue(&auth) { "r=\($0)xyz,s=AQIDBA==,i=4096" }
        guard case .deriveSaltedPassword(let request) = step else {
            Issue.record("expected a PBKDF2 request, got \(step)")
            return
        }
        #expect(request.derive() == SCRAM.saltedPassword(password: SCRAM.passwordBytes("pw"), salt: [1, 2, 3, 4], iterations: 4096))
    }

    /// A server asking for an absurd iteration count would pin a CPU for minutes: refused.
    @Test func hugeIterationCountIsRefused() throws {
        var auth = ServerAuthentication(user: "u", secret: .plain("pw"), scramKeys: nil, random: fixedRandom)
        let error = #expect(throws: PoolerError.self) {
            _ = try saslContinue(&auth) { "r=\($0)xyz,s=AQIDBA==,i=2000000000" }
        }
        #expect(error?.message == "SCRAM: SCRAM iteration count 2000000000 is above the limit of 1000000")
    }

    /// AuthenticationOk in the middle of SCRAM: the server never proved it knows the secret.
    @Test func authenticationOkBeforeSCRAMEndsIsRefused() throws {
        var auth = ServerAuthentication(user: "u", secret: .plain("pw"), scramKeys: nil, random: fixedRandom)
        _ = try saslContinue(&auth) { "r=\($0)xyz,s=AQIDBA==,i=4096" }
        var reply = ByteBuffer()
        let error = #expect(throws: PoolerError.self) {
            _ = try auth.receive(code: AuthenticationCode.ok, data: ByteBuffer(), into: &reply)
        }
        #expect(error?.message == "server sent AuthenticationOk before completing SCRAM")
    }
}
