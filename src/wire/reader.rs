//! Frames read from a socket with a deadline on each frame once it has begun: a peer may stay
//! silent between frames for as long as it likes, but a frame whose first byte has arrived must
//! be complete within `frame_timeout` (the slowloris defence). The deadline exists only while a
//! partial frame sits in the read buffer, so a frame that arrives in one read costs nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncRead;
use tokio::time::Sleep;
use tokio_util::codec::FramedRead;

use super::codec::{FrameCodec, FrameError};

/// A stream of frame bodies from `R`; yields [`FrameError::Timeout`] for a frame begun and not
/// finished in time (the stream is then out of sync and must be closed like after any error).
pub struct FrameReader<R> {
    frames: FramedRead<R, FrameCodec>,
    frame_timeout: Option<Duration>,
    /// Armed while a partial frame waits for the rest of its bytes.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `frame_timeout: None` waits for the rest of a frame forever (upstream links, where the
    /// request timeout covers a silent node).
    pub fn new(read: R, codec: FrameCodec, frame_timeout: Option<Duration>) -> FrameReader<R> {
        FrameReader {
            frames: FramedRead::new(read, codec),
            frame_timeout,
            deadline: None,
        }
    }

    /// The owner stops reading for a while (its own backpressure): a frame the peer began is
    /// not late for that, so its clock starts again when reading does.
    pub fn suspend(&mut self) {
        self.deadline = None;
    }

    /// Whether part of a frame has arrived and waits for the rest.
    pub fn mid_frame(&self) -> bool {
        !self.frames.read_buffer().is_empty()
    }
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<Bytes, FrameError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Poll::Ready(item) = this.frames.poll_next_unpin(cx) {
            // What is left in the buffer (if anything) starts the next frame's clock when the
            // stream is next polled.
            this.deadline = None;
            return Poll::Ready(item);
        }
        let Some(timeout) = this.frame_timeout.filter(|_| this.mid_frame()) else {
            this.deadline = None;
            return Poll::Pending;
        };
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.deadline = None;
                Poll::Ready(Some(Err(FrameError::Timeout(timeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn reader() -> (
        tokio::io::DuplexStream,
        FrameReader<tokio::io::DuplexStream>,
    ) {
        let (client, server) = tokio::io::duplex(1024);
        let frames = FrameReader::new(server, FrameCodec::default(), Some(TIMEOUT));
        (client, frames)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_peer_between_frames_is_never_timed_out() {
        let (mut client, mut frames) = reader();
        client
            .write_all(b"Content-Length: 2\r\n\r\n{}")
            .await
            .unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap(), &b"{}"[..]);
        let waited = tokio::time::timeout(10 * TIMEOUT, frames.next()).await;
        assert!(waited.is_err(), "an idle connection must stay open");
    }

    #[tokio::test(start_paused = true)]
    async fn a_begun_frame_must_finish_within_the_timeout() {
        let (mut client, mut frames) = reader();
        client
            .write_all(b"Content-Length: 10\r\n\r\n{")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let err = frames.next().await.unwrap().unwrap_err();
        assert!(
            matches!(err, FrameError::Timeout(t) if t == TIMEOUT),
            "{err}"
        );
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_header_is_timed_out_from_its_first_byte() {
        let (mut client, mut frames) = reader();
        let started = tokio::time::Instant::now();
        let trickle = async {
            for b in b"Content-Length: 2" {
                client.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            item = frames.next() => {
                assert!(matches!(item, Some(Err(FrameError::Timeout(_)))));
                assert_eq!(started.elapsed(), TIMEOUT);
            }
            _ = trickle => unreachable!(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_rest_of_a_coalesced_read_starts_its_own_clock() {
        let (mut client, mut frames) = reader();
        client
            .write_all(b"Content-Length: 2\r\n\r\n{}Content-Length: 2\r\n")
            .await
            .unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap(), &b"{}"[..]);
        tokio::time::sleep(TIMEOUT / 2).await;
        client.write_all(b"\r\n[]").await.unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap(), &b"[]"[..]);
    }
}
