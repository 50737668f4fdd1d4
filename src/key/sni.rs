//! Reading the SNI server name from a TLS ClientHello without terminating TLS, for `protocol:
//! tcp` listeners. rustls' [`Acceptor`] parses the hello; the proxy keeps the raw bytes it read
//! and forwards them to the upstream untouched.

use rustls::server::Acceptor;

/// The most ClientHello bytes we will buffer while looking for the server name.
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

/// What the bytes read so far say about the server name.
#[derive(Debug, PartialEq, Eq)]
pub enum SniPeek {
    /// A ClientHello has started but is not complete.
    NeedMore,
    /// A complete ClientHello naming this server.
    Found(String),
    /// A complete ClientHello without SNI, or bytes that are not TLS at all.
    Absent,
}

/// Parse `buf` (everything the client sent so far) as the start of a TLS connection.
pub fn peek_sni(buf: &[u8]) -> SniPeek {
    let mut acceptor = Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return SniPeek::Absent,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(None) if buf.len() >= MAX_HELLO_BYTES => SniPeek::Absent,
        Ok(None) => SniPeek::NeedMore,
        Ok(Some(accepted)) => match accepted.client_hello().server_name() {
            Some(name) => SniPeek::Found(name.to_owned()),
            None => SniPeek::Absent,
        },
        Err(_) => SniPeek::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_tls() {
        assert_eq!(
            peek_sni(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            SniPeek::Absent
        );
        assert_eq!(peek_sni(&[0u8; 64]), SniPeek::Absent);
    }

    #[test]
    fn partial_record_needs_more() {
        // A handshake record header announcing 512 bytes, then only the start of it.
        assert_eq!(
            peek_sni(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
            SniPeek::NeedMore
        );
        assert_eq!(peek_sni(&[]), SniPeek::NeedMore);
    }
}
