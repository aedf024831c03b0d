import LifeguardCore
import LifeguardEngine

/// The OpenSSL contexts of both sides: Lifeguard as the TLS server its clients connect to (`client_tls_*`)
/// and as a TLS client of PostgreSQL (`server_tls_*`).
public enum PoolerTLS {
    /// The OpenSSL context for clients' SSLRequests.
    static func makeContext(_ tls: TLSSettings) throws -> TLSContext {
        guard !tls.keyFile.isEmpty, !tls.certFile.isEmpty else {
            throw TLSError(
                "client_tls_sslmode = \(tls.sslMode.rawValue) needs client_tls_key_file and client_tls_cert_file")
        }
        var configuration = common(tls)
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

    /// Lifeguard as a TLS client of PostgreSQL (`server_tls_*`): verify-ca and verify-full check the server's
    /// certificate against `server_tls_ca_file` (else the system's CAs); the key and certificate, if set,
    /// are presented for PostgreSQL's `cert` authentication.
    static func makeServerContext(_ tls: TLSSettings) throws -> TLSContext {
        var configuration = common(tls)
        configuration.peerCertificate = tls.sslMode >= .verifyCA ? .required : .notAsked
        return try TLSContext(configuration, isServer: false)
    }

    /// What both sides take alike: files, versions and ciphers.
    private static func common(_ tls: TLSSettings) -> TLSConfiguration {
        var configuration = TLSConfiguration()
        configuration.keyFile = tls.keyFile
        configuration.certFile = tls.certFile
        configuration.caFile = tls.caFile
        configuration.versions =
            TLSVersion(rawValue: tls.versions.lowerBound)!...TLSVersion(rawValue: tls.versions.upperBound)!
        configuration.ciphers = tls.ciphers
        configuration.tls13Ciphers = tls.tls13Ciphers
        return configuration
    }

    /// Whether both sides' contexts can be built from these settings (their files read and checked), before
    /// a start or a reload takes them.
    public static func check(_ settings: Settings) throws {
        if settings.clientTLS.sslMode != .disable { _ = try makeContext(settings.clientTLS) }
        if settings.serverTLS.sslMode != .disable { _ = try makeServerContext(settings.serverTLS) }
    }
}
