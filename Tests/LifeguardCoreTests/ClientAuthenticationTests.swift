import NIOCore
import Testing

@testable import LifeguardCore
import PostgresWire

// MARK: Helpers

/// Deterministic "random" bytes: 1, 2, 3, ...
private func counting(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 + 1) } }

private let mockKey: [UInt8] = Array(repeating: 0x42, count: 32)
private let derivedSalt: [UInt8] = Array(200..<216)

/// Records the (user, password) pairs the SCRAM secret derivation was asked for.
private final class DeriveLog: PlainPasswordDerivations {
    var calls: [(String, String)] = []
    func scramSecret(user: String, password: String) -> SCRAMSecret {
        calls.append((user, password))
        return SCRAMSecret.derive(password: password, salt: derivedSalt, iterations: 4096)
    }
    func md5Hash(user: String, password: String) -> String {
        MD5Password.hash(password: password, user: user)
    }
}

private func makeAuth(
    user: String = "alice", _ authType: AuthType, secret: PasswordSecret?, requireUserListEntry: Bool = true,
    log: DeriveLog = DeriveLog()
) throws -> ClientAuthentication {
    let startup = try ClientStartup(
        protocolVersion: StartupPacket.protocolVersion3, parameters: [("user", user)], ignored: [])
    return ClientAuthentication(
        startup: startup, authType: authType, secret: secret, requireUserListEntry: requireUserListEntry,
        mockKey: mockKey, derivations: log, random: counting)
}

/// Reads one AuthenticationRequest ('R') message off `reply`: its code and the bytes after the code.
private func readAuthRequest(
    _ reply: inout ByteBuffer, sourceLocation: Testing.SourceLocation = #_sourceLocation
) throws -> (code: Int32, data: [UInt8]) {
    let id = reply.readInteger(as: UInt8.self)
    let length = reply.readInteger(as: Int32.self)
    #expect(id == BackendID.authentication, sourceLocation: sourceLocation)
    let bodyLength = try #require(length, sourceLocation: sourceLocation) - 4
    let body = reply.readSlice(length: Int(bodyLength))
    let readBody = try #require(body, sourceLocation: sourceLocation)
    let request = try #require(BackendMessage.authentication(readBody), sourceLocation: sourceLocation)
    #expect(reply.readableBytes == 0, "one message per reply", sourceLocation: sourceLocation)
    return (request.code, Array(request.data.readableBytesView))
}

private func passwordBody(_ password: String) -> ByteBuffer {
    var body = ByteBuffer()
    body.writeNullTerminatedString(password)
    return body
}

private func saslInitialBody(mechanism: String = "SCRAM-SHA-256", _ data: [UInt8]) -> ByteBuffer {
    var body = ByteBuffer()
    body.writeNullTerminatedString(mechanism)
    body.writeInteger(Int32(data.count))
    body.writeBytes(data)
    return body
}

private func startError(_ auth: inout ClientAuthentication) -> PoolerError? {
    var reply = ByteBuffer()
    do {
        _ = try auth.start(into: &reply)
        return nil
    } catch {
        return error
    }
}

private func receiveError(_ auth: inout ClientAuthentication, _ body: ByteBuffer) -> PoolerError? {
    var reply = ByteBuffer()
    do {
        _ = try auth.receive(body, into: &reply)
        return nil
    } catch {
        return error
    }
}

/// Starts `auth` and checks it sent an MD5 challenge; returns the salt.
private func startMD5(_ auth: inout ClientAuthentication) throws -> [UInt8] {
    var reply = ByteBuffer()
    let started = try auth.start(into: &reply)
    #expect(started == .awaitingPassword)
    let (code, salt) = try readAuthRequest(&reply)
    #expect(code == AuthenticationCode.md5Password)
    #expect(salt == [1, 2, 3, 4])
    return salt
}

private enum SCRAMOutcome: Equatable {
    case authenticated
    case failedAtFirst(PoolerError)
    case failedAtFinal(PoolerError)
}

