//! EC2 actions through `aws-sdk-ec2` (endpoint from `AWS_ENDPOINT_URL`):
//! made by an agent with its instance's role, or by the coordinator's
//! optional executor with its own tag-scoped role. Callers use the
//! [`Ec2Api`] trait; `Ec2` is the real client and `fake::FakeEc2` (feature
//! `test-util`) an in-memory one for unit tests.
//!
//! The SDK's own retries are off so there is one retry policy:
//! `spot_common::retry::EC2_CALL` (capped exponential backoff with jitter,
//! via `spot_runtime::retry`) for throttling, 5xx and transport errors, inside an overall
//! deadline of 60 s per action. Capacity errors are returned at once so the
//! coordinator can pick another pool; auth and idempotency errors are never
//! retried.

use async_trait::async_trait;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, InstanceMarketOptionsRequest, InstanceType, LaunchTemplateSpecification, MarketType,
    Placement, ResourceType, Tag, TagSpecification,
};
use spot_common::Pool;
use spot_common::retry::EC2_CALL;
use std::future::Future;
use std::time::Duration;

#[cfg(any(test, feature = "test-util"))]
pub mod fake;

/// How an EC2 error must be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// RequestLimitExceeded and friends: back off and retry.
    Throttled,
    /// 5xx / InternalError / Unavailable: retry.
    Server,
    /// Connection or timeout: retry.
    Transport,
    /// No spot capacity in this pool: report, let the coordinator choose.
    Capacity,
    /// Credentials or permissions: report, never retry.
    Auth,
    /// ClientToken reused with other parameters, or its instance is gone.
    Idempotency,
    NotFound,
    /// Anything else the caller got wrong: report.
    Client,
}

impl ErrorClass {
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Throttled | ErrorClass::Server | ErrorClass::Transport
        )
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{op}: {class:?} {code}: {message}")]
pub struct Ec2Error {
    pub op: &'static str,
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
}

/// Classify an EC2 error code (and the HTTP status when there is one).
pub fn classify(code: &str, status: Option<u16>) -> ErrorClass {
    match code {
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "RequestThrottled"
        | "SlowDown" => ErrorClass::Throttled,
        "InsufficientInstanceCapacity"
        | "InsufficientCapacity"
        | "SpotMaxPriceTooLow"
        | "MaxSpotInstanceCountExceeded"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InstanceLimitExceeded"
        | "VcpuLimitExceeded"
        | "Unsupported" => ErrorClass::Capacity,
        "AuthFailure"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "OptInRequired"
        | "Blocked"
        | "ExpiredToken" => ErrorClass::Auth,
        "IdempotentParameterMismatch" | "IdempotentInstanceTerminated" => ErrorClass::Idempotency,
        "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => {
            ErrorClass::Server
        }
        c if c.ends_with(".NotFound") => ErrorClass::NotFound,
        _ => match status {
            Some(s) if s >= 500 => ErrorClass::Server,
            Some(_) => ErrorClass::Client,
            None => ErrorClass::Transport,
        },
    }
}

fn to_error<E, R>(op: &'static str, e: SdkError<E, R>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let status = e.raw_response().map(HasStatus::status_code);
    let code = e.code().unwrap_or("").to_owned();
    let class = if code.is_empty()
        && matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_))
    {
        ErrorClass::Transport
    } else {
        classify(&code, status)
    };
    Ec2Error {
        op,
        class,
        message: e
            .message()
            .map(str::to_owned)
            .unwrap_or_else(|| DisplayErrorContext(&e).to_string()),
        code,
    }
}

/// The HTTP status of a raw SDK response.
pub trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_ec2::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub request_id: String,
    pub group: String,
    pub pool: Pool,
    pub launch_template_id: Option<String>,
    /// Spot market (default) or on-demand.
    pub spot: bool,
}

/// One spot price as EC2 reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotPrice {
    pub instance_type: String,
    pub availability_zone: String,
    pub product_description: String,
    pub timestamp_ms: i64,
    /// As AWS gives it: a decimal string.
    pub price: String,
}

/// The EC2 calls the system makes. Every implementation classifies its
/// errors with [`ErrorClass`]; retries are the implementation's business.
#[async_trait]
pub trait Ec2Api: Send + Sync {
    /// RunInstances with a ClientToken derived from the request id: a
    /// retried or resumed launch returns the instance of the first one.
    async fn launch(&self, spec: &LaunchSpec) -> Result<String, Ec2Error>;
    async fn terminate(&self, instance_id: &str) -> Result<(), Ec2Error>;
    /// The instance's state name; `None` when EC2 does not know it.
    async fn instance_state(&self, instance_id: &str) -> Result<Option<String>, Ec2Error>;
    /// States of the group's instances, by the `spot:group` tag.
    async fn group_instances(&self, group: &str) -> Result<Vec<(String, String)>, Ec2Error>;
    /// Move an Elastic IP to `instance_id`, taking it only from an instance
    /// in `allowed_holders` (or from nobody): see `Ec2::move_address`.
    async fn move_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
        allowed_holders: &[String],
    ) -> Result<String, Ec2Error>;
    async fn attach_interface(&self, eni: &str, instance_id: &str) -> Result<String, Ec2Error>;
    async fn spot_prices(
        &self,
        instance_types: &[String],
        product_description: &str,
        start_ms: i64,
    ) -> Result<Vec<SpotPrice>, Ec2Error>;
}

