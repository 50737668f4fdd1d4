//! The method table: which routing class each JSON-RPC method the Copilot SDK can send has, and
//! what the proxy learns from its answer. The table itself ([`table`]) lists every method of
//! `@github/copilot-sdk` 1.0.14; anything else is [`Class::Unknown`], which is never recorded or
//! replayed. The README documents the classes; `sessiongate methods` prints the table.

mod table;

use std::collections::HashMap;
use std::sync::LazyLock;

use table::TABLE;

/// Where a client request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Configures the connection (`connect`, `sessionFs.setProvider`, …): sent to the home node,
    /// recorded, and replayed first on every new link so each node sees the same client.
    Setup(Replay),
    /// Reads node-wide state (`ping`, `models.list`, …): the home node.
    GlobalRead,
    /// Changes node-wide state (settings, plugins, MCP configuration, accounts): the home node
    /// only, never replayed. Fleet-wide configuration belongs in the fleet's deployment.
    NodeWrite,
    /// About one existing session named in `params.<field>`: the node holding it (pin, else
    /// ring owner). Without that field: the home node, which answers the missing parameter.
    Session(Field),
    /// Makes a new session; the answer's session is pinned to the node that made it.
    Create(Create),
    /// Concerns every session of the fleet: sent to every available node, answers merged.
    FanOut(Merge),
    /// Takes a list of sessions: each goes to its owner, answers merged in request order.
    Split(Split),
    /// `sessions.open`: create, resume, attach or resume-last, by `params.kind`.
    Open,
    /// The client's half of an exchange a node began (LLM inference answers, by
    /// `params.requestId`): the node that asked.
    ReplyTo,
    /// Not in the table: the session's node if `params.sessionId` names one, else the home
    /// node; never recorded or replayed; counted.
    Unknown,
}

/// How a setup call is kept for replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The node's setting is what the latest call said: a repeat replaces the earlier call.
    Latest,
    /// Each call adds to the node's state (`secrets.addFilterValues`): every call is kept.
    Every,
}

/// The parameter that names the session a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    SessionId,
    /// `sessions.transferRemoteControl`.
    ToSessionId,
    /// `sessions.stopRemoteControl`.
    ExpectedSessionId,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::SessionId => "sessionId",
            Field::ToSessionId => "toSessionId",
            Field::ExpectedSessionId => "expectedSessionId",
        }
    }
}

/// How a new session is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// `session.create`: on the ring owner of `params.sessionId`, which the proxy generates
    /// (UUID v4) when the client sent none, so the placement is known before the answer.
    New,
    /// `sessions.fork`, `sessions.connect`: on the node of the session it starts from
    /// (`params.sessionId`); the new id in the answer is pinned there.
    FromSession,
}

/// How the answers of a fan-out become one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// `{sessions: [...]}`: deduplicated by `sessionId` (newest copy wins), newest
    /// `modifiedTime` first.
    SessionList,
    /// `{sessionId?}` for a prefix: the one id if exactly one session matches fleet-wide, else
    /// none (the CLI's rule for an ambiguous prefix; a node that answered none is asked for its
    /// ids to tell "no match" from "several").
    UniqueId,
    /// `{sessionId?}`: the first node (in pool order) that found one.
    FirstId,
    /// `{sessionId?}`: of the candidates, the one modified last (the proxy reads their
    /// metadata to compare).
    NewestSession,
    /// `{sizes: {id: bytes}}`: the union.
    Sizes,
    /// `{sessionIds: [...]}`, newest first: ordered by modification time across nodes (read
    /// from each node's basic session list), cut to `params.limit`.
    NewestIds,
    /// `sessions.pruneOld`: `deleted`, `candidates`, `skipped` concatenated, `freedBytes`
    /// summed, `dryRun` true only if every node's was.
    Prune,
}

/// How a request over a list of sessions is split, and its answers put back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `sessions.bulkDelete {sessionIds}` → `{freedBytes: {id: bytes}}`.
    FreedBytes,
    /// `sessions.checkInUse {sessionIds}` → `{inUse: [...]}`.
    InUse,
    /// `sessions.getClientMetadata {sessionIds}` → `[{sessionId, status, …}]`.
    ClientMetadata,
    /// `sessions.enrichMetadata {sessions: [{sessionId, …}]}` → `{sessions: [...]}`.
    Enrich,
}

impl Split {
    /// The parameter holding the list.
    pub fn list_field(self) -> &'static str {
        match self {
            Split::Enrich => "sessions",
            _ => "sessionIds",
        }
    }
}

/// What an answer teaches the pin table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    Nothing,
    /// A success pins the session the request named to the node that answered
    /// (`session.create`, `session.resume`).
    PinRequested,
    /// A success pins the session the answer names (`result.sessionId`) to the node that
    /// answered (`sessions.open`, `sessions.fork`, `sessions.connect`).
    PinAnswered,
    /// A success forgets the session (`session.delete` answering `success: true`,
    /// `sessions.delete`).
    Unpin,
}

/// A method's entry: its class and its name as a `'static` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub class: Class,
    /// The method's own name for methods in the table, `"other"` for the rest, so clients
    /// cannot create unbounded metric series.
    pub label: &'static str,
}

