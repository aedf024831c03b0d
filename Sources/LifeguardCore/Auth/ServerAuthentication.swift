import NIOCore
import PostgresWire

/// Lifeguard's side of logging in to PostgreSQL: answers each authentication request (`R` message) from the
/// credentials it has. Pure: the caller moves the bytes.
///
/// A plain-text userlist password answers every method; an md5 hash answers md5 only; a SCRAM secret answers
/// SCRAM only through pass-through, with the keys recovered from a client's SCRAM login.
public struct ServerAuthentication {
    public enum Step: Equatable, Sendable {
        /// Send the reply (if any was written) and wait for the next request.
        case continueLogin
        /// AuthenticationOk: the server now sends ParameterStatus, BackendKeyData and ReadyForQuery.
        case authenticated
        /// SCRAM needs PBKDF2 before it can answer: run it off the event loop, then `receiveSaltedPassword`.
        case deriveSaltedPassword(SCRAMClientExchange.SaltedPasswordRequest)
    }

    private let user: String
    private let secret: PasswordSecret?
    private let scramKeys: (clientKey: [UInt8], serverKey: [UInt8])?
    private let random: (Int) -> [UInt8]
    private var scram: SCRAMClientExchange?

    public init(
        user: String, secret: PasswordSecret?, scramKeys: (clientKey: [UInt8], serverKey: [UInt8])?,
        random: @escaping (Int) -> [UInt8] = ClientAuthentication.systemRandom
    ) {
        self.user = user
        self.secret = secret
        self.scramKeys = scramKeys
        self.random = random
    }

    /// Handles one authentication request; writes the answer into `reply`. Throws, with a message for the log
    /// and for the waiting clients, when Lifeguard cannot answer or the server's proof is wrong.
    public mutating func receive(code: Int32, data: ByteBuffer, into reply: inout ByteBuffer) throws(PoolerError)
        -> Step
    {
        switch code {
        case AuthenticationCode.ok:
            // A server that skips the end of SCRAM never proved it knows the secret.
            guard scram == nil else { throw PoolerError("server sent AuthenticationOk before completing SCRAM") }
            return .authenticated
        case AuthenticationCode.cleartextPassword:
            guard case .plain(let password) = secret else {
                throw PoolerError(
                    "server requested a clear-text password, but the userlist has no plain password for \(user)")
            }
            reply.writePasswordMessage(password)
        case AuthenticationCode.md5Password:
            guard let salt = data.getBytes(at: data.readerIndex, length: 4) else {
                throw PoolerError("bad md5 authentication request")
            }
            switch secret {
            case .plain(let password):
                reply.writePasswordMessage(MD5Password.response(password: password, user: user, salt: salt))
            case .md5(let hash):
                reply.writePasswordMessage(MD5Password.response(forStoredHash: hash, salt: salt))
            case .scram:
                throw PoolerError("wrong password type: the server asks for md5 and the userlist holds a SCRAM secret for \(user)")
            case nil:
                throw PoolerError(
                    "server requested md5 authentication, but no plain or md5 password is known for \(user)")
            }
        case AuthenticationCode.sasl:
            var mechanisms = data
            var offered: [String] = []
            while let name = mechanisms.readNullTerminatedString(), !name.isEmpty { offered.append(name) }
            guard offered.contains("SCRAM-SHA-256") else {
                throw PoolerError("server offered no supported SASL mechanism: \(offered.joined(separator: ", "))")
            }
            let exchange = SCRAMClientExchange(credentials: try scramCredentials(), nonceBytes: random(18))
            reply.writeSASLInitialResponse(mechanism: "SCRAM-SHA-256", data: exchange.clientFirstMessage())
            scram = exchange
        case AuthenticationCode.saslContinue:
            guard var exchange = scram else { throw PoolerError("unexpected SASL continue message") }
            switch exchange.beginServerFirst(Array(data.readableBytesView)) {
            case .success(let request?):
                scram = exchange
                return .deriveSaltedPassword(request)
            case .success(nil):
                reply.writeSASLResponse(exchange.finishServerFirst(saltedPassword: nil))
            case .failure(let error):
                throw PoolerError("SCRAM: \(error.message)")
            }
            scram = exchange
        case AuthenticationCode.saslFinal:
            guard let exchange = scram else { throw PoolerError("unexpected SASL final message") }
            if case .failure(let error) = exchange.verifyServerFinal(Array(data.readableBytesView)) {
                throw PoolerError("SCRAM: \(error.message)")
            }
            scram = nil
        default:
            throw PoolerError("unsupported server authentication method \(code)")
        }
        return .continueLogin
    }

    /// Answers the SASL continue message once the PBKDF2 that `.deriveSaltedPassword` asked for is done.
    public mutating func receiveSaltedPassword(_ saltedPassword: [UInt8], into reply: inout ByteBuffer) {
        guard var exchange = scram else { return }
        reply.writeSASLResponse(exchange.finishServerFirst(saltedPassword: saltedPassword))
        scram = exchange
    }

    private func scramCredentials() throws(PoolerError) -> SCRAMClientExchange.Credentials {
        switch secret {
        case .plain(let password):
            return .password(password)
        case .scram:
            guard let scramKeys else {
                // PgBouncer's "wrong password type", which its users' tooling matches, with the reason.
                throw PoolerError(
                    "wrong password type: the userlist holds a SCRAM secret for \(user), usable only when the client logged in with SCRAM"
                )
            }
            return .keys(clientKey: scramKeys.clientKey, serverKey: scramKeys.serverKey)
        case .md5:
            throw PoolerError("wrong password type: the server asks for SCRAM and the userlist holds an md5 hash for \(user)")
        case nil:
            throw PoolerError(
                "server requested SCRAM authentication, but no plain password or SCRAM keys are known for \(user)")
        }
    }
}
