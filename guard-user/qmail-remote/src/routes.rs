//! control/smtproutes with stock semantics (docs/qmail-remote.md §2.3), plus `[IPv6:…]` relays.

use super::control::scan_ulong;

/// The parsed route table: `(key, value)` in file order, lines without `:` dropped.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Where to send instead of the MX hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    /// Name, dotted quad, `[dotted quad]` or `[IPv6:…]`.
    pub host: Vec<u8>,
    /// TCP port (stock: leading digits, modulo 65536; `relay:` gives 0).
    pub port: u16,
}

impl Routes {
    /// Builds the table from control-file lines (already stripped, comments removed).
    pub fn parse<'a>(lines: impl Iterator<Item = &'a Vec<u8>>) -> Self {
        let entries = lines
            .filter_map(|l| {
                // the key ends at the FIRST colon (constmap flagcolon)
                let i = l.iter().position(|&c| c == b':')?;
                Some((l[..i].to_vec(), l[i + 1..].to_vec()))
            })
            .collect();
        Routes { entries }
    }

    /// The value for an exact key, ASCII case-insensitive; a later line wins.
    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_slice())
    }

    /// Route lookup for `host`: the host itself, each suffix starting at a dot (longest first),
    /// then the empty key. The first key found wins even if its relay is empty, which means
    /// "use MX as usual" (`None`).
    pub fn route(&self, host: &[u8]) -> Option<Relay> {
        let value = (0..=host.len())
            .filter(|&i| i == 0 || i == host.len() || host[i] == b'.')
            .find_map(|i| self.get(&host[i..]))?;
        parse_relay(value)
    }
}

/// Splits `relay[:port]`. A relay in brackets (`[IPv6:2001:db8::1]:2525`) is taken up to its
/// closing bracket, so IPv6 literals can carry a port; for everything else the first colon
/// splits, exactly like stock.
fn parse_relay(value: &[u8]) -> Option<Relay> {
    if value.is_empty() {
        return None;
    }
    let split = if value[0] == b'[' {
        value
            .iter()
            .position(|&c| c == b']')
            .map(|j| j + 1)
            .filter(|&j| j == value.len() || value[j] == b':')
            .or_else(|| value.iter().position(|&c| c == b':'))
    } else {
        value.iter().position(|&c| c == b':')
    };
    let (host, port) = match split {
        Some(i) if i < value.len() => {
            (&value[..i], (scan_ulong(&value[i + 1..]).0 & 0xffff) as u16)
        }
        _ => (value, 25),
    };
    Some(Relay {
        host: host.to_vec(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(lines: &[&str]) -> Routes {
        let v: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
        Routes::parse(v.iter())
    }

    fn rel(h: &str, p: u16) -> Option<Relay> {
        Some(Relay {
            host: h.as_bytes().to_vec(),
            port: p,
        })
    }

    #[test]
    fn lookup_order_and_semantics() {
        let r = routes(&[
            "example.com:relay1",
            ".example.com:relay2:2525",
            "no-colon-line",
            ".af.mil:",
            ":smarthost:26",
            "EXAMPLE.com:relay3",
        ]);
        // later line wins, case-insensitive
        assert_eq!(r.route(b"example.COM"), rel("relay3", 25));
        assert_eq!(r.route(b"a.b.example.com"), rel("relay2", 2525));
        // empty relay shields from the default route
        assert_eq!(r.route(b"x.af.mil"), None);
        assert_eq!(r.route(b"other.org"), rel("smarthost", 26));
        assert_eq!(routes(&["a:b"]).route(b"c"), None);
    }

    #[test]
    fn ports() {
        assert_eq!(parse_relay(b"relay:"), rel("relay", 0));
        assert_eq!(parse_relay(b"relay:65561"), rel("relay", 25));
        assert_eq!(parse_relay(b"relay:x"), rel("relay", 0));
        assert_eq!(parse_relay(b"[192.0.2.1]:26"), rel("[192.0.2.1]", 26));
        assert_eq!(
            parse_relay(b"[IPv6:2001:db8::1]:26"),
            rel("[IPv6:2001:db8::1]", 26)
        );
        assert_eq!(
            parse_relay(b"[IPv6:2001:db8::1]"),
            rel("[IPv6:2001:db8::1]", 25)
        );
        assert_eq!(parse_relay(b""), None);
    }
}
