#ifndef LIFEGUARD_OPENSSL_SHIM_H
#define LIFEGUARD_OPENSSL_SHIM_H

// The system OpenSSL (libssl-dev), for TLS on the engine's own sockets. Several of OpenSSL's calls are
// macros over SSL_ctrl and friends, which Swift cannot import: these inline functions give them names.
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/bio.h>
#include <string.h>

static inline int lifeguard_ssl_ctx_set_protocol_range(SSL_CTX *ctx, int minimum, int maximum) {
    return SSL_CTX_set_min_proto_version(ctx, minimum) && SSL_CTX_set_max_proto_version(ctx, maximum);
}

static inline long lifeguard_ssl_ctx_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }

static inline int lifeguard_ssl_ctx_set_ecdh_auto(SSL_CTX *ctx) { return (int)SSL_CTX_set_ecdh_auto(ctx, 1); }

static inline int lifeguard_ssl_ctx_set_groups(SSL_CTX *ctx, const char *list) {
    return (int)SSL_CTX_set1_groups_list(ctx, list);
}

static inline int lifeguard_ssl_ctx_set_dh_auto(SSL_CTX *ctx, int on) { return (int)SSL_CTX_set_dh_auto(ctx, on); }

static inline int lifeguard_tls1_version(void) { return TLS1_VERSION; }
static inline int lifeguard_tls1_1_version(void) { return TLS1_1_VERSION; }
static inline int lifeguard_tls1_2_version(void) { return TLS1_2_VERSION; }
static inline int lifeguard_tls1_3_version(void) { return TLS1_3_VERSION; }

static inline size_t lifeguard_bio_pending(BIO *bio) { return BIO_ctrl_pending(bio); }

static inline int lifeguard_ssl_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

// ALPN "postgresql" (PostgreSQL 17): chosen when the client offers it; a client that offers only other
// protocols is refused, as PostgreSQL does. Clients that offer no ALPN never reach the callback.
static int lifeguard_select_postgresql_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                            const unsigned char *in, unsigned int inlen, void *arg) {
    static const unsigned char postgresql[] = "\x0apostgresql";
    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, postgresql, sizeof(postgresql) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

static inline void lifeguard_ssl_ctx_select_postgresql_alpn(SSL_CTX *ctx) {
    SSL_CTX_set_alpn_select_cb(ctx, lifeguard_select_postgresql_alpn, NULL);
}

static inline int lifeguard_ssl_alpn_is_postgresql(const SSL *ssl) {
    const unsigned char *protocol = NULL;
    unsigned int length = 0;
    SSL_get0_alpn_selected(ssl, &protocol, &length);
    return length == 10 && memcmp(protocol, "postgresql", 10) == 0;
}

#endif
