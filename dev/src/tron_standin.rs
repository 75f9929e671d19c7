//! A TRON JSON-RPC stand-in: a loopback HTTP server in front of an EVM dev node (anvil) that
//! answers like java-tron's Ethereum-compatible JSON-RPC where that differs from an EVM node, so
//! that a client passing through it shows that its requests are ones a TRON node serves and that
//! it reads TRON's answers. The TRON tests and `chainsync demo --family tron` run through it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use chainsync_dev::{devchain::DevChain, tron_standin::TronStandIn};
//!
//! let chain = DevChain::start().await?;
//! let tron = TronStandIn::start(&chain.url()).await?;
//! // Point a `family = "tron"` chain at `tron.url()`; afterwards nothing may have been refused.
//! assert!(tron.refused().is_empty());
//! tron.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! What it enforces (java-tron `TronJsonRpcImpl`, `JsonRpcApiUtil`, `CallArguments`,
//! `LogFilter`, `BlockResult`, `TransactionReceipt`, `TransactionResult`, `ByteArray`):
//! - `eth_call` and `eth_getBalance` take the block parameter `latest` only: a number is refused
//!   ("QUANTITY not supported, just support TAG as latest"), `earliest`/`pending`/`finalized`
//!   too. java-tron accepts a `{blockHash}`/`{blockNumber}` object and then runs the call at
//!   `latest` anyway; the stand-in refuses it, so that a read meant to be pinned shows up here.
//! - addresses of calls and balances are hex only, 20 bytes or 21 bytes starting with `41`
//!   (forwarded as 20); base58check `T…` is refused ("invalid address hash value").
//! - the call object is decoded strictly: `from`, `to`, `gas`, `gasPrice`, `value`, `data`,
//!   `nonce` (an `input` field is an unknown field there).
//! - `eth_getLogs` filters: the keys `fromBlock`, `toBlock`, `address`, `topics`, `blockHash`;
//!   addresses of exactly 20 bytes.
//! - transaction hashes are 64 hex digits with or without `0x` (`(0x)?[a-zA-Z0-9]{64}`).
//! - answers come in java-tron's shapes, which strict EVM decoders refuse or read differently:
//!   blocks with `stateRoot` `0x` and a zero nonce; receipts of type `0x0` whatever the
//!   transaction, with an all-zero `logsBloom`, `status`, no `root` and no blob fields;
//!   transactions with a `null` nonce, no `type`/`chainId`, `v` 27/28 — and none for a
//!   transaction not in a block yet (java-tron's JSON-RPC does not look into the pending pool).
//!   Addresses in answers are 20-byte hex, as java-tron writes them (`toJsonHexAddress` drops the
//!   `41` prefix).
//! - only the methods above and `eth_blockNumber`, `eth_chainId`, `net_version`, `eth_getBlockBy*`
//!   exist; batches are served.
//!
//! Every refused request is recorded ([`TronStandIn::refused`]). When the node behind it cannot
//! be reached, a request is answered with HTTP 502, as a gateway in front of a node would.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use alloy::hex;
use alloy::transports::http::reqwest;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The path java-tron serves its JSON-RPC on.
pub const PATH: &str = "/jsonrpc";

