// The web chat page on CourierClient: log in with a token (from the URL:
// ?url=ws://...&user=...&device=...&token=...), see conversations, chat,
// receipts, typing and presence.

import { CourierClient, Obj, textOf } from "./courier";

const q = new URLSearchParams(location.search);
const $ = (id: string) => document.getElementById(id) as HTMLElement;
const me = q.get("user") ?? "";
const client = new CourierClient({
  url: q.get("url") ?? `ws://${location.hostname}:8080/mqtt`,
  user: me,
  device: q.get("device") ?? "web",
  token: q.get("token") ?? "",
});

let current = "";
const mine: { conversation: string; seq: number; el: HTMLElement }[] = [];
const shown = new Set<string>();

function show(e: Obj): void {
  const text = textOf(e);
  const key = `${e.conversation}/${e.seq}`;
  if (text === undefined || shown.has(key)) return;
  shown.add(key);
  const div = document.createElement("div");
  div.className = "msg";
  div.dataset.conv = e.conversation;
  div.dataset.seq = String(e.seq);
  div.textContent = `${e.sender}: ${text}`;
  $("messages").appendChild(div);
  if (e.sender === me) {
    const st = document.createElement("span");
    st.className = "state";
    st.textContent = " ✓";
    div.appendChild(st);
    mine.push({ conversation: e.conversation, seq: e.seq, el: st });
  }
}

let started = false;

/** Watches the presence of everyone the user shares a conversation with. */
async function watchAll(): Promise<void> {
  const others = new Set<string>();
  for (const c of await client.conversations()) {
    c.members.filter((m: string) => m !== me).forEach((m: string) => others.add(m));
  }
  if (others.size) for (const p of await client.watchPresence([...others])) showPresence(p);
}

function addConversation(c: Obj): void {
  if (!c.id || document.querySelector(`#conversations li[data-id="${c.id}"]`)) return;
  if (started) watchAll().catch(() => {});
  const li = document.createElement("li");
  li.dataset.id = c.id;
  li.textContent = c.name || c.members.filter((m: string) => m !== me).join(", ");
  li.onclick = () => select(c.id);
  $("conversations").appendChild(li);
}

function select(id: string): void {
  current = id;
  for (const li of Array.from(document.querySelectorAll("#conversations li"))) {
    li.classList.toggle("current", (li as HTMLElement).dataset.id === id);
  }
}

client.on("entry", (e) => {
  show(e);
  if (!current) select(e.conversation);
  if (e.sender !== me) {
    // Shown means read.
    client.markRead(e.conversation, e.seq).catch(() => {});
    client.conversations().then((cs) => cs.forEach(addConversation)).catch(() => {});
  }
});

client.on("receipt", (r) => {
  if (r.user === me) return;
  for (const m of mine) {
    if (m.conversation !== r.conversation) continue;
    if (m.seq <= r.read) m.el.textContent = " ✓✓ read";
    else if (m.seq <= r.delivered && !m.el.textContent?.includes("read")) m.el.textContent = " ✓✓";
  }
});

const typingTimers = new Map<string, number>();
client.on("typing", (t) => {
  $("typing").textContent = t.typing ? `${t.user} is typing…` : "";
  clearTimeout(typingTimers.get(t.user));
  typingTimers.set(t.user, window.setTimeout(() => ($("typing").textContent = ""), 6000));
});

client.on("presence", (p) => showPresence(p));

function showPresence(p: Obj): void {
  let el = document.querySelector(`#presence [data-user="${p.user}"]`) as HTMLElement | null;
  if (!el) {
    el = document.createElement("div");
    el.dataset.user = p.user;
    $("presence").appendChild(el);
  }
  el.textContent = `${p.user}: ${p.online ? "online" : "offline"}`;
}

let lastTyping = 0;
($("text") as HTMLInputElement).addEventListener("input", () => {
  if (current && Date.now() - lastTyping > 2000) {
    lastTyping = Date.now();
    client.typing(current, true);
  }
});

$("send").addEventListener("click", async () => {
  const text = ($("text") as HTMLInputElement).value;
  const to = ($("to") as HTMLInputElement).value.trim();
  if (!text) return;
  try {
    const r = await client.sendText(to ? { user: to } : { conversation: current }, text);
    ($("text") as HTMLInputElement).value = "";
    ($("to") as HTMLInputElement).value = "";
    show({ conversation: r.conversation, seq: r.seq, sender: me, kind: "content", content: { body: Array.from(new TextEncoder().encode(text)) } });
    addConversation({ id: r.conversation, name: "", members: [me, to] });
    select(r.conversation);
    if (current) client.typing(current, false);
  } catch (e) {
    $("error").textContent = String(e);
  }
});

(async () => {
  await client.connect();
  $("status").textContent = `connected as ${me}`;
  const convs = await client.conversations();
  convs.forEach(addConversation);
  for (const c of convs) {
    for (const e of await client.history(c.id)) show(e);
  }
  if (convs[0]) select(convs[0].id);
  started = true;
  await watchAll();
})().catch((e) => ($("error").textContent = String(e)));
