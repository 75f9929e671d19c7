use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = chainsync::cli::Cli::parse();
    #[cfg(feature = "dev")]
    let result = match chainsync::dev::run(&cli).await {
        Some(done) => done,
        None => chainsync::cli::run(cli).await,
    };
    #[cfg(not(feature = "dev"))]
    let result = chainsync::cli::run(cli).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message and every cause, each once (an error that repeats its cause in its
            // own message does not get it twice).
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", chainsync_engine::report(e));
            std::process::ExitCode::FAILURE
        }
    }
}
