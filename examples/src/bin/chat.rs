//! A terminal chat client on the Rust SDK (ratatui): conversations on the
//! left, the current one's messages on the right, what you type at the
//! bottom; receipts (✓ sent, ✓✓ delivered, ✓✓ read), typing and presence.
//!
//! With the broker running (README, "Set-up"):
//! ```sh
//! C="target/release/courier -c config/courier.toml"
//! cargo run -p courier-examples --bin chat -- --user alice --token "$($C token alice term)"
//! cargo run -p courier-examples --bin chat -- --user bob --token "$($C token bob term)"
//! ```
//! Type `/with bob` to talk to bob, `/group NAME user,user` to make a
//! group, `/go N` to switch to conversation N, `/quit` to leave; anything
//! else is a message to the current conversation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use courier_sdk::{proto, Client, ClientConfig, Event, SendState, To, Token};
use ratatui::crossterm::event::{self, Event as Key, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph};

#[derive(Parser)]
struct Args {
    /// The broker's MQTT address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    server: String,
    /// Your user id.
    #[arg(long)]
    user: String,
    /// This device's id.
    #[arg(long, default_value = "term")]
    device: String,
    /// An access token for user and device (`courier token USER DEVICE`).
    #[arg(long)]
    token: String,
    /// Where the SDK keeps its outbox and messages.
    #[arg(long, default_value = "chat-data")]
    data: std::path::PathBuf,
}

struct Line {
    seq: u64,
    sender: String,
    text: String,
    /// Our own message's client id (for its state).
    id: Option<String>,
}

#[derive(Default)]
struct Conv {
    id: String,
    title: String,
    lines: Vec<Line>,
}

struct App {
    me: String,
    convs: Vec<Conv>,
    current: usize,
    /// A direct conversation being started (`/with bob`) before it has an id.
    pending_with: Option<String>,
    input: String,
    status: String,
    typing: Option<(String, Instant)>,
    presence: HashMap<String, bool>,
    states: HashMap<String, SendState>,
}

impl App {
    fn conv(&mut self, id: &str) -> usize {
        if let Some(i) = self.convs.iter().position(|c| c.id == id) {
            return i;
        }
        self.convs.push(Conv {
            id: id.to_owned(),
            title: id.to_owned(),
            ..Conv::default()
        });
        self.convs.len() - 1
    }

    fn add(&mut self, conv: &str, line: Line) {
        let i = self.conv(conv);
        let lines = &mut self.convs[i].lines;
        if line.seq > 0
            && lines
                .iter()
                .any(|l| l.seq == line.seq && l.id.is_none() == line.id.is_none())
        {
            return;
        }
        lines.push(line);
    }
}

fn text_of(e: &proto::Entry) -> Option<String> {
    match &e.kind {
        Some(proto::entry::Kind::Content(c)) => Some(String::from_utf8_lossy(&c.body).into_owned()),
        _ => None,
    }
}

fn tick(state: Option<&SendState>) -> &'static str {
    match state {
        Some(SendState::Queued) => " …",
        Some(SendState::Sent { .. }) => " ✓",
        Some(SendState::Delivered { .. }) => " ✓✓",
        Some(SendState::Read { .. }) => " ✓✓ read",
        Some(SendState::Failed { .. }) => " ✗",
        None => "",
    }
}

fn draw(f: &mut ratatui::Frame, app: &App) {
    let [top, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let [left, right] =
        Layout::horizontal([Constraint::Length(28), Constraint::Min(20)]).areas(top);
    let items: Vec<ListItem> = app
        .convs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mark = if i == app.current { ">" } else { " " };
            ListItem::new(format!("{mark}{i} {}", c.title))
        })
        .collect();
    f.render_widget(
        List::new(items).block(
            Block::default()
                .borders(Borders::ALL)
                .title("conversations"),
        ),
        left,
    );
    let lines: Vec<ListItem> = app
        .convs
        .get(app.current)
        .map(|c| {
            c.lines
                .iter()
                .map(|l| {
                    let t = l.id.as_ref().map_or("", |id| tick(app.states.get(id)));
                    ListItem::new(format!("{}: {}{t}", l.sender, l.text))
                })
                .collect()
        })
        .unwrap_or_default();
    let title = app
        .convs
        .get(app.current)
        .map_or("messages".to_owned(), |c| c.title.clone());
    f.render_widget(
        List::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
        right,
    );
    f.render_widget(
        Paragraph::new(app.input.as_str()).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!("{} >", app.me)),
        ),
        input,
    );
    let typing = match &app.typing {
        Some((u, at)) if at.elapsed() < Duration::from_secs(6) => format!(" | {u} is typing"),
        _ => String::new(),
    };
    let mut online: Vec<String> = app
        .presence
        .iter()
        .map(|(u, on)| format!("{u} {}", if *on { "online" } else { "offline" }))
        .collect();
    online.sort();
    f.render_widget(
        Paragraph::new(format!("{}{typing} | {}", app.status, online.join(", "))),
        status,
    );
}

