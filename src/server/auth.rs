//! Authentication (off unless a key is configured): a bearer JWT in the `authorization`
//! metadata of every JobLedger call, verified by an interceptor that puts the token's
//! org into the request's extensions; handlers then scope the request to that org.
//! Health and reflection are not intercepted. Tokens are never logged.

use std::{collections::HashMap, path::Path, sync::Arc};

use anyhow::Context;
use jsonwebtoken::{
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm},
    Algorithm, DecodingKey, Validation,
};
use tonic::{service::Interceptor, Request, Status};
use uuid::Uuid;

use super::config::AuthConfig;
use crate::proto;

/// Who a verified token speaks for, in a request's extensions: an org, and whether it is
/// a worker's token (the configured worker scope), which may act in every org and claim
/// from all of them. A worker's token need not name an org.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub org: Option<Uuid>,
    pub worker: bool,
}

/// A key and the one algorithm it verifies.
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    secret: Option<Key>,
    public_key: Option<Key>,
    jwks: HashMap<String, Key>,
    issuer: Option<String>,
    audience: Option<String>,
    org_claim: Vec<String>,
    worker_scope: String,
    leeway_secs: u64,
}

/// Why a call's credentials were refused (`server::status` makes the status).
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// UNAUTHENTICATED: no usable token.
    Refused(Refusal),
    /// PERMISSION_DENIED: the request (or an entry of a batch: the list's field name
    /// and the entry's index) names another org.
    OrgMismatch {
        named: Uuid,
        token_org: Uuid,
        entry: Option<(&'static str, usize)>,
    },
    /// PERMISSION_DENIED: a claim of every org with a token that is not a worker's.
    WorkerScopeRequired,
}

/// Why a token was refused (the ErrorInfo reason and a message that never quotes it).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
    }
}

impl Verifier {
    /// The verifier of `config`. Unreadable or unusable key files and a short secret are
    /// start-up errors.
    pub fn new(config: &AuthConfig) -> anyhow::Result<Verifier> {
        let secret = match &config.hs256_secret {
            Some(s) if s.expose().len() < 32 => {
                anyhow::bail!("--auth-hs256-secret must be at least 32 bytes (256 bits) long")
            }
            Some(s) => Some(Key {
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(s.expose().as_bytes()),
            }),
            None => None,
        };
        let public_key = config
            .public_key_file
            .as_deref()
            .map(read_public_key)
            .transpose()?;
        let jwks = config
            .jwks_file
            .as_deref()
            .map(read_jwks)
            .transpose()?
            .unwrap_or_default();
        let org_claim: Vec<String> = config.org_claim.split('.').map(str::to_owned).collect();
        if org_claim.iter().any(String::is_empty) {
            anyhow::bail!(
                "--auth-org-claim {:?} is not a claim name or dotted path",
                config.org_claim
            );
        }
        Ok(Verifier {
            secret,
            public_key,
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            org_claim,
            worker_scope: config.worker_scope.clone(),
            leeway_secs: config.leeway.as_secs(),
        })
    }

    /// The org a bearer token speaks for, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        // `alg: none` and unknown algorithms fail here: the header does not parse.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refuse("INVALID_TOKEN", "the bearer token is not a valid JWT"))?;
        let key = self.key_for(header.alg, header.kid.as_deref())?;
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &self.validation(key))
                .map_err(|e| refusal_of(e.kind()))?;
        let worker = has_scope(&data.claims, &self.worker_scope);
        let claim = self.org_claim.join(".");
        let org = self
            .org_claim
            .iter()
            .try_fold(&data.claims, |value, name| value.get(name))
            .and_then(|v| v.as_str());
        let org = match org {
            Some(org) => Some(Uuid::parse_str(org).map_err(|_| {
                refuse(
                    "ORG_CLAIM_MISSING",
                    format!("the bearer token's claim `{claim}` is not an org id (a UUID)"),
                )
            })?),
            None if worker => None,
            None => {
                return Err(refuse(
                    "ORG_CLAIM_MISSING",
                    format!("the bearer token has no string claim `{claim}` naming an org"),
                ))
            }
        };
        Ok(Caller { org, worker })
    }

    /// What a token verified by `key` must satisfy: `exp` (and `nbf` if present) within
    /// the leeway, and the configured `iss` and `aud`.
    fn validation(&self, key: &Key) -> Validation {
        let mut validation = Validation::new(key.algorithm);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.leeway_secs;
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".to_owned());
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        validation
    }

    /// The key for a token's algorithm: HS256 the secret; RS256/ES256 the JWKS key of
    /// the token's `kid`, else the public key file, else a key set's only key.
    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<&Key, Refusal> {
        let key = match alg {
            Algorithm::HS256 => self.secret.as_ref(),
            _ => kid
                .and_then(|kid| self.jwks.get(kid))
                .or(self.public_key.as_ref())
                .or_else(|| match (kid, self.jwks.len()) {
                    (None, 1) => self.jwks.values().next(),
                    _ => None,
                }),
        };
        key.filter(|k| k.algorithm == alg).ok_or_else(|| {
            refuse(
                "INVALID_TOKEN",
                format!("no configured key verifies the bearer token (alg {alg:?})"),
            )
        })
    }
}

