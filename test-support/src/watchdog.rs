//! Cleanup that happens even when the harness does not get to run its destructors: a test
//! binary that panics with abort, is killed by a timeout, or a fault suite SIGKILLed
//! itself. A small shell process, in its own session, waits for the harness process to
//! end and then runs the cleanup (stop a private Postgres, kill a private broker or the
//! service processes, remove their folders). Dropping the watchdog disarms it: the harness
//! cleaned up itself.

use std::process::{Child, Command, Stdio};

/// An armed cleanup; disarmed when dropped.
#[derive(Debug)]
pub struct Watchdog {
    child: Option<Child>,
}

impl Watchdog {
    /// Runs `cleanup` (a shell script) once this process has ended, unless disarmed first.
    /// A watchdog that cannot start (no `setsid`) only loses the safety net.
    pub fn arm(cleanup: &str) -> Self {
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; {cleanup}",
            std::process::id()
        );
        let child = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        Self { child }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `text` quoted for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}
