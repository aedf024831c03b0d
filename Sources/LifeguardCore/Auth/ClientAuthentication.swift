import NIOCore
import PostgresWire

/// Lifeguard's side of a client login: which challenge to send for `auth_type` and the user's userlist
/// secret, and whether the answers prove the password. Pure: the caller moves the bytes.
///
/// As in PgBouncer, an unknown user is challenged like a known one and fails at the end (no user
/// enumeration), and `auth_type = md5` switches to SCRAM when the stored secret is a SCRAM secret.
public struct ClientAuthentication {
    public enum Step: Equatable, Sendable {
        case awaitingPassword
        case authenticated
        /// A clear-text password to check against a stored SCRAM secret: PBKDF2, thousands of HMACs, so the
        /// caller runs the check off its event loop and hands the answer to `receivePasswordCheck`.
        case checkPassword(PasswordCheck)
    }

    /// PBKDF2 of a clear-text password with a stored SCRAM secret's salt and iteration count.
    public struct PasswordCheck: Equatable, Sendable {
        let password: String
        let secret: SCRAMSecret

        /// Whether the password derives to the secret. Slow: run it off the event loop.
        public func run() -> Bool {
            ClientAuthentication.verify(password: password, user: "", against: .scram(secret))
        }
    }

    private enum State {
        case initial
        case cleartext
        case checkingPassword
        case md5(salt: [UInt8])
        case scramInitial(SCRAMServerExchange, isMock: Bool, fromStoredSecret: Bool)
        case scramFinal(SCRAMServerExchange, isMock: Bool, fromStoredSecret: Bool)
        case done
    }

    public let startup: ClientStartup
    private let authType: AuthType
    private let secret: PasswordSecret?
    private let requireUserListEntry: Bool
    private let mockKey: [UInt8]
    private let derivations: any PlainPasswordDerivations
    private let random: (Int) -> [UInt8]
    /// tls-server-end-point data for SCRAM-SHA-256-PLUS, on a TLS connection.
    private let channelBinding: [UInt8]?
    private var state = State.initial

    /// Keys recovered from a SCRAM login against a stored SCRAM secret: they let Lifeguard log in to a server
    /// holding the same secret without knowing the password (SCRAM pass-through).
    public private(set) var scramKeys: (clientKey: [UInt8], serverKey: [UInt8])?

    /// - Parameters:
    ///   - secret: the userlist entry for the user, nil when the user is unknown.
    ///   - requireUserListEntry: `trust` still demands that the user exists, when there is an auth_file.
    ///   - derivations: what a plain-text userlist password derives to (the caller caches them).
    ///   - random: random bytes for salts and nonces.
    ///   - channelBinding: on a TLS connection, the hash of Lifeguard's certificate (SCRAM-SHA-256-PLUS).
    public init(
        startup: ClientStartup, authType: AuthType, secret: PasswordSecret?, requireUserListEntry: Bool,
        mockKey: [UInt8], derivations: any PlainPasswordDerivations,
        random: @escaping (Int) -> [UInt8] = ClientAuthentication.systemRandom, channelBinding: [UInt8]? = nil
    ) {
        self.channelBinding = channelBinding
        self.startup = startup
        self.authType = authType
        self.secret = secret
        self.requireUserListEntry = requireUserListEntry
        self.mockKey = mockKey
        self.derivations = derivations
        self.random = random
    }