/// Drives a SCRAM login with a real client exchange; checks every reply along the way.
private func runSCRAM(
    _ auth: inout ClientAuthentication, password: String, mechanism: String = "SCRAM-SHA-256",
    sourceLocation: Testing.SourceLocation = #_sourceLocation
) throws -> SCRAMOutcome {
    var client = SCRAMClientExchange(credentials: .password(password), nonceBytes: Array(50..<68))
    var reply = ByteBuffer()
    let started = try auth.start(into: &reply)
    #expect(started == .awaitingPassword, sourceLocation: sourceLocation)
    let (code, mechanisms) = try readAuthRequest(&reply, sourceLocation: sourceLocation)
    #expect(code == AuthenticationCode.sasl, sourceLocation: sourceLocation)
    #expect(mechanisms == Array("SCRAM-SHA-256".utf8) + [0, 0], sourceLocation: sourceLocation)

    let step: ClientAuthentication.Step
    do throws(PoolerError) {
        step = try auth.receive(saslInitialBody(mechanism: mechanism, client.clientFirstMessage()), into: &reply)
    } catch {
        #expect(reply.readableBytes == 0, sourceLocation: sourceLocation)
        return .failedAtFirst(error)
    }
    #expect(step == .awaitingPassword, sourceLocation: sourceLocation)
    let (continueCode, serverFirst) = try readAuthRequest(&reply, sourceLocation: sourceLocation)
    #expect(continueCode == AuthenticationCode.saslContinue, sourceLocation: sourceLocation)
    let clientFinal = try client.receiveServerFirst(serverFirst).get()

    let finalStep: ClientAuthentication.Step
    do throws(PoolerError) {
        finalStep = try auth.receive(ByteBuffer(bytes: clientFinal), into: &reply)
    } catch {
        #expect(reply.readableBytes == 0, "no SASLFinal on failure", sourceLocation: sourceLocation)
        return .failedAtFinal(error)
    }
    #expect(finalStep == .authenticated, sourceLocation: sourceLocation)
    let (finalCode, serverFinal) = try readAuthRequest(&reply, sourceLocation: sourceLocation)
    #expect(finalCode == AuthenticationCode.saslFinal, sourceLocation: sourceLocation)
    // The client can check the server's signature: the server side knew the verifier.
    #expect(throws: Never.self, sourceLocation: sourceLocation) { try client.verifyServerFinal(serverFinal).get() }
    return .authenticated
}

private let storedSCRAM = SCRAMSecret.derive(password: "hunter2", salt: Array(1...16), iterations: 4096)

@Suite struct ClientAuthenticationTests {
    // MARK: PgBouncer's texts

    @Test func errorTextsArePgBouncers() {
        #expect(PoolerError.passwordFailed.message == "password authentication failed")
        #expect(PoolerError.saslFailed.message == "SASL authentication failed")
        #expect(PoolerError.trustFailed.message == "\"trust\" authentication failed")
        for error in [PoolerError.passwordFailed, .saslFailed, .trustFailed] {
            #expect(error.sqlState == "08P01")
        }
    }

    // MARK: trust and any

    @Test func trustWithUserListEntry() throws {
        var auth = try makeAuth(.trust, secret: .plain("whatever"))
        var reply = ByteBuffer()
        let started = try auth.start(into: &reply)
        #expect(started == .authenticated)
        #expect(reply.readableBytes == 0)
        #expect(auth.scramKeys == nil)
    }

    @Test func trustWithoutEntryFailsWhenOneIsRequired() throws {
        var auth = try makeAuth(.trust, secret: nil, requireUserListEntry: true)
        #expect(startError(&auth) == .trustFailed)
    }

    @Test func trustWithoutEntryPassesWhenNoneIsRequired() throws {
        var auth = try makeAuth(.trust, secret: nil, requireUserListEntry: false)
        var reply = ByteBuffer()
        let started = try auth.start(into: &reply)
        #expect(started == .authenticated)
        #expect(reply.readableBytes == 0)
    }

    @Test func anyLetsEveryoneIn() throws {
        for secret in [nil, PasswordSecret.plain("x")] {
            var auth = try makeAuth(.any, secret: secret, requireUserListEntry: true)
            var reply = ByteBuffer()
            let started = try auth.start(into: &reply)
            #expect(started == .authenticated)
            #expect(reply.readableBytes == 0)
        }
    }

    @Test func passwordPacketWhenNoneIsExpected() throws {
        let unexpected = PoolerError("unexpected password packet")
        var trust = try makeAuth(.trust, secret: .plain("pw"))
        var reply = ByteBuffer()
        _ = try trust.start(into: &reply)
        #expect(receiveError(&trust, passwordBody("pw")) == unexpected)

        var notStarted = try makeAuth(.plain, secret: .plain("pw"))
        #expect(receiveError(&notStarted, passwordBody("pw")) == unexpected)
    }

    // MARK: plain

