/// Why a SCRAM-SHA-256 exchange was refused. The text is for logs and for the
/// `ErrorResponse` Lifeguard sends; it never reveals whether the user exists.
public struct SCRAMError: Error, Sendable, Equatable {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }
}

/// The SCRAM-SHA-256 arithmetic (RFC 5802 section 3, RFC 7677) and the small
/// byte helpers both exchange sides share. Internal so tests can reach it.
enum SCRAM {
    static let keyLength = 32

    // MARK: Key derivation

    /// PostgreSQL runs the password through SASLprep and falls back to the raw
    /// bytes when that fails. We always use the raw UTF-8 bytes: identical for
    /// every ASCII password and for any password SASLprep leaves unchanged; a
    /// non-ASCII password that SASLprep would rewrite (e.g. non-NFKC text or
    /// U+00A0 spaces) will not match a secret PostgreSQL derived from it.
    static func passwordBytes(_ password: String) -> [UInt8] {
        Array(password.utf8)
    }

    /// PBKDF2-HMAC-SHA256 (RFC 8018) for one output block, which is exactly the
    /// 32 bytes SCRAM's `Hi()` needs.
    static func saltedPassword(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        precondition(iterations > 0, "SCRAM iteration count must be positive")
        // Keying HMAC once and copying the keyed state saves re-hashing the
        // password on each of the thousands of rounds.
        let keyed = HMACSHA256(key: password)
        var mac = keyed
        mac.update(salt + [0, 0, 0, 1])  // INT(1): first (and only) block
        var block = mac.finalize()
        var result = block
        for _ in 1..<iterations {
            var round = keyed
            round.update(block)
            block = round.finalize()
            for index in result.indices {
                result[index] ^= block[index]
            }
        }
        return result
    }

    static func hmac(key: [UInt8], _ message: [UInt8]) -> [UInt8] {
        HMACSHA256.authenticationCode(for: message, key: key)
    }

    static func sha256(_ data: [UInt8]) -> [UInt8] {
        SHA256.hash(data)
    }

    static func clientKey(saltedPassword: [UInt8]) -> [UInt8] {
        hmac(key: saltedPassword, Array("Client Key".utf8))
    }

    static func serverKey(saltedPassword: [UInt8]) -> [UInt8] {
        hmac(key: saltedPassword, Array("Server Key".utf8))
    }

    /// ClientProof = ClientKey XOR HMAC(H(ClientKey), AuthMessage).
    static func clientProof(clientKey: [UInt8], authMessage: [UInt8]) -> [UInt8] {
        xor(clientKey, hmac(key: sha256(clientKey), authMessage))
    }

    static func serverSignature(serverKey: [UInt8], authMessage: [UInt8]) -> [UInt8] {
        hmac(key: serverKey, authMessage)
    }

    /// AuthMessage = client-first-message-bare "," server-first-message ","
    /// client-final-message-without-proof, over the exact bytes exchanged.
    static func authMessage(
        clientFirstBare: some Collection<UInt8>,
        serverFirst: some Collection<UInt8>,
        clientFinalWithoutProof: some Collection<UInt8>
    ) -> [UInt8] {
        var message = Array(clientFirstBare)
        message.append(comma)
        message.append(contentsOf: serverFirst)
        message.append(comma)
        message.append(contentsOf: clientFinalWithoutProof)
        return message
    }

    static func xor(_ lhs: [UInt8], _ rhs: [UInt8]) -> [UInt8] {
        precondition(lhs.count == rhs.count)
        return zip(lhs, rhs).map { $0 ^ $1 }
    }

