//! Who a caller is: the tokens file (only SHA-256 hashes of tokens are stored), the identity of
//! an mTLS client certificate, method policies, and the rules for sessions without a known
//! owner. Loaded with each snapshot (a reload re-reads the tokens file; a bad file refuses the
//! reload) and consulted by the HTTP and JSON-RPC paths.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::config::{IdentitiesConfig, Unowned};

/// A known caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub user: Arc<str>,
    pub tenant: Option<Arc<str>>,
}

impl Identity {
    /// The caller as a routing key (`tenant/user`, or `user`).
    pub fn key(&self) -> String {
        match &self.tenant {
            Some(t) => format!("{t}/{}", self.user),
            None => self.user.to_string(),
        }
    }
}

/// The identities of one snapshot.
#[derive(Debug)]
pub struct Identities {
    by_hash: HashMap<[u8; 32], Identity>,
    pub config: IdentitiesConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    sha256: String,
    user: String,
    tenant: Option<String>,
}

impl Identities {
    /// Read the tokens file named by `config`; the error names the entry that is wrong.
    pub fn load(config: &IdentitiesConfig) -> Result<Identities, String> {
        let text = std::fs::read_to_string(&config.tokens_file)
            .map_err(|e| format!("{}: {e}", config.tokens_file.display()))?;
        let mut ids = Identities::parse(&text, &config.tokens_file)?;
        ids.config = config.clone();
        Ok(ids)
    }

    /// The rules of `config` with no tokens listed (for tests of the rules).
    #[cfg(test)]
    pub(crate) fn from_config_for_tests(config: IdentitiesConfig) -> Identities {
        Identities {
            by_hash: HashMap::new(),
            config,
        }
    }

    fn parse(text: &str, file: &Path) -> Result<Identities, String> {
        let entries: Vec<TokenEntry> = if text.trim().is_empty() {
            Vec::new()
        } else {
            serde_yaml::from_str(text).map_err(|e| format!("{}: {e}", file.display()))?
        };
        let mut by_hash = HashMap::new();
        // Sessions are owned by user name: one name must be one caller, whatever its tenant.
        let mut tenants: HashMap<String, Option<String>> = HashMap::new();
        for (i, e) in entries.into_iter().enumerate() {
            let hash = decode_hex(&e.sha256).ok_or_else(|| {
                format!(
                    "{}: entry {i} (user {}): sha256 must be 64 hex digits",
                    file.display(),
                    e.user
                )
            })?;
            if e.user.is_empty() || e.tenant.as_deref() == Some("") {
                return Err(format!(
                    "{}: entry {i}: user and tenant must not be empty",
                    file.display()
                ));
            }
            match tenants.get(&e.user) {
                Some(t) if *t != e.tenant => {
                    return Err(format!(
                        "{}: entry {i}: user {} is listed with another tenant (user names must be unique)",
                        file.display(),
                        e.user
                    ));
                }
                Some(_) => {}
                None => {
                    tenants.insert(e.user.clone(), e.tenant.clone());
                }
            }
            let identity = Identity {
                user: Arc::from(e.user),
                tenant: e.tenant.map(Arc::from),
            };
            if by_hash.insert(hash, identity).is_some() {
                return Err(format!(
                    "{}: entry {i}: the same token hash is listed twice",
                    file.display()
                ));
            }
        }
        Ok(Identities {
            by_hash,
            config: IdentitiesConfig {
                tokens_file: file.to_owned(),
                unowned: Unowned::Deny,
                binding_ttl: std::time::Duration::from_secs(3600),
                policies: Vec::new(),
            },
        })
    }

    /// The caller presenting `token`, if the file lists its hash.
    pub fn by_token(&self, token: &str) -> Option<&Identity> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let hash: [u8; 32] = digest.as_ref().try_into().ok()?;
        self.by_hash.get(&hash)
    }

    /// May `who` call `method`? `connect` always may (it is how a caller says who it is).
    pub fn allows(&self, who: &Identity, method: &str) -> bool {
        if method == "connect" {
            return true;
        }
        let tenant = who.tenant.as_deref();
        self.config
            .policies
            .iter()
            .filter(|p| p.who.names(&who.user, tenant))
            .all(|p| {
                !p.deny.iter().any(|g| g.matches(method))
                    && p.allow
                        .as_ref()
                        .is_none_or(|allow| allow.iter().any(|g| g.matches(method)))
            })
    }

    /// May `who` touch a session whose owner is `owner` (`None`: not known)?
    pub fn may_touch(&self, who: &Identity, session: &str, owner: Option<&str>) -> bool {
        match owner {
            Some(owner) => owner == &*who.user,
            None => match &self.config.unowned {
                Unowned::Deny => false,
                Unowned::Allow => true,
                Unowned::Prefix(_) => self
                    .config
                    .unowned
                    .prefix_for(&who.user, who.tenant.as_deref())
                    .is_some_and(|p| session.starts_with(&p)),
            },
        }
    }
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.trim().as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// The identity a verified client certificate names: its first SAN URI, else its first SAN DNS
/// name, else its subject's common name.
pub fn cert_name(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    if let Some(uri) = cert.valid_uri_names().next() {
        return Some(uri.to_owned());
    }
    if let Some(dns) = cert.valid_dns_names().next() {
        return Some(dns.to_owned());
    }
    common_name(cert.subject())
}

