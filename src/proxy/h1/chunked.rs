//! The chunked transfer coding (RFC 9112 §7.1) as an incremental scanner: fed a body's bytes as
//! they arrive, in any splits, it finds where the body ends and hands out the chunk data. The
//! relay forwards chunked bodies as they came (checked, not re-encoded) or, for an HTTP/1.0
//! client, only their data. Sizes are hex digits without sign or whitespace and fit 64 bits;
//! extensions and trailer lines are bounded and must not carry a bare CR or LF.

/// The most bytes of extensions on one chunk-size line.
pub const MAX_EXTENSION_BYTES: usize = 4096;
/// The most bytes of trailer fields after the last chunk.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(pub &'static str);

/// How far one [`Chunked::scan`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to the body (all of it, unless the body ended).
    pub used: usize,
    /// The body's last byte was among them.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size,
    /// Whitespace after the size, before a `;` (only `;` or CR may follow).
    SizeSpace,
    /// Chunk extensions after a `;`.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line, or of the empty line that ends the body.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Scanner state for one chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// The current chunk's size while reading it, then the data bytes still to come.
    size: u64,
    digits: u8,
    /// Bytes of extensions on this line, or of trailers so far.
    extra: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: State::Size,
            size: 0,
            digits: 0,
            extra: 0,
        }
    }

    /// The body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scan the next bytes of the body; `data` gets each run of chunk data among them.
    pub fn scan(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                data(&input[i..i + take]);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = self.step(b)?;
            if self.state == State::Done {
                return Ok(Progress {
                    used: i,
                    done: true,
                });
            }
        }
        Ok(Progress {
            used: i,
            done: self.state == State::Done,
        })
    }

    /// One byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<State, ChunkError> {
        Ok(match self.state {
            State::Size => match (hex(b), b) {
                (Some(d), _) => {
                    // Leading zeros do not count towards the 16 digits a u64 holds.
                    if self.size != 0 || d != 0 {
                        self.digits += 1;
                    }
                    if self.digits > 16 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    self.size = self.size << 4 | u64::from(d);
                    self.extra = self.extra.saturating_add(1);
                    State::Size
                }
                _ if self.extra == 0 => return Err(ChunkError("chunk size without digits")),
                (None, b'\r') => State::SizeLf,
                (None, b' ' | b'\t') => State::SizeSpace,
                (None, b';') => self.extension_start(),
                _ => return Err(ChunkError("invalid chunk size")),
            },
            State::SizeSpace => match b {
                b' ' | b'\t' => State::SizeSpace,
                b';' => self.extension_start(),
                b'\r' => State::SizeLf,
                _ => return Err(ChunkError("invalid chunk size")),
            },
            State::Extension => match b {
                b'\r' => State::SizeLf,
                b' ' | b'\t' | 0x21..=0x7e | 0x80..=0xff => {
                    self.extra += 1;
                    if self.extra > MAX_EXTENSION_BYTES {
                        return Err(ChunkError("chunk extensions too long"));
                    }
                    State::Extension
                }
                _ => return Err(ChunkError("invalid byte in chunk extension")),
            },
            State::SizeLf => match b {
                b'\n' if self.size == 0 => {
                    self.extra = 0;
                    State::TrailerStart
                }
                b'\n' => State::Data,
                _ => return Err(ChunkError("chunk size line not ended by CRLF")),
            },
            State::Data => unreachable!("data is consumed in bulk by scan"),
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError("chunk data not followed by CRLF")),
            },
            State::DataLf => match b {
                b'\n' => {
                    self.digits = 0;
                    self.extra = 0;
                    State::Size
                }
                _ => return Err(ChunkError("chunk data not followed by CRLF")),
            },
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b' ' | b'\t' => return Err(ChunkError("obs-fold in trailer")),
                b'\n' => return Err(ChunkError("bare LF in trailer")),
                _ => self.trailer_byte()?,
            },
            State::Trailer => match b {
                b'\r' => State::TrailerLf,
                b'\n' => return Err(ChunkError("bare LF in trailer")),
                _ => self.trailer_byte()?,
            },
            State::TrailerLf => match b {
                b'\n' => State::TrailerStart,
                _ => return Err(ChunkError("bare CR in trailer")),
            },
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(ChunkError("chunked body not ended by CRLF")),
            },
            State::Done => State::Done,
        })
    }

    fn extension_start(&mut self) -> State {
        self.extra = 0;
        State::Extension
    }

    fn trailer_byte(&mut self) -> Result<State, ChunkError> {
        self.extra += 1;
        if self.extra > MAX_TRAILER_BYTES {
            return Err(ChunkError("trailer fields too long"));
        }
        Ok(State::Trailer)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scan `input` in pieces of `split` bytes: (data, bytes used, done) or the error.
    fn scan(input: &[u8], split: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut c = Chunked::new();
        let mut data = Vec::new();
        let mut used = 0;
        for piece in input.chunks(split.max(1)) {
            let p = c.scan(piece, |d| data.extend_from_slice(d))?;
            used += p.used;
            if p.done {
                return Ok((data, used, true));
            }
        }
        Ok((data, used, false))
    }

    #[test]
    fn bodies_end_where_they_end_whatever_the_splits() {
        let cases: &[(&[u8], &[u8], usize)] = &[
            (b"5\r\nhello\r\n0\r\n\r\nNEXT", b"hello", 15),
            (b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"hello", 21),
            (b"5 ;a\r\nhello\r\n0\r\n\r\n", b"hello", 18),
            (b"A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n", b"0123456789", 28),
            (b"000\r\n\r\n", b"", 7),
            (b"0000000000000000005\r\nhello\r\n0\r\n\r\n", b"hello", 33),
        ];
        for (input, want, used) in cases {
            for split in [1, 2, 3, 7, 1000] {
                let got = scan(input, split).unwrap();
                assert_eq!(got, (want.to_vec(), *used, true), "{input:?} split {split}");
            }
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let cases: &[&[u8]] = &[
            b"\r\n",                  // no digits
            b"-5\r\nhello\r\n",       // sign
            b"0x5\r\nhello\r\n",      // prefix
            b"5\nhello\r\n",          // bare LF after size
            b"5\r\nhelloX\r\n",       // data longer than its size
            b"5\r\nhello\n0\r\n\r\n", // bare LF after data
            b"1 x\r\nz\r\n",          // text after whitespace without `;`
            b"10000000000000000\r\n", // 17 significant digits
            b"5;a\x00\r\nhello\r\n",  // control byte in an extension
            b"0\r\nX: 1\n\r\n",       // bare LF in a trailer
            b"0\r\n folded\r\n\r\n",  // obs-fold in a trailer
            b"0\r\n\r\r",             // bad end
        ];
        for input in cases {
            assert!(scan(input, 1).is_err(), "{input:?} accepted");
            assert!(scan(input, 1000).is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn extensions_and_trailers_are_bounded() {
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_EXTENSION_BYTES + 1));
        assert!(scan(&long_ext, 64).is_err());
        let mut long_trailer = b"0\r\nX: ".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILER_BYTES));
        assert!(scan(&long_trailer, 64).is_err());
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        assert_eq!(scan(b"5\r\nhel", 2).unwrap(), (b"hel".to_vec(), 6, false));
    }
}
