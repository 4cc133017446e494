//! Commands, in two steps (as mini-redis does): a message on a command topic is parsed into a typed [`Command`]
//! (or a [`Rejection`] carrying every error), then the controller applies it.
//!
//! A `prompts/set` update is validated completely, then its texts are embedded by the text tower on tokio's
//! blocking pool; the controller keeps handling windows, ticks and other commands meanwhile and applies the new
//! prompt set when the embedding comes back. Updates that arrive while one is being embedded wait in a queue of
//! [`MAX_QUEUED_UPDATES`] (each validated when its turn comes); when that is full an update is rejected with a
//! `cmd/response` saying so.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Deserialize;

use super::Controller;
use super::payloads::{self, CmdResult, PromptsOrigin};
use super::reload::{RELOAD_QUEUE, ReloadOrigin, ReloadRequest};
use crate::events::EndReason;
use crate::labels::{PromptCache, PromptSet, embed_with_background};
use crate::labels::{PromptConfig, check_prompt};
use crate::modality::Modality;
use crate::publish::mqtt::Incoming;
use crate::publish::{CommandTopic, OutMessage, Topics};

/// Largest `prompts/set` payload, bytes.
pub const MAX_UPDATE_BYTES: usize = 256 * 1024;
/// Most prompts a daemon holds.
pub const MAX_PROMPTS: usize = 256;
/// Prompt updates that may wait while one is being embedded; a further one is rejected.
pub const MAX_QUEUED_UPDATES: usize = 4;

/// A `prompts/set` request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptUpdate {
    #[serde(default)]
    upsert: Vec<PromptConfig>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    rev_expected: Option<u64>,
    #[serde(default)]
    request_id: Option<String>,
    /// Set when the update comes from a configuration reload (the file's prompts), not from `prompts/set`.
    #[serde(skip)]
    pub(super) reload: Option<ReloadRequest>,
}

impl PromptUpdate {
    /// The update that turns `current` into exactly `wanted`: prompts that are new or differ are upserted, prompts
    /// no longer wanted are deleted.
    fn replace_all(current: &PromptSet, wanted: Vec<PromptConfig>) -> Self {
        let delete = current
            .prompts()
            .iter()
            .filter(|p| !wanted.iter().any(|w| w.id == p.id))
            .map(|p| p.id.clone())
            .collect();
        let upsert = wanted
            .into_iter()
            .filter(|w| !current.prompts().iter().any(|p| p.id == w.id && p.config == *w))
            .collect();
        Self {
            upsert,
            delete,
            rev_expected: None,
            request_id: None,
            reload: None,
        }
    }

    /// Nothing to upsert or delete.
    fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.delete.is_empty()
    }
}

/// A `cmd` request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CmdRequest {
    cmd: String,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    args: serde_json::Value,
}

/// What a switch command switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// `…/sensor/{sensor}/enabled/set`.
    Sensor,
    /// `…/label/{label}/enabled/set`.
    Label,
}

/// A command, parsed and ready to apply.
#[derive(Debug)]
pub enum Command {
    /// Home Assistant said `online` on `homeassistant/status`.
    HomeAssistantOnline,
    /// `prompts/set`.
    PromptsSet(PromptUpdate),
    /// `cmd` `rebirth`.
    Rebirth {
        /// Echoed.
        request_id: Option<String>,
    },
    /// `cmd` `get_info`.
    GetInfo {
        /// Echoed.
        request_id: Option<String>,
    },
    /// `cmd` `reload`: the configuration file is read again.
    Reload {
        /// Echoed.
        request_id: Option<String>,
    },
    /// `…/enabled/set`.
    SetEnabled {
        /// Sensor or label.
        switch: Switch,
        /// Its name.
        name: String,
        /// ON.
        on: bool,
    },
}

/// A command refused before it was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The `command` of the response.
    pub command: String,
    /// Echoed.
    pub request_id: Option<String>,
    /// Every error.
    pub errors: Vec<String>,
    /// A refused prompt update (counted and reported on `config/state` too).
    pub prompt_update: bool,
}

