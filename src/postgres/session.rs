//! A Postgres session: the login (the password is a token of the region; any user name) and what the
//! session sets — `SET fjord.wait_for = '<consistency token>'` for read-your-writes, the settings drivers
//! send on connecting, and transactions, which for queries that only read change nothing.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use async_trait::async_trait;
use fjord_query::ConsistencyToken;
use fjord_query::QueryError;
use fjord_query::StreamScope;
use futures::Sink;
use futures::SinkExt;
use pgwire::api::ClientInfo;
use pgwire::api::PgWireConnectionState;
use pgwire::api::auth::DefaultServerParameterProvider;
use pgwire::api::auth::StartupHandler;
use pgwire::api::auth::finish_authentication;
use pgwire::api::auth::protocol_negotiation;
use pgwire::api::auth::save_startup_parameters_to_metadata;
use pgwire::api::results::Response;
use pgwire::api::results::Tag;
use pgwire::error::ErrorInfo;
use pgwire::error::PgWireError;
use pgwire::error::PgWireResult;
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::PgWireFrontendMessage;
use pgwire::messages::startup::Authentication;

use crate::security::access::no_query_grant;
use crate::security::access::query_scope;
use crate::security::tokens::Operation;
use crate::security::tokens::TokenKey;

/// The setting that makes a session's queries wait for a consistency token.
pub(super) const WAIT_FOR_SETTING: &str = "fjord.wait_for";
/// The setting that refuses answers from views staler than it, in milliseconds.
pub(super) const MAX_STALENESS_SETTING: &str = "fjord.max_staleness";

/// Settings drivers and tools send when they connect; accepted, and without effect on an answer.
const CLIENT_SETTINGS: [&str; 14] = [
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "extra_float_digits",
    "intervalstyle",
    "lc_messages",
    "lock_timeout",
    "search_path",
    "standard_conforming_strings",
    "statement_timeout",
    "timezone",
    "idle_in_transaction_session_timeout",
];

/// Who is logged in on a connection and what the session has set.
#[derive(Debug)]
pub(super) struct Session {
    /// The streams the token lets its queries see.
    pub(super) scope: StreamScope,
    /// When the token expires: the session serves nothing after it, as a gRPC call with it would not.
    expires: Option<SystemTime>,
    /// Whether the token may define and drop views (it grants `admin`).
    pub(super) may_define_views: bool,
    /// What `SET fjord.wait_for` last set.
    pub(super) wait_for: std::sync::Mutex<Option<ConsistencyToken>>,
    /// What `SET fjord.max_staleness` last set.
    pub(super) max_staleness: std::sync::Mutex<Option<Duration>>,
}

impl Session {
    /// The session of `client`: there is one once it has logged in, and no query runs before it or after
    /// its token expired.
    pub(super) fn of(client: &impl ClientInfo) -> PgWireResult<Arc<Session>> {
        let refused = |message: &str| {
            PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".to_owned(), "28000".to_owned(), message.to_owned())))
        };
        let session = client.session_extensions().get::<Session>().ok_or_else(|| refused("not logged in"))?;
        if session.expires.is_some_and(|expires| expires <= SystemTime::now()) {
            return Err(refused("the token this session logged in with has expired; connect again with a new one"));
        }
        Ok(session)
    }

