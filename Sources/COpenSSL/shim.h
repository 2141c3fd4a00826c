// What Swift cannot import from OpenSSL by itself: its function-like macros
// (SSL_CTX_set_min_proto_version, BIO_pending, SSL_set_tlsext_host_name,
// ...), which are SSL_ctrl/BIO_ctrl calls with a constant, given here as
// `static inline` functions so the module stays header-only apart from
// libssl and libcrypto themselves.
#ifndef SWIFT_DUPLICATOR_COPENSSL_SHIM_H
#define SWIFT_DUPLICATOR_COPENSSL_SHIM_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/bio.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>

static inline int shim_ssl_ctx_set_min_proto_version(SSL_CTX *context, int version) {
    return (int)SSL_CTX_set_min_proto_version(context, version);
}

static inline int shim_ssl_ctx_set_max_proto_version(SSL_CTX *context, int version) {
    return (int)SSL_CTX_set_max_proto_version(context, version);
}

static inline long shim_ssl_ctx_set_mode(SSL_CTX *context, long mode) {
    return SSL_CTX_set_mode(context, mode);
}

static inline long shim_ssl_ctx_set_session_cache_mode(SSL_CTX *context, long mode) {
    return SSL_CTX_set_session_cache_mode(context, mode);
}

static inline int shim_ssl_set_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

static inline size_t shim_bio_pending(BIO *bio) { return (size_t)BIO_pending(bio); }

/// A memory BIO that says "retry" (not EOF) when empty: the ring brings more.
static inline void shim_bio_set_mem_eof_retry(BIO *bio) { BIO_set_mem_eof_return(bio, -1); }

static const int shim_tls1_2_version = TLS1_2_VERSION;
static const int shim_tls1_3_version = TLS1_3_VERSION;
static const long shim_mode_release_buffers = SSL_MODE_RELEASE_BUFFERS;
static const long shim_mode_accept_moving_write_buffer = SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;
static const long shim_op_no_renegotiation = SSL_OP_NO_RENEGOTIATION;
static const long shim_op_cipher_server_preference = SSL_OP_CIPHER_SERVER_PREFERENCE;
static const long shim_sess_cache_server = SSL_SESS_CACHE_SERVER;
static const int shim_filetype_pem = SSL_FILETYPE_PEM;
static const int shim_verify_peer = SSL_VERIFY_PEER;
static const int shim_verify_none = SSL_VERIFY_NONE;
static const int shim_tlsext_err_ok = SSL_TLSEXT_ERR_OK;
static const int shim_tlsext_err_noack = SSL_TLSEXT_ERR_NOACK;
static const int shim_tlsext_err_alert_fatal = SSL_TLSEXT_ERR_ALERT_FATAL;

#endif
