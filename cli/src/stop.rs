//! When a command stops before its work is done: on SIGINT (Ctrl-C) or
//! SIGTERM (how systemd, Docker and Kubernetes stop a process), and, for
//! `listen` when asked, when standard input closes or the parent process
//! ends.
//!
//! Both signals mean the same. Once a command is about to run a node
//! ([`Stop::arm`]), a signal makes it stop what it is doing and shut the
//! node down cleanly (`Goodbye`, linger, stats), so that the other nodes
//! forget its stream instead of timing it out with a `Reset` (a listener,
//! receive-only, costs nobody a Reset either way). Before that
//! (nothing to clean up: reading keys, parsing, `doctor`), and on a second
//! signal (a shutdown that takes too long), the process exits at once with
//! status 128 + the signal's number, as without a handler.
//!
//! What it may not do: ignore a signal; block the runtime (standard input
//! is read on a thread of its own).

use std::fmt;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Why a command was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (and the parent's death, with `--exit-with-parent`).
    Terminate,
    /// Standard input reached its end (`--exit-on-stdin-close`).
    StdinClosed,
    /// The parent process was already gone when `--exit-with-parent` was
    /// set up.
    ParentGone,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Interrupt => "SIGINT",
            Reason::Terminate => "SIGTERM",
            Reason::StdinClosed => "the end of standard input",
            Reason::ParentGone => "the end of the parent process",
        })
    }
}

/// The stop request of this process: set once, by the first of its causes.
#[derive(Debug, Clone)]
pub struct Stop {
    tx: watch::Sender<Option<Reason>>,
    rx: watch::Receiver<Option<Reason>>,
    /// A signal asks for a clean stop (else it exits at once).
    armed: Arc<AtomicBool>,
}

impl Stop {
    /// Catches SIGINT and SIGTERM from now on. Call it inside the runtime,
    /// before joining, so that no signal falls between.
    pub fn install() -> io::Result<Stop> {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (tx, rx) = watch::channel(None);
        let stop = Stop {
            tx,
            rx,
            armed: Arc::new(AtomicBool::new(false)),
        };
        let on_signal = stop.clone();
        tokio::spawn(async move {
            let mut seen = 0u32;
            loop {
                let (reason, number) = tokio::select! {
                    Some(()) = int.recv() => (Reason::Interrupt, libc::SIGINT),
                    Some(()) = term.recv() => (Reason::Terminate, libc::SIGTERM),
                    else => break,
                };
                seen += 1;
                if !on_signal.armed.load(Ordering::SeqCst) {
                    std::process::exit(128 + number);
                }
                if seen > 1 {
                    eprintln!("cachecast: {reason} again: exiting now");
                    std::process::exit(128 + number);
                }
                on_signal.request(reason);
            }
        });
        Ok(stop)
    }

    /// From now on a signal asks for a clean stop: call it right before
    /// joining. Until then a signal exits at once, as by default.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Asks to stop, unless a stop was asked already.
    pub fn request(&self, reason: Reason) {
        let first = self.tx.send_if_modified(|r| {
            let first = r.is_none();
            r.get_or_insert(reason);
            first
        });
        if first {
            tracing::info!(%reason, "stopping: Goodbye, linger, then exit");
        }
    }

    /// Why a stop was asked, if it was.
    pub fn requested(&self) -> Option<Reason> {
        *self.rx.borrow()
    }

    /// Waits until a stop is asked. Cancel-safe.
    pub async fn wait(&self) -> Reason {
        let mut rx = self.rx.clone();
        let reason = rx.wait_for(Option::is_some).await.ok().and_then(|r| *r);
        match reason {
            Some(r) => r,
            // The sender lives in `self`: never closed while this waits.
            None => std::future::pending().await,
        }
    }

    /// Asks to stop when standard input reaches its end (or fails); what it
    /// reads is discarded.
    pub fn on_stdin_close(&self) {
        let stop = self.clone();
        // A thread of its own: a blocking read in the runtime's pool would
        // keep the runtime from shutting down.
        std::thread::spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = [0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "reading standard input failed: stopping");
                        break;
                    }
                }
            }
            stop.request(Reason::StdinClosed);
        });
    }

    /// Linux: asks the kernel to send SIGTERM (so: a clean stop) when the
    /// parent ends; `parent` is the parent's pid read when the process
    /// started, to catch a parent that ended before this call.
    pub fn with_parent(&self, parent: libc::pid_t) -> io::Result<()> {
        set_parent_death_signal()?;
        // SAFETY: getppid has no preconditions and cannot fail.
        if unsafe { libc::getppid() } != parent {
            self.request(Reason::ParentGone);
        }
        Ok(())
    }
}

/// Linux only, like the library this binary is built on.
fn set_parent_death_signal() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number as its one argument;
    // the other arguments are ignored.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The parent's pid, read as early as possible (see [`Stop::with_parent`]).
pub fn parent_pid() -> libc::pid_t {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() }
}
