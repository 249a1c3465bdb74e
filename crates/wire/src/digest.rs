//! Content digests in Dragonfly's `algorithm:hex` form (`sha256:…`,
//! `sha512:…`, `crc32:…`), used to verify exports.

use sha2::Digest as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
    Crc32,
}

/// An expected digest, parsed from `algorithm:hex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub algorithm: Algorithm,
    pub hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form sha256:<hex>, sha512:<hex> or crc32:<hex>")]
    Malformed(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Mismatch { expected: String, actual: String },
}

impl std::str::FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || DigestError::Malformed(s.to_string());
        let (algorithm, hex) = s.split_once(':').ok_or_else(malformed)?;
        let (algorithm, hex_len) = match algorithm.to_ascii_lowercase().as_str() {
            "sha256" => (Algorithm::Sha256, 64),
            "sha512" => (Algorithm::Sha512, 128),
            "crc32" => (Algorithm::Crc32, 8),
            _ => return Err(malformed()),
        };
        let hex = hex.to_ascii_lowercase();
        if hex.len() != hex_len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        Ok(Self { algorithm, hex })
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.algorithm {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Crc32 => "crc32",
        };
        write!(f, "{name}:{}", self.hex)
    }
}

/// Computes a digest of content fed in order.
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Crc32(crc32fast::Hasher),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            Algorithm::Crc32 => Hasher::Crc32(crc32fast::Hasher::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Crc32(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
            Hasher::Crc32(h) => (Algorithm::Crc32, format!("{:08x}", h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

impl Digest {
    /// Ok when `actual` (computed with this digest's algorithm) matches.
    pub fn verify(&self, actual: &Digest) -> Result<(), DigestError> {
        if self == actual {
            Ok(())
        } else {
            Err(DigestError::Mismatch {
                expected: self.to_string(),
                actual: actual.to_string(),
            })
        }
    }
}

/// The `crc32:hex` digest dfdaemon reports for a piece.
pub fn piece_digest(content: &[u8]) -> String {
    let mut h = Hasher::new(Algorithm::Crc32);
    h.update(content);
    h.finish().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_verifies() {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"abc");
        let expected: Digest =
            "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
                .parse()
                .unwrap();
        assert_eq!(expected.verify(&h.finish()), Ok(()));
        assert_eq!(piece_digest(b"abc"), "crc32:352441c2");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["sha256", "md5:abcd", "sha256:xyz", "crc32:123", ""] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }
}
