//! An engine with epoch interruption and the thread that advances its epoch: running guests
//! reach a yield point at every tick, where they can be throttled or stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{Config, Engine};

/// How often running guests yield to the scheduler (and can be stopped or throttled).
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The runtime could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting up wasmtime: {0}")]
pub struct SetupError(pub String);

impl From<wasmtime::Error> for SetupError {
    fn from(e: wasmtime::Error) -> Self {
        Self(format!("{e:#}"))
    }
}

/// A wasmtime engine whose epoch advances every 10 ms for as long as this value lives.
pub struct TickingEngine {
    engine: Engine,
    stop: Arc<AtomicBool>,
}

impl TickingEngine {
    /// An engine made from `config` with epoch interruption turned on, and its ticker thread.
    pub fn new(mut config: Config) -> Result<Self, SetupError> {
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let stop = Arc::new(AtomicBool::new(false));
        // The ticker thread ends at the first tick after this value is dropped.
        {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| SetupError(format!("starting the epoch ticker: {e}")))?;
        }
        Ok(Self { engine, stop })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for TickingEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