/// What a line typed by the user does.
async fn command(client: &Client, app: &mut App, line: String) -> anyhow::Result<bool> {
    if line == "/quit" {
        return Ok(false);
    }
    if let Some(who) = line.strip_prefix("/with ") {
        app.pending_with = Some(who.trim().to_owned());
        app.status = format!("writing to {}", who.trim());
        return Ok(true);
    }
    if let Some(rest) = line.strip_prefix("/group ") {
        let mut parts = rest.splitn(2, ' ');
        let name = parts.next().unwrap_or("group").to_owned();
        let members: Vec<&str> = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|m| !m.is_empty())
            .collect();
        let id = client.create_group(&name, &members).await?;
        let i = app.conv(&id);
        app.convs[i].title = name;
        app.current = i;
        app.pending_with = None;
        return Ok(true);
    }
    if let Some(n) = line.strip_prefix("/go ") {
        if let Ok(n) = n.trim().parse::<usize>() {
            if n < app.convs.len() {
                app.current = n;
                app.pending_with = None;
            }
        }
        return Ok(true);
    }
    let to = match (&app.pending_with, app.convs.get(app.current)) {
        (Some(u), _) => To::User(u.clone()),
        (None, Some(c)) => To::Conversation(c.id.clone()),
        (None, None) => {
            app.status = "no conversation: /with USER first".into();
            return Ok(true);
        }
    };
    let id = client.send_text(to, &line)?;
    app.states.insert(id.clone(), SendState::Queued);
    let conv = match &app.pending_with {
        Some(u) => format!("(to {u})"),
        None => app.convs[app.current].id.clone(),
    };
    app.add(
        &conv,
        Line {
            seq: 0,
            sender: app.me.clone(),
            text: line,
            id: Some(id),
        },
    );
    if app.pending_with.is_some() {
        app.current = app.conv(&conv);
    }
    Ok(true)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let token = a.token.clone();
    let config = ClientConfig::new(
        &a.server,
        &a.user,
        &a.device,
        a.data.join(&a.user),
        move || {
            let token = token.clone();
            async move {
                Ok(Token {
                    value: token,
                    expires_at: None,
                })
            }
        },
    );
    let mut client = Client::connect(config)?;
    let mut app = App {
        me: a.user.clone(),
        convs: Vec::new(),
        current: 0,
        pending_with: None,
        input: String::new(),
        status: "connecting".into(),
        typing: None,
        presence: HashMap::new(),
        states: HashMap::new(),
    };
    // Keys come from a thread (crossterm reads block).
    let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(k) = event::read() {
            if keys_tx.send(k).is_err() {
                return;
            }
        }
    });
    let mut term = ratatui::init();
    let mut last_typing = Instant::now() - Duration::from_secs(10);
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
    let result: anyhow::Result<()> = async {
        loop {
            term.draw(|f| draw(f, &app))?;
            tokio::select! {
                _ = redraw.tick() => {}
                k = keys.recv() => {
                    let Some(Key::Key(k)) = k else { continue };
                    if k.kind != KeyEventKind::Press {
                        continue;
                    }
                    match k.code {
                        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                        KeyCode::Enter => {
                            let line = std::mem::take(&mut app.input);
                            if !line.is_empty() && !command(&client, &mut app, line).await? {
                                return Ok(());
                            }
                        }
                        KeyCode::Backspace => { app.input.pop(); }
                        KeyCode::Char(c) => {
                            app.input.push(c);
                            if let Some(cv) = app.convs.get(app.current) {
                                if last_typing.elapsed() > Duration::from_secs(2) && !cv.id.starts_with('(') && !app.input.starts_with('/') {
                                    last_typing = Instant::now();
                                    let _ = client.typing(&cv.id, true);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                e = client.next_event() => {
                    let Some(e) = e else { return Ok(()) };
                    on_event(&client, &mut app, e).await;
                }
            }
        }
    }
    .await;
    ratatui::restore();
    client.close().await;
    result
}

async fn on_event(client: &Client, app: &mut App, e: Event) {
    match e {
        Event::Connected => {
            app.status = format!("connected as {}", app.me);
            if let Ok(cs) = client.conversations(0, 50).await {
                let mut others = Vec::new();
                for c in cs {
                    let i = app.conv(&c.id);
                    let names: Vec<String> = c
                        .members
                        .iter()
                        .filter(|m| **m != app.me)
                        .cloned()
                        .collect();
                    app.convs[i].title = if c.name.is_empty() {
                        names.join(", ")
                    } else {
                        c.name.clone()
                    };
                    others.extend(names);
                    if let Ok(h) = client.history(&c.id, 0, 0, 50).await {
                        for e in h {
                            if let Some(t) = text_of(&e) {
                                app.add(
                                    &c.id,
                                    Line {
                                        seq: e.seq,
                                        sender: e.sender.clone(),
                                        text: t,
                                        id: None,
                                    },
                                );
                            }
                        }
                    }
                }
                others.sort();
                others.dedup();
                let refs: Vec<&str> = others.iter().map(String::as_str).collect();
                if let Ok(ps) = client.watch_presence(&refs).await {
                    for p in ps {
                        app.presence.insert(p.user, p.online);
                    }
                }
            }
        }
        Event::Disconnected { reason } => app.status = format!("reconnecting ({reason})"),
        Event::Entry(e) => {
            if let Some(t) = text_of(&e) {
                let i = app.conv(&e.conversation);
                if app.convs[i].title == e.conversation {
                    // New here: its name (or the others in it) from the snapshot.
                    if let Ok(cs) = client.conversations(0, 50).await {
                        if let Some(c) = cs.iter().find(|c| c.id == e.conversation) {
                            let names: Vec<String> = c
                                .members
                                .iter()
                                .filter(|m| **m != app.me)
                                .cloned()
                                .collect();
                            app.convs[i].title = if c.name.is_empty() {
                                names.join(", ")
                            } else {
                                c.name.clone()
                            };
                        }
                    }
                }
                app.add(
                    &e.conversation,
                    Line {
                        seq: e.seq,
                        sender: e.sender.clone(),
                        text: t,
                        id: None,
                    },
                );
                if app.convs.len() == 1 {
                    app.current = 0;
                }
                if e.sender != app.me {
                    let _ = client.mark_read(&e.conversation, e.seq).await;
                }
            }
        }
        Event::SendState {
            client_msg_id,
            state,
        } => {
            app.states.insert(client_msg_id, state);
            // A first message to a user: now its conversation is known.
            if let Some(who) = app.pending_with.take() {
                if let Ok(cs) = client.conversations(0, 50).await {
                    if let Some(c) = cs.iter().find(|c| {
                        c.members.contains(&who) && c.members.len() == 2 && c.name.is_empty()
                    }) {
                        let tmp = format!("(to {who})");
                        let i = app.conv(&c.id);
                        app.convs[i].title = who.clone();
                        if let Some(t) = app.convs.iter().position(|x| x.id == tmp) {
                            let moved = std::mem::take(&mut app.convs[t].lines);
                            let i = app.conv(&c.id);
                            app.convs[i].lines.extend(moved);
                            app.convs.remove(t);
                        }
                        app.current = app.conv(&c.id);
                        // Watching replaces the list: everyone known, and who.
                        let mut users: Vec<String> = app.presence.keys().cloned().collect();
                        users.push(who.clone());
                        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
                        if let Ok(ps) = client.watch_presence(&refs).await {
                            for p in ps {
                                app.presence.insert(p.user, p.online);
                            }
                        }
                    } else {
                        app.pending_with = Some(who);
                    }
                }
            }
        }
        Event::Typing(t) if t.typing => app.typing = Some((t.user, Instant::now())),
        Event::Typing(_) => app.typing = None,
        Event::Presence(p) => {
            app.presence.insert(p.user, p.online);
        }
        _ => {}
    }
}
