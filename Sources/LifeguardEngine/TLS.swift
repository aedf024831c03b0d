import COpenSSL
import Glibc
import NIOCore

/// A TLS setup or session failure, in OpenSSL's words where it gave some.
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }

    /// The oldest error OpenSSL queued on this thread (its text names the cause, "certificate verify
    /// failed" say), else `fallback`; the queue is emptied so that the next call starts clean.
    static func fromOpenSSL(_ fallback: String) -> TLSError {
        let code = ERR_get_error()
        ERR_clear_error()
        guard code != 0 else { return TLSError(fallback) }
        var text = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &text, text.count)
        return TLSError("\(fallback): \(String(cString: text))")
    }
}

/// The TLS versions OpenSSL may negotiate, as PgBouncer's `*_tls_protocols` name them.
public enum TLSVersion: Int, Comparable, Sendable, CaseIterable {
    case tls1_0, tls1_1, tls1_2, tls1_3

    public static func < (lhs: TLSVersion, rhs: TLSVersion) -> Bool { lhs.rawValue < rhs.rawValue }

    var openSSLValue: Int32 {
        switch self {
        case .tls1_0: return lifeguard_tls1_version()
        case .tls1_1: return lifeguard_tls1_1_version()
        case .tls1_2: return lifeguard_tls1_2_version()
        case .tls1_3: return lifeguard_tls1_3_version()
        }
    }
}

/// One side's TLS settings: the key and certificate it presents, the CA it checks the peer against, and
/// what it allows. Built from `client_tls_*` (Lifeguard as the TLS server) or `server_tls_*` keys.
public struct TLSConfiguration: Equatable, Sendable {
    public var keyFile = ""
    public var certFile = ""
    public var caFile = ""
    public var versions: ClosedRange<TLSVersion> = .tls1_2 ... .tls1_3
    /// An OpenSSL cipher list for TLS 1.2 and older; nil keeps OpenSSL's defaults.
    public var ciphers: String?
    /// TLS 1.3 suites; nil keeps OpenSSL's defaults.
    public var tls13Ciphers: String?
    /// An ECDH group list; nil lets OpenSSL choose.
    public var ecdhCurves: String?
    public var diffieHellman = true
    /// Whether the peer is asked for a certificate, which the CA file must then validate.
    public var peerCertificate = PeerCertificate.notAsked

    public enum PeerCertificate: Sendable {
        case notAsked
        /// Asked for; a peer may present none, but one it presents must verify.
        case optional
        case required
    }

    public init() {}
}

/// An OpenSSL context, shared by the sessions of every loop (OpenSSL lets threads make sessions from one
/// context); a reload builds a new one, and sessions already running keep theirs.
public final class TLSContext: @unchecked Sendable {
    let context: OpaquePointer
    public let isServer: Bool

    public init(_ configuration: TLSConfiguration, isServer: Bool) throws {
        ERR_clear_error()
        guard let context = SSL_CTX_new(isServer ? TLS_server_method() : TLS_client_method()) else {
            throw TLSError.fromOpenSSL("could not create a TLS context")
        }
        self.context = context
        self.isServer = isServer
        // Partial writes are never needed (memory BIOs take everything); released buffers keep an idle TLS
        // connection small.
        _ = lifeguard_ssl_ctx_set_mode(context, Int(SSL_MODE_RELEASE_BUFFERS))
        guard lifeguard_ssl_ctx_set_protocol_range(
            context, configuration.versions.lowerBound.openSSLValue, configuration.versions.upperBound.openSSLValue) == 1
        else { throw TLSError.fromOpenSSL("invalid TLS protocol range") }
        if let ciphers = configuration.ciphers, SSL_CTX_set_cipher_list(context, ciphers) != 1 {
            throw TLSError.fromOpenSSL("failed to set the cipher list \"\(ciphers)\"")
        }
        if let suites = configuration.tls13Ciphers, SSL_CTX_set_ciphersuites(context, suites) != 1 {
            throw TLSError.fromOpenSSL("failed to set the TLSv1.3 cipher suites \"\(suites)\"")
        }
        if let curves = configuration.ecdhCurves, lifeguard_ssl_ctx_set_groups(context, curves) != 1 {
            throw TLSError.fromOpenSSL("failed to set the ECDH curve \"\(curves)\"")
        }
        if isServer {
            if configuration.diffieHellman { _ = lifeguard_ssl_ctx_set_dh_auto(context, 1) }
            lifeguard_ssl_ctx_select_postgresql_alpn(context)
        }
        if !configuration.certFile.isEmpty,
            SSL_CTX_use_certificate_chain_file(context, configuration.certFile) != 1
        {
            throw TLSError.fromOpenSSL("could not load certificate \"\(configuration.certFile)\"")
        }
        if !configuration.keyFile.isEmpty {
            guard SSL_CTX_use_PrivateKey_file(context, configuration.keyFile, SSL_FILETYPE_PEM) == 1 else {
                throw TLSError.fromOpenSSL("could not load key \"\(configuration.keyFile)\"")
            }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw TLSError.fromOpenSSL("key \"\(configuration.keyFile)\" does not match its certificate")
            }
        }
        if !configuration.caFile.isEmpty {
            guard SSL_CTX_load_verify_locations(context, configuration.caFile, nil) == 1 else {
                throw TLSError.fromOpenSSL("could not load CA file \"\(configuration.caFile)\"")
            }
        } else if configuration.peerCertificate != .notAsked {
            // No CA file of its own: the system's trusted certificates.
            SSL_CTX_set_default_verify_paths(context)
        }
        switch configuration.peerCertificate {
        case .notAsked:
            break
        case .optional:
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        case .required:
            SSL_CTX_set_verify(context, isServer ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, nil)
        }
    }

    deinit {
        SSL_CTX_free(context)
    }
}

