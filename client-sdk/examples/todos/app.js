// The example app: one column per org, each a local mirror of its todos kept in sync by the
// client SDK. Served by `gateway demo`, which provides config.json (gateway URL, tokens).
import { openSync } from "../../js/index.js";

const config = await (await fetch("../../config.json")).json();
const gateway = config.url ?? location.origin;

// "Simulate offline": requests to the gateway fail as they do without a network.
const realFetch = window.fetch.bind(window);
const offline = document.getElementById("offline");
window.fetch = (input, init) =>
  offline.checked && String(input.url ?? input).startsWith(gateway)
    ? Promise.reject(new TypeError("offline (simulated)"))
    : realFetch(input, init);
offline.onchange = () => offline.checked || window.dispatchEvent(new Event("online"));

for (const [org, token] of Object.entries(config.tokens)) {
  const sync = await openSync({
    url: gateway,
    token,
    database: `gateway-demo ${org}`,
    shapes: { todos: { table: "todos", key: "id", indexes: ["title"] } },
  });
  column(org, sync);
}

function column(org, sync) {
  const section = document.createElement("section");
  section.innerHTML = `<h2>${org} <span class="pill">connecting</span></h2><ul></ul>
    <form><input placeholder="What needs doing?" required><button>Add</button></form>
    <div class="meta"></div>`;
  document.getElementById("orgs").append(section);
  const [pill, list, form, meta] = ["h2 .pill", "ul", "form", ".meta"].map((s) => section.querySelector(s));
  const todos = sync.shape("todos");
  let unsynced = new Set();
  let rows = [];

  sync.on("status", ({ status, reason }) => {
    pill.textContent = status;
    pill.className = `pill ${status}`;
    pill.title = reason ?? "";
  });
  const refreshOutbox = async () => {
    const open = [...(await sync.outbox.pending()), ...(await sync.outbox.entries("synced")).filter((e) => !e.echoed)];
    unsynced = new Set(open.map((e) => e.key));
    const problems = (await sync.outbox.entries()).filter((e) => e.status === "failed" || e.status === "abandoned");
    meta.innerHTML = `${open.length ? `${open.length} write(s) on their way` : "all writes synced"}${
      problems.length ? ` · <span class="problem">${problems.length} refused: ${escape(problems.at(-1).error)}</span>` : ""}`;
    render();
  };
  sync.on("outbox", refreshOutbox);
  sync.on("sync", refreshOutbox);
  todos.orderBy("title").subscribe((result) => ((rows = result), render()));
  refreshOutbox();

  // The todo being edited survives re-renders (changes keep arriving while one types).
  let editing = null;
  let rerendering = false;

  function render() {
    let field = null;
    const items = rows.map((row) => {
      const li = document.createElement("li");
      li.className = `${row.done ? "done" : ""} ${unsynced.has(row.id) ? "unsynced" : ""}`;
      li.innerHTML = `<input type="checkbox"><span class="title"></span><button title="delete">✕</button>`;
      const [box, title, remove] = li.children;
      box.checked = row.done;
      box.onchange = () => todos.update(row.id, { done: box.checked });
      title.textContent = row.title;
      title.onclick = () => ((editing = { id: row.id, draft: row.title }), render());
      remove.onclick = () => todos.delete(row.id);
      if (editing?.id === row.id) title.replaceWith((field = editor(row)));
      return li;
    });
    rerendering = true; // removing a focused field blurs it: that is not the user leaving it
    list.replaceChildren(...items);
    rerendering = false;
    field?.focus();
  }

  function editor(row) {
    const input = document.createElement("input");
    input.value = editing.draft;
    input.oninput = () => (editing.draft = input.value);
    const done = (save) => {
      const title = editing.draft.trim();
      editing = null;
      if (save && title && title !== row.title) todos.update(row.id, { title });
      render();
    };
    input.onkeydown = (e) => (e.key === "Enter" ? done(true) : e.key === "Escape" && done(false));
    input.onblur = () => !rerendering && editing && done(true);
    return input;
  }

  form.onsubmit = (e) => {
    e.preventDefault();
    const input = form.querySelector("input");
    todos.put({ id: crypto.randomUUID(), org_id: org, title: input.value.trim(), done: false });
    input.value = "";
  };
}

function escape(text) {
  return String(text).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
}
