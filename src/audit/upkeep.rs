//! The audit log's background duties while serving: signing the tip every `audit_checkpoint_secs`
//! (and sooner when `audit_checkpoint_records` went by), and retention.

use std::sync::Weak;
use std::time::Duration;

use super::AuditLog;

/// The running upkeep task.
pub struct Handle {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops the task and waits for it (a round in progress finishes first).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts the task; it holds the log weakly, so a dropped log ends it too.
pub fn start(log: Weak<AuditLog>, every_secs: u64) -> Handle {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(every_secs));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(due) = log.upgrade() else { return };
            let timed = tokio::select! {
                _ = &mut stopped => return,
                _ = ticks.tick() => true,
                _ = due.due.notified() => false,
            };
            if let Err(e) = due.checkpoint().await {
                tracing::error!(error = %e, "the audit log's checkpoint could not be signed");
            }
            // Retention looks for whole signed segments: on the timer, not on every record count.
            if timed {
                match due.retain().await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "audit records past audit_retention_days removed"),
                    Err(e) => tracing::error!(error = %e, "audit retention failed"),
                }
            }
        }
    });
    Handle { stop, task }
}
