//! The real EC2 client: `aws-sdk-ec2` with its own retries off (one
//! policy: `spot_common::retry::EC2_CALL`, inside a 60 s deadline per
//! action).

use super::{
    Attachment, Ec2Api, Ec2Error, ErrorClass, FastRestore, Interface, LaunchSpec, Snapshot,
    SpotPrice, Volume, VolumeTags, to_error,
};
use async_trait::async_trait;
use aws_sdk_ec2::types::{
    Filter, InstanceMarketOptionsRequest, InstanceType, LaunchTemplateSpecification, MarketType,
    Placement, ResourceType, Tag, TagSpecification,
};
use spot_common::retry::EC2_CALL;
use std::future::Future;
use std::time::Duration;

#[derive(Clone)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
    deadline: Duration,
}

/// One EC2 call under the retry policy, its error classified:
/// `ec2_call!(self, "TerminateInstances", |c| c.terminate_instances().instance_ids(id))`.
macro_rules! ec2_call {
    ($self:ident, $op:literal, |$c:ident| $build:expr) => {
        $self.retry($op, || async {
            let $c = &$self.client;
            $build.send().await.map_err(|e| to_error($op, e))
        })
    };
}

#[path = "sdk_volumes.rs"]
mod volumes;

impl Ec2 {
    /// Production client: credentials from the default chain (the
    /// instance profile), endpoint from `AWS_ENDPOINT_URL` when set.
    pub async fn new(region: &str) -> Ec2 {
        Self::load(
            aws_config::defaults(aws_config::BehaviorVersion::latest()),
            region,
        )
        .await
    }

    /// Client for an explicit endpoint with static credentials (protocol
    /// tests against moto_server, simulators).
    pub async fn for_endpoint(region: &str, endpoint: &str) -> Ec2 {
        let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "test", "test", None, None, "static",
            ));
        Self::load(loader, region).await
    }

    /// The underlying SDK client (tests use it to set up fixtures).
    pub fn sdk(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }

    async fn load(loader: aws_config::ConfigLoader, region: &str) -> Ec2 {
        let conf = loader
            .region(aws_config::Region::new(region.to_owned()))
            // One retry policy: ours.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .build(),
            )
            .load()
            .await;
        Ec2 {
            client: aws_sdk_ec2::Client::new(&conf),
            deadline: Duration::from_secs(60),
        }
    }

    /// Run `call` with the EC2 retry policy inside the overall deadline.
    async fn retry<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, Ec2Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        let fut = crate::retry::retry(
            EC2_CALL,
            call,
            |e: &Ec2Error| e.class.retryable(),
            |e: &Ec2Error, wait: Duration| {
                tracing::warn!(op, code = %e.code, class = ?e.class, ?wait, "EC2 call failed; retrying");
            },
        );
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(Ec2Error {
                op,
                class: ErrorClass::Transport,
                code: "DeadlineExceeded".into(),
                message: format!("no answer within {:?}", self.deadline),
            }),
        }
    }

    /// Current association of an Elastic IP: (association id, instance id).
    pub async fn address(
        &self,
        allocation_id: &str,
    ) -> Result<(Option<String>, Option<String>), Ec2Error> {
        let out = ec2_call!(self, "DescribeAddresses", |c| c
            .describe_addresses()
            .allocation_ids(allocation_id))
        .await?;
        let a = out
            .addresses()
            .first()
            .ok_or_else(|| missing("DescribeAddresses", "InvalidAllocationID", allocation_id))?;
        Ok((present(a.association_id()), present(a.instance_id())))
    }
}

