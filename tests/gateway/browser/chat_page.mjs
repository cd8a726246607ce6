// Drives the gateway's web page in Debian's Chromium through playwright-core (never a
// downloaded browser) and prints what it saw as one JSON object; test_browser.py asserts.
// Usage: node chat_page.mjs BASE_URL API_KEY XSS_CONVERSATION_ID TOOLS_CONVERSATION_ID
import { chromium } from "playwright-core";

const [baseUrl, apiKey, xssConversationId, toolsConversationId] = process.argv.slice(2);
const out = { pageErrors: [], dialogs: [], offsiteRequests: [] };
const SCRIPT_PROMPT = 'Repeat exactly this HTML, nothing else: <script>window.__pwned="script"</script>';

// Samples the newest assistant message every 10 ms from when it starts streaming until it
// stops.
function watchReply() {
  return new Promise((resolve) => {
    const seen = [];
    const started = performance.now();
    const tick = () => {
      const all = document.querySelectorAll(".message.assistant");
      const el = all[all.length - 1];
      const status = el ? el.dataset.status : null;
      if (status === "streaming" || seen.length) {
        seen.push([status, el.querySelector(".body").textContent.length]);
      }
      const finished = seen.length && status !== "streaming";
      if (finished || performance.now() - started > 90000) resolve(seen);
      else setTimeout(tick, 10);
    };
    tick();
  });
}

const statuses = () => [...document.querySelectorAll(".message")]
  .map((m) => `${m.classList.contains("user") ? "user" : "assistant"}:${m.dataset.status}`);

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: baseUrl });
  const page = await context.newPage();
  page.setDefaultTimeout(90000);
  page.on("pageerror", (e) => out.pageErrors.push(String(e)));
  page.on("dialog", (d) => { out.dialogs.push(d.message()); d.dismiss(); });
  page.on("request", (r) => {
    if (!r.url().startsWith(baseUrl)) out.offsiteRequests.push(r.url());
  });

  // Sign in.
  await page.goto(baseUrl);
  await page.fill("#key-input", "cf_0000000000000000_wrong");
  await page.click("#sign-in");
  await page.waitForFunction(() => document.querySelector("#sign-in-error").textContent !== "");
  out.badKeyError = await page.textContent("#sign-in-error");
  await page.fill("#key-input", apiKey);
  await page.click("#sign-in");
  await page.waitForSelector("#chat-view:not([hidden])");
  out.userName = await page.textContent("#user-name");

  // A reply streams in.
  await page.fill("#message-input", "Tell me a short story about a cat.");
  await page.press("#message-input", "Enter");
  out.firstReply = await page.evaluate(watchReply);
  out.conversationId = await page.evaluate(() => location.hash.slice(1));

  // A second, long reply is stopped mid-stream.
  await page.fill("#message-input", "Write a very long essay about the history of the oceans.");
  await page.click("#send");
  await page.waitForFunction(() => {
    const all = document.querySelectorAll(".message.assistant");
    const el = all[all.length - 1];
    return all.length === 2 && el.dataset.status === "streaming"
      && el.querySelector(".body").textContent.length > 20;
  });
  await page.click("#stop");
  await page.waitForSelector(".message.assistant:last-child[data-status='stopped']");
  out.stoppedText = await page.textContent(".message.assistant:last-child .body");
  out.statusesBeforeReload = await page.evaluate(statuses);

  // Reload: the conversation is listed, its messages come back from the server.
  for (let i = 0; i < 20; i++) {
    await page.reload();
    await page.waitForSelector("#chat-view:not([hidden])");
    await page.waitForFunction(() => document.querySelectorAll(".message").length > 0);
    out.statusesAfterReload = await page.evaluate(statuses);
    if (out.statusesAfterReload.at(-1) === "assistant:stopped") break;
    await page.waitForTimeout(250);
  }
  out.listed = await page.$$eval("#conversations li", (lis) => lis.map((li) => li.dataset.id));
  out.titleAfterReload = await page.textContent("#conversation-title");
  out.stoppedTextAfterReload = await page.textContent(".message.assistant:last-child .body");

  // Regenerate the stopped reply: a new one streams in its place.
  await page.click("#regenerate");
  out.regenerated = await page.evaluate(watchReply);
  out.statusesAfterRegenerate = await page.evaluate(statuses);

  // The model itself answers with a script tag (greedy decoding repeats it): it streams in
  // as text, never as a script.
  await page.click("#new-chat");
  await page.fill("#message-input", SCRIPT_PROMPT);
  await page.press("#message-input", "Enter");
  out.scriptReply = await page.evaluate(watchReply);
  out.scriptConversationId = await page.evaluate(() => location.hash.slice(1));
  out.scriptRendered = await page.evaluate(() => ({
    pwned: window.__pwned ?? null,
    scripts: document.querySelectorAll("#messages script").length,
    text: document.querySelector(".message.assistant:last-child .body").textContent,
  }));

  // A conversation whose tools the model must call: the call streams in as a block (name and
  // arguments), and is there again after a reload.
  const toolCalls = () => [...document.querySelectorAll(".message.assistant:last-child .tool-call")]
    .map((el) => ({
      name: el.querySelector(".tool-name").textContent,
      arguments: el.querySelector("pre code").textContent,
    }));
  await page.click(`#conversations li[data-id="${toolsConversationId}"] .open`);
  await page.waitForFunction((id) => location.hash === `#${id}`, toolsConversationId);
  await page.fill("#message-input", "What is the weather in Paris?");
  await page.press("#message-input", "Enter");
  out.toolReply = await page.evaluate(watchReply);
  out.toolCalls = await page.evaluate(toolCalls);
  await page.reload();
  await page.waitForSelector(".message.assistant:last-child .tool-call");
  out.toolCallsAfterReload = await page.evaluate(toolCalls);

  // Untrusted HTML in a reply is sanitized; nothing in it runs; code blocks can be copied.
  await page.click(`#conversations li[data-id="${xssConversationId}"] .open`);
  await page.waitForFunction(() => document.querySelectorAll(".message.assistant").length === 1);
  await page.waitForTimeout(300); // time for anything that would run (onerror fires async)
  out.xss = await page.evaluate(() => {
    const box = document.querySelector("#messages");
    const handlers = [...box.querySelectorAll("*")]
      .filter((el) => [...el.attributes].some((a) => a.name.startsWith("on"))).length;
    return {
      pwned: window.__pwned ?? null,
      scripts: box.querySelectorAll("script").length,
      handlers,
      javascriptLinks: box.querySelectorAll("a[href^='javascript']").length,
      strong: box.querySelectorAll("strong").length,
      imgs: box.querySelectorAll("img").length,
      toolCallText: box.querySelector(".tool-call pre code")?.textContent ?? null,
      copyButtons: box.querySelectorAll("pre .copy-code").length,
    };
  });
  await page.click("pre .copy-code");
  await page.waitForFunction(() => document.querySelector("pre .copy-code").textContent === "Copied");
  out.clipboard = await page.evaluate(() => navigator.clipboard.readText().catch((e) => `error: ${e}`));
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
