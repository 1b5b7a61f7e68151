//! Elastic IPs: DescribeAddresses, AssociateAddress and
//! DisassociateAddress as EC2 answers them (an address already associated
//! moves only with AllowReassociation).

use super::{Ec2Sim, Inner, SimAddress, err, list, missing, ok};
use axum::http::StatusCode;
use axum::response::Response;
use std::collections::HashMap;

pub(super) fn answer(g: &mut Inner, action: &str, p: &HashMap<String, String>) -> Response {
    match action {
        "DescribeAddresses" => {
            let ids = list(p, "AllocationId");
            let mut items = String::new();
            for id in &ids {
                let Some(a) = g.addresses.get(id) else {
                    return err(
                        StatusCode::BAD_REQUEST,
                        "InvalidAllocationID.NotFound",
                        &format!("The allocation ID '{id}' does not exist"),
                    );
                };
                items.push_str(&format!(
                    "<item><publicIp>{}</publicIp><allocationId>{}</allocationId><domain>vpc</domain>{}{}</item>",
                    a.public_ip, a.allocation_id,
                    a.association_id.as_ref().map(|x| format!("<associationId>{x}</associationId>")).unwrap_or_default(),
                    a.instance_id.as_ref().map(|x| format!("<instanceId>{x}</instanceId>")).unwrap_or_default(),
                ));
            }
            ok(
                "DescribeAddresses",
                &format!("<addressesSet>{items}</addressesSet>"),
            )
        }
        "AssociateAddress" => {
            let (Some(alloc), Some(inst)) = (p.get("AllocationId"), p.get("InstanceId")) else {
                return missing("AllocationId and InstanceId are required");
            };
            let allow = p.get("AllowReassociation").is_some_and(|v| v == "true");
            g.next += 1;
            let assoc = format!("eipassoc-{:08x}", g.next);
            let Some(a) = g.addresses.get_mut(alloc) else {
                return err(
                    StatusCode::BAD_REQUEST,
                    "InvalidAllocationID.NotFound",
                    alloc,
                );
            };
            if a.instance_id.is_some() && !allow {
                return err(
                    StatusCode::BAD_REQUEST,
                    "Resource.AlreadyAssociated",
                    &format!(
                        "resource {alloc} is already associated with associate-id {}",
                        a.association_id.clone().unwrap_or_default()
                    ),
                );
            }
            a.association_id = Some(assoc.clone());
            a.instance_id = Some(inst.clone());
            ok(
                "AssociateAddress",
                &format!("<return>true</return><associationId>{assoc}</associationId>"),
            )
        }
        "DisassociateAddress" => {
            let Some(assoc) = p.get("AssociationId") else {
                return err(
                    StatusCode::BAD_REQUEST,
                    "MissingParameter",
                    "AssociationId is required",
                );
            };
            let Some(a) = g
                .addresses
                .values_mut()
                .find(|a| a.association_id.as_ref() == Some(assoc))
            else {
                return err(
                    StatusCode::BAD_REQUEST,
                    "InvalidAssociationID.NotFound",
                    &format!("The association ID '{assoc}' does not exist"),
                );
            };
            a.association_id = None;
            a.instance_id = None;
            ok("DisassociateAddress", "<return>true</return>")
        }
        other => err(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            &format!("The action {other} is not an address action."),
        ),
    }
}

impl Ec2Sim {
    pub fn add_address(&self, allocation_id: &str, public_ip: &str) {
        self.lock().addresses.insert(
            allocation_id.to_owned(),
            SimAddress {
                allocation_id: allocation_id.into(),
                public_ip: public_ip.into(),
                ..SimAddress::default()
            },
        );
    }

    pub fn address(&self, allocation_id: &str) -> Option<SimAddress> {
        self.lock().addresses.get(allocation_id).cloned()
    }
}
