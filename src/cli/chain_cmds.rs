//! Chain commands: tracked addresses and transactions, a full sync and event ingestion run now,
//! with progress bars.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chainsync_jobs::{
    balance_sync::{SyncProgress, TokenSelector, sync_full},
    domain::Domain,
    ingest::{IngestReport, PassOptions, ingest_pass, reset},
    settings::AssetClass,
    tracking,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{
    IngestArgs, SyncArgs, TrackCmd, TxCmd,
    output::{Out, clip, short_time},
    queue_cmds::chain_id,
};
use crate::app::App;

/// A bar on stderr, hidden with `--json` or when stderr is not a terminal.
fn bar(out: &Out, len: u64, template: &str) -> ProgressBar {
    if out.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

pub async fn track(app: &App, out: &Out, cmd: TrackCmd) -> anyhow::Result<()> {
    let db = app.pool();
    match cmd {
        TrackCmd::Add { addresses, label } => {
            let mut added = 0;
            for a in &addresses {
                if tracking::track_address(db, a, label.as_deref()).await? {
                    added += 1;
                }
            }
            out.message(
                &json!({"added": added, "already_tracked": addresses.len() - added}),
                &format!(
                    "{added} address(es) added, {} already tracked",
                    addresses.len() - added
                ),
            );
        }
        TrackCmd::Remove { addresses } => {
            let mut removed = 0;
            for a in &addresses {
                if tracking::untrack_address(db, a).await? {
                    removed += 1;
                }
            }
            out.message(
                &json!({"removed": removed, "not_tracked": addresses.len() - removed}),
                &format!(
                    "{removed} address(es) removed, {} were not tracked; stored balances are kept",
                    addresses.len() - removed
                ),
            );
        }
        TrackCmd::Import { file } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let r = tracking::import_addresses(db, &text).await?;
            let invalid: Vec<_> = r
                .invalid
                .iter()
                .map(|(line, e)| json!({"line": line, "error": e.to_string()}))
                .collect();
            out.message(
                &json!({"inserted": r.inserted, "already_tracked": r.already_tracked, "invalid": invalid}),
                &format!(
                    "{} imported, {} already tracked, {} invalid line(s){}",
                    r.inserted,
                    r.already_tracked,
                    r.invalid.len(),
                    r.invalid
                        .iter()
                        .take(10)
                        .map(|(l, e)| format!("\n  line {l}: {e}"))
                        .collect::<String>()
                ),
            );
        }
        TrackCmd::List { limit, offset } => {
            let rows = tracking::list_addresses(db, limit, offset).await?;
            let table = rows
                .iter()
                .map(|r| {
                    vec![
                        r.address.clone(),
                        r.label.clone().unwrap_or_default(),
                        r.source.clone(),
                        short_time(&r.added_at),
                    ]
                })
                .collect();
            out.print(&rows, &["ADDRESS", "LABEL", "SOURCE", "ADDED"], table);
        }
    }
    Ok(())
}

pub async fn tx(app: &App, out: &Out, cmd: TxCmd) -> anyhow::Result<()> {
    match cmd {
        TxCmd::Track {
            hash,
            chain,
            addresses,
        } => {
            let id = chain_id(app, &chain)?;
            let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
            let inserted = tracking::track_tx(app.pool(), id, &hash, &refs).await?;
            let text = if inserted {
                format!("tracking {hash} on chain {id}; check-pending-tx follows it")
            } else {
                format!("{hash} was already tracked on chain {id}; addresses merged")
            };
            out.message(&json!({"tracked": hash, "new": inserted}), &text);
        }
        TxCmd::List {
            chain,
            state,
            limit,
        } => {
            let chain = chain.as_deref().map(|c| chain_id(app, c)).transpose()?;
            let rows = tracking::list_txs(app.pool(), chain, state.as_deref(), limit).await?;
            let table = rows
                .iter()
                .map(|r| {
                    vec![
                        r.chain_id.to_string(),
                        r.hash.clone(),
                        r.state.clone(),
                        r.block_number.map_or("-".into(), |b| b.to_string()),
                        r.confirmations.to_string(),
                        short_time(&r.first_seen),
                        clip(r.error.as_deref().unwrap_or_default(), 60),
                    ]
                })
                .collect();
            out.print(
                &rows,
                &[
                    "CHAIN",
                    "HASH",
                    "STATE",
                    "BLOCK",
                    "CONFS",
                    "FIRST SEEN",
                    "ERROR",
                ],
                table,
            );
        }
    }
    Ok(())
}