/// Whether the token's `scope` (space-separated, OAuth 2) or `scp` (a list or a string)
/// grants `wanted`.
fn has_scope(claims: &serde_json::Value, wanted: &str) -> bool {
    let words = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    ["scope", "scp"]
        .iter()
        .filter_map(|name| claims.get(name))
        .any(|v| words(v).iter().any(|w| w == wanted))
}

/// Why a token that decoded did not verify, in words that never quote it.
fn refusal_of(error: &ErrorKind) -> Refusal {
    match error {
        ErrorKind::ExpiredSignature => refuse("TOKEN_EXPIRED", "the bearer token expired"),
        ErrorKind::ImmatureSignature => {
            refuse("INVALID_TOKEN", "the bearer token is not valid yet (nbf)")
        }
        ErrorKind::InvalidIssuer => {
            refuse("INVALID_TOKEN", "the bearer token's issuer is not accepted")
        }
        ErrorKind::InvalidAudience => refuse(
            "INVALID_TOKEN",
            "the bearer token's audience is not accepted",
        ),
        ErrorKind::MissingRequiredClaim(claim) => refuse(
            "INVALID_TOKEN",
            format!("the bearer token has no valid `{claim}` claim"),
        ),
        ErrorKind::InvalidSignature => refuse(
            "INVALID_TOKEN",
            "the bearer token's signature does not verify",
        ),
        _ => refuse("INVALID_TOKEN", "the bearer token is not valid"),
    }
}

fn read_public_key(path: &Path) -> anyhow::Result<Key> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading --auth-public-key-file {}", path.display()))?;
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok(Key {
            algorithm: Algorithm::ES256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key {
            algorithm: Algorithm::RS256,
            key,
        });
    }
    anyhow::bail!(
        "--auth-public-key-file {}: not a PEM EC (P-256) or RSA public key",
        path.display()
    )
}

/// The usable keys of a JWKS file by `kid`: EC P-256 (ES256) and RSA (RS256) keys with
/// a `kid`. Others (no kid, other algorithms, symmetric keys) are skipped with a warning.
fn read_jwks(path: &Path) -> anyhow::Result<HashMap<String, Key>> {
    let text = std::fs::read(path)
        .with_context(|| format!("reading --auth-jwks-file {}", path.display()))?;
    let set: JwkSet = serde_json::from_slice(&text)
        .with_context(|| format!("--auth-jwks-file {} is not a JWK set", path.display()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                if p.curve == EllipticCurve::P256 =>
            {
                Some(Algorithm::ES256)
            }
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => {
                Some(Algorithm::RS256)
            }
            _ => None,
        };
        match (kid, algorithm) {
            (Some(kid), Some(algorithm)) => {
                let key = DecodingKey::from_jwk(jwk)
                    .with_context(|| format!("--auth-jwks-file {}: key {kid:?}", path.display()))?;
                keys.insert(kid, Key { algorithm, key });
            }
            (kid, _) => tracing::warn!(
                ?kid,
                "--auth-jwks-file: skipping a key without kid or not ES256 (P-256) / RS256"
            ),
        }
    }
    if keys.is_empty() {
        anyhow::bail!(
            "--auth-jwks-file {} holds no usable key (ES256/P-256 or RS256, with a kid)",
            path.display()
        );
    }
    Ok(keys)
}

/// The interceptor of the JobLedger service: without a verifier every call passes.
#[derive(Clone)]
pub struct AuthInterceptor(Option<Arc<Verifier>>);

