//! SMTP AUTH client messages (docs/qmail-remote-tls.md §5.2): base64, PLAIN, LOGIN, CRAM-MD5.

use md5::{Digest, Md5};

/// A mechanism we speak, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 2195; the password never crosses the wire.
    CramMd5,
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN exchange.
    Login,
}

impl Mechanism {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }

    /// Whether it sends the password itself (needs TLS).
    pub fn reveals_password(self) -> bool {
        !matches!(self, Mechanism::CramMd5)
    }

    /// The best of `offered` (upper-cased names): CRAM-MD5, PLAIN, LOGIN.
    pub fn choose(offered: &[Vec<u8>]) -> Option<Mechanism> {
        [Mechanism::CramMd5, Mechanism::Plain, Mechanism::Login]
            .into_iter()
            .find(|m| offered.iter().any(|o| o == m.name().as_bytes()))
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with `=` padding, one line.
pub fn b64encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional, white space ignored); `None` on other bytes.
pub fn b64decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// PLAIN's one message: authzid = authcid = user (as the AUTH patch).
pub fn plain(user: &[u8], password: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(user.len() * 2 + password.len() + 2);
    m.extend_from_slice(user);
    m.push(0);
    m.extend_from_slice(user);
    m.push(0);
    m.extend_from_slice(password);
    b64encode(&m)
}

/// HMAC-MD5 (RFC 2104).
fn hmac_md5(key: &[u8], msg: &[u8]) -> [u8; 16] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..16].copy_from_slice(&Md5::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Md5::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Md5::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// CRAM-MD5's answer to the decoded `challenge`: base64(user SP lowercase-hex digest).
pub fn cram_md5(user: &[u8], password: &[u8], challenge: &[u8]) -> Vec<u8> {
    let mut m = user.to_vec();
    m.push(b' ');
    for b in hmac_md5(password, challenge) {
        m.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    b64encode(&m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_messages() {
        assert_eq!(b64encode(b""), b"");
        assert_eq!(b64encode(b"f"), b"Zg==");
        assert_eq!(b64encode(b"fo"), b"Zm8=");
        assert_eq!(b64encode(b"foobar"), b"Zm9vYmFy");
        assert_eq!(b64decode(b"Zm9vYmE=").unwrap(), b"fooba");
        assert_eq!(b64decode(b"Zm9v\r\n").unwrap(), b"foo");
        assert_eq!(b64decode(b"Zm9v!"), None);
        // the AUTH patch's observed bytes
        assert_eq!(plain(b"u1", b"p1"), b"dTEAdTEAcDE=");
        assert_eq!(b64encode(b"u1"), b"dTE=");
        // RFC 2195's example
        let ch = b"<1896.697170952@postoffice.reston.mci.net>";
        assert_eq!(
            b64decode(&cram_md5(b"tim", b"tanstaaftanstaaf", ch)).unwrap(),
            b"tim b913a602c7eda7a495b4e6e7334d3890"
        );
        assert_eq!(
            Mechanism::choose(&[b"LOGIN".to_vec(), b"PLAIN".to_vec()]),
            Some(Mechanism::Plain)
        );
        assert_eq!(Mechanism::choose(&[b"XOAUTH2".to_vec()]), None);
    }
}
