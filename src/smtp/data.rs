//! The DATA phase decoder: finds the end of the message and removes dot-stuffing.
//!
//! Security-critical (SMTP smuggling, SEC Consult 2023): the data ends **only** at
//! `<CRLF>.<CRLF>` (RFC 5321 4.1.1.4). A bare LF or bare CR anywhere in the data never ends it
//! (`\n.\n`, `\n.\r\n`, `\r.\r`, `\r\n.\r` are all just data) but marks the message
//! [`DataOutcome::BareLineEnding`], and the session refuses such a message whole after the
//! real end. Input may arrive in any chunking; the result never depends on where it splits.

/// Where the decoder stands relative to the line structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (the DATA command's CRLF counts as the first line end).
    LineStart,
    /// A `.` at the start of a line, not yet known to be end-of-data or dot-stuffing.
    Dot,
    /// `.` + CR at the start of a line: end of data if LF follows.
    DotCr,
    /// Inside a line.
    Middle,
    /// A CR inside a line, waiting for its LF.
    Cr,
}

/// What one [`DataDecoder::feed`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The end of data has not been seen; all of the input was used.
    NeedMore,
    /// The end of data was found; `consumed` octets of this input were used (through the final
    /// `.<CRLF>`). What follows is the next (pipelined) command.
    Done { consumed: usize },
}

/// Whether a complete message may be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOutcome {
    /// Neither fault: the message may be accepted.
    Ok,
    /// More than the size limit was sent; the body was truncated and must be refused (552).
    TooLarge,
    /// A bare CR or LF was seen; the message must be refused.
    BareLineEnding,
}

/// Decodes the DATA phase of one message incrementally (see the module doc).
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    max_size: usize,
    written: usize,
    too_large: bool,
    bare_line_ending: bool,
}

impl DataDecoder {
    /// A decoder that keeps at most `max_size` octets of decoded data (more marks
    /// [`DataOutcome::TooLarge`]).
    pub fn new(max_size: usize) -> DataDecoder {
        DataDecoder {
            state: State::LineStart,
            max_size,
            written: 0,
            too_large: false,
            bare_line_ending: false,
        }
    }

    /// Bare line endings win over size: both refuse, but smuggling is the one to log.
    pub fn outcome(&self) -> DataOutcome {
        if self.bare_line_ending {
            DataOutcome::BareLineEnding
        } else if self.too_large {
            DataOutcome::TooLarge
        } else {
            DataOutcome::Ok
        }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.too_large {
            return;
        }
        let room = self.max_size - self.written;
        if bytes.len() > room {
            out.extend_from_slice(&bytes[..room]);
            self.written = self.max_size;
            self.too_large = true;
        } else {
            out.extend_from_slice(bytes);
            self.written += bytes.len();
        }
    }

    /// Decodes `input` (any chunk of the stream), appending the unstuffed data to `out` up to
    /// the size limit; says whether the end of data was reached and where.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let mut i = 0;
        while i < input.len() {
            let byte = input[i];
            match self.state {
                State::LineStart if byte == b'.' => {
                    self.state = State::Dot;
                    i += 1;
                }
                State::Dot if byte == b'\r' => {
                    self.state = State::DotCr;
                    i += 1;
                }
                State::Dot => {
                    // RFC 5321 4.5.2: a leading dot followed by more text is deleted; the
                    // byte itself is handled as line content (not consumed here).
                    self.state = State::Middle;
                }
                State::DotCr if byte == b'\n' => {
                    self.state = State::LineStart;
                    return Feed::Done { consumed: i + 1 };
                }
                State::DotCr => {
                    // ".<CR>x": the CR is bare. The dot is deleted as stuffing.
                    self.bare_line_ending = true;
                    self.emit(b"\r", out);
                    self.state = State::Middle;
                }
                State::Cr if byte == b'\n' => {
                    self.emit(b"\r\n", out);
                    self.state = State::LineStart;
                    i += 1;
                }
                State::Cr => {
                    self.bare_line_ending = true;
                    self.emit(b"\r", out);
                    self.state = State::Middle;
                }
                State::LineStart | State::Middle => {
                    // Copy the run of ordinary bytes in one go.
                    let rest = &input[i..];
                    let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    if run > 0 {
                        self.emit(&rest[..run], out);
                        i += run;
                        self.state = State::Middle;
                        continue;
                    }
                    if byte == b'\r' {
                        self.state = State::Cr;
                    } else {
                        // A bare LF: never a line end, so never the start of an end marker.
                        self.bare_line_ending = true;
                        self.emit(b"\n", out);
                        self.state = State::Middle;
                    }
                    i += 1;
                }
            }
        }
        Feed::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds everything at once; returns (body, outcome, consumed) or None if not finished.
    fn decode(input: &[u8], max: usize) -> Option<(Vec<u8>, DataOutcome, usize)> {
        let mut d = DataDecoder::new(max);
        let mut out = Vec::new();
        match d.feed(input, &mut out) {
            Feed::Done { consumed } => Some((out, d.outcome(), consumed)),
            Feed::NeedMore => None,
        }
    }

