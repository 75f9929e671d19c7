#![allow(clippy::unwrap_used)]
//! History retention on a real chain (anvil): a token's transfers spread over four months of
//! chain time, ingested and turned into points by the daemon's own code (workers and live
//! ingestion), and the maintenance pass with a `[history]` retention at the end of every ten
//! days of chain time (from the start, or first after months of history), dropping whole
//! partitions of `balance_changes`, `events` and `points_history` as the chain's time goes by.
//! Before and after every pass, what is kept is compared with the chain itself (its Transfer
//! logs through `eth_getLogs`, `balanceOf` at blocks), never with rows chainsync wrote: the
//! balances, the amount at every block from the one before the first kept period on, the history
//! rows, the events, and every points window.
//!
//! Retention is measured on the chain's timeline: each pass gets the time of the chain's head
//! (on a live chain about the wall clock; here chain time runs months ahead of it).

mod common;
use common::{
    TokenChain, count,
    running::Running,
    timeline::{
        HOUR, RATE, StoredChange, Timeline, log_timeline, reference, stored_history, stored_points,
        times_only, transfer_logs,
    },
    track_holders, wait_count,
};

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, U256},
    providers::{Provider, ext::AnvilApi},
};
use chainsync::app::App;
use chainsync_dev::devchain::{self, contracts::TestToken};
use chainsync_jobs::{NewJob, history::Keep, history::maintain, points::window_of};
use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use serde_json::json;
use sqlx::PgPool;

const CHAIN_ID: u64 = 31_337;
const DAY: u64 = 86_400;
/// Chain time between two maintenance passes.
const STEP_DAYS: u64 = 10;
/// The step from which one holder stops moving.
const RETIRE_STEP: u64 = 3;
/// Random transfers among the active holders per step.
const TRANSFERS_PER_STEP: u64 = 3;
/// Holders minted to at the start.
const HOLDERS: usize = 8;
/// `[history]`: how long each table keeps history.
const KEEP: [(&str, &str); 3] = [
    ("balance_changes", "45d"),
    ("events", "30d"),
    ("points_history", "35d"),
];
/// The partitioned tables, as `pg_partition_tree` names them.
const PARENTS: [&str; 3] = ["balance_changes", "events", "points_history"];
const WAIT: Duration = Duration::from_secs(90);

type Points = BTreeMap<(Address, DateTime<Utc>), (u128, u128)>;

/// One transfer of the scenario: `pct` percent of the sender's balance at the time.
#[derive(Debug, Clone, Copy)]
struct Move {
    from: Address,
    to: Address,
    pct: u64,
}

/// The holders' parts in the scenario.
struct Cast {
    /// Minted to, then untouched until the last step.
    sleeper: Address,
    /// Sends all it has in the first step (a balance of zero), then untouched until the last.
    drained: Address,
    /// Active in the first [`RETIRE_STEP`] steps only, then untouched until the last step.
    retired: Address,
    /// Never minted to: receives once in step 2, then untouched until the last step.
    late: Address,
    /// Never minted to: first seen in the last step.
    newcomer: Address,
    /// Active all along.
    active: Vec<Address>,
    /// The last step, when the quiet holders wake up.
    last_step: u64,
}

fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

impl Cast {
    /// Holders whose last change before the last step is old.
    fn quiet(&self) -> [Address; 4] {
        [self.sleeper, self.drained, self.retired, self.late]
    }

    /// The transfers of `step`, in order: the parts' own, then random ones among the active.
    fn moves(&self, step: u64, seed: &mut u64) -> Vec<Move> {
        let m = |from, to, pct| Move { from, to, pct };
        let mut moves = Vec::new();
        if step == 0 {
            moves.push(m(self.drained, self.active[0], 100));
        }
        if step == 2 {
            moves.push(m(self.active[1], self.late, 25));
        }
        if step == RETIRE_STEP - 1 {
            moves.push(m(self.retired, self.active[3], 20));
        }
        if step == self.last_step {
            moves.extend([
                m(self.sleeper, self.newcomer, 40),
                m(self.active[2], self.drained, 10),
                m(self.retired, self.sleeper, 30),
                m(self.late, self.newcomer, 50),
            ]);
        }
        let mut pool = self.active.clone();
        if step < RETIRE_STEP {
            pool.push(self.retired);
        }
        let n = pool.len() as u64;
        for _ in 0..TRANSFERS_PER_STEP {
            let from = next(seed) % n;
            let to = (from + 1 + next(seed) % (n - 1)) % n;
            moves.push(m(
                pool[from as usize],
                pool[to as usize],
                5 + next(seed) % 56,
            ));
        }
        moves
    }
}

