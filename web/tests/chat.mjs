// Two browser pages (alice and bob, in headless Chromium driven by
// playwright-core) chat with each other and with a Rust SDK client
// (carol, run by chat/tests/web.rs). Usage:
//   node tests/chat.mjs <page base URL> <ws URL> <alice token> <bob token>
// Prints "WEB OK" when every step passed; exits non-zero otherwise.
import { chromium } from "playwright-core";

const [base, ws, aliceToken, bobToken] = process.argv.slice(2);
const exe = process.env.CHROMIUM ?? "/usr/bin/chromium";
const step = (s) => console.log(`step: ${s}`);

const browser = await chromium.launch({ executablePath: exe, args: ["--no-sandbox"], headless: true });
try {
  const open = async (user, token) => {
    const page = await browser.newPage();
    page.on("pageerror", (e) => console.log(`${user} page error: ${e}`));
    const q = new URLSearchParams({ url: ws, user, device: "web", token });
    await page.goto(`${base}/index.html?${q}`);
    await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("connected"), null, { timeout: 15000 });
    return page;
  };
  const seeText = (page, text) =>
    page.waitForFunction((t) => [...document.querySelectorAll(".msg")].some((m) => m.textContent.includes(t)), text, { timeout: 15000 });

  const alice = await open("alice", aliceToken);
  const bob = await open("bob", bobToken);
  step("both pages connected");

  // carol (the Rust SDK) wrote to alice before she opened the page.
  await seeText(alice, "carol: hello alice from rust");
  step("alice sees carol's message");

  await alice.fill("#to", "bob");
  await alice.fill("#text", "hi bob from the browser");
  await alice.click("#send");
  await seeText(bob, "alice: hi bob from the browser");
  step("bob sees alice's message");

  // bob reads it (shown means read): alice's tick turns to read.
  await alice.waitForFunction(
    () => [...document.querySelectorAll(".msg")].some((m) => m.textContent.includes("hi bob from the browser") && m.textContent.includes("read")),
    null,
    { timeout: 15000 },
  );
  step("alice sees the read receipt");

  // bob types: alice sees it.
  await bob.type("#text", "hello", { delay: 20 });
  await alice.waitForFunction(() => document.getElementById("typing").textContent.includes("bob is typing"), null, { timeout: 15000 });
  step("alice sees bob typing");
  await bob.fill("#text", "hi alice, from bob's browser");
  await bob.click("#send");
  await seeText(alice, "bob: hi alice, from bob's browser");
  step("alice sees bob's reply");

  // Presence: bob is shown online to alice.
  await alice.waitForFunction(() => document.getElementById("presence").textContent.includes("bob: online"), null, { timeout: 15000 });
  step("alice sees bob online");

  // And a message to the Rust client.
  await alice.fill("#to", "carol");
  await alice.fill("#text", "hello rust from the browser");
  await alice.click("#send");
  await alice.waitForFunction(() => [...document.querySelectorAll(".msg")].some((m) => m.textContent.includes("hello rust from the browser")), null, { timeout: 15000 });
  step("alice wrote to carol");
  const errors = await alice.textContent("#error");
  if (errors) throw new Error(`alice's page shows an error: ${errors}`);
  console.log("WEB OK");
} finally {
  await browser.close();
}
