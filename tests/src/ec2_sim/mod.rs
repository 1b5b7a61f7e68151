//! EC2 simulator: the Query-protocol subset the agent calls, answered in
//! EC2's XML, driven by `aws-sdk-ec2` exactly as against AWS.
//!
//! Unlike moto, it implements the semantics the agent depends on:
//! RunInstances honours `ClientToken` (same token and parameters: the same
//! instance; other parameters: `IdempotentParameterMismatch`; its instance
//! terminated: `IdempotentInstanceTerminated`), AssociateAddress honours
//! `AllowReassociation=false`, an ENI attaches only to an instance of its
//! zone and only when free (detach first; termination frees it),
//! DescribeSpotPriceHistory filters and paginates a configured series;
//! EBS volumes and snapshots move through their transitional states
//! (`ebs.rs`).
//! Errors can be injected per action (throttling, capacity, 5xx).

mod addresses;
mod ebs;
mod eni;
mod instances;

pub use ebs::{AttachmentSpan, EbsTiming};

use instances::{action_terminate, describe_instances, run_instances, spot_prices};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Router};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, PartialEq)]
pub struct SimInstance {
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub state: String,
    pub client_token: Option<String>,
    pub tags: Vec<(String, String)>,
    /// Parameters the ClientToken is bound to.
    fingerprint: String,
}

impl SimInstance {
    pub fn tag(&self, k: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Default)]
pub struct SimAddress {
    pub allocation_id: String,
    pub public_ip: String,
    pub association_id: Option<String>,
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SimPrice {
    pub instance_type: String,
    pub availability_zone: String,
    pub product_description: String,
    pub timestamp_ms: i64,
    pub price: String,
}

#[derive(Debug, Clone)]
struct Injected {
    code: String,
    status: StatusCode,
}

#[derive(Default)]
struct Inner {
    instances: Vec<SimInstance>,
    addresses: HashMap<String, SimAddress>,
    enis: HashMap<String, eni::SimEni>,
    volumes: HashMap<String, ebs::SimVolume>,
    snapshots: HashMap<String, ebs::SimSnapshot>,
    ebs: EbsTiming,
    prices: Vec<SimPrice>,
    /// Access key -> the price history that caller sees (conflicting reports).
    price_views: HashMap<String, Vec<SimPrice>>,
    faults: HashMap<String, VecDeque<Injected>>,
    calls: HashMap<String, u64>,
    next: u64,
    launches: Option<mpsc::UnboundedSender<SimInstance>>,
    /// Instances being terminated: the listener kills them, then acks.
    terminations: Option<mpsc::UnboundedSender<(String, oneshot::Sender<()>)>>,
    /// `shutting-down` lasts this long before `terminated`.
    terminate_delay: Duration,
    /// A detached ENI stays `detaching` this long.
    detach_delay: Duration,
    /// The next calls of an action succeed but their answer is lost (the
    /// connection is dropped after the effect).
    lost_answers: HashMap<String, usize>,
    /// Every answer is delayed this long.
    answer_delay: Duration,
}

#[derive(Clone)]
pub struct Ec2Sim {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ok(action: &str, body: &str) -> Response {
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<{action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>{}</requestId>{body}</{action}Response>"#,
        uuid::Uuid::new_v4()
    );
    ([("content-type", "text/xml;charset=UTF-8")], xml).into_response()
}

fn missing(what: &str) -> Response {
    err(StatusCode::BAD_REQUEST, "MissingParameter", what)
}

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>"#,
        esc(code),
        esc(message),
        uuid::Uuid::new_v4()
    );
    (status, [("content-type", "text/xml;charset=UTF-8")], xml).into_response()
}

/// Values of `Prefix.1`, `Prefix.2`, ... in order.
fn list(p: &HashMap<String, String>, prefix: &str) -> Vec<String> {
    (1..)
        .map_while(|i| p.get(&format!("{prefix}.{i}")).cloned())
        .collect()
}

/// A `tagSet`'s items.
fn tag_items(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| {
            format!(
                "<item><key>{}</key><value>{}</value></item>",
                esc(k),
                esc(v)
            )
        })
        .collect()
}

