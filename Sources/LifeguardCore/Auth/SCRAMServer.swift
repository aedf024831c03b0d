/// Server side of SCRAM-SHA-256: Lifeguard checking a client against a stored
/// verifier. Over TLS it also offers SCRAM-SHA-256-PLUS with the
/// tls-server-end-point channel binding (RFC 5929): the client then proves it
/// sees Lifeguard's own certificate, so no one in the middle can relay the
/// exchange. Without TLS only "n,," and "y,," gs2 headers are accepted.
///
/// Feed it the SASLInitialResponse data, then the SASLResponse data; each step
/// returns the bytes for the next AuthenticationSASLContinue/Final message.
/// Any error ends the exchange.
public struct SCRAMServerExchange: Sendable {
    private enum State: Sendable {
        case awaitingClientFirst
        case awaitingClientFinal(
            gs2Header: [UInt8], clientFirstBare: [UInt8], serverFirst: [UInt8], nonce: [UInt8])
        case succeeded(clientKey: [UInt8])
        case failed
    }

    private let secret: SCRAMSecret
    private let serverNonce: [UInt8]
    /// tls-server-end-point data (the hash of Lifeguard's certificate) when the
    /// connection is TLS; nil offers no channel binding.
    private let channelBinding: [UInt8]?
    private var state: State = .awaitingClientFirst

    public static let mechanism = "SCRAM-SHA-256"
    public static let bindingMechanism = "SCRAM-SHA-256-PLUS"

    /// `nonceBytes` should be 18 random bytes (as PostgreSQL uses); they are
    /// base64-encoded into the server's half of the nonce.
    public init(secret: SCRAMSecret, nonceBytes: [UInt8], channelBinding: [UInt8]? = nil) {
        self.init(secret: secret, serverNonce: SCRAMBase64.encodeString(nonceBytes), channelBinding: channelBinding)
    }

    /// For tests that replay published exchanges with non-base64 nonces.
    init(secret: SCRAMSecret, serverNonce: String, channelBinding: [UInt8]? = nil) {
        self.secret = secret
        self.serverNonce = Array(serverNonce.utf8)
        self.channelBinding = channelBinding
    }

    /// The mechanisms to advertise, PostgreSQL's order: -PLUS first when it can bind.
    public var mechanisms: [String] {
        channelBinding == nil ? [Self.mechanism] : [Self.bindingMechanism, Self.mechanism]
    }

    /// After a successful exchange: ClientKey = ClientProof XOR ClientSignature.
    /// With it (and the secret's ServerKey) Lifeguard can log in to a PostgreSQL
    /// server that holds the same verifier without knowing the password.
    public var recoveredClientKey: [UInt8]? {
        if case .succeeded(let clientKey) = state { return clientKey }
        return nil
    }