    /// Compares secrets without an early exit so timing does not leak how many
    /// leading bytes matched.
    static func constantTimeEqual(_ lhs: some Collection<UInt8>, _ rhs: some Collection<UInt8>) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for (left, right) in zip(lhs, rhs) {
            difference |= left ^ right
        }
        return difference == 0
    }

    // MARK: Message syntax

    static let comma = UInt8(ascii: ",")

    /// Splits a SCRAM message into its comma-separated attributes, keeping
    /// empty ones so positions stay meaningful.
    static func fields(_ message: some Collection<UInt8>) -> [ArraySlice<UInt8>] {
        Array(message).split(separator: comma, omittingEmptySubsequences: false)
    }

    /// The value of `name=value`, or nil if the field is a different attribute.
    static func attribute(_ name: Character, in field: ArraySlice<UInt8>) -> ArraySlice<UInt8>? {
        guard let ascii = name.asciiValue, field.count >= 2,
            field[field.startIndex] == ascii,
            field[field.startIndex + 1] == UInt8(ascii: "=")
        else { return nil }
        return field.dropFirst(2)
    }

    /// RFC 5802 `printable`: %x21-2B / %x2D-7E, i.e. visible ASCII except ",".
    static func isPrintable(_ bytes: some Collection<UInt8>) -> Bool {
        bytes.allSatisfy { (0x21...0x7E).contains($0) && $0 != comma }
    }

    static func text(_ bytes: some Collection<UInt8>) -> String {
        String(decoding: Array(bytes), as: UTF8.self)
    }

    /// A positive iteration count that also fits PostgreSQL's `int`.
    static func parseIterations(_ bytes: some Collection<UInt8>) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 10, bytes.allSatisfy({ (0x30...0x39).contains($0) }),
            let value = Int(text(bytes)), value > 0, value <= Int(Int32.max)
        else { return nil }
        return value
    }
}

/// Standard base64 with padding, as SCRAM and PostgreSQL's secrets use. Kept
/// here so LifeguardCore needs nothing beyond swift-crypto; decoding is strict
/// so malformed input is refused instead of being half-read.
enum SCRAMBase64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    private static let reverse: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (value, symbol) in alphabet.enumerated() {
            table[Int(symbol)] = UInt8(value)
        }
        return table
    }()

    static func encode(_ bytes: some Collection<UInt8>) -> [UInt8] {
        let input = Array(bytes)
        var output: [UInt8] = []
        output.reserveCapacity((input.count + 2) / 3 * 4)
        var index = 0
        while index < input.count {
            let remaining = input.count - index
            let b0 = UInt32(input[index])
            let b1 = remaining > 1 ? UInt32(input[index + 1]) : 0
            let b2 = remaining > 2 ? UInt32(input[index + 2]) : 0
            let triple = b0 << 16 | b1 << 8 | b2
            output.append(alphabet[Int(triple >> 18 & 0x3F)])
            output.append(alphabet[Int(triple >> 12 & 0x3F)])
            output.append(remaining > 1 ? alphabet[Int(triple >> 6 & 0x3F)] : UInt8(ascii: "="))
            output.append(remaining > 2 ? alphabet[Int(triple & 0x3F)] : UInt8(ascii: "="))
            index += 3
        }
        return output
    }

    static func encodeString(_ bytes: some Collection<UInt8>) -> String {
        String(decoding: encode(bytes), as: UTF8.self)
    }

    static func decode(_ encoded: some Collection<UInt8>) -> [UInt8]? {
        let input = Array(encoded)
        guard input.count % 4 == 0 else { return nil }
        var output: [UInt8] = []
        output.reserveCapacity(input.count / 4 * 3)
        var index = 0
        while index < input.count {
            let isLast = index + 4 == input.count
            var values: [UInt8] = []
            var padding = 0
            for offset in 0..<4 {
                let symbol = input[index + offset]
                if symbol == UInt8(ascii: "=") {
                    // Padding only in the last group's final one or two places.
                    guard isLast, offset >= 2 else { return nil }
                    padding += 1
                    values.append(0)
                } else {
                    guard padding == 0 else { return nil }
                    let value = reverse[Int(symbol)]
                    guard value != 0xFF else { return nil }
                    values.append(value)
                }
            }
            let triple = UInt32(values[0]) << 18 | UInt32(values[1]) << 12 | UInt32(values[2]) << 6 | UInt32(values[3])
            output.append(UInt8(triple >> 16 & 0xFF))
            if padding < 2 { output.append(UInt8(triple >> 8 & 0xFF)) }
            if padding < 1 { output.append(UInt8(triple & 0xFF)) }
            index += 4
        }
        return output
    }

    static func decode(_ encoded: String) -> [UInt8]? {
        decode(Array(encoded.utf8))
    }
}
