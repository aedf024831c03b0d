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

    /// Lower-case hex of a digest, written straight into the string's storage (this runs on every login).
    private static func hex(_ digest: Insecure.MD5.Digest) -> String {
        digest.withUnsafeBytes { bytes in
            String(unsafeUninitializedCapacity: bytes.count * 2) { out in
                for (index, byte) in bytes.enumerated() {
                    out[2 * index] = hexDigit(byte >> 4)
                    out[2 * index + 1] = hexDigit(byte & 0x0F)
                }
                return bytes.count * 2
            }
        }
    }

    @inline(__always)
    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
    }
}
