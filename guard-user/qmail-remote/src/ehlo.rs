//! The EHLO reply's service extensions (docs/qmail-remote-tls.md §1.2 step 4, §5.2, §6).
//!
//! Keywords are taken like the TLS patch takes them: the first line (the server's name) is
//! skipped; every later line loses its first four bytes (`250-` or `250 `); the first token,
//! ended by space, tab or LF, is the keyword, cut at its first `=` (`AUTH=LOGIN` → `AUTH`).
//! Keywords compare ASCII case-insensitively and exactly (`STARTTLSX` is not `STARTTLS`). Unlike
//! the patch, the parameters of `AUTH` and `SIZE` are read case-insensitively too (RFC 5321
//! §2.4), and nothing is read past the stored text.

/// One parsed EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ehlo {
    /// The reply text as received (CRs dropped, at most 5000 bytes).
    pub text: Vec<u8>,
    /// `(keyword, parameters)` per extension line, keyword without any `=` part.
    lines: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Ehlo {
    /// Parses the text of a 250 reply to EHLO.
    pub fn parse(text: &[u8]) -> Ehlo {
        let mut lines = Vec::new();
        for line in text.split(|&b| b == b'\n').skip(1) {
            let Some(rest) = line.get(4..) else { continue };
            let end = rest
                .iter()
                .position(|&b| b == b' ' || b == b'\t')
                .unwrap_or(rest.len());
            let token = &rest[..end];
            if token.is_empty() {
                continue;
            }
            let (kw, eq_params) = match token.iter().position(|&b| b == b'=') {
                Some(i) => (&token[..i], &token[i + 1..]),
                None => (token, &[][..]),
            };
            // `AUTH=LOGIN PLAIN` (old servers) carries parameters after the `=` too
            let mut params = eq_params.to_vec();
            let tail = rest[end..].trim_ascii();
            if !tail.is_empty() {
                if !params.is_empty() {
                    params.push(b' ');
                }
                params.extend_from_slice(tail);
            }
            lines.push((kw.to_vec(), params));
        }
        Ehlo {
            text: text.to_vec(),
            lines,
        }
    }

    /// The server's own name: the first word after the code on the first line.
    pub fn domain(&self) -> &[u8] {
        let first = self.text.split(|&b| b == b'\n').next().unwrap_or_default();
        let rest = first.get(4..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .unwrap_or(rest.len());
        &rest[..end]
    }

    /// Whether the server announced `keyword`.
    pub fn has(&self, keyword: &[u8]) -> bool {
        self.lines
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(keyword))
    }

    /// The SASL mechanisms of every `AUTH` line, upper-cased, in the server's order.
    pub fn auth_mechanisms(&self) -> Vec<Vec<u8>> {
        self.lines
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(b"AUTH"))
            .flat_map(|(_, p)| p.split(|&b| b == b' ' || b == b'\t'))
            .filter(|m| !m.is_empty())
            .map(<[u8]>::to_ascii_uppercase)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords() {
        let e = Ehlo::parse(
            b"250-mx.test Hello\n250-SIZE 52428800\n250-8BITMIME\n250-starttls\n250-AUTH=LOGIN PLAIN\n250-AUTH CRAM-MD5 login\n250 PIPELINING\n",
        );
        assert_eq!(e.domain(), b"mx.test");
        assert!(e.has(b"STARTTLS") && e.has(b"size") && e.has(b"PIPELINING"));
        assert!(!e.has(b"mx.test") && !e.has(b"Hello") && !e.has(b"AUTH=LOGIN"));
        assert_eq!(
            e.auth_mechanisms(),
            vec![
                b"LOGIN".to_vec(),
                b"PLAIN".to_vec(),
                b"CRAM-MD5".to_vec(),
                b"LOGIN".to_vec()
            ]
        );
        // exact comparison; the first line never counts; a last line works
        let e = Ehlo::parse(b"250-STARTTLS\n250-STARTTLSX\n250 STARTTLS\n");
        assert!(e.has(b"STARTTLS"));
        let e = Ehlo::parse(b"250-STARTTLS\n250 STARTTLSX\n");
        assert!(!e.has(b"STARTTLS"));
        let e = Ehlo::parse(b"250 only.name\n");
        assert!(!e.has(b"STARTTLS") && e.auth_mechanisms().is_empty());
        // short and garbage lines are skipped, not read past
        let e = Ehlo::parse(b"250-x\n25\n250-\n250 \t\n");
        assert_eq!(e.lines.len(), 0);
    }
}
