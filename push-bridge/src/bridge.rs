//! The async shell: one task drives the [`Schedule`] with the clock and
//! sends what falls due through the providers' clients, a bounded number
//! at a time. The application (the chat layer) tells it what arrived,
//! what was read, and which calls ring, and answers [`Source::prepare`]
//! when a push falls due: nothing is decided from a lossy event alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, Semaphore};

use crate::apns::ApnsClient;
use crate::fcm::FcmClient;
use crate::schedule::{Key, Next, Schedule};
use crate::{Notification, Outcome, PushConfig, PushError, Target};

/// What the bridge asks of the application.
pub trait Source: Send + Sync + 'static {
    /// The push for `device` and `collapse` covering entries up to `upto`,
    /// as it should go now (the badge counted now); `None`: nothing to
    /// push any more (acknowledged, read, muted, token gone).
    fn prepare(&self, device: &str, collapse: &str, upto: u64) -> Option<(Target, Notification)>;

    /// How a push ended, after the bridge's own retries.
    fn outcome(&self, device: &str, collapse: &str, upto: u64, target: &Target, outcome: &Outcome);
}

/// Counters and the send latency, for `/metrics`.
#[derive(Debug)]
pub struct PushMetrics {
    /// Messages handed to the bridge for a push.
    pub queued: AtomicU64,
    /// Of those, joined to a push already waiting or to an open window.
    pub coalesced: AtomicU64,
    /// Pushes the provider accepted.
    pub sent: AtomicU64,
    /// Pushes that were due but had nothing to send any more.
    pub skipped: AtomicU64,
    /// Sends refused: invalid token.
    pub failed_invalid_token: AtomicU64,
    /// Sends refused: rate limited.
    pub failed_rate_limited: AtomicU64,
    /// Sends failed: worth another try.
    pub failed_retryable: AtomicU64,
    /// Sends failed for good.
    pub failed_fatal: AtomicU64,
    /// Pushes given up after their tries.
    pub given_up: AtomicU64,
    /// Call pushes sent.
    pub calls: AtomicU64,
    /// Pushes waiting or in flight (a gauge).
    pub pending: AtomicU64,
    /// Time from a send's start to the provider's answer (seconds).
    pub latency: Histogram,
}