/// STONITH through EC2: terminate `instance_id` and wait until EC2 reports
/// it `terminated` (or no longer knows it), polling every `poll` for at
/// most `within`. Only then is the instance certainly not serving.
pub async fn fence(
    ec2: &dyn Ec2Api,
    instance_id: &str,
    within: Duration,
    poll: Duration,
) -> Result<(), Ec2Error> {
    let timed_out = || Ec2Error {
        op: "Fence",
        class: ErrorClass::Transport,
        code: "FenceTimeout".into(),
        message: format!("{instance_id} not terminated within {within:?}"),
    };
    let wait = async {
        match ec2.terminate(instance_id).await {
            Ok(()) => {}
            Err(e) if e.class == ErrorClass::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        loop {
            match ec2.instance_state(instance_id).await {
                Ok(None) => return Ok(()),
                Ok(Some(s)) if s == "terminated" => return Ok(()),
                Ok(Some(_)) => {}
                // A failed look is retried on the next poll: the deadline
                // bounds the whole fence.
                Err(e) if e.class.retryable() => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(poll).await;
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

#[derive(Clone)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
    deadline: Duration,
}

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
        self.retry("DescribeAddresses", || async {
            let out = self
                .client
                .describe_addresses()
                .allocation_ids(allocation_id)
                .send()
                .await
                .map_err(|e| to_error("DescribeAddresses", e))?;
            let a = out.addresses().first().ok_or_else(|| Ec2Error {
                op: "DescribeAddresses",
                class: ErrorClass::NotFound,
                code: "InvalidAllocationID.NotFound".into(),
                message: format!("{allocation_id} not found"),
            })?;
            Ok((
                a.association_id().map(str::to_owned),
                a.instance_id().map(str::to_owned),
            ))
        })
        .await
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
        self.retry("TerminateInstances", || async {
            self.client
                .terminate_instances()
                .instance_ids(instance_id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| to_error("TerminateInstances", e))
        })
        .await
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

    async fn group_instances(&self, group: &str) -> Result<Vec<(String, String)>, Ec2Error> {
        self.retry("DescribeInstances", || async {
            let out = self
                .client
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name("tag:spot:group")
                        .values(group)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| to_error("DescribeInstances", e))?;
            Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| {
                    Some((
                        i.instance_id()?.to_owned(),
                        i.state()?.name()?.as_str().to_owned(),
                    ))
                })
                .collect())
        })
        .await
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
            let r = self
                .retry("DisassociateAddress", || async {
                    self.client
                        .disassociate_address()
                        .association_id(assoc)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| to_error("DisassociateAddress", e))
                })
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.class == ErrorClass::NotFound => {
                    return Err(lost(format!(
                        "association {assoc} vanished before we could release it"
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        let new_assoc = self
            .retry("AssociateAddress", || async {
                self.client
                    .associate_address()
                    .allocation_id(allocation_id)
                    .instance_id(instance_id)
                    .allow_reassociation(false)
                    .send()
                    .await
                    .map_err(|e| to_error("AssociateAddress", e))
            })
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

    /// Attach a secondary ENI as device 1.
    #[tracing::instrument(skip(self), err)]
    async fn attach_interface(&self, eni: &str, instance_id: &str) -> Result<String, Ec2Error> {
        self.retry("AttachNetworkInterface", || async {
            let out = self
                .client
                .attach_network_interface()
                .network_interface_id(eni)
                .instance_id(instance_id)
                .device_index(1)
                .send()
                .await
                .map_err(|e| to_error("AttachNetworkInterface", e))?;
            Ok(out.attachment_id().unwrap_or_default().to_owned())
        })
        .await
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
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        assert_eq!(
            classify("RequestLimitExceeded", Some(503)),
            ErrorClass::Throttled
        );
        assert_eq!(
            classify("InsufficientInstanceCapacity", Some(500)),
            ErrorClass::Capacity
        );
        assert_eq!(
            classify("UnauthorizedOperation", Some(403)),
            ErrorClass::Auth
        );
        assert_eq!(
            classify("IdempotentParameterMismatch", Some(400)),
            ErrorClass::Idempotency
        );
        assert_eq!(
            classify("IdempotentInstanceTerminated", Some(400)),
            ErrorClass::Idempotency
        );
        assert_eq!(
            classify("InvalidInstanceID.NotFound", Some(400)),
            ErrorClass::NotFound
        );
        assert_eq!(classify("", Some(502)), ErrorClass::Server);
        assert_eq!(classify("Whatever", Some(400)), ErrorClass::Client);
        assert!(ErrorClass::Throttled.retryable() && !ErrorClass::Capacity.retryable());
        assert!(!ErrorClass::Idempotency.retryable() && !ErrorClass::Auth.retryable());
    }
}