/// What one check found kept.
struct Seen {
    /// First block of the chain's kept balance history periods (0 before it has periods).
    balances_from: u64,
    /// The same for events.
    events_from: u64,
    /// Every stored points window of the token.
    points: Points,
    /// The chain's history, from its logs.
    timeline: Timeline,
}

struct Env {
    s: TokenChain,
    app: App,
    pool: PgPool,
    /// Chain time of day 0: an hour boundary after the mint.
    t0: u64,
    /// `balanceOf(holder)` at a block, each read once (no reorg here: blocks never change).
    reads: HashMap<(Address, u64), U256>,
    times: HashMap<u64, DateTime<Utc>>,
}

impl Env {
    async fn new(pool: &PgPool) -> Self {
        let s = TokenChain::builder("TST")
            .holders(HOLDERS)
            .seed(7)
            .start()
            .await
            .unwrap();
        // Periods of the chain before its rows tell its rate: about a month of its blocks.
        let period_blocks = (TRANSFERS_PER_STEP + 1) * 30 / STEP_DAYS;
        let token = s.token_hex();
        let keep: String = KEEP
            .iter()
            .map(|(t, k)| format!("{t} = \"{k}\"\n"))
            .collect();
        let app = common::app(
            pool,
            &format!(
                r#"
[worker]
concurrency = 8
poll_interval = "50ms"
lease = "3s"
heartbeat = "500ms"
shutdown_timeout = "5s"
[maintenance]
rescue_interval = "1s"
{chain}confirmations = 0
{tokens}[[ingest]]
chain_id = {CHAIN_ID}
poll_interval = "50ms"
initial_range = 500
max_range = 500
contracts = [{{ address = "{token}" }}]
[points]
rates = [{{ chain_id = {CHAIN_ID}, token = "{token}", rate = "{RATE}" }}]
[history]
{keep}period_blocks = {period_blocks}
"#,
                chain = s.chain_toml(),
                tokens = s.token_toml(),
            ),
        )
        .await;
        track_holders(pool, &s).await;
        let latest = s
            .chain
            .provider()
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .unwrap()
            .unwrap()
            .header
            .timestamp;
        Self {
            t0: (latest / HOUR + 2) * HOUR,
            s,
            app,
            pool: pool.clone(),
            reads: HashMap::new(),
            times: HashMap::new(),
        }
    }

    fn day0(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(i64::try_from(self.t0).unwrap(), 0).unwrap()
    }

    fn token(&self) -> String {
        self.s.token_hex()
    }

    /// How long `table` keeps history.
    fn keep(&self, table: &str) -> chrono::Duration {
        let h = &self.app.config.domain.history;
        let keep = match table {
            "balance_changes" => h.balance_changes,
            "events" => h.events,
            _ => h.points_history,
        };
        let Keep::For(d) = keep else {
            panic!("history.{table} is kept forever")
        };
        chrono::Duration::from_std(d).unwrap()
    }

    /// A transfer in a block of its own at chain time `t0 + secs`.
    async fn transfer_at(&self, secs: u64, m: Move) {
        let balance = self.s.chain.balance_of(self.s.token, m.from).await.unwrap();
        let amount = balance * U256::from(m.pct) / U256::from(100u64);
        assert!(!amount.is_zero(), "{m:?}: nothing to send");
        self.s
            .chain
            .provider()
            .anvil_set_next_block_timestamp(self.t0 + secs)
            .await
            .unwrap();
        self.s
            .chain
            .transfer_from_holder(self.s.token, m.from, m.to, amount)
            .await
            .unwrap();
    }

