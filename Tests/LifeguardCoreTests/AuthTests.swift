import Testing

@testable import LifeguardCore

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }
private func hex(_ text: String) -> [UInt8] {
    let digits = Array(text.utf8)
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
}

private extension Result {
    var value: Success? { try? get() }
    var error: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}

/// Secrets produced by PostgreSQL 15 (`password_encryption = 'scram-sha-256'`).
private let pgSecretForP =
    "SCRAM-SHA-256$4096:+fLVkAi4W536EENsKaFKlA==$96Tafz/E8WId8tm9XUC8WfEG7Pt0/58IAiDopV80ZpM=:I6O9Vy2ePhtrZlDdSnJKYX1VxkJzKYmZPqoXjzWOs80="
private let pgSecretForPhrase =
    "SCRAM-SHA-256$4096:U37/PxGu477mNNX4FlVCWQ==$ZpaCGAEjsJ5Y+uow9scG6yxokvKU7+ACHLu5NOzVUdY=:HpyvIntbz7y5WrO9JYWn2jSWsStiKWi3uPsFl1D8OK8="

private let clientNonceBytes: [UInt8] = Array(0..<18)
private let serverNonceBytes: [UInt8] = Array(100..<118)

/// Runs a full exchange; returns the server's recovered key, or the first error.
private func runExchange(
    secret: SCRAMSecret, credentials: SCRAMClientExchange.Credentials
) -> Result<[UInt8], SCRAMError> {
    var client = SCRAMClientExchange(credentials: credentials, nonceBytes: clientNonceBytes)
    var server = SCRAMServerExchange(secret: secret, nonceBytes: serverNonceBytes)
    return server.receiveClientFirst(client.clientFirstMessage())
        .flatMap { client.receiveServerFirst($0) }
        .flatMap { server.receiveClientFinal($0) }
        .flatMap { serverFinal in client.verifyServerFinal(serverFinal).map { server.recoveredClientKey ?? [] } }
}

@Suite struct AuthTests {
    // MARK: MD5

    @Test func md5StoredHashMatchesPostgreSQL() {
        #expect(MD5Password.hash(password: "1234", user: "admin") == "md545f2603610af569b6155c45067268c6b")
        // From PostgreSQL 15 with password_encryption = 'md5': CREATE ROLE y PASSWORD 'p'.
        #expect(MD5Password.hash(password: "p", user: "y") == "md5dfed5bc177b87ab317c584e06566adc6")
    }

    @Test func md5ResponseFromHashOrPassword() {
        let salt: [UInt8] = [0xDE, 0xAD, 0xBE, 0xEF]
        let expected = "md578b732a6e6854239565dc8b2bd0002bf"  // computed independently with Python hashlib
        #expect(MD5Password.response(forStoredHash: "md545f2603610af569b6155c45067268c6b", salt: salt) == expected)
        #expect(MD5Password.response(forStoredHash: "45f2603610af569b6155c45067268c6b", salt: salt) == expected)
        #expect(MD5Password.response(password: "1234", user: "admin", salt: salt) == expected)
        #expect(MD5Password.response(password: "p", user: "y", salt: [1, 2, 3, 4]) == "md5239ef4cc14af9badb775535a597e3bf9")
    }