    private func runPlain(secret: PasswordSecret?, answer: String) throws -> PoolerError? {
        var auth = try makeAuth(.plain, secret: secret)
        var reply = ByteBuffer()
        let started = try auth.start(into: &reply)
        #expect(started == .awaitingPassword)
        let (code, data) = try readAuthRequest(&reply)
        #expect(code == AuthenticationCode.cleartextPassword)
        #expect(data.isEmpty)
        do throws(PoolerError) {
            var received = try auth.receive(passwordBody(answer), into: &reply)
            if case .checkPassword(let check) = received {
                // Against a SCRAM secret the PBKDF2 is handed back to run off the event loop.
                guard case .scram = secret else {
                    Issue.record("only a SCRAM secret needs an off-loop check")
                    return nil
                }
                #expect(receiveError(&auth, passwordBody(answer)) == PoolerError("unexpected password packet"))
                received = try auth.receivePasswordCheck(check.run())
            }
            #expect(received == .authenticated)
            #expect(reply.readableBytes == 0)
            // Done: a second password packet is refused.
            #expect(receiveError(&auth, passwordBody(answer)) == PoolerError("unexpected password packet"))
            return nil
        } catch {
            return error
        }
    }

    @Test func plainAgainstPlainSecret() throws {
        #expect(try runPlain(secret: .plain("s3cret"), answer: "s3cret") == nil)
        #expect(try runPlain(secret: .plain("s3cret"), answer: "S3cret") == .passwordFailed)
    }

    @Test func plainAgainstMD5Secret() throws {
        let secret = PasswordSecret.md5(MD5Password.hash(password: "s3cret", user: "alice"))
        #expect(try runPlain(secret: secret, answer: "s3cret") == nil)
        #expect(try runPlain(secret: secret, answer: "wrong") == .passwordFailed)
        // Sending the hash itself is not the password.
        #expect(try runPlain(secret: secret, answer: MD5Password.hash(password: "s3cret", user: "alice")) == .passwordFailed)
    }

    @Test func plainAgainstSCRAMSecret() throws {
        #expect(try runPlain(secret: .scram(storedSCRAM), answer: "hunter2") == nil)
        #expect(try runPlain(secret: .scram(storedSCRAM), answer: "hunter3") == .passwordFailed)
    }

    @Test func plainAgainstSCRAMSecretIsCheckedByTheCaller() throws {
        var auth = try makeAuth(.plain, secret: .scram(storedSCRAM))
        var reply = ByteBuffer()
        _ = try auth.start(into: &reply)
        let step = try auth.receive(passwordBody("hunter2"), into: &reply)
        guard case .checkPassword(let check) = step else {
            Issue.record("expected an off-loop check, got \(step)")
            return
        }
        #expect(check.run())
        // Only the check that was asked for is taken, and only once.
        var fresh = try makeAuth(.plain, secret: .scram(storedSCRAM))
        #expect(throws: PoolerError("unexpected password check")) { try fresh.receivePasswordCheck(true) }
        #expect(try auth.receivePasswordCheck(true) == .authenticated)
        #expect(throws: PoolerError("unexpected password check")) { try auth.receivePasswordCheck(true) }
    }

    @Test func plainUnknownUserFails() throws {
        #expect(try runPlain(secret: nil, answer: "anything") == .passwordFailed)
    }

    @Test func plainMalformedPacketFails() throws {
        var auth = try makeAuth(.plain, secret: .plain("pw"))
        var reply = ByteBuffer()
        _ = try auth.start(into: &reply)
        #expect(receiveError(&auth, ByteBuffer(bytes: Array("pw".utf8))) == .passwordFailed)
    }

    /// PgBouncer (like PostgreSQL's recv_password_packet) refuses an empty password before checking it,
    /// so an empty userlist password can never be used to log in.
    @Test func emptyPasswordIsRefused() throws {
        #expect(try runPlain(secret: .plain(""), answer: "")?.message == "empty password returned by client")
    }

    // MARK: md5

    @Test func md5AgainstPlainSecret() throws {
        var auth = try makeAuth(.md5, secret: .plain("s3cret"))
        let salt = try startMD5(&auth)
        var reply = ByteBuffer()
        let answer = MD5Password.response(password: "s3cret", user: "alice", salt: salt)
        let received = try auth.receive(passwordBody(answer), into: &reply)
        #expect(received == .authenticated)
        #expect(reply.readableBytes == 0)
        #expect(auth.scramKeys == nil)
    }

    @Test func md5AgainstMD5Secret() throws {
        var auth = try makeAuth(.md5, secret: .md5(MD5Password.hash(password: "s3cret", user: "alice")))
        let salt = try startMD5(&auth)
        var reply = ByteBuffer()
        let answer = MD5Password.response(password: "s3cret", user: "alice", salt: salt)
        let received = try auth.receive(passwordBody(answer), into: &reply)
        #expect(received == .authenticated)
    }