    /// An empty block at chain time `t0 + secs`.
    async fn block_at(&self, secs: u64) {
        let p = self.s.chain.provider();
        p.anvil_set_next_block_timestamp(self.t0 + secs)
            .await
            .unwrap();
        p.evm_mine(None).await.unwrap();
    }

    async fn block_time(&mut self, n: u64) -> DateTime<Utc> {
        if let Some(t) = self.times.get(&n) {
            return *t;
        }
        let b = self
            .s
            .chain
            .provider()
            .get_block_by_number(n.into())
            .await
            .unwrap()
            .unwrap();
        let t = DateTime::from_timestamp(i64::try_from(b.header.timestamp).unwrap(), 0).unwrap();
        self.times.insert(n, t);
        t
    }

    /// Reads `balanceOf` at each (holder, block) not read yet.
    async fn read_balances(&mut self, pairs: impl IntoIterator<Item = (Address, u64)>) {
        let missing: Vec<(Address, u64)> = pairs
            .into_iter()
            .filter(|p| !self.reads.contains_key(p))
            .collect();
        let token = TestToken::new(self.s.token, self.s.chain.provider().clone());
        let token = &token;
        let got: Vec<((Address, u64), U256)> = stream::iter(missing)
            .map(|(who, block)| async move {
                let v = token.balanceOf(who).block(block.into()).call().await;
                ((who, block), v.unwrap())
            })
            .buffer_unordered(16)
            .collect()
            .await;
        self.reads.extend(got);
    }

    /// Waits until the daemon's parts caught up with the chain: ingested to the head, points
    /// computed for every window closed by the head's time, nothing left in the queue. Returns
    /// the head and its time.
    async fn settle(&mut self) -> (u64, DateTime<Utc>) {
        let head = self.s.chain.block_number().await.unwrap();
        let at = self.block_time(head).await;
        wait_count(
            &self.pool,
            &format!(
                "SELECT coalesce(max(block_number), -1) FROM chainsync.ingest_checkpoints
                 WHERE chain_id = {CHAIN_ID}"
            ),
            i64::try_from(head).unwrap(),
            WAIT,
        )
        .await;
        wait_count(
            &self.pool,
            &format!(
                "SELECT count(*) FROM chainsync.points_progress
                 WHERE chain_id = {CHAIN_ID} AND token = '{}' AND computed_through = '{}'",
                self.token(),
                window_of(at).to_rfc3339()
            ),
            1,
            WAIT,
        )
        .await;
        wait_count(
            &self.pool,
            "SELECT count(*) FROM chainsync.jobs WHERE state IN ('available', 'running')",
            0,
            WAIT,
        )
        .await;
        assert_eq!(
            count(&self.pool, "SELECT count(*) FROM chainsync.dead_letters").await,
            0,
            "no job failed for good"
        );
        (head, at)
    }

    /// A full balance sync of the token (the `sync-balances` job): a read of every tracked
    /// holder at the head, recorded in the history where it differs from the amount before.
    async fn sync_balances(&self) {
        let job = NewJob::untyped(
            "sync-balances",
            json!({"chain_id": CHAIN_ID, "token": self.s.symbol}),
        );
        let id = self.app.queue.enqueue(job).await.unwrap().id;
        wait_count(
            &self.pool,
            &format!(
                "SELECT count(*) FROM chainsync.sync_runs WHERE id = '{id}' AND state = 'done'"
            ),
            1,
            WAIT,
        )
        .await;
    }

    /// First block of the chain's kept periods of `parent` (0 when it has none yet).
    async fn first_period(&self, parent: &str) -> u64 {
        let from: i64 = sqlx::query_scalar(
            "SELECT coalesce(min(from_block), 0) FROM chainsync.history_periods
             WHERE parent = $1 AND chain_id = $2",
        )
        .bind(parent)
        .bind(CHAIN_ID as i64)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        u64::try_from(from).unwrap()
    }

