//! The SIP API: Sylk Pushserver's HTTP API for SIP proxies, PBXs and WebRTC servers, delivered
//! through the core. The HTTP front (`fronts/http/sip.rs`) serves the routes, checks the caller's
//! network and reads the body; this module parses the protocol and formats its replies.
//!
//! | Route | What |
//! |---|---|
//! | `POST /push` | v1: push one event to the token in the request |
//! | `POST /v2/tokens/{account}` | store a device of the account |
//! | `DELETE /v2/tokens/{account}` | remove one |
//! | `POST /v2/tokens/{account}/push[/{device}]` | push one event to every stored device of the account, or one |
//!
//! Answers are `{"code", "description", "data"}` with the HTTP status equal to `code`, as Sylk
//! answers (and the v2 store and delete echo the record, and their 404s are
//! `{"result": …}`, as Sylk's are). Per device, `data` holds the provider's verdict: 200
//! delivered, 410 the token is dead (Sylk's normalisation of APNs' and FCM's dead-token
//! answers), 202 not delivered yet but in the retry queue (for as long as the push can matter:
//! the app's `call_ttl_secs` for calls and cancels), 503 neither delivered nor queued, 500
//! pushgate's own fault (its credentials). Stored devices whose token is dead are deleted and
//! their code becomes 200, as Sylk does. An app with `wait_for_delivery = false` is answered 202
//! at once and delivered behind the answer.
//!
//! Every request runs in a `sip` span carrying the SIP Call-ID, so a push and its outcome are
//! found in the logs by the Call-ID the SIP server logged too.

pub mod apps;
pub mod remote_log;
pub mod request;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::SipConfig;
use crate::core::delivery::{self, Outcome};
use crate::core::target::Target;
use crate::core::{Core, now_ms};
use crate::metrics::METRICS;
use crate::storage::{SipDevice, SipSaved};
pub use apps::{App, Apps, Tokens};
use remote_log::RemoteLog;
use request::{Call, Event, Invalid, Platform};

/// An answer: HTTP status and JSON body.
pub type Answer = (u16, Value);

/// `{"code", "description", "data"}` with the status `code`.
pub fn answer(code: u16, description: &str, data: Value) -> Answer {
    (
        code,
        json!({ "code": code, "description": description, "data": data }),
    )
}

fn invalid(bad: &Invalid) -> Answer {
    answer(400, &bad.0, json!({}))
}

fn unknown_app(app_id: &str, platform: Platform) -> Answer {
    let platform = match platform {
        Platform::Apple => "Apple",
        Platform::Firebase => "Firebase",
    };
    answer(
        404,
        &format!("{platform} {app_id} app is not configured"),
        json!({}),
    )
}

/// What became of one device's push.
#[derive(Debug, Clone)]
pub struct PushResult {
    pub code: u16,
    pub reason: String,
}

impl PushResult {
    fn new(code: u16, reason: &str) -> Self {
        PushResult {
            code,
            reason: reason.to_owned(),
        }
    }

    fn of(outcome: Result<Outcome, crate::error::Fault>) -> Self {
        match outcome {
            Ok(Outcome::Delivered | Outcome::Coalesced) => PushResult::new(200, "OK"),
            Ok(Outcome::Queued) => PushResult::new(202, "not delivered yet: queued for retry"),
            Ok(Outcome::DeadToken) => PushResult::new(410, "the token is no longer valid"),
            Ok(Outcome::Transient) | Err(_) => PushResult::new(
                503,
                "the provider is unavailable and the push could not be queued",
            ),
            Ok(Outcome::OurFault) => PushResult::new(
                500,
                "the provider refused pushgate's credentials or request",
            ),
        }
    }

    /// The per-device `data` object, with Sylk's keys.
    fn data(&self, app: &App, call_id: &str, token: &str, device_id: Option<&str>) -> Value {
        json!({
            "code": self.code,
            "reason": self.reason,
            "platform": app.platform.label(),
            "app_id": app.id,
            "call_id": call_id,
            "token": token,
            "device_id": device_id,
        })
    }
}