impl Rejection {
    fn new(command: impl Into<String>, request_id: Option<String>, error: String) -> Self {
        Self {
            command: command.into(),
            request_id,
            errors: vec![error],
            prompt_update: false,
        }
    }

    fn update(request_id: Option<String>, errors: Vec<String>) -> Self {
        Self {
            command: "prompts/set".into(),
            request_id,
            errors,
            prompt_update: true,
        }
    }
}

impl Command {
    /// Parses a message received on a subscribed topic. `Ok(None)`: not a command (an empty payload clearing a
    /// retained message, Home Assistant going offline, a topic that is not ours).
    pub fn parse(topics: &Topics, ha_status: &str, msg: &Incoming) -> Result<Option<Command>, Rejection> {
        if msg.topic == ha_status {
            return Ok(msg
                .payload
                .eq_ignore_ascii_case(b"online")
                .then_some(Command::HomeAssistantOnline));
        }
        let Some(topic) = topics.command(&msg.topic) else {
            return Ok(None);
        };
        if msg.payload.is_empty() {
            // Someone cleared a retained message on a command topic: not a command.
            tracing::debug!(topic = %msg.topic, "Empty command payload ignored.");
            return Ok(None);
        }
        if msg.retain {
            let error = format!(
                "{}: retained commands are ignored (publish commands without the retain flag, and clear this one with an empty retained message)",
                msg.topic
            );
            return Err(Rejection::new(topic.name(), None, error));
        }
        let command = match topic {
            CommandTopic::PromptsSet => Command::PromptsSet(parse_prompt_update(&msg.payload)?),
            CommandTopic::Cmd => parse_cmd(&msg.payload)?,
            CommandTopic::SensorEnabled(ref name) => parse_switch(&topic, Switch::Sensor, name, &msg.payload)?,
            CommandTopic::LabelEnabled(ref name) => parse_switch(&topic, Switch::Label, name, &msg.payload)?,
        };
        Ok(Some(command))
    }
}

fn parse_prompt_update(payload: &[u8]) -> Result<PromptUpdate, Rejection> {
    if payload.len() > MAX_UPDATE_BYTES {
        let e = format!("payload is {} bytes; the limit is {MAX_UPDATE_BYTES}", payload.len());
        return Err(Rejection::update(None, vec![e]));
    }
    serde_json::from_slice(payload).map_err(|e| {
        // Echo the request id if the JSON is at least an object with one.
        let rid = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("request_id").and_then(|r| r.as_str()).map(str::to_owned));
        Rejection::update(rid, vec![format!("not a valid prompt update: {e}")])
    })
}

fn parse_cmd(payload: &[u8]) -> Result<Command, Rejection> {
    let cmd: CmdRequest = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new("cmd", None, format!("not a valid command: {e}")))?;
    let (label, request_id) = (format!("cmd/{}", cmd.cmd), cmd.request_id);
    let no_args = cmd.args.is_null() || cmd.args.as_object().is_some_and(serde_json::Map::is_empty);
    match cmd.cmd.as_str() {
        _ if !no_args => Err(Rejection::new(label, request_id, format!("{} takes no args", cmd.cmd))),
        "rebirth" => Ok(Command::Rebirth { request_id }),
        "get_info" => Ok(Command::GetInfo { request_id }),
        "reload" => Ok(Command::Reload { request_id }),
        other => {
            let e = format!("unknown command {other:?}; known: rebirth, get_info, reload");
            Err(Rejection::new(label, request_id, e))
        }
    }
}

fn parse_switch(topic: &CommandTopic, switch: Switch, name: &str, payload: &[u8]) -> Result<Command, Rejection> {
    let on = match String::from_utf8_lossy(payload).trim().to_ascii_uppercase().as_str() {
        "ON" => true,
        "OFF" => false,
        _ => {
            let e = format!("payload must be ON or OFF, got {:?}", truncate(payload));
            return Err(Rejection::new(topic.name(), None, e));
        }
    };
    Ok(Command::SetEnabled {
        switch,
        name: name.to_owned(),
        on,
    })
}