/// Some endpoints (moto 5.1, and EC2 on an address mid-release) answer an
/// empty string rather than leaving a field out: both mean "nobody".
fn present(v: Option<&str>) -> Option<String> {
    v.filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A Describe filter: `name` is any of `values`.
fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

/// A Describe call that answered no item for `id`.
fn missing(op: &'static str, kind: &str, id: &str) -> Ec2Error {
    Ec2Error {
        op,
        class: ErrorClass::NotFound,
        code: format!("{kind}.NotFound"),
        message: format!("{id} not found"),
    }
}

#[async_trait]
impl Ec2Api for Ec2 {
    #[tracing::instrument(skip(self, spec), fields(request_id = %spec.request_id, pool = %spec.pool), err)]
    async fn launch(&self, spec: &LaunchSpec) -> Result<String, Ec2Error> {
        let token = spot_common::client_token(&spec.request_id);
        self.retry("RunInstances", || async {
            let mut req = self
                .client
                .run_instances()
                .client_token(&token)
                .min_count(1)
                .max_count(1)
                .instance_type(InstanceType::from(spec.pool.instance_type.as_str()))
                .placement(
                    Placement::builder()
                        .availability_zone(&spec.pool.availability_zone)
                        .build(),
                )
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Instance)
                        .tags(Tag::builder().key("spot:group").value(&spec.group).build())
                        .tags(
                            Tag::builder()
                                .key("spot:request-id")
                                .value(&spec.request_id)
                                .build(),
                        )
                        .build(),
                );
            if let Some(lt) = &spec.launch_template_id {
                req = req.launch_template(
                    LaunchTemplateSpecification::builder()
                        .launch_template_id(lt)
                        .version("$Default")
                        .build(),
                );
            }
            if let Some(subnet) = &spec.pool.subnet_id {
                req = req.subnet_id(subnet);
            }
            if spec.spot {
                req = req.instance_market_options(
                    InstanceMarketOptionsRequest::builder()
                        .market_type(MarketType::Spot)
                        .build(),
                );
            }
            let out = req.send().await.map_err(|e| to_error("RunInstances", e))?;
            out.instances()
                .first()
                .and_then(|i| i.instance_id())
                .map(str::to_owned)
                .ok_or_else(|| Ec2Error {
                    op: "RunInstances",
                    class: ErrorClass::Server,
                    code: "EmptyAnswer".into(),
                    message: "RunInstances returned no instance".into(),
                })
        })
        .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn terminate(&self, instance_id: &str) -> Result<(), Ec2Error> {
        ec2_call!(self, "TerminateInstances", |c| c
            .terminate_instances()
            .instance_ids(instance_id))
        .await
        .map(|_| ())
    }

    #[tracing::instrument(skip(self), err)]
    async fn instance_state(&self, instance_id: &str) -> Result<Option<String>, Ec2Error> {
        let r = self
            .retry("DescribeInstances", || async {
                let out = self
                    .client
                    .describe_instances()
                    .instance_ids(instance_id)
                    .send()
                    .await
                    .map_err(|e| to_error("DescribeInstances", e))?;
                Ok(out
                    .reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .find(|i| i.instance_id() == Some(instance_id))
                    .and_then(|i| Some(i.state()?.name()?.as_str().to_owned())))
            })
            .await;
        match r {
            Err(e) if e.class == ErrorClass::NotFound => Ok(None),
            other => other,
        }
    }

    async fn group_instances(&self, group: &str) -> Result<Vec<spot_common::Ec2State>, Ec2Error> {
        let out = ec2_call!(self, "DescribeInstances", |c| c
            .describe_instances()
            .filters(filter("tag:spot:group", &[group])))
        .await?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                Some(spot_common::Ec2State {
                    instance_id: i.instance_id()?.to_owned(),
                    state: i.state()?.name()?.as_str().to_owned(),
                    request_id: i
                        .tags()
                        .iter()
                        .find(|t| t.key() == Some("spot:request-id"))
                        .and_then(|t| t.value())
                        .map(str::to_owned),
                })
            })
            .collect())
    }

    /// Move an Elastic IP to `instance_id` as a compare-and-set: AWS knows
    /// nothing of our epochs and the last AssociateAddress wins, so we take
    /// the address only from an instance the coordinator fenced (named in
    /// `allowed_holders`) or from nobody, disassociate the association we
    /// observed, associate with `AllowReassociation=false` (refused if
    /// someone else got there first), and verify. A lost race or a holder
    /// we were not told about is an error, never papered over.
    #[tracing::instrument(skip(self), err)]
    async fn move_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
        allowed_holders: &[String],
    ) -> Result<String, Ec2Error> {
        let lost = |message: String| Ec2Error {
            op: "MoveAddress",
            class: ErrorClass::Client,
            code: "LostRace".into(),
            message,
        };
        let (assoc, owner) = self.address(allocation_id).await?;
        if owner.as_deref() == Some(instance_id)
            && let Some(a) = assoc
        {
            return Ok(a);
        }
        if let Some(holder) = &owner
            && !allowed_holders.contains(holder)
        {
            return Err(Ec2Error {
                op: "MoveAddress",
                class: ErrorClass::Client,
                code: "UnexpectedHolder".into(),
                message: format!(
                    "{allocation_id} is held by {holder}, which was not fenced (expected one of {allowed_holders:?}): refusing to take it"
                ),
            });
        }
        if let Some(assoc) = &assoc {
            let r = ec2_call!(self, "DisassociateAddress", |c| c
                .disassociate_address()
                .association_id(assoc))
            .await;
            match r {
                Ok(_) => {}
                Err(e) if e.class == ErrorClass::NotFound => {
                    return Err(lost(format!(
                        "association {assoc} vanished before we could release it"
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        let new_assoc = ec2_call!(self, "AssociateAddress", |c| c
            .associate_address()
            .allocation_id(allocation_id)
            .instance_id(instance_id)
            .allow_reassociation(false))
        .await
        .map_err(|e| {
            if e.code == "Resource.AlreadyAssociated" {
                lost(format!(
                    "{allocation_id} was taken by someone else: {}",
                    e.message
                ))
            } else {
                e
            }
        })?
        .association_id()
        .map(str::to_owned)
        .unwrap_or_default();
        let (_, now_owner) = self.address(allocation_id).await?;
        if now_owner.as_deref() != Some(instance_id) {
            return Err(lost(format!(
                "{allocation_id} is on {now_owner:?} after we associated it with {instance_id}"
            )));
        }
        Ok(new_assoc)
    }

    #[tracing::instrument(skip(self), err)]
    async fn interface(&self, eni: &str) -> Result<Interface, Ec2Error> {
        let out = ec2_call!(self, "DescribeNetworkInterfaces", |c| c
            .describe_network_interfaces()
            .network_interface_ids(eni))
        .await?;
        let i = out.network_interfaces().first().ok_or_else(|| {
            missing(
                "DescribeNetworkInterfaces",
                "InvalidNetworkInterfaceID",
                eni,
            )
        })?;
        let attachment = i.attachment().and_then(|a| {
            Some(Attachment {
                attachment_id: present(a.attachment_id())?,
                instance_id: present(a.instance_id())?,
                status: a.status().map_or("attached", |s| s.as_str()).to_owned(),
            })
        });
        Ok(Interface {
            availability_zone: i.availability_zone().unwrap_or_default().to_owned(),
            attachment,
        })
    }

    /// Detach without force: the holder is fenced (its demote hook ran, or
    /// EC2 stopped it), so a clean detach is what it allows.
    #[tracing::instrument(skip(self), err)]
    async fn detach_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        let r = ec2_call!(self, "DetachNetworkInterface", |c| c
            .detach_network_interface()
            .attachment_id(attachment_id))
        .await
        .map(|_| ());
        match r {
            // Already detached (a retry, or EC2 freed it on termination).
            Err(e) if e.class == ErrorClass::NotFound => Ok(()),
            r => r,
        }
    }

    /// Attach a secondary ENI as device 1.
    #[tracing::instrument(skip(self), err)]
    async fn attach_interface(&self, eni: &str, instance_id: &str) -> Result<String, Ec2Error> {
        let out = ec2_call!(self, "AttachNetworkInterface", |c| c
            .attach_network_interface()
            .network_interface_id(eni)
            .instance_id(instance_id)
            .device_index(1))
        .await?;
        Ok(out.attachment_id().unwrap_or_default().to_owned())
    }

    async fn volume(&self, volume_id: &str) -> Result<Option<Volume>, Ec2Error> {
        self.describe_volume(volume_id).await
    }

    #[tracing::instrument(skip(self), err)]
    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), Ec2Error> {
        self.attach(volume_id, instance_id, device).await
    }

    #[tracing::instrument(skip(self), err)]
    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), Ec2Error> {
        self.detach(volume_id, instance_id, force).await
    }

    #[tracing::instrument(skip(self, tags), err)]
    async fn create_volume(
        &self,
        snapshot_id: &str,
        zone: &str,
        tags: &VolumeTags<'_>,
        client_token: &str,
    ) -> Result<String, Ec2Error> {
        self.volume_from_snapshot(snapshot_id, zone, tags, client_token)
            .await
    }

    #[tracing::instrument(skip(self, tags), err)]
    async fn create_snapshot(
        &self,
        volume_id: &str,
        tags: &VolumeTags<'_>,
    ) -> Result<String, Ec2Error> {
        self.snapshot_of(volume_id, tags).await
    }

    async fn snapshots(&self, group: &str, device: &str) -> Result<Vec<Snapshot>, Ec2Error> {
        self.group_snapshots(group, device).await
    }

    #[tracing::instrument(skip(self), err)]
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), Ec2Error> {
        self.remove_snapshot(snapshot_id).await
    }

    async fn fast_restores(&self, snapshot_ids: &[String]) -> Result<Vec<FastRestore>, Ec2Error> {
        self.fast_restore_states(snapshot_ids).await
    }

    async fn set_fast_restore(
        &self,
        snapshot_id: &str,
        zones: &[String],
        on: bool,
    ) -> Result<(), Ec2Error> {
        self.fast_restore_set(snapshot_id, zones, on).await
    }

    /// DescribeSpotPriceHistory for the given pools since `start_ms`, all
    /// pages.
    #[tracing::instrument(skip(self), err)]
    async fn spot_prices(
        &self,
        instance_types: &[String],
        product_description: &str,
        start_ms: i64,
    ) -> Result<Vec<SpotPrice>, Ec2Error> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .retry("DescribeSpotPriceHistory", || {
                    let next = next.clone();
                    async move {
                        let mut req = self
                            .client
                            .describe_spot_price_history()
                            .product_descriptions(product_description)
                            .start_time(aws_sdk_ec2::primitives::DateTime::from_millis(start_ms))
                            .max_results(1000);
                        for t in instance_types {
                            req = req.instance_types(InstanceType::from(t.as_str()));
                        }
                        if let Some(n) = next {
                            req = req.next_token(n);
                        }
                        req.send()
                            .await
                            .map_err(|e| to_error("DescribeSpotPriceHistory", e))
                    }
                })
                .await?;
            for p in page.spot_price_history() {
                let (Some(t), Some(az), Some(price), Some(ts)) = (
                    p.instance_type(),
                    p.availability_zone(),
                    p.spot_price(),
                    p.timestamp(),
                ) else {
                    continue;
                };
                out.push(SpotPrice {
                    instance_type: t.as_str().to_owned(),
                    availability_zone: az.to_owned(),
                    product_description: p
                        .product_description()
                        .map(|d| d.as_str().to_owned())
                        .unwrap_or_default(),
                    timestamp_ms: ts.to_millis().unwrap_or(0),
                    price: price.to_owned(),
                });
            }
            match page.next_token() {
                Some(n) if !n.is_empty() => next = Some(n.to_owned()),
                _ => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod policy {
    /// Every EC2 action this client makes is allowed by the IAM policy the
    /// packages ship (a call added without its permission fails in
    /// production with UnauthorizedOperation, never in a test against moto).
    #[test]
    fn the_shipped_iam_policy_allows_every_call_the_client_makes() {
        let source = concat!(include_str!("sdk.rs"), include_str!("sdk_volumes.rs"));
        let agent = include_str!("../../../packaging/iam-policy.json");
        let coordinator = include_str!("../../../packaging/iam-policy-coordinator.json");
        // What the coordinator's own EC2 access calls (executor, volume
        // checks, fast snapshot restore); an agent calls everything else.
        let by_coordinator = [
            "DescribeInstances",
            "RunInstances",
            "TerminateInstances",
            "DescribeVolumes",
            "DescribeSnapshots",
            "DescribeFastSnapshotRestores",
            "EnableFastSnapshotRestores",
            "DisableFastSnapshotRestores",
        ];
        for call in by_coordinator {
            assert!(
                coordinator.contains(&format!("\"ec2:{call}\"")),
                "packaging/iam-policy-coordinator.json does not allow ec2:{call}"
            );
        }
        let mut calls: Vec<&str> = [".retry(\"", "ec2_call!(self, \""]
            .iter()
            .flat_map(|pattern| source.match_indices(pattern))
            .map(|(i, m)| {
                let rest = &source[i + m.len()..];
                &rest[..rest.find('"').unwrap_or(0)]
            })
            .filter(|call| !call.is_empty() && !call.starts_with('$'))
            .collect();
        calls.sort_unstable();
        calls.dedup();
        assert!(calls.len() >= 10, "found only {calls:?}");
        for call in calls
            .into_iter()
            .filter(|c| !c.contains("FastSnapshotRestores"))
        {
            assert!(
                agent.contains(&format!("\"ec2:{call}\"")),
                "packaging/iam-policy.json does not allow ec2:{call}"
            );
        }
    }
}
