/// Client side of SCRAM-SHA-256: Lifeguard logging in to PostgreSQL, with
/// either the clear-text password or keys recovered from a client's exchange
/// (pass-through, which works when the server's verifier matches ours).
public struct SCRAMClientExchange: Sendable {
    public enum Credentials: Sendable {
        case password(String)
        /// ClientKey and ServerKey, e.g. `SCRAMServerExchange.recoveredClientKey`
        /// and `SCRAMSecret.serverKey`. The server's salt and iteration count are
        /// then unused, since the keys already embody them.
        case keys(clientKey: [UInt8], serverKey: [UInt8])
    }

    /// PBKDF2 with the server's salt and iteration count: thousands of HMACs, so the caller runs it off its
    /// event loop and hands the result to `finishServerFirst`.
    public struct SaltedPasswordRequest: Sendable, Equatable {
        let password: [UInt8]
        let salt: [UInt8]
        let iterations: Int

        public func derive() -> [UInt8] {
            SCRAM.saltedPassword(password: password, salt: salt, iterations: iterations)
        }
    }

    /// The most PBKDF2 iterations Lifeguard runs for a server: PostgreSQL's default is 4096 and hardening
    /// guides ask for up to 600,000; a larger count is a server making Lifeguard burn CPU.
    public static let maxIterations = 1_000_000

    private let credentials: Credentials
    private let clientFirstBare: [UInt8]
    private let clientNonce: [UInt8]
    /// The server-first-message and its nonce, between `beginServerFirst` and `finishServerFirst`.
    private var serverFirst: (message: [UInt8], nonce: [UInt8])?
    /// Set once the client-final-message is built; checked against "v=".
    private var expectedServerSignature: [UInt8]?

    /// `nonceBytes` should be 18 random bytes; like libpq they are base64-encoded
    /// into the nonce.
    public init(credentials: Credentials, nonceBytes: [UInt8]) {
        // PostgreSQL ignores the SCRAM user name (the startup packet names the
        // role), so send it empty as libpq does.
        self.init(credentials: credentials, user: "", clientNonce: SCRAMBase64.encodeString(nonceBytes))
    }

    /// For tests replaying published exchanges that carry a user name and a
    /// non-base64 nonce.
    init(credentials: Credentials, user: String, clientNonce: String) {
        self.credentials = credentials
        self.clientNonce = Array(clientNonce.utf8)
        self.clientFirstBare = Array("n=\(user),r=\(clientNonce)".utf8)
    }

    /// Data for SASLInitialResponse. "n,,": no channel binding, and we do not
    /// claim to support it, which would be a lie over plain TCP.
    public func clientFirstMessage() -> [UInt8] {
        Array("n,,".utf8) + clientFirstBare
    }

    /// Takes AuthenticationSASLContinue data; returns the SASLResponse data. Runs PBKDF2 inline: for tests
    /// and callers off an event loop.
    public mutating func receiveServerFirst(_ message: [UInt8]) -> Result<[UInt8], SCRAMError> {
        beginServerFirst(message).map { request in finishServerFirst(saltedPassword: request?.derive()) }
    }

