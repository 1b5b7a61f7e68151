//! Secondary ENIs: DescribeNetworkInterfaces, AttachNetworkInterface and
//! DetachNetworkInterface as EC2 answers them. An ENI lives in one zone
//! and attaches only to an instance there, only when free; a detach takes
//! `detach_delay` (`detaching` meanwhile); termination frees it.

use super::{Ec2Sim, Inner, err, esc, list, missing, ok, running_zone};
use axum::http::StatusCode;
use axum::response::Response;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(super) struct SimEni {
    zone: String,
    pub(super) holder: Option<String>,
    attachment_id: String,
    detached_at: Option<Instant>,
    /// Every instance it was attached to, in order.
    pub(super) history: Vec<String>,
}

impl SimEni {
    pub(super) fn new(zone: &str) -> SimEni {
        SimEni {
            zone: zone.to_owned(),
            holder: None,
            attachment_id: String::new(),
            detached_at: None,
            history: Vec::new(),
        }
    }

    /// Finish a detach whose time has come.
    fn settle(&mut self) {
        if self.detached_at.is_some_and(|t| Instant::now() >= t) {
            self.detached_at = None;
            self.holder = None;
        }
    }
}

pub(super) fn answer(g: &mut Inner, action: &str, p: &HashMap<String, String>) -> Response {
    for e in g.enis.values_mut() {
        e.settle();
    }
    match action {
        "DescribeNetworkInterfaces" => describe(g, p),
        "AttachNetworkInterface" => attach(g, p),
        _ => detach(g, p),
    }
}

fn not_found(eni: &str) -> Response {
    err(
        StatusCode::BAD_REQUEST,
        "InvalidNetworkInterfaceID.NotFound",
        &format!("The networkInterface ID '{eni}' does not exist"),
    )
}

fn describe(g: &Inner, p: &HashMap<String, String>) -> Response {
    let mut items = String::new();
    for id in list(p, "NetworkInterfaceId") {
        let Some(e) = g.enis.get(&id) else {
            return not_found(&id);
        };
        let attachment = e.holder.as_ref().map(|h| {
            let status = if e.detached_at.is_some() {
                "detaching"
            } else {
                "attached"
            };
            format!(
                "<attachment><attachmentId>{}</attachmentId><instanceId>{}</instanceId><deviceIndex>1</deviceIndex><status>{status}</status></attachment>",
                esc(&e.attachment_id),
                esc(h)
            )
        });
        items.push_str(&format!(
            "<item><networkInterfaceId>{}</networkInterfaceId><availabilityZone>{}</availabilityZone><status>{}</status>{}</item>",
            esc(&id),
            esc(&e.zone),
            if e.holder.is_some() { "in-use" } else { "available" },
            attachment.unwrap_or_default()
        ));
    }
    ok(
        "DescribeNetworkInterfaces",
        &format!("<networkInterfaceSet>{items}</networkInterfaceSet>"),
    )
}

fn attach(g: &mut Inner, p: &HashMap<String, String>) -> Response {
    let (Some(eni), Some(inst)) = (p.get("NetworkInterfaceId"), p.get("InstanceId")) else {
        return missing("NetworkInterfaceId and InstanceId are required");
    };
    let zone = match running_zone(g, inst) {
        Ok(z) => z,
        Err(answer) => return *answer,
    };
    g.next += 1;
    let n = g.next;
    let Some(e) = g.enis.get_mut(eni) else {
        return not_found(eni);
    };
    if e.zone != zone {
        return err(
            StatusCode::BAD_REQUEST,
            "InvalidParameterCombination",
            &format!(
                "Interface {eni} is in {} and instance {inst} in {zone}: they must be in the same availability zone",
                e.zone
            ),
        );
    }
    if let Some(other) = &e.holder {
        return err(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValue",
            &format!("Interface {eni} is currently in use by {other}"),
        );
    }
    e.holder = Some(inst.clone());
    e.attachment_id = format!("eni-attach-{n:08x}");
    e.history.push(inst.clone());
    ok(
        "AttachNetworkInterface",
        &format!("<attachmentId>{}</attachmentId>", e.attachment_id),
    )
}

fn detach(g: &mut Inner, p: &HashMap<String, String>) -> Response {
    let Some(id) = p.get("AttachmentId") else {
        return missing("AttachmentId is required");
    };
    let delay = g.detach_delay;
    let Some(e) = g
        .enis
        .values_mut()
        .find(|e| e.holder.is_some() && &e.attachment_id == id)
    else {
        return err(
            StatusCode::BAD_REQUEST,
            "InvalidAttachmentID.NotFound",
            &format!("The attachment ID '{id}' does not exist"),
        );
    };
    if e.detached_at.is_none() {
        e.detached_at = Some(Instant::now() + delay);
    }
    if delay == Duration::ZERO {
        e.settle();
    }
    ok("DetachNetworkInterface", "<return>true</return>")
}

impl Ec2Sim {
    /// A secondary ENI in `zone`, attached to nobody.
    pub fn add_eni(&self, eni: &str, zone: &str) {
        self.lock().enis.insert(eni.to_owned(), SimEni::new(zone));
    }

    /// The instance `eni` is attached to.
    pub fn eni_holder(&self, eni: &str) -> Option<String> {
        self.lock().enis.get(eni).and_then(|e| e.holder.clone())
    }

    /// Every instance `eni` was ever attached to, in order.
    pub fn eni_history(&self, eni: &str) -> Vec<String> {
        self.lock()
            .enis
            .get(eni)
            .map(|e| e.history.clone())
            .unwrap_or_default()
    }
}
