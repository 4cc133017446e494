//! Named threads and tasks the supervisor waits for, and the stop signal raced against every start-up step.
//!
//! A thread reports its end by dropping a one-shot sender (also when it panics), so waiting is a wait on
//! channels closing with one deadline for all, never a poll of flags; whatever is still running at the deadline
//! is named.

use anyhow::Context;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A thread or task whose end the supervisor waits for.
#[derive(Debug)]
pub struct Tracked {
    /// Its name (the thread's name), reported when it outlives the deadline.
    pub name: String,
    done: oneshot::Receiver<()>,
}

impl Tracked {
    /// A tracked component and the guard it holds while it runs (dropping the guard marks it done).
    pub fn new(name: String) -> (Self, oneshot::Sender<()>) {
        let (tx, done) = oneshot::channel();
        (Self { name, done }, tx)
    }
}

/// Starts a named thread that is tracked until `f` returns (or panics).
pub fn spawn_named(name: String, f: impl FnOnce() + Send + 'static) -> anyhow::Result<Tracked> {
    let (tracked, guard) = Tracked::new(name.clone());
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let _running = guard;
            f();
        })
        .with_context(|| format!("cannot start thread {name}"))?;
    Ok(tracked)
}

/// Waits until every component is done or `deadline` passes; returns the names still running.
pub async fn wait_all(components: Vec<Tracked>, deadline: Instant) -> Vec<String> {
    let mut late = Vec::new();
    for mut c in components {
        // A closed channel (the guard dropped) is the end; the value itself is never sent.
        if tokio::time::timeout_at(deadline, &mut c.done).await.is_err() {
            late.push(c.name);
        }
    }
    late
}

/// Why the daemon stops, raced against every start-up step and then awaited while it runs.
pub struct StopSignal {
    inner: Pin<Box<dyn Future<Output = ()> + Send>>,
    fired: bool,
}

impl StopSignal {
    /// Wraps the stop request (signals).
    pub fn new(stop_requested: impl Future<Output = ()> + Send + 'static) -> Self {
        let inner = async move {
            stop_requested.await;
            tracing::info!("Shutdown requested.");
        };
        Self {
            inner: Box::pin(inner),
            fired: false,
        }
    }

    /// Completes when the stop is requested (at once if it already was).
    pub async fn wait(&mut self) {
        if !self.fired {
            (&mut self.inner).await;
            self.fired = true;
        }
    }

    /// Runs `step` unless the stop is requested first; `None` then (the step is dropped).
    pub async fn unless_stopped<T>(&mut self, step: impl Future<Output = T>) -> Option<T> {
        if self.fired {
            return None;
        }
        tokio::select! {
            biased;
            () = self.wait() => None,
            out = step => Some(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wait_all_names_only_the_components_still_running() {
        let quick = spawn_named("quick".into(), || {}).unwrap();
        let (slow, guard) = Tracked::new("slow".into());
        let late = wait_all(vec![quick, slow], Instant::now() + Duration::from_millis(200)).await;
        assert_eq!(late, ["slow"]);
        drop(guard);
    }

    #[tokio::test]
    async fn a_panicking_thread_counts_as_done() {
        let t = spawn_named("panics".into(), || panic!("boom")).unwrap();
        let late = wait_all(vec![t], Instant::now() + Duration::from_secs(5)).await;
        assert!(late.is_empty());
    }

    #[tokio::test]
    async fn a_step_is_abandoned_when_the_stop_comes_first() {
        let (tx, rx) = oneshot::channel::<()>();
        let mut stop = StopSignal::new(async {
            let _sent = rx.await;
        });
        assert_eq!(stop.unless_stopped(async { 7 }).await, Some(7));
        drop(tx);
        let never = std::future::pending::<u8>();
        assert_eq!(stop.unless_stopped(never).await, None);
        assert_eq!(stop.unless_stopped(async { 1 }).await, None, "stays stopped");
    }
}