    /// `mechanism`: the one the client chose in its SASLInitialResponse.
    public mutating func receiveClientFirst(_ message: [UInt8], mechanism: String = mechanism) -> Result<[UInt8], SCRAMError> {
        guard case .awaitingClientFirst = state else {
            return fail("unexpected SCRAM client-first-message")
        }
        let fields = SCRAM.fields(message)
        guard fields.count >= 4 else {
            return fail("malformed SCRAM client-first-message")
        }
        // gs2-header: cbind-flag "," [authzid] ","; the flag must fit the mechanism, as PostgreSQL checks.
        let binds = mechanism == Self.bindingMechanism
        switch SCRAM.text(fields[0]) {
        case "n" where !binds:
            break
        case "y" where !binds:
            // The client could bind but believes we cannot: a downgrade if we offered -PLUS.
            if channelBinding != nil { return fail("SCRAM channel binding negotiation error") }
        case "p=tls-server-end-point" where binds && channelBinding != nil:
            break
        case let flag where flag.hasPrefix("p=") && binds && channelBinding != nil:
            return fail("unsupported SCRAM channel-binding type")
        default:
            return fail("SCRAM channel binding negotiation error")
        }
        // PostgreSQL does not support authorization identities either.
        guard fields[1].isEmpty else {
            return fail("SCRAM authorization identity is not supported")
        }
        if SCRAM.attribute("m", in: fields[2]) != nil {
            return fail("SCRAM mandatory extensions are not supported")
        }
        // The user name is ignored, as PostgreSQL does: the startup packet's
        // user is the one that counts, and clients usually send it empty.
        guard SCRAM.attribute("n", in: fields[2]) != nil,
            let clientNonce = SCRAM.attribute("r", in: fields[3]),
            !clientNonce.isEmpty, SCRAM.isPrintable(clientNonce)
        else {
            return fail("malformed SCRAM client-first-message")
        }
        let gs2Header = Array(fields[0]) + [SCRAM.comma] + Array(fields[1]) + [SCRAM.comma]
        let clientFirstBare = Array(message.dropFirst(gs2Header.count))
        let nonce = Array(clientNonce) + serverNonce
        let serverFirst = Array(
            "r=\(SCRAM.text(nonce)),s=\(SCRAMBase64.encodeString(secret.salt)),i=\(secret.iterations)".utf8)
        state = .awaitingClientFinal(
            gs2Header: gs2Header, clientFirstBare: clientFirstBare, serverFirst: serverFirst, nonce: nonce)
        return .success(serverFirst)
    }

    public mutating func receiveClientFinal(_ message: [UInt8]) -> Result<[UInt8], SCRAMError> {
        guard case .awaitingClientFinal(let gs2Header, let clientFirstBare, let serverFirst, let nonce) = state
        else {
            return fail("unexpected SCRAM client-final-message")
        }
        // c=<channel binding>,r=<nonce>[,extensions],p=<proof>; proof is last.
        let fields = SCRAM.fields(message)
        guard fields.count >= 3,
            let binding = SCRAM.attribute("c", in: fields[0]),
            let echoedNonce = SCRAM.attribute("r", in: fields[1]),
            let proofText = SCRAM.attribute("p", in: fields[fields.count - 1])
        else {
            return fail("malformed SCRAM client-final-message")
        }
        // c= is the gs2 header (so a meddler cannot have flipped "y" to "n"),
        // followed with channel binding by the hash of the certificate the
        // client saw, which must be Lifeguard's own.
        let expected = gs2Header.first == UInt8(ascii: "p") ? gs2Header + (channelBinding ?? []) : gs2Header
        guard let bindingData = SCRAMBase64.decode(binding), SCRAM.constantTimeEqual(bindingData, expected) else {
            return fail("SCRAM channel binding check failed")
        }
        guard SCRAM.constantTimeEqual(echoedNonce, nonce) else {
            return fail("SCRAM nonce mismatch")
        }
        guard let proof = SCRAMBase64.decode(proofText), proof.count == SCRAM.keyLength else {
            return fail("malformed SCRAM client proof")
        }
        let withoutProof = message.prefix(message.count - fields[fields.count - 1].count - 1)
        let authMessage = SCRAM.authMessage(
            clientFirstBare: clientFirstBare, serverFirst: serverFirst, clientFinalWithoutProof: withoutProof)
        let clientSignature = SCRAM.hmac(key: secret.storedKey, authMessage)
        let clientKey = SCRAM.xor(proof, clientSignature)
        // The proof is right iff H(ClientKey) is the StoredKey we hold.
        guard secret.storedKey.count == SCRAM.keyLength,
            SCRAM.constantTimeEqual(SCRAM.sha256(clientKey), secret.storedKey)
        else {
            return fail("SCRAM client proof is invalid")
        }
        state = .succeeded(clientKey: clientKey)
        let signature = SCRAM.serverSignature(serverKey: secret.serverKey, authMessage: authMessage)
        return .success(Array("v=".utf8) + SCRAMBase64.encode(signature))
    }

    private mutating func fail(_ message: String) -> Result<[UInt8], SCRAMError> {
        state = .failed
        return .failure(SCRAMError(message))
    }
}