/// The zone of `instance` while it runs; else EC2's answer to an attach.
fn running_zone(g: &Inner, instance: &str) -> Result<String, Box<Response>> {
    g.instances
        .iter()
        .find(|i| i.instance_id == instance && i.state == "running")
        .map(|i| i.availability_zone.clone())
        .ok_or_else(|| {
            Box::new(err(
                StatusCode::BAD_REQUEST,
                "IncorrectInstanceState",
                &format!("Instance '{instance}' is not 'running'."),
            ))
        })
}

/// `{prefix}.N.Key` / `{prefix}.N.Value` pairs, N from 1.
fn tags(p: &HashMap<String, String>, prefix: &str) -> Vec<(String, String)> {
    (1..)
        .map_while(|i| {
            let key = p.get(&format!("{prefix}.{i}.Key"))?.clone();
            let value = p.get(&format!("{prefix}.{i}.Value")).cloned();
            Some((key, value.unwrap_or_default()))
        })
        .collect()
}

impl Ec2Sim {
    pub async fn start() -> anyhow::Result<Ec2Sim> {
        let (listener, addr) = crate::loopback().await?;
        let sim = Ec2Sim {
            inner: Arc::new(Mutex::new(Inner {
                terminate_delay: Duration::from_millis(500),
                ..Inner::default()
            })),
            addr,
        };
        let app = Router::new()
            .route("/", post(handle))
            .with_state(sim.clone());
        crate::serve(listener, app);
        Ok(sim)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }

