//! qmail-remote's report on fd 1 (docs/qmail-remote.md §1.5): NUL-terminated records, one per recipient
//! (`r` accepted, `h` permanent, `s` temporary failure) and then the message's (`K` delivered,
//! `Z` try again later, `D` bounce), made readable.

/// One record: its letter and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub letter: char,
    pub text: String,
}

/// The parsed output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub recipients: Vec<Record>,
    /// The message record (K/Z/D), if the output has one.
    pub message: Option<Record>,
    /// Bytes after the last NUL (none in a well-formed report).
    pub trailing: String,
}

/// Splits `out` into records; anything malformed is kept visible rather than dropped.
pub fn parse(out: &[u8]) -> Report {
    let mut r = Report::default();
    let mut parts: Vec<&[u8]> = out.split(|&b| b == 0).collect();
    // Text after the final NUL (empty for a well-formed report).
    let tail = parts.pop().unwrap_or_default();
    r.trailing = String::from_utf8_lossy(tail).into_owned();
    for p in parts {
        let Some((&first, rest)) = p.split_first() else {
            continue;
        };
        let rec = Record {
            letter: first as char,
            text: String::from_utf8_lossy(rest).into_owned(),
        };
        match rec.letter {
            'K' | 'Z' | 'D' if r.message.is_none() => r.message = Some(rec),
            _ => r.recipients.push(rec),
        }
    }
    r
}

impl Report {
    /// The message verdict letter.
    pub fn letter(&self) -> Option<char> {
        self.message.as_ref().map(|m| m.letter)
    }

    /// qmail's perm_ambigmx: a bounce with status #5.4.6.
    pub fn is_ambigmx(&self) -> bool {
        self.message
            .as_ref()
            .is_some_and(|m| m.letter == 'D' && m.text.contains("#5.4.6"))
    }

    /// Delivered (K) and every recipient accepted.
    pub fn is_delivered(&self) -> bool {
        self.letter() == Some('K') && self.recipients.iter().all(|r| r.letter == 'r')
    }

    /// Lines for a human: one per record, continuation lines indented.
    pub fn render(&self, indent: &str) -> String {
        let mut s = String::new();
        for (i, rec) in self.recipients.iter().enumerate() {
            let what = match rec.letter {
                'r' => "accepted",
                'h' => "refused permanently",
                's' => "failed temporarily",
                _ => "malformed record",
            };
            s.push_str(&format!(
                "{indent}recipient {}: {} {what}",
                i + 1,
                rec.letter
            ));
            push_text(&mut s, indent, &rec.text);
        }
        match &self.message {
            Some(m) => {
                let what = match m.letter {
                    'K' => "delivered",
                    'Z' => "deferred (temporary)",
                    _ => "bounced (permanent)",
                };
                s.push_str(&format!("{indent}message:     {} {what}", m.letter));
                push_text(&mut s, indent, &m.text);
            }
            None => s.push_str(&format!("{indent}(no message record)\n")),
        }
        if !self.trailing.is_empty() {
            s.push_str(&format!("{indent}(trailing bytes: {:?})\n", self.trailing));
        }
        s
    }
}

fn push_text(s: &mut String, indent: &str, text: &str) {
    let mut lines = text.lines();
    match lines.next() {
        Some(first) if !first.is_empty() => s.push_str(&format!(": {first}\n")),
        _ => s.push('\n'),
    }
    for l in lines {
        s.push_str(&format!("{indent}             {l}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_delivery_and_a_bounce() {
        let ok = parse(b"r\0K192.0.2.10 accepted message.\nRemote host said: 250 OK\n\0");
        assert!(ok.is_delivered());
        assert_eq!(ok.recipients.len(), 1);
        assert!(ok.render("  ").contains("Remote host said: 250 OK"));

        let bounce = parse(b"DSorry. Although I'm listed as a best-preference MX or A for that host,\nit isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n\0");
        assert!(bounce.is_ambigmx());
        assert_eq!(bounce.letter(), Some('D'));
        assert!(bounce.recipients.is_empty());
    }

    #[test]
    fn keeps_malformed_output_visible() {
        let r = parse(b"garbage");
        assert_eq!(r.message, None);
        assert_eq!(r.trailing, "garbage");
        assert!(r.render("").contains("trailing"));
    }
}
