//! One TLS crypto provider per process: aws-lc-rs.
//!
//! The AWS SDK's HTTPS client (`default-https-client`) links aws-lc-rs and configures its own
//! rustls with it. reqwest (the `http` executor's client, and the local host's, the bench's and
//! the tests' clients) is built with `rustls-tls-webpki-roots-no-provider`, so it does not link
//! ring as its plain rustls feature would: it takes rustls's process-wide default provider when
//! a client is built, and panics ("No provider set") if there is none. Whoever builds a reqwest
//! client calls [`install_crypto_provider`] first.

/// Makes aws-lc-rs rustls's process-wide default provider, unless one is installed already.
/// Cheap and idempotent: call it before every `reqwest::Client` is built.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another caller is fine: either way a provider is in place.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_default_is_aws_lc_rs_and_installing_again_keeps_it() {
        install_crypto_provider();
        install_crypto_provider();
        let installed = rustls::crypto::CryptoProvider::get_default().expect("installed");
        let aws_lc = rustls::crypto::aws_lc_rs::default_provider();
        // Providers have no identity to compare; their algorithm lists tell them apart
        // (aws-lc-rs offers the post-quantum X25519MLKEM768 key exchange, ring does not).
        let groups = |p: &rustls::crypto::CryptoProvider| {
            p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>()
        };
        assert_eq!(groups(installed), groups(&aws_lc));
        assert!(groups(installed).contains(&rustls::NamedGroup::X25519MLKEM768));
    }
}
