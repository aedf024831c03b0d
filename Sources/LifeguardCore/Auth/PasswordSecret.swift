/// A secret from the userlist, classified the way PostgreSQL classifies
/// `rolpassword`: an MD5 hash, a SCRAM verifier, or else clear text.
public enum PasswordSecret: Sendable, Equatable {
    /// Clear text: works for both MD5 and SCRAM, in either direction.
    case plain(String)
    /// The full stored text, `"md5"` + 32 lowercase hex digits.
    case md5(String)
    /// Only usable to check SCRAM clients; logging in to the server with it
    /// needs the client's recovered keys (pass-through).
    case scram(SCRAMSecret)

    public init(parsing text: String) {
        if PasswordSecret.isMD5Hash(text) {
            self = .md5(text)
        } else if let secret = SCRAMSecret(parsing: text) {
            self = .scram(secret)
        } else {
            self = .plain(text)
        }
    }

    /// Same test as PostgreSQL's `get_password_type`: lowercase hex only, so an
    /// uppercase look-alike is (like there) a plain password.
    private static func isMD5Hash(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 35, text.hasPrefix("md5") else { return false }
        return bytes.dropFirst(3).allSatisfy {
            (0x30...0x39).contains($0) || (0x61...0x66).contains($0)
        }
    }
}
