/// PostgreSQL's legacy MD5 password scheme. The stored secret is
/// `"md5" + hex(md5(password + user))`; on the wire the client answers a 4-byte
/// salt with `"md5" + hex(md5(hex-of-stored-secret + salt))`, so a stored hash
/// is enough to both check a client and log in to the server.
public enum MD5Password {
    /// The value PostgreSQL stores in `pg_authid` for an MD5 password.
    public static func hash(password: String, user: String) -> String {
        var md5 = MD5()
        md5.update(password.utf8)
        md5.update(user.utf8)
        return String(decoding: prefixedHex(md5.finalize()), as: UTF8.self)
    }

    /// What the client sends in its PasswordMessage. Accepts the stored hash with
    /// or without its "md5" prefix.
    public static func response(forStoredHash storedHash: String, salt: [UInt8]) -> String {
        String(decoding: responseBytes(forStoredHash: storedHash, salt: salt), as: UTF8.self)
    }

    public static func response(password: String, user: String, salt: [UInt8]) -> String {
        response(forStoredHash: hash(password: password, user: user), salt: salt)
    }

    /// Checks a client's PasswordMessage against the stored hash, in constant
    /// time so the comparison does not leak how close a guess was.
    public static func verify(clientResponse: String, storedHash: String, salt: [UInt8]) -> Bool {
        SCRAM.constantTimeEqual(clientResponse.utf8, responseBytes(forStoredHash: storedHash, salt: salt))
    }

    /// The response as bytes: this runs on every md5 login, so it stays clear of intermediate strings.
    private static func responseBytes(forStoredHash storedHash: String, salt: [UInt8]) -> [UInt8] {
        var md5 = MD5()
        md5.update((storedHash.hasPrefix("md5") ? storedHash.dropFirst(3) : Substring(storedHash)).utf8)
        md5.update(salt)
        return prefixedHex(md5.finalize())
    }

    /// `"md5"` followed by the digest in lower-case hex.
    private static func prefixedHex(_ digest: [UInt8]) -> [UInt8] {
        var text: [UInt8] = Array("md5".utf8)
        text.reserveCapacity(3 + 2 * digest.count)
        for byte in digest {
            text.append(hexDigit(byte >> 4))
            text.append(hexDigit(byte & 0x0F))
        }
        return text
    }

    @inline(__always)
    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
    }
}
