//! Instances and prices as EC2 answers them: RunInstances (with its
//! `ClientToken` idempotency), DescribeInstances, TerminateInstances and
//! DescribeSpotPriceHistory (filtered and paginated).

use super::{Inner, SimInstance, SimPrice, err, esc, list, ok, tag_items, tags};
use axum::http::StatusCode;
use axum::response::Response;
use std::collections::HashMap;

pub(super) fn state_code(state: &str) -> u8 {
    match state {
        "pending" => 0,
        "running" => 16,
        "shutting-down" => 32,
        "terminated" => 48,
        "stopping" => 64,
        _ => 80,
    }
}

pub(super) fn instance_xml(i: &SimInstance) -> String {
    let tags = tag_items(&i.tags);
    format!(
        "<item><instanceId>{}</instanceId><instanceType>{}</instanceType><placement><availabilityZone>{}</availabilityZone></placement><instanceState><code>{}</code><name>{}</name></instanceState>{}<instanceLifecycle>spot</instanceLifecycle><tagSet>{tags}</tagSet></item>",
        i.instance_id,
        esc(&i.instance_type),
        esc(&i.availability_zone),
        state_code(&i.state),
        i.state,
        i.client_token
            .as_ref()
            .map(|t| format!("<clientToken>{}</clientToken>", esc(t)))
            .unwrap_or_default(),
    )
}

pub(super) fn run_instances(g: &mut Inner, p: &HashMap<String, String>) -> Response {
    let instance_type = p
        .get("InstanceType")
        .cloned()
        .unwrap_or_else(|| "m5.large".into());
    let az = p
        .get("Placement.AvailabilityZone")
        .cloned()
        .unwrap_or_else(|| "us-east-1a".into());
    let tags = tags(p, "TagSpecification.1.Tag");
    // The parameters a ClientToken is bound to (the token itself excluded).
    let mut fp: Vec<_> = p
        .iter()
        .filter(|(k, _)| k.as_str() != "ClientToken")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    fp.sort();
    let fingerprint = fp.join("&");
    let token = p.get("ClientToken").cloned();
    if let Some(t) = &token
        && let Some(existing) = g
            .instances
            .iter()
            .find(|i| i.client_token.as_ref() == Some(t))
    {
        if existing.fingerprint != fingerprint {
            return err(
                StatusCode::BAD_REQUEST,
                "IdempotentParameterMismatch",
                "The client token you have provided is associated with a resource with different parameters",
            );
        }
        if existing.state == "terminated" {
            return err(
                StatusCode::BAD_REQUEST,
                "IdempotentInstanceTerminated",
                "The client token is associated with an instance that has been terminated",
            );
        }
        let body = format!(
            "<reservationId>r-sim</reservationId><ownerId>000000000000</ownerId><instancesSet>{}</instancesSet>",
            instance_xml(existing)
        );
        return ok("RunInstances", &body);
    }
    g.next += 1;
    let inst = SimInstance {
        instance_id: format!("i-{:017x}", g.next),
        instance_type,
        availability_zone: az,
        state: "pending".into(),
        client_token: token,
        tags,
        fingerprint,
    };
    g.instances.push(inst.clone());
    if let Some(tx) = &g.launches {
        let _ = tx.send(inst.clone());
    }
    let body = format!(
        "<reservationId>r-sim{:x}</reservationId><ownerId>000000000000</ownerId><instancesSet>{}</instancesSet>",
        g.next,
        instance_xml(&inst)
    );
    ok("RunInstances", &body)
}