    @Test func md5Verify() {
        let stored = MD5Password.hash(password: "1234", user: "admin")
        let salt: [UInt8] = [9, 8, 7, 6]
        #expect(MD5Password.verify(
            clientResponse: MD5Password.response(password: "1234", user: "admin", salt: salt),
            storedHash: stored, salt: salt))
        #expect(!MD5Password.verify(
            clientResponse: MD5Password.response(password: "12345", user: "admin", salt: salt),
            storedHash: stored, salt: salt))
        #expect(!MD5Password.verify(clientResponse: "", storedHash: stored, salt: salt))
    }

    @Test func plainPasswordCacheFollowsPasswordChanges() {
        var salts = 0
        let cache = PlainPasswordCache(salt: {
            salts += 1
            return Array(repeating: UInt8(salts), count: 16)
        })
        #expect(cache.md5Hash(user: "admin", password: "1234") == "md545f2603610af569b6155c45067268c6b")
        #expect(cache.md5Hash(user: "admin", password: "1234") == "md545f2603610af569b6155c45067268c6b")
        // A reloaded userlist with a new password must not be answered with the old hash.
        #expect(cache.md5Hash(user: "admin", password: "p") == MD5Password.hash(password: "p", user: "admin"))

        let first = cache.scramSecret(user: "admin", password: "1234")
        #expect(cache.scramSecret(user: "admin", password: "1234") == first)
        #expect(salts == 1, "derived once")
        let changed = cache.scramSecret(user: "admin", password: "p")
        #expect(changed != first)
        #expect(changed == SCRAMSecret.derive(password: "p", salt: Array(repeating: 2, count: 16), iterations: 4096))
    }

    // MARK: Secret classification

    @Test func passwordSecretClassification() throws {
        #expect(PasswordSecret(parsing: "md545f2603610af569b6155c45067268c6b") == .md5("md545f2603610af569b6155c45067268c6b"))
        let scram = try #require(SCRAMSecret(parsing: pgSecretForP))
        #expect(PasswordSecret(parsing: pgSecretForP) == .scram(scram))
        #expect(PasswordSecret(parsing: "hunter2") == .plain("hunter2"))
        #expect(PasswordSecret(parsing: "") == .plain(""))
        // Like PostgreSQL: uppercase hex or a wrong length is a plain password.
        #expect(PasswordSecret(parsing: "md545F2603610AF569B6155C45067268C6B") == .plain("md545F2603610AF569B6155C45067268C6B"))
        #expect(PasswordSecret(parsing: "md545f2603610af569b6155c45067268c6") == .plain("md545f2603610af569b6155c45067268c6"))
        #expect(PasswordSecret(parsing: "SCRAM-SHA-256$4096:abc") == .plain("SCRAM-SHA-256$4096:abc"))
    }

    @Test(arguments: [
        "SCRAM-SHA-256$0:+fLVkAi4W536EENsKaFKlA==$96Tafz/E8WId8tm9XUC8WfEG7Pt0/58IAiDopV80ZpM=:I6O9Vy2ePhtrZlDdSnJKYX1VxkJzKYmZPqoXjzWOs80=",
        "SCRAM-SHA-256$-1:+fLVkAi4W536EENsKaFKlA==$96Tafz/E8WId8tm9XUC8WfEG7Pt0/58IAiDopV80ZpM=:I6O9Vy2ePhtrZlDdSnJKYX1VxkJzKYmZPqoXjzWOs80=",
        "SCRAM-SHA-256$4096:$96Tafz/E8WId8tm9XUC8WfEG7Pt0/58IAiDopV80ZpM=:I6O9Vy2ePhtrZlDdSnJKYX1VxkJzKYmZPqoXjzWOs80=",
        "SCRAM-SHA-256$4096:+fLVkAi4W536EENsKaFKlA==$96Tafz/E8WId8tm9XUC8Wf==:I6O9Vy2ePhtrZlDdSnJKYX1VxkJzKYmZPqoXjzWOs80=",
        "SCRAM-SHA-256$4096:+fLVkAi4W536EENsKaFKlA=$96Tafz/E8WId8tm9XUC8WfEG7Pt0/58IAiDopV80ZpM=:I6O9Vy2ePhtrZlDdSnJKYX1VxkJzKYmZPqoXjzWOs80=",
        "SCRAM-SHA-1$4096:+fLVkAi4W536EENsKaFKlA==$96Tafz/E8WId8tm9XUC8WfEG7Pt0/58IAiDopV80ZpM=:I6O9Vy2ePhtrZlDdSnJKYX1VxkJzKYmZPqoXjzWOs80=",
        "SCRAM-SHA-256$4096:+fLVkAi4W536EENsKaFKlA==$96Tafz/E8WId8tm9XUC8WfEG7Pt0/58IAiDopV80ZpM=",
        "SCRAM-SHA-256$4096:+fLVkAi4W536EENsKaFKlA==$96Tafz/E8WId8tm9XUC8WfEG7Pt0/58IAiDopV80ZpM=:I6O9Vy2ePhtrZlDdSnJKYX1VxkJzKYmZPqoXjzWOs80=$x",
    ])
    func malformedSCRAMSecretsAreRejected(secret: String) {
        #expect(SCRAMSecret(parsing: secret) == nil)
    }

    // MARK: SCRAM primitives

    @Test func pbkdf2MatchesRFC7914Vectors() {
        #expect(SCRAM.saltedPassword(password: bytes("passwd"), salt: bytes("salt"), iterations: 1)
            == hex("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"))
        #expect(SCRAM.saltedPassword(password: bytes("Password"), salt: bytes("NaCl"), iterations: 80000)
            == hex("4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"))
    }

    @Test func base64RoundTripAndStrictness() {
        for length in 0..<10 {
            let data = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 250) }
            #expect(SCRAMBase64.decode(SCRAMBase64.encode(data)) == data)
        }
        #expect(SCRAMBase64.encodeString(bytes("n,,")) == "biws")
        #expect(SCRAMBase64.encodeString(bytes("y,,")) == "eSws")
        #expect(SCRAMBase64.decode("Zm9vYg==") == bytes("foob"))
        for bad in ["Zm9vYg=", "Zm9v!g==", "Zm=vYg==", "Z===", "Zm9vY=g=", "Zm9vYg==Zm9v", "\u{e9}m9v"] {
            #expect(SCRAMBase64.decode(bad) == nil, "\(bad)")
        }
    }

    // MARK: SCRAM secrets

    @Test func derivedSecretMatchesPostgreSQL() throws {
        for (password, stored) in [("p", pgSecretForP), ("S3cr3t pass!", pgSecretForPhrase)] {
            let pgSecret = try #require(SCRAMSecret(parsing: stored))
            #expect(pgSecret.iterations == 4096)
            #expect(pgSecret.salt.count == 16)
            let derived = SCRAMSecret.derive(password: password, salt: pgSecret.salt, iterations: pgSecret.iterations)
            #expect(derived == pgSecret)
            #expect(derived.encoded == stored)
        }
        let pgSecret = try #require(SCRAMSecret(parsing: pgSecretForP))
        #expect(SCRAMSecret.derive(password: "q", salt: pgSecret.salt, iterations: 4096) != pgSecret)
    }

    @Test func clientLogsInWithPostgreSQLSecret() throws {
        let pgSecret = try #require(SCRAMSecret(parsing: pgSecretForPhrase))
        #expect(runExchange(secret: pgSecret, credentials: .password("S3cr3t pass!")).value != nil)
        #expect(runExchange(secret: pgSecret, credentials: .password("s3cr3t pass!")).error != nil)
    }

    // MARK: RFC 7677 example

    private static let rfcSalt = SCRAMBase64.decode("W22ZaJ0SNY7soEsUEjb6gQ==")!
    private static let rfcClientNonce = "rOprNGfwEbeRWgbNEkqO"
    private static let rfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    private static let rfcServerFirst =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    private static let rfcClientFinal =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    private static let rfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

    @Test func rfc7677ClientSide() {
        var client = SCRAMClientExchange(credentials: .password("pencil"), user: "user", clientNonce: Self.rfcClientNonce)
        #expect(text(client.clientFirstMessage()) == "n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        let clientFinal = client.receiveServerFirst(bytes(Self.rfcServerFirst))
        #expect(clientFinal.value.map(text) == Self.rfcClientFinal)
        #expect(client.verifyServerFinal(bytes(Self.rfcServerFinal)).error == nil)
    }

    @Test func rfc7677ServerSide() {
        let secret = SCRAMSecret.derive(password: "pencil", salt: Self.rfcSalt, iterations: 4096)
        var server = SCRAMServerExchange(secret: secret, serverNonce: Self.rfcServerNonce)
        #expect(server.receiveClientFirst(bytes("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")).value.map(text) == Self.rfcServerFirst)
        #expect(server.receiveClientFinal(bytes(Self.rfcClientFinal)).value.map(text) == Self.rfcServerFinal)
        let salted = SCRAM.saltedPassword(password: bytes("pencil"), salt: Self.rfcSalt, iterations: 4096)
        #expect(server.recoveredClientKey == SCRAM.clientKey(saltedPassword: salted))
    }

    // MARK: Round trips

    @Test func roundTripAndPassThrough() throws {
        let secret = SCRAMSecret.derive(password: "hunter2", salt: Array(1...16), iterations: 4096)
        let recovered = try runExchange(secret: secret, credentials: .password("hunter2")).get()
        let salted = SCRAM.saltedPassword(password: bytes("hunter2"), salt: secret.salt, iterations: 4096)
        #expect(recovered == SCRAM.clientKey(saltedPassword: salted))
        #expect(SCRAM.sha256(recovered) == secret.storedKey)

        // The recovered key plus ServerKey log in exactly as the password would.
        var withPassword = SCRAMClientExchange(credentials: .password("hunter2"), nonceBytes: clientNonceBytes)
        var withKeys = SCRAMClientExchange(
            credentials: .keys(clientKey: recovered, serverKey: secret.serverKey), nonceBytes: clientNonceBytes)
        var server = SCRAMServerExchange(secret: secret, nonceBytes: serverNonceBytes)
        let serverFirst = try server.receiveClientFirst(withKeys.clientFirstMessage()).get()
        let finalFromKeys = try withKeys.receiveServerFirst(serverFirst).get()
        #expect(try withPassword.receiveServerFirst(serverFirst).get() == finalFromKeys)
        let serverFinal = try server.receiveClientFinal(finalFromKeys).get()
        #expect(withKeys.verifyServerFinal(serverFinal).error == nil)
        #expect(withPassword.verifyServerFinal(serverFinal).error == nil)
    }

    @Test func clientFirstMessageShape() {
        let client = SCRAMClientExchange(credentials: .password("x"), nonceBytes: clientNonceBytes)
        #expect(text(client.clientFirstMessage()) == "n,,n=,r=" + SCRAMBase64.encodeString(clientNonceBytes))
    }

    @Test func serverAcceptsYFlagAndExtensions() throws {
        let secret = SCRAMSecret.derive(password: "pw", salt: Array(1...16), iterations: 16)
        let salted = SCRAM.saltedPassword(password: bytes("pw"), salt: secret.salt, iterations: 16)
        let clientKey = SCRAM.clientKey(saltedPassword: salted)
        var server = SCRAMServerExchange(secret: secret, nonceBytes: serverNonceBytes)
        let bare = "n=ignored,r=abc,x=ext"
        let serverFirst = try server.receiveClientFirst(bytes("y,," + bare)).get()
        let nonce = "abc" + SCRAMBase64.encodeString(serverNonceBytes)
        #expect(text(serverFirst) == "r=\(nonce),s=\(SCRAMBase64.encodeString(secret.salt)),i=16")
        let withoutProof = "c=eSws,r=\(nonce)"
        let auth = SCRAM.authMessage(
            clientFirstBare: bytes(bare), serverFirst: serverFirst, clientFinalWithoutProof: bytes(withoutProof))
        let proof = SCRAM.clientProof(clientKey: clientKey, authMessage: auth)
        let serverFinal = try server.receiveClientFinal(bytes(withoutProof + ",p=" + SCRAMBase64.encodeString(proof))).get()
        #expect(serverFinal == bytes("v=") + SCRAMBase64.encode(SCRAM.serverSignature(serverKey: secret.serverKey, authMessage: auth)))
        #expect(server.recoveredClientKey == clientKey)
    }

    // MARK: Channel binding (SCRAM-SHA-256-PLUS, tls-server-end-point)

    /// A client's final message for `gs2` and `bindingData`, with the right proof for "pw".
    private func bindingExchange(
        binding serverBinding: [UInt8]?, mechanism: String, gs2: String, clientBinding: [UInt8]
    ) throws -> Result<[UInt8], SCRAMError> {
        let secret = SCRAMSecret.derive(password: "pw", salt: Array(1...16), iterations: 16)
        let clientKey = SCRAM.clientKey(
            saltedPassword: SCRAM.saltedPassword(password: bytes("pw"), salt: secret.salt, iterations: 16))
        var server = SCRAMServerExchange(secret: secret, nonceBytes: serverNonceBytes, channelBinding: serverBinding)
        let bare = "n=,r=abc"
        let serverFirst = try server.receiveClientFirst(bytes(gs2 + bare), mechanism: mechanism).get()
        let nonce = "abc" + SCRAMBase64.encodeString(serverNonceBytes)
        let withoutProof = "c=\(SCRAMBase64.encodeString(bytes(gs2) + clientBinding)),r=\(nonce)"
        let auth = SCRAM.authMessage(
            clientFirstBare: bytes(bare), serverFirst: serverFirst, clientFinalWithoutProof: bytes(withoutProof))
        let proof = SCRAM.clientProof(clientKey: clientKey, authMessage: auth)
        return server.receiveClientFinal(bytes(withoutProof + ",p=" + SCRAMBase64.encodeString(proof)))
    }

    @Test func channelBindingIsOfferedOverTLSAndChecked() throws {
        let certificateHash: [UInt8] = Array(repeating: 0xAB, count: 32)
        let plus = SCRAMServerExchange.bindingMechanism
        #expect(SCRAMServerExchange(secret: SCRAMSecret.mock(user: "u", key: [1]), nonceBytes: serverNonceBytes,
            channelBinding: certificateHash).mechanisms == [plus, "SCRAM-SHA-256"])
        #expect(SCRAMServerExchange(secret: SCRAMSecret.mock(user: "u", key: [1]), nonceBytes: serverNonceBytes)
            .mechanisms == ["SCRAM-SHA-256"])
        let gs2 = "p=tls-server-end-point,,"
        #expect(try bindingExchange(binding: certificateHash, mechanism: plus, gs2: gs2, clientBinding: certificateHash).error == nil)
        // The client saw another certificate: someone is in the middle.
        let other: [UInt8] = Array(repeating: 0xCD, count: 32)
        #expect(try bindingExchange(binding: certificateHash, mechanism: plus, gs2: gs2, clientBinding: other).error
            == SCRAMError("SCRAM channel binding check failed"))
        // Plain SCRAM still works over TLS.
        #expect(try bindingExchange(binding: certificateHash, mechanism: "SCRAM-SHA-256", gs2: "n,,", clientBinding: []).error == nil)
    }

    @Test func channelBindingNegotiationMistakesAreRefused() {
        let certificateHash: [UInt8] = Array(repeating: 0xAB, count: 32)
        let plus = SCRAMServerExchange.bindingMechanism
        let cases: [(binding: [UInt8]?, mechanism: String, gs2: String, error: String)] = [
            // "y": the client thinks we cannot bind, but we offered -PLUS: a downgrade.
            (certificateHash, "SCRAM-SHA-256", "y,,", "SCRAM channel binding negotiation error"),
            (certificateHash, plus, "n,,", "SCRAM channel binding negotiation error"),
            (certificateHash, "SCRAM-SHA-256", "p=tls-server-end-point,,", "SCRAM channel binding negotiation error"),
            (certificateHash, plus, "p=tls-unique,,", "unsupported SCRAM channel-binding type"),
            (nil, plus, "p=tls-server-end-point,,", "SCRAM channel binding negotiation error"),
        ]
        for (binding, mechanism, gs2, error) in cases {
            var server = SCRAMServerExchange(
                secret: SCRAMSecret.mock(user: "u", key: [1]), nonceBytes: serverNonceBytes, channelBinding: binding)
            #expect(server.receiveClientFirst(bytes(gs2 + "n=,r=abc"), mechanism: mechanism).error == SCRAMError(error),
                "\(mechanism) \(gs2)")
        }
    }

    @Test func wrongPasswordFails() {
        let secret = SCRAMSecret.derive(password: "hunter2", salt: Array(1...16), iterations: 64)
        var client = SCRAMClientExchange(credentials: .password("hunter3"), nonceBytes: clientNonceBytes)
        var server = SCRAMServerExchange(secret: secret, nonceBytes: serverNonceBytes)
        let clientFinal = server.receiveClientFirst(client.clientFirstMessage()).flatMap { client.receiveServerFirst($0) }
        let result = clientFinal.flatMap { server.receiveClientFinal($0) }
        #expect(result.error == SCRAMError("SCRAM client proof is invalid"))
        #expect(server.recoveredClientKey == nil)
        // A failed exchange stays failed.
        #expect(server.receiveClientFinal(clientFinal.value ?? []).error != nil)
    }

    @Test func clientRejectsForgedServerSignature() throws {
        let secret = SCRAMSecret.derive(password: "pw", salt: Array(1...16), iterations: 16)
        var client = SCRAMClientExchange(credentials: .password("pw"), nonceBytes: clientNonceBytes)
        var server = SCRAMServerExchange(secret: secret, nonceBytes: serverNonceBytes)
        let serverFirst = try server.receiveClientFirst(client.clientFirstMessage()).get()
        _ = try server.receiveClientFinal(try client.receiveServerFirst(serverFirst).get()).get()
        #expect(client.verifyServerFinal(bytes("v=" + SCRAMBase64.encodeString([UInt8](repeating: 0, count: 32)))).error != nil)
        #expect(client.verifyServerFinal(bytes("e=invalid-proof")).error == SCRAMError("SCRAM server error: invalid-proof"))
        #expect(client.verifyServerFinal(bytes("v=!!")).error != nil)
        #expect(client.verifyServerFinal([]).error != nil)
    }

    // MARK: Mock secrets

    @Test func mockSecretIsStableAndAlwaysFails() {
        let key: [UInt8] = Array(repeating: 7, count: 32)
        let mock = SCRAMSecret.mock(user: "nobody", key: key)
        #expect(mock == SCRAMSecret.mock(user: "nobody", key: key))
        #expect(mock.salt != SCRAMSecret.mock(user: "somebody", key: key).salt)
        #expect(mock.salt != SCRAMSecret.mock(user: "nobody", key: Array(repeating: 8, count: 32)).salt)
        #expect(mock.salt.count == 16 && mock.storedKey.count == 32 && mock.serverKey.count == 32)
        #expect(mock.iterations == 4096)
        // The first step succeeds, like for a real user; the proof never verifies.
        let result = runExchange(secret: mock, credentials: .password(""))
        #expect(result.error == SCRAMError("SCRAM client proof is invalid"))
    }

    // MARK: Malformed input

    @Test(arguments: [
        "", "n", "n,", "n,,", "n,,n=", "n,,n=,r=", "n,,r=abc", "n,,n=,x=abc", "x,,n=,r=abc", "nn,,n=,r=abc",
        "p=tls-server-end-point,,n=,r=abc", "n,a=user,n=,r=abc", "n,,m=ext,n=,r=abc", "n,,n=,r=a b",
        "n,,n=,r=\u{e9}",
    ])
    func malformedClientFirstIsRejected(message: String) {
        var server = SCRAMServerExchange(secret: SCRAMSecret.mock(user: "u", key: [1]), nonceBytes: serverNonceBytes)
        #expect(server.receiveClientFirst(bytes(message)).error != nil)
        #expect(server.receiveClientFirst(bytes("n,,n=,r=abc")).error != nil, "exchange must stay failed")
    }

    @Test func invalidUTF8ClientFirstIsRejected() {
        var server = SCRAMServerExchange(secret: SCRAMSecret.mock(user: "u", key: [1]), nonceBytes: serverNonceBytes)
        #expect(server.receiveClientFirst([0x6E, 0x2C, 0x2C, 0x6E, 0x3D, 0x2C, 0x72, 0x3D, 0xFF, 0xC0]).error != nil)
    }

    @Test func malformedClientFinalIsRejected() throws {
        let secret = SCRAMSecret.derive(password: "pw", salt: Array(1...16), iterations: 16)
        let proof = SCRAMBase64.encodeString([UInt8](repeating: 0, count: 32))
        let nonce = "abc" + SCRAMBase64.encodeString(serverNonceBytes)
        let cases: [(String, String)] = [
            ("", "malformed SCRAM client-final-message"),
            ("c=biws", "malformed SCRAM client-final-message"),
            ("c=biws,r=\(nonce)", "malformed SCRAM client-final-message"),
            ("r=\(nonce),c=biws,p=\(proof)", "malformed SCRAM client-final-message"),
            ("c=eSws,r=\(nonce),p=\(proof)", "SCRAM channel binding check failed"),
            ("c=!!!!,r=\(nonce),p=\(proof)", "SCRAM channel binding check failed"),
            ("c=biws,r=abc,p=\(proof)", "SCRAM nonce mismatch"),
            ("c=biws,r=\(nonce)x,p=\(proof)", "SCRAM nonce mismatch"),
            ("c=biws,r=\(nonce),p=AAAA", "malformed SCRAM client proof"),
            ("c=biws,r=\(nonce),p=not base64", "malformed SCRAM client proof"),
            ("c=biws,r=\(nonce),p=\(proof)", "SCRAM client proof is invalid"),
        ]
        for (message, expected) in cases {
            var server = SCRAMServerExchange(secret: secret, nonceBytes: serverNonceBytes)
            _ = try server.receiveClientFirst(bytes("n,,n=,r=abc")).get()
            #expect(server.receiveClientFinal(bytes(message)).error == SCRAMError(expected), "\(message)")
            #expect(server.recoveredClientKey == nil)
        }
    }

    @Test func serverRejectsOutOfOrderMessages() {
        var server = SCRAMServerExchange(secret: SCRAMSecret.mock(user: "u", key: [1]), nonceBytes: serverNonceBytes)
        #expect(server.receiveClientFinal(bytes("c=biws,r=abc,p=AAAA")).error == SCRAMError("unexpected SCRAM client-final-message"))
        var second = SCRAMServerExchange(secret: SCRAMSecret.mock(user: "u", key: [1]), nonceBytes: serverNonceBytes)
        #expect(second.receiveClientFirst(bytes("n,,n=,r=abc")).error == nil)
        #expect(second.receiveClientFirst(bytes("n,,n=,r=abc")).error == SCRAMError("unexpected SCRAM client-first-message"))
    }

    @Test func malformedServerFirstIsRejected() {
        let ours = SCRAMBase64.encodeString(clientNonceBytes)
        let salt = "W22ZaJ0SNY7soEsUEjb6gQ=="
        let messages = [
            "", "r=\(ours)x", "r=\(ours)x,s=\(salt)", "e=other-error",
            "r=\(ours),s=\(salt),i=4096",             // nonce not extended
            "r=other\(ours),s=\(salt),i=4096",        // nonce replaced
            "r=\(ours)x y,s=\(salt),i=4096",          // not printable
            "r=\(ours)x,s=,i=4096", "r=\(ours)x,s=!!!!,i=4096",
            "r=\(ours)x,s=\(salt),i=0", "r=\(ours)x,s=\(salt),i=-1", "r=\(ours)x,s=\(salt),i=abc",
            "r=\(ours)x,s=\(salt),i=99999999999999999999", "r=\(ours)x,s=\(salt),i=",
            "m=ext,r=\(ours)x,s=\(salt),i=4096", "s=\(salt),r=\(ours)x,i=4096",
        ]
        for message in messages {
            var client = SCRAMClientExchange(credentials: .password("pw"), nonceBytes: clientNonceBytes)
            #expect(client.receiveServerFirst(bytes(message)).error != nil, "\(message)")
            #expect(client.verifyServerFinal(bytes("v=AAAA")).error != nil)
        }
        var badKeys = SCRAMClientExchange(credentials: .keys(clientKey: [1, 2], serverKey: []), nonceBytes: clientNonceBytes)
        #expect(badKeys.receiveServerFirst(bytes("r=\(ours)x,s=\(salt),i=4096")).error == SCRAMError("invalid SCRAM pass-through keys"))
    }

    @Test func clientRejectsSecondServerFirst() throws {
        let ours = SCRAMBase64.encodeString(clientNonceBytes)
        var client = SCRAMClientExchange(credentials: .password("pw"), nonceBytes: clientNonceBytes)
        let serverFirst = bytes("r=\(ours)x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=16")
        _ = try client.receiveServerFirst(serverFirst).get()
        #expect(client.receiveServerFirst(serverFirst).error == SCRAMError("unexpected SCRAM server-first-message"))
    }
}
