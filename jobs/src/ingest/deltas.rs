//! Balance history from transfer amounts, for chains whose nodes serve no historical state
//! (TRON: `eth_call` only at `latest`, so a balance cannot be read at the block of a log).
//!
//! Every `Transfer` of a configured token moves its amount (an NFT-style `Transfer` with the id
//! as fourth topic moves a count of 1) from `from` to `to`. Per holder and block the net change is
//! added to the history just before the block, in block order:
//!
//! - the base is the holder's last `balance_changes` row before the first block of the range
//!   (whatever found it: an earlier range, a sync read, a reconcile);
//! - a row of a sync or a reconcile inside the range is a balance seen on chain at its block and
//!   replaces the running amount there (a read at a block includes that block's transfers);
//! - a holder without any history starts from zero: exact when ingestion starts at or before the
//!   holder's first transfer of the token (`start_block` at the token's deployment), otherwise
//!   until the first sync or reconcile of the holder, which records the amount it sees;
//! - a change that would take a holder below zero shows that its base is missing: nothing is
//!   recorded for that holder in this range (a warning says so) until a read gives a base.
//!
//! The resulting amounts are recorded like the reads of an EVM chain (`source = 'log'`, at the
//! block with its hash and time; a replayed range writes nothing twice) and the newest one goes to
//! `balances` (never over a newer block). The block times come from one `eth_getBlockByNumber`
//! per block with transfers.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, U256};
use futures::StreamExt;
use tracing::warn;

use crate::{
    JobError, Services,
    chain::{ChainClient, PinnedBlock},
    ids::{TokenKey, address_text, parse_amount},
    store::{Observation, Source, db_block, db_chain_id, record_history, store_observed},
};

/// Amounts in and out of one holder in one block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    pub hash: B256,
    pub inflow: U256,
    pub outflow: U256,
}

/// (token, holder) → block → flow.
pub type Deltas = BTreeMap<(Address, Address), BTreeMap<u64, Flow>>;

/// Amounts seen on chain (not derived from transfers) that a walk over one key starts from or
/// meets: (block, amount).
type Bases = BTreeMap<(String, String), Vec<(u64, U256)>>;

const BASES: &str = r#"
SELECT k.token, k.address, c.block_number, c.new_amount::text
FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS k(token, address, lo, hi)
CROSS JOIN LATERAL (
    (SELECT b.block_number, b.new_amount FROM chainsync.balance_changes b
      WHERE b.chain_id = $1 AND b.token = k.token AND b.address = k.address
        AND b.block_number < k.lo
      ORDER BY b.block_number DESC LIMIT 1)
    UNION ALL
    (SELECT b.block_number, b.new_amount FROM chainsync.balance_changes b
      WHERE b.chain_id = $1 AND b.token = k.token AND b.address = k.address
        AND b.block_number BETWEEN k.lo AND k.hi AND b.source <> 'log')
) c
ORDER BY 1, 2, 3
"#;

async fn load_bases(db: &sqlx::PgPool, chain_id: u64, deltas: &Deltas) -> Result<Bases, JobError> {
    let mut tokens = Vec::with_capacity(deltas.len());
    let mut addresses = Vec::with_capacity(deltas.len());
    let mut lo = Vec::with_capacity(deltas.len());
    let mut hi = Vec::with_capacity(deltas.len());
    for ((t, a), blocks) in deltas {
        let (Some(first), Some(last)) = (blocks.keys().next(), blocks.keys().next_back()) else {
            continue;
        };
        tokens.push(address_text(t));
        addresses.push(address_text(a));
        lo.push(db_block(*first)?);
        hi.push(db_block(*last)?);
    }
    let rows: Vec<(String, String, i64, String)> = sqlx::query_as(BASES)
        .bind(db_chain_id(chain_id)?)
        .bind(&tokens)
        .bind(&addresses)
        .bind(&lo)
        .bind(&hi)
        .fetch_all(db)
        .await?;
    let mut out = Bases::new();
    for (t, a, n, amount) in rows {
        let amount = parse_amount(&amount).map_err(JobError::retry)?;
        out.entry((t, a))
            .or_default()
            .push((u64::try_from(n).unwrap_or(0), amount));
    }
    Ok(out)
}

/// One key's walk: the amount after each block with flows, or `Err(block)` at the first block
/// whose outflow exceeds what the holder had.
pub fn walk(
    bases: &[(u64, U256)],
    flows: &BTreeMap<u64, Flow>,
) -> Result<Vec<(u64, B256, U256)>, u64> {
    let first = flows.keys().next().copied().unwrap_or(0);
    let mut running = bases
        .iter()
        .filter(|(b, _)| *b < first)
        .map(|(_, v)| *v)
        .next_back()
        .unwrap_or(U256::ZERO);
    let seen: BTreeMap<u64, U256> = bases.iter().filter(|(b, _)| *b >= first).copied().collect();
    let mut seen_iter = seen.iter().peekable();
    let mut out = Vec::with_capacity(flows.len());
    for (block, f) in flows {
        // Amounts seen on chain up to this block replace the running amount; one seen at this
        // very block already includes the block's transfers.
        let mut exact = None;
        while let Some((b, v)) = seen_iter.peek() {
            if **b > *block {
                break;
            }
            running = **v;
            if **b == *block {
                exact = Some(**v);
            }
            seen_iter.next();
        }
        if let Some(v) = exact {
            out.push((*block, f.hash, v));
            continue;
        }
        running = running
            .checked_add(f.inflow)
            .and_then(|v| v.checked_sub(f.outflow))
            .ok_or(*block)?;
        out.push((*block, f.hash, running));
    }
    Ok(out)
}

