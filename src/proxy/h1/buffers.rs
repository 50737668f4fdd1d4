//! Buffers lent to busy connections. An idle plain-TCP connection holds no buffer; a busy one
//! takes its read and write buffers from this worker thread's spares when a request arrives and
//! gives them back when it goes idle again, so a keep-alive client pays no allocation per
//! request. Bounded: at most [`SPARES`] of each kind per thread are kept; more are freed.

use std::cell::RefCell;

use bytes::BytesMut;

/// The size a request head or response head is first read into (bodies grow it).
pub const HEAD_BUFFER: usize = 4096;
/// Spare buffers of each kind kept per worker thread.
pub const SPARES: usize = 256;

thread_local! {
    static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty read buffer with room for a head.
pub fn read_buffer() -> BytesMut {
    READ.with(|spares| spares.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(HEAD_BUFFER))
}

/// An empty write buffer with room for a head.
pub fn write_buffer() -> Vec<u8> {
    WRITE
        .with(|spares| spares.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(HEAD_BUFFER))
}

/// Give back a read buffer (an empty one of the usual size is kept for the next taker).
pub fn give_read(mut buf: BytesMut) {
    buf.clear();
    // Smaller: its front was split off with a head; larger: a body grew it. Neither is kept.
    if buf.capacity() < HEAD_BUFFER || buf.capacity() > 4 * HEAD_BUFFER {
        return;
    }
    READ.with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARES {
            spares.push(buf);
        }
    });
}

/// Give back a write buffer.
pub fn give_write(mut buf: Vec<u8>) {
    buf.clear();
    if buf.capacity() < HEAD_BUFFER || buf.capacity() > 16 * HEAD_BUFFER {
        return;
    }
    WRITE.with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARES {
            spares.push(buf);
        }
    });
}