    /// Random bytes, eight per call to the system generator (each call is a getrandom system call).
    public static func systemRandom(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count + 7)
        while bytes.count < count {
            withUnsafeBytes(of: generator.next()) { bytes.append(contentsOf: $0) }
        }
        bytes.removeLast(bytes.count - count)
        return bytes
    }

    private var user: String { startup.user }

    /// Writes the first challenge (if any) into `reply`.
    public mutating func start(into reply: inout ByteBuffer) throws(PoolerError) -> Step {
        switch authType {
        case .hba, .cert:
            // The caller judges the login by the HBA rules or the certificate and passes the method that
            // follows.
            throw PoolerError("login rejected")
        case .any:
            state = .done
            return .authenticated
        case .trust:
            guard secret != nil || !requireUserListEntry else { throw .trustFailed }
            state = .done
            return .authenticated
        case .plain:
            reply.writeAuthenticationCleartext()
            state = .cleartext
        case .md5:
            if case .scram(let stored) = secret {
                startSCRAM(stored, isMock: false, fromStoredSecret: true, into: &reply)
            } else {
                let salt = random(4)
                reply.writeAuthenticationMD5(salt: salt)
                state = .md5(salt: salt)
            }
        case .scramSHA256:
            switch secret {
            case .scram(let stored):
                startSCRAM(stored, isMock: false, fromStoredSecret: true, into: &reply)
            case .plain(let password) where !password.isEmpty:
                startSCRAM(derivations.scramSecret(user: user, password: password), isMock: false, fromStoredSecret: false, into: &reply)
            case .plain, .md5, nil:
                // An md5 hash (or an empty password) cannot answer SCRAM; like an unknown user, run the exchange and
                // fail at the end.
                startSCRAM(SCRAMSecret.mock(user: user, key: mockKey), isMock: true, fromStoredSecret: false, into: &reply)
            }
        }
        return .awaitingPassword
    }

    private mutating func startSCRAM(
        _ secret: SCRAMSecret, isMock: Bool, fromStoredSecret: Bool, into reply: inout ByteBuffer
    ) {
        let exchange = SCRAMServerExchange(secret: secret, nonceBytes: random(18), channelBinding: channelBinding)
        reply.writeAuthenticationSASL(mechanisms: exchange.mechanisms)
        state = .scramInitial(exchange, isMock: isMock, fromStoredSecret: fromStoredSecret)
    }

    /// Handles the body of one `p` message; writes the next challenge or the SASL final message into `reply`.
    public mutating func receive(_ body: ByteBuffer, into reply: inout ByteBuffer) throws(PoolerError) -> Step {
        switch state {
        case .cleartext:
            guard let password = FrontendMessage.password(body) else { throw .passwordFailed }
            // PostgreSQL and PgBouncer never accept an empty password, whatever is stored.
            guard !password.isEmpty else { throw PoolerError("empty password returned by client") }
            guard let secret else { throw .passwordFailed }
            if case .scram(let stored) = secret {
                state = .checkingPassword
                return .checkPassword(PasswordCheck(password: password, secret: stored))
            }
            guard Self.verify(password: password, user: user, against: secret) else { throw .passwordFailed }
        case .md5(let salt):
            guard let answer = FrontendMessage.password(body) else { throw .passwordFailed }
            let storedHash: String?
            switch secret {
            case .plain(let password) where !password.isEmpty: storedHash = derivations.md5Hash(user: user, password: password)
            case .md5(let hash): storedHash = hash
            case .plain, .scram, nil: storedHash = nil
            }
            guard let storedHash, MD5Password.verify(clientResponse: answer, storedHash: storedHash, salt: salt)
            else { throw .passwordFailed }
        case .scramInitial(var exchange, let isMock, let fromStoredSecret):
            guard let (mechanism, data) = FrontendMessage.saslInitialResponse(body) else { throw .saslFailed }
            guard exchange.mechanisms.contains(mechanism) else {
                throw PoolerError("client selected an invalid SASL authentication mechanism")
            }
            switch exchange.receiveClientFirst(data, mechanism: mechanism) {
            case .success(let serverFirst):
                reply.writeAuthenticationSASLContinue(serverFirst)
                state = .scramFinal(exchange, isMock: isMock, fromStoredSecret: fromStoredSecret)
                return .awaitingPassword
            case .failure:
                throw .saslFailed
            }
        case .scramFinal(var exchange, let isMock, let fromStoredSecret):
            guard case .success(let serverFinal) = exchange.receiveClientFinal(Array(body.readableBytesView)),
                !isMock
            else { throw .saslFailed }
            reply.writeAuthenticationSASLFinal(serverFinal)
            if fromStoredSecret, case .scram(let stored) = secret, let clientKey = exchange.recoveredClientKey {
                scramKeys = (clientKey, stored.serverKey)
            }
        case .initial, .checkingPassword, .done:
            throw PoolerError("unexpected password packet")
        }
        state = .done
        return .authenticated
    }

    /// The outcome of the `PasswordCheck` that `receive` asked for.
    public mutating func receivePasswordCheck(_ matches: Bool) throws(PoolerError) -> Step {
        guard case .checkingPassword = state else { throw PoolerError("unexpected password check") }
        guard matches else { throw .passwordFailed }
        state = .done
        return .authenticated
    }

    /// A clear-text password checked against any form of stored secret.
    static func verify(password: String, user: String, against secret: PasswordSecret) -> Bool {
        switch secret {
        case .plain(let stored):
            return stored == password
        case .md5(let hash):
            return MD5Password.hash(password: password, user: user) == hash
        case .scram(let stored):
            let derived = SCRAMSecret.derive(password: password, salt: stored.salt, iterations: stored.iterations)
            return derived.storedKey == stored.storedKey && derived.serverKey == stored.serverKey
        }
    }
}

/// What a plain-text userlist password turns into for each challenge. Both cost real work (a SCRAM secret
/// is thousands of HMACs, an md5 hash is paid on every md5 login), so the daemon derives each once per user.
public protocol PlainPasswordDerivations {
    func scramSecret(user: String, password: String) -> SCRAMSecret
    func md5Hash(user: String, password: String) -> String
}