impl AuthInterceptor {
    pub fn new(verifier: Option<Verifier>) -> Self {
        AuthInterceptor(verifier.map(Arc::new))
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(verifier) = &self.0 else {
            return Ok(request);
        };
        let token = bearer_token(&request).map_err(AuthError::Refused)?;
        let caller = verifier.verify(token).map_err(|refusal| {
            tracing::debug!(reason = refusal.reason, "call refused: bad credentials");
            AuthError::Refused(refusal)
        })?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

fn bearer_token<T>(request: &Request<T>) -> Result<&str, Refusal> {
    let missing = || {
        refuse(
            "MISSING_CREDENTIALS",
            "this call needs `authorization: Bearer <JWT>` metadata",
        )
    };
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| refuse("INVALID_TOKEN", "the authorization metadata is not text"))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

/// Requests that name an org.
pub trait OrgScoped {
    fn org_id_mut(&mut self) -> &mut String;
}

macro_rules! org_scoped {
    ($($t:ty),*) => {$(
        impl OrgScoped for $t {
            fn org_id_mut(&mut self) -> &mut String {
                &mut self.org_id
            }
        }
    )*};
}
org_scoped!(
    proto::CreateJobRequest,
    proto::GetJobRequest,
    proto::TransitionJobRequest,
    proto::StreamEventsRequest,
    proto::ClaimJobsRequest,
    proto::HeartbeatJobRequest,
    proto::UpdateQueueRequest,
    proto::ListQueuesRequest
);

/// Who a request authenticated by a token speaks for; `None` when authentication is off.
pub fn caller<T>(request: &Request<T>) -> Option<Caller> {
    request.extensions().get::<Caller>().copied()
}

/// Scopes `org_id` to the caller: "" becomes the token's org; another org is
/// PERMISSION_DENIED, except for a worker's token. A malformed value is left for
/// validation (INVALID_ARGUMENT).
pub fn scope_org(caller: Option<Caller>, org_id: &mut String) -> Result<(), AuthError> {
    let Some(caller) = caller else {
        return Ok(());
    };
    if org_id.is_empty() {
        if let Some(org) = caller.org {
            *org_id = org.to_string();
        }
        return Ok(());
    }
    match Uuid::parse_str(org_id) {
        Ok(named) if Some(named) != caller.org && !caller.worker => Err(AuthError::OrgMismatch {
            named,
            token_org: caller.org.unwrap_or_default(),
            entry: None,
        }),
        _ => Ok(()),
    }
}

/// Scopes a request's `org_id` to its caller (see `scope_org`).
pub fn scope<T: OrgScoped>(request: &mut Request<T>) -> Result<(), AuthError> {
    let caller = caller(request);
    scope_org(caller, request.get_mut().org_id_mut())
}

/// Scopes every entry of a CreateJobs (or TransitionJobs) call, the entries of request
/// field `field`: one entry naming another org refuses the whole call (nothing is
/// written).
pub fn scope_entries<T: OrgScoped>(
    caller: Option<Caller>,
    field: &'static str,
    entries: &mut [T],
) -> Result<(), AuthError> {
    for (i, entry) in entries.iter_mut().enumerate() {
        let org_id = entry.org_id_mut();
        scope_org(caller, org_id).map_err(|_| AuthError::OrgMismatch {
            named: Uuid::parse_str(org_id).unwrap_or_default(),
            token_org: caller.and_then(|c| c.org).unwrap_or_default(),
            entry: Some((field, i)),
        })?;
    }
    Ok(())
}

/// A claim of every org needs a worker's token when authentication is on.
pub fn may_claim_all_orgs(caller: Option<Caller>) -> Result<(), AuthError> {
    match caller {
        Some(Caller { worker: false, .. }) => Err(AuthError::WorkerScopeRequired),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_org_becomes_the_tokens_and_another_is_denied() {
        let a = Uuid::new_v4();
        let mut org = String::new();
        let caller = Some(Caller {
            org: Some(a),
            worker: false,
        });
        scope_org(caller, &mut org).unwrap();
        assert_eq!(org, a.to_string());
        let mut same = a.to_string().to_uppercase();
        scope_org(caller, &mut same).unwrap();
        let mut other = Uuid::new_v4().to_string();
        let caller = Some(Caller {
            org: Some(a),
            worker: false,
        });
        let denied = Status::from(scope_org(caller, &mut other).unwrap_err());
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let mut untouched = String::new();
        scope_org(None, &mut untouched).unwrap();
        assert_eq!(untouched, "");
    }

    #[test]
    fn the_org_claim_is_a_dotted_path() {
        let mut config = AuthConfig::hs256("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t");
        config.org_claim = "app_metadata.org_id".to_owned();
        let verifier = Verifier::new(&config).unwrap();
        assert_eq!(verifier.org_claim, ["app_metadata", "org_id"]);
        config.org_claim = "app_metadata.".to_owned();
        assert!(Verifier::new(&config).is_err());
    }
}
