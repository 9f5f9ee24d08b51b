//! A local stand-in for an EventBridge `rate(...)` schedule.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub type ScheduledHandler = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

pub fn spawn(
    period: Duration,
    handler: ScheduledHandler,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // EventBridge fires after the first period, not at once.
        loop {
            tokio::select! {
                _ = ticks.tick() => handler().await,
                _ = shutdown.changed() => return,
            }
        }
    })
}