/// The front's state: the configured apps and the remote logger.
pub struct Sip {
    apps: Apps,
    config: SipConfig,
    remote_log: Option<RemoteLog>,
}

impl Default for Sip {
    fn default() -> Self {
        Sip::new(SipConfig::default())
    }
}

impl Sip {
    /// Must run inside the runtime when an app logs remotely (it starts the poster).
    pub fn new(config: SipConfig) -> Self {
        let apps = Apps::from_config(&config);
        let remote_log = apps
            .iter()
            .any(|a| !a.log_urls.is_empty())
            .then(RemoteLog::start);
        Sip {
            apps,
            config,
            remote_log,
        }
    }

    pub fn config(&self) -> &SipConfig {
        &self.config
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.config.answer_timeout_secs)
    }

    /// Waits (up to `timeout`) until no push accepted with 202 is still being delivered, so
    /// that a shutdown loses none.
    pub async fn drain(&self, timeout: Duration) {
        let all = async {
            for app in self.apps.iter() {
                let _ = app.in_flight.acquire_many(app.max_concurrent).await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!("SIP pushes still in flight at shutdown");
        }
    }

    /// v1 `POST /push`.
    pub async fn push(self: &Arc<Self>, core: &Arc<Core>, body: &[u8]) -> Answer {
        let started = Instant::now();
        let push = match request::push(body) {
            Ok(p) => p,
            Err(bad) => return self.count("unknown", "invalid", started, invalid(&bad)),
        };
        let call_id = push.call.call_id.clone();
        let span = tracing::info_span!("sip", call_id = ?call_id, app = ?push.device.app_id);
        async {
            let Some(app) = self
                .apps
                .get(&push.device.app_id, push.device.platform)
                .cloned()
            else {
                tracing::info!("no app configured for the request");
                let reply = unknown_app(&push.device.app_id, push.device.platform);
                return self.count("unknown", "invalid", started, reply);
            };
            let (event, tokens) = match app
                .event(&push.call)
                .and_then(|e| Ok((e, app.tokens(&push.device.token)?)))
            {
                Ok(ok) => ok,
                Err(bad) => return self.count(&app.id, "invalid", started, invalid(&bad)),
            };
            let Ok(permit) = app.in_flight.clone().try_acquire_owned() else {
                tracing::warn!("the app's pushes in flight are at max_concurrent");
                let reply = answer(503, "too many pushes in flight for this app", json!({}));
                return self.count(&app.id, event.label(), started, reply);
            };
            let request: Value = serde_json::from_slice(body).unwrap_or_default();
            let work = Work {
                sip: self.clone(),
                core: core.clone(),
                app: app.clone(),
                call: push.call,
                event,
                tokens,
                raw_token: push.device.token,
                device_id: push.device.device_id,
                stored: None,
            };
            if !app.wait_for_delivery {
                let deadline = self.deadline();
                tokio::spawn(
                    async move {
                        let (_, data) = work.run(deadline, permit).await;
                        work.sip.log_remote(&work.app, &request, &data);
                    }
                    .in_current_span(),
                );
                let reply = answer(202, "accepted for delivery", json!({}));
                return self.count(&app.id, event.label(), started, reply);
            }
            let (result, data) = work.run(self.deadline(), permit).await;
            // A token that can never be one is the request's fault: said as a validation error.
            let description = match result.code {
                400 => result.reason.as_str(),
                _ => "push notification response",
            };
            let reply = answer(result.code, description, data);
            self.log_remote(&app, &request, &reply.1);
            self.count(&app.id, event.label(), started, reply)
        }
        .instrument(span)
        .await
    }

    /// v2 `POST /v2/tokens/{account}`.
    pub async fn store(&self, core: &Core, account: &str, body: &[u8]) -> Answer {
        let account = match request::account(account) {
            Ok(a) => a,
            Err(bad) => return invalid(&bad),
        };
        let stored = match request::store(body) {
            Ok(s) => s,
            Err(bad) => return invalid(&bad),
        };
        let d = &stored.device;
        let Some(app) = self.apps.get(&d.app_id, d.platform) else {
            return unknown_app(&d.app_id, d.platform);
        };
        let tokens = match app.tokens(&d.token) {
            Ok(t) => t,
            Err(bad) => return invalid(&bad),
        };
        // Both tokens must be tokens of the app's provider, now rather than at the first call.
        if let Some((_, provider)) = core.providers.get(app.provider.as_str()) {
            for token in std::iter::once(&tokens.token).chain(tokens.voip.as_ref()) {
                let device = pushgate_providers::Device {
                    provider: app.provider.clone(),
                    token: pushgate_providers::DeviceToken::new(token.clone()),
                    second_token: None,
                    webpush_keys: None,
                };
                if let Err(e) = provider.validate(&device) {
                    return invalid(&Invalid(format!("'token' {e}")));
                }
            }
        }
        let device = SipDevice {
            account: account.to_owned(),
            app_id: d.app_id.clone(),
            device_id: stored.device_id.clone(),
            platform: d.platform.label().to_owned(),
            token: tokens.token,
            voip_token: tokens.voip,
            silent: stored.silent,
            user_agent: stored.user_agent.clone(),
        };
        let max = self.config.max_devices_per_account;
        match core.store.save_sip_device(&device, now_ms(), max).await {
            Ok(SipSaved::Saved) => {
                tracing::info!(account = ?account, app = ?d.app_id, "SIP device stored");
                (
                    200,
                    json!({
                        "app-id": d.app_id,
                        "platform": d.platform.label(),
                        "token": d.token,
                        "device-id": stored.device_id,
                        "silent": stored.silent,
                        "user-agent": stored.user_agent,
                    }),
                )
            }
            Ok(SipSaved::AccountFull) => answer(
                409,
                &format!("the account has the most devices it may have ({max})"),
                json!({}),
            ),
            Err(e) => {
                tracing::warn!("cannot store a SIP device: {e}");
                answer(503, "storage unavailable, try again", json!({}))
            }
        }
    }

    /// v2 `DELETE /v2/tokens/{account}`.
    pub async fn remove(&self, core: &Core, account: &str, body: &[u8]) -> Answer {
        let account = match request::account(account) {
            Ok(a) => a,
            Err(bad) => return invalid(&bad),
        };
        let remove = match request::remove(body) {
            Ok(r) => r,
            Err(bad) => return invalid(&bad),
        };
        let store = &core.store;
        let removed = store
            .remove_sip_device(account, &remove.app_id, &remove.device_id)
            .await;
        match removed {
            Ok(true) => {
                tracing::info!(account = ?account, app = ?remove.app_id, "SIP device removed");
                (
                    200,
                    json!({ "app-id": remove.app_id, "device-id": remove.device_id }),
                )
            }
            Ok(false) => match store.has_sip_devices(account).await {
                Ok(true) => (404, json!({ "result": "Not found" })),
                Ok(false) => (404, json!({ "result": "User not found" })),
                Err(e) => storage_down(&e),
            },
            Err(e) => storage_down(&e),
        }
    }

    /// v2 `POST /v2/tokens/{account}/push[/{device}]`.
    pub async fn push_account(
        self: &Arc<Self>,
        core: &Arc<Core>,
        account: &str,
        device: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let started = Instant::now();
        let account = match request::account(account) {
            Ok(a) => a,
            Err(bad) => return self.count("unknown", "invalid", started, invalid(&bad)),
        };
        let call = match request::call(body) {
            Ok(c) => c,
            Err(bad) => return self.count("unknown", "invalid", started, invalid(&bad)),
        };
        let span = tracing::info_span!("sip", call_id = ?call.call_id, account = ?account);
        self.fan_out(core, account, device, call, body, started)
            .instrument(span)
            .await
    }

    async fn fan_out(
        self: &Arc<Self>,
        core: &Arc<Core>,
        account: &str,
        only: Option<&str>,
        call: Call,
        body: &[u8],
        started: Instant,
    ) -> Answer {
        let max = self.config.max_devices_per_account;
        let devices = match core.store.sip_devices(account, max).await {
            Ok(d) => d,
            Err(e) => return storage_down(&e),
        };
        if devices.is_empty() {
            let reply = answer(
                404,
                "Push request was not sent: user not found",
                json!({ "account": account }),
            );
            return self.count("unknown", "not_found", started, reply);
        }
        let only = only.and_then(request::device_id);
        let devices: Vec<SipDevice> = devices
            .into_iter()
            .filter(|d| only.as_deref().is_none_or(|id| d.device_id == id))
            .collect();
        if devices.is_empty() {
            let reply = answer(
                404,
                "Push request was not sent: device not found",
                json!({ "device_id": only }),
            );
            return self.count("unknown", "not_found", started, reply);
        }
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        let deadline = self.deadline();
        let mut pushes = tokio::task::JoinSet::new();
        let mut at_once = Vec::new();
        for (i, stored) in devices.into_iter().enumerate() {
            match self.work_for(core, &call, stored) {
                Ok((work, permit)) => {
                    let request = request.clone();
                    pushes.spawn(
                        async move {
                            let (result, data) = work.run(deadline, permit).await;
                            work.sip.log_remote(&work.app, &request, &data);
                            (i, work.app.id.clone(), result, data)
                        }
                        .in_current_span(),
                    );
                }
                Err((app, result, data)) => at_once.push((i, app, result, data)),
            }
        }
        let mut results = at_once;
        while let Some(joined) = pushes.join_next().await {
            match joined {
                Ok(done) => results.push(done),
                Err(e) => tracing::error!("a SIP push task failed: {e}"),
            }
        }
        results.sort_by_key(|(i, ..)| *i);
        // The best outcome is the request's: 200 if any device got it.
        let code = results
            .iter()
            .map(|(_, _, r, _)| r.code)
            .min_by_key(|c| match c {
                200 => 0,
                202 => 1,
                _ => 2,
            })
            .unwrap_or(404);
        // Counted per device, with the device's own code (not the request's).
        for (_, app, result, _) in &results {
            METRICS
                .sip_pushes
                .with_label_values(&[
                    app.as_str(),
                    call.event.map_or("none", Event::label),
                    &result.code.to_string(),
                ])
                .inc();
        }
        METRICS
            .sip_push_seconds
            .with_label_values(&[call.event.map_or("none", Event::label)])
            .observe(started.elapsed().as_secs_f64());
        let data: Vec<Value> = results.into_iter().map(|(_, _, _, d)| d).collect();
        tracing::info!(code, devices = data.len(), "SIP push answered");
        answer(code, "push notification responses", Value::Array(data))
    }

    /// The push to one stored device, or its answer when there is none to make.
    #[allow(clippy::type_complexity)]
    fn work_for(
        self: &Arc<Self>,
        core: &Arc<Core>,
        call: &Call,
        stored: SipDevice,
    ) -> Result<(Work, OwnedSemaphorePermit), (String, PushResult, Value)> {
        let platform = match stored.platform.as_str() {
            "apple" => Platform::Apple,
            _ => Platform::Firebase,
        };
        let refused = |code: u16, reason: &str| {
            let data = json!({
                "code": code, "reason": reason, "platform": stored.platform,
                "app_id": stored.app_id, "call_id": call.call_id, "device_id": stored.device_id,
            });
            (stored.app_id.clone(), PushResult::new(code, reason), data)
        };
        let Some(app) = self.apps.get(&stored.app_id, platform).cloned() else {
            // A stored app id no section configures any more is no metric label.
            let (_, result, data) = refused(404, "the device's app is not configured");
            return Err(("unknown".to_owned(), result, data));
        };
        let event = app.event(call).map_err(|bad| refused(400, &bad.0))?;
        let permit = app
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| refused(503, "too many pushes in flight for this app"))?;
        let tokens = Tokens {
            token: stored.token.clone(),
            voip: stored.voip_token.clone(),
        };
        let raw_token = match &tokens.voip {
            Some(voip) => format!("{voip}-{}", tokens.token),
            None => tokens.token.clone(),
        };
        Ok((
            Work {
                sip: self.clone(),
                core: core.clone(),
                app,
                call: call.clone(),
                event,
                tokens,
                raw_token,
                device_id: Some(stored.device_id.clone()),
                stored: Some(stored),
            },
            permit,
        ))
    }

    fn log_remote(&self, app: &App, request: &Value, response: &Value) {
        if let Some(log) = &self.remote_log {
            log.log(&app.log_urls, request, response);
        }
    }

    fn count(&self, app: &str, event: &str, started: Instant, reply: Answer) -> Answer {
        METRICS
            .sip_pushes
            .with_label_values(&[app, event, &reply.0.to_string()])
            .inc();
        METRICS
            .sip_push_seconds
            .with_label_values(&[event])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(code = reply.0, "SIP push answered");
        reply
    }
}

