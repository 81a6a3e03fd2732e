//! The few X.509 fields the TLS patch's name check needs (docs/qmail-remote-tls.md §3.3): the
//! subject's first commonName, the dNSName subjectAltNames, issuer == subject, and the validity
//! period. A small DER walker: webpki checks chains but does not expose these.

/// One DER element: tag and contents.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut l = 0usize;
        for &b in &rest[..n] {
            l = (l << 8) | usize::from(b);
        }
        rest = &rest[n..];
        l
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed value, in order.
fn children(mut input: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tag, content, rest) = element(input)?;
        out.push((tag, content));
        input = rest;
    }
    Some(out)
}

const SEQUENCE: u8 = 0x30;
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// What the name check uses of a certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// The first commonName of the subject (raw string bytes), if any.
    pub common_name: Option<Vec<u8>>,
    /// Every dNSName subjectAltName (raw IA5String bytes).
    pub dns_names: Vec<Vec<u8>>,
    /// Issuer and subject are the same name (a self-signed certificate).
    pub self_issued: bool,
    /// notBefore and notAfter as seconds since the epoch.
    pub validity: (i64, i64),
}

/// Parses a DER certificate; `None` if it is not one.
pub fn parse(der: &[u8]) -> Option<CertInfo> {
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut f = children(tbs)?.into_iter();
    let mut next = f.next()?;
    if next.0 == 0xa0 {
        // explicit version
        next = f.next()?;
    }
    let _serial = next;
    let _sigalg = f.next()?;
    let issuer = f.next()?;
    let validity = f.next()?;
    let subject = f.next()?;
    let mut info = CertInfo {
        self_issued: issuer == subject,
        common_name: first_cn(subject.1),
        validity: parse_validity(validity.1)?,
        ..CertInfo::default()
    };
    for (tag, content) in f {
        if tag == 0xa3 {
            info.dns_names = san_dns_names(content).unwrap_or_default();
        }
    }
    Some(info)
}

fn first_cn(name: &[u8]) -> Option<Vec<u8>> {
    for (_, rdn) in children(name)? {
        for (_, atv) in children(rdn)? {
            let parts = children(atv)?;
            if let [(0x06, oid), (_, value)] = parts.as_slice()
                && *oid == OID_CN
            {
                return Some(value.to_vec());
            }
        }
    }
    None
}

fn san_dns_names(exts: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (_, list, _) = element(exts)?;
    for (_, ext) in children(list)? {
        let parts = children(ext)?;
        let (oid, value) = match parts.as_slice() {
            [(0x06, oid), (0x04, v)] | [(0x06, oid), (0x01, _), (0x04, v)] => (*oid, *v),
            _ => continue,
        };
        if oid != OID_SAN {
            continue;
        }
        let (_, names, _) = element(value)?;
        return Some(
            children(names)?
                .into_iter()
                .filter(|(t, _)| *t == 0x82)
                .map(|(_, n)| n.to_vec())
                .collect(),
        );
    }
    Some(Vec::new())
}

fn parse_validity(v: &[u8]) -> Option<(i64, i64)> {
    let parts = children(v)?;
    let [(t1, a), (t2, b)] = parts.as_slice() else {
        return None;
    };
    Some((parse_time(*t1, a)?, parse_time(*t2, b)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) to Unix seconds.
fn parse_time(tag: u8, s: &[u8]) -> Option<i64> {
    let digits = |r: &[u8]| -> Option<i64> {
        r.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, rest) = match tag {
        0x17 if s.len() == 13 => {
            let y = digits(&s[..2])?;
            (if y < 50 { 2000 + y } else { 1900 + y }, &s[2..])
        }
        0x18 if s.len() == 15 => (digits(&s[..4])?, &s[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let (mo, d) = (digits(&rest[0..2])?, digits(&rest[2..4])?);
    let (h, mi, se) = (
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    Some(days_from_civil(year, mo, d) * 86400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `pattern` (a certificate name) matches `name` (the host name): equal ASCII
/// case-insensitively, or `*` + S where S equals `name` from its first `.` on.
pub fn name_matches(pattern: &[u8], name: &[u8]) -> bool {
    if let Some(rest) = pattern.strip_prefix(b"*") {
        let tail = name
            .iter()
            .position(|&b| b == b'.')
            .map_or(&[][..], |i| &name[i..]);
        return rest.eq_ignore_ascii_case(tail);
    }
    pattern.eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_one_label() {
        assert!(name_matches(b"*.tls.test", b"mx.tls.test"));
        assert!(name_matches(b"MX.tls.TEST", b"mx.tls.test"));
        assert!(!name_matches(b"*.tls.test", b"a.mx.tls.test"));
        assert!(!name_matches(b"*.tls.test", b"tls.test"));
        assert!(name_matches(b"*", b"localhost"));
        assert!(!name_matches(b"*", b"a.b"));
        assert!(!name_matches(b"mx.tls.test", b"mx.tls.test."));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(0x18, b"20000301000000Z"), Some(951_868_800));
        assert_eq!(parse_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(parse_time(0x17, b"4912312359Z"), None);
    }
}
