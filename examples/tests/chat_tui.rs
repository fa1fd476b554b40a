//! The `chat` example, scripted: two terminal clients (alice and bob) in
//! tmux panes against a real broker, typing as a person would; the test
//! reads what their screens show. Needs tmux (.ci/run installs it).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

struct Pane(String);

impl Pane {
    fn start(name: &str, cmd: &str) -> Pane {
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "140",
                "-y",
                "30",
                cmd,
            ])
            .status()
            .expect("tmux runs")
            .success();
        assert!(ok, "tmux new-session {name}");
        Pane(name.to_owned())
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `text`.
    fn shows(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.screen();
            if s.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never showed {text:?}; it shows:\n{s}",
                self.0
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_line(&self, line: &str) {
        Command::new("tmux")
            .args(["send-keys", "-t", &self.0, "-l", line])
            .status()
            .unwrap();
        Command::new("tmux")
            .args(["send-keys", "-t", &self.0, "Enter"])
            .status()
            .unwrap();
    }

    fn type_keys(&self, keys: &str) {
        Command::new("tmux")
            .args(["send-keys", "-t", &self.0, "-l", keys])
            .status()
            .unwrap();
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

fn chat_cmd(addr: &str, user: &str, token: &str, data: &Path) -> String {
    format!(
        "{} --server {addr} --user {user} --token {token} --data {}",
        env!("CARGO_BIN_EXE_chat"),
        data.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_terminals_chat_directly_and_in_a_group_and_catch_up_after_being_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = courier::Config {
        data_dir: dir.path().join("data"),
        ..courier::Config::default()
    };
    config.listeners[0].bind = "127.0.0.1:0".into();
    let mut chat = courier_chat::ChatConfig::default();
    chat.tokens.secret_file = Some(dir.path().join("secret"));
    let mut running = courier_chat::start(config, chat).await.unwrap();
    let addr = running
        .server
        .addr(courier::config::ListenerKind::Tcp)
        .unwrap()
        .to_string();
    let now = courier::message::unix_now();
    let token = |u: &str| running.chat.tokens().mint(u, "term", now, 3600).unwrap();
    let tag = std::process::id();
    let data = dir.path().join("clients");

    let bob = Pane::start(
        &format!("bob-{tag}"),
        &chat_cmd(&addr, "bob", &token("bob"), &data),
    );
    bob.shows("connected as bob");
    let alice = Pane::start(
        &format!("alice-{tag}"),
        &chat_cmd(&addr, "alice", &token("alice"), &data),
    );
    alice.shows("connected as alice");

    // A direct conversation: the message, the answer, the read receipt.
    alice.type_line("/with bob");
    alice.type_line("hello bob");
    bob.shows("alice: hello bob");
    alice.shows("hello bob ✓✓ read");
    bob.type_keys("hi al");
    alice.shows("bob is typing");
    bob.type_line("ice");
    alice.shows("bob: hi alice");
    alice.shows("bob online");

    // bob goes away; alice writes; bob comes back and has it.
    drop(bob);
    alice.type_line("while you were away");
    alice.shows("while you were away ✓");
    let bob = Pane::start(
        &format!("bob2-{tag}"),
        &chat_cmd(&addr, "bob", &token("bob"), &data),
    );
    bob.shows("alice: while you were away");

    // A group.
    alice.type_line("/group team bob");
    alice.type_line("to the team");
    bob.shows("1 team");
    bob.type_line("/go 1");
    bob.shows("alice: to the team");
    alice.type_line("/quit");
    drop((alice, bob));
    running.server.shutdown().await.unwrap();
}