    /// The next `times` calls of `action` fail with `code`.
    pub fn inject(&self, action: &str, code: &str, status: u16, times: usize) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        self.lock()
            .faults
            .entry(action.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(
                Injected {
                    code: code.to_owned(),
                    status,
                },
                times,
            ));
    }

    /// Instances EC2 is terminating: the receiver kills each (agent and
    /// workload) and acks; only then does EC2 report it `terminated`, so
    /// a fence that saw `terminated` never races a live workload.
    pub fn on_terminate(&self) -> mpsc::UnboundedReceiver<(String, oneshot::Sender<()>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().terminations = Some(tx);
        rx
    }

    /// How long an instance stays `shutting-down` (slow state changes).
    pub fn set_detach_delay(&self, d: Duration) {
        self.lock().detach_delay = d;
    }

    pub fn set_terminate_delay(&self, d: Duration) {
        self.lock().terminate_delay = d;
    }

    /// The next `times` calls of `action` take effect but lose their answer.
    pub fn lose_answers(&self, action: &str, times: usize) {
        *self
            .lock()
            .lost_answers
            .entry(action.to_owned())
            .or_default() += times;
    }

    /// Forget injected errors and lost answers not yet used up.
    pub fn clear_faults(&self) {
        let mut g = self.lock();
        g.faults.clear();
        g.lost_answers.clear();
    }

    /// Delay every answer (a slow EC2).
    pub fn set_answer_delay(&self, d: Duration) {
        self.lock().answer_delay = d;
    }

    /// Start terminating `ids` as EC2 does: `shutting-down` now, killed
    /// and `terminated` after the terminate delay, addresses released.
    fn terminate_later(&self, ids: Vec<String>) {
        let sim = self.clone();
        tokio::spawn(async move {
            let (delay, tx) = {
                let g = sim.lock();
                (g.terminate_delay, g.terminations.clone())
            };
            tokio::time::sleep(delay).await;
            for id in ids {
                if let Some(tx) = &tx {
                    let (ack, done) = oneshot::channel();
                    if tx.send((id.clone(), ack)).is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
                    }
                }
                let mut g = sim.lock();
                if let Some(i) = g.instances.iter_mut().find(|i| i.instance_id == id) {
                    i.state = "terminated".into();
                }
                for a in g.addresses.values_mut() {
                    if a.instance_id.as_deref() == Some(id.as_str()) {
                        a.instance_id = None;
                        a.association_id = None;
                    }
                }
                // A secondary ENI (DeleteOnTermination false) is freed,
                // and so is a data volume.
                for e in g.enis.values_mut() {
                    if e.holder.as_deref() == Some(id.as_str()) {
                        e.holder = None;
                    }
                }
                for v in g.volumes.values_mut() {
                    if v.holder() == Some(id.as_str()) {
                        v.free();
                    }
                }
            }
        });
    }

    pub fn calls(&self, action: &str) -> u64 {
        self.lock().calls.get(action).copied().unwrap_or(0)
    }

    pub fn instances(&self) -> Vec<SimInstance> {
        self.lock().instances.clone()
    }

    /// Every instance RunInstances creates is sent here (the fleet
    /// simulator boots an agent for each).
    pub fn on_launch(&self) -> mpsc::UnboundedReceiver<SimInstance> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().launches = Some(tx);
        rx
    }

    pub fn set_state(&self, instance_id: &str, state: &str) {
        let mut g = self.lock();
        if let Some(i) = g
            .instances
            .iter_mut()
            .find(|i| i.instance_id == instance_id)
        {
            i.state = state.to_owned();
        }
        if state == "terminated" {
            // Its data volumes (DeleteOnTermination false) are freed.
            for v in g.volumes.values_mut() {
                if v.holder() == Some(instance_id) {
                    v.free();
                }
            }
        }
    }

    /// Register an instance that exists outside RunInstances (a fleet's
    /// first PRIMARY).
    pub fn add_instance(&self, instance_id: &str, instance_type: &str, az: &str, group: &str) {
        self.lock().instances.push(SimInstance {
            instance_id: instance_id.into(),
            instance_type: instance_type.into(),
            availability_zone: az.into(),
            state: "running".into(),
            client_token: None,
            tags: vec![("spot:group".into(), group.into())],
            fingerprint: String::new(),
        });
    }

    /// A data volume in `zone`, attached to (instance, device) or free.
    pub fn add_volume(&self, id: &str, zone: &str, holder: Option<(&str, &str)>) {
        let mut g = self.lock();
        let v = ebs::SimVolume::new(zone);
        if let Some((i, d)) = holder {
            // As if attached long ago.
            let mut attach = HashMap::new();
            attach.insert("VolumeId".to_owned(), id.to_owned());
            attach.insert("InstanceId".to_owned(), i.to_owned());
            attach.insert("Device".to_owned(), d.to_owned());
            g.volumes.insert(id.to_owned(), v);
            let _ = ebs::answer(&mut g, "AttachVolume", &attach);
            return;
        }
        g.volumes.insert(id.to_owned(), v);
    }

    /// A group's volumes: `original` and every volume restored for the
    /// group (tagged `spot:group`).
    pub fn group_volumes(&self, group: &str, original: &str) -> Vec<String> {
        let g = self.lock();
        let mut v: Vec<String> = g
            .volumes
            .iter()
            .filter(|(id, v)| *id == original || v.tagged("spot:group", group))
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }

    /// The instance `volume` is attached to (attaching, attached,
    /// detaching or busy).
    pub fn volume_holder(&self, volume: &str) -> Option<String> {
        self.lock()
            .volumes
            .get(volume)
            .and_then(|v| v.holder().map(str::to_owned))
    }

    /// Every attachment `volume` ever had, in order, with its times.
    pub fn volume_history(&self, volume: &str) -> Vec<AttachmentSpan> {
        self.lock()
            .volumes
            .get(volume)
            .map(|v| v.history.clone())
            .unwrap_or_default()
    }

    /// Every volume's id and the snapshot it was created from.
    pub fn volumes(&self) -> Vec<(String, Option<String>)> {
        let mut v: Vec<(String, Option<String>)> = self
            .lock()
            .volumes
            .iter()
            .map(|(id, v)| (id.clone(), v.source_snapshot.clone()))
            .collect();
        v.sort();
        v
    }

    /// Whether `volume` was created from a snapshot with fast snapshot
    /// restore `enabled` in its zone.
    pub fn volume_restored_fast(&self, volume: &str) -> bool {
        self.lock().volumes.get(volume).is_some_and(|v| v.fast)
    }

    /// The zones where `snapshot` has fast snapshot restore on (enabled or
    /// on its way).
    pub fn fast_restore_zones(&self, snapshot: &str) -> Vec<String> {
        let g = self.lock();
        let mut z: Vec<String> = g
            .snapshots
            .get(snapshot)
            .map(|s| s.fast_zones())
            .unwrap_or_default();
        z.sort();
        z
    }

    /// Fast snapshot restore of `snapshot` on in `zone` (as an earlier
    /// coordinator left it).
    pub fn enable_fast_restore(&self, snapshot: &str, zone: &str) {
        if let Some(s) = self.lock().snapshots.get_mut(snapshot) {
            s.enable_fast(zone);
        }
    }

    /// How long EBS transitions take, and whether a detach gets stuck.
    pub fn set_ebs(&self, timing: EbsTiming) {
        self.lock().ebs = timing;
    }

    pub fn ebs(&self) -> EbsTiming {
        self.lock().ebs
    }

    pub fn set_prices(&self, prices: Vec<SimPrice>) {
        self.lock().prices = prices;
    }

    /// The price history the caller signing with `access_key` sees.
    pub fn set_prices_for(&self, access_key: &str, prices: Vec<SimPrice>) {
        self.lock()
            .price_views
            .insert(access_key.to_owned(), prices);
    }
}