    /// Checks AuthenticationSASLContinue data. Returns the PBKDF2 work the SASLResponse needs when the
    /// credentials are a password (nil with pass-through keys); `finishServerFirst` then builds the response.
    public mutating func beginServerFirst(_ message: [UInt8]) -> Result<SaltedPasswordRequest?, SCRAMError> {
        guard expectedServerSignature == nil, serverFirst == nil else {
            return .failure(SCRAMError("unexpected SCRAM server-first-message"))
        }
        let fields = SCRAM.fields(message)
        guard fields.count >= 3 else {
            return .failure(SCRAMError("malformed SCRAM server-first-message"))
        }
        if SCRAM.attribute("m", in: fields[0]) != nil {
            return .failure(SCRAMError("SCRAM mandatory extensions are not supported"))
        }
        guard let nonce = SCRAM.attribute("r", in: fields[0]),
            let saltText = SCRAM.attribute("s", in: fields[1]),
            let iterationText = SCRAM.attribute("i", in: fields[2])
        else {
            return .failure(SCRAMError("malformed SCRAM server-first-message"))
        }
        // The server must extend our nonce, not replace or merely echo it.
        guard nonce.count > clientNonce.count, nonce.starts(with: clientNonce), SCRAM.isPrintable(nonce) else {
            return .failure(SCRAMError("invalid SCRAM server nonce"))
        }
        guard let salt = SCRAMBase64.decode(saltText), !salt.isEmpty else {
            return .failure(SCRAMError("malformed SCRAM salt"))
        }
        guard let iterations = SCRAM.parseIterations(iterationText) else {
            return .failure(SCRAMError("invalid SCRAM iteration count"))
        }
        switch credentials {
        case .password(let password):
            guard iterations <= Self.maxIterations else {
                return .failure(SCRAMError("SCRAM iteration count \(iterations) is above the limit of \(Self.maxIterations)"))
            }
            serverFirst = (message, Array(nonce))
            return .success(SaltedPasswordRequest(password: SCRAM.passwordBytes(password), salt: salt, iterations: iterations))
        case .keys(let clientKey, let serverKey):
            guard clientKey.count == SCRAM.keyLength, serverKey.count == SCRAM.keyLength else {
                return .failure(SCRAMError("invalid SCRAM pass-through keys"))
            }
            serverFirst = (message, Array(nonce))
            return .success(nil)
        }
    }

    /// The SASLResponse data (client-final-message) for the server-first-message `beginServerFirst` took,
    /// given the salted password it asked for (nil with pass-through keys).
    public mutating func finishServerFirst(saltedPassword: [UInt8]?) -> [UInt8] {
        guard let (message, nonce) = serverFirst else { return [] }
        let clientKey: [UInt8]
        let serverKey: [UInt8]
        switch credentials {
        case .password:
            let salted = saltedPassword ?? []
            clientKey = SCRAM.clientKey(saltedPassword: salted)
            serverKey = SCRAM.serverKey(saltedPassword: salted)
        case .keys(let givenClientKey, let givenServerKey):
            clientKey = givenClientKey
            serverKey = givenServerKey
        }

        // "biws" is base64("n,,"), the gs2 header we sent.
        let withoutProof = Array("c=".utf8) + SCRAMBase64.encode(Array("n,,".utf8)) + Array(",r=".utf8) + nonce
        let authMessage = SCRAM.authMessage(
            clientFirstBare: clientFirstBare, serverFirst: message, clientFinalWithoutProof: withoutProof)
        let proof = SCRAM.clientProof(clientKey: clientKey, authMessage: authMessage)
        expectedServerSignature = SCRAM.serverSignature(serverKey: serverKey, authMessage: authMessage)
        return withoutProof + Array(",p=".utf8) + SCRAMBase64.encode(proof)
    }

    /// Takes AuthenticationSASLFinal data. Success proves the server knows the
    /// verifier too, not just that it let us in.
    public func verifyServerFinal(_ message: [UInt8]) -> Result<Void, SCRAMError> {
        guard let expected = expectedServerSignature else {
            return .failure(SCRAMError("unexpected SCRAM server-final-message"))
        }
        let first = SCRAM.fields(message)[0]
        if let error = SCRAM.attribute("e", in: first) {
            return .failure(SCRAMError("SCRAM server error: \(SCRAM.text(error))"))
        }
        guard let signatureText = SCRAM.attribute("v", in: first),
            let signature = SCRAMBase64.decode(signatureText)
        else {
            return .failure(SCRAMError("malformed SCRAM server-final-message"))
        }
        guard SCRAM.constantTimeEqual(signature, expected) else {
            return .failure(SCRAMError("SCRAM server signature is invalid"))
        }
        return .success(())
    }
}