    /// The consistency token the session's queries wait for, if it set one.
    pub(super) fn wait_for(&self) -> Option<ConsistencyToken> {
        self.wait_for.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The most a view the session's queries read may lag the log, if it set one.
    pub(super) fn max_staleness(&self) -> Option<Duration> {
        *self.max_staleness.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Logs a client in with its password as a token of the region.
pub(super) struct TokenLogin {
    key: Arc<TokenKey>,
    parameters: DefaultServerParameterProvider,
}

impl TokenLogin {
    /// Logins checked against `key`.
    pub(super) fn new(key: Arc<TokenKey>) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("16.6 (Fjord {})", env!("CARGO_PKG_VERSION"));
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        TokenLogin { key, parameters }
    }
}

#[async_trait]
impl StartupHandler for TokenLogin {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let token = password.into_password()?.password;
                let refused = |message: String| {
                    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".to_owned(), "28P01".to_owned(), message)))
                };
                let claims = self
                    .key
                    .verify(token.trim(), SystemTime::now())
                    .map_err(|error| refused(format!("the password must be a token of this region: {error}")))?;
                let scope = query_scope(&claims).ok_or_else(|| refused(no_query_grant(&claims)))?;
                let expires = claims.exp.map(|secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs));
                let (wait_for, max_staleness) = (std::sync::Mutex::new(None), std::sync::Mutex::new(None));
                let may_define_views = claims.allows(Operation::Admin, None);
                let session = Session { scope, expires, may_define_views, wait_for, max_staleness };
                client.session_extensions().insert(session);
                let key = pgwire::messages::startup::SecretKey::I32(next_backend_id());
                client.set_pid_and_secret_key(next_backend_id(), key);
                tracing::debug!(subject = %claims.sub, "postgres: logged in");
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The next of the numbers a client is given as its backend's process id and secret key, for its records
/// only: Fjord has no process per connection and takes no cancel requests (a query's time limit ends a
/// runaway one), so neither is a secret.
fn next_backend_id() -> i32 {
    use std::sync::atomic::AtomicI32;
    use std::sync::atomic::Ordering;
    static NEXT: AtomicI32 = AtomicI32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A statement about the session rather than a query: what Postgres would answer, without the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SessionCommand {
    /// `BEGIN`, `START TRANSACTION`: queries only read, so a transaction changes nothing.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
    /// `SET fjord.wait_for = '<token>'` (`None`: `RESET`, `DEFAULT` or the empty string).
    WaitFor(Option<ConsistencyToken>),
    /// `SET fjord.max_staleness = '<milliseconds>'` (`None`: `RESET`, `DEFAULT` or the empty string).
    MaxStaleness(Option<Duration>),
    /// A client setting, accepted without effect.
    Accepted,
    /// `DEALLOCATE [ALL | name]`: what a driver sends to forget its prepared statements (psycopg, on
    /// rollback). Accepted: a prepared statement holds no query slot, and goes with its connection.
    Forget(&'static str),
    /// `DISCARD ALL`, `RESET ALL`: the session as it was at login (no consistency token).
    Reset(&'static str),
}

impl SessionCommand {
    /// The session command `sql` is, `None` for a statement for the engine; an error for a setting
    /// Fjord does not have or a token that does not parse.
    pub(super) fn parse(sql: &str) -> Result<Option<SessionCommand>, QueryError> {
        let text = sql.trim().trim_end_matches(';').trim();
        let words: Vec<&str> = text.split_whitespace().collect();
        let first = words.first().map(|word| word.to_ascii_lowercase()).unwrap_or_default();
        Ok(Some(match first.as_str() {
            "begin" | "start" => SessionCommand::Begin,
            "commit" | "end" => SessionCommand::Commit,
            "rollback" | "abort" => SessionCommand::Rollback,
            "set" | "reset" => return setting(text, first == "reset").map(Some),
            "deallocate" => SessionCommand::Forget("DEALLOCATE"),
            // What a connection pool sends to hand a clean session to its next user: the token too.
            "discard" => SessionCommand::Reset("DISCARD"),
            _ => return Ok(None),
        }))
    }

    /// What the client is told: the command's tag, as Postgres sends it.
    pub(super) fn response(&self) -> Response {
        match self {
            SessionCommand::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            SessionCommand::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            SessionCommand::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
            SessionCommand::WaitFor(_) | SessionCommand::MaxStaleness(_) | SessionCommand::Accepted => {
                Response::Execution(Tag::new("SET"))
            }
            SessionCommand::Forget(tag) => Response::Execution(Tag::new(tag)),
            SessionCommand::Reset(tag) => Response::Execution(Tag::new(tag)),
        }
    }

    /// Applies the command to `session`.
    pub(super) fn apply(&self, session: &Session) {
        let set = |token: Option<ConsistencyToken>| {
            *session.wait_for.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = token;
        };
        let set_staleness = |staleness: Option<Duration>| {
            *session.max_staleness.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = staleness;
        };
        match self {
            SessionCommand::WaitFor(token) => set(token.clone()),
            SessionCommand::MaxStaleness(staleness) => set_staleness(*staleness),
            SessionCommand::Reset(_) => {
                set(None);
                set_staleness(None);
            }
            _ => {}
        }
    }
}

/// `SET [SESSION | LOCAL] name { = | TO } value` or `RESET name` (`reset`).
fn setting(text: &str, reset: bool) -> Result<SessionCommand, QueryError> {
    let rest = text.split_once(char::is_whitespace).map_or("", |(_, rest)| rest).trim();
    let rest = ["session ", "local "]
        .iter()
        .find_map(|scope| {
            rest.get(..scope.len()).filter(|head| head.eq_ignore_ascii_case(scope)).map(|_| &rest[scope.len()..])
        })
        .unwrap_or(rest)
        .trim();
    // `SET TIME ZONE 'UTC'`: the one setting whose name has a space.
    if !reset && rest.get(..9).is_some_and(|head| head.eq_ignore_ascii_case("time zone")) {
        return Ok(SessionCommand::Accepted);
    }
    let (name, value) = if reset {
        (rest, None)
    } else {
        let split =
            rest.find(['=', ' ']).ok_or_else(|| QueryError::Syntax(format!("SET {rest}: expected `= value`")))?;
        let (name, value) = rest.split_at(split);
        let value = value.trim_start_matches([' ', '=']).trim();
        let value = value.strip_prefix("to ").or_else(|| value.strip_prefix("TO ")).unwrap_or(value).trim();
        (name, Some(value))
    };
    let name = name.trim().to_ascii_lowercase();
    if reset && name == "all" {
        return Ok(SessionCommand::Reset("RESET"));
    }
    let value = value.map(|v| v.trim_matches('\'')).filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("default"));
    if name == WAIT_FOR_SETTING {
        return Ok(SessionCommand::WaitFor(value.map(str::parse).transpose()?));
    }
    if name == MAX_STALENESS_SETTING {
        let milliseconds = value
            .map(|v| v.trim_end_matches("ms").trim().parse::<u64>())
            .transpose()
            .map_err(|_| QueryError::BadParameter(format!("{MAX_STALENESS_SETTING}: milliseconds, e.g. '500'")))?;
        return Ok(SessionCommand::MaxStaleness(milliseconds.map(Duration::from_millis)));
    }
    if CLIENT_SETTINGS.contains(&name.as_str()) {
        return Ok(SessionCommand::Accepted);
    }
    Err(QueryError::UnknownSetting(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_commands_are_told_from_queries() {
        assert_eq!(SessionCommand::parse("BEGIN").unwrap(), Some(SessionCommand::Begin));
        assert_eq!(SessionCommand::parse(" commit ; ").unwrap(), Some(SessionCommand::Commit));
        assert_eq!(SessionCommand::parse("SELECT 1").unwrap(), None);
        assert_eq!(SessionCommand::parse("DEALLOCATE ALL").unwrap(), Some(SessionCommand::Forget("DEALLOCATE")));
        assert_eq!(SessionCommand::parse("DISCARD ALL").unwrap(), Some(SessionCommand::Reset("DISCARD")));
        assert_eq!(SessionCommand::parse("RESET ALL").unwrap(), Some(SessionCommand::Reset("RESET")));
        assert_eq!(SessionCommand::parse("SET TIME ZONE 'UTC'").unwrap(), Some(SessionCommand::Accepted));
        assert_eq!(SessionCommand::parse("set extra_float_digits = 3").unwrap(), Some(SessionCommand::Accepted));
        assert_eq!(SessionCommand::parse("SET SESSION TimeZone TO 'UTC'").unwrap(), Some(SessionCommand::Accepted));
        let token = SessionCommand::parse("SET fjord.wait_for = 'eu:0=5,1=7'").unwrap();
        let Some(SessionCommand::WaitFor(Some(token))) = token else { panic!("{token:?}") };
        assert_eq!(token.offsets.len(), 2);
        assert_eq!(
            SessionCommand::parse("SET fjord.wait_for TO DEFAULT").unwrap(),
            Some(SessionCommand::WaitFor(None))
        );
        assert_eq!(SessionCommand::parse("RESET fjord.wait_for").unwrap(), Some(SessionCommand::WaitFor(None)));
        assert!(matches!(SessionCommand::parse("SET fjord.wait_for = 'nope'"), Err(QueryError::BadToken(_))));
        assert!(matches!(SessionCommand::parse("SET work_mem = '1GB'"), Err(QueryError::UnknownSetting(_))));
        assert_eq!(
            SessionCommand::parse("SET fjord.max_staleness = '250ms'").unwrap(),
            Some(SessionCommand::MaxStaleness(Some(Duration::from_millis(250))))
        );
        assert!(matches!(SessionCommand::parse("SET fjord.max_staleness = 'soon'"), Err(QueryError::BadParameter(_))));
    }
}