    @Test func md5WrongAnswerFails() throws {
        for secret in [PasswordSecret.plain("s3cret"), .md5(MD5Password.hash(password: "s3cret", user: "alice"))] {
            var auth = try makeAuth(.md5, secret: secret)
            let salt = try startMD5(&auth)
            let wrong = MD5Password.response(password: "wrong", user: "alice", salt: salt)
            #expect(receiveError(&auth, passwordBody(wrong)) == .passwordFailed)
        }
    }

    @Test func md5AnswerForAnotherSaltOrUserFails() throws {
        var auth = try makeAuth(.md5, secret: .plain("s3cret"))
        _ = try startMD5(&auth)
        #expect(receiveError(&auth, passwordBody(MD5Password.response(password: "s3cret", user: "alice", salt: [4, 3, 2, 1])))
            == .passwordFailed)
        var other = try makeAuth(.md5, secret: .plain("s3cret"))
        let salt = try startMD5(&other)
        #expect(receiveError(&other, passwordBody(MD5Password.response(password: "s3cret", user: "bob", salt: salt)))
            == .passwordFailed)
    }

    @Test func md5CleartextAnswerFails() throws {
        var auth = try makeAuth(.md5, secret: .plain("s3cret"))
        _ = try startMD5(&auth)
        #expect(receiveError(&auth, passwordBody("s3cret")) == .passwordFailed)
    }

    @Test func md5UnknownUserIsChallengedThenFails() throws {
        var auth = try makeAuth(user: "mallory", .md5, secret: nil)
        let salt = try startMD5(&auth)
        let answer = MD5Password.response(password: "guess", user: "mallory", salt: salt)
        #expect(receiveError(&auth, passwordBody(answer)) == .passwordFailed)
    }

    @Test func md5WithSCRAMSecretSwitchesToSCRAM() throws {
        var auth = try makeAuth(.md5, secret: .scram(storedSCRAM))
        #expect(try runSCRAM(&auth, password: "hunter2") == .authenticated)
        let keys = try #require(auth.scramKeys)
        #expect(keys.serverKey == storedSCRAM.serverKey)
        #expect(SCRAM.sha256(keys.clientKey) == storedSCRAM.storedKey)
    }

    @Test func md5WithSCRAMSecretWrongPasswordFails() throws {
        var auth = try makeAuth(.md5, secret: .scram(storedSCRAM))
        #expect(try runSCRAM(&auth, password: "hunter3") == .failedAtFinal(.saslFailed))
        #expect(auth.scramKeys == nil)
    }

    // MARK: scram-sha-256

    @Test func scramWithStoredSecret() throws {
        let log = DeriveLog()
        var auth = try makeAuth(.scramSHA256, secret: .scram(storedSCRAM), log: log)
        #expect(try runSCRAM(&auth, password: "hunter2") == .authenticated)
        #expect(log.calls.isEmpty, "a stored SCRAM secret needs no derivation")
        let keys = try #require(auth.scramKeys)
        #expect(keys.serverKey == storedSCRAM.serverKey)
        #expect(SCRAM.sha256(keys.clientKey) == storedSCRAM.storedKey)

        // The recovered keys log in to a server holding the same verifier (pass-through).
        var passThrough = SCRAMClientExchange(
            credentials: .keys(clientKey: keys.clientKey, serverKey: keys.serverKey), nonceBytes: counting(18))
        var server = SCRAMServerExchange(secret: storedSCRAM, nonceBytes: Array(30..<48))
        let serverFirst = try server.receiveClientFirst(passThrough.clientFirstMessage()).get()
        let clientFinal = try passThrough.receiveServerFirst(serverFirst).get()
        let serverFinal = try server.receiveClientFinal(clientFinal).get()
        #expect(throws: Never.self) { try passThrough.verifyServerFinal(serverFinal).get() }
    }

    @Test func scramServerFirstUsesStoredSaltAndIterations() throws {
        var auth = try makeAuth(.scramSHA256, secret: .scram(storedSCRAM))
        let client = SCRAMClientExchange(credentials: .password("hunter2"), nonceBytes: Array(50..<68))
        var reply = ByteBuffer()
        _ = try auth.start(into: &reply)
        _ = try readAuthRequest(&reply)
        _ = try auth.receive(saslInitialBody(client.clientFirstMessage()), into: &reply)
        let (_, serverFirst) = try readAuthRequest(&reply)
        let text = String(decoding: serverFirst, as: UTF8.self)
        let clientNonce = SCRAMBase64.encodeString(Array(50..<68) as [UInt8])
        let serverNonce = SCRAMBase64.encodeString(counting(18))
        #expect(text == "r=\(clientNonce)\(serverNonce),s=\(SCRAMBase64.encodeString(storedSCRAM.salt)),i=4096")
    }

    @Test func scramWithStoredSecretWrongPassword() throws {
        var auth = try makeAuth(.scramSHA256, secret: .scram(storedSCRAM))
        #expect(try runSCRAM(&auth, password: "hunter3") == .failedAtFinal(.saslFailed))
        #expect(auth.scramKeys == nil)
    }

    @Test func scramWithPlainSecret() throws {
        let log = DeriveLog()
        var auth = try makeAuth(.scramSHA256, secret: .plain("s3cret"), log: log)
        #expect(try runSCRAM(&auth, password: "s3cret") == .authenticated)
        #expect(log.calls.count == 1)
        #expect(log.calls.first?.0 == "alice")
        #expect(log.calls.first?.1 == "s3cret")
        #expect(auth.scramKeys == nil, "keys are only kept for stored SCRAM secrets")
    }

    @Test func scramWithPlainSecretWrongPassword() throws {
        var auth = try makeAuth(.scramSHA256, secret: .plain("s3cret"))
        #expect(try runSCRAM(&auth, password: "S3CRET") == .failedAtFinal(.saslFailed))
    }

    @Test func scramUnknownUserRunsMockExchangeAndFailsAtTheEnd() throws {
        let log = DeriveLog()
        var auth = try makeAuth(user: "mallory", .scramSHA256, secret: nil, log: log)
        #expect(try runSCRAM(&auth, password: "guess") == .failedAtFinal(.saslFailed))
        #expect(log.calls.isEmpty)
        #expect(auth.scramKeys == nil)
    }

    @Test func scramMockSaltIsStablePerUser() throws {
        func serverFirst(_ user: String) throws -> String {
            var auth = try makeAuth(user: user, .scramSHA256, secret: nil)
            let client = SCRAMClientExchange(credentials: .password("x"), nonceBytes: Array(50..<68))
            var reply = ByteBuffer()
            _ = try auth.start(into: &reply)
            _ = try readAuthRequest(&reply)
            _ = try auth.receive(saslInitialBody(client.clientFirstMessage()), into: &reply)
            return String(decoding: try readAuthRequest(&reply).data, as: UTF8.self)
        }
        let first = try serverFirst("mallory")
        #expect(try serverFirst("mallory") == first)
        #expect(try serverFirst("eve") != first)
        let mock = SCRAMSecret.mock(user: "mallory", key: mockKey)
        #expect(first.contains(",s=\(SCRAMBase64.encodeString(mock.salt)),i=4096"))
    }

    @Test func scramWithMD5SecretFailsAtTheEnd() throws {
        // An md5 hash cannot answer SCRAM: the exchange runs on a mock verifier and fails, even with the right password.
        var auth = try makeAuth(.scramSHA256, secret: .md5(MD5Password.hash(password: "s3cret", user: "alice")))
        #expect(try runSCRAM(&auth, password: "s3cret") == .failedAtFinal(.saslFailed))
    }

    @Test func scramWrongMechanismFails() throws {
        var auth = try makeAuth(.scramSHA256, secret: .scram(storedSCRAM))
        guard case .failedAtFirst(let error) = try runSCRAM(&auth, password: "hunter2", mechanism: "SCRAM-SHA-256-PLUS")
        else {
            Issue.record("SCRAM-SHA-256-PLUS was accepted")
            return
        }
        // PgBouncer (client.c, handle_client_startup) has its own text for this case.
        #expect(error.message == "client selected an invalid SASL authentication mechanism")
    }

    @Test func scramMalformedClientFirstFails() throws {
        var auth = try makeAuth(.scramSHA256, secret: .scram(storedSCRAM))
        var reply = ByteBuffer()
        _ = try auth.start(into: &reply)
        #expect(receiveError(&auth, saslInitialBody(Array("garbage".utf8))) == .saslFailed)
        var truncated = try makeAuth(.scramSHA256, secret: .scram(storedSCRAM))
        _ = try truncated.start(into: &reply)
        #expect(receiveError(&truncated, ByteBuffer(bytes: Array("SCRAM-SHA-256".utf8))) == .saslFailed)
    }

    @Test func scramAfterSuccessFurtherPacketsAreRefused() throws {
        var auth = try makeAuth(.scramSHA256, secret: .scram(storedSCRAM))
        #expect(try runSCRAM(&auth, password: "hunter2") == .authenticated)
        #expect(receiveError(&auth, ByteBuffer(bytes: Array("c=biws".utf8))) == PoolerError("unexpected password packet"))
    }
}
