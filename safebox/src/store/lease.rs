//! The apply lease: one object per store that says which run may write, and until when.
//!
//! The lease is the JSON of a [`LeaseBody`]: the run that holds it (an identity that every
//! process of that run shares), a description of the holder for the people waiting, and when
//! it was taken and expires. [`attempt`] takes it with a conditional create
//! (`If-None-Match: *`); the holder renews it before it expires by replacing it on its version
//! (`If-Match`); another run takes it over only once it has expired, again on its version, so
//! two runs that find one expired lease never both take it over. [`release`] deletes it, on
//! its version, when the run ends. A run killed while holding the lease leaves it to expire.
//!
//! Expiry is judged by the clock of whoever reads the lease: the runs sharing a store must
//! keep their clocks within a small part of the lease's duration of each other (NTP does).
//!
//! A store on this machine (a folder) may also judge whether the holder is alive: a lease
//! written on this host by processes that are all gone is taken over at once
//! ([`Liveness::ThisHost`]). A bucket shared between machines judges by expiry only.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::objects::{precondition, put_once, Condition, Objects, Version};
use crate::cloud::CloudError;

/// Who asks for the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The run: every process of one run gives the same, so they share the lease.
    pub run: String,
    /// The holder as the people waiting read it (a command, a process, a host).
    pub description: String,
    /// The host it runs on ([`this_host`]).
    pub host: String,
    /// Its processes on that host: while any is alive, the run may still write.
    pub pids: Vec<u32>,
}

/// What the lease object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBody {
    /// Who holds it, for the people waiting.
    pub holder: String,
    /// The run that holds it.
    pub run: String,
    /// The host the holder runs on.
    pub host: String,
    /// The holder's processes on that host.
    pub pids: Vec<u32>,
    /// When the holder took it (RFC 3339, UTC).
    pub acquired_at: String,
    /// Until when it holds unless renewed (RFC 3339, UTC).
    pub expires_at: String,
}

impl LeaseBody {
    /// The lease of `holder`, taken at `now` for `duration`.
    #[must_use]
    pub fn new(holder: &LeaseHolder, now: OffsetDateTime, duration: std::time::Duration) -> Self {
        let format = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
        Self {
            holder: holder.description.clone(),
            run: holder.run.clone(),
            host: holder.host.clone(),
            pids: holder.pids.clone(),
            acquired_at: format(now),
            expires_at: format(now + duration),
        }
    }

    /// Whether it was written on this host by processes that are all gone.
    #[must_use]
    pub fn gone_from_this_host(&self) -> bool {
        self.host == this_host()
            && !self.pids.is_empty()
            && self.pids.iter().all(|pid| {
                let pid = i32::try_from(*pid).ok().and_then(rustix::process::Pid::from_raw);
                // A process we may not signal exists; only "no such process" is gone.
                pid.is_none_or(
                    |pid| matches!(rustix::process::test_kill_process(pid), Err(e) if e == rustix::io::Errno::SRCH),
                )
            })
    }

    /// When it expires; `None` when `expires_at` is not a time (a damaged lease).
    #[must_use]
    pub fn expiry(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.expires_at, &Rfc3339).ok()
    }
}

/// A lease held: what was written and its version, to renew or release it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken {
    /// What the lease object holds.
    pub body: LeaseBody,
    /// Its version.
    pub version: Version,
}

/// What an attempt to take the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAttempt {
    /// The lease is this run's now.
    Acquired {
        /// How to renew or release it.
        token: LeaseToken,
        /// The expired lease of another run that was taken over.
        took_over: Option<LeaseBody>,
    },
    /// Another run holds it, and it has not expired.
    Held(LeaseBody),
}

/// This host's name, as lease bodies record it.
#[must_use]
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// How a store judges whether another run's lease still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// By its expiry only (a bucket shared between machines).
    ExpiryOnly,
    /// By its expiry, and by whether its holder's processes on this host are gone (a folder).
    ThisHost,
}

/// How often an attempt starts over when the lease changed between reading and writing it.
const ATTEMPTS: usize = 3;

/// Takes the lease at `key` for `mine.run`, renews it if that run holds it already, or takes it
/// over if it expired; reports the holder otherwise. Never waits.
///
/// # Errors
/// [`CloudError::Damaged`] for a lease object that is not a lease (fail closed: nobody may
/// then write until it is removed), or the store's errors.
pub async fn attempt<O: Objects + ?Sized>(
    objects: &O,
    key: &str,
    (mine, liveness): (&LeaseBody, Liveness),
    now: OffsetDateTime,
) -> Result<LeaseAttempt, CloudError> {
    let body = serde_json::to_vec(mine).map_err(|e| damaged(objects, key, &e.to_string()))?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (condition, took_over) = match objects.get(key).await? {
            None => (None, None),
            Some(found) => {
                let theirs: LeaseBody = serde_json::from_slice(&found.body)
                    .map_err(|e| damaged(objects, key, &format!("it is not a lease ({e})")))?;
                let expiry = theirs
                    .expiry()
                    .ok_or_else(|| damaged(objects, key, "its expires_at is not an RFC 3339 time"))?;
                if theirs.run == mine.run {
                    (Some(found.version), None)
                } else if expiry <= now || (liveness == Liveness::ThisHost && theirs.gone_from_this_host()) {
                    (Some(found.version), Some(theirs))
                } else {
                    return Ok(LeaseAttempt::Held(theirs));
                }
            }
        };
        let written = match &condition {
            None => put_once(objects, key, &body, Condition::Absent).await,
            Some(version) => put_once(objects, key, &body, Condition::Matches(version)).await,
        };
        match written {
            Ok(version) => {
                return Ok(LeaseAttempt::Acquired {
                    token: LeaseToken {
                        body: mine.clone(),
                        version,
                    },
                    took_over,
                })
            }
            // Someone else wrote the lease in between: look again at what is there now.
            Err(e @ CloudError::Precondition { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| precondition(objects, key, Condition::Absent)))
}

/// Releases the lease `token` holds; a lease that another run took over meanwhile is left to
/// it.
///
/// # Errors
/// The store's errors.
pub async fn release<O: Objects + ?Sized>(objects: &O, key: &str, token: &LeaseToken) -> Result<(), CloudError> {
    match objects.delete(key, Some(&token.version)).await {
        Err(CloudError::Precondition { .. }) => Ok(()),
        other => other,
    }
}

fn damaged<O: Objects + ?Sized>(objects: &O, key: &str, reason: &str) -> CloudError {
    CloudError::Damaged {
        location: objects.location(),
        key: key.to_owned(),
        reason: format!("{reason}. If no run is writing to this store, delete the lease object and run again"),
    }
}
