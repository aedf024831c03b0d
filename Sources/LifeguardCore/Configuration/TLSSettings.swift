/// PgBouncer's `*_tls_sslmode` values, weakest first.
public enum SSLMode: String, Sendable, Equatable, CaseIterable, Comparable {
    case disable, allow, prefer, require
    case verifyCA = "verify-ca"
    case verifyFull = "verify-full"

    public static func < (lhs: SSLMode, rhs: SSLMode) -> Bool {
        lhs.strength < rhs.strength
    }

    private var strength: Int {
        switch self {
        case .disable: return 0
        case .allow: return 1
        case .prefer: return 2
        case .require: return 3
        case .verifyCA: return 4
        case .verifyFull: return 5
        }
    }
}

/// One side's TLS keys as written in the ini (`client_tls_*` or `server_tls_*`); the engine builds its
/// OpenSSL context from them.
public struct TLSSettings: Sendable, Equatable {
    public var sslMode: SSLMode
    public var keyFile = ""
    public var certFile = ""
    public var caFile = ""
    /// The TLS versions allowed, 0 for TLS 1.0 up to 3 for TLS 1.3 (from `*_tls_protocols`).
    public var versions: ClosedRange<Int> = 2...3
    /// `*_tls_ciphers`; nil for OpenSSL's defaults (PgBouncer's `default`, `secure`, `normal`, `fast`).
    public var ciphers: String?
    /// `*_tls13_ciphers`; nil for OpenSSL's defaults.
    public var tls13Ciphers: String?
    /// `client_tls_ecdhcurve`; nil for OpenSSL's choice (`auto`).
    public var ecdhCurve: String?
    /// `client_tls_dheparams`: false for `none`.
    public var diffieHellman = true

    public init(sslMode: SSLMode) {
        self.sslMode = sslMode
    }

    /// PgBouncer's protocol list: names (`tlsv1.0` to `tlsv1.3`, `all`, `legacy`, `secure`, `default`)
    /// separated by commas, colons or spaces, each optionally negated with `!`. OpenSSL takes a range, so
    /// the allowed versions run from the lowest to the highest named.
    public static func versions(from list: String) -> ClosedRange<Int>? {
        var allowed = Set<Int>()
        let separators: Set<Character> = [",", ":", " ", "\t"]
        for token in list.lowercased().split(whereSeparator: { separators.contains($0) }) {
            let negated = token.hasPrefix("!")
            let name = negated ? token.dropFirst() : token[...]
            let named: Set<Int>
            switch name {
            case "tlsv1.0", "tlsv1": named = [0]
            case "tlsv1.1": named = [1]
            case "tlsv1.2": named = [2]
            case "tlsv1.3": named = [3]
            case "all", "legacy": named = [0, 1, 2, 3]
            case "secure", "default": named = [2, 3]
            default: return nil
            }
            if negated { allowed.subtract(named) } else { allowed.formUnion(named) }
        }
        guard let lowest = allowed.min(), let highest = allowed.max() else { return nil }
        return lowest...highest
    }

    /// A cipher list value, nil when it names OpenSSL's defaults.
    static func cipherList(_ value: String) -> String? {
        let text = value.trimmingWhitespace()
        return ["", "default", "secure", "normal", "fast"].contains(text.lowercased()) ? nil : text
    }
}
