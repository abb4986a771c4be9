//! Bearer-token authentication: the token file, the constant-time look-up of a presented token,
//! and the interceptor that turns `authorization: Bearer TOKEN` into a [`Principal`].
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time against every entry;
//! no token, digest or `authorization` header is ever logged or put in a status message.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Shortest token accepted in a token file (bytes).
pub const MIN_TOKEN_LEN: usize = 16;

/// The authenticated caller of a request: the name of its token. Records (plans, anatomies) are
/// owned by it. Absent from a request's extensions when the server runs without authentication.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(pub Arc<str>);

impl Principal {
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// The token file, digested.
#[derive(Clone)]
pub struct Tokens {
    /// (SHA-256 of the token, principal)
    entries: Vec<([u8; 32], Principal)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: digests of short tokens could be brute-forced.
        let names: Vec<&str> = self.entries.iter().map(|(_, p)| p.name()).collect();
        f.debug_struct("Tokens")
            .field("principals", &names)
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Why a token file was refused; names the line, never the token.
#[derive(Debug, thiserror::Error)]
#[error("{file}: line {line}: {reason}")]
pub struct TokenFileError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

impl Tokens {
    /// Read a token file (see [`Tokens::parse`]).
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokenFileError {
            file: path.display().to_string(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// One token a line: `NAME:TOKEN` or `TOKEN`; blank lines and lines starting with `#` are
    /// skipped. A name is split off at the first `:` and has no white space; a token without a
    /// name is named `token-` and the first 12 hex digits of its SHA-256. Tokens are at least
    /// [`MIN_TOKEN_LEN`] visible ASCII characters. Several tokens may share a name (rotation);
    /// one token may not have two names.
    pub fn parse(text: &str, file: &str) -> Result<Self, TokenFileError> {
        let mut entries: Vec<([u8; 32], Principal)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: &str| TokenFileError {
                file: file.to_owned(),
                line: i + 1,
                reason: reason.to_owned(),
            };
            let (name, token) = match line.split_once(':') {
                Some((name, token)) => (Some(name.trim()), token.trim()),
                None => (None, line),
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(err(&format!(
                    "the token is shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(
                    "the token has a character other than visible ASCII (no spaces)",
                ));
            }
            let d = digest(token.as_bytes());
            let name = match name {
                Some(n) if n.is_empty() || n.chars().any(char::is_whitespace) => {
                    return Err(err("the name before ':' is empty or has white space"))
                }
                Some(n) => n.to_owned(),
                None => format!("token-{}", &hex::encode(d)[..12]),
            };
            if entries.iter().any(|(e, p)| *e == d && p.name() != name) {
                return Err(err("this token is already listed under another name"));
            }
            entries.push((d, Principal(name.into())));
        }
        if entries.is_empty() {
            return Err(TokenFileError {
                file: file.to_owned(),
                line: 0,
                reason: "no token in the file".into(),
            });
        }
        Ok(Tokens { entries })
    }

    /// The principal of a presented token. Every entry is compared (in constant time), so the
    /// time taken does not tell which entry, or how much of one, matched.
    pub fn principal_of(&self, presented: &[u8]) -> Option<Principal> {
        let d = digest(presented);
        let mut found: Option<&Principal> = None;
        for (e, p) in &self.entries {
            if bool::from(e.ct_eq(&d)) {
                found = Some(p);
            }
        }
        found.cloned()
    }

    pub fn principals(&self) -> impl Iterator<Item = &Principal> {
        self.entries.iter().map(|(_, p)| p)
    }
}

/// The bearer token of an `authorization` header value (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() > SCHEME.len() && value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        Some(value[SCHEME.len()..].trim_ascii())
    } else {
        None
    }
}

/// Checks the bearer token of every call of the services it wraps and puts the caller's
/// [`Principal`] in the request's extensions. Without tokens it lets every call through.
/// Calls it refuses are audited when it has an audit log and the call is tagged with its
/// method ([`crate::audit::TagMethod`]).
#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: Option<Arc<Tokens>>,
    audit: crate::audit::Auditor,
}

impl Authenticator {
    pub fn new(tokens: Option<Tokens>) -> Self {
        Authenticator {
            tokens: tokens.map(Arc::new),
            audit: None,
        }
    }

    /// Audit the calls it refuses in `audit`.
    pub fn with_audit(mut self, audit: crate::audit::Auditor) -> Self {
        self.audit = audit;
        self
    }

    pub fn enabled(&self) -> bool {
        self.tokens.is_some()
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(request);
        };
        let principal = request
            .metadata()
            .get("authorization")
            .and_then(|v| bearer(v.as_bytes()))
            .and_then(|t| tokens.principal_of(t));
        match principal {
            Some(p) => {
                request.extensions_mut().insert(p);
                Ok(request)
            }
            None => {
                tracing::info!(
                    remote = ?request.remote_addr(),
                    "refused: missing or unknown bearer token"
                );
                let method = request.extensions().get::<crate::audit::CalledMethod>();
                if let (Some(audit), Some(method)) = (&self.audit, method) {
                    audit.record(&crate::audit::AuditEntry {
                        principal: None,
                        method: &method.0,
                        ids: &crate::audit::AuditIds::default(),
                        outcome: tonic::Code::Unauthenticated,
                        duration: std::time::Duration::ZERO,
                    });
                }
                Err(Status::unauthenticated(
                    "a valid bearer token is required (authorization: Bearer TOKEN)",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_and_unnamed_tokens_and_skips_comments() {
        let t = Tokens::parse(
            "# ops\n\nalice:aaaaaaaaaaaaaaaa1\n bbbbbbbbbbbbbbbb2 \nalice:cccccccccccccccc3\n",
            "f",
        )
        .unwrap();
        assert_eq!(
            t.principal_of(b"aaaaaaaaaaaaaaaa1").unwrap().name(),
            "alice"
        );
        assert_eq!(
            t.principal_of(b"cccccccccccccccc3").unwrap().name(),
            "alice"
        );
        assert!(t
            .principal_of(b"bbbbbbbbbbbbbbbb2")
            .unwrap()
            .name()
            .starts_with("token-"));
        assert!(t.principal_of(b"aaaaaaaaaaaaaaaa").is_none());
        assert!(t.principal_of(b"").is_none());
    }

    #[test]
    fn refusals_name_the_line_not_the_token() {
        for (text, line) in [
            ("short", 1),
            ("# c\nname:has space in token..", 2),
            ("a b:aaaaaaaaaaaaaaaa1", 1),
            ("a:aaaaaaaaaaaaaaaa1\nb:aaaaaaaaaaaaaaaa1", 2),
            ("", 0),
        ] {
            let e = Tokens::parse(text, "f").unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(!e.to_string().contains("aaaa"), "{e}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
    }
}
