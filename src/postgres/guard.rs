//! A client's connection. Its bytes reach the protocol (pgwire, over a socket pair) only through a guard
//! that reads Postgres's framing and refuses a message over the limit before any of it is buffered
//! (pgwire alone would buffer a message of up to 1 GiB), and that answers a request for TLS or GSS
//! encryption with "no": the public plane is plaintext (SECURITY.md).

use std::io;
use std::sync::Arc;

use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::UnixStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Mutex;

use super::Handlers;

/// The request codes of the untyped messages a connection may start with (Postgres's protocol docs).
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// The longest startup message Postgres itself accepts, bytes.
const MAX_STARTUP_BYTES: usize = 10_000;
/// How long a connection that is refused may take to say who it is.
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a client may take to send its startup message (pgwire gives the login that follows as long).
const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why the guard closed a connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// A message longer than the limit.
    #[error("a message of {0} bytes, over the limit of {1}")]
    TooLarge(usize, usize),
    /// Bytes that are not Postgres's framing.
    #[error("not the Postgres protocol: {0}")]
    Garbled(&'static str),
    /// No startup message within [`STARTUP_WAIT`].
    #[error("no startup message within {0:?}")]
    Silent(std::time::Duration),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Serves one client: pgwire runs the protocol on one end of a socket pair, the guard pumps the client's
/// messages into the other and pgwire's answers back out.
pub(super) async fn serve_connection(
    socket: TcpStream,
    handlers: Arc<Handlers>,
    max_message_bytes: usize,
) -> Result<(), Refusal> {
    let (inner, outer) = UnixStream::pair()?;
    let protocol = tokio::spawn(pgwire::tokio::process_socket_unix(inner, handlers));
    let (mut client_read, client_write) = socket.into_split();
    let client_write = Arc::new(Mutex::new(client_write));
    let (mut protocol_read, mut protocol_write) = outer.into_split();
    let answers = async {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = protocol_read.read(&mut buffer).await?;
            if read == 0 {
                return client_write.lock().await.shutdown().await;
            }
            client_write.lock().await.write_all(&buffer[..read]).await?;
        }
    };
    let requests = async {
        let outcome = pump_requests(&mut client_read, &mut protocol_write, &client_write, max_message_bytes).await;
        if let Err(refusal @ (Refusal::TooLarge(..) | Refusal::Garbled(_))) = &outcome {
            let code = if matches!(refusal, Refusal::TooLarge(..)) { "54000" } else { "08P01" };
            let mut client = client_write.lock().await;
            let _ = client.write_all(&fatal_error(code, &refusal.to_string())).await;
            let _ = client.shutdown().await;
        }
        // Nothing more reaches the protocol: it ends the session, and its answers end.
        let _ = protocol_write.shutdown().await;
        outcome
    };
    // Whichever side ends first ends the connection: a client gone, or the protocol done with it (after a
    // `Terminate`, a failed login, pgwire's login timeout). A client that stops reading or sending holds
    // nothing past that.
    let outcome = tokio::select! {
        answered = answers => answered.map_err(Refusal::from),
        requested = requests => requested,
    };
    protocol.abort();
    let _ = client_write.lock().await.shutdown().await;
    outcome
}

/// Copies the client's messages to the protocol, each only once its length is known to be within the
/// limit; ends when the client closes the connection.
async fn pump_requests(
    client: &mut (impl AsyncRead + Unpin),
    protocol: &mut (impl AsyncWrite + Unpin),
    client_write: &Mutex<OwnedWriteHalf>,
    max_message_bytes: usize,
) -> Result<(), Refusal> {
    let startup = tokio::time::timeout(STARTUP_WAIT, read_startup(client, client_write)).await;
    let Some(startup) = startup.map_err(|_| Refusal::Silent(STARTUP_WAIT))?? else { return Ok(()) };
    protocol.write_all(&startup).await?;
    loop {
        let mut header = [0u8; 5];
        match client.read_exact(&mut header).await {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error.into()),
        }
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let body = length.checked_sub(4).ok_or(Refusal::Garbled("a message shorter than its length field"))?;
        if body > max_message_bytes {
            return Err(Refusal::TooLarge(body, max_message_bytes));
        }
        protocol.write_all(&header).await?;
        let copied = tokio::io::copy(&mut (&mut *client).take(body as u64), protocol).await?;
        if copied < body as u64 {
            return Ok(());
        }
    }
}

/// The connection's first message (a startup message or a cancel request), after answering "no" to any
/// request for encryption; `None` if the client closed first.
async fn read_startup(
    client: &mut (impl AsyncRead + Unpin),
    client_write: &Mutex<OwnedWriteHalf>,
) -> Result<Option<Vec<u8>>, Refusal> {
    loop {
        let mut length = [0u8; 4];
        match client.read_exact(&mut length).await {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error.into()),
        }
        let total = u32::from_be_bytes(length) as usize;
        if !(8..=MAX_STARTUP_BYTES).contains(&total) {
            return Err(Refusal::Garbled("a startup message of an impossible length"));
        }
        let mut message = length.to_vec();
        message.resize(total, 0);
        client.read_exact(&mut message[4..]).await?;
        let code = u32::from_be_bytes([message[4], message[5], message[6], message[7]]);
        if total == 8 && (code == SSL_REQUEST || code == GSSENC_REQUEST) {
            client_write.lock().await.write_all(b"N").await?;
            continue;
        }
        return Ok(Some(message));
    }
}

/// Tells a client over the connection limit so (SQLSTATE 53300, as Postgres does) once it has said who it
/// is, and closes.
pub(super) async fn refuse(socket: TcpStream, max_connections: usize) {
    let (mut read, write) = socket.into_split();
    let write = Mutex::new(write);
    let told = async {
        if read_startup(&mut read, &write).await.ok().flatten().is_some() {
            let message = format!("this node serves {max_connections} Postgres connections already, its limit");
            let mut write = write.lock().await;
            let _ = write.write_all(&fatal_error("53300", &message)).await;
            let _ = write.shutdown().await;
        }
    };
    let _ = tokio::time::timeout(REFUSAL_WAIT, told).await;
}

/// An ErrorResponse of severity FATAL with `code` and `message`, encoded by pgwire.
fn fatal_error(code: &str, message: &str) -> Vec<u8> {
    let info = pgwire::error::ErrorInfo::new("FATAL".to_owned(), code.to_owned(), message.to_owned());
    let mut encoded = bytes::BytesMut::new();
    // An error message always encodes (its fields are plain text).
    let _ = pgwire::messages::PgWireBackendMessage::ErrorResponse(info.into()).encode(&mut encoded);
    encoded.to_vec()
}