fn truncate(payload: &[u8]) -> String {
    let s = String::from_utf8_lossy(payload);
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.into_owned()
    }
}

/// What the blocking pool hands back: the embedded prompts and the cache it used.
pub(super) type Embedded = (Result<(PromptSet, Vec<PromptConfig>), String>, PromptCache);

/// A prompt update whose texts are being embedded.
pub(super) struct PendingUpdate {
    handle: tokio::task::JoinHandle<Embedded>,
    update: PromptUpdate,
}

/// Stores the base64 exemplars of `configs` in `store` and puts their paths in their place (on the blocking pool;
/// the data is at most the update's 256 KiB).
fn store_inline_exemplars(
    mut configs: Vec<PromptConfig>,
    store: Option<&std::path::Path>,
) -> Result<Vec<PromptConfig>, String> {
    for c in &mut configs {
        let inline = c
            .exemplars
            .iter()
            .any(|e| matches!(e, crate::labels::exemplar::ExemplarSpec::File(f) if f.base64.is_some()));
        if !inline {
            continue;
        }
        let dir = store.ok_or_else(|| format!("prompt {:?}: base64 exemplars need a state directory", c.id))?;
        c.exemplars =
            crate::labels::exemplar::store_inline(&c.exemplars, dir).map_err(|e| format!("prompt {:?}: {e}", c.id))?;
    }
    Ok(configs)
}

/// Completes when the pending update's embedding is done; never while there is none.
pub(super) async fn embedded(pending: &mut Option<PendingUpdate>) -> Result<Embedded, tokio::task::JoinError> {
    match pending {
        Some(p) => (&mut p.handle).await,
        None => std::future::pending().await,
    }
}

impl Controller {
    /// Parses and applies one message from a command topic.
    pub(super) fn on_command(&mut self, msg: &Incoming) {
        let ha_status = format!("{}/status", self.s.mqtt.homeassistant.discovery_prefix);
        match Command::parse(&self.s.topics, &ha_status, msg) {
            Ok(Some(command)) => self.apply(command),
            Ok(None) => {}
            Err(rejection) => self.reject(rejection),
        }
    }

    /// A reload's prompts: the active set becomes exactly `wanted` (embedded like a `prompts/set` update); the
    /// reload is done once it is live.
    pub(super) fn replace_prompts(&mut self, wanted: Vec<PromptConfig>, request: ReloadRequest) {
        let mut update = PromptUpdate::replace_all(&self.prompts(), wanted);
        if update.is_empty() {
            self.reload_done(&request);
        } else {
            update.reload = Some(request);
            self.queue_prompt_update(update);
        }
    }

    /// Refuses a prompt update: one from a reload is reported as the reload's failure.
    fn reject_update(&mut self, update: PromptUpdate, errors: Vec<String>) {
        match update.reload {
            Some(request) => self.on_reload(super::reload::Reload::Rejected { request, errors }),
            None => self.reject(Rejection::update(update.request_id, errors)),
        }
    }

