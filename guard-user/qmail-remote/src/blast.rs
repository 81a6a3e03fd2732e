//! Message body encoding for DATA (docs/qmail-remote.md §2.9).
//!
//! - LF becomes CRLF; an input CRLF stays CRLF (netqmail 1.06 sent CR CR LF).
//! - A bare CR is sent as a line break (CRLF) and the next line starts fresh, so its leading dot
//!   is stuffed too. notqmail 1.09 skipped that check and could emit an unstuffed `CRLF.CRLF`
//!   mid-message; here no input can end the DATA phase early and no bare CR reaches the wire.
//! - A leading `.` is doubled.
//! - A non-empty message whose last byte is not LF is a partial final line (perm_partialline).
//!
//! The encoder is streaming: state carries over between chunks, so the result does not depend
//! on how the input is split.

/// The message does not end with LF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("partial final line")]
pub struct PartialLine;

/// Streaming SMTP DATA encoder.
#[derive(Clone, Copy, Debug)]
pub struct Encoder {
    at_line_start: bool,
    pending_cr: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            at_line_start: true,
            pending_cr: false,
        }
    }
}

impl Encoder {
    /// A new encoder at the start of the message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes one chunk of the message, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            if self.pending_cr {
                // the previous chunk or byte ended in CR: CRLF and bare CR both end a line here
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if input[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if self.at_line_start && input[i] == b'.' {
                out.push(b'.');
            }
            let rest = &input[i..];
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    out.extend_from_slice(rest);
                    self.at_line_start = false;
                    i = input.len();
                }
                Some(k) => {
                    out.extend_from_slice(&rest[..k]);
                    if rest[k] == b'\n' {
                        out.extend_from_slice(b"\r\n");
                        self.at_line_start = true;
                    } else {
                        // decided when the next byte is seen (LF or not)
                        self.at_line_start = false;
                        self.pending_cr = true;
                    }
                    i += k + 1;
                }
            }
        }
    }

    /// Ends the message: appends the terminating `.CRLF`, or fails on a partial final line.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<(), PartialLine> {
        if self.pending_cr || !self.at_line_start {
            return Err(PartialLine);
        }
        out.extend_from_slice(b".\r\n");
        Ok(())
    }
}

/// Encodes a whole message (tests and benchmarks).
pub fn encode(msg: &[u8]) -> Result<Vec<u8>, PartialLine> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 32 + 3);
    let mut e = Encoder::new();
    e.feed(msg, &mut out);
    e.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(m: &[u8]) -> Vec<u8> {
        encode(m).unwrap()
    }

    #[test]
    fn cases() {
        assert_eq!(enc(b""), b".\r\n");
        assert_eq!(enc(b"\n"), b"\r\n.\r\n");
        assert_eq!(enc(b".\n"), b"..\r\n.\r\n");
        assert_eq!(enc(b"a\n.b\n..\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(enc(b"a\r\nb\r\n"), b"a\r\nb\r\n.\r\n");
        assert_eq!(enc(b"a\rb\n"), b"a\r\nb\r\n.\r\n");
        // the notqmail 1.09 smuggling case: must be stuffed
        assert_eq!(enc(b"a\r.\n"), b"a\r\n..\r\n.\r\n");
        assert_eq!(enc(b"a\r\r\n.\n"), b"a\r\n\r\n..\r\n.\r\n");
        assert_eq!(enc(b"\xff\x80\xe4\n"), b"\xff\x80\xe4\r\n.\r\n");
        assert_eq!(encode(b"a"), Err(PartialLine));
        assert_eq!(encode(b"a\nb"), Err(PartialLine));
        assert_eq!(encode(b"a\r"), Err(PartialLine));
        assert_eq!(encode(b"a\n\r"), Err(PartialLine));
    }

    /// Properties on every output: no bare CR or LF, and the only `CRLF.CRLF` is the final one.
    fn check_wire(w: &[u8]) {
        for (i, &b) in w.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(w.get(i + 1), Some(&b'\n'), "bare CR at {i} in {w:?}");
            }
            if b == b'\n' {
                assert!(i > 0 && w[i - 1] == b'\r', "bare LF at {i}");
            }
        }
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(w);
        let ends: Vec<usize> = framed
            .windows(5)
            .enumerate()
            .filter(|(_, x)| *x == b"\r\n.\r\n")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(ends, vec![framed.len() - 5], "early end of data in {w:?}");
    }

    #[test]
    fn chunking_does_not_matter_and_wire_is_safe() {
        let samples: [&[u8]; 6] = [
            b"a\r.\r\n.\n\r.\r\r\n..\n",
            b".\r\n.\r.\n",
            b"x\r\r\r.\n\n.\n",
            b"\r\n\r\n.\r\n",
            b"\n.\n",
            b"a\rb\rc\r\n",
        ];
        for m in samples {
            let whole = enc(m);
            check_wire(&whole);
            for split in 0..=m.len() {
                let mut out = Vec::new();
                let mut e = Encoder::new();
                e.feed(&m[..split], &mut out);
                e.feed(&m[split..], &mut out);
                e.finish(&mut out).unwrap();
                assert_eq!(out, whole, "split at {split}");
            }
        }
        // exhaustive over short strings of the interesting bytes
        let alphabet = *b"a.\r\n";
        for len in 0..=7u32 {
            for n in 0..4usize.pow(len) {
                let mut m = Vec::new();
                let mut k = n;
                for _ in 0..len {
                    m.push(alphabet[k % 4]);
                    k /= 4;
                }
                if let Ok(w) = encode(&m) {
                    check_wire(&w);
                }
            }
        }
    }
}
