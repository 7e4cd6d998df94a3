//! The few CBOR encodings the attestation code writes itself (RFC 8949 section 3): definite
//! lengths, shortest form, which is what COSE's Sig_structure requires.

/// Appends a major type `major` head with argument `value`.
pub fn head(out: &mut Vec<u8>, major: u8, value: u64) {
    let major = major << 5;
    match value {
        0..=23 => out.push(major | value as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, value as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// Appends a byte string.
pub fn bytes(out: &mut Vec<u8>, data: &[u8]) {
    head(out, 2, data.len() as u64);
    out.extend_from_slice(data);
}

/// Appends a text string.
pub fn text(out: &mut Vec<u8>, data: &str) {
    head(out, 3, data.len() as u64);
    out.extend_from_slice(data.as_bytes());
}

/// The COSE_Sign1 `Sig_structure` (RFC 9052 section 4.4): `["Signature1", protected,
/// external_aad, payload]`, built from the protected header and payload bytes exactly as they
/// arrived (never re-encoded), with an empty external_aad.
#[must_use]
pub fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + protected.len() + 32);
    head(&mut out, 4, 4);
    text(&mut out, "Signature1");
    bytes(&mut out, protected);
    bytes(&mut out, &[]);
    bytes(&mut out, payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_use_the_shortest_form() {
        let encoded = |v| {
            let mut out = Vec::new();
            head(&mut out, 2, v);
            out
        };
        assert_eq!(encoded(23), [0x57]);
        assert_eq!(encoded(24), [0x58, 24]);
        assert_eq!(encoded(1024), [0x59, 0x04, 0x00]);
        assert_eq!(encoded(70_000), [0x5a, 0x00, 0x01, 0x11, 0x70]);
    }

    #[test]
    fn sig_structure_matches_rfc_9052_layout() {
        let s = sig_structure(&[0xa1, 0x01, 0x38, 0x22], b"xy");
        assert_eq!(s[0], 0x84);
        assert_eq!(&s[1..12], b"\x6aSignature1");
        assert_eq!(&s[12..17], &[0x44, 0xa1, 0x01, 0x38, 0x22]);
        assert_eq!(&s[17..], &[0x40, 0x42, b'x', b'y']);
    }
}