/// Errors from starting or stopping the stand-in.
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    #[error("TRON stand-in: the node URL {url:?} is not an http(s) URL: {reason}")]
    Upstream { url: String, reason: String },
    #[error("TRON stand-in: cannot listen on a loopback port: {0}")]
    Listen(#[source] std::io::Error),
    #[error("TRON stand-in: HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("TRON stand-in: the server stopped with an error: {0}")]
    Serve(#[source] std::io::Error),
    #[error("TRON stand-in: the server task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

#[derive(Debug, Default)]
struct Seen {
    methods: BTreeMap<String, u64>,
    refused: Vec<String>,
    upstream_failures: u64,
}

#[derive(Clone)]
struct Shared {
    upstream: reqwest::Url,
    http: reqwest::Client,
    seen: Arc<Mutex<Seen>>,
}

impl Shared {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running stand-in. Stops when dropped; [`TronStandIn::shutdown`] also waits for it.
#[derive(Debug)]
pub struct TronStandIn {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Drop for TronStandIn {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TronStandIn {
    /// Serves on a free loopback port, forwarding what java-tron would answer to `upstream` (the
    /// dev node's `http://` URL).
    pub async fn start(upstream: &str) -> Result<Self, StandInError> {
        let bad = |reason: String| StandInError::Upstream {
            url: upstream.to_string(),
            reason,
        };
        let url = reqwest::Url::parse(upstream).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!("scheme {:?}", url.scheme())));
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Shared {
            upstream: url,
            http: reqwest::Client::builder()
                .build()
                .map_err(StandInError::Client)?,
            seen: seen.clone(),
        };
        let app = Router::new().route(PATH, post(handle)).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(StandInError::Listen)?;
        let addr = listener.local_addr().map_err(StandInError::Listen)?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
        });
        Ok(Self {
            addr,
            seen,
            stop,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT/jsonrpc`: the URL a `family = "tron"` chain is given.
    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    /// `127.0.0.1:PORT`, for a TCP gate in front of the stand-in.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Requests refused so far, each as `method: reason`.
    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    /// How often `method` was asked for (batch entries counted one by one, refused ones too).
    pub fn calls(&self, method: &str) -> u64 {
        self.lock().methods.get(method).copied().unwrap_or(0)
    }

    /// Requests answered with HTTP 502 because the node behind could not be reached.
    pub fn upstream_failures(&self) -> u64 {
        self.lock().upstream_failures
    }

    /// Stops accepting requests, lets the ones in flight finish, and waits for the server.
    pub async fn shutdown(mut self) -> Result<(), StandInError> {
        self.stop.cancel();
        match self.server.take() {
            Some(server) => server
                .await
                .map_err(StandInError::Task)?
                .map_err(StandInError::Serve),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

/// Why java-tron would refuse a request.
struct Refusal {
    code: i64,
    message: String,
}

impl Refusal {
    fn params(message: impl Into<String>) -> Self {
        Self {
            code: INVALID_PARAMS,
            message: message.into(),
        }
    }
}

impl From<&str> for Refusal {
    fn from(message: &str) -> Self {
        Self::params(message)
    }
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Self::params(message)
    }
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let h = s.strip_prefix("0x").unwrap_or(s);
    if h.len() % 2 == 1 {
        hex::decode(format!("0{h}")).ok()
    } else {
        hex::decode(h).ok()
    }
}

/// java-tron's `addressCompatibleToByteArray`: 20 bytes, or 21 starting with 0x41.
fn compatible_address(v: &Value) -> Result<Value, Refusal> {
    let s = v.as_str().ok_or("invalid address hash value")?;
    match hex_bytes(s) {
        Some(b) if b.len() == 20 => Ok(json!(format!("0x{}", hex::encode(b)))),
        Some(b) if b.len() == 21 && b[0] == 0x41 => {
            Ok(json!(format!("0x{}", hex::encode(&b[1..]))))
        }
        _ => Err(format!("invalid address hash value ({s})").into()),
    }
}

/// java-tron's hash parameter: `(0x)?[a-zA-Z0-9]{64}`; forwarded as `0x` + lower-case hex.
fn tx_hash(v: Option<&Value>) -> Result<Value, Refusal> {
    let s = v.and_then(Value::as_str).unwrap_or_default();
    let h = s.strip_prefix("0x").unwrap_or(s);
    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("invalid hash value ({s})").into());
    }
    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("invalid hash value: not hex ({s})").into());
    }
    Ok(json!(format!("0x{}", h.to_ascii_lowercase())))
}

fn latest_only(v: Option<&Value>) -> Result<(), Refusal> {
    match v {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("latest") => Ok(()),
        Some(Value::String(t))
            if ["earliest", "pending", "finalized", "safe"]
                .iter()
                .any(|x| t.eq_ignore_ascii_case(x)) =>
        {
            Err(format!("TAG [earliest | pending | finalized] not supported ({t})").into())
        }
        Some(Value::String(t)) => {
            Err(format!("QUANTITY not supported, just support TAG as latest ({t})").into())
        }
        Some(other) => Err(format!(
            "a block object is run at latest by java-tron, not at the block asked for: {other}"
        )
        .into()),
        None => Err("missing block parameter".into()),
    }
}

/// `eth_getBlockByNumber`'s block: `latest`, `earliest` or a hex number.
fn block_number_param(v: Option<&Value>) -> Result<(), Refusal> {
    match v.and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("latest") || t.eq_ignore_ascii_case("earliest") => Ok(()),
        Some(t) if t.starts_with("0x") && hex_bytes(t).is_some() => Ok(()),
        Some(t) => Err(format!("TAG {t} not supported or invalid block number").into()),
        None => Err("invalid block number".into()),
    }
}

/// The request as forwarded to the node, or why java-tron would refuse it.
fn check(method: &str, params: &Value) -> Result<Value, Refusal> {
    let p = params.as_array().cloned().unwrap_or_default();
    match method {
        "eth_blockNumber" | "eth_chainId" | "net_version" => Ok(params.clone()),
        "eth_getBlockByNumber" => {
            block_number_param(p.first())?;
            Ok(params.clone())
        }
        "eth_getBlockByHash" => Ok(json!([
            tx_hash(p.first())?,
            p.get(1).cloned().unwrap_or(json!(false))
        ])),
        "eth_getTransactionReceipt" | "eth_getTransactionByHash" => {
            Ok(json!([tx_hash(p.first())?]))
        }
        "eth_getBalance" => {
            latest_only(p.get(1))?;
            let a = compatible_address(p.first().unwrap_or(&Value::Null))?;
            Ok(json!([a, "latest"]))
        }
        "eth_call" => {
            latest_only(p.get(1))?;
            let call = p
                .first()
                .and_then(Value::as_object)
                .ok_or("invalid json request")?;
            let mut out = Map::new();
            for (k, v) in call {
                match k.as_str() {
                    "from" | "to" => {
                        out.insert(k.clone(), compatible_address(v)?);
                    }
                    "data" | "value" => {
                        out.insert(k.clone(), v.clone());
                    }
                    "gas" | "gasPrice" | "nonce" => {}
                    other => {
                        return Err(format!(
                            "Unrecognized field \"{other}\" (class CallArguments)"
                        )
                        .into());
                    }
                }
            }
            if !out.contains_key("data") {
                return Err("invalid json request: no data".into());
            }
            Ok(json!([Value::Object(out), "latest"]))
        }
        "eth_getLogs" => {
            let f = p
                .first()
                .and_then(Value::as_object)
                .ok_or("invalid json request")?;
            for (k, v) in f {
                match k.as_str() {
                    "fromBlock" | "toBlock" | "topics" | "blockHash" => {}
                    "address" => {
                        let list = match v {
                            Value::Array(a) => a.clone(),
                            other => vec![other.clone()],
                        };
                        for a in list {
                            let s = a.as_str().unwrap_or_default();
                            if hex_bytes(s).is_none_or(|b| b.len() != 20) {
                                return Err(format!("invalid address: {s}").into());
                            }
                        }
                    }
                    other => {
                        return Err(format!(
                            "Unrecognized field \"{other}\" (class FilterRequest)"
                        )
                        .into());
                    }
                }
            }
            Ok(params.clone())
        }
        other => Err(Refusal {
            code: METHOD_NOT_FOUND,
            message: format!("method {other} does not exist/is not available"),
        }),
    }
}

/// java-tron's `toJsonHexAddress`: `0x` + 20 bytes (a `41` prefix dropped); `null` stays.
fn json_hex_address(v: Option<&Value>) -> Value {
    match v.and_then(Value::as_str).and_then(hex_bytes) {
        Some(b) if b.len() == 21 && b[0] == 0x41 => json!(format!("0x{}", hex::encode(&b[1..]))),
        Some(b) if !b.is_empty() => json!(format!("0x{}", hex::encode(b))),
        _ => Value::Null,
    }
}

fn copy(from: &Map<String, Value>, to: &mut Map<String, Value>, keys: &[&str]) {
    for k in keys {
        to.insert(
            (*k).to_string(),
            from.get(*k).cloned().unwrap_or(Value::Null),
        );
    }
}

/// A block as java-tron writes it.
fn tron_block(mut b: Value) -> Value {
    if let Some(o) = b.as_object_mut() {
        o.insert("stateRoot".into(), json!("0x"));
        o.insert("nonce".into(), json!("0x0000000000000000"));
        o.insert("difficulty".into(), json!("0x0"));
        o.insert("totalDifficulty".into(), json!("0x0"));
        for k in [
            "withdrawalsRoot",
            "withdrawals",
            "blobGasUsed",
            "excessBlobGas",
            "parentBeaconBlockRoot",
            "requestsHash",
        ] {
            o.remove(k);
        }
        let miner = json_hex_address(o.get("miner"));
        o.insert("miner".into(), miner);
    }
    b
}

/// A receipt as java-tron's `TransactionReceipt` writes it: its fields only, type `0x0`, an
/// all-zero bloom, `status`, 20-byte addresses, logs that are never `removed`.
fn tron_receipt(r: Value) -> Value {
    let Some(o) = r.as_object() else {
        return r;
    };
    let mut out = Map::new();
    copy(
        o,
        &mut out,
        &[
            "blockHash",
            "blockNumber",
            "transactionIndex",
            "transactionHash",
            "cumulativeGasUsed",
            "effectiveGasPrice",
            "gasUsed",
            "status",
        ],
    );
    for k in ["from", "to", "contractAddress"] {
        out.insert(k.into(), json_hex_address(o.get(k)));
    }
    out.insert("logsBloom".into(), json!(format!("0x{}", "00".repeat(256))));
    out.insert("type".into(), json!("0x0"));
    let logs: Vec<Value> = o
        .get("logs")
        .and_then(Value::as_array)
        .map(|logs| {
            logs.iter()
                .filter_map(Value::as_object)
                .map(|l| {
                    let mut log = Map::new();
                    copy(
                        l,
                        &mut log,
                        &[
                            "logIndex",
                            "blockHash",
                            "blockNumber",
                            "transactionIndex",
                            "transactionHash",
                            "data",
                            "topics",
                        ],
                    );
                    log.insert("address".into(), json_hex_address(l.get("address")));
                    log.insert("removed".into(), json!(false));
                    Value::Object(log)
                })
                .collect()
        })
        .unwrap_or_default();
    out.insert("logs".into(), Value::Array(logs));
    Value::Object(out)
}

/// A transaction as java-tron's `TransactionResult` writes it; `null` for one that is not in a
/// block (java-tron's JSON-RPC reads transactions from blocks only).
fn tron_transaction(t: Value) -> Value {
    let Some(o) = t.as_object() else {
        return t;
    };
    if o.get("blockHash").is_none_or(Value::is_null) {
        return Value::Null;
    }
    let mut out = Map::new();
    copy(
        o,
        &mut out,
        &[
            "hash",
            "blockHash",
            "blockNumber",
            "transactionIndex",
            "gas",
            "gasPrice",
            "value",
            "input",
            "r",
            "s",
        ],
    );
    out.insert("nonce".into(), Value::Null);
    for k in ["from", "to"] {
        out.insert(k.into(), json_hex_address(o.get(k)));
    }
    // java-tron writes the signature's recovery byte as 27 or 28.
    let v = o
        .get("v")
        .and_then(Value::as_str)
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .map(|v| if v < 27 { v % 2 + 27 } else { v });
    out.insert(
        "v".into(),
        v.map_or(Value::Null, |v| json!(format!("0x{v:x}"))),
    );
    Value::Object(out)
}

fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

async fn handle(State(s): State<Shared>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return axum::Json(error(Value::Null, PARSE_ERROR, "parse error")).into_response();
    };
    let (batch, list) = match req {
        Value::Array(a) if a.is_empty() => {
            return axum::Json(error(Value::Null, INVALID_REQUEST, "empty batch")).into_response();
        }
        Value::Array(a) => (true, a),
        one => (false, vec![one]),
    };
    let mut answers: Vec<Option<Value>> = vec![None; list.len()];
    // (position in the request, method) of each forwarded entry; its upstream id is the position.
    let mut forward = Vec::new();
    let mut methods = BTreeMap::new();
    {
        let mut seen = s.seen();
        for (i, r) in list.iter().enumerate() {
            let id = r.get("id").cloned().unwrap_or(Value::Null);
            let Some(method) = r.get("method").and_then(Value::as_str) else {
                answers[i] = Some(error(id, INVALID_REQUEST, "invalid request: no method"));
                continue;
            };
            *seen.methods.entry(method.to_string()).or_default() += 1;
            match check(method, r.get("params").unwrap_or(&Value::Null)) {
                Ok(params) => {
                    forward.push(
                        json!({"jsonrpc": "2.0", "id": i, "method": method, "params": params}),
                    );
                    methods.insert(i, method.to_string());
                }
                Err(refusal) => {
                    seen.refused.push(format!("{method}: {}", refusal.message));
                    answers[i] = Some(error(id, refusal.code, refusal.message));
                }
            }
        }
    }
    if !forward.is_empty() {
        let got = match upstream(&s, forward).await {
            Ok(got) => got,
            Err(why) => {
                s.seen().upstream_failures += 1;
                return (StatusCode::BAD_GATEWAY, why).into_response();
            }
        };
        for mut a in got {
            let Some(i) = a
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
            else {
                continue;
            };
            let (Some(method), Some(original)) = (methods.get(&i), list.get(i)) else {
                continue;
            };
            if let Some(result) = a.get_mut("result") {
                let r = result.take();
                *result = match method.as_str() {
                    "eth_getBlockByNumber" | "eth_getBlockByHash" => tron_block(r),
                    "eth_getTransactionReceipt" => tron_receipt(r),
                    "eth_getTransactionByHash" => tron_transaction(r),
                    _ => r,
                };
            }
            a["id"] = original.get("id").cloned().unwrap_or(Value::Null);
            answers[i] = Some(a);
        }
    }
    let answers: Vec<Value> = answers
        .into_iter()
        .zip(&list)
        .map(|(a, r)| {
            a.unwrap_or_else(|| {
                error(
                    r.get("id").cloned().unwrap_or(Value::Null),
                    -32603,
                    "internal error: the node gave no answer",
                )
            })
        })
        .collect();
    if batch {
        axum::Json(Value::Array(answers)).into_response()
    } else {
        axum::Json(answers.into_iter().next().unwrap_or(Value::Null)).into_response()
    }
}

/// Sends the forwarded entries as one batch; the node's answers, or why there are none.
async fn upstream(s: &Shared, forward: Vec<Value>) -> Result<Vec<Value>, String> {
    let response = s
        .http
        .post(s.upstream.clone())
        .json(&Value::Array(forward))
        .send()
        .await
        .map_err(|e| format!("the node behind the TRON stand-in cannot be reached: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!(
            "the node behind the TRON stand-in answered {status}"
        ));
    }
    match response.json::<Value>().await {
        Ok(Value::Array(a)) => Ok(a),
        Ok(other) => Err(format!(
            "the node behind the TRON stand-in did not answer the batch: {other}"
        )),
        Err(e) => Err(format!(
            "the node behind the TRON stand-in answered no JSON: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_take_java_tron_shape() {
        let anvil = json!({
            "type": "0x2", "status": "0x1", "cumulativeGasUsed": "0x5208",
            "logsBloom": format!("0x{}", "ff".repeat(256)), "blobGasUsed": "0x0",
            "transactionHash": format!("0x{}", "ab".repeat(32)), "transactionIndex": "0x0",
            "blockHash": format!("0x{}", "cd".repeat(32)), "blockNumber": "0x7",
            "gasUsed": "0x5208", "effectiveGasPrice": "0x3b9aca00",
            "from": format!("0x{}", "11".repeat(20)), "to": format!("0x41{}", "22".repeat(20)),
            "contractAddress": null,
            "logs": [{"address": format!("0x{}", "33".repeat(20)), "topics": [], "data": "0x",
                      "blockTimestamp": "0x1", "logIndex": "0x0", "removed": false}]
        });
        let r = tron_receipt(anvil);
        assert_eq!(r["type"], "0x0");
        assert_eq!(r["logsBloom"], format!("0x{}", "00".repeat(256)));
        assert!(r.get("blobGasUsed").is_none());
        assert_eq!(r["to"], format!("0x{}", "22".repeat(20)));
        assert!(r["logs"][0].get("blockTimestamp").is_none());
        assert_eq!(r["logs"][0]["removed"], false);
        assert_eq!(tron_receipt(Value::Null), Value::Null);
    }

    #[test]
    fn transactions_take_java_tron_shape() {
        let pending = json!({"hash": "0x01", "blockHash": null, "v": "0x1"});
        assert_eq!(tron_transaction(pending), Value::Null);
        let mined = json!({"hash": "0x01", "blockHash": "0x02", "nonce": "0x5", "type": "0x2",
                           "chainId": "0x7a69", "v": "0x1", "from": "0x00", "to": null});
        let t = tron_transaction(mined);
        assert_eq!(t["nonce"], Value::Null);
        assert_eq!(t["v"], "0x1c");
        assert!(t.get("type").is_none() && t.get("chainId").is_none());
    }

    #[test]
    fn requests_are_checked_as_java_tron_does() {
        let to = format!("0x{}", "aa".repeat(20));
        assert!(check("eth_call", &json!([{"to": to, "data": "0x"}, "latest"])).is_ok());
        assert!(check("eth_call", &json!([{"to": to, "data": "0x"}, "0x1"])).is_err());
        assert!(check("eth_call", &json!([{"to": to, "input": "0x"}, "latest"])).is_err());
        let hash = "ab".repeat(32);
        assert_eq!(
            check("eth_getTransactionReceipt", &json!([hash])).ok(),
            Some(json!([format!("0x{hash}")]))
        );
        assert!(check("eth_getTransactionReceipt", &json!(["0x12"])).is_err());
        assert!(check("eth_getBlockByNumber", &json!(["pending", false])).is_err());
        assert!(check("eth_sendRawTransaction", &json!([])).is_err());
    }
}
