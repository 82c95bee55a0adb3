//! Starting the service from a validated config: pool, migrations, signal handling, pipeline.

use std::sync::Arc;

use crate::config::Config;
use crate::events::Stats;
use crate::migrate;
use crate::pipeline::{self, Control, Exit, Shared, Tracker};
use crate::sink;

/// Runs the pipeline until `control.shutdown` is set, then drains.
pub fn run(config: Config, control: Arc<Control>, stats: Arc<Stats>) -> Result<Exit, String> {
    let pool = sink::pool(&config.database_url, config.pool_size)?;
    if config.migrate {
        let mut conn = pool
            .get()
            .map_err(|e| format!("cannot connect to the database to migrate: {e}"))?;
        migrate::migrate(&mut conn).map_err(|e| format!("migration failed: {e}"))?;
    }
    let shared = Shared {
        config,
        tracker: Arc::new(Tracker::default()),
        control,
        pool,
        stats,
    };
    pipeline::run(shared).map_err(|e| e.to_string())
}

/// SIGTERM and SIGINT set the shutdown flag; a second signal exits at once.
pub fn install_signal_handlers(control: &Control) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGTERM, SIGINT] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, 1, control.shutdown.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
        signal_hook::flag::register(signal, control.shutdown.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    Ok(())
}
