//! Leader election with a `coordination.k8s.io/v1` Lease, so that two operator replicas never
//! both write the config Secret.
//!
//! The rules follow client-go's leaderelection: a lease is taken over only when its holder has
//! not renewed it for a full `leaseDurationSeconds` *as observed by us* (we time how long its
//! resourceVersion stayed unchanged on our own monotonic clock, so skewed wall clocks between
//! nodes do not matter), and every write uses the resourceVersion we read, so two candidates
//! racing for one lease cannot both win. A leader that cannot renew within its renew deadline
//! steps down before anyone else may take over, and campaigns again in the same process: an
//! API server that is away for longer than the lease (a control-plane upgrade) costs a
//! leadership round, not a restart.
//!
//! The [`Fence`] carries the renew deadline to the writers: every write checks it first, so a
//! write that was about to start when renewals stopped working does not start at all.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Who we are: the pod name in a cluster.
    pub identity: String,
    /// How long a lease stays ours without renewal.
    pub duration: Duration,
    /// How often the leader renews (and candidates retry).
    pub retry: Duration,
}

impl LeaseSettings {
    /// A leader that has not renewed for this long stops acting as leader. It is shorter than
    /// `duration`, so it has stopped before a candidate may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration.mul_f32(2.0 / 3.0)
    }
}

/// Until when this replica may act as leader, by its own monotonic clock: the start of its
/// last successful renewal plus the renew deadline.
#[derive(Debug, Default)]
pub struct Fence {
    until: Mutex<Option<Instant>>,
}

impl Fence {
    pub fn extend_to(&self, until: Instant) {
        if let Ok(mut u) = self.until.lock() {
            *u = Some(until);
        }
    }

    pub fn revoke(&self) {
        if let Ok(mut u) = self.until.lock() {
            *u = None;
        }
    }

    /// Whether a write may start now.
    pub fn holds(&self) -> bool {
        self.until
            .lock()
            .is_ok_and(|u| u.is_some_and(|u| Instant::now() < u))
    }
}

/// One candidate's view of the lease.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last resourceVersion we saw held by someone else, and when we first saw it.
    observed: Option<(String, Instant)>,
    /// The holder named by the lease when we last read it.
    holder: Option<String>,
}

impl Elector {
    pub fn new(api: Api<Lease>, settings: LeaseSettings) -> Self {
        Elector {
            api,
            settings,
            observed: None,
            holder: None,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Who held the lease when we last read it (`None`: nobody, or not read yet).
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }

    fn spec(&self, previous: Option<&LeaseSpec>, taking_over: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: if taking_over {
                Some(now.clone())
            } else {
                previous.and_then(|p| p.acquire_time.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if taking_over && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the lease. `Ok(true)` means we hold it now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let s = &self.settings;
        let Some(lease) = self.api.get_opt(&s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, true)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.holder = Some(s.identity.clone());
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        self.holder = (!holder.is_empty()).then(|| holder.clone());
        let ours = holder == s.identity;
        if !ours && !holder.is_empty() {
            let rv = lease.metadata.resource_version.clone().unwrap_or_default();
            let duration = spec.lease_duration_seconds.map_or(s.duration, |d| {
                Duration::from_secs(u64::try_from(d).unwrap_or(0))
            });
            match &self.observed {
                Some((seen, since)) if *seen == rv => {
                    if since.elapsed() < duration {
                        return Ok(false);
                    }
                }
                _ => {
                    self.observed = Some((rv, Instant::now()));
                    return Ok(false);
                }
            }
            tracing::info!(previous = %holder, "lease holder stopped renewing; taking over");
        }
        let updated = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(self.spec(Some(&spec), !ours)),
        };
        match self
            .api
            .replace(&s.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {
                self.observed = None;
                self.holder = Some(s.identity.clone());
                Ok(true)
            }
            // Someone else wrote first: they renewed, or won the race to take over.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up so a standby replica takes over at once instead of after the lease
    /// duration. Best effort: on failure the lease simply expires.
    pub async fn release(&mut self) {
        let Ok(Some(lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        let updated = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(spec),
        };
        if let Err(e) = self
            .api
            .replace(&self.settings.name, &PostParams::default(), &updated)
            .await
        {
            tracing::warn!(error = %e, "could not release the lease; it will expire");
        }
    }
}
