//! Moving a message body from one side to the other by its framing: a length, the chunked
//! coding (passed on as it came, or only its data for an HTTP/1.0 client) or until the source
//! closes. Bytes the source sent past the body's end (a pipelined request) stay in `pending`.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::{ChunkError, Chunked};

/// How much is read from a source at a time.
pub const READ_CHUNK: usize = 16 * 1024;

/// Why a body did not get through, by side.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading the body: {0}")]
    Read(std::io::Error),
    #[error("the body ended early: its source closed")]
    Truncated,
    #[error("writing the body: {0}")]
    Write(std::io::Error),
    #[error(transparent)]
    Malformed(#[from] ChunkError),
}

/// Read more from `src` into `pending`; `Ok(false)`: it closed.
pub async fn fill<R: AsyncRead + Unpin>(
    src: &mut R,
    pending: &mut BytesMut,
) -> std::io::Result<bool> {
    pending.reserve(READ_CHUNK);
    Ok(src.read_buf(pending).await? > 0)
}

/// Relay exactly `remaining` bytes.
pub async fn length<R, W>(
    src: &mut R,
    pending: &mut BytesMut,
    dst: &mut W,
    mut remaining: u64,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while remaining > 0 {
        if pending.is_empty() && !fill(src, pending).await.map_err(RelayError::Read)? {
            return Err(RelayError::Truncated);
        }
        let take = pending
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        dst.write_all(&pending[..take])
            .await
            .map_err(RelayError::Write)?;
        pending.advance(take);
        remaining -= take as u64;
    }
    Ok(())
}

/// Relay a chunked body. `dechunk`: pass on only its data (an HTTP/1.0 client); otherwise
/// the body as it came, checked by `scanner` (which may already have seen part of it).
pub async fn chunked<R, W>(
    src: &mut R,
    pending: &mut BytesMut,
    dst: &mut W,
    scanner: &mut Chunked,
    dechunk: bool,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut data = Vec::new();
    while !scanner.is_done() {
        if pending.is_empty() && !fill(src, pending).await.map_err(RelayError::Read)? {
            return Err(RelayError::Truncated);
        }
        data.clear();
        let progress = match dechunk {
            true => scanner.scan(pending, |d| data.extend_from_slice(d))?,
            false => scanner.scan(pending, |_| {})?,
        };
        let out = if dechunk {
            &data[..]
        } else {
            &pending[..progress.used]
        };
        if !out.is_empty() {
            dst.write_all(out).await.map_err(RelayError::Write)?;
        }
        pending.advance(progress.used);
    }
    Ok(())
}

/// Relay until the source closes.
pub async fn until_close<R, W>(
    src: &mut R,
    pending: &mut BytesMut,
    dst: &mut W,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if !pending.is_empty() {
            dst.write_all(pending).await.map_err(RelayError::Write)?;
            pending.clear();
        }
        if !fill(src, pending).await.map_err(RelayError::Read)? {
            return Ok(());
        }
    }
}