/// The CN of a DER-encoded X.501 Name (its RDN sequence without the outer tag): the value after
/// the attribute type OID 2.5.4.3, as a UTF8/Printable/IA5 string.
fn common_name(subject: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    let at = subject.windows(CN_OID.len()).position(|w| w == CN_OID)?;
    let rest = subject.get(at + CN_OID.len()..)?;
    let (&tag, rest) = rest.split_first()?;
    if !matches!(tag, 0x0c | 0x13 | 0x16) {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    // Short-form lengths only: a CN is short.
    if len >= 0x80 {
        return None;
    }
    let value = rest.get(..usize::from(len))?;
    String::from_utf8(value.to_vec()).ok()
}

/// The identity a client certificate gives on a listener: the certificate's name, as a user of
/// no tenant (tokens carry tenants; certificates carry names).
pub fn from_cert(cert: &CertificateDer<'_>) -> Option<Identity> {
    cert_name(cert).map(|name| Identity {
        user: Arc::from(name),
        tenant: None,
    })
}

/// The hex SHA-256 of a token, as `tokens.yaml` wants it (`sessiongate hash-token`).
pub fn token_hash(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Glob, Policy, Who};

    fn ids(text: &str) -> Result<Identities, String> {
        Identities::parse(text, Path::new("tokens.yaml"))
    }

    #[test]
    fn tokens_are_matched_by_hash_only() {
        let text = format!(
            "- {{ sha256: {}, user: alice, tenant: acme }}\n- {{ sha256: {}, user: bob }}\n",
            token_hash("alice-secret"),
            token_hash("bob-secret").to_uppercase()
        );
        let ids = ids(&text).unwrap();
        let alice = ids.by_token("alice-secret").unwrap();
        assert_eq!(&*alice.user, "alice");
        assert_eq!(alice.tenant.as_deref(), Some("acme"));
        assert_eq!(alice.key(), "acme/alice");
        assert_eq!(&*ids.by_token("bob-secret").unwrap().user, "bob");
        assert!(ids.by_token("alice-secret ").is_none());
        assert!(ids.by_token("").is_none());
    }

    #[test]
    fn bad_files_name_the_entry() {
        for (text, want) in [
            (
                "- { sha256: abc, user: a }",
                "entry 0 (user a): sha256 must be 64 hex digits",
            ),
            ("- { sha256: zz, user: a }", "sha256 must be"),
            ("- { user: a }", "missing field"),
            ("- { sha256: x, user: a, role: admin }", "unknown field"),
        ] {
            let err = ids(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        let twice = format!(
            "- {{ sha256: {h}, user: a }}\n- {{ sha256: {h}, user: b }}\n",
            h = token_hash("t")
        );
        assert!(ids(&twice).unwrap_err().contains("listed twice"));
        assert!(ids("").unwrap().by_token("t").is_none());
    }

    #[test]
    fn policies_allow_and_deny_by_glob() {
        let mut ids = ids("").unwrap();
        ids.config.policies = vec![
            Policy {
                who: Who::Tenant("acme".into()),
                allow: None,
                deny: vec![
                    Glob("session.shell.*".into()),
                    Glob("sessions.bulkDelete".into()),
                ],
            },
            Policy {
                who: Who::User("bob".into()),
                allow: Some(vec![Glob("session.*".into()), Glob("ping".into())]),
                deny: vec![],
            },
        ];
        let alice = Identity {
            user: Arc::from("alice"),
            tenant: Some(Arc::from("acme")),
        };
        let bob = Identity {
            user: Arc::from("bob"),
            tenant: None,
        };
        for (who, method, want) in [
            (&alice, "session.shell.exec", false),
            (&alice, "sessions.bulkDelete", false),
            (&alice, "session.send", true),
            (&alice, "connect", true),
            (&bob, "session.send", true),
            (&bob, "ping", true),
            (&bob, "sessions.list", false),
            (&bob, "connect", true),
        ] {
            assert_eq!(ids.allows(who, method), want, "{} {method}", who.user);
        }
    }

    #[test]
    fn unowned_sessions_follow_the_rule() {
        let mut ids = ids("").unwrap();
        let alice = Identity {
            user: Arc::from("alice"),
            tenant: None,
        };
        assert!(ids.may_touch(&alice, "s", Some("alice")));
        assert!(!ids.may_touch(&alice, "s", Some("bob")));
        assert!(!ids.may_touch(&alice, "alice-s", None), "deny by default");
        ids.config.unowned = Unowned::Allow;
        assert!(ids.may_touch(&alice, "s", None));
        assert!(
            !ids.may_touch(&alice, "s", Some("bob")),
            "an owner always wins"
        );
        ids.config.unowned = Unowned::Prefix("{user}-".into());
        assert!(ids.may_touch(&alice, "alice-chat", None));
        assert!(!ids.may_touch(&alice, "bob-chat", None));
    }

    #[test]
    fn certificate_names() {
        let mut params = rcgen::CertificateParams::new(vec!["client.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cn-name");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(cert_name(cert.der()).as_deref(), Some("client.example"));

        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "only-cn");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(cert_name(cert.der()).as_deref(), Some("only-cn"));

        let mut params = rcgen::CertificateParams::new(vec!["x.example".into()]).unwrap();
        params.subject_alt_names.insert(
            0,
            rcgen::SanType::URI(rcgen::Ia5String::try_from("spiffe://acme/alice").unwrap()),
        );
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            cert_name(cert.der()).as_deref(),
            Some("spiffe://acme/alice")
        );
    }
}