/// One push to one device, ready to run.
struct Work {
    sip: Arc<Sip>,
    core: Arc<Core>,
    app: Arc<App>,
    call: Call,
    event: Event,
    tokens: Tokens,
    /// The token as the caller gave it (or stored), for the answer.
    raw_token: String,
    device_id: Option<String>,
    /// The stored device, for removal when its token is dead.
    stored: Option<SipDevice>,
}

impl Work {
    /// Delivers by `deadline` (queueing for retry what fails for now), holding `permit`.
    async fn run(&self, deadline: Instant, permit: OwnedSemaphorePermit) -> (PushResult, Value) {
        let (device, owns_its_token) = self.app.device(&self.tokens, self.event);
        let token = match (&device.second_token, self.event.is_call()) {
            (Some(voip), true) => voip.clone(),
            _ => device.token.clone(),
        };
        let core = &self.core;
        let known_dead = core
            .dead_tokens
            .contains(&[self.app.provider.as_str(), token.as_str()]);
        let mut result = if known_dead {
            PushResult::new(410, "the token is no longer valid")
        } else if let Some(bad) = core
            .providers
            .get(self.app.provider.as_str())
            .and_then(|(_, p)| p.validate(&device).err())
        {
            PushResult::new(400, &format!("invalid token: {bad}"))
        } else {
            let notification = self.app.notification(self.event, &self.call);
            let span = tracing::info_span!("deliver", provider = %self.app.provider);
            let outcome = delivery::deliver(core, Target::Named(&device), notification, deadline)
                .instrument(span)
                .await;
            PushResult::of(outcome)
        };
        drop(permit);
        if result.code == 410
            && let Some(stored) = &self.stored
        {
            result = self
                .remove_dead(stored, token.as_str(), owns_its_token)
                .await;
        }
        if result.code == 200 {
            tracing::debug!(
                code = result.code,
                event = self.event.label(),
                "SIP push done"
            );
        } else {
            tracing::info!(code = result.code, reason = %result.reason, event = self.event.label(), "SIP push not delivered");
        }
        let data = result.data(
            &self.app,
            &self.call.call_id,
            &self.raw_token,
            self.device_id.as_deref(),
        );
        (result, data)
    }

    /// A stored device whose token is dead is removed and its code becomes 200, as Sylk does;
    /// unless the dead verdict was for a token the device does not own for this push.
    async fn remove_dead(
        &self,
        stored: &SipDevice,
        token: &str,
        owns_its_token: bool,
    ) -> PushResult {
        if !owns_its_token {
            return PushResult::new(410, "the token was refused for this kind of push");
        }
        match self.core.store.remove_dead_sip_device(stored, token).await {
            Ok(_) => {
                tracing::info!(device = ?stored, "dead token: SIP device removed");
                PushResult::new(200, "the token is no longer valid: device removed")
            }
            Err(e) => {
                tracing::warn!("cannot remove a SIP device with a dead token: {e}");
                PushResult::new(410, "the token is no longer valid")
            }
        }
    }
}

fn storage_down(e: &crate::storage::StoreError) -> Answer {
    tracing::warn!("SIP API: storage unavailable: {e}");
    answer(503, "storage unavailable, try again", json!({}))
}