impl PushMetrics {
    fn new() -> PushMetrics {
        let z = || AtomicU64::new(0);
        PushMetrics {
            queued: z(),
            coalesced: z(),
            sent: z(),
            skipped: z(),
            failed_invalid_token: z(),
            failed_rate_limited: z(),
            failed_retryable: z(),
            failed_fatal: z(),
            given_up: z(),
            calls: z(),
            pending: z(),
            // 0.5 ms to 4 s.
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 14,
            )),
        }
    }

    /// Name, description and value of every counter (and the `pending`
    /// gauge, last).
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (
                "queued",
                "Messages handed to the push bridge",
                v(&self.queued),
            ),
            (
                "coalesced",
                "Messages joined to a push already waiting or to an open window",
                v(&self.coalesced),
            ),
            ("sent", "Pushes the provider accepted", v(&self.sent)),
            (
                "skipped",
                "Pushes due with nothing to send any more (acknowledged, read)",
                v(&self.skipped),
            ),
            (
                "failed_invalid_token",
                "Sends refused for an invalid token",
                v(&self.failed_invalid_token),
            ),
            (
                "failed_rate_limited",
                "Sends refused by a rate limit",
                v(&self.failed_rate_limited),
            ),
            (
                "failed_retryable",
                "Sends failed, tried again",
                v(&self.failed_retryable),
            ),
            (
                "failed_fatal",
                "Sends failed for good",
                v(&self.failed_fatal),
            ),
            (
                "given_up",
                "Pushes given up after their tries",
                v(&self.given_up),
            ),
            ("calls", "Call pushes sent", v(&self.calls)),
            ("pending", "Pushes waiting or in flight", v(&self.pending)),
        ]
    }

    fn count(&self, o: &Outcome) {
        let c = match o {
            Outcome::Delivered => &self.sent,
            Outcome::InvalidToken { .. } => &self.failed_invalid_token,
            Outcome::RateLimited { .. } => &self.failed_rate_limited,
            Outcome::Retryable { .. } => &self.failed_retryable,
            Outcome::Fatal { .. } => &self.failed_fatal,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

enum Command {
    Message {
        key: Key,
        seq: u64,
    },
    Cancel {
        key: Key,
        upto: u64,
    },
    Ring {
        device: String,
        call_id: String,
        target: Target,
        notification: Notification,
    },
    RingEnded {
        call_id: String,
    },
}

/// The providers, by app.
struct Providers {
    apns: HashMap<String, ApnsClient>,
    fcm: HashMap<String, FcmClient>,
}

impl Providers {
    async fn send(&self, target: &Target, n: &Notification) -> Outcome {
        match target {
            Target::Apns { topic, .. } => match self.apns.get(topic) {
                Some(c) => c.send(target, n).await,
                None => Outcome::Fatal {
                    reason: format!("no APNs app {topic:?} is configured"),
                },
            },
            Target::Fcm { project, .. } => match self.fcm.get(project) {
                Some(c) => c.send(target, n).await,
                None => Outcome::Fatal {
                    reason: format!("no FCM project {project:?} is configured"),
                },
            },
        }
    }
}

/// A running bridge.
#[derive(Clone)]
pub struct Bridge {
    tx: mpsc::UnboundedSender<Command>,
    metrics: Arc<PushMetrics>,
    apps: Arc<(Vec<String>, Vec<String>)>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Bridge {
    /// Starts the bridge for `config`'s apps; `None` if none is configured
    /// (it says so once).
    pub fn start(
        config: &PushConfig,
        source: Arc<dyn Source>,
    ) -> Result<Option<Bridge>, PushError> {
        if config.is_off() {
            tracing::info!("push bridge off: no APNs or FCM app in [push]");
            return Ok(None);
        }
        let mut providers = Providers {
            apns: HashMap::new(),
            fcm: HashMap::new(),
        };
        for a in &config.apns {
            providers.apns.insert(a.topic.clone(), ApnsClient::new(a)?);
        }
        for f in &config.fcm {
            providers.fcm.insert(f.project.clone(), FcmClient::new(f)?);
        }
        let apps = Arc::new((
            config.apns.iter().map(|a| a.topic.clone()).collect(),
            config.fcm.iter().map(|f| f.project.clone()).collect(),
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(PushMetrics::new());
        let task = Task {
            schedule: Schedule::new(config),
            providers: Arc::new(providers),
            source,
            metrics: metrics.clone(),
            limit: Arc::new(Semaphore::new(config.concurrency.max(1))),
            rings: HashMap::new(),
        };
        tokio::spawn(task.run(rx));
        tracing::info!(
            apns = ?apps.0,
            fcm = ?apps.1,
            "push bridge on"
        );
        Ok(Some(Bridge { tx, metrics, apps }))
    }

    /// Whether `target`'s app is configured here.
    pub fn serves(&self, target: &Target) -> bool {
        match target {
            Target::Apns { topic, .. } => self.apps.0.contains(topic),
            Target::Fcm { project, .. } => self.apps.1.contains(project),
        }
    }

    /// Entry `seq` for `device` in `collapse` (a conversation) may need a
    /// push, once it has gone unacknowledged for the due time.
    pub fn message(&self, device: &str, collapse: &str, seq: u64) {
        self.metrics.queued.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Command::Message {
            key: (device.to_owned(), collapse.to_owned()),
            seq,
        });
    }

    /// Entries up to `upto` of `collapse` were read (or acknowledged):
    /// a push waiting for them goes no more.
    pub fn cancel(&self, device: &str, collapse: &str, upto: u64) {
        let _ = self.tx.send(Command::Cancel {
            key: (device.to_owned(), collapse.to_owned()),
            upto,
        });
    }

    /// A call rings `device`: its push goes at once.
    pub fn ring(
        &self,
        device: &str,
        target: Target,
        call_id: &str,
        conversation: &str,
        video: bool,
    ) {
        let _ = self.tx.send(Command::Ring {
            device: device.to_owned(),
            call_id: call_id.to_owned(),
            notification: Notification::Call {
                call_id: call_id.to_owned(),
                conversation: conversation.to_owned(),
                video,
            },
            target,
        });
    }

    /// The call stopped ringing: a ring not sent yet is dropped, and the
    /// devices that were rung are told.
    pub fn ring_ended(&self, call_id: &str) {
        let _ = self.tx.send(Command::RingEnded {
            call_id: call_id.to_owned(),
        });
    }

    /// The counters.
    pub fn metrics(&self) -> &PushMetrics {
        &self.metrics
    }
}

struct Done {
    key: Key,
    upto: u64,
    sent: Option<(Target, Outcome)>,
}

struct Task {
    schedule: Schedule,
    providers: Arc<Providers>,
    source: Arc<dyn Source>,
    metrics: Arc<PushMetrics>,
    limit: Arc<Semaphore>,
    /// Calls that rang a device by push: call id -> the targets rung.
    rings: HashMap<String, Vec<Target>>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let started = Instant::now();
        let epoch = unix_ms();
        loop {
            let now = epoch + started.elapsed().as_millis() as u64;
            for f in self.schedule.poll(now) {
                self.fire(f.key, f.upto, done_tx.clone());
            }
            self.metrics
                .pending
                .store(self.schedule.pending() as u64, Ordering::Relaxed);
            let wait = self
                .schedule
                .next_due()
                .map(|at| Duration::from_millis(at.saturating_sub(now)))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                c = rx.recv() => {
                    let Some(c) = c else { return };
                    let now = epoch + started.elapsed().as_millis() as u64;
                    self.command(c, now);
                }
                Some(d) = done_rx.recv() => {
                    let now = epoch + started.elapsed().as_millis() as u64;
                    self.done(d, now);
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn command(&mut self, c: Command, now: u64) {
        match c {
            Command::Message { key, seq } => {
                if self.schedule.message(key, seq, now) {
                    self.metrics.coalesced.fetch_add(1, Ordering::Relaxed);
                }
            }
            Command::Cancel { key, upto } => self.schedule.cancel(&key, upto),
            Command::Ring {
                device,
                call_id,
                target,
                notification,
            } => {
                self.rings.entry(call_id).or_default().push(target.clone());
                self.send_call(device, target, notification);
            }
            Command::RingEnded { call_id } => {
                // Not to iOS: every VoIP push must be reported to CallKit
                // as a call; the app learns the end from the server when
                // the ring push makes it connect.
                let rung = self.rings.remove(&call_id).unwrap_or_default();
                for target in rung.into_iter().filter(|t| matches!(t, Target::Fcm { .. })) {
                    let n = Notification::CallEnded {
                        call_id: call_id.clone(),
                    };
                    self.send_call(String::new(), target, n);
                }
            }
        }
    }

    /// A call's push: once, at once (a ring is now or never).
    fn send_call(&self, device: String, target: Target, n: Notification) {
        let providers = self.providers.clone();
        let metrics = self.metrics.clone();
        let limit = self.limit.clone();
        tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let t0 = Instant::now();
            let o = providers.send(&target, &n).await;
            metrics.latency.observe(t0.elapsed().as_secs_f64());
            metrics.count(&o);
            if o == Outcome::Delivered {
                metrics.calls.fetch_add(1, Ordering::Relaxed);
            } else {
                tracing::warn!(
                    device,
                    outcome = o.label(),
                    "push: call push not delivered: {o:?}"
                );
            }
        });
    }

    fn fire(&self, key: Key, upto: u64, done: mpsc::UnboundedSender<Done>) {
        let source = self.source.clone();
        let providers = self.providers.clone();
        let metrics = self.metrics.clone();
        let limit = self.limit.clone();
        tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let sent = match source.prepare(&key.0, &key.1, upto) {
                None => None,
                Some((target, n)) => {
                    let t0 = Instant::now();
                    let o = providers.send(&target, &n).await;
                    metrics.latency.observe(t0.elapsed().as_secs_f64());
                    metrics.count(&o);
                    Some((target, o))
                }
            };
            let _ = done.send(Done { key, upto, sent });
        });
    }

    fn done(&mut self, d: Done, now: u64) {
        let mut r = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
        let jitter = f64::from(u32::from_le_bytes(r)) / (f64::from(u32::MAX) + 1.0);
        let outcome = d.sent.as_ref().map(|(_, o)| o);
        let next = self.schedule.done(&d.key, d.upto, outcome, now, jitter);
        let Some((target, o)) = d.sent else {
            self.metrics.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match next {
            Next::Retry(at) => {
                tracing::debug!(
                    device = d.key.0,
                    outcome = o.label(),
                    retry_in_ms = at.saturating_sub(now),
                    "push: trying again"
                );
            }
            Next::GivenUp if o != Outcome::Delivered => {
                self.metrics.given_up.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device = d.key.0, "push given up: {o:?}");
                self.source.outcome(&d.key.0, &d.key.1, d.upto, &target, &o);
            }
            _ => self.source.outcome(&d.key.0, &d.key.1, d.upto, &target, &o),
        }
    }
}
