/// A SCRAM-SHA-256 verifier as PostgreSQL stores it in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 fields).
/// It lets Lifeguard check a client's proof without knowing the password.
public struct SCRAMSecret: Sendable, Equatable {
    public var iterations: Int
    public var salt: [UInt8]
    public var storedKey: [UInt8]
    public var serverKey: [UInt8]

    public init(iterations: Int, salt: [UInt8], storedKey: [UInt8], serverKey: [UInt8]) {
        self.iterations = iterations
        self.salt = salt
        self.storedKey = storedKey
        self.serverKey = serverKey
    }

    /// Parses PostgreSQL's text form; nil for anything else (so callers can fall
    /// back to treating the text as a plain password).
    public init?(parsing text: String) {
        let parts = text.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "SCRAM-SHA-256" else { return nil }
        let saltPart = parts[1].split(separator: ":", omittingEmptySubsequences: false)
        let keyPart = parts[2].split(separator: ":", omittingEmptySubsequences: false)
        guard saltPart.count == 2, keyPart.count == 2,
            let iterations = SCRAM.parseIterations(Array(saltPart[0].utf8)),
            let salt = SCRAMBase64.decode(String(saltPart[1])), !salt.isEmpty,
            let storedKey = SCRAMBase64.decode(String(keyPart[0])), storedKey.count == SCRAM.keyLength,
            let serverKey = SCRAMBase64.decode(String(keyPart[1])), serverKey.count == SCRAM.keyLength
        else { return nil }
        self.init(iterations: iterations, salt: salt, storedKey: storedKey, serverKey: serverKey)
    }

    /// The text form PostgreSQL stores and `init(parsing:)` reads back.
    public var encoded: String {
        "SCRAM-SHA-256$\(iterations):\(SCRAMBase64.encodeString(salt))"
            + "$\(SCRAMBase64.encodeString(storedKey)):\(SCRAMBase64.encodeString(serverKey))"
    }

    /// Derives the verifier for a clear-text password, as PostgreSQL does when it
    /// hashes a password (see `SCRAM.passwordBytes` for the SASLprep caveat).
    public static func derive(password: String, salt: [UInt8], iterations: Int) -> SCRAMSecret {
        let salted = SCRAM.saltedPassword(
            password: SCRAM.passwordBytes(password), salt: salt, iterations: iterations)
        return SCRAMSecret(
            iterations: iterations,
            salt: salt,
            storedKey: SCRAM.sha256(SCRAM.clientKey(saltedPassword: salted)),
            serverKey: SCRAM.serverKey(saltedPassword: salted))
    }

    /// A stand-in verifier for a user that does not exist, so the exchange runs
    /// to the final step exactly as for a real user and an attacker cannot tell
    /// the two apart. Derived from the name and a per-process random `key` so a
    /// repeated attempt sees the same salt (a changing salt would betray the
    /// fake). The keys are HMAC outputs, not hashes of any ClientKey, so no
    /// proof can ever verify against them.
    public static func mock(user: String, key: [UInt8], iterations: Int = 4096) -> SCRAMSecret {
        func derived(_ label: String) -> [UInt8] {
            SCRAM.hmac(key: key, Array("lifeguard-mock-\(label):".utf8) + Array(user.utf8))
        }
        return SCRAMSecret(
            iterations: iterations,
            salt: Array(derived("salt").prefix(16)),  // PostgreSQL's default salt length
            storedKey: derived("stored-key"),
            serverKey: derived("server-key"))
    }
}
