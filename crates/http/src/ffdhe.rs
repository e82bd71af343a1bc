//! TLS 1.2 with finite-field Diffie-Hellman (RFC 7919 `ffdhe2048`) for UEFI firmware.
//!
//! edk2's HTTPS Boot (OVMF, and firmware built from it) offers only RSA and DHE key exchange
//! in TLS 1.2: no ECDHE suite, no supported-groups extension. rustls negotiates DHE when the
//! provider has an FFDHE group and DHE suites, but its built-in providers (ring, aws-lc-rs)
//! have neither, so both are made here: the group's arithmetic on crypto-bigint (constant
//! time), the suites from ring's ECDHE suites with only the key exchange changed. RSA key
//! exchange (no forward secrecy) stays unsupported. The suites come after every ECDHE and TLS
//! 1.3 suite, and the server picks in its own order, so only clients that can do nothing
//! better get them.

use crypto_bigint::modular::{MontyForm, MontyParams};
use crypto_bigint::{Odd, U2048, U256};
use rustls::crypto::{
    ActiveKeyExchange, CipherSuiteCommon, KeyExchangeAlgorithm, SharedSecret, SupportedKxGroup,
};
use rustls::ffdhe_groups::{FfdheGroup, FFDHE2048};
use rustls::{
    CipherSuite, Error, NamedGroup, PeerMisbehaved, ProtocolVersion, SupportedCipherSuite,
    Tls12CipherSuite,
};

/// Bytes of an ffdhe2048 element.
const LEN: usize = 256;

/// The `ffdhe2048` group (RFC 7919 A.1), for TLS 1.2 only.
#[derive(Debug)]
pub struct Ffdhe2048;

/// The group as the provider lists it.
pub static FFDHE2048_GROUP: Ffdhe2048 = Ffdhe2048;

impl SupportedKxGroup for Ffdhe2048 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        // A 256-bit private exponent: twice the group's ~112-bit strength with margin (RFC
        // 7919 section 5.2 asks for at least 225 bits for ffdhe2048), and an eighth of the
        // work of a full-size one.
        let mut secret = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut secret)
            .map_err(|_| Error::FailedToGetRandomBytes)?;
        let exponent = U256::from_be_slice(&secret);
        let params = params()?;
        let public = MontyForm::new(&U2048::from_u8(2), params)
            .pow(&exponent)
            .retrieve()
            .to_be_bytes();
        Ok(Box::new(ActiveFfdhe {
            exponent,
            params,
            public: public.to_vec(),
        }))
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        Some(FFDHE2048)
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::FFDHE2048
    }

    /// TLS 1.3 clients all do ECDHE; keep its key shares modern.
    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_2
    }
}

fn params() -> Result<MontyParams<{ U2048::LIMBS }>, Error> {
    let p = Option::<Odd<U2048>>::from(Odd::new(U2048::from_be_slice(FFDHE2048.p)))
        .ok_or_else(|| Error::General("ffdhe2048: even modulus".into()))?;
    Ok(MontyParams::new(p))
}

struct ActiveFfdhe {
    exponent: U256,
    params: MontyParams<{ U2048::LIMBS }>,
    public: Vec<u8>,
}

impl ActiveKeyExchange for ActiveFfdhe {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        let peer = peer_value(peer)?;
        let shared = MontyForm::new(&peer, self.params)
            .pow(&self.exponent)
            .retrieve();
        // rustls strips the leading zero bytes TLS 1.2 wants gone (RFC 5246 8.1.2).
        Ok(SharedSecret::from(shared.to_be_bytes().to_vec()))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        Some(FFDHE2048)
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::FFDHE2048
    }
}