pub async fn sync(app: &App, out: &Out, a: SyncArgs) -> anyhow::Result<()> {
    let id = chain_id(app, &a.chain)?;
    let asset_class = a
        .asset_class
        .as_deref()
        .map(|c| {
            serde_json::from_value::<AssetClass>(json!(c.to_ascii_lowercase())).map_err(|_| {
                anyhow::anyhow!("--asset-class must be native, major, erc20 or nft, got {c:?}")
            })
        })
        .transpose()?;
    let sel = TokenSelector {
        token: a.token,
        asset_class,
    };
    let services = app.services().await?;
    let bar = bar(
        out,
        0,
        "{spinner} [{elapsed_precise}] [{wide_bar}] {pos}/{len} balances ({per_sec}) {msg}",
    );
    let on_progress = |p: &SyncProgress| {
        bar.set_length(p.items_total as u64);
        bar.set_position(p.items_done as u64);
        bar.set_message(format!(
            "batch {}/{}, {} failed",
            p.batches_done, p.batches_total, p.failed
        ));
    };
    // Bulk work for the RPC budget, like the sync-balances job.
    let r = chainsync_jobs::chain::budget::in_class(
        chainsync_jobs::chain::budget::Class::Bulk,
        sync_full(
            &services,
            uuid::Uuid::now_v7(),
            id,
            &sel,
            Some(&on_progress),
        ),
    )
    .await
    .map_err(|e| anyhow::anyhow!("sync failed: {e}"))?;
    bar.finish_and_clear();
    let secs = r.elapsed.as_secs_f64();
    out.message(
        &r,
        &format!(
            "{} balance(s) of {} address(es) x {} token(s) at block {} in {secs:.2}s \
             ({:.0}/s): {} written, {} changed, {} failed",
            r.items,
            r.addresses,
            r.tokens,
            r.block_number,
            r.items as f64 / secs.max(1e-9),
            r.written,
            r.changed,
            r.failed
        ),
    );
    if r.failed > 0 {
        bail!("{} balance call(s) failed; see the log", r.failed);
    }
    Ok(())
}

pub async fn ingest(app: &App, out: &Out, a: IngestArgs) -> anyhow::Result<()> {
    let id = chain_id(app, &a.chain)?;
    let cfg = app
        .config
        .domain
        .ingest
        .iter()
        .find(|c| c.chain_id == id)
        .ok_or_else(|| anyhow::anyhow!("no [[ingest]] entry for chain {}", a.chain))?;
    if let (Some(f), Some(t)) = (a.from, a.to)
        && f > t
    {
        bail!("--from {f} is after --to {t}");
    }
    let services = app.services().await?;
    let sink = Domain::ingest_sink(std::sync::Arc::new(app.queue.clone()));
    if a.full {
        let n = reset(app.pool(), id).await?;
        if !out.json {
            eprintln!(
                "forgot {n} event(s) of chain {id}; re-ingesting from block {}",
                cfg.start_block
            );
        }
    }
    let checkpoint = chainsync_jobs::ingest::checkpoint(app.pool(), id).await?;
    let start = a
        .from
        .unwrap_or_else(|| checkpoint.map_or(cfg.start_block, |c| c + 1));
    let chain = services.chains.get(id)?;
    let head = chain
        .head()
        .await
        .map_err(|e| anyhow::anyhow!("reading the head of chain {id}: {e}"))?
        .saturating_sub(chain.confirmations());
    let target = a.to.map_or(head, |t| t.min(head));
    let bar = bar(
        out,
        target.saturating_sub(start) + 1,
        "{spinner} [{elapsed_precise}] [{wide_bar}] {pos}/{len} blocks {msg}",
    );
    let t0 = Instant::now();
    let mut total = IngestReport {
        from_block: start,
        ..IngestReport::default()
    };
    let mut next = Some(start);
    loop {
        let base = total;
        let on_progress = |r: &IngestReport| {
            bar.set_position(r.to_block.saturating_sub(start) + 1);
            bar.set_message(format!("{} event(s) stored", base.stored + r.stored));
        };
        let r = chainsync_jobs::chain::budget::in_class(
            chainsync_jobs::chain::budget::Class::Bulk,
            ingest_pass(
                &services,
                &sink,
                id,
                Some(target),
                PassOptions {
                    from_block: next,
                    progress: Some(&on_progress),
                },
            ),
        )
        .await
        .map_err(|e| anyhow::anyhow!("ingestion failed: {e}"))?;
        total.logs += r.logs;
        total.stored += r.stored;
        total.undecodable += r.undecodable;
        total.reorged_blocks += r.reorged_blocks;
        total.requests += r.requests;
        total.to_block = total.to_block.max(r.to_block);
        if r.caught_up || r.to_block == 0 {
            total.caught_up = r.caught_up;
            break;
        }
        next = Some(r.to_block + 1);
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    out.message(
        &total,
        &format!(
            "blocks {}..={} of chain {id}: {} log(s), {} new event(s) stored, {} undecodable, \
             {} reorged block(s) rolled back, {} getLogs request(s), {secs:.2}s ({:.0} events/s)",
            total.from_block,
            total.to_block.max(target),
            total.logs,
            total.stored,
            total.undecodable,
            total.reorged_blocks,
            total.requests,
            total.logs as f64 / secs.max(1e-9)
        ),
    );
    Ok(())
}
