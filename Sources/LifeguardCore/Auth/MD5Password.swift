import Crypto

/// PostgreSQL's legacy MD5 password scheme. The stored secret is
/// `"md5" + hex(md5(password + user))`; on the wire the client answers a 4-byte
/// salt with `"md5" + hex(md5(hex-of-stored-secret + salt))`, so a stored hash
/// is enough to both check a client and log in to the server.
public enum MD5Password {
    /// The value PostgreSQL stores in `pg_authid` for an MD5 password.
    public static func hash(password: String, user: String) -> String {
        "md5" + hex(Insecure.MD5.hash(data: Array(password.utf8) + Array(user.utf8)))
    }

    /// What the client sends in its PasswordMessage. Accepts the stored hash with
    /// or without its "md5" prefix.
    public static func response(forStoredHash storedHash: String, salt: [UInt8]) -> String {
        let hexPart = storedHash.hasPrefix("md5") ? storedHash.dropFirst(3) : Substring(storedHash)
        return "md5" + hex(Insecure.MD5.hash(data: Array(hexPart.utf8) + salt))
    }

    public static func response(password: String, user: String, salt: [UInt8]) -> String {
        response(forStoredHash: hash(password: password, user: user), salt: salt)
    }

    /// Checks a client's PasswordMessage against the stored hash, in constant
    /// time so the comparison does not leak how close a guess was.
    public static func verify(clientResponse: String, storedHash: String, salt: [UInt8]) -> Bool {
        SCRAM.constantTimeEqual(
            Array(clientResponse.utf8), Array(response(forStoredHash: storedHash, salt: salt).utf8))
    }

    private static func hex(_ digest: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in digest {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
