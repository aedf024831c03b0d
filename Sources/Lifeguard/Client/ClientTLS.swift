import LifeguardCore
import LifeguardEngine

/// Lifeguard as the TLS server its clients connect to (`client_tls_*`).
public enum ClientTLS {
    /// The OpenSSL context for clients' SSLRequests.
    static func makeContext(_ tls: TLSSettings) throws -> TLSContext {
        guard !tls.keyFile.isEmpty, !tls.certFile.isEmpty else {
            throw TLSError(
                "client_tls_sslmode = \(tls.sslMode.rawValue) needs client_tls_key_file and client_tls_cert_file")
        }
        var configuration = TLSConfiguration()
        configuration.keyFile = tls.keyFile
        configuration.certFile = tls.certFile
        configuration.caFile = tls.caFile
        configuration.versions =
            TLSVersion(rawValue: tls.versions.lowerBound)!...TLSVersion(rawValue: tls.versions.upperBound)!
        configuration.ciphers = tls.ciphers
        configuration.tls13Ciphers = tls.tls13Ciphers
        configuration.ecdhCurves = tls.ecdhCurve
        configuration.diffieHellman = tls.diffieHellman
        // As PgBouncer: with a CA file, every mode asks for a client certificate (for `cert` logins), and
        // verify-ca and verify-full refuse a client without one.
        if tls.sslMode >= .verifyCA {
            configuration.peerCertificate = .required
        } else if !tls.caFile.isEmpty {
            configuration.peerCertificate = .optional
        }
        return try TLSContext(configuration, isServer: true)
    }

    /// Whether the context can be built from these settings (their files read and checked), for the start.
    public static func check(_ tls: TLSSettings) throws {
        _ = try makeContext(tls)
    }
}
