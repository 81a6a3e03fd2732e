//! Envelope address mangling (stock `addrmangle` + quote.c, docs/qmail-remote.md §2.4). No CNAME
//! canonicalisation (notqmail 1.09), no IDNA: the domain is copied verbatim.

/// Bytes allowed unquoted in a local part: letters, digits, `.` and the RFC 5322 atext specials.
fn atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b".!#$%&'*+-/=?^_`{|}~".contains(&c)
}

/// True if the local part must be quoted.
fn quote_need(s: &[u8]) -> bool {
    s.is_empty()
        || !s.iter().all(|&c| atext(c))
        || s[0] == b'.'
        || s[s.len() - 1] == b'.'
        || s.windows(2).any(|w| w == b"..")
}

fn quote(s: &[u8], out: &mut Vec<u8>) {
    if !quote_need(s) {
        out.extend_from_slice(s);
        return;
    }
    out.push(b'"');
    for &c in s {
        if matches!(c, b'\r' | b'\n' | b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
}

/// The address as sent in `MAIL FROM:<…>` / `RCPT TO:<…>`: split at the last `@`, local part
/// quoted if needed; an address without `@` (e.g. the empty bounce sender) goes out verbatim.
pub fn addrmangle(addr: &[u8]) -> Vec<u8> {
    let Some(at) = addr.iter().rposition(|&c| c == b'@') else {
        return addr.to_vec();
    };
    let mut out = Vec::with_capacity(addr.len() + 4);
    quote(&addr[..at], &mut out);
    out.push(b'@');
    out.extend_from_slice(&addr[at + 1..]);
    out
}

#[cfg(test)]
mod tests {
    use super::addrmangle as m;

    #[test]
    fn cases() {
        assert_eq!(m(b""), b"");
        assert_eq!(m(b"#@[]"), b"#@[]");
        assert_eq!(m(b"user@example.com"), b"user@example.com");
        assert_eq!(m(b"a.b+c@x"), b"a.b+c@x");
        assert_eq!(m(b"@x"), b"\"\"@x");
        assert_eq!(m(b".a@x"), b"\".a\"@x");
        assert_eq!(m(b"a.@x"), b"\"a.\"@x");
        assert_eq!(m(b"a..b@x"), b"\"a..b\"@x");
        assert_eq!(m(b"a b@x"), b"\"a b\"@x");
        assert_eq!(m(b"a\"b\\c\r\n@x"), b"\"a\\\"b\\\\c\\\r\\\n\"@x");
        assert_eq!(m(b"\xe4@x"), b"\"\xe4\"@x");
        assert_eq!(m(b"a@b@c"), b"\"a@b\"@c");
        assert_eq!(m(b"noat"), b"noat");
    }
}
