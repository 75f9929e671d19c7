#![allow(clippy::unwrap_used)]
//! The chain commands of the CLI, run as the real binary against anvil and a per-test database:
//! `track`, `tx track|list`, `sync` and `ingest` (incremental, range, full), and their bad input.

mod common;
use common::{TokenChain, count, db_url};

use std::process::Command;

use alloy::primitives::U256;
use serde_json::Value;
use sqlx::PgPool;

struct Cli {
    url: String,
    config: tempfile::NamedTempFile,
}

impl Cli {
    fn run(&self, args: &[&str]) -> (bool, Value, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_chainsync"))
            .arg("--database-url")
            .arg(&self.url)
            .arg("--config")
            .arg(self.config.path())
            .arg("--json")
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (
            out.status.success(),
            v,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> Value {
        let (ok, v, err) = self.run(args);
        assert!(ok, "{args:?} failed: {err}");
        v
    }

    fn fails(&self, args: &[&str], needle: &str) {
        let (ok, _, err) = self.run(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn track_sync_tx_and_ingest_from_the_command_line(pool: PgPool) {
    let s = TokenChain::builder("CLI")
        .name("Cli")
        .holders(300)
        .seed(11)
        .max_units(50)
        .start()
        .await
        .unwrap();
    let (chain, token, holders) = (&s.chain, s.token, &s.holders);
    let transfers: Vec<_> = holders
        .windows(2)
        .step_by(10)
        .map(|w| (w[0].0, w[1].0, w[0].1 / U256::from(4)))
        .collect();
    chain.holder_transfers(token, &transfers).await.unwrap();

    let mut config = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(
        &mut config,
        format!(
            r#"
{}confirmations = 0
multicall_batch_size = 64
{}[[ingest]]
chain_id = 31337
initial_range = 3
contracts = [{{ address = "{token:#x}" }}]
"#,
            s.chain_toml(),
            s.token_toml()
        )
        .as_bytes(),
    )
    .unwrap();
    let cli = Cli {
        url: db_url(&pool),
        config,
    };
    cli.ok(&["migrate"]);

    // track: import a CSV-ish file with a header and a bad line, then add/remove/list.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut text = String::from("address,label\n# exported\n");
    for (a, _) in &holders[..250] {
        text.push_str(&format!("{a:#x},holder\n"));
    }
    text.push_str("0x1234,broken\n");
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    let r = cli.ok(&["track", "import", file.path().to_str().unwrap()]);
    assert_eq!(r["inserted"], 250);
    assert_eq!(r["invalid"].as_array().unwrap().len(), 2, "{r}");
    let again = cli.ok(&["track", "import", file.path().to_str().unwrap()]);
    assert_eq!(again["inserted"], 0);
    assert_eq!(again["already_tracked"], 250);
    let rest: Vec<String> = holders[250..]
        .iter()
        .map(|(a, _)| format!("{a:#x}"))
        .collect();
    let mut args = vec!["track", "add", "--label", "late"];
    args.extend(rest.iter().map(String::as_str));
    assert_eq!(cli.ok(&args)["added"], 50);
    let stray = "0x00000000000000000000000000000000000000aa";
    cli.ok(&["track", "add", stray]);
    assert_eq!(cli.ok(&["track", "remove", stray])["removed"], 1);
    cli.fails(&["track", "add", "0xnot-an-address"], "address");
    let listed = cli.ok(&["track", "list", "--limit", "1000"]);
    assert_eq!(listed.as_array().unwrap().len(), 300);

    // sync: every stored balance equals the chain's.
    cli.fails(&["sync", "nochain"], "unknown chain");
    cli.fails(&["sync", "anvil", "--asset-class", "gold"], "--asset-class");
    let r = cli.ok(&["sync", "anvil", "--asset-class", "erc20"]);
    assert_eq!(r["items"], 300);
    assert_eq!(r["failed"], 0);
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT address, amount::text FROM chainsync.balances")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 300);
    for (address, amount) in stored {
        let on_chain = chain
            .balance_of(token, address.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(amount, on_chain.to_string(), "{address}");
    }

    // tx track / list.
    let receipt = chain
        .transfer_from_holder(token, holders[0].0, holders[1].0, U256::from(1))
        .await
        .unwrap();
    let hash = format!("{:#x}", receipt.transaction_hash);
    let from = format!("{:#x}", holders[0].0);
    cli.fails(&["tx", "track", "0x12", "--chain", "anvil"], "hash");
    cli.fails(
        &["tx", "track", &hash, "--chain", "nochain"],
        "unknown chain",
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.tracked_txs").await,
        0
    );
    let r = cli.ok(&["tx", "track", &hash, "--chain", "anvil", "--address", &from]);
    assert_eq!(r["new"], true);
    let listed = cli.ok(&["tx", "list", "--chain", "31337", "--state", "pending"]);
    assert_eq!(listed[0]["hash"], hash.as_str());

    // ingest: every Transfer once, a re-ingested range adds nothing, --full rebuilds the same.
    let transfers_on_chain = (holders.len() + transfers.len() + 1) as i64;
    cli.fails(
        &["ingest", "--chain", "anvil", "--from", "9", "--to", "3"],
        "after",
    );
    let r = cli.ok(&["ingest", "--chain", "anvil"]);
    assert_eq!(r["caught_up"], true);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.events WHERE event = 'Transfer'"
        )
        .await,
        transfers_on_chain
    );
    let r = cli.ok(&["ingest", "--chain", "anvil", "--from", "0"]);
    assert_eq!(r["stored"], 0, "{r}");
    assert_eq!(r["logs"].as_i64().unwrap(), transfers_on_chain);
    let head = chain.block_number().await.unwrap() as i64;
    assert_eq!(
        count(
            &pool,
            "SELECT block_number FROM chainsync.ingest_checkpoints WHERE chain_id = 31337"
        )
        .await,
        head,
        "the checkpoint never moves backwards"
    );
    let r = cli.ok(&["ingest", "--chain", "anvil", "--full"]);
    assert_eq!(r["stored"].as_i64().unwrap(), transfers_on_chain);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.events").await,
        transfers_on_chain
    );
}
