//! The `chainsync` command line. Raw flags are parsed here, validated into queue calls, and
//! printed as tables or `--json`. Exit code 0 on success, 1 with a one-line reason on error.

mod chain_cmds;
mod control_cmds;
pub mod output;
pub use output::table;
mod queue_cmds;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::{app::App, config::Config};

#[derive(Debug, Parser)]
#[command(
    name = "chainsync",
    version,
    about = "Keeps your Postgres in step with EVM chains: typed sync jobs on a durable Postgres queue."
)]
pub struct Cli {
    /// Config file (TOML); see config/default.toml for every key.
    #[arg(long, global = true, env = "CHAINSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Postgres URL (overrides the config file and DATABASE_URL).
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the chainsync schema and register the job kinds.
    Migrate,
    /// Run workers, rescuer and pruner until SIGINT/SIGTERM.
    Daemon,
    /// Enqueue a job: `chainsync enqueue sync-user-balance --args '{"chain_id":1,...}'`.
    Enqueue(EnqueueArgs),
    /// List, show and cancel jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Queues: list, pause, resume, and cluster-wide limits (per queue, per kind).
    #[command(subcommand)]
    Queue(control_cmds::QueueCmd),
    /// List the job kinds this binary knows, with their policies.
    Kinds,
    /// Health report and score 0-100; exit code 1 below 60.
    Health,
    /// Tracked addresses (the `chainsync.tracked_addresses` table): add, remove, import, list.
    #[command(subcommand)]
    Track(TrackCmd),
    /// Submitted transactions followed by check-pending-tx: track, list.
    #[command(subcommand)]
    Tx(TxCmd),
    /// Full balance sync of a chain now, in this process, with a progress bar (the code
    /// sync-balances runs: Multicall3 batches pinned to one block).
    Sync(SyncArgs),
    /// Ingest events of a chain now, with a progress bar: from the checkpoint (default), a
    /// block range (--from/--to), or everything again (--full).
    Ingest(IngestArgs),
    /// Points backfill: check lag, scan and enqueue the missing windows, or backfill a range.
    #[command(subcommand)]
    Backfill(BackfillCmd),
    /// Schedules from the config: next run times and the last outcome of each.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    #[cfg(feature = "dev")]
    /// The main job end to end on a local anvil chain: full sync, event-driven sync, reconcile
    /// with repair, dead letters and a replay, then a summary. Uses a scratch database.
    Demo {
        /// Token holders to create.
        #[arg(long, default_value_t = 5000)]
        holders: usize,
        /// Scratch database (dropped and re-created) on the server of DATABASE_URL.
        #[arg(long, default_value = "chainsync_demo")]
        database: String,
        /// `tron`: the same on a `family = "tron"` chain, reached through a stand-in of
        /// java-tron's JSON-RPC in front of anvil, with base58check addresses throughout.
        #[arg(long, default_value = "evm")]
        family: chainsync_jobs::ids::ChainFamily,
    },
    /// Benchmarks; `bench queue` runs the peers' queue workload (see scripts/bench-queue.sh).
    #[cfg(feature = "dev")]
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, Subcommand)]
pub enum TrackCmd {
    /// Track addresses on every configured chain.
    Add {
        #[arg(required = true)]
        addresses: Vec<String>,
        #[arg(long)]
        label: Option<String>,
    },
    /// Stop tracking addresses (their stored balances are kept).
    Remove {
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Import addresses from FILE (`-` for stdin): one per line or the first column of a CSV;
    /// `#` comments and blank lines are skipped, bad lines reported.
    Import { file: String },
    /// Tracked addresses, newest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, default_value_t = 0)]
        offset: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum TxCmd {
    /// Follow a submitted transaction until it confirms or fails; the addresses it touches are
    /// re-synced when it confirms (more are taken from the receipt).
    Track {
        hash: String,
        /// Chain id or name.
        #[arg(long)]
        chain: String,
        /// Address the transaction touches (repeatable).
        #[arg(long = "address")]
        addresses: Vec<String>,
    },
    /// Tracked transactions, newest first.
    List {
        #[arg(long)]
        chain: Option<String>,
        /// pending, submitted, confirmed, failed or stuck.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Chain id or name.
    pub chain: String,
    /// One token: `native`, a token address or a configured symbol.
    #[arg(long, conflicts_with = "asset_class")]
    pub token: Option<String>,
    /// One asset class: native, major, erc20 or nft. Without --token/--asset-class: all tokens.
    #[arg(long)]
    pub asset_class: Option<String>,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Chain id or name.
    #[arg(long)]
    pub chain: String,
    /// First block (default: after the checkpoint). Events already stored are not duplicated.
    #[arg(long)]
    pub from: Option<u64>,
    /// Last block (default: head minus the chain's confirmations).
    #[arg(long)]
    pub to: Option<u64>,
    /// Forget what was ingested on the chain and start again at its start_block.
    #[arg(long, conflicts_with = "from")]
    pub full: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackfillCmd {
    /// Lagging addresses, oldest gap and windows missing per token of CHAIN (id or name).
    Check { chain: String },
    /// Enqueue backfill jobs for every missing window of CHAIN.
    Scan { chain: String },
    /// Enqueue the windows of [FROM, TO) (RFC 3339) for every token with a rate on CHAIN and wait.
    Points {
        chain: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Every schedule with its next runs, last tick and last outcome.
    List,
    /// Enqueue a schedule's job now (unique key `schedule:NAME:now`: no second one while the
    /// first waits to start).
    Run { name: String },
    /// Switch a schedule on for every daemon (wins over the config's `enabled`).
    Enable { name: String },
    /// Switch a schedule off for every daemon: it claims no tick and enqueues nothing.
    Disable { name: String },
}

#[cfg(feature = "dev")]
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Full balance sync of N anvil holders: chainsync vs one eth_call per address (batches of
    /// 50, like the original scripts). Prints `RESULT {json}`. Uses database bench_sync.
    Sync {
        #[arg(long, default_value_t = 10_000)]
        holders: usize,
    },
    /// Event ingestion on anvil: events/s for N Transfer events spread over at least --blocks
    /// blocks (median of --reps), then the lag from a Transfer mined (1 s blocks) to the holder's
    /// balance row updated by the live mode. Prints `RESULT {json}`. Uses databases bench_ingest
    /// and bench_ingest_live.
    Ingest {
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        #[arg(long, default_value_t = 10_000)]
        blocks: usize,
        /// Holders the events go to, in turn (each holder's balance changes events/holders
        /// times; a holder appears at most once per block while holders ≥ events/blocks)
        #[arg(long, default_value_t = 2_000)]
        holders: usize,
        #[arg(long, default_value_t = 90)]
        transfers: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// History rebuild after an outage on anvil: N holders minted and ingested live, the daemon's
    /// parts stopped while --hours of chain time pass with --transfers holder-to-holder transfers
    /// (a block every --block-seconds), then restarted: seconds until ingestion is at the head
    /// and every closed points window is computed, checked against balanceOf and an integration
    /// of the token's Transfer logs (fails on any difference). Prints `RESULT {json}`. Uses
    /// database bench_rebuild.
    Rebuild {
        #[arg(long, default_value_t = 10_000)]
        holders: usize,
        #[arg(long, default_value_t = 50_000)]
        transfers: usize,
        #[arg(long, default_value_t = 24)]
        hours: u64,
        #[arg(long, default_value_t = 300)]
        block_seconds: u64,
    },
    /// `GET /v1/balances` on loopback: requests/s and latency with a warm Redis cache, then with
    /// Redis stopped (a private redis-server). Prints `RESULT {json}`. Uses database bench_http.
    Http {
        #[arg(long, default_value_t = 10_000)]
        holders: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// One unit of the queue workload; prints `RESULT {json}`. Uses a scratch database.
    Queue {
        /// `misc` (single enqueue + latency) or `drain` (bulk enqueue + drain).
        #[arg(long, default_value = "drain")]
        mode: String,
        /// Drain config: c<concurrency>-b<fetch batch>[-keep].
        #[arg(long, default_value = "c500-b500")]
        drain_config: String,
        #[arg(long, default_value_t = 100_000)]
        jobs: usize,
        /// Scratch database, dropped and re-created.
        #[arg(long, default_value = "bench_chainsync")]
        database: String,
        /// The same server through a transaction-mode pooler (e.g. PgBouncer), as
        /// `postgres://user@host:port` (the scratch database's name is appended): the queue's
        /// pool goes through it, connected as `database.pooler = "transaction"`.
        #[arg(long)]
        pooler_url: Option<String>,
        /// With --pooler-url: LISTEN on a direct connection (`direct`, as with
        /// `database.direct_url`) or not at all (`off`: polling only).
        #[arg(long, default_value = "direct")]
        listen: String,
    },
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Job kind, e.g. sync-user-balance.
    pub kind: String,
    /// Arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub args: String,
    #[arg(long)]
    pub unique_key: Option<String>,
    /// Window of the unique key ("10m"): while it lasts, enqueues of the key return the job
    /// that opened it (debounce).
    #[arg(long, requires = "unique_key")]
    pub unique_for: Option<String>,
    #[arg(long)]
    pub priority: Option<i16>,
    #[arg(long)]
    pub queue: Option<String>,
    /// Earliest run time, RFC 3339.
    #[arg(long)]
    pub run_at: Option<DateTime<Utc>>,
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// W3C traceparent (00-<trace id>-<parent id>-<flags>): the job's run continues that trace.
    #[arg(long)]
    pub traceparent: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// Jobs, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, default_value_t = 0)]
        offset: i64,
    },
    /// One job with its arguments and error history.
    Show { id: Uuid },
    /// Cancel an available or running job.
    Cancel { id: Uuid },
}

#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// Dead letters, most recent first.
    List {
        #[arg(long)]
        kind: Option<String>,
        /// Failed at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, default_value_t = 0)]
        offset: i64,
    },
    /// One dead letter with every attempt's error.
    Show { id: Uuid },
    /// Replay one dead letter by id, or all matching --kind/--since.
    Replay {
        id: Option<Uuid>,
        #[arg(long, conflicts_with = "id")]
        kind: Option<String>,
        #[arg(long, conflicts_with = "id")]
        since: Option<DateTime<Utc>>,
    },
    /// Delete dead letters for good: by id, --kind, --before, or --all.
    Purge {
        id: Option<Uuid>,
        #[arg(long, conflicts_with = "id")]
        kind: Option<String>,
        #[arg(long, conflicts_with = "id")]
        before: Option<DateTime<Utc>>,
        #[arg(long, conflicts_with_all = ["id", "kind", "before"])]
        all: bool,
    },
}

/// The server the self-contained commands (demo, benchmarks) create their scratch databases on:
/// `--database-url`, else `DATABASE_URL`, else the default.
pub fn admin_url(cli: &Cli) -> String {
    cli.database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| crate::config::DEFAULT_DATABASE_URL.to_string())
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let daemon = matches!(cli.command, Command::Daemon);
    let config = if daemon {
        // The daemon's subscriber depends on `[telemetry]` (traces), so config comes first.
        let config = Config::load(cli.config.as_deref(), cli.database_url.as_deref())?;
        crate::telemetry::init(true, "info", Some(&config.telemetry))
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        config
    } else {
        crate::telemetry::init(false, "warn", None)?;
        Config::load(cli.config.as_deref(), cli.database_url.as_deref())?
    };
    let app = App::connect(config).await?;
    let out = output::Out { json: cli.json };
    match cli.command {
        Command::Migrate => queue_cmds::migrate(&app, &out).await,
        Command::Daemon => {
            let result = crate::daemon::run(app).await;
            crate::telemetry::shutdown().await;
            result
        }
        Command::Enqueue(a) => queue_cmds::enqueue(&app, &out, a).await,
        Command::Jobs(c) => queue_cmds::jobs(&app, &out, c).await,
        Command::Dlq(c) => queue_cmds::dlq(&app, &out, c).await,
        Command::Queue(c) => control_cmds::run(&app, &out, c).await,
        Command::Kinds => queue_cmds::kinds(&app, &out),
        Command::Health => {
            let r = crate::health::report(&app).await;
            let mut rows = vec![
                vec!["score".into(), r.score.to_string()],
                vec!["database".into(), r.database.to_string()],
                vec!["migrated".into(), r.migrated.to_string()],
                vec![
                    "jobs available / running / overdue".into(),
                    format!(
                        "{} / {} / {}",
                        r.queue_available, r.queue_running, r.queue_overdue
                    ),
                ],
                vec!["dead letters".into(), r.dead_letters.to_string()],
            ];
            for c in &r.chains {
                rows.push(vec![
                    format!("chain {}", c.name),
                    format!(
                        "last block {}, sync lag {}s, ingested to {}",
                        c.last_block.map_or("-".into(), |b| b.to_string()),
                        c.sync_lag_seconds.map_or("-".into(), |l| l.to_string()),
                        c.ingest_block.map_or("-".into(), |b| b.to_string())
                    ),
                ]);
            }
            let t = &r.thresholds;
            rows.push(vec![
                "thresholds".into(),
                format!(
                    "balance_max_age {}, ingest_max_age {}, points_max_age {}, min_score {}",
                    chainsync_engine::duration::format_duration(t.balance_max_age),
                    chainsync_engine::duration::format_duration(t.ingest_max_age),
                    chainsync_engine::duration::format_duration(t.points_max_age),
                    t.min_score
                ),
            ]);
            for d in &r.deductions {
                rows.push(vec![
                    "deduction".into(),
                    format!("-{} {}", d.points, d.reason),
                ]);
            }
            for p in &r.problems {
                rows.push(vec!["problem".into(), p.clone()]);
            }
            out.print(&r, &["CHECK", "VALUE"], rows);
            if !r.healthy {
                anyhow::bail!(
                    "health score {} is below {}",
                    r.score,
                    r.thresholds.min_score
                );
            }
            Ok(())
        }
        Command::Backfill(c) => queue_cmds::backfill(&app, &out, c).await,
        Command::Track(c) => chain_cmds::track(&app, &out, c).await,
        Command::Tx(c) => chain_cmds::tx(&app, &out, c).await,
        Command::Sync(a) => chain_cmds::sync(&app, &out, a).await,
        Command::Ingest(a) => chain_cmds::ingest(&app, &out, a).await,
        Command::Schedule(ScheduleCmd::List) => queue_cmds::schedules(&app, &out).await,
        Command::Schedule(ScheduleCmd::Run { name }) => {
            queue_cmds::schedule_run(&app, &out, &name).await
        }
        Command::Schedule(ScheduleCmd::Enable { name }) => {
            queue_cmds::schedule_switch(&app, &out, &name, true).await
        }
        Command::Schedule(ScheduleCmd::Disable { name }) => {
            queue_cmds::schedule_switch(&app, &out, &name, false).await
        }
        #[cfg(feature = "dev")]
        Command::Bench(_) | Command::Demo { .. } => Ok(()),
    }
}
