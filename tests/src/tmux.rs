//! A terminal for tests of the full-screen view: a detached tmux session whose
//! pane runs a command, read with `capture-pane` and driven with `send-keys`.
//! Dropping it kills the session.

use std::{
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

/// A tmux session running one command in a pane of a fixed size.
pub struct Tmux {
    session: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a new detached session of
    /// `width` x `height` cells.
    pub fn start(name: &str, command: &str, width: u16, height: u16) -> Tmux {
        let session = format!("dstrace-test-{name}-{}", std::process::id());
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .env("TERM", "xterm-256color")
            .status()
            .expect("tmux runs (apt-get install tmux; cargo xtask setup installs it)");
        assert!(status.success(), "tmux new-session failed: {status}");
        // Keep the pane (and what it shows) after the command ends.
        let _ = Command::new("tmux").args(["set-option", "-t", &session, "remain-on-exit", "on"]).status();
        Tmux { session }
    }

    /// What the pane shows now, as text.
    pub fn screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// What the pane shows now, with its styles as escape sequences (`ESC [ 2 m`
    /// for dim, ...).
    pub fn styled_screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["capture-pane", "-p", "-e", "-t", &self.session])
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// What the pane shows now and everything that scrolled off it before (the
    /// normal screen's history; a full-screen view's alternate screen has none).
    pub fn history(&self) -> String {
        let output = Command::new("tmux")
            .args(["capture-pane", "-p", "-S", "-", "-t", &self.session])
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Sends keys, in tmux's names (`q`, `Enter`, `Down`, `Escape`, `C-c`).
    pub fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .expect("tmux runs");
        assert!(status.success());
    }

    /// Waits until the screen satisfies `done` and returns it; panics with the
    /// screen after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} within {timeout:?}; the screen:\n{screen}");
            sleep(Duration::from_millis(100));
        }
    }

    /// The process id of the pane's command.
    pub fn pane_pid(&self) -> u32 {
        let output = Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.session, "#{pane_pid}"])
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&output.stdout).trim().parse().expect("tmux prints the pane's pid")
    }

    /// The pane's title, which a program sets with an escape sequence (`ESC ] 2 ;`).
    pub fn title(&self) -> String {
        let output = Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.session, "#{pane_title}"])
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Whether the pane's command has ended.
    pub fn command_ended(&self) -> bool {
        let output = Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.session, "#{pane_dead}"])
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&output.stdout).trim() == "1"
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.session]).status();
    }
}