    /// Leaf partitions of the history tables.
    async fn leaves(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for parent in PARENTS {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT relid::regclass::text FROM pg_partition_tree($1::regclass) WHERE isleaf",
            )
            .bind(format!("chainsync.{parent}"))
            .fetch_all(&self.pool)
            .await
            .unwrap();
            out.extend(names);
        }
        out
    }

    /// Everything kept, against the chain, at chain time `now` (the head's): see the module
    /// docs. With `sync`, a full balance sync runs first and must have written no history.
    async fn check(&mut self, now: DateTime<Utc>, sync: bool, what: &str) -> Seen {
        if sync {
            self.sync_balances().await;
        }
        let head = self.s.chain.block_number().await.unwrap();
        let timeline = log_timeline(&self.s.chain, self.s.token).await;
        let holders: Vec<Address> = timeline.keys().copied().collect();

        // Balance history: the changes from the first kept period on, and before it each
        // holder's last change, nothing else; amounts before and after as the logs tell them.
        let balances_from = self.first_period("balance_changes").await;
        let cutoff = now - self.keep("balance_changes");
        let mut want: BTreeMap<Address, Vec<StoredChange>> = BTreeMap::new();
        for (who, series) in &timeline {
            let mut rows = Vec::new();
            for (i, (block, at, amount)) in series.iter().enumerate() {
                assert!(
                    *at < cutoff || *block >= balances_from,
                    "{what}: the change of {who:#x} at block {block} ({at}) is newer than the \
                     cutoff {cutoff} but below the kept periods (from block {balances_from})"
                );
                if *block < balances_from && series.get(i + 1).is_some_and(|n| n.0 < balances_from)
                {
                    continue;
                }
                rows.push(StoredChange {
                    block: *block,
                    old: i.checked_sub(1).map(|j| series[j].2),
                    new: *amount,
                    source: "log".to_string(),
                });
            }
            want.insert(*who, rows);
        }
        let stored = stored_history(&self.pool, self.s.token).await;
        for who in want.keys().chain(stored.keys()) {
            assert_eq!(
                stored.get(who),
                want.get(who),
                "{what}: history of {who:#x} (kept periods from block {balances_from})"
            );
        }

        // The amount at every block from the one before the first kept period to the head, for
        // every holder: `balanceOf` there, and none before its first change.
        let first_block = timeline
            .values()
            .filter_map(|s| s.first())
            .map(|c| c.0)
            .min()
            .unwrap();
        let start = balances_from.saturating_sub(1).max(first_block);
        self.read_balances(
            holders
                .iter()
                .flat_map(|h| (start..=head).map(move |b| (*h, b))),
        )
        .await;
        let lookups: Vec<(String, i64, Option<String>)> = sqlx::query_as(
            "SELECT a, b, (SELECT c.new_amount::text FROM chainsync.balance_changes c
                            WHERE c.chain_id = $1 AND c.token = $2 AND c.address = a
                              AND c.block_number <= b
                            ORDER BY c.block_number DESC LIMIT 1)
             FROM unnest($3::text[]) a, generate_series($4::bigint, $5::bigint) b",
        )
        .bind(CHAIN_ID as i64)
        .bind(self.token())
        .bind(
            holders
                .iter()
                .map(|h| format!("{h:#x}"))
                .collect::<Vec<_>>(),
        )
        .bind(i64::try_from(start).unwrap())
        .bind(i64::try_from(head).unwrap())
        .fetch_all(&self.pool)
        .await
        .unwrap();
        assert_eq!(
            lookups.len() as u64,
            holders.len() as u64 * (head - start + 1)
        );
        for (who, block, got) in lookups {
            let who: Address = who.parse().unwrap();
            let block = u64::try_from(block).unwrap();
            let on_chain = self.reads[&(who, block)];
            let from_logs = timeline[&who].iter().rev().find(|c| c.0 <= block);
            assert_eq!(
                from_logs.map_or(U256::ZERO, |c| U256::from(c.2)),
                on_chain,
                "the logs explain balanceOf({who:#x}) at block {block}"
            );
            assert_eq!(
                got,
                from_logs.map(|_| on_chain.to_string()),
                "{what}: amount of {who:#x} at block {block} (kept periods from block \
                 {balances_from})"
            );
        }

        // Stored balances: `balanceOf` at the head.
        self.read_balances(holders.iter().map(|h| (*h, head))).await;
        for who in &holders {
            let stored: Option<String> = sqlx::query_scalar(
                "SELECT amount::text FROM chainsync.balances
                 WHERE chain_id = $1 AND token = $2 AND address = $3",
            )
            .bind(CHAIN_ID as i64)
            .bind(self.token())
            .bind(format!("{who:#x}"))
            .fetch_optional(&self.pool)
            .await
            .unwrap();
            assert_eq!(
                stored,
                Some(self.reads[&(*who, head)].to_string()),
                "{what}: balance of {who:#x}"
            );
        }

        // Events: the token's logs from the first kept period on.
        let events_from = self.first_period("events").await;
        let cutoff = now - self.keep("events");
        let mut want = BTreeSet::new();
        for log in transfer_logs(&self.s.chain, self.s.token).await {
            let block = log.block_number.unwrap();
            let at = self.block_time(block).await;
            assert!(
                at < cutoff || block >= events_from,
                "{what}: the log at block {block} ({at}) is newer than the cutoff {cutoff} but \
                 below the kept periods (from block {events_from})"
            );
            if block >= events_from {
                want.insert((
                    format!("{:#x}", log.transaction_hash.unwrap()),
                    i64::try_from(log.log_index.unwrap()).unwrap(),
                    i64::try_from(block).unwrap(),
                ));
            }
        }
        let got: BTreeSet<(String, i64, i64)> = sqlx::query_as(
            "SELECT tx_hash, log_index, block_number FROM chainsync.events WHERE chain_id = $1",
        )
        .bind(CHAIN_ID as i64)
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        assert_eq!(got, want, "{what}: events (from block {events_from})");

        // Points: every window from the first kept one to the head's (open) window, each equal
        // to the reference computed from the logs; none at or after the cutoff dropped.
        let head_time = self.block_time(head).await;
        let closed = window_of(head_time);
        let points = stored_points(
            &self.pool,
            self.s.token,
            DateTime::from_timestamp(0, 0).unwrap(),
            closed + chrono::Duration::days(3650),
        )
        .await;
        assert!(
            points.keys().all(|k| k.1 < closed),
            "{what}: an open window was computed"
        );
        let first_window = window_of(
            timeline
                .values()
                .filter_map(|s| s.first())
                .map(|c| c.1)
                .min()
                .unwrap(),
        );
        let cutoff = now - self.keep("points_history");
        let kept_from = points.keys().map(|k| k.1).min().unwrap_or(closed);
        let must_keep = first_window.max(ceil_hour(cutoff)).min(closed);
        assert!(
            kept_from <= must_keep,
            "{what}: windows from {must_keep} on must be kept (cutoff {cutoff}); the first kept \
             is {kept_from}"
        );
        let windows: Vec<DateTime<Utc>> =
            std::iter::successors(Some(kept_from), |w| Some(*w + chrono::Duration::hours(1)))
                .take_while(|w| *w < closed)
                .collect();
        let want = reference(&times_only(&timeline), &windows);
        same_points(&points, &want, &format!("{what}: windows from {kept_from}"));

        Seen {
            balances_from,
            events_from,
            points,
            timeline,
        }
    }
}