pub(super) fn describe_instances(g: &Inner, p: &HashMap<String, String>) -> Response {
    let ids = list(p, "InstanceId");
    let filters: Vec<(String, Vec<String>)> = (1..)
        .map_while(|i| {
            let name = p.get(&format!("Filter.{i}.Name"))?.clone();
            Some((name, list(p, &format!("Filter.{i}.Value"))))
        })
        .collect();
    let matches = |i: &SimInstance| {
        (ids.is_empty() || ids.contains(&i.instance_id))
            && filters.iter().all(|(name, values)| {
                let v = match name.as_str() {
                    "instance-state-name" => Some(i.state.as_str()),
                    "client-token" => i.client_token.as_deref(),
                    n if n.starts_with("tag:") => i.tag(&n[4..]),
                    _ => None,
                };
                v.is_some_and(|v| values.iter().any(|x| x == v))
            })
    };
    let items: String = g
        .instances
        .iter()
        .filter(|i| matches(i))
        .map(instance_xml)
        .collect();
    let body = if items.is_empty() {
        "<reservationSet/>".to_owned()
    } else {
        format!(
            "<reservationSet><item><reservationId>r-sim</reservationId><ownerId>000000000000</ownerId><instancesSet>{items}</instancesSet></item></reservationSet>"
        )
    };
    ok("DescribeInstances", &body)
}

pub(super) fn spot_prices(prices: &[SimPrice], p: &HashMap<String, String>) -> Response {
    let types = list(p, "InstanceType");
    let products = list(p, "ProductDescription");
    let az = p.get("AvailabilityZone");
    let start = p
        .get("StartTime")
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0);
    let max: usize = p
        .get("MaxResults")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1000);
    let offset: usize = p.get("NextToken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let all: Vec<&SimPrice> = prices
        .iter()
        .filter(|x| types.is_empty() || types.contains(&x.instance_type))
        .filter(|x| products.is_empty() || products.contains(&x.product_description))
        .filter(|x| az.is_none_or(|a| *a == x.availability_zone))
        .filter(|x| x.timestamp_ms >= start)
        .collect();
    let page = all.iter().skip(offset).take(max);
    let items: String = page
        .map(|x| {
            let ts = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(x.timestamp_ms).unwrap_or(0));
            format!(
                "<item><instanceType>{}</instanceType><productDescription>{}</productDescription><spotPrice>{}</spotPrice><timestamp>{}</timestamp><availabilityZone>{}</availabilityZone></item>",
                esc(&x.instance_type), esc(&x.product_description), esc(&x.price),
                humantime::format_rfc3339_millis(ts), esc(&x.availability_zone)
            )
        })
        .collect();
    let next = if offset + max < all.len() {
        format!("<nextToken>{}</nextToken>", offset + max)
    } else {
        "<nextToken/>".to_owned()
    };
    ok(
        "DescribeSpotPriceHistory",
        &format!("<spotPriceHistorySet>{items}</spotPriceHistorySet>{next}"),
    )
}

/// TerminateInstances: `shutting-down` now; the caller schedules the rest.
pub(super) fn action_terminate(
    g: &mut Inner,
    p: &HashMap<String, String>,
) -> Result<(Response, Vec<String>), Box<Response>> {
    let ids = list(p, "InstanceId");
    let mut items = String::new();
    let mut terminating = Vec::new();
    for id in &ids {
        let Some(i) = g.instances.iter_mut().find(|i| &i.instance_id == id) else {
            return Err(Box::new(err(
                StatusCode::BAD_REQUEST,
                "InvalidInstanceID.NotFound",
                &format!("The instance ID '{id}' does not exist"),
            )));
        };
        let prev = i.state.clone();
        if !matches!(prev.as_str(), "shutting-down" | "terminated") {
            i.state = "shutting-down".into();
            terminating.push(id.clone());
        }
        items.push_str(&format!(
                    "<item><instanceId>{id}</instanceId><currentState><code>32</code><name>shutting-down</name></currentState><previousState><code>{}</code><name>{prev}</name></previousState></item>",
                    state_code(&prev)
                ));
    }
    Ok((
        ok(
            "TerminateInstances",
            &format!("<instancesSet>{items}</instancesSet>"),
        ),
        terminating,
    ))
}