/// Records the history the flows imply and stores the newest amounts (see the module docs).
/// Returns (block requests, history rows written).
pub async fn record(
    services: &Services,
    chain: &ChainClient,
    deltas: &Deltas,
) -> Result<(u64, u64), JobError> {
    if deltas.is_empty() {
        return Ok((0, 0));
    }
    let chain_id = chain.chain_id();
    let mut blocks: BTreeMap<u64, B256> = BTreeMap::new();
    for flows in deltas.values() {
        for (n, f) in flows {
            blocks.insert(*n, f.hash);
        }
    }
    let requests = blocks.len() as u64;
    let futs: Vec<_> = blocks
        .into_iter()
        .map(|(n, hash)| async move {
            match chain.block_at(n).await? {
                Some(b) if b.hash == hash => Ok(b),
                Some(_) => Err(JobError::retry(format!(
                    "chain {chain_id}: block {n} changed while it was ingested (reorg)"
                ))),
                None => Err(JobError::retry(format!(
                    "chain {chain_id}: block {n} not available from the node"
                ))),
            }
        })
        .collect();
    let headers: BTreeMap<u64, PinnedBlock> = futures::stream::iter(futs)
        .buffered(chain.config.batches_in_flight.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|r| r.map(|b: PinnedBlock| (b.number, b)))
        .collect::<Result<_, _>>()?;
    let bases = load_bases(&services.db, chain_id, deltas).await?;
    let mut obs = Vec::new();
    let mut unbased: BTreeMap<Address, (usize, String)> = BTreeMap::new();
    for ((token, holder), flows) in deltas {
        let key = (address_text(token), address_text(holder));
        let b = bases.get(&key).map_or(&[][..], Vec::as_slice);
        match walk(b, flows) {
            Ok(points) => {
                for (n, _, amount) in points {
                    if let Some(block) = headers.get(&n) {
                        obs.push(Observation {
                            token: TokenKey::Contract(*token),
                            address: *holder,
                            block: *block,
                            amount,
                        });
                    }
                }
            }
            Err(at) => {
                let e = unbased.entry(*token).or_insert((0, String::new()));
                if e.0 == 0 {
                    e.1 = format!("{} at block {at}", chain.family().show_address(holder));
                }
                e.0 += 1;
            }
        }
    }
    for (token, (n, first)) in &unbased {
        warn!(chain_id, token = %chain.family().show_address(token), holders = n, first = %first,
            "transfers exceed the recorded balance (no base before them): no history for those \
             holders in this range until a sync or reconcile reads them");
    }
    let out = record_history(services, chain_id, Source::Log, &obs).await?;
    store_observed(services, chain_id, &obs).await?;
    Ok((requests, out.written as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(i: u64, o: u64) -> Flow {
        Flow {
            hash: B256::ZERO,
            inflow: U256::from(i),
            outflow: U256::from(o),
        }
    }

    fn amounts(r: Result<Vec<(u64, B256, U256)>, u64>) -> Result<Vec<(u64, u64)>, u64> {
        r.map(|v| v.into_iter().map(|(b, _, a)| (b, a.to::<u64>())).collect())
    }

    #[test]
    fn walks_from_the_base_and_takes_reads_as_they_come() {
        let flows: BTreeMap<u64, Flow> = [
            (10, flow(100, 0)),
            (12, flow(0, 30)),
            (15, flow(5, 0)),
            (20, flow(0, 1)),
        ]
        .into();
        // No history: from zero.
        assert_eq!(
            amounts(walk(&[], &flows)),
            Ok(vec![(10, 100), (12, 70), (15, 75), (20, 74)])
        );
        // A base before the range, a read between 12 and 15, a read at 20 itself.
        let bases = [
            (3, U256::from(7)),
            (13, U256::from(500)),
            (20, U256::from(9)),
        ];
        assert_eq!(
            amounts(walk(&bases, &flows)),
            Ok(vec![(10, 107), (12, 77), (15, 505), (20, 9)])
        );
        // Only the last row before the range counts as its base.
        let bases = [(1, U256::from(1)), (2, U256::from(2))];
        assert_eq!(amounts(walk(&bases, &flows)).unwrap()[0], (10, 102));
        // Spending more than it had: no base.
        let out: BTreeMap<u64, Flow> = [(10, flow(0, 1))].into();
        assert_eq!(amounts(walk(&[], &out)), Err(10));
    }
}
