#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The identity check at registration, against the real coordinator in
//! `identity = "verify"`: a registration carries the instance identity
//! document IMDS signed, and the coordinator registers the instance the
//! document names, as the document places it. Every way around it (no
//! document, an edited one, a stranger's signature, another instance's
//! document, another account's instance, a replay while the agent lives)
//! is refused with its stable code and audited.

use serde_json::{Value, json};
use spot_common::wire::IdentityProof;
use spot_tests::harness::Coordinator;
use spot_tests::identity_sign::{self, ACCOUNT_ID};
use spot_tests::imds_sim::InstanceMeta;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/identity")
        .join(name)
}

fn reg(instance: &str, proof: Option<IdentityProof>) -> Value {
    json!({"instance_id": instance, "instance_type": "m5.large", "availability_zone": "us-east-1a",
           "region": "us-east-1", "lifecycle": "spot", "group": "db", "identity": proof})
}

#[tokio::test]
async fn only_a_signed_document_registers_its_own_instance() {
    let dir = tempfile::tempdir().unwrap();
    let ca = identity_sign::write_ca(dir.path()).unwrap();
    let c = Coordinator::start(
        &dir.path().join("coord"),
        &[
            "--identity",
            "verify",
            "--identity-ca",
            ca.to_str().unwrap(),
            "--allowed-accounts",
            ACCOUNT_ID,
        ],
    )
    .unwrap();
    let api = c.api();
    let (_, health) = api.get("/healthz", "").await.unwrap();
    assert_eq!(health["identity"], "verify", "{health}");
    let (st, _) = api
        .post(
            "/v1/groups",
            &c.admin_token,
            &json!({"name": "db", "config": {}}),
        )
        .await
        .unwrap();
    assert_eq!(st, 201);
    let register = |body: Value| {
        let (api, token) = (c.api(), c.enrollment_token.clone());
        async move {
            let (st, v) = api
                .post("/v1/agents/register", &token, &body)
                .await
                .unwrap();
            (
                st.as_u16(),
                v["code"].as_str().unwrap_or_default().to_owned(),
                v,
            )
        }
    };

    // The genuine article: placed as its document says, not as the body.
    let one = InstanceMeta::spot("i-0one", "c5.xlarge", "us-east-1c", "db");
    let (st, _, v) = register(reg("i-0one", Some(one.proof().unwrap()))).await;
    assert_eq!(st, 201, "{v}");
    let (_, inst) = api
        .get("/v1/instances/i-0one", &c.admin_token)
        .await
        .unwrap();
    assert_eq!(
        (&inst["instance_type"], &inst["availability_zone"]),
        (&json!("c5.xlarge"), &json!("us-east-1c")),
        "the document, not the body, places the instance: {inst}"
    );

    let mut edited = InstanceMeta::spot("i-0two", "m5.large", "us-east-1a", "db")
        .proof()
        .unwrap();
    edited.document = edited.document.replace("m5.large", "x2iedn.32xlarge");
    let stranger = IdentityProof {
        document: std::fs::read_to_string(fixture("document.json")).unwrap(),
        rsa2048: spot_common::identity::base64_encode(
            &std::fs::read(fixture("stranger.p7")).unwrap(),
        ),
    };
    let mut elsewhere = InstanceMeta::spot("i-0three", "m5.large", "us-east-1a", "db");
    elsewhere.account_id = "999999999999".into();
    let refusals = [
        ("i-0two", None, 403, "identity_required"),
        ("i-0two", Some(edited), 403, "identity_invalid"),
        (
            "i-0fixture0000000001",
            Some(stranger),
            403,
            "identity_invalid",
        ),
        (
            "i-0two",
            Some(one.proof().unwrap()),
            403,
            "identity_mismatch",
        ),
        (
            "i-0three",
            Some(elsewhere.proof().unwrap()),
            403,
            "account_not_allowed",
        ),
        // A replay of i-0one's genuine document while its agent is live.
        (
            "i-0one",
            Some(one.proof().unwrap()),
            409,
            "instance_registered",
        ),
    ];
    for (instance, proof, want_status, want_code) in refusals {
        let (st, code, v) = register(reg(instance, proof)).await;
        assert_eq!(
            (st, code.as_str()),
            (want_status, want_code),
            "{instance}: {v}"
        );
        if want_status == 403 {
            let (_, audit) = api
                .get(
                    &format!("/v1/audit?entity=instance:{instance}"),
                    &c.admin_token,
                )
                .await
                .unwrap();
            assert!(
                audit
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["action"] == "identity_refused"
                        && a["post_state"]["code"] == want_code),
                "{instance}'s {want_code} is audited: {audit}"
            );
        }
    }
    let (_, agents) = api
        .get("/v1/agents?group=db", &c.admin_token)
        .await
        .unwrap();
    assert_eq!(
        agents.as_array().unwrap().len(),
        1,
        "only i-0one registered: {agents}"
    );
}

/// `identity = "trust"` takes the body's word, and says so on `/healthz`.
#[tokio::test]
async fn trust_mode_registers_without_a_document_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &["--identity", "trust"]).unwrap();
    let api = c.api();
    let (_, health) = api.get("/healthz", "").await.unwrap();
    assert_eq!(health["identity"], "trust", "{health}");
    api.post(
        "/v1/groups",
        &c.admin_token,
        &json!({"name": "db", "config": {}}),
    )
    .await
    .unwrap();
    let (st, v) = api
        .post(
            "/v1/agents/register",
            &c.enrollment_token,
            &reg("i-0one", None),
        )
        .await
        .unwrap();
    assert_eq!(st, 201, "{v}");
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(
        log.contains("identity") && log.contains("trust"),
        "a warning at start"
    );
}
