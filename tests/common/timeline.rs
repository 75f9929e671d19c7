//! Balance history and points of a token as the chain itself tells them (its Transfer logs and
//! block timestamps), never from rows chainsync wrote, and the stored rows they are compared with.

use std::collections::BTreeMap;

use alloy::{
    primitives::Address, providers::Provider, rpc::types::Filter, sol, sol_types::SolEvent,
};
use chainsync_dev::devchain::DevChain;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

sol! {
    event Transfer(address indexed from, address indexed to, uint256 value);
}

/// The points rate the tests configure, `"0.25"`: points = floor(twab / RATE_DIV).
pub const RATE: &str = "0.25";
pub const RATE_DIV: u128 = 4;
pub const HOUR: u64 = 3600;

/// Holder → (block, block time, balance after the block) at each block where it changed.
pub type Timeline = BTreeMap<Address, Vec<(u64, DateTime<Utc>, u128)>>;

/// The token's Transfer logs, as the node returns them for `eth_getLogs` from block 0.
pub async fn transfer_logs(chain: &DevChain, token: Address) -> Vec<alloy::rpc::types::Log> {
    chain
        .provider()
        .get_logs(
            &Filter::new()
                .address(token)
                .event_signature(Transfer::SIGNATURE_HASH)
                .from_block(0),
        )
        .await
        .unwrap()
}

/// From the chain: every holder's balance after each block where its balance changed, derived
/// from the token's Transfer logs alone, with the block's timestamp.
pub async fn log_timeline(chain: &DevChain, token: Address) -> Timeline {
    let logs = transfer_logs(chain, token).await;
    let mut times: BTreeMap<u64, DateTime<Utc>> = BTreeMap::new();
    let mut balances: BTreeMap<Address, u128> = BTreeMap::new();
    let mut out: Timeline = BTreeMap::new();
    for log in &logs {
        let bn = log.block_number.unwrap();
        if let std::collections::btree_map::Entry::Vacant(e) = times.entry(bn) {
            let b = chain
                .provider()
                .get_block_by_number(bn.into())
                .await
                .unwrap()
                .unwrap();
            e.insert(DateTime::from_timestamp(b.header.timestamp as i64, 0).unwrap());
        }
        let t = Transfer::decode_log_data(log.data()).unwrap();
        let v: u128 = t.value.to();
        for (who, delta) in [(t.from, -(v as i128)), (t.to, v as i128)] {
            if who.is_zero() {
                continue;
            }
            let b = balances.entry(who).or_default();
            *b = (*b as i128 + delta) as u128;
            let series = out.entry(who).or_default();
            match series.last_mut() {
                Some(last) if last.0 == bn => last.2 = *b,
                _ => series.push((bn, times[&bn], *b)),
            }
        }
    }
    // A holder whose balance came back within a block has no change there.
    for series in out.values_mut() {
        let mut prev: Option<u128> = None;
        series.retain(|(_, _, b)| {
            let keep = prev != Some(*b);
            prev = Some(*b);
            keep
        });
    }
    out
}

pub fn times_only(t: &Timeline) -> BTreeMap<Address, Vec<(DateTime<Utc>, u128)>> {
    t.iter()
        .map(|(a, v)| (*a, v.iter().map(|(_, t, b)| (*t, *b)).collect()))
        .collect()
}

/// Independent reference: per holder and window, floor(Σ balance × seconds / 3600) with the
/// balance changing at each change's block time, and floor(twab × 0.25). No window before a
/// holder's first change.
pub fn reference(
    timeline: &BTreeMap<Address, Vec<(DateTime<Utc>, u128)>>,
    windows: &[DateTime<Utc>],
) -> BTreeMap<(Address, DateTime<Utc>), (u128, u128)> {
    let mut out = BTreeMap::new();
    for (who, changes) in timeline {
        for w in windows {
            let end = *w + chrono::Duration::hours(1);
            if changes.first().is_none_or(|c| c.0 >= end) {
                continue;
            }
            let mut amount = changes.iter().rev().find(|c| c.0 <= *w).map_or(0, |c| c.1);
            let mut at = *w;
            let mut sum: u128 = 0;
            for (t, a) in changes.iter().filter(|c| c.0 > *w && c.0 < end) {
                sum += amount * (*t - at).num_seconds() as u128;
                at = *t;
                amount = *a;
            }
            sum += amount * (end - at).num_seconds() as u128;
            let twab = sum / 3600;
            out.insert((*who, *w), (twab, twab / RATE_DIV));
        }
    }
    out
}

/// A `balance_changes` row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    pub block: u64,
    pub old: Option<u128>,
    pub new: u128,
    pub source: String,
}

/// History rows of `token` as stored, holder → rows by block.
pub async fn stored_history(pool: &PgPool, token: Address) -> BTreeMap<Address, Vec<StoredChange>> {
    let rows: Vec<(String, i64, Option<String>, String, String)> = sqlx::query_as(
        "SELECT address, block_number, old_amount::text, new_amount::text, source
         FROM chainsync.balance_changes WHERE token = $1 ORDER BY address, block_number",
    )
    .bind(format!("{token:#x}"))
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: BTreeMap<Address, Vec<StoredChange>> = BTreeMap::new();
    for (a, block, old, new, source) in rows {
        out.entry(a.parse().unwrap())
            .or_default()
            .push(StoredChange {
                block: block as u64,
                old: old.map(|o| o.parse().unwrap()),
                new: new.parse().unwrap(),
                source,
            });
    }
    out
}

/// Stored (holder, window start) → (twab, points) of `token`'s windows starting in
/// `[from, to)`.
pub async fn stored_points(
    pool: &PgPool,
    token: Address,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> BTreeMap<(Address, DateTime<Utc>), (u128, u128)> {
    let rows: Vec<(String, DateTime<Utc>, String, String)> = sqlx::query_as(
        "SELECT address, window_start, twab::text, points::text FROM chainsync.points_history
         WHERE token = $1 AND window_start >= $2 AND window_start < $3",
    )
    .bind(format!("{token:#x}"))
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(a, w, t, p)| {
            (
                (a.parse().unwrap(), w),
                (t.parse().unwrap(), p.parse().unwrap()),
            )
        })
        .collect()
}
