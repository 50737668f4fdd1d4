//! Who may use a session, for both protocols: a session belongs to the user who created it
//! (JSON-RPC `session.create`, `sessions.open`, `sessions.fork`) or, on HTTP, who first sent its
//! key. The binding lives in the shared store; creating claims it there first, so of two users
//! racing for one id across replicas exactly one wins.

use std::future::Future;

use crate::config::Unowned;
use crate::identity::{Identities, Identity};
use crate::store::Store;

/// How a request uses its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A session that should exist (resume, send, read, delete).
    Existing,
    /// A create with an id the client chose.
    Create,
    /// A create with a fresh id the proxy made up: nobody's yet, whatever the `unowned` rule
    /// (under `deny` every create leaving the id to the proxy would be refused).
    Generated,
    /// An HTTP request: there is no create, so the first request with a key makes the session.
    FirstUse,
}

/// May `who` use `session` of `pool` as `how`? A session nobody owns yet is claimed for `who`
/// when `how` makes it (create, first use). `fleet_holds` (awaited only for a create under
/// `unowned: deny`) says whether the fleet already holds the id: creating it again would take
/// over someone's session.
pub async fn may_use(
    store: &Store,
    identities: &Identities,
    pool: &str,
    who: &Identity,
    session: &str,
    how: Use,
    fleet_holds: impl Future<Output = bool>,
) -> bool {
    if let Some(owner) = store.owner(pool, session).await {
        return *owner == *who.user;
    }
    let unowned = &identities.config.unowned;
    let free = match (how, unowned) {
        (Use::Generated, _) => true,
        (Use::Existing, _) | (_, Unowned::Prefix(_)) => identities.may_touch(who, session, None),
        (Use::Create, Unowned::Deny) => !fleet_holds.await,
        (Use::Create | Use::FirstUse, _) => true,
    };
    if !free || how == Use::Existing {
        return free;
    }
    let ttl = identities.config.binding_ttl;
    let owner = store.claim(pool, session, &who.user, ttl).await;
    *owner == *who.user
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::IdentitiesConfig;

    fn identities(unowned: Unowned) -> Identities {
        Identities::from_config_for_tests(IdentitiesConfig {
            tokens_file: "tokens.yaml".into(),
            unowned,
            binding_ttl: Duration::from_secs(3600),
            policies: Vec::new(),
        })
    }

    fn user(name: &str) -> Identity {
        Identity {
            user: Arc::from(name),
            tenant: None,
        }
    }

    #[tokio::test]
    async fn decisions() {
        let prefix = || Unowned::Prefix("{user}-".into());
        // (rule, use, fleet holds the id, session, expected for alice)
        let cases = [
            (Unowned::Deny, Use::Existing, false, "s", false),
            (Unowned::Allow, Use::Existing, false, "s", true),
            (prefix(), Use::Existing, false, "alice-1", true),
            (prefix(), Use::Existing, false, "bob-1", false),
            (Unowned::Deny, Use::Create, false, "s", true),
            (Unowned::Deny, Use::Create, true, "s", false),
            (Unowned::Allow, Use::Create, true, "s", true),
            (prefix(), Use::Create, false, "bob-1", false),
            (prefix(), Use::Create, false, "alice-1", true),
            (Unowned::Deny, Use::FirstUse, true, "s", true),
            (prefix(), Use::FirstUse, false, "bob-1", false),
            (Unowned::Deny, Use::Generated, true, "s", true),
            (prefix(), Use::Generated, false, "bob-1", true),
        ];
        for (rule, how, holds, session, expected) in cases {
            let ids = identities(rule.clone());
            let store = Store::local();
            let got = may_use(&store, &ids, "p", &user("alice"), session, how, async {
                holds
            })
            .await;
            assert_eq!(got, expected, "{rule:?} {how:?} holds={holds} {session}");
            // What a make claimed is alice's from then on, and no one else's.
            let claimed = got && how != Use::Existing;
            let bob = may_use(
                &store,
                &ids,
                "p",
                &user("bob"),
                session,
                Use::Existing,
                async { false },
            )
            .await;
            if claimed {
                assert!(!bob, "{rule:?} {how:?}: claimed by alice");
            }
            let again = may_use(
                &store,
                &ids,
                "p",
                &user("alice"),
                session,
                Use::Existing,
                async { false },
            )
            .await;
            assert_eq!(again, claimed || expected && how == Use::Existing);
        }
    }

    #[tokio::test]
    async fn of_two_creators_one_wins() {
        let ids = identities(Unowned::Allow);
        let store = Store::local();
        let (alice, bob) = (user("alice"), user("bob"));
        let alice = may_use(&store, &ids, "p", &alice, "s", Use::Create, async { false });
        let bob = may_use(&store, &ids, "p", &bob, "s", Use::Create, async { false });
        let (a, b) = tokio::join!(alice, bob);
        assert!(a ^ b, "alice {a}, bob {b}");
    }
}