    fn reject(&mut self, r: Rejection) {
        if r.prompt_update {
            self.s
                .stats
                .prompt_updates_rejected_total
                .fetch_add(1, Ordering::Relaxed);
            let rid = r.request_id.as_deref();
            self.publish_config_state(Err(&r.errors), PromptsOrigin::PromptsSet, rid);
        }
        self.respond(&r.command, r.request_id.as_deref(), Err(r.errors));
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::HomeAssistantOnline => {
                if self.s.mqtt.homeassistant.enabled {
                    tracing::info!("Home Assistant is online: republishing discovery and state.");
                    self.publish_discovery();
                    self.s.outbox.republish_retained(&self.s.topics.availability());
                }
            }
            Command::PromptsSet(update) => self.queue_prompt_update(update),
            Command::Rebirth { request_id } => {
                self.publish_discovery();
                let republished = self.s.outbox.republish_retained(&self.s.topics.availability());
                self.respond(
                    "cmd/rebirth",
                    request_id.as_deref(),
                    Ok(CmdResult::Republished { republished }),
                );
            }
            Command::GetInfo { request_id } => {
                let info = Box::new(self.info());
                self.respond("cmd/get_info", request_id.as_deref(), Ok(CmdResult::Info(info)));
            }
            Command::SetEnabled { switch, name, on } => self.set_enabled(switch, &name, on),
            Command::Reload { request_id } => self.request_reload(request_id),
        }
    }

    /// Hands a `cmd` `reload` to the supervisor, which answers through [`Controller::on_reload`].
    fn request_reload(&mut self, request_id: Option<String>) {
        let request = ReloadRequest::new(ReloadOrigin::Command, request_id);
        let refused = match &self.s.reload_requests {
            None => Some("this daemon cannot reload (it was not started from a configuration file)".to_owned()),
            Some(tx) => match tx.try_send(request.clone()) {
                Ok(()) => None,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Some(format!(
                    "{RELOAD_QUEUE} reloads are already waiting; send this one again once they are answered"
                )),
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Some("the daemon is stopping".to_owned()),
            },
        };
        if let Some(e) = refused {
            self.respond("cmd/reload", request.request_id.as_deref(), Err(vec![e]));
        }
    }

    /// Publishes a `cmd-response/1`.
    pub(super) fn respond(&self, command: &str, request_id: Option<&str>, result: Result<CmdResult, Vec<String>>) {
        if let Err(errors) = &result {
            tracing::warn!(command, errors = ?errors, "Command rejected.");
        }
        let payload = payloads::cmd_response(command, request_id, result, self.wall_ts());
        let topic = self.s.topics.cmd_response();
        self.send(payloads::json_message(topic, &payload, OutMessage::response));
    }

    fn set_enabled(&mut self, switch: Switch, name: &str, on: bool) {
        let command = match switch {
            Switch::Sensor => CommandTopic::SensorEnabled(name.to_owned()),
            Switch::Label => CommandTopic::LabelEnabled(name.to_owned()),
        }
        .name();
        match switch {
            Switch::Sensor => {
                let Some(info) = self.s.sensors.iter().find(|s| s.name == name).cloned() else {
                    self.respond(&command, None, Err(vec![format!("no sensor is named {name:?}")]));
                    return;
                };
                info.enabled.store(on, Ordering::SeqCst);
                if on {
                    self.s.state.state.disabled_sensors.remove(name);
                } else {
                    self.s.state.state.disabled_sensors.insert(name.to_owned());
                    self.end_where(EndReason::Disabled, |s, _| s == name);
                }
                self.publish_sensor_state(&info);
            }
            Switch::Label => {
                let fused = self.fusions.iter().any(|f| f.config.id == name);
                if !fused && !self.prompts().labels().any(|p| p.id == name) {
                    self.respond(&command, None, Err(vec![format!("no label is named {name:?}")]));
                    return;
                }
                if on {
                    self.s.state.state.disabled_labels.remove(name);
                } else {
                    self.s.state.state.disabled_labels.insert(name.to_owned());
                    self.end_where(EndReason::Disabled, |_, l| l == name);
                }
                self.push(OutMessage::state(
                    self.s.topics.label_enabled_state(name),
                    super::on_off(on),
                ));
                self.publish_prompts_state();
            }
        }
        tracing::info!(target_name = name, enabled = on, "Switched.");
        self.save_state();
        let enabled = super::on_off(on);
        self.respond(&command, None, Ok(CmdResult::Enabled { enabled }));
    }

    fn queue_prompt_update(&mut self, update: PromptUpdate) {
        if self.pending.is_none() {
            self.start_prompt_update(update);
        } else if self.queued.len() >= MAX_QUEUED_UPDATES {
            let e = format!(
                "{MAX_QUEUED_UPDATES} prompt updates are already waiting for the one being embedded; send this one again once they are answered"
            );
            self.reject_update(update, vec![e]);
        } else {
            tracing::debug!(
                waiting = self.queued.len() + 1,
                "A prompt update waits for the one being embedded."
            );
            self.queued.push_back(update);
        }
    }

    /// Validates an update and starts embedding its texts on the blocking pool.
    fn start_prompt_update(&mut self, update: PromptUpdate) {
        let errors = self.check_update(&update);
        if !errors.is_empty() {
            self.reject_update(update, errors);
            return;
        }
        // The new list: deletions, then upserts in place or appended.
        let mut configs: Vec<PromptConfig> = self.prompts().prompts().iter().map(|p| p.config.clone()).collect();
        configs.retain(|c| !update.delete.contains(&c.id));
        for u in &update.upsert {
            match configs.iter_mut().find(|c| c.id == u.id) {
                Some(c) => *c = u.clone(),
                None => configs.push(u.clone()),
            }
        }
        let (Some(text), Ok(runtime)) = (self.s.text.clone(), tokio::runtime::Handle::try_current()) else {
            let e = "the text tower is not loaded (start the daemon with at least one prompt in its configuration)";
            self.reject_update(update, vec![e.into()]);
            return;
        };
        let mut cache = self.s.cache.take();
        let background = self.s.background.clone();
        let handle = runtime.spawn_blocking(move || {
            let embedded = store_inline_exemplars(configs, text.exemplar_store.as_deref()).and_then(|list| {
                embed_with_background(&list, &background, &text.embedder(), &mut cache)
                    .map(|set| (set, list))
                    .map_err(|e| e.to_string())
            });
            (embedded, cache)
        });
        self.pending = Some(PendingUpdate { handle, update });
    }

    /// The pending update's embedding is back: applies it (or rejects it), then starts the next waiting update.
    pub(super) fn finish_prompt_update(&mut self, joined: Result<Embedded, tokio::task::JoinError>) {
        let Some(p) = self.pending.take() else { return };
        let set = match joined {
            Ok((set, mut cache)) => {
                if let Err(e) = cache.save() {
                    tracing::warn!(error = %e, "Cannot save the prompt cache.");
                }
                self.s.cache = cache;
                set
            }
            Err(e) => Err(format!("embedding the prompts failed: {e}")),
        };
        match set {
            Ok((set, configs)) => self.apply_prompt_update(p.update, configs, set),
            Err(e) => self.reject_update(p.update, vec![e]),
        }
        while self.pending.is_none() {
            let Some(next) = self.queued.pop_front() else { break };
            self.start_prompt_update(next);
        }
    }

    /// Answers the updates still pending or waiting at shutdown: they were not applied.
    pub(super) fn abandon_prompt_updates(&mut self) {
        let pending = self.pending.take().map(|p| p.update);
        for update in pending.into_iter().chain(std::mem::take(&mut self.queued)) {
            let e = "the daemon stopped before the update was applied".to_owned();
            self.reject_update(update, vec![e]);
        }
    }

    /// Events of changed and deleted prompts end (reload), then the new set replaces the old at once.
    fn apply_prompt_update(&mut self, mut update: PromptUpdate, configs: Vec<PromptConfig>, set: PromptSet) {
        let changed: BTreeSet<String> = update
            .upsert
            .iter()
            .map(|u| u.id.clone())
            .chain(update.delete.iter().cloned())
            .collect();
        self.end_where(EndReason::Reload, |_, l| changed.contains(l));
        self.trackers.retain(|(_, l), _| !changed.contains(l));
        match self.s.prompts.write() {
            Ok(mut p) => *p = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        let st = &mut self.s.state.state;
        st.config_rev += 1;
        st.prompts = Some(configs);
        st.prompts_base = self.s.config_prompts_hash.clone();
        for id in &update.delete {
            st.disabled_labels.remove(id);
            st.published_labels.remove(id);
        }
        for u in update.upsert.iter().filter(|u| u.role.is_label()) {
            st.published_labels.insert(u.id.clone());
        }
        for u in update.upsert.iter().filter(|u| !u.role.is_label()) {
            // A label turned into a background prompt: no longer published.
            st.published_labels.remove(&u.id);
            st.disabled_labels.remove(&u.id);
        }
        for id in &changed {
            // Its text (or mode) may have changed: its cosine statistics start again.
            self.zscores.forget(|_, p| p == id);
        }
        self.s.stats.config_rev.store(st.config_rev, Ordering::Relaxed);
        self.s
            .stats
            .prompt_updates_accepted_total
            .fetch_add(1, Ordering::Relaxed);
        self.save_state();
        let reload = update.reload.take();
        self.publish_prompt_update(&update, reload.is_none());
        if let Some(request) = reload {
            self.reload_done(&request);
        }
    }

    /// The labels' retained topics, `prompts/state`, `info` and discovery after an update; for a `prompts/set`
    /// (`answer`) also `config/state` and the `cmd/response`.
    fn publish_prompt_update(&mut self, update: &PromptUpdate, answer: bool) {
        for id in &update.delete {
            self.label_on.remove(id);
            self.clear_label_topics(id);
            self.remember_removed(id);
        }
        for u in update.upsert.iter().filter(|u| !u.role.is_label()) {
            // Background prompts have no topics; one that was a label loses its topics and entities.
            if self.label_on.remove(&u.id).is_some() {
                self.clear_label_topics(&u.id);
                self.remember_removed(&u.id);
            }
        }
        for u in update.upsert.iter().filter(|u| u.role.is_label()) {
            self.removed_labels.remove(&u.id);
            self.label_on.insert(u.id.clone(), false);
            self.push(OutMessage::state(self.s.topics.label_state(&u.id), "OFF"));
            let enabled = super::on_off(self.label_enabled(&u.id));
            self.push(OutMessage::state(self.s.topics.label_enabled_state(&u.id), enabled));
        }
        let rid = update.request_id.as_deref();
        self.publish_prompts_state();
        if answer {
            self.publish_config_state(Ok(()), PromptsOrigin::PromptsSet, rid);
        }
        self.publish_info();
        self.publish_discovery();
        let (rev, prompts) = (self.s.state.state.config_rev, self.prompts().prompts().len());
        tracing::info!(
            rev,
            upserted = update.upsert.len(),
            deleted = update.delete.len(),
            prompts,
            "Prompt update applied."
        );
        if !answer {
            return;
        }
        let result = CmdResult::PromptsSet {
            rev,
            upserted: update.upsert.iter().map(|u| u.id.clone()).collect(),
            deleted: update.delete.clone(),
            prompts,
        };
        self.respond("prompts/set", rid, Ok(result));
    }

    /// Every problem of an update, with its key path (`upsert[2].text`).
    fn check_update(&self, u: &PromptUpdate) -> Vec<String> {
        let mut errors = Vec::new();
        if u.upsert.is_empty() && u.delete.is_empty() {
            errors.push("nothing to do: give upsert and/or delete".into());
        }
        let rev = self.s.state.state.config_rev;
        if let Some(want) = u.rev_expected.filter(|&w| w != rev) {
            errors.push(format!(
                "rev_expected: the configuration is at revision {rev}, not {want}"
            ));
        }
        if u.upsert.len() > MAX_PROMPTS {
            errors.push(format!(
                "upsert: {} prompts; a daemon holds at most {MAX_PROMPTS}",
                u.upsert.len()
            ));
            return errors;
        }
        let current = self.prompts();
        let sources: Vec<(String, Modality)> = self.s.sensors.iter().map(|s| (s.name.clone(), s.modality)).collect();
        let names: Vec<String> = sources.iter().map(|(n, _)| n.clone()).collect();
        let mut seen = BTreeSet::new();
        for (i, p) in u.upsert.iter().enumerate() {
            let mut found = crate::issues::Issues::new();
            check_prompt(
                p,
                &self.s.events,
                &sources,
                &names,
                &mut found.scope(&format!("upsert[{i}]")),
            );
            errors.extend(found.iter().map(|f| format!("{}: {}", f.path, f.message)));
            if !seen.insert(p.id.clone()) {
                errors.push(format!("upsert[{i}].id: {:?} appears twice in upsert", p.id));
            }
            if u.delete.contains(&p.id) {
                errors.push(format!("upsert[{i}].id: {:?} is also in delete", p.id));
            }
        }
        for (i, id) in u.delete.iter().enumerate() {
            if !current.prompts().iter().any(|p| &p.id == id) {
                errors.push(format!("delete[{i}]: no prompt is named {id:?}"));
            }
        }
        let kept = current
            .prompts()
            .iter()
            .filter(|p| !u.delete.contains(&p.id) && !seen.contains(&p.id))
            .count();
        let after = kept + seen.len();
        if after > MAX_PROMPTS {
            errors.push(format!(
                "the update would leave {after} prompts; a daemon holds at most {MAX_PROMPTS}"
            ));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &[u8], retain: bool) -> Incoming {
        Incoming {
            topic: topic.into(),
            payload: payload.to_vec(),
            retain,
        }
    }

    fn parse(topic: &str, payload: &[u8]) -> Result<Option<Command>, Rejection> {
        Command::parse(
            &Topics::new("sensebind", "dev"),
            "homeassistant/status",
            &msg(topic, payload, false),
        )
    }

    #[test]
    fn commands_parse_into_their_variants_or_a_rejection_with_the_command_name() {
        let t = "sensebind/dev";
        assert!(matches!(
            parse("homeassistant/status", b"online"),
            Ok(Some(Command::HomeAssistantOnline))
        ));
        assert!(matches!(parse("homeassistant/status", b"offline"), Ok(None)));
        assert!(
            matches!(parse(&format!("{t}/cmd"), b""), Ok(None)),
            "an empty payload is not a command"
        );
        assert!(matches!(parse("other/dev/cmd", b"{}"), Ok(None)));
        assert!(matches!(
            parse(&format!("{t}/cmd"), br#"{"cmd": "rebirth", "request_id": "a"}"#),
            Ok(Some(Command::Rebirth { request_id: Some(ref r) })) if r == "a"
        ));
        assert!(matches!(
            parse(&format!("{t}/cmd"), br#"{"cmd": "get_info"}"#),
            Ok(Some(Command::GetInfo { .. }))
        ));
        assert!(matches!(
            parse(&format!("{t}/sensor/imu0/enabled/set"), b" off "),
            Ok(Some(Command::SetEnabled { switch: Switch::Sensor, ref name, on: false })) if name == "imu0"
        ));
        assert!(matches!(
            parse(&format!("{t}/label/walking/enabled/set"), b"ON"),
            Ok(Some(Command::SetEnabled {
                switch: Switch::Label,
                on: true,
                ..
            }))
        ));
        assert!(matches!(
            parse(&format!("{t}/prompts/set"), br#"{"delete": ["x"]}"#),
            Ok(Some(Command::PromptsSet(_)))
        ));
        let rejected = |topic: &str, payload: &[u8]| parse(&format!("{t}/{topic}"), payload).unwrap_err();
        let r = rejected("cmd", br#"{"cmd": "reboot", "request_id": "b"}"#);
        assert_eq!((r.command.as_str(), r.request_id.as_deref()), ("cmd/reboot", Some("b")));
        assert_eq!(
            rejected("cmd", br#"{"cmd": "rebirth", "args": {"x": 1}}"#).errors,
            ["rebirth takes no args"]
        );
        assert_eq!(rejected("cmd", b"nope").command, "cmd");
        let r = rejected("sensor/imu0/enabled/set", b"maybe");
        assert_eq!(r.command, "sensor/imu0/enabled/set");
        assert!(!r.prompt_update);
        let r = rejected("prompts/set", br#"{"request_id": "c", "colour": 1}"#);
        assert!(r.prompt_update && r.request_id.as_deref() == Some("c"), "{r:?}");
        let big = vec![b' '; MAX_UPDATE_BYTES + 1];
        assert!(rejected("prompts/set", &big).errors[0].contains("the limit is"));
        let retained = Command::parse(
            &Topics::new("sensebind", "dev"),
            "homeassistant/status",
            &msg(&format!("{t}/prompts/set"), br#"{"delete": ["x"]}"#, true),
        )
        .unwrap_err();
        assert!(retained.errors[0].contains("retained commands are ignored") && !retained.prompt_update);
    }
}