    /// Feeds in the given pieces; returns the same shape as `decode`, `consumed` counted from
    /// the start of the whole input.
    fn decode_split(pieces: &[&[u8]], max: usize) -> Option<(Vec<u8>, DataOutcome, usize)> {
        let mut d = DataDecoder::new(max);
        let mut out = Vec::new();
        let mut offset = 0;
        for piece in pieces {
            if let Feed::Done { consumed } = d.feed(piece, &mut out) {
                return Some((out, d.outcome(), offset + consumed));
            }
            offset += piece.len();
        }
        None
    }

    #[test]
    fn simple_message_and_dot_unstuffing() {
        let (body, outcome, consumed) = decode(
            b"Subject: x\r\n\r\n..dot\r\n.x\r\nend\r\n.\r\nQUIT\r\n",
            1000,
        )
        .unwrap();
        assert_eq!(body, b"Subject: x\r\n\r\n.dot\r\nx\r\nend\r\n");
        assert_eq!(outcome, DataOutcome::Ok);
        assert_eq!(consumed, 33);
    }

    #[test]
    fn empty_message() {
        let (body, outcome, consumed) = decode(b".\r\n", 10).unwrap();
        assert!(body.is_empty());
        assert_eq!((outcome, consumed), (DataOutcome::Ok, 3));
    }

    #[test]
    fn smuggling_variants_never_end_data() {
        for fake in [
            &b"a\n.\nb"[..],
            b"a\n.\r\nb",
            b"a\r.\rb",
            b"a\r\n.\rb",
            b"a\r\n.\nb",
            b"a\r.\r\nb",
        ] {
            assert!(decode(fake, 1000).is_none(), "{fake:?} ended data");
            let mut whole = fake.to_vec();
            whole.extend_from_slice(b"\r\n.\r\n");
            let (_, outcome, consumed) = decode(&whole, 1000).unwrap();
            assert_eq!(outcome, DataOutcome::BareLineEnding, "{fake:?}");
            assert_eq!(consumed, whole.len());
        }
    }

    #[test]
    fn too_large_keeps_scanning_for_the_end() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        let (body, outcome, consumed) = decode(&input, 10).unwrap();
        assert_eq!(body.len(), 10);
        assert_eq!(outcome, DataOutcome::TooLarge);
        assert_eq!(consumed, 105);
    }

    #[test]
    fn every_split_gives_the_same_result() {
        let cases: &[&[u8]] = &[
            b"Subject: x\r\n\r\n..dot\r\n.x\r\nend\r\n.\r\nNEXT",
            b"a\n.\nb\r\n.\r\n",
            b"a\r.\r\nb\r\n.\r\nMAIL",
            b"\r\n.\r\r\n.\r\n",
            b"..\r\n...\r\n.\r\n",
            b"x\r\r\n.\r\n",
            b"line\r\n.\rx\r\n.\r\n",
        ];
        for case in cases {
            let whole = decode(case, 1000);
            assert!(whole.is_some(), "{case:?}");
            for cut in 0..=case.len() {
                let split = decode_split(&[&case[..cut], &case[cut..]], 1000);
                assert_eq!(split, whole, "{case:?} cut at {cut}");
            }
            let bytes: Vec<&[u8]> = case.chunks(1).collect();
            assert_eq!(decode_split(&bytes, 1000), whole, "{case:?} byte by byte");
        }
    }
}
