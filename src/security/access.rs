//! Who made a request and what they may do: the interceptors that establish the caller (a token on the
//! public plane, a certificate on the node-to-node plane) and the one check every handler makes.

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use fjord_proto::auth::AUTHORIZATION_KEY;
use fjord_proto::auth::BEARER_PREFIX;
use fjord_query::StreamScope;
use fjord_raft::NodeId;
use fjord_raft::network::PeerNode;
use tonic::Code;
use tonic::Request;
use tonic::Status;
use tonic::service::Interceptor;

use crate::pb::status;
use crate::security::certs::peer_node;
use crate::security::tokens::Claims;
use crate::security::tokens::Operation;
use crate::security::tokens::TokenKey;

/// Who made a request, as an interceptor established it (a request extension).
#[derive(Debug, Clone)]
pub enum Caller {
    /// A client, with the claims of its verified token.
    Client(Arc<Claims>),
    /// Another node of the region, by its verified certificate: a request it forwarded after checking it.
    Peer(NodeId),
}

/// Checks that the request's caller may do `operation` on `stream` (`None`: on every stream). A request
/// no interceptor vouched for is refused.
pub fn authorize<T>(request: &Request<T>, operation: Operation, stream: Option<&str>) -> Result<(), Status> {
    match request.extensions().get::<Caller>() {
        Some(Caller::Peer(_)) => Ok(()),
        Some(Caller::Client(claims)) if claims.allows(operation, stream) => Ok(()),
        Some(Caller::Client(claims)) => Err(status(
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            match stream {
                Some(stream) => {
                    format!("the token of {:?} does not grant {operation} on stream {stream:?}", claims.sub)
                }
                None => format!("the token of {:?} does not grant {operation} on every stream", claims.sub),
            },
        )),
        None => Err(unauthenticated("no caller was established for this request".to_owned())),
    }
}

/// The streams the request's caller may query: those its token grants `query` on (a node forwarding a
/// query: every stream). A token without a grant of `query` is refused.
pub fn authorize_query<T>(request: &Request<T>) -> Result<StreamScope, Status> {
    match request.extensions().get::<Caller>() {
        Some(Caller::Peer(_)) => Ok(StreamScope::all()),
        Some(Caller::Client(claims)) => query_scope(claims)
            .ok_or_else(|| status(Code::PermissionDenied, "PERMISSION_DENIED", no_query_grant(claims))),
        None => Err(unauthenticated("no caller was established for this request".to_owned())),
    }
}

/// The streams `claims` may query, or `None` when they grant `query` on none.
pub fn query_scope(claims: &Claims) -> Option<StreamScope> {
    let prefixes = claims.prefixes_for(Operation::Query);
    (!prefixes.is_empty()).then(|| StreamScope::prefixes(prefixes))
}

/// Why a token without a grant of `query` is refused.
pub fn no_query_grant(claims: &Claims) -> String {
    format!("the token of {:?} does not grant query on any stream", claims.sub)
}

/// Whether the request's caller may define and drop views: its token grants `admin` (views are the
/// region's, and every node folds them), or it is a node forwarding a request.
pub fn may_define_views<T>(request: &Request<T>) -> bool {
    match request.extensions().get::<Caller>() {
        Some(Caller::Peer(_)) => true,
        Some(Caller::Client(claims)) => claims.allows(Operation::Admin, None),
        None => false,
    }
}

/// Whether the request came from another node of the region (over the node plane's mutual TLS).
pub fn is_peer<T>(request: &Request<T>) -> bool {
    matches!(request.extensions().get::<Caller>(), Some(Caller::Peer(_)))
}

fn unauthenticated(message: String) -> Status {
    status(Code::Unauthenticated, "UNAUTHENTICATED", message)
}

/// The public plane's interceptor: the request must carry a token signed by the region's key and not
/// expired, as `authorization: Bearer <token>`, or as the password of `authorization: Basic
/// <base64(user:token)>` (what Flight SQL clients send to log in; any user name), as over Postgres.
#[derive(Clone)]
pub struct TokenAuthenticator {
    key: Arc<TokenKey>,
}

impl TokenAuthenticator {
    /// Verifies tokens with `key`.
    pub fn new(key: Arc<TokenKey>) -> Self {
        TokenAuthenticator { key }
    }

    /// The key tokens are checked with.
    pub fn key(&self) -> Arc<TokenKey> {
        self.key.clone()
    }
}

impl Interceptor for TokenAuthenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get(AUTHORIZATION_KEY)
            .ok_or_else(|| unauthenticated("no token: send `authorization: Bearer <token>`".to_owned()))?;
        let token = header.to_str().ok().and_then(token_of).ok_or_else(|| {
            unauthenticated("the authorization header is not `Bearer <token>` or `Basic <user:token>`".to_owned())
        })?;
        let claims = self.key.verify(&token, SystemTime::now()).map_err(|e| unauthenticated(e.to_string()))?;
        request.extensions_mut().insert(Caller::Client(Arc::new(claims)));
        Ok(request)
    }
}

/// The token an authorization header carries: `Bearer <token>`, or the password of `Basic <base64(user:
/// password)>` (padded or not).
pub fn token_of(header: &str) -> Option<String> {
    if let Some(token) = header.strip_prefix(BEARER_PREFIX) {
        return Some(token.to_owned());
    }
    let encoded = header.strip_prefix(BASIC_PREFIX)?.trim().trim_end_matches('=');
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded).ok()?;
    let (_user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(password.to_owned())
}

/// What precedes the credentials of HTTP Basic authentication.
const BASIC_PREFIX: &str = "Basic ";

/// The node-to-node plane's interceptor: TLS verified the peer's certificate against the region's CA; its
/// name must be a node of this region, which becomes the request's caller (for the Raft transport too).
#[derive(Clone)]
pub struct PeerAuthenticator {
    region: Arc<str>,
}

impl PeerAuthenticator {
    /// Accepts nodes of `region`.
    pub fn new(region: &str) -> Self {
        PeerAuthenticator { region: region.into() }
    }
}

impl Interceptor for PeerAuthenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let chain = request
            .peer_certs()
            .ok_or_else(|| unauthenticated("node-to-node requests need a node certificate".to_owned()))?;
        let node = peer_node(&chain, &self.region).ok_or_else(|| {
            status(
                Code::PermissionDenied,
                "PERMISSION_DENIED",
                format!("the peer's certificate names no node of region {}", self.region),
            )
        })?;
        request.extensions_mut().insert(Caller::Peer(node));
        request.extensions_mut().insert(PeerNode(node));
        Ok(request)
    }
}