/// The access key of a SigV4 `Authorization` header.
fn access_key(headers: &axum::http::HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let cred = auth.split("Credential=").nth(1)?;
    cred.split('/').next().map(str::to_owned)
}

async fn handle(
    State(sim): State<Ec2Sim>,
    headers: axum::http::HeaderMap,
    Form(p): Form<HashMap<String, String>>,
) -> Response {
    let action = p.get("Action").cloned().unwrap_or_default();
    let delay = sim.lock().answer_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (resp, terminating, lost) = {
        let mut g = sim.lock();
        let lost = match g.lost_answers.get_mut(&action) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        let (resp, terminating) = answer(&mut g, &action, &p, &headers);
        (resp, terminating, lost)
    };
    if !terminating.is_empty() {
        sim.terminate_later(terminating);
    }
    if lost {
        // The effect happened; the caller never hears of it.
        return (StatusCode::INTERNAL_SERVER_ERROR, "answer lost (injected)").into_response();
    }
    resp
}

fn answer(
    g: &mut Inner,
    action: &str,
    p: &HashMap<String, String>,
    headers: &axum::http::HeaderMap,
) -> (Response, Vec<String>) {
    let caller = access_key(headers);
    *g.calls.entry(action.to_owned()).or_default() += 1;
    if let Some(f) = g.faults.get_mut(action).and_then(VecDeque::pop_front) {
        return (
            err(
                f.status,
                &f.code,
                &format!("injected {} for {action}", f.code),
            ),
            Vec::new(),
        );
    }
    if action == "TerminateInstances" {
        return terminate(g, p);
    }
    (answer_other(g, action, p, caller), Vec::new())
}

fn terminate(g: &mut Inner, p: &HashMap<String, String>) -> (Response, Vec<String>) {
    match action_terminate(g, p) {
        Ok(v) => v,
        Err(r) => (*r, Vec::new()),
    }
}

fn answer_other(
    g: &mut Inner,
    action: &str,
    p: &HashMap<String, String>,
    caller: Option<String>,
) -> Response {
    match action {
        "RunInstances" => run_instances(g, p),
        "DescribeInstances" => describe_instances(g, p),
        "CreateTags" => {
            let ids = list(p, "ResourceId");
            let tags = tags(p, "Tag");
            for i in g
                .instances
                .iter_mut()
                .filter(|i| ids.contains(&i.instance_id))
            {
                i.tags.extend(tags.iter().cloned());
            }
            ok("CreateTags", "<return>true</return>")
        }
        "DescribeAddresses" | "AssociateAddress" | "DisassociateAddress" => {
            addresses::answer(g, action, p)
        }
        "AttachNetworkInterface" | "DetachNetworkInterface" | "DescribeNetworkInterfaces" => {
            eni::answer(g, action, p)
        }
        "DescribeVolumes"
        | "AttachVolume"
        | "DetachVolume"
        | "CreateVolume"
        | "CreateSnapshot"
        | "DescribeSnapshots"
        | "DeleteSnapshot"
        | "EnableFastSnapshotRestores"
        | "DisableFastSnapshotRestores"
        | "DescribeFastSnapshotRestores" => ebs::answer(g, action, p),
        "DescribeSpotPriceHistory" => {
            let view = caller
                .and_then(|k| g.price_views.get(&k))
                .unwrap_or(&g.prices);
            spot_prices(view, p)
        }
        other => err(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            &format!("The action {other} is not valid for this web service."),
        ),
    }
}
