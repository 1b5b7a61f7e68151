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
use spot_common::Pool;
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

impl LaunchSpec {
    /// What a `launch` command asks EC2 for (`None` for any other
    /// command). The request id is the ClientToken, so a retried launch
    /// finds the instance the first attempt created.
    pub fn of(cmd: &spot_common::Command) -> Option<LaunchSpec> {
        let spot_common::CommandKind::Launch {
            pool,
            launch_template_id,
            ..
        } = &cmd.action
        else {
            return None;
        };
        Some(LaunchSpec {
            request_id: cmd.request_id.clone(),
            group: cmd.group.clone(),
            pool: pool.clone(),
            launch_template_id: launch_template_id.clone(),
            spot: true,
        })
    }
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
    /// The group's instances (by the `spot:group` tag): state, and the
    /// launch that made them (`spot:request-id` tag).
    async fn group_instances(&self, group: &str) -> Result<Vec<spot_common::Ec2State>, Ec2Error>;
    /// Move an Elastic IP to `instance_id`, taking it only from an instance
    /// in `allowed_holders` (or from nobody): see `Ec2::move_address`.
    async fn move_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
        allowed_holders: &[String],
    ) -> Result<String, Ec2Error>;
    /// A network interface's zone and attachment.
    async fn interface(&self, eni: &str) -> Result<Interface, Ec2Error>;
    async fn detach_interface(&self, attachment_id: &str) -> Result<(), Ec2Error>;
    /// Attach as device 1; see [`move_interface`] for the safe move.
    async fn attach_interface(&self, eni: &str, instance_id: &str) -> Result<String, Ec2Error>;
    async fn spot_prices(
        &self,
        instance_types: &[String],
        product_description: &str,
        start_ms: i64,
    ) -> Result<Vec<SpotPrice>, Ec2Error>;
    /// A volume's zone, state and attachment; `None` when EC2 does not
    /// know it. See [`hand_over`] for the safe handover.
    async fn volume(&self, volume_id: &str) -> Result<Option<Volume>, Ec2Error>;
    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), Ec2Error>;
    /// Detach from `instance_id`; `force` only for a holder EC2 shows
    /// stopped or terminated.
    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), Ec2Error>;
    /// A new volume in `zone` from `snapshot_id`, tagged; `client_token`
    /// makes a retry return the first one.
    async fn create_volume(
        &self,
        snapshot_id: &str,
        zone: &str,
        tags: &VolumeTags<'_>,
        client_token: &str,
    ) -> Result<String, Ec2Error>;
    async fn create_snapshot(
        &self,
        volume_id: &str,
        tags: &VolumeTags<'_>,
    ) -> Result<String, Ec2Error>;
    /// The group's snapshots of `device` (by their `spot:group` and
    /// `spot:device` tags).
    async fn snapshots(&self, group: &str, device: &str) -> Result<Vec<Snapshot>, Ec2Error>;
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), Ec2Error>;
    /// Fast snapshot restore of these snapshots, per zone where it is
    /// not `disabled`.
    async fn fast_restores(&self, snapshot_ids: &[String]) -> Result<Vec<FastRestore>, Ec2Error>;
    /// Enable (`on`) or disable fast snapshot restore of `snapshot_id`
    /// in `zones`; a zone EC2 refuses is an error.
    async fn set_fast_restore(
        &self,
        snapshot_id: &str,
        zones: &[String],
        on: bool,
    ) -> Result<(), Ec2Error>;
}

/// How long a fence command may wait for `terminated`: until its
/// deadline, and never less than 10 s (EC2 takes seconds to stop).
pub fn fence_window(deadline_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(deadline_ms - now_ms).unwrap_or(0))
        .max(Duration::from_secs(10))
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

mod fast_restore;
mod interface;
mod sdk;
mod volumes;
pub use fast_restore::{FastRestore, FastRestoreKept, keep_fast_restore};
pub use interface::{Attachment, DETACH_WAIT, Interface, move_interface};
pub use sdk::Ec2;
pub use volumes::{
    Handover, Snapshot, VOLUME_WAIT, Volume, VolumeAttachment, VolumeTags, hand_over, snapshot,
};

#[cfg(test)]
mod tests {
    use super::fake::FakeEc2;
    use super::*;

    #[test]
    fn errors_are_classified() {
        for (code, status, class) in [
            ("RequestLimitExceeded", 503, ErrorClass::Throttled),
            ("InsufficientInstanceCapacity", 500, ErrorClass::Capacity),
            ("UnauthorizedOperation", 403, ErrorClass::Auth),
            ("IdempotentParameterMismatch", 400, ErrorClass::Idempotency),
            ("IdempotentInstanceTerminated", 400, ErrorClass::Idempotency),
            ("InvalidInstanceID.NotFound", 400, ErrorClass::NotFound),
        ] {
            assert_eq!(classify(code, Some(status)), class, "{code}");
        }
        assert_eq!(classify("", Some(502)), ErrorClass::Server);
        assert_eq!(classify("Whatever", Some(400)), ErrorClass::Client);
        assert!(ErrorClass::Throttled.retryable() && !ErrorClass::Capacity.retryable());
        assert!(!ErrorClass::Idempotency.retryable() && !ErrorClass::Auth.retryable());
    }

    /// Fence within `secs`, polling every 100 ms.
    async fn fence(ec2: &FakeEc2, instance_id: &str, secs: u64) -> Result<(), Ec2Error> {
        super::fence(
            ec2,
            instance_id,
            Duration::from_secs(secs),
            Duration::from_millis(100),
        )
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn fence_waits_for_terminated() {
        let ec2 = FakeEc2::new();
        ec2.add_instance("i-old", "running");
        ec2.slow_termination(3);
        fence(&ec2, "i-old", 10).await.unwrap();
        assert_eq!(ec2.state("i-old").as_deref(), Some("terminated"));
        let polls = ec2
            .calls()
            .iter()
            .filter(|c| c.starts_with("DescribeInstances"))
            .count();
        assert_eq!(polls, 4, "three polls shutting-down, the fourth terminated");
    }

    #[tokio::test(start_paused = true)]
    async fn fence_fails_when_ec2_refuses_or_never_terminates() {
        let ec2 = FakeEc2::new();
        ec2.add_instance("i-old", "running");
        ec2.fail_next(
            "TerminateInstances",
            ErrorClass::Auth,
            "UnauthorizedOperation",
        );
        let e = fence(&ec2, "i-old", 5).await.unwrap_err();
        assert_eq!(e.code, "UnauthorizedOperation");
        ec2.slow_termination(1_000_000);
        let e = fence(&ec2, "i-old", 5).await.unwrap_err();
        assert_eq!(e.code, "FenceTimeout");
        // An instance EC2 no longer knows is fenced.
        fence(&ec2, "i-gone", 5).await.unwrap();
    }

    #[tokio::test]
    async fn the_address_is_taken_only_from_a_fenced_holder() {
        let ec2 = FakeEc2::new();
        ec2.add_address("eip", Some("i-real-primary"));
        let e = ec2
            .move_address("eip", "i-stale", &["i-old".to_owned()])
            .await
            .unwrap_err();
        assert_eq!(e.code, "UnexpectedHolder");
        assert_eq!(ec2.holder("eip").as_deref(), Some("i-real-primary"));
        ec2.move_address("eip", "i-new", &["i-real-primary".to_owned()])
            .await
            .unwrap();
        assert_eq!(ec2.holder("eip").as_deref(), Some("i-new"));
    }
}
