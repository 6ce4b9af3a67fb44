// nbflow's live run view: the front end of nbflow.notebook.widget.RunView (an anywidget).
//
// The kernel sends small traits (header and DAG pictures, per-group summaries, button states)
// and, as custom "codes" messages, the state grid: per group whose runs moved, the category
// codes (one byte per run) from the first that changed. The grid is drawn here on one canvas
// per group from those bytes. Hover, details and the run list are asked of the kernel when
// needed. When the run has ended the kernel replaces this output by a static picture marked
// with the model id; the view then mounts itself again inside that picture.

const CSS = `
.nbflow-view{position:relative;contain:content;font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;font-size:13px;line-height:1.45;color:var(--jp-ui-font-color1,#222)}
.nbflow-view .nbflow-top{display:flex;align-items:flex-start;gap:8px}
.nbflow-view .nbflow-header{flex:1 1 auto;min-width:0}
.nbflow-view button{font:inherit;font-size:12px;padding:2px 10px;border:1px solid #bbb;border-radius:3px;background:#f4f4f4;cursor:pointer;color:#222}
.nbflow-view button:disabled{opacity:.6;cursor:default}
.nbflow-view .nbflow-cancel{background:#f6c85f;border-color:#d9a93a}
.nbflow-view .nbflow-dag{overflow-x:auto;margin:4px 0}
.nbflow-view .nbflow-dag .nbflow-node.nbflow-selected rect:first-of-type{stroke-width:3}
.nbflow-view .nbflow-group{margin-top:6px}
.nbflow-view .nbflow-group canvas{display:block;image-rendering:pixelated;cursor:pointer;max-width:100%}
.nbflow-view .nbflow-muted{color:#6a6a6a}
.nbflow-view .nbflow-bar{display:flex;gap:6px;align-items:center;margin:8px 0 4px;flex-wrap:wrap}
.nbflow-view .nbflow-bar input,.nbflow-view .nbflow-bar select{font:inherit;font-size:12px;padding:1px 4px}
.nbflow-view .nbflow-chip{background:#e8eef7;border-radius:10px;padding:0 8px;cursor:pointer}
.nbflow-view .nbflow-panes{display:flex;gap:10px;align-items:flex-start}
.nbflow-view .nbflow-rows{width:38%;min-width:220px;max-height:22em;overflow:auto;border:1px solid rgba(127,127,127,.3);border-radius:3px}
.nbflow-view .nbflow-row{padding:1px 6px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;cursor:pointer;font-size:12px}
.nbflow-view .nbflow-row:hover{background:rgba(55,120,194,.12)}
.nbflow-view .nbflow-row.nbflow-selected{background:rgba(55,120,194,.25)}
.nbflow-view .nbflow-detail{flex:1 1 auto;min-width:0}
.nbflow-view .nbflow-tip{position:absolute;z-index:10;pointer-events:none;background:#fff;color:#222;border:1px solid #999;border-radius:3px;padding:4px 8px;font-size:12px;box-shadow:0 1px 4px rgba(0,0,0,.2);max-width:460px;white-space:normal}
.nbflow-view .nbflow-out{margin:4px 0;white-space:pre-wrap;font-size:12px;max-height:12em;overflow:auto}
`;

const GLYPHS = { Failed: "✗", Crashed: "✗", Cancelled: "⊘", Running: "▶", Completed: "✓", Cached: "✓" };
const HINT = "Click a square of the grid or a run of the list to see its parameters, result, traceback and output.";

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

// The same layout as nbflow/report/grid.py: big squares for few runs, 1 px for very many.
function gridLayout(n, maxWidth = 600, targetHeight = 160) {
  if (n <= 0) return { columns: 1, square: 12, gap: 2, pitch: 14 };
  let pitch = Math.floor(Math.sqrt((maxWidth * targetHeight) / n)) || 1;
  pitch = Math.max(1, Math.min(pitch, 14));
  const gap = pitch < 4 ? 0 : pitch < 10 ? 1 : 2;
  const columns = Math.max(1, Math.min(n, Math.floor(maxWidth / pitch)));
  return { columns, square: pitch - gap, gap, pitch };
}