/// One connection's TLS session over memory BIOs: the connection reads and writes the socket as for plain
/// bytes and passes ciphertext through here, so the engine's non-blocking I/O stays as it is.
public final class TLSSession {
    private let ssl: OpaquePointer
    /// Ciphertext from the peer, for OpenSSL to read.
    private let incoming: OpaquePointer
    /// Ciphertext OpenSSL wrote, for the socket.
    private let outgoing: OpaquePointer
    public private(set) var isHandshakeDone = false
    /// The peer sent close_notify.
    public private(set) var peerClosed = false
    /// Plaintext written before the handshake ended; encrypted once it has.
    private var heldPlaintext: [ByteBuffer] = []

    /// `serverName`: for a client session, the host name sent as SNI and, with `verifyHost`, checked
    /// against the peer's certificate.
    public init(context: TLSContext, serverName: String? = nil, verifyHost: Bool = false) throws {
        ERR_clear_error()
        guard let ssl = SSL_new(context.context) else { throw TLSError.fromOpenSSL("could not create a TLS session") }
        guard let incoming = BIO_new(BIO_s_mem()), let outgoing = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw TLSError.fromOpenSSL("could not create TLS buffers")
        }
        SSL_set_bio(ssl, incoming, outgoing)  // the session owns both from here
        self.ssl = ssl
        self.incoming = incoming
        self.outgoing = outgoing
        if context.isServer {
            SSL_set_accept_state(ssl)
        } else {
            if let serverName {
                // An address is checked against the certificate's IP entries and is not sent as SNI.
                var address = in6_addr()
                let isAddress = inet_pton(AF_INET, serverName, &address) == 1 || inet_pton(AF_INET6, serverName, &address) == 1
                if !isAddress { _ = lifeguard_ssl_set_tlsext_host_name(ssl, serverName) }
                if verifyHost {
                    if isAddress {
                        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), serverName)
                    } else {
                        SSL_set1_host(ssl, serverName)
                    }
                }
            }
            SSL_set_connect_state(ssl)
        }
    }

    deinit {
        SSL_free(ssl)
    }

    /// Starts a client session's handshake: its ClientHello is then waiting in the output.
    public func start() throws {
        try advanceHandshake()
    }

    /// Ciphertext from the socket: decrypts what it completes into `plaintext`. Throws on a failed handshake
    /// or a broken record.
    public func receive(_ ciphertext: UnsafeRawBufferPointer, into plaintext: inout ByteBuffer) throws {
        var offset = 0
        while offset < ciphertext.count {
            let written = BIO_write(
                incoming, ciphertext.baseAddress! + offset, Int32(clamping: ciphertext.count - offset))
            guard written > 0 else { throw TLSError("TLS input buffer failure") }
            offset += Int(written)
        }
        if !isHandshakeDone {
            try advanceHandshake()
            guard isHandshakeDone else { return }
        }
        while true {
            plaintext.reserveCapacity(minimumWritableBytes: 16 * 1024)
            var failure: Int32 = 0
            let count = plaintext.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { pointer in
                let result = SSL_read(ssl, pointer.baseAddress, Int32(clamping: pointer.count))
                if result <= 0 { failure = SSL_get_error(ssl, result) }
                return Int(max(result, 0))
            }
            if count > 0 { continue }
            switch failure {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                return
            case SSL_ERROR_ZERO_RETURN:
                peerClosed = true
                return
            default:
                throw TLSError.fromOpenSSL("TLS read failed")
            }
        }
    }

    /// Encrypts `plaintext` into `ciphertext` (held back until the handshake is done).
    public func send(_ plaintext: ByteBuffer, into ciphertext: inout ByteBuffer) throws {
        guard isHandshakeDone else {
            heldPlaintext.append(plaintext)
            return
        }
        try encrypt(plaintext)
        takeOutput(into: &ciphertext)
    }

    /// Into the output; memory BIOs take a whole write at once.
    private func encrypt(_ plaintext: ByteBuffer) throws {
        try plaintext.withUnsafeReadableBytes { bytes in
            guard bytes.count > 0 else { return }
            let written = SSL_write(ssl, bytes.baseAddress, Int32(clamping: bytes.count))
            guard written == Int32(clamping: bytes.count) else { throw TLSError.fromOpenSSL("TLS write failed") }
        }
    }

    /// Ciphertext OpenSSL produced (handshake messages, encrypted records, alerts), for the socket.
    public func takeOutput(into ciphertext: inout ByteBuffer) {
        while lifeguard_bio_pending(outgoing) > 0 {
            let pending = Int(lifeguard_bio_pending(outgoing))
            ciphertext.writeWithUnsafeMutableBytes(minimumWritableBytes: pending) { pointer in
                Int(max(BIO_read(outgoing, pointer.baseAddress, Int32(clamping: pending)), 0))
            }
        }
    }

    /// A close_notify alert for the peer, in the output.
    public func shutdown() {
        if isHandshakeDone { _ = SSL_shutdown(ssl) }
    }

    private func advanceHandshake() throws {
        let result = SSL_do_handshake(ssl)
        if result == 1 {
            isHandshakeDone = true
            let held = heldPlaintext
            heldPlaintext = []
            for plaintext in held { try encrypt(plaintext) }
            return
        }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return
        default:
            // OpenSSL's error says "certificate verify failed"; the verify result says why (expired, ...).
            let verifyResult = SSL_get_verify_result(ssl)
            let reason = verifyResult == X509_V_OK ? "" : " (\(String(cString: X509_verify_cert_error_string(verifyResult))))"
            throw TLSError.fromOpenSSL("TLS handshake failed\(reason)")
        }
    }

    // MARK: What was negotiated

    /// PgBouncer's form for SHOW CLIENTS and the login line: "TLSv1.3/TLS_AES_256_GCM_SHA384".
    public var summary: String {
        let version = SSL_get_version(ssl).map { String(cString: $0) } ?? "?"
        let cipher = SSL_get_current_cipher(ssl).flatMap { SSL_CIPHER_get_name($0) }.map { String(cString: $0) } ?? "?"
        return "\(version)/\(cipher)"
    }

    /// The client and Lifeguard agreed on the ALPN protocol "postgresql" (PostgreSQL 17's direct TLS needs it).
    public var negotiatedPostgreSQLProtocol: Bool { lifeguard_ssl_alpn_is_postgresql(ssl) == 1 }

    /// RFC 5929's tls-server-end-point: the hash of this side's own certificate, with the hash of its
    /// signature algorithm (SHA-256 for MD5 and SHA-1). Nil when that algorithm names no single hash.
    public var serverEndPoint: [UInt8]? {
        guard let certificate = SSL_get_certificate(ssl) else { return nil }
        var digestNID: Int32 = 0
        guard OBJ_find_sigid_algs(X509_get_signature_nid(certificate), &digestNID, nil) == 1 else { return nil }
        if digestNID == NID_md5 || digestNID == NID_sha1 { digestNID = NID_sha256 }
        guard let digest = EVP_get_digestbyname(OBJ_nid2sn(digestNID)) else { return nil }
        var hash = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard X509_digest(certificate, digest, &hash, &length) == 1 else { return nil }
        return Array(hash.prefix(Int(length)))
    }

    /// The common name of the certificate the peer presented, if it presented one that verified.
    public var peerCommonName: String? {
        guard SSL_get_verify_result(ssl) == X509_V_OK, let certificate = SSL_get1_peer_certificate(ssl) else {
            return nil
        }
        defer { X509_free(certificate) }
        guard let subject = X509_get_subject_name(certificate) else { return nil }
        var name = [CChar](repeating: 0, count: 256)
        let length = X509_NAME_get_text_by_NID(subject, NID_commonName, &name, Int32(name.count))
        return length > 0 ? String(cString: name) : nil
    }
}
