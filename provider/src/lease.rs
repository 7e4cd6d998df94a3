//! The apply lease of the store: taken before the first change this provider process applies,
//! renewed while the process lives, released when Terraform shuts the process down.
//!
//! Terraform runs one provider process per graph walk (plan, then apply), so the process that
//! applies changes is the apply: holding the store's lease from its first `ApplyResourceChange`
//! until it exits orders whole applies, not single writes. Plans and refreshes only read and
//! never take it. The lease names the Terraform run (its process, host and start time), which
//! every provider process of that run shares: a configuration with several `safebox` provider
//! blocks on one store does not wait for itself.
//!
//! A second run that finds the lease held waits up to `store.lease_wait`, then fails naming the
//! holder; nothing has been changed by then. A run killed while it holds the lease leaves it to
//! expire after `store.lease_duration` (in a `state_dir`, also as soon as its processes on
//! this machine are gone). If renewing fails for longer than the lease lasts, or another run
//! took it over, the next change of this process is refused.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use safebox::store::lease::{this_host, LeaseAttempt, LeaseBody, LeaseHolder, LeaseToken};
use safebox::store::Store;
use tokio::task::JoinHandle;

use crate::framework::diag::Diagnostics;
use crate::log;

/// How long a lease holds unless renewed when `store.lease_duration` is not set.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(120);
/// How long an apply waits for another run's lease when `store.lease_wait` is not set.
pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(300);
/// How often a waiting apply looks at the lease again.
const POLL: Duration = Duration::from_secs(1);
/// How long releasing may take at exit: Terraform kills a plugin that has not exited about
/// two seconds after asking it to.
const RELEASE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The lease's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long the lease holds unless renewed; it is renewed every third of it.
    pub duration: Duration,
    /// How long to wait for another run's lease.
    pub wait: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            duration: DEFAULT_LEASE_DURATION,
            wait: DEFAULT_LEASE_WAIT,
        }
    }
}

/// The lease this process holds, or will take.
pub struct ApplyLease {
    store: Arc<dyn Store>,
    settings: LeaseSettings,
    holder: LeaseHolder,
    state: tokio::sync::Mutex<State>,
}

enum State {
    Free,
    Held(Held),
    Released,
}

struct Held {
    token: Arc<Mutex<LeaseToken>>,
    /// Why the lease was lost, once it is.
    lost: Arc<Mutex<Option<String>>>,
    renewer: JoinHandle<()>,
}

