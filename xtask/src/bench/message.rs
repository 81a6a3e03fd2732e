//! The benchmark's messages: deterministic, with lines that need dot-stuffing, and their
//! reference SMTP encoding (what every client must put on the wire).

/// A deterministic message of `size` bytes: headers, then 72-column text lines; every 16th
/// line starts with a dot, so dot-stuffing is exercised; LF line ends, as in the queue.
pub fn message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: sender@example.org\nTo: user@bench.test\nSubject: qmail-guard bench\n\n".to_vec();
    let mut i = 0u64;
    while m.len() < size {
        let lead = if i.is_multiple_of(16) { "." } else { "" };
        let line = format!(
            "{lead}{i:08} the quick brown fox jumps over the lazy dog 0123456789 abcdefghij\n"
        );
        m.extend_from_slice(line.as_bytes());
        i += 1;
    }
    m.truncate(size - 1);
    m.push(b'\n');
    m
}

/// The SMTP DATA payload for `msg`: CRLF line ends, dot-stuffed, with the final ".\r\n".
pub fn encode(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 32 + 8);
    let mut at_line_start = true;
    for &b in msg {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' {
            out.extend_from_slice(b"\r\n");
            at_line_start = true;
        } else {
            out.push(b);
            at_line_start = false;
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_encoding() {
        let m = message(4096);
        assert_eq!(m.len(), 4096);
        assert_eq!(m.last(), Some(&b'\n'));
        let e = encode(b"a\n.b\n..\nc\n");
        assert_eq!(e, b"a\r\n..b\r\n...\r\nc\r\n.\r\n");
        assert_eq!(encode(b""), b".\r\n");
    }
}