/// The peer's public value, checked as RFC 7919 section 5.1 asks: 1 < y < p - 1. Anything
/// else (0, 1, p - 1 force a known secret; p or more is no element) is refused.
fn peer_value(bytes: &[u8]) -> Result<U2048, Error> {
    let bad = || Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare);
    let digits = bytes
        .iter()
        .position(|&b| b != 0)
        .map_or(&[][..], |i| &bytes[i..]);
    if digits.len() > LEN {
        return Err(bad());
    }
    let mut padded = [0u8; LEN];
    padded[LEN - digits.len()..].copy_from_slice(digits);
    let y = U2048::from_be_slice(&padded);
    let p_minus_1 = U2048::from_be_slice(FFDHE2048.p).wrapping_sub(&U2048::ONE);
    if y <= U2048::ONE || y >= p_minus_1 {
        return Err(bad());
    }
    Ok(y)
}

/// `suite` with DHE instead of ECDHE key exchange and the IANA code of that DHE suite.
const fn with_dhe(base: &SupportedCipherSuite, suite: CipherSuite) -> Tls12CipherSuite {
    match base {
        SupportedCipherSuite::Tls12(base) => Tls12CipherSuite {
            common: CipherSuiteCommon {
                suite,
                ..base.common
            },
            kx: KeyExchangeAlgorithm::DHE,
            ..**base
        },
        SupportedCipherSuite::Tls13(_) => panic!("a TLS 1.2 suite is needed"),
    }
}

static DHE_RSA_AES_256_GCM: Tls12CipherSuite = with_dhe(
    &rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_DHE_RSA_WITH_AES_256_GCM_SHA384,
);
static DHE_RSA_AES_128_GCM: Tls12CipherSuite = with_dhe(
    &rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_DHE_RSA_WITH_AES_128_GCM_SHA256,
);

/// `TLS_DHE_RSA_WITH_AES_{256,128}_GCM_*`, strongest first: AEAD suites edk2 offers.
pub fn dhe_suites() -> [SupportedCipherSuite; 2] {
    [
        SupportedCipherSuite::Tls12(&DHE_RSA_AES_256_GCM),
        SupportedCipherSuite::Tls12(&DHE_RSA_AES_128_GCM),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_values_are_fresh_elements_and_bad_peer_values_are_refused() {
        let a = Ffdhe2048.start().unwrap();
        let b = Ffdhe2048.start().unwrap();
        assert_eq!(a.pub_key().len(), LEN);
        assert_ne!(a.pub_key(), b.pub_key(), "a fresh exponent per exchange");
        assert!(peer_value(a.pub_key()).is_ok());
        let p_minus_1 = U2048::from_be_slice(FFDHE2048.p).wrapping_sub(&U2048::ONE);
        for bad in [
            vec![],
            vec![0],
            vec![1],
            vec![0, 0, 1],
            p_minus_1.to_be_bytes().to_vec(),
            FFDHE2048.p.to_vec(),
            vec![0xff; LEN + 1],
        ] {
            let k = Ffdhe2048.start().unwrap();
            assert!(k.complete(&bad).is_err(), "{bad:?} accepted");
        }
        // Leading zeros are only padding.
        let mut padded = vec![0u8; 3];
        padded.extend_from_slice(b.pub_key());
        assert_eq!(
            peer_value(&padded).unwrap(),
            peer_value(b.pub_key()).unwrap()
        );
    }

    #[test]
    fn both_sides_of_one_exchange_compute_the_same_secret() {
        // g^(ab) from both ends: a's exponent on b's public value and the other way round.
        let a = Ffdhe2048.start().unwrap();
        let b = Ffdhe2048.start().unwrap();
        let (a_pub, b_pub) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        let ab = a.complete(&b_pub).unwrap();
        let ba = b.complete(&a_pub).unwrap();
        assert_eq!(ab.secret_bytes(), ba.secret_bytes());
    }

    #[test]
    fn the_suites_are_tls12_dhe_with_the_dhe_codes() {
        let suites = dhe_suites();
        assert_eq!(
            suites.map(|s| s.suite()),
            [
                CipherSuite::TLS_DHE_RSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::TLS_DHE_RSA_WITH_AES_128_GCM_SHA256
            ]
        );
        for s in suites {
            let SupportedCipherSuite::Tls12(t) = s else {
                panic!("not TLS 1.2")
            };
            assert_eq!(t.kx, KeyExchangeAlgorithm::DHE);
        }
    }
}
