/// Derives SCRAM secrets and md5 hashes from plain-text userlist passwords once per user and keeps them.
/// Entries remember the password they came from, so a userlist reload that changes a password is never
/// answered from a stale entry. Not thread-safe: each event loop's shard owns one.
public final class PlainPasswordCache: PlainPasswordDerivations {
    private var scramSecrets: [String: (password: String, secret: SCRAMSecret)] = [:]
    private var md5Hashes: [String: (password: String, hash: String)] = [:]
    private let salt: () -> [UInt8]

    /// - Parameter salt: the random salt for each derived SCRAM secret.
    public init(salt: @escaping () -> [UInt8]) {
        self.salt = salt
    }

    public func scramSecret(user: String, password: String) -> SCRAMSecret {
        if let cached = scramSecrets[user], cached.password == password { return cached.secret }
        let secret = SCRAMSecret.derive(password: password, salt: salt(), iterations: 4096)
        scramSecrets[user] = (password, secret)
        return secret
    }

    public func md5Hash(user: String, password: String) -> String {
        if let cached = md5Hashes[user], cached.password == password { return cached.hash }
        let hash = MD5Password.hash(password: password, user: user)
        md5Hashes[user] = (password, hash)
        return hash
    }

    /// Forgets users that are no longer in the userlist.
    public func keepOnly(users: Set<String>) {
        scramSecrets = scramSecrets.filter { users.contains($0.key) }
        md5Hashes = md5Hashes.filter { users.contains($0.key) }
    }
}
