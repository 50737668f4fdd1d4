//! One upstream link: a connection from the proxy to one CLI node on behalf of one client, as an
//! I/O-only task. It connects, writes the frames the connection task queues for it, and reports
//! every frame the node sends, and how the link ended, to the connection task as events. It
//! keeps no protocol state: what the frames mean is the connection's business.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

use super::conn::Event;
use super::state::SetupCall;
use crate::upstream::Endpoint;
use crate::wire::codec::{write_frames, FrameCodec, FrameError};
use crate::wire::reader::FrameReader;

/// How a link failed; the `kind` label of the link-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFailure {
    /// The node refused or never answered the connection: it saw nothing.
    Connect,
    /// An open link closed or failed to write: the node may have seen requests.
    Dropped,
    /// The node sent something that is not a JSON-RPC frame.
    Malformed,
}

impl LinkFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkFailure::Connect => "connect",
            LinkFailure::Dropped => "dropped",
            LinkFailure::Malformed => "malformed",
        }
    }
}

/// What a link task needs besides its frames.
pub struct LinkSettings {
    pub connect_timeout: Duration,
    pub max_frame_bytes: usize,
    /// `sessiongate_upstream_connections_active` for this node.
    pub open: IntGauge,
}

/// Run a link to `to` until the connection task drops its sender (then quietly) or the link
/// fails (then with an [`Event::LinkDown`]).
pub async fn run(
    to: Endpoint,
    generation: u64,
    frames: mpsc::Receiver<Bytes>,
    events: mpsc::Sender<Event>,
    settings: LinkSettings,
) {
    let down = |kind, why: String| Event::LinkDown {
        node: to.name.clone(),
        generation,
        kind,
        why,
    };
    let connected = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(&*to.addr));
    let stream = match connected.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return drop(events.send(down(LinkFailure::Connect, e.to_string())).await),
        Err(_) => {
            let why = "connect timed out".to_owned();
            return drop(events.send(down(LinkFailure::Connect, why)).await);
        }
    };
    let _ = stream.set_nodelay(true);
    let _open = Open::new(settings.open);
    let (read, write) = stream.into_split();
    let codec = FrameCodec::new(settings.max_frame_bytes);
    let mut reader = FrameReader::new(read, codec, None);
    let node = to.name.clone();
    let reading = async {
        while let Some(frame) = reader.next().await {
            match frame {
                Ok(body) => {
                    let event = Event::Upstream {
                        node: node.clone(),
                        generation,
                        body,
                    };
                    if events.send(event).await.is_err() {
                        return None;
                    }
                }
                Err(FrameError::Io(e)) => return Some((LinkFailure::Dropped, e.to_string())),
                Err(e) => return Some((LinkFailure::Malformed, e.to_string())),
            }
        }
        Some((
            LinkFailure::Dropped,
            "connection closed by the server".to_owned(),
        ))
    };
    let failure = tokio::select! {
        failure = reading => failure,
        written = write_frames(write, frames) => match written {
            // The connection task let the link go.
            Ok(()) => None,
            Err(e) => Some((LinkFailure::Dropped, format!("write failed: {e}"))),
        },
    };
    if let Some((kind, why)) = failure {
        debug!(upstream = %to.name, kind = kind.as_str(), error = %why, "upstream link ended");
        let _ = events.send(down(kind, why)).await;
    }
}

/// One open upstream connection in the gauge, for as long as it lives.
struct Open(IntGauge);

impl Open {
    fn new(gauge: IntGauge) -> Open {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A link as the connection task holds it: the sender to its task, and frames that wait (while
/// the link replays the connection's setup, or while its queue is full).
pub struct Link {
    pub endpoint: Endpoint,
    pub generation: u64,
    pub stats: LinkStats,
    tx: mpsc::Sender<Bytes>,
    /// Setup calls still to replay before anything else may go out; `Some` while replaying.
    replay: Option<VecDeque<SetupCall>>,
    held: VecDeque<Bytes>,
}

/// The metric series of answers on one link (listener × pool × upstream), resolved once.
pub struct LinkStats {
    /// `sessiongate_requests_total` with `code="ok"`.
    pub ok: prometheus::IntCounter,
    pub duration: prometheus::Histogram,
}

/// Frames queued to one link's task.
pub const LINK_QUEUE: usize = 256;

impl Link {
    /// A new link that replays `replay` first (each call answered before the next goes out;
    /// the connection task drives that with [`Link::next_replay`]).
    pub fn new(
        endpoint: Endpoint,
        generation: u64,
        tx: mpsc::Sender<Bytes>,
        replay: Vec<SetupCall>,
        stats: LinkStats,
    ) -> Link {
        Link {
            endpoint,
            generation,
            stats,
            tx,
            replay: Some(replay.into()),
            held: VecDeque::new(),
        }
    }

    /// Queue a frame (after the replay, in order).
    pub fn send(&mut self, frame: Bytes) {
        if self.replay.is_some() || !self.held.is_empty() {
            return self.held.push_back(frame);
        }
        if let Err(mpsc::error::TrySendError::Full(frame)) = self.tx.try_send(frame) {
            self.held.push_back(frame);
        }
    }

    /// The next setup call to replay, or `None` once the replay is over (what waited for it is
    /// then queued).
    pub fn next_replay(&mut self) -> Option<SetupCall> {
        let call = self.replay.as_mut()?.pop_front();
        if call.is_none() {
            self.replay = None;
            self.flush();
        }
        call
    }

    /// Send a replay call ahead of everything that waits (the queue holds nothing else while
    /// the link replays, so it fits).
    pub fn send_replay(&mut self, frame: Bytes) {
        let _ = self.tx.try_send(frame);
    }

    /// Move waiting frames into the queue while it has room.
    fn flush(&mut self) {
        if self.replay.is_some() {
            return;
        }
        while let Some(frame) = self.held.pop_front() {
            if let Err(mpsc::error::TrySendError::Full(frame)) = self.tx.try_send(frame) {
                self.held.push_front(frame);
                return;
            }
        }
    }

    /// Should the client stop being read until this link catches up? While its queue is full,
    /// or while a replay holds more than a queue's worth of frames.
    pub fn blocked(&self) -> bool {
        match self.replay {
            Some(_) => self.held.len() >= LINK_QUEUE,
            None => !self.held.is_empty(),
        }
    }

    /// A handle to wait on for room in the queue, when [`Link::blocked`] waits for that.
    pub fn waiting_for_room(&self) -> Option<mpsc::Sender<Bytes>> {
        (self.replay.is_none() && !self.held.is_empty()).then(|| self.tx.clone())
    }

    /// Room was reserved in the queue: send the first waiting frame with it, then the rest
    /// that fit.
    pub fn send_reserved(&mut self, permit: mpsc::OwnedPermit<Bytes>) {
        if let Some(frame) = self.held.pop_front() {
            permit.send(frame);
            self.flush();
        }
    }
}