/// The first window that starts at or after `t`.
fn ceil_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    let w = window_of(t);
    if w == t {
        w
    } else {
        w + chrono::Duration::hours(1)
    }
}

fn same_points(got: &Points, want: &Points, what: &str) {
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .map(|(k, v)| (k.0, k.1, *v, got.get(k).copied()))
        .take(10)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(k))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty() && extra.is_empty(),
        "{what}: {} windows expected, {} stored; wrong or missing (first 10): {wrong:?}; \
         not expected: {extra:?}",
        want.len(),
        got.len()
    );
}

/// What a run of [`scenario`] saw.
struct Run {
    /// Partitions seen to go, per table (one made and dropped by the same pass is not seen).
    gone: BTreeMap<&'static str, usize>,
    /// Calendar months of the balance history dropped by the first pass.
    first_pass_months: usize,
}

/// Transfers among holders with different habits (one quiet from its mint on, one drained to
/// zero, one that stops early, one that receives once) over `steps` steps of ten days of chain
/// time; from step `first_pass` on, the maintenance pass with the `[history]` retention at the
/// end of each step. Each pass drops the periods and months its retention has passed; before and
/// after each ([`Env::check`]), balances, the amount at every kept block, the history rows, the
/// events and every points window equal what the chain says, and the windows kept are the ones
/// computed before. In the last step the quiet holders, whose only rows left are the ones
/// retention keeps below the kept periods, move again: ingestion and points carry on from those
/// rows exactly.
async fn scenario(pool: &PgPool, steps: u64, first_pass: u64) -> Run {
    let mut env = Env::new(pool).await;
    let holders: Vec<Address> = env.s.holders.iter().map(|h| h.0).collect();
    let fresh = devchain::holder_addresses(0x5eed, 2);
    let cast = Cast {
        sleeper: holders[0],
        drained: holders[1],
        retired: holders[2],
        late: fresh[0],
        newcomer: fresh[1],
        active: holders[3..].to_vec(),
        last_step: steps - 1,
    };
    let running = Running::start(&env.app).await;
    let mut seed = 11u64;
    let mut prev: Option<Seen> = None;
    let mut gone_per_table: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut first_pass_months = 0;
    let mut first_balance_drop = None;
    for step in 0..steps {
        let span = STEP_DAYS * DAY;
        let base = step * span;
        let moves = cast.moves(step, &mut seed);
        let n = moves.len() as u64;
        for (i, m) in moves.into_iter().enumerate() {
            let secs = base + (i as u64 + 1) * span / (n + 2) + next(&mut seed) % HOUR;
            env.transfer_at(secs, m).await;
        }
        env.block_at(base + span - 600).await;
        let (_, now) = env.settle().await;
        let before = env
            .check(now, false, &format!("step {step}, before the pass"))
            .await;
        if let Some(p) = &prev {
            // New history and windows since the last check left the kept windows as they were.
            for (k, v) in &p.points {
                assert_eq!(
                    before.points.get(k),
                    Some(v),
                    "step {step}: window {} of {:#x} changed or went without a pass",
                    k.1,
                    k.0
                );
            }
        }
        if step < first_pass {
            prev = Some(before);
            continue;
        }

        let leaves = env.leaves().await;
        let pass = maintain(pool, &env.app.config.domain.history, now)
            .await
            .unwrap();
        let left = env.leaves().await;
        let gone: Vec<&String> = leaves.difference(&left).collect();
        // Partitions dropped are ones that were there, unless the pass made them first (the
        // first pass makes the chain's periods and the months since the last pass).
        if step > first_pass {
            assert_eq!(
                gone.len() as i64,
                pass.dropped,
                "step {step}: partitions gone {gone:?}, pass {pass:?}"
            );
        } else {
            assert!(gone.len() as i64 <= pass.dropped, "{gone:?}, {pass:?}");
        }
        for name in &gone {
            let table: &str = PARENTS
                .iter()
                .copied()
                .find(|p| name.trim_start_matches("chainsync.").starts_with(p))
                .unwrap();
            *gone_per_table.entry(table).or_default() += 1;
        }

        let after = env
            .check(now, true, &format!("step {step}, after the pass"))
            .await;
        // The pass adds and changes no window; what it removed is older than the cutoff.
        let cutoff = now - env.keep("points_history");
        for (k, v) in &before.points {
            match after.points.get(k) {
                Some(kept) => assert_eq!(kept, v, "step {step}: window {} changed", k.1),
                None => assert!(
                    k.1 < cutoff,
                    "step {step}: window {} dropped, cutoff {cutoff}",
                    k.1
                ),
            }
        }
        assert!(after.points.keys().all(|k| before.points.contains_key(k)));
        // Balance history below the kept periods: the months it covered.
        let dropped_months: BTreeSet<String> = after
            .timeline
            .values()
            .flatten()
            .filter(|c| c.0 < after.balances_from)
            .map(|c| c.1.format("%Y-%m").to_string())
            .collect();
        if step == first_pass {
            first_pass_months = dropped_months.len();
        }
        if !dropped_months.is_empty() {
            first_balance_drop.get_or_insert(step);
        }
        println!(
            "step {step}: day {} of chain time, {pass:?}, {} windows kept, balance history from \
             block {}, events from block {}",
            (now - env.day0()).num_days(),
            after.points.len(),
            after.balances_from,
            after.events_from
        );
        if step + 1 == cast.last_step {
            // The quiet holders wake up next: their last changes are below the kept periods,
            // so what they had comes from the rows retention keeps.
            for q in cast.quiet() {
                let last = after.timeline[&q].last().unwrap().0;
                assert!(
                    last < after.balances_from,
                    "{q:#x}: last change at block {last}, kept periods from block {}",
                    after.balances_from
                );
            }
        }
        prev = Some(after);
    }
    running.stop().await;

    // Not vacuous: the oldest history of each table is gone, balance history before the quiet
    // holders woke up.
    assert!(
        first_balance_drop.is_some_and(|s| s < cast.last_step),
        "{first_balance_drop:?}"
    );
    let last = prev.unwrap();
    let below: usize = last
        .timeline
        .values()
        .map(|s| s.iter().filter(|c| c.0 < last.balances_from).count())
        .sum();
    let kept_below = last
        .timeline
        .values()
        .filter(|s| s.first().is_some_and(|c| c.0 < last.balances_from))
        .count();
    assert!(
        below > kept_below,
        "{below} changes below the kept periods, one row kept per holder ({kept_below})"
    );
    let logs_below = transfer_logs(&env.s.chain, env.s.token)
        .await
        .iter()
        .filter(|l| l.block_number.unwrap() < last.events_from)
        .count();
    assert!(logs_below > 0, "events below block {}", last.events_from);
    let first_window = window_of(
        last.timeline
            .values()
            .filter_map(|s| s.first())
            .map(|c| c.1)
            .min()
            .unwrap(),
    );
    assert!(last.points.keys().all(|k| k.1 > first_window));
    println!(
        "{gone_per_table:?} partitions seen to go; {below} balance changes below the kept \
         periods, {kept_below} rows kept there; {logs_below} events dropped"
    );
    Run {
        gone: gone_per_table,
        first_pass_months,
    }
}