function rgba32(hex) {
  const r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
  return (255 << 24) | (b << 16) | (g << 8) | r; // ABGR: little-endian ImageData
}

function mount(model, el, host) {
  const categories = model.get("categories"); // [[name, colour], ...] by code
  const palette = new Uint32Array(categories.map(([, colour]) => rgba32(colour)));
  const codes = new Map(); // group index -> Uint8Array of codes (length = runs known)
  const canvases = new Map(); // group index -> {box, caption, canvas, layout}
  const state = { group: null, stateFilter: "", query: "", offset: 0, selected: null, seq: 0, listSeq: 0, dirty: new Set(), frame: 0, listAsked: 0, hoverKey: null };
  let alive = true;

  const style = h("style", { text: CSS });
  const header = h("div", { class: "nbflow-header" });
  const retry = h("button", { class: "nbflow-retry", title: "Run the flow again: what completed is reused, only what did not runs" });
  const cancel = h("button", { class: "nbflow-cancel", title: "Cancel the task runs that have not finished" });
  const top = h("div", { class: "nbflow-top" }, header, retry, cancel);
  const dag = h("div", { class: "nbflow-dag" });
  const grid = h("div", { class: "nbflow-grid" });
  const stateSelect = h("select", { class: "nbflow-state-filter", title: "Show the runs in one state" });
  const search = h("input", { class: "nbflow-search", type: "search", placeholder: "name or map index", size: "18" });
  const chip = h("span", { class: "nbflow-chip", title: "Show every task again" });
  const pager = h("span", { class: "nbflow-pager nbflow-muted" });
  const prev = h("button", { class: "nbflow-prev", text: "‹" });
  const next = h("button", { class: "nbflow-next", text: "›" });
  const bar = h("div", { class: "nbflow-bar" }, h("b", { text: "Task runs" }), stateSelect, search, chip, prev, pager, next);
  const rows = h("div", { class: "nbflow-rows" });
  const detail = h("div", { class: "nbflow-detail nbflow-muted", text: HINT });
  const panes = h("div", { class: "nbflow-panes" }, rows, detail);
  const tip = h("div", { class: "nbflow-tip" });
  tip.style.display = "none";
  const out = h("pre", { class: "nbflow-out" });
  const retryBox = h("div", { class: "nbflow-retry-view" });
  const root = h("div", { class: "nbflow-view" }, style, top, dag, grid, bar, panes, out, retryBox, tip);
  el.append(root);

  stateSelect.append(h("option", { value: "", text: "all states" }));
  for (const [name] of categories) stateSelect.append(h("option", { value: name, text: name }));

  const send = (msg) => { if (alive) model.send(msg); };

  // -- traits ---------------------------------------------------------------------------
  function drawHeader() {
    header.innerHTML = model.get("header");
    const c = model.get("cancel_state");
    cancel.style.display = c === "hidden" ? "none" : "";
    cancel.disabled = c !== "ready";
    cancel.textContent = c === "cancelling" ? "Cancelling…" : "Cancel";
    const r = model.get("retry_state");
    retry.style.display = r === "hidden" ? "none" : "";
    retry.disabled = r !== "offered";
    retry.textContent = r === "retrying" ? "Retrying…" : "Retry failed";
    refreshList(false);
  }

  function drawDag() {
    dag.innerHTML = model.get("dag");
    for (const node of dag.querySelectorAll(".nbflow-node[data-group]")) {
      const g = parseInt(node.getAttribute("data-group"), 10);
      node.classList.toggle("nbflow-selected", g === state.group);
      node.addEventListener("click", () => filterGroup(state.group === g ? null : g));
    }
    // a subflow is one node: a click draws its own tasks (or folds them back)
    for (const node of dag.querySelectorAll(".nbflow-subflow[data-flow]")) {
      const f = parseInt(node.getAttribute("data-flow"), 10);
      const open = node.getAttribute("data-expanded") !== "true";
      node.addEventListener("click", () => send({ type: "expand", flow: f, open }));
    }
  }

  function groupTitle(info) {
    return info.flow ? `${info.flow} › ${info.name}` : info.name;
  }

  function drawOutput() {
    const chunks = model.get("output") || [];
    out.style.display = chunks.length ? "" : "none";
    out.textContent = chunks.map(([, text]) => text).join("");
  }

  function groupBox(g) {
    let entry = canvases.get(g);
    if (!entry) {
      const caption = h("div");
      const canvas = h("canvas", { class: "nbflow-canvas", "data-group": String(g) });
      const box = h("div", { class: "nbflow-group", "data-group": String(g) }, caption, canvas);
      grid.append(box);
      entry = { box, caption, canvas, layout: null };
      canvases.set(g, entry);
      canvas.addEventListener("mousemove", (ev) => hover(g, ev));
      canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; state.hoverKey = null; });
      canvas.addEventListener("click", (ev) => { const i = cellAt(g, ev); if (i !== null) openDetails(g, i); });
    }
    return entry;
  }

  function drawGroups() {
    const groups = model.get("groups");
    groups.forEach((info, g) => {
      const entry = groupBox(g);
      const counts = Object.entries(info.counts).map(([name, n]) => {
        const colour = (categories.find(([c]) => c === name) || [, "#999"])[1];
        return `<span data-state="${name}" data-count="${n}" style="white-space:nowrap"><span style="color:${colour}">&#9632;</span> ${name} ${n.toLocaleString("en-US")}</span>`;
      }).join(" &middot; ");
      entry.caption.innerHTML = "";
      entry.caption.append(h("code", { text: groupTitle(info) }));
      entry.caption.insertAdjacentHTML("beforeend", ` <span class="nbflow-muted">x${info.count.toLocaleString("en-US")}</span> &middot; ${counts}`);
      // the grid is the run's own: a subflow's group shows once its DAG node is picked
      entry.box.style.display = (state.group === null ? !info.flow : state.group === g) ? "" : "none";
      entry.canvas.dataset.runs = String(info.count);
    });
  }

  // -- the grid from codes -----------------------------------------------------------------
  function onCodes(heads, buffers) {
    heads.forEach(([g, start, total], k) => {
      const view = buffers[k];
      const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
      let have = codes.get(g);
      if (!have || have.length < total) {
        const grown = new Uint8Array(total);
        if (have) grown.set(have.subarray(0, Math.min(have.length, total)));
        have = grown;
        codes.set(g, have);
      }
      have.set(bytes.subarray(0, Math.max(0, Math.min(bytes.length, total - start))), start);
      state.dirty.add(g);
    });
    schedule();
  }

  function schedule() {
    if (!state.frame && alive) state.frame = requestAnimationFrame(paint);
  }

  function paint() {
    state.frame = 0;
    for (const g of state.dirty) paintGroup(g);
    state.dirty.clear();
  }

  function paintGroup(g) {
    const data = codes.get(g);
    if (!data) return;
    const entry = groupBox(g);
    const n = data.length;
    const lay = gridLayout(n);
    const rowsN = Math.max(1, Math.ceil(n / lay.columns));
    const width = lay.columns * lay.pitch - lay.gap, height = rowsN * lay.pitch - lay.gap;
    const canvas = entry.canvas;
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    entry.layout = lay;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(width, height);
    const px = new Uint32Array(image.data.buffer);
    const { pitch, square, columns } = lay;
    if (pitch === 1) {
      for (let i = 0; i < n; i++) px[i] = palette[data[i]];
    } else {
      for (let i = 0; i < n; i++) {
        const colour = palette[data[i]];
        const x0 = (i % columns) * pitch, y0 = Math.floor(i / columns) * pitch;
        for (let y = 0; y < square; y++) px.fill(colour, (y0 + y) * width + x0, (y0 + y) * width + x0 + square);
      }
    }
    ctx.putImageData(image, 0, 0);
    canvas.dataset.painted = String(n); // how many runs the picture shows (tests wait on it)
  }

  function cellAt(g, ev) {
    const entry = canvases.get(g), data = codes.get(g);
    if (!entry || !entry.layout || !data) return null;
    const rect = entry.canvas.getBoundingClientRect();
    const scale = entry.canvas.width / rect.width || 1;
    const x = (ev.clientX - rect.left) * scale, y = (ev.clientY - rect.top) * scale;
    const { pitch, columns } = entry.layout;
    const col = Math.floor(x / pitch), row = Math.floor(y / pitch);
    if (col < 0 || col >= columns || row < 0) return null;
    const i = row * columns + col;
    return i < data.length ? i : null;
  }

  // -- hover and details -----------------------------------------------------------------
  function hover(g, ev) {
    const i = cellAt(g, ev);
    if (i === null) { tip.style.display = "none"; state.hoverKey = null; return; }
    const rootRect = root.getBoundingClientRect();
    tip.style.left = `${Math.min(ev.clientX - rootRect.left + 14, rootRect.width - 200)}px`;
    tip.style.top = `${ev.clientY - rootRect.top + 14}px`;
    tip.style.display = "";
    const key = `${g}:${i}`;
    if (key === state.hoverKey) return;
    state.hoverKey = key;
    const stateName = categories[codes.get(g)[i]][0];
    const info = model.get("groups")[g];
    tip.textContent = `${info ? groupTitle(info) : ""} [${i}] · ${stateName}`;
    send({ type: "hover", group: g, index: i, seq: ++state.seq });
  }

  function showHover(msg) {
    if (`${msg.group}:${msg.index}` !== state.hoverKey || !msg.name) return;
    tip.innerHTML = "";
    const line = (label, value) => { if (value !== null && value !== undefined && value !== "") tip.append(h("div", {}, h("b", { text: `${label} ` }), value)); };
    tip.append(h("div", {}, h("b", { text: msg.name })));
    line("task", msg.task);
    line("map index", msg.map_index === null ? "" : String(msg.map_index));
    line("state", msg.state);
    line("duration", msg.duration);
    line("inputs", msg.inputs);
    line("error", msg.message);
  }

  function openDetails(g, i) {
    state.selected = `${g}:${i}`;
    detail.className = "nbflow-detail";
    detail.textContent = "…";
    for (const row of rows.children) row.classList.toggle("nbflow-selected", row.dataset.key === state.selected);
    send({ type: "details", group: g, index: i, seq: ++state.seq });
  }

  // -- the list ----------------------------------------------------------------------------
  function refreshList(force) {
    const now = performance.now();
    if (!force && now - state.listAsked < 1000 && !model.get("finished")) return;
    if (!force && model.get("finished") && state.listFinal) return;
    state.listFinal = model.get("finished");
    state.listAsked = now;
    send({
      type: "list", seq: ++state.listSeq, state: state.stateFilter, query: state.query,
      group: state.group, offset: state.offset, limit: 200,
    });
  }

  function showList(msg) {
    if (msg.seq !== state.listSeq) return; // an answer to an older question
    rows.innerHTML = "";
    for (const [g, i, name, mapIndex, stateName] of msg.rows) {
      const key = `${g}:${i}`;
      const label = `${GLYPHS[stateName] || "·"} ${name}${mapIndex === null ? "" : ` [${mapIndex}]`} — ${stateName}`;
      const row = h("div", { class: "nbflow-row", "data-key": key, "data-state": stateName, text: label });
      if (key === state.selected) row.classList.add("nbflow-selected");
      row.addEventListener("click", () => openDetails(g, i));
      rows.append(row);
    }
    if (!msg.rows.length) rows.append(h("div", { class: "nbflow-row nbflow-muted", text: "no task runs match" }));
    const last = msg.offset + msg.rows.length;
    pager.textContent = msg.total ? `${(msg.offset + 1).toLocaleString("en-US")}–${last.toLocaleString("en-US")} of ${msg.total.toLocaleString("en-US")}` : "";
    prev.disabled = msg.offset <= 0;
    next.disabled = last >= msg.total;
  }

  function filterGroup(g) {
    state.group = g;
    state.offset = 0;
    const groups = model.get("groups");
    chip.style.display = g === null ? "none" : "";
    chip.textContent = g === null ? "" : `task: ${groups[g] ? groupTitle(groups[g]) : g} ✕`;
    drawDag();
    drawGroups();
    refreshList(true);
  }

  chip.style.display = "none";
  chip.addEventListener("click", () => filterGroup(null));
  stateSelect.addEventListener("change", () => { state.stateFilter = stateSelect.value; state.offset = 0; refreshList(true); });
  let typing = 0;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.query = search.value.trim(); state.offset = 0; refreshList(true); }, 150);
  });
  prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - 200); refreshList(true); });
  next.addEventListener("click", () => { state.offset += 200; refreshList(true); });
  cancel.addEventListener("click", () => { cancel.disabled = true; cancel.textContent = "Cancelling…"; send({ type: "cancel" }); });
  retry.addEventListener("click", () => { retry.disabled = true; send({ type: "retry" }); });

  // -- the retry's own view, below ---------------------------------------------------------
  let retryShown = "";
  async function drawRetry() {
    const ref = model.get("retry_ref");
    if (!ref || ref === retryShown || !host) return;
    retryShown = ref;
    const child = await host.getModel(ref);
    retryBox.innerHTML = "";
    const sub = h("div", { style: "margin-top:10px;border-top:1px dashed #bbb;padding-top:6px" });
    retryBox.append(sub);
    mount(child, sub, host);
  }

  // -- messages ----------------------------------------------------------------------------
  function onMessage(msg, buffers) {
    if (!alive) return;
    if (msg.type === "codes") onCodes(msg.groups, buffers);
    else if (msg.type === "hover") showHover(msg);
    else if (msg.type === "details" && `${msg.group}:${msg.index}` === state.selected) detail.innerHTML = msg.html;
    else if (msg.type === "list") showList(msg);
  }

  model.on("msg:custom", onMessage);
  model.on("change:header", drawHeader);
  model.on("change:cancel_state", drawHeader);
  model.on("change:retry_state", drawHeader);
  model.on("change:dag", drawDag);
  model.on("change:groups", drawGroups);
  model.on("change:output", drawOutput);
  model.on("change:retry_ref", drawRetry);
  model.on("change:finished", () => refreshList(true));

  drawHeader();
  drawDag();
  drawGroups();
  drawOutput();
  drawRetry();
  send({ type: "sync" });
  send({ type: "ready" });
  refreshList(true);

  return () => {
    alive = false;
    model.off("msg:custom", onMessage);
    if (state.frame) cancelAnimationFrame(state.frame);
  };
}

// The run ended and the kernel replaced this output by its static picture: mount there again.
function remountInPicture(model, host) {
  const id = model.get("view_id");
  const deadline = performance.now() + 5000;
  function look() {
    const picture = id && document.querySelector(`.nbflow-static[data-view="${id}"]`);
    if (picture && !picture.querySelector(".nbflow-view")) {
      for (const child of picture.children) child.style.display = "none";
      const place = document.createElement("div");
      picture.append(place);
      mount(model, place, host);
    } else if (!picture && performance.now() < deadline) {
      requestAnimationFrame(look);
    }
  }
  requestAnimationFrame(look);
}

export default {
  render({ model, el, host }) {
    const cleanup = mount(model, el, host);
    return () => {
      cleanup();
      remountInPicture(model, host);
    };
  },
};
