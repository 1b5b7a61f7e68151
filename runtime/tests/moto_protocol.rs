#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The agent's EC2 calls against `moto_server`, so the EC2 simulator cannot
//! drift from the real wire format (request encoding, XML answers, error
//! codes). moto's semantics are not trusted here (it ignores ClientToken
//! and spot price filters); only that every call round-trips.
//!
//! The test command installs moto into a venv and sets `SPOT_MOTO_SERVER`
//! to its `moto_server`; without it the test fails under CI and is skipped
//! with a message elsewhere.

use spot_common::Pool;
use spot_runtime::ec2::{Ec2, Ec2Api, ErrorClass, LaunchSpec};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Option<(Moto, String)> {
    let bin = match std::env::var("SPOT_MOTO_SERVER") {
        Ok(b) => b,
        Err(_) if std::env::var("CI").is_ok() => {
            panic!("SPOT_MOTO_SERVER must be set under CI (the test command sets it)")
        }
        Err(_) => {
            eprintln!("SKIPPED: SPOT_MOTO_SERVER not set; run the README's test command");
            return None;
        }
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((Moto(child), url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ec2_calls_round_trip_through_moto() {
    let Some((_moto, url)) = start_moto() else {
        return;
    };
    let ec2 = Ec2::for_endpoint("us-east-1", &url).await;
    let sdk = ec2.sdk();

    // Fixtures moto needs: an AMI-backed launch template, a VPC, a subnet, an ENI.
    let image = sdk.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_owned();
    let lt = sdk
        .create_launch_template()
        .launch_template_name("spot-test")
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id(&image)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let lt_id = lt
        .launch_template()
        .unwrap()
        .launch_template_id()
        .unwrap()
        .to_owned();
    let vpc = sdk
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let subnet = sdk
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.0.1.0/24")
        .availability_zone("us-east-1b")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_owned();

    let spec = |rid: &str| LaunchSpec {
        request_id: rid.into(),
        group: "db".into(),
        pool: Pool {
            instance_type: "m5.large".into(),
            availability_zone: "us-east-1b".into(),
            subnet_id: Some(subnet_id.clone()),
        },
        launch_template_id: Some(lt_id.clone()),
        spot: true,
    };
    let a = ec2.launch(&spec("req-a")).await.unwrap();
    let b = ec2.launch(&spec("req-b")).await.unwrap();
    assert!(a.starts_with("i-") && b.starts_with("i-") && a != b);

    // Tags went over the wire as the agent encodes them.
    let listed = ec2.group_instances("db").await.unwrap();
    let ids: Vec<_> = listed.iter().map(|i| i.instance_id.clone()).collect();
    assert!(ids.contains(&a) && ids.contains(&b), "{listed:?}");
    let tagged = listed.iter().find(|i| i.instance_id == a).unwrap();
    assert_eq!(tagged.request_id.as_deref(), Some("req-a"), "{listed:?}");
    let d = sdk
        .describe_instances()
        .instance_ids(&a)
        .send()
        .await
        .unwrap();
    let inst = &d.reservations()[0].instances()[0];
    let tag = |k: &str| {
        inst.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_owned)
    };
    assert_eq!(tag("spot:request-id").as_deref(), Some("req-a"));
    assert_eq!(
        inst.placement().unwrap().availability_zone(),
        Some("us-east-1b")
    );

    // Elastic IP compare-and-set: onto a, then moved to b.
    let alloc = sdk
        .allocate_address()
        .domain(aws_sdk_ec2::types::DomainType::Vpc)
        .send()
        .await
        .unwrap();
    let alloc_id = alloc.allocation_id().unwrap().to_owned();
    ec2.move_address(&alloc_id, &a, &[]).await.unwrap();
    assert_eq!(
        ec2.address(&alloc_id).await.unwrap().1.as_deref(),
        Some(a.as_str())
    );
    // Never from a holder the coordinator did not fence.
    let e = ec2.move_address(&alloc_id, &b, &[]).await.unwrap_err();
    assert_eq!(e.code, "UnexpectedHolder", "{e:?}");
    ec2.move_address(&alloc_id, &b, std::slice::from_ref(&a))
        .await
        .unwrap();
    assert_eq!(
        ec2.address(&alloc_id).await.unwrap().1.as_deref(),
        Some(b.as_str())
    );
    // Already there: a no-op that still answers the association.
    assert!(
        !ec2.move_address(&alloc_id, &b, &[])
            .await
            .unwrap()
            .is_empty()
    );

    // Secondary ENI.
    let eni = sdk
        .create_network_interface()
        .subnet_id(&subnet_id)
        .send()
        .await
        .unwrap();
    let eni_id = eni
        .network_interface()
        .unwrap()
        .network_interface_id()
        .unwrap()
        .to_owned();
    let att = ec2.attach_interface(&eni_id, &b).await.unwrap();
    assert!(att.starts_with("eni-attach-"), "{att}");

    // Data volumes and their snapshots (moto flips states at once).
    let vol = sdk
        .create_volume()
        .availability_zone("us-east-1b")
        .size(8)
        .send()
        .await
        .unwrap()
        .volume_id()
        .unwrap()
        .to_owned();
    let v = ec2.volume(&vol).await.unwrap().unwrap();
    assert_eq!(
        (v.availability_zone.as_str(), v.attachment),
        ("us-east-1b", None)
    );
    ec2.attach_volume(&vol, &b, "/dev/sdf").await.unwrap();
    let v = ec2.volume(&vol).await.unwrap().unwrap();
    assert_eq!(
        v.attachment.as_ref().map(|a| a.instance_id.as_str()),
        Some(b.as_str())
    );
    assert_eq!(
        v.attachment.as_ref().map(|a| a.device.as_str()),
        Some("/dev/sdf")
    );
    let tags = spot_runtime::ec2::VolumeTags {
        group: "db",
        device: "/dev/sdf",
        request_id: "snapshot-db-1",
    };
    let snap = ec2.create_snapshot(&vol, &tags).await.unwrap();
    let snaps = ec2.snapshots("db", "/dev/sdf").await.unwrap();
    assert!(
        snaps
            .iter()
            .any(|s| s.snapshot_id == snap && s.volume_id == vol),
        "{snaps:?}"
    );
    assert!(
        ec2.snapshots("other", "/dev/sdf").await.unwrap().is_empty(),
        "filtered by tag"
    );
    let restored = ec2
        .create_volume(&snap, "us-east-1a", &tags, "promote-x-sdf")
        .await
        .unwrap();
    assert_eq!(
        ec2.volume(&restored)
            .await
            .unwrap()
            .unwrap()
            .availability_zone,
        "us-east-1a"
    );
    ec2.detach_volume(&vol, &b, false).await.unwrap();
    ec2.delete_snapshot(&snap).await.unwrap();
    assert_eq!(ec2.volume("vol-00000000000000000").await.unwrap(), None);

    // Spot prices parse (moto's values are fixed, its filters ignored).
    let prices = ec2
        .spot_prices(&["m5.large".into()], "Linux/UNIX", 0)
        .await
        .unwrap();
    assert!(!prices.is_empty());
    assert!(
        prices
            .iter()
            .all(|p| p.price.parse::<f64>().is_ok() && p.timestamp_ms > 0)
    );

    // Errors come back with their codes, classified.
    let e = ec2.terminate("i-00000000000000000").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::NotFound, "{e:?}");
    assert!(e.code.starts_with("InvalidInstanceID"), "{e:?}");
    let e = ec2.address("eipalloc-00000000").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::NotFound, "{e:?}");

    assert_eq!(
        ec2.instance_state(&a).await.unwrap().as_deref(),
        Some("running")
    );
    ec2.terminate(&a).await.unwrap();
    let s = ec2.instance_state(&a).await.unwrap();
    assert!(
        matches!(s.as_deref(), Some("shutting-down" | "terminated")),
        "{s:?}"
    );
    let states = ec2.group_instances("db").await.unwrap();
    let sa = states.iter().find(|i| i.instance_id == a).unwrap();
    assert!(
        sa.state == "shutting-down" || sa.state == "terminated",
        "{sa:?}"
    );
}
