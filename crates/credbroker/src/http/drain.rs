//! Graceful shutdown for the connection loop: when shutdown begins, every open connection is
//! told to finish the request in flight and close.
//!
//! hyper-util's `GracefulShutdown` does this with a `watch` channel whose `changed()` future
//! each connection polls on every wake-up: ~160 instructions per request on the hot path
//! (callgrind), for a signal that fires once in the life of the process. Here a connection
//! reads one flag per poll, and registers its task's waker only when the waker changes (a tokio
//! task keeps one waker for its life, so once per connection in practice); shutdown sets the
//! flag and wakes every registered connection.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// A connection that can be asked to finish what is in flight and then close.
pub trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self)
    }
}

/// The shutdown signal, shared by the accept loop and every connection it started.
#[derive(Default)]
pub struct Drain {
    closing: AtomicBool,
    wakers: Mutex<Wakers>,
}

#[derive(Default)]
struct Wakers {
    next: u64,
    by_connection: HashMap<u64, Waker>,
}

impl Drain {
    /// Begins shutdown: every watched connection, now and later, is asked to close.
    pub fn start(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = self
            .wakers
            .lock()
            .by_connection
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// `conn`, closed gracefully once [`Drain::start`] is called.
    pub fn watch<C: Graceful>(self: &Arc<Self>, conn: C) -> Watched<C> {
        Watched {
            conn: Box::pin(conn),
            drain: self.clone(),
            registered: None,
            closing: false,
        }
    }

    fn register(&self, id: Option<u64>, waker: &Waker) -> u64 {
        let mut wakers = self.wakers.lock();
        let id = id.unwrap_or_else(|| {
            wakers.next += 1;
            wakers.next
        });
        wakers.by_connection.insert(id, waker.clone());
        id
    }

    fn unregister(&self, id: u64) {
        self.wakers.lock().by_connection.remove(&id);
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        self.wakers.lock().by_connection.len()
    }
}

/// A connection watched by a [`Drain`]. Boxed once per connection, so the wrapper is `Unpin`.
pub struct Watched<C> {
    conn: Pin<Box<C>>,
    drain: Arc<Drain>,
    /// This connection's registration and the waker registered under it.
    registered: Option<(u64, Waker)>,
    /// `graceful_shutdown` has been called.
    closing: bool,
}

impl<C: Graceful> Future for Watched<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        if !this.closing {
            let current = this
                .registered
                .as_ref()
                .is_some_and(|(_, w)| w.will_wake(cx.waker()));
            if !current {
                let id = this
                    .drain
                    .register(this.registered.as_ref().map(|(id, _)| *id), cx.waker());
                this.registered = Some((id, cx.waker().clone()));
            }
            // Read after registering: a `start` that ran before the registration set the flag
            // first; one that runs after it finds the waker.
            if this.drain.closing.load(Ordering::SeqCst) {
                this.closing = true;
                if let Some((id, _)) = this.registered.take() {
                    this.drain.unregister(id);
                }
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.as_mut().poll(cx)
    }
}

impl<C> Drop for Watched<C> {
    fn drop(&mut self) {
        if let Some((id, _)) = self.registered.take() {
            self.drain.unregister(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Pending until asked to shut down, then done; counts its polls.
    struct Conn {
        shutdown: bool,
        polls: Arc<AtomicUsize>,
    }

    impl Future for Conn {
        type Output = &'static str;

        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<&'static str> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.shutdown {
                Poll::Ready("closed")
            } else {
                Poll::Pending
            }
        }
    }

    impl Graceful for Conn {
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.shutdown = true;
        }
    }

    fn conn() -> (Conn, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let c = Conn {
            shutdown: false,
            polls: polls.clone(),
        };
        (c, polls)
    }

    #[tokio::test]
    async fn open_connections_close_when_shutdown_starts_and_later_ones_at_once() {
        let drain = Arc::new(Drain::default());
        let (a, polls) = conn();
        let (b, _) = conn();
        let a = tokio::spawn(drain.watch(a));
        let b = tokio::spawn(drain.watch(b));
        while drain.registered() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled once, then asleep");
        drain.start();
        assert_eq!(a.await.unwrap(), "closed");
        assert_eq!(b.await.unwrap(), "closed");
        assert_eq!(drain.registered(), 0, "nothing left registered");
        // A connection accepted after shutdown began closes on its first poll.
        let (late, _) = conn();
        assert_eq!(drain.watch(late).await, "closed");
        assert_eq!(drain.registered(), 0);
    }

    #[tokio::test]
    async fn a_connection_that_ends_by_itself_leaves_no_waker_behind() {
        let drain = Arc::new(Drain::default());
        let (c, _) = conn();
        let task = tokio::spawn(drain.watch(c));
        while drain.registered() < 1 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        assert_eq!(drain.registered(), 0, "dropped, so unregistered");
    }
}
