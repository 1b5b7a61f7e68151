//! Moving a secondary ENI to the new PRIMARY: detach it from the fenced
//! holder, wait until it is free, attach it, verify. Every step is
//! idempotent, so a retried or redelivered promote converges: an ENI
//! already on us is done, one on a fenced holder is taken, one on anybody
//! else is refused (AWS knows nothing of our epochs).

use super::{Ec2Api, Ec2Error, ErrorClass};
use std::time::Duration;

/// A network interface as DescribeNetworkInterfaces shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub availability_zone: String,
    pub attachment: Option<Attachment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub attachment_id: String,
    pub instance_id: String,
    /// `attaching`, `attached`, `detaching` or `detached`.
    pub status: String,
}

impl Interface {
    /// Who holds it (an attachment not yet `detached`).
    pub fn holder(&self) -> Option<&Attachment> {
        self.attachment.as_ref().filter(|a| a.status != "detached")
    }
}

/// How long a detach may take before the promote gives up (EC2 usually
/// frees an ENI within seconds; a stuck detach rolls the transition over).
pub const DETACH_WAIT: Duration = Duration::from_secs(20);

fn refused(code: &str, message: String) -> Ec2Error {
    Ec2Error {
        op: "MoveInterface",
        class: ErrorClass::Client,
        code: code.into(),
        message,
    }
}

/// Attach `eni` to `instance_id` (in `zone`) as device 1, taking it only
/// from an instance in `allowed_holders` (the transition's fenced targets)
/// or from nobody. Returns the attachment id.
pub async fn move_interface(
    ec2: &dyn Ec2Api,
    eni: &str,
    instance_id: &str,
    zone: &str,
    allowed_holders: &[String],
    poll: Duration,
) -> Result<String, Ec2Error> {
    let now = ec2.interface(eni).await?;
    if now.availability_zone != zone {
        return Err(refused(
            "WrongZone",
            format!(
                "{eni} lives in {}; {instance_id} is in {zone}: an ENI cannot leave its zone",
                now.availability_zone
            ),
        ));
    }
    match now.holder() {
        Some(a) if a.instance_id == instance_id && a.status != "detaching" => {
            return Ok(a.attachment_id.clone());
        }
        Some(a) if !allowed_holders.contains(&a.instance_id) && a.status != "detaching" => {
            return Err(refused(
                "UnexpectedHolder",
                format!(
                    "{eni} is attached to {}, which was not fenced (expected one of {allowed_holders:?}): refusing to take it",
                    a.instance_id
                ),
            ));
        }
        Some(a) if a.status != "detaching" => ec2.detach_interface(&a.attachment_id).await?,
        _ => {}
    }
    wait_free(ec2, eni, poll).await?;
    let attachment = ec2.attach_interface(eni, instance_id).await.map_err(|e| {
        if e.message.contains("in use") || e.code == "InvalidNetworkInterface.InUse" {
            refused(
                "LostRace",
                format!("{eni} was taken by someone else: {}", e.message),
            )
        } else {
            e
        }
    })?;
    match ec2.interface(eni).await?.holder() {
        Some(a) if a.instance_id == instance_id => Ok(attachment),
        other => Err(refused(
            "LostRace",
            format!(
                "{eni} is on {:?} after we attached it to {instance_id}",
                other.map(|a| &a.instance_id)
            ),
        )),
    }
}

async fn wait_free(ec2: &dyn Ec2Api, eni: &str, poll: Duration) -> Result<(), Ec2Error> {
    let wait = async {
        loop {
            match ec2.interface(eni).await {
                Ok(i) if i.holder().is_none() => return Ok(()),
                Ok(_) => {}
                Err(e) if e.class.retryable() => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(poll).await;
        }
    };
    tokio::time::timeout(DETACH_WAIT, wait)
        .await
        .unwrap_or_else(|_| {
            Err(Ec2Error {
                op: "MoveInterface",
                class: ErrorClass::Transport,
                code: "DetachTimeout".into(),
                message: format!("{eni} still attached after {DETACH_WAIT:?}"),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeEc2;
    use super::*;

    async fn mv(ec2: &FakeEc2, to: &str, zone: &str, allowed: &[&str]) -> Result<String, Ec2Error> {
        let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        move_interface(ec2, "eni-1", to, zone, &allowed, Duration::from_millis(10)).await
    }

    #[tokio::test]
    async fn an_interface_moves_from_a_fenced_holder_once_and_again_is_a_no_op() {
        let ec2 = FakeEc2::new();
        ec2.add_interface("eni-1", "az-a", Some("i-old"));
        mv(&ec2, "i-new", "az-a", &["i-old"]).await.unwrap();
        assert_eq!(ec2.interface_holder("eni-1").as_deref(), Some("i-new"));
        let calls = ec2.calls().len();
        mv(&ec2, "i-new", "az-a", &["i-old"]).await.unwrap();
        assert!(
            !ec2.calls()[calls..]
                .iter()
                .any(|c| c.starts_with("Attach") || c.starts_with("Detach")),
            "a repeated move changes nothing: {:?}",
            &ec2.calls()[calls..]
        );
    }

    #[tokio::test]
    async fn an_interface_on_an_unfenced_holder_or_in_another_zone_is_refused() {
        let ec2 = FakeEc2::new();
        ec2.add_interface("eni-1", "az-a", Some("i-live"));
        let e = mv(&ec2, "i-new", "az-a", &["i-old"]).await.unwrap_err();
        assert_eq!(e.code, "UnexpectedHolder");
        let e = mv(&ec2, "i-new", "az-b", &["i-live"]).await.unwrap_err();
        assert_eq!(e.code, "WrongZone");
        assert_eq!(ec2.interface_holder("eni-1").as_deref(), Some("i-live"));
    }

    #[tokio::test]
    async fn a_detach_that_never_finishes_times_out_without_attaching() {
        tokio::time::pause();
        let ec2 = FakeEc2::new();
        ec2.add_interface("eni-1", "az-a", Some("i-old"));
        ec2.stuck_detach();
        let e = mv(&ec2, "i-new", "az-a", &["i-old"]).await.unwrap_err();
        assert_eq!(e.code, "DetachTimeout");
        assert!(
            !ec2.calls()
                .iter()
                .any(|c| c.starts_with("AttachNetworkInterface"))
        );
    }
}