/// The table indexed by name: one hash per lookup instead of a binary search's string
/// comparisons (the table is fixed, so a fixed seed is fine).
static INDEX: LazyLock<HashMap<&str, usize, foldhash::fast::FixedState>> = LazyLock::new(|| {
    TABLE
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, i))
        .collect()
});

/// Look `method` up in the table.
pub fn lookup(method: &str) -> Method {
    match INDEX.get(method) {
        Some(&i) => Method {
            class: TABLE[i].1,
            label: TABLE[i].0,
        },
        None => Method {
            class: Class::Unknown,
            label: "other",
        },
    }
}

/// What to learn from the answer to `method`.
pub fn learn(method: &str) -> Learn {
    match method {
        "session.create" | "session.resume" => Learn::PinRequested,
        "sessions.open" | "sessions.fork" | "sessions.connect" => Learn::PinAnswered,
        "session.delete" | "sessions.delete" => Learn::Unpin,
        _ => Learn::Nothing,
    }
}

/// Whether a miss on the ring owner (no pin, "not found") is worth asking the rest of the fleet
/// about: the requests that load a session (`session.resume`, `sessions.open` resume,
/// `sessions.fork`). Others on a session nobody loaded fail at the CLI anyway.
pub fn discovers_owner(method: &str) -> bool {
    matches!(method, "session.resume" | "sessions.open" | "sessions.fork")
}

/// Every entry, for `sessiongate methods` and the README.
pub fn all() -> impl Iterator<Item = (&'static str, Class)> {
    TABLE.iter().copied()
}

impl Class {
    /// A short name for listings and logs.
    pub fn describe(self) -> String {
        match self {
            Class::Setup(Replay::Latest) => "setup".into(),
            Class::Setup(Replay::Every) => "setup (every call replayed)".into(),
            Class::GlobalRead => "global read".into(),
            Class::NodeWrite => "node write".into(),
            Class::Session(f) => format!("session ({})", f.name()),
            Class::Create(Create::New) => "create".into(),
            Class::Create(Create::FromSession) => "create from session".into(),
            Class::FanOut(m) => format!("fan-out ({m:?})"),
            Class::Split(s) => format!("split by owner ({s:?})"),
            Class::Open => "open (by kind)".into(),
            Class::ReplyTo => "reply to asking node".into(),
            Class::Unknown => "unknown".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_has_no_duplicates() {
        for pair in TABLE.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn one_method_of_each_class() {
        let cases = [
            ("connect", Class::Setup(Replay::Latest)),
            ("sessionFs.setProvider", Class::Setup(Replay::Latest)),
            ("secrets.addFilterValues", Class::Setup(Replay::Every)),
            ("ping", Class::GlobalRead),
            ("session.getLastId", Class::GlobalRead),
            ("user.settings.set", Class::NodeWrite),
            ("runtime.shutdown", Class::NodeWrite),
            ("session.send", Class::Session(Field::SessionId)),
            ("session.shell.exec", Class::Session(Field::SessionId)),
            ("sessions.close", Class::Session(Field::SessionId)),
            (
                "sessions.transferRemoteControl",
                Class::Session(Field::ToSessionId),
            ),
            ("session.create", Class::Create(Create::New)),
            ("sessions.fork", Class::Create(Create::FromSession)),
            ("sessions.open", Class::Open),
            ("session.list", Class::FanOut(Merge::SessionList)),
            ("sessions.list", Class::FanOut(Merge::SessionList)),
            ("sessions.findByPrefix", Class::FanOut(Merge::UniqueId)),
            ("sessions.pruneOld", Class::FanOut(Merge::Prune)),
            ("sessions.bulkDelete", Class::Split(Split::FreedBytes)),
            ("sessions.checkInUse", Class::Split(Split::InUse)),
            ("llmInference.httpResponseChunk", Class::ReplyTo),
            ("sessions.frobnicate", Class::Unknown),
            ("", Class::Unknown),
        ];
        for (method, class) in cases {
            assert_eq!(lookup(method).class, class, "{method}");
        }
    }

    #[test]
    fn labels_are_the_method_or_other() {
        assert_eq!(lookup("session.send").label, "session.send");
        assert_eq!(lookup(&"x".repeat(100)).label, "other");
    }

    #[test]
    fn only_connection_setup_is_replayed() {
        let setup: Vec<&str> = all()
            .filter(|(_, class)| matches!(class, Class::Setup(_)))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            setup,
            [
                "connect",
                "llmInference.setProvider",
                "plugins.builtin.set",
                "registerExtensionLaunchProvider",
                "secrets.addFilterValues",
                "sessionFs.setProvider",
                "sessions.setAdditionalPlugins",
            ]
        );
    }

    #[test]
    fn answers_that_teach_the_pin_table() {
        assert_eq!(learn("session.create"), Learn::PinRequested);
        assert_eq!(learn("sessions.fork"), Learn::PinAnswered);
        assert_eq!(learn("sessions.delete"), Learn::Unpin);
        assert_eq!(learn("session.send"), Learn::Nothing);
        assert!(discovers_owner("session.resume"));
        assert!(!discovers_owner("session.send"));
    }
}