impl ApplyLease {
    /// The lease of `store`, for this process's Terraform run.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, settings: LeaseSettings) -> Self {
        Self {
            store,
            settings,
            holder: this_run(),
            state: tokio::sync::Mutex::new(State::Free),
        }
    }

    fn body(&self) -> LeaseBody {
        LeaseBody::new(&self.holder, time::OffsetDateTime::now_utc(), self.settings.duration)
    }

    /// Makes sure this process holds the lease, waiting for another run's up to
    /// `lease_wait`; reports why not in `diags` (nothing may be changed then).
    pub async fn hold(&self, diags: &mut Diagnostics) -> bool {
        let mut state = self.state.lock().await;
        match &*state {
            State::Held(held) => {
                return match held.lost.lock().unwrap_or_else(PoisonError::into_inner).clone() {
                    None => true,
                    Some(reason) => {
                        diags.error(
                            "The store's apply lease was lost",
                            format!("{reason}. Nothing more is changed by this run; run terraform apply again once the other run has finished (plan first: the store may have changed)."),
                        );
                        false
                    }
                };
            }
            State::Released => {
                diags.error(
                    "The provider is shutting down",
                    "Terraform asked the provider to stop; nothing more is changed.",
                );
                return false;
            }
            State::Free => {}
        }
        let started = Instant::now();
        let mut logged_wait = false;
        loop {
            let now = time::OffsetDateTime::now_utc();
            match self.store.try_lease(&self.body(), now).await {
                Ok(LeaseAttempt::Acquired { token, took_over }) => {
                    if let Some(previous) = took_over {
                        log::info(&format!(
                            "took over the apply lease of {} in {}: it expired at {} or its processes are gone",
                            previous.holder,
                            self.store.location(),
                            previous.expires_at
                        ));
                    }
                    *state = State::Held(self.renew(token));
                    return true;
                }
                Ok(LeaseAttempt::Held(other)) => {
                    let waited = started.elapsed();
                    if waited >= self.settings.wait {
                        diags.error(
                            "Another run holds the store",
                            format!(
                                "The store {} is held by {} (since {}; it expires at {} unless renewed). This apply waited {} s for it (store.lease_wait) and changed nothing. Run terraform apply again when that run has finished; if it died, its lease expires at {} and is then taken over.",
                                self.store.location(),
                                other.holder,
                                other.acquired_at,
                                other.expires_at,
                                waited.as_secs(),
                                other.expires_at
                            ),
                        );
                        return false;
                    }
                    if !logged_wait {
                        logged_wait = true;
                        log::info(&format!(
                            "waiting up to {} s for the apply lease of {} held by {}",
                            self.settings.wait.as_secs(),
                            self.store.location(),
                            other.holder
                        ));
                    }
                    tokio::time::sleep(POLL.min(self.settings.wait - waited)).await;
                }
                Err(e) => {
                    diags.error(
                        "Cannot take the store's apply lease",
                        format!("{e}. Nothing was changed."),
                    );
                    return false;
                }
            }
        }
    }

    /// Starts renewing `token` every third of the lease's duration.
    fn renew(&self, token: LeaseToken) -> Held {
        let token = Arc::new(Mutex::new(token));
        let lost = Arc::new(Mutex::new(None));
        let (store, holder, duration) = (Arc::clone(&self.store), self.holder.clone(), self.settings.duration);
        let (slot, lost_slot) = (Arc::clone(&token), Arc::clone(&lost));
        let renewer = tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep((duration / 3).max(Duration::from_millis(100))).await;
                let now = time::OffsetDateTime::now_utc();
                let reason = match store.try_lease(&LeaseBody::new(&holder, now, duration), now).await {
                    Ok(LeaseAttempt::Acquired { token, .. }) => {
                        *slot.lock().unwrap_or_else(PoisonError::into_inner) = token;
                        renewed = Instant::now();
                        continue;
                    }
                    Ok(LeaseAttempt::Held(other)) => format!(
                        "{} took the store {} over: this run's lease expired before it could be renewed",
                        other.holder,
                        store.location()
                    ),
                    Err(e) if renewed.elapsed() < duration => {
                        log::error(&format!("renewing the apply lease failed (trying again): {e}"));
                        continue;
                    }
                    Err(e) => format!(
                        "renewing the apply lease of {} failed for longer than it lasts: {e}",
                        store.location()
                    ),
                };
                log::error(&reason);
                *lost_slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
                return;
            }
        });
        Held { token, lost, renewer }
    }

    /// Releases the lease if this process holds it; no later change is made.
    pub async fn release(&self) {
        let mut state = self.state.lock().await;
        if let State::Held(held) = std::mem::replace(&mut *state, State::Released) {
            held.renewer.abort();
            let lost = held.lost.lock().unwrap_or_else(PoisonError::into_inner).is_some();
            let token = held.token.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if !lost {
                match tokio::time::timeout(RELEASE_TIMEOUT, self.store.release_lease(&token)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::error(&format!(
                        "releasing the apply lease failed (it expires at {}): {e}",
                        token.body.expires_at
                    )),
                    Err(_) => log::error(&format!(
                        "releasing the apply lease timed out (it expires at {})",
                        token.body.expires_at
                    )),
                }
            }
        }
    }
}

/// This process's Terraform run: Terraform starts the provider, so the run is the parent
/// process, told apart from a later process of the same id by its start time.
fn this_run() -> LeaseHolder {
    let terraform = std::os::unix::process::parent_id();
    let host = this_host();
    let started = safebox::process::start_time(terraform)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "?".to_owned());
    LeaseHolder {
        run: format!("{host}/{terraform}/{started}"),
        description: format!(
            "terraform (pid {terraform}) on {host} as {user}, provider pid {}",
            std::process::id()
        ),
        host,
        pids: vec![terraform, std::process::id()],
    }
}
