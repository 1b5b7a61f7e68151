//! `spot-sim bench ui`: the dashboard in headless Chromium against a real
//! coordinator holding `--groups` groups of two registered instances each.
//! Prints the first paint (login to every group's row on screen), the cost
//! of one refresh (the page's reads and render), and the latency from a
//! store change (an operator's config change, answered) to the change
//! visible on the open page, p50/p99/max over `--changes` changes.

use crate::browser::{Browser, chromedriver};
use crate::harness::{Coordinator, ensure_binaries};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct UiBench {
    #[arg(long, default_value_t = 1000)]
    pub groups: usize,
    #[arg(long, default_value_t = 40)]
    pub changes: usize,
    #[arg(long)]
    pub json: bool,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(args: UiBench) -> Result<()> {
    ensure_binaries()?;
    let Some(driver) = chromedriver() else {
        bail!(
            "the UI benchmark needs chromium and chromium-driver (the test command installs them)"
        );
    };
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(dir.path(), &[])?;
    let api = coord.api();
    let adm = coord.admin_token.clone();
    eprintln!("creating {} groups of two instances", args.groups);
    let setup = Instant::now();
    let pools = json!([{"instance_type": "m5.large", "availability_zone": "us-east-1a"},
                       {"instance_type": "m5.large", "availability_zone": "us-east-1b"}]);
    for chunk in (0..args.groups).collect::<Vec<_>>().chunks(16) {
        let mut calls = Vec::new();
        for &g in chunk {
            let (api, adm, pools) = (api.clone(), adm.clone(), pools.clone());
            let enroll = coord.enrollment_token.clone();
            calls.push(tokio::spawn(async move {
                let name = format!("g{g:04}");
                let (st, v) = api
                    .post("/v1/groups", &adm, &json!({"name": name, "config": {"paused": true, "pools": pools}}))
                    .await?;
                if st != 201 {
                    bail!("creating {name}: {st} {v}");
                }
                for k in 0..2 {
                    let reg = json!({"instance_id": format!("i-{g:04}-{k}"), "instance_type": "m5.large",
                        "availability_zone": if k == 0 { "us-east-1a" } else { "us-east-1b" },
                        "region": "us-east-1", "lifecycle": "spot", "group": name});
                    let (st, v) = api.post("/v1/agents/register", &enroll, &reg).await?;
                    if !st.is_success() {
                        bail!("registering in {name}: {st} {v}");
                    }
                }
                Ok(())
            }));
        }
        for c in calls {
            c.await??;
        }
    }
    eprintln!("fleet ready in {:.1} s", setup.elapsed().as_secs_f64());

    let b = Browser::start(&driver).await?;
    let t = Instant::now();
    b.login(&coord.base, &adm).await?;
    let want = args.groups;
    b.until(
        "every group's row",
        Duration::from_secs(120),
        &format!("return document.querySelectorAll('#groups tbody tr').length === {want}"),
    )
    .await?;
    let first_paint = t.elapsed().as_secs_f64();

    let mut latencies = Vec::with_capacity(args.changes);
    let mut refresh_ms = Vec::with_capacity(args.changes);
    for k in 0..args.changes {
        let name = format!("g{:04}", (k * 7919) % args.groups);
        let (_, g) = api.get(&format!("/v1/groups/{name}"), &adm).await?;
        let mut config = g["config"].clone();
        let on = !config["manual_replica"].as_bool().unwrap_or(false);
        config["manual_replica"] = json!(on);
        let (st, v) = api
            .put(
                &format!("/v1/groups/{name}"),
                &adm,
                &json!({"config": config, "version": g["version"]}),
            )
            .await?;
        if !st.is_success() {
            bail!("updating {name}: {st} {v}");
        }
        // The change is in the store once the answer is here.
        let t = Instant::now();
        let check = format!(
            "const r = document.querySelector('#groups tr[data-group=\"{name}\"]'); return !!r && r.textContent.includes('manual replica') === {on}"
        );
        b.until("the change on the page", Duration::from_secs(30), &check)
            .await
            .with_context(|| format!("change {k} in {name}"))?;
        latencies.push(t.elapsed().as_secs_f64());
        let ms = b
            .js("return Number(document.body.dataset.renderMs)", vec![])
            .await?;
        refresh_ms.push(ms.as_f64().unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    b.close().await?;
    latencies.sort_by(f64::total_cmp);
    refresh_ms.sort_by(f64::total_cmp);
    let out = json!({
        "groups": args.groups,
        "instances": args.groups * 2,
        "first_paint_s": first_paint,
        "refresh_ms": {"p50": pct(&refresh_ms, 0.5), "p99": pct(&refresh_ms, 0.99), "max": pct(&refresh_ms, 1.0)},
        "change_to_page_s": {"n": latencies.len(), "p50": pct(&latencies, 0.5), "p99": pct(&latencies, 0.99), "max": pct(&latencies, 1.0)},
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "dashboard, {} groups / {} instances: first paint {:.2} s; one refresh (reads + render) p50 {:.0} ms, p99 {:.0} ms; store change -> visible on the page p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} changes; target p99 <= 2 s)",
            args.groups,
            args.groups * 2,
            first_paint,
            pct(&refresh_ms, 0.5),
            pct(&refresh_ms, 0.99),
            pct(&latencies, 0.5),
            pct(&latencies, 0.99),
            pct(&latencies, 1.0),
            latencies.len()
        );
    }
    Ok(())
}
