//! Redis mode: one reservation timeline and one adaptive factor per endpoint, in Redis, changed
//! only by the two scripts below. Each script runs atomically on Redis' own clock (`TIME`), so
//! every daemon reserves from the same timeline: the budget is shared exactly. The arithmetic is
//! [`super::model`]'s, in integer microseconds and per-mille factors.
//!
//! Keys (`{id}` is the endpoint's id, a hash of its URL, in braces so that both keys of an endpoint
//! live in one Redis Cluster slot):
//! - `chainsync:rpc-budget:{id}:tat` — the timeline (µs), expires once it lies in the past;
//! - `chainsync:rpc-budget:{id}:adapt` — hash `f` (factor per mille), `since` (last rate-limit
//!   answer, µs), `cut_at` (last cut, µs); expires after hold + recovery.

use std::{sync::LazyLock, time::Duration};

use redis::{Script, aio::ConnectionManager};

use super::model::{AdaptParams, Micros, Reservation};

/// The factor at `now` (mirrors `Adapt::effective`), shared by both scripts.
const EFFECTIVE: &str = r"
local function effective(f, since, now, hold, recovery)
  if f >= 1000 then return 1000 end
  local t = now - since - hold
  if t <= 0 then return f end
  if recovery <= 0 or t >= recovery then return 1000 end
  return f + math.floor((1000 - f) * t / recovery)
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
";

/// KEYS: tat, adapt. ARGV: units per second, cost, horizon µs, hold µs, recovery µs.
/// Returns {1, wait µs, factor} when reserved, {0, retry after µs, factor} when not.
const RESERVE: &str = r"
local now = clock()
local per_second = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local a = redis.call('HMGET', KEYS[2], 'f', 'since')
local f = effective(tonumber(a[1]) or 1000, tonumber(a[2]) or 0, now, tonumber(ARGV[4]), tonumber(ARGV[5]))
if f < 1 then f = 1 end
local d = per_second * f
local interval = math.ceil(1000000000 / d)
if interval < 1 then interval = 1 end
local burst = math.max(1, math.floor(d / 100000))
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local base = math.max(tat, now)
local new_tat = base + cost * interval
local at = math.max(now, new_tat - math.max(burst, cost) * interval)
local wait = at - now
if wait > horizon then
  return {0, wait - horizon, f}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {1, wait, f}
";

/// KEYS: tat, adapt. ARGV: backoff ‰, min ‰, cut interval µs, hold µs, recovery µs, pause µs.
/// Returns the new factor.
const CUT: &str = r"
local now = clock()
local backoff = tonumber(ARGV[1])
local min_factor = tonumber(ARGV[2])
local cut_interval = tonumber(ARGV[3])
local hold = tonumber(ARGV[4])
local recovery = tonumber(ARGV[5])
local pause = tonumber(ARGV[6])
local a = redis.call('HMGET', KEYS[2], 'f', 'since', 'cut_at')
local f = effective(tonumber(a[1]) or 1000, tonumber(a[2]) or 0, now, hold, recovery)
local cut_at = tonumber(a[3])
if cut_at == nil or now - cut_at >= cut_interval then
  f = math.max(min_factor, math.floor(f * backoff / 1000))
  cut_at = now
end
if f < 1 then f = 1 end
redis.call('HSET', KEYS[2], 'f', f, 'since', string.format('%.0f', now), 'cut_at', string.format('%.0f', cut_at))
redis.call('PEXPIRE', KEYS[2], math.floor((hold + recovery) / 1000) + 60000)
if pause > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local until_ = now + pause
  if until_ > tat then
    redis.call('SET', KEYS[1], string.format('%.0f', until_), 'PX', math.floor(pause / 1000) + 1000)
  end
end
return f
";

static RESERVE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{EFFECTIVE}{RESERVE}")));
static CUT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{EFFECTIVE}{CUT}")));

/// Longest wait for one script before the daemon falls back to its Postgres share.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// The two keys of endpoint `id`.
pub fn keys(id: &str) -> (String, String) {
    (
        format!("chainsync:rpc-budget:{{{id}}}:tat"),
        format!("chainsync:rpc-budget:{{{id}}}:adapt"),
    )
}

fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Redis did not answer a budget script.
#[derive(Debug, thiserror::Error)]
pub enum RedisBudgetError {
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Redis(#[from] ::redis::RedisError),
}

/// Reserves `cost` units of endpoint `id`; also returns the factor in force.
pub async fn reserve(
    conn: &mut ConnectionManager,
    id: &str,
    per_second: u64,
    cost: u64,
    horizon: Micros,
    p: &AdaptParams,
) -> Result<(Reservation, u32), RedisBudgetError> {
    let (tat, adapt) = keys(id);
    let call = async {
        RESERVE_SCRIPT
            .key(&tat)
            .key(&adapt)
            .arg(per_second)
            .arg(cost)
            .arg(horizon)
            .arg(p.hold)
            .arg(p.recovery)
            .invoke_async::<(i64, i64, i64)>(conn)
            .await
    };
    let (ok, us, f) = tokio::time::timeout(REDIS_TIMEOUT, call)
        .await
        .map_err(|_| RedisBudgetError::Timeout)??;
    let factor = u32::try_from(f).unwrap_or(1000);
    Ok(if ok == 1 {
        (Reservation::Go(us.max(0)), factor)
    } else {
        (Reservation::Later(us.max(1)), factor)
    })
}

/// Records a rate-limit answer of endpoint `id`; returns the new factor.
pub async fn cut(
    conn: &mut ConnectionManager,
    id: &str,
    p: &AdaptParams,
    pause: Duration,
) -> Result<u32, RedisBudgetError> {
    let (tat, adapt) = keys(id);
    let call = async {
        CUT_SCRIPT
            .key(&tat)
            .key(&adapt)
            .arg(p.backoff)
            .arg(p.min_factor)
            .arg(p.cut_interval)
            .arg(p.hold)
            .arg(p.recovery)
            .arg(micros(pause))
            .invoke_async::<i64>(conn)
            .await
    };
    let f = tokio::time::timeout(REDIS_TIMEOUT, call)
        .await
        .map_err(|_| RedisBudgetError::Timeout)??;
    Ok(u32::try_from(f).unwrap_or(1000))
}
