//! Server-streamed responses made by a task of their own: the task sends messages on a small bounded
//! channel (so a slow client holds a message or two, never more) and ends a finished stream with an end
//! marker. A task that gives up on a client that read nothing for the idle timeout sends no marker, and the
//! client gets `DEADLINE_EXCEEDED`: never a clean end that would pass for a whole read.

use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Code;
use tonic::Status;

use crate::pb;

/// The sending half: a message, or `None`, the end marker.
pub type ResponseSender<T> = mpsc::Sender<Option<Result<T, Status>>>;

/// A response stream and the sender its task fills; `permit` holds the stream's place among those the
/// node serves at once until the client is done with it.
pub fn channel<T>(idle: Duration, permit: OwnedSemaphorePermit) -> (ResponseSender<T>, Responses<T>) {
    let (sender, receiver) = mpsc::channel(1);
    (sender, Responses { receiver, ended: false, idle, _permit: permit })
}

/// Sends a stream's last message, then the end marker.
pub async fn finish<T>(sender: &ResponseSender<T>, last: Result<T, Status>, idle: Duration) {
    if sender.send_timeout(Some(last), idle).await.is_ok() {
        let _ = sender.send_timeout(None, idle).await;
    }
}

/// The messages a task sends, until its end marker (see the module's doc).
pub struct Responses<T> {
    receiver: mpsc::Receiver<Option<Result<T, Status>>>,
    ended: bool,
    idle: Duration,
    _permit: OwnedSemaphorePermit,
}

impl<T> Stream for Responses<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.receiver.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Some(item))) => Poll::Ready(Some(item)),
            Poll::Ready(Some(None)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(pb::status(
                    Code::DeadlineExceeded,
                    "READ_IDLE",
                    format!("the stream ended: nothing was read from it for {} s", self.idle.as_secs()),
                ))))
            }
        }
    }
}
