//! `chainsync demo` and `chainsync bench` (feature `dev`): self-contained runs on a local anvil
//! chain and scratch databases, built on `chainsync-dev`. Nothing else in the binary uses them.

pub mod bench_http;
pub mod bench_ingest;
pub mod bench_queue;
pub mod bench_rebuild;
pub mod bench_sync;
pub mod demo;

use crate::{
    app::App,
    cli::{BenchCmd, Cli, Command, admin_url},
    config::Config,
};

/// The application over a fresh scratch database `name` on the server of `admin_url`, migrated.
/// `config` is the TOML of everything but `database_url`.
async fn scratch_app(admin_url: &str, name: &str, config: &str) -> anyhow::Result<App> {
    let url = chainsync_dev::scratch::recreate_database(admin_url, name).await?;
    let app = App::connect(Config::from_toml(&format!(
        "database_url = \"{url}\"\n{config}"
    ))?)
    .await?;
    app.migrate().await?;
    Ok(app)
}

/// Runs the demo or a benchmark; `None` for every other command.
pub async fn run(cli: &Cli) -> Option<anyhow::Result<()>> {
    match &cli.command {
        Command::Demo { .. } | Command::Bench(_) => Some(dispatch(cli).await),
        _ => None,
    }
}

async fn dispatch(cli: &Cli) -> anyhow::Result<()> {
    let admin_url = admin_url(cli);
    match &cli.command {
        Command::Demo {
            holders,
            database,
            family,
        } => {
            drop(crate::telemetry::init(false, "warn", None));
            if *holders < 3 {
                anyhow::bail!("--holders must be at least 3");
            }
            return demo::run(demo::DemoOptions {
                holders: *holders,
                database: database.clone(),
                admin_url,
                family: *family,
            })
            .await;
        }
        Command::Bench(BenchCmd::Queue {
            mode,
            drain_config,
            jobs,
            database,
            pooler_url,
            listen,
        }) => {
            drop(crate::telemetry::init(false, "warn", None));
            if mode != "drain" && mode != "misc" {
                anyhow::bail!("--mode must be drain or misc, got {mode:?}");
            }
            if listen != "direct" && listen != "off" {
                anyhow::bail!("--listen must be direct or off, got {listen:?}");
            }
            let opts = bench_queue::BenchOptions {
                admin_url,
                database: database.clone(),
                mode: mode.clone(),
                config: drain_config.clone(),
                jobs: *jobs,
                pooler_url: pooler_url.clone(),
                listen_direct: listen == "direct",
            };
            println!("RESULT {}", bench_queue::run_unit(&opts).await?);
        }
        Command::Bench(BenchCmd::Sync { holders }) => {
            drop(crate::telemetry::init(false, "warn", None));
            println!("RESULT {}", bench_sync::run(&admin_url, *holders).await?);
        }
        Command::Bench(BenchCmd::Ingest {
            events,
            blocks,
            holders,
            transfers,
            reps,
        }) => {
            drop(crate::telemetry::init(false, "warn", None));
            let r = bench_ingest::run(
                &admin_url,
                bench_ingest::Sizes {
                    events: *events,
                    blocks: *blocks,
                    holders: *holders,
                },
                *transfers,
                *reps,
            )
            .await?;
            println!("RESULT {r}");
        }
        Command::Bench(BenchCmd::Rebuild {
            holders,
            transfers,
            hours,
            block_seconds,
        }) => {
            drop(crate::telemetry::init(false, "warn", None));
            let r = bench_rebuild::run(&bench_rebuild::RebuildOptions {
                admin_url,
                holders: *holders,
                transfers: *transfers,
                hours: *hours,
                block_seconds: *block_seconds,
            })
            .await?;
            println!("RESULT {r}");
        }
        Command::Bench(BenchCmd::Http {
            holders,
            connections,
            seconds,
        }) => {
            drop(crate::telemetry::init(false, "error", None));
            let r = bench_http::run(&bench_http::HttpBenchOptions {
                admin_url,
                holders: *holders,
                connections: *connections,
                seconds: *seconds,
            })
            .await?;
            println!("RESULT {r}");
        }
        _ => {}
    }
    Ok(())
}
