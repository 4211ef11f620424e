//! How a client presents its bearer token: `authorization: Bearer <token>` in every request's metadata.

use tonic::Request;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;

/// The metadata key that carries the token.
pub const AUTHORIZATION_KEY: &str = "authorization";
/// What precedes the token in [`AUTHORIZATION_KEY`].
pub const BEARER_PREFIX: &str = "Bearer ";

/// A client-side interceptor that adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct BearerToken {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl BearerToken {
    /// The interceptor for `token`; an error if the token is not printable ASCII.
    pub fn new(token: &str) -> Result<BearerToken, Status> {
        let header = format!("{BEARER_PREFIX}{}", token.trim())
            .parse()
            .map_err(|_| Status::invalid_argument("the token is not printable ASCII"))?;
        Ok(BearerToken { header })
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(AUTHORIZATION_KEY, self.header.clone());
        Ok(request)
    }
}
