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
    /// SMTP AUTH credentials (`relay[:port]|user|password`, docs/qmail-remote-tls.md §5.1).
    pub auth: Auth,
}

/// The credentials part of a route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// None given (or user or password empty).
    #[default]
    None,
    /// User and password.
    Login {
        /// The user name.
        user: Vec<u8>,
        /// The password (the rest of the line: may hold `:` and `|`).
        password: Vec<u8>,
    },
    /// `relay|user` without the second `|`: the AUTH patch sent the next line of the file as
    /// the password; here it is a control-file error.
    Malformed,
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

    /// control/authsenders lookup for a (mangled) sender: the whole sender, each suffix that
    /// starts with `.` or `@` (longest first), then the empty key. The first key found decides;
    /// an empty value or relay means "no authsenders route".
    pub fn sender_route(&self, sender: &[u8]) -> Option<Relay> {
        let value = (0..=sender.len())
            .filter(|&i| i == 0 || i == sender.len() || matches!(sender[i], b'.' | b'@'))
            .find_map(|i| self.get(&sender[i..]))?;
        parse_relay(value).filter(|r| !r.host.is_empty())
    }
}

/// Splits `relay[:port]|user|password` at the first two `|`.
fn split_auth(value: &[u8]) -> (&[u8], Auth) {
    let Some(i) = value.iter().position(|&c| c == b'|') else {
        return (value, Auth::None);
    };
    let rest = &value[i + 1..];
    let auth = match rest.iter().position(|&c| c == b'|') {
        None => Auth::Malformed,
        Some(j) => {
            let (user, password) = (&rest[..j], &rest[j + 1..]);
            if user.is_empty() || password.is_empty() {
                Auth::None
            } else {
                Auth::Login {
                    user: user.to_vec(),
                    password: password.to_vec(),
                }
            }
        }
    };
    (&value[..i], auth)
}

/// Splits `relay[:port]`. A relay in brackets (`[IPv6:2001:db8::1]:2525`) is taken up to its
/// closing bracket, so IPv6 literals can carry a port; for everything else the first colon
/// splits, exactly like stock.
fn parse_relay(value: &[u8]) -> Option<Relay> {
    if value.is_empty() {
        return None;
    }
    let (value, auth) = split_auth(value);
    if value.is_empty() {
        // `key:|user|password`: no relay, so MX as usual, and no credentials for MX hosts
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
        auth,
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
            auth: Auth::None,
        })
    }

    #[test]
    fn credentials_and_authsenders() {
        let login = |u: &str, p: &str| Auth::Login {
            user: u.as_bytes().to_vec(),
            password: p.as_bytes().to_vec(),
        };
        let r = parse_relay(b"mx.a.test:125|myuserid|my:pass|word").unwrap();
        assert_eq!((r.host.as_slice(), r.port), (&b"mx.a.test"[..], 125));
        assert_eq!(r.auth, login("myuserid", "my:pass|word"));
        let r = parse_relay(b"mx.a.test|u").unwrap();
        assert_eq!(
            (r.host.as_slice(), r.port, r.auth),
            (&b"mx.a.test"[..], 25, Auth::Malformed)
        );
        assert_eq!(parse_relay(b"mx.a.test:465||p").unwrap().auth, Auth::None);
        assert_eq!(parse_relay(b"[IPv6:2001:db8::1]:26|u|p").unwrap().port, 26);
        let a = routes(&[
            "a.b@x.y:r1|u1|p1",
            "@x.y:r2:465|u2|p2",
            ".y:r3",
            "@empty.test:",
            "@norelay.test:|u|p",
            ":r4",
            "client.example:r5",
        ]);
        assert_eq!(a.sender_route(b"a.b@x.y").unwrap().auth, login("u1", "p1"));
        let r = a.sender_route(b"c@X.Y").unwrap();
        assert_eq!((r.host.as_slice(), r.port), (&b"r2"[..], 465));
        assert_eq!(a.sender_route(b"c@z.y").unwrap().host, b"r3");
        assert_eq!(a.sender_route(b"").unwrap().host, b"r4");
        assert_eq!(a.sender_route(b"c@client.example").unwrap().host, b"r4");
        assert_eq!(a.sender_route(b"c@empty.test"), None);
        assert_eq!(a.sender_route(b"c@norelay.test"), None);
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
