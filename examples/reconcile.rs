//! Reconciles a Redis ledger's books, account by account, under live traffic.
//!
//! ```text
//! cargo run --example reconcile -- redis://127.0.0.1:6379
//! cargo run --example reconcile -- --cluster redis://10.0.0.1:7000 redis://10.0.0.2:7000
//! cargo run --example reconcile -- --prefix credits --stale-after-secs 3600 rediss://…
//! ```
//!
//! Walks every account (each master of a cluster), checks each one's books in one atomic
//! script (`RedisLedger::reconcile`: held against the open holds, the expiry index, stale
//! holds, top-ups against payment ids and their claims, the newest audit entry against the
//! totals), shows a progress bar, and prints a drift report naming each account and
//! figure. Exits 0 when the books balance, 1 on drift, 2 on an error.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tower_credits::ledger::redis::reconcile::DEFAULT_STALE_AFTER;
use tower_credits::ledger::RedisLedger;

struct Args {
    urls: Vec<String>,
    cluster: bool,
    prefix: Option<String>,
    stale_after: Duration,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        urls: Vec::new(),
        cluster: false,
        prefix: None,
        stale_after: DEFAULT_STALE_AFTER,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--cluster" => args.cluster = true,
            "--prefix" => args.prefix = Some(it.next().ok_or("--prefix needs a value")?),
            "--stale-after-secs" => {
                let secs = it.next().ok_or("--stale-after-secs needs a value")?;
                let secs: u64 = secs
                    .parse()
                    .map_err(|_| "--stale-after-secs: whole seconds")?;
                args.stale_after = Duration::from_secs(secs);
            }
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                args.urls.push(url.to_owned())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.urls.is_empty() {
        return Err(
            "usage: reconcile [--cluster] [--prefix P] [--stale-after-secs N] redis://…".into(),
        );
    }
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let mut builder = RedisLedger::builder().call_timeout(Duration::from_secs(10));
    builder = match args.cluster {
        true => builder.cluster_urls(args.urls.clone()),
        false => builder.url(&args.urls[0]),
    };
    if let Some(prefix) = &args.prefix {
        builder = builder.key_prefix(prefix);
    }
    let ledger = match builder.build().await {
        Ok(ledger) => ledger,
        Err(error) => {
            eprintln!("error: cannot reach the ledger: {error}");
            return ExitCode::from(2);
        }
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} accounts  {msg}")
            .expect("a valid template"),
    );
    let result = ledger
        .reconcile_all(args.stale_after, |p| {
            bar.set_length(p.total);
            bar.set_position(p.checked);
            bar.set_message(format!("{} drift(s)", p.drifts));
        })
        .await;
    let checked = bar.position();
    bar.finish_and_clear();
    match result {
        Err(error) => {
            eprintln!("error after {checked} accounts: {error}");
            ExitCode::from(2)
        }
        Ok(drifts) if drifts.is_empty() => {
            println!("balanced: {checked} accounts checked, no drift");
            ExitCode::SUCCESS
        }
        Ok(drifts) => {
            println!("drift: {} finding(s) in {checked} accounts", drifts.len());
            for drift in drifts {
                println!("  {drift}");
            }
            ExitCode::from(1)
        }
    }
}
