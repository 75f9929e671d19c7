//! The daemon's moving parts in-process ([`chainsync::app::Running`]: workers and live
//! ingestion), failing the test if they cannot start or ingestion panicked.

use chainsync::app::App;

pub struct Running(chainsync::app::Running);

impl Running {
    pub async fn start(app: &App) -> Self {
        Self(chainsync::app::Running::start(app).await.unwrap())
    }

    pub async fn stop(self) {
        self.0.stop().await.unwrap();
    }
}
