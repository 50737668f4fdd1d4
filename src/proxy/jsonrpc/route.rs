//! Classifying a client message: which kind of destination it has. The decision needs only the
//! method and `params.sessionId`, both parsed without copying.

/// Methods that read global state of a node and go to the connection's home node.
const GLOBAL_METHODS: &[&str] = &[
    "ping",
    "status.get",
    "auth.getStatus",
    "models.list",
    "session.getLastId",
    "session.getForeground",
];

/// Methods whose latency gets its own `method` label; anything else is `other`, so a client
/// cannot create unbounded series.
const KNOWN_METHODS: &[&str] = &[
    "connect",
    "ping",
    "status.get",
    "auth.getStatus",
    "models.list",
    "session.list",
    "session.getLastId",
    "session.getForeground",
    "session.create",
    "session.resume",
    "session.send",
    "session.getMessages",
    "session.getMetadata",
    "session.abort",
    "session.detach",
    "session.delete",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Destination {
    /// Session-scoped: to the node that holds the session.
    Session,
    /// `session.create` without an id: the proxy generates one, then places it.
    CreateWithoutId,
    /// `session.list`: every healthy node, answers merged.
    FanOutList,
    /// A global read: the home node.
    Global,
    /// Connection-scoped setup (`connect`, `sessionFs.setProvider`, …): the home node, recorded
    /// and replayed on every other link.
    Setup,
}

pub(super) fn destination(method: &str, has_session: bool) -> Destination {
    match (method, has_session) {
        (_, true) => Destination::Session,
        ("session.create", false) => Destination::CreateWithoutId,
        ("session.list", false) => Destination::FanOutList,
        (m, false) if GLOBAL_METHODS.contains(&m) => Destination::Global,
        _ => Destination::Setup,
    }
}

/// What the proxy must remember about a request until its answer arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tracked {
    Create,
    Resume,
    Delete,
    Other,
}

pub(super) fn tracked(method: &str) -> Tracked {
    match method {
        "session.create" => Tracked::Create,
        "session.resume" => Tracked::Resume,
        "session.delete" => Tracked::Delete,
        _ => Tracked::Other,
    }
}

/// The `method` label for latency metrics.
pub(super) fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(destination("session.send", true), Destination::Session);
        assert_eq!(destination("session.create", true), Destination::Session);
        assert_eq!(
            destination("session.create", false),
            Destination::CreateWithoutId
        );
        assert_eq!(destination("session.list", false), Destination::FanOutList);
        assert_eq!(destination("ping", false), Destination::Global);
        assert_eq!(destination("connect", false), Destination::Setup);
        assert_eq!(
            destination("sessionFs.setProvider", false),
            Destination::Setup
        );
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label("session.send"), "session.send");
        assert_eq!(method_label("x".repeat(100).as_str()), "other");
    }
}