/// The daemon's cadence: a pass every ten days of chain time over four months, partitions made
/// ahead of the head and dropped one or two at a time.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn passes_every_ten_days_keep_balances_amounts_and_points_equal_to_the_chain(pool: PgPool) {
    let started = Instant::now();
    let run = scenario(&pool, 12, 0).await;
    // Each table lost partitions that had been there.
    for table in PARENTS {
        assert!(
            run.gone.get(table).is_some_and(|n| *n > 0),
            "{table}: {:?}",
            run.gone
        );
    }
    println!("{:?}", started.elapsed());
}

/// Retention that starts after months of history (maintenance off until then, or a first
/// start with retention): the first pass gives the chain its periods by the block times of the
/// rows (moving them out of the DEFAULT partition) and at once drops the periods of at least two
/// months, and the points months older than the retention.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_first_pass_after_months_drops_several_periods_at_once(pool: PgPool) {
    let started = Instant::now();
    // The first pass at day 120, 45 days kept: the cutoff (day 75) is past two month boundaries
    // (at most 62 days in) and the first transfers after them (two days apart), whatever day
    // of the month the chain starts on.
    let run = scenario(&pool, 13, 11).await;
    assert!(run.first_pass_months >= 2, "{}", run.first_pass_months);
    println!("{:?}", started.elapsed());
}
