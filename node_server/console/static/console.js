// node-server web console: one WebSocket (/console/ws), controls built from the OSCQuery tree.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const query = new URLSearchParams(location.search);
  let token = query.get("token") || sessionStorage.getItem("node-server-token") || "";
  if (query.get("token")) {  // keep it for reloads, not in the address bar
    sessionStorage.setItem("node-server-token", token);
    history.replaceState(null, "", location.pathname);
  }
  const HISTORY = 300;  // seconds shown in the plots
  let ws = null;
  let writable = false;
  let prefix = "";
  let nextId = 1;
  let points = [];
  let widgets = new Map();  // full path -> {set(value), el}
  const frameUrls = { input: null, output: null };

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const qs = token ? "?token=" + encodeURIComponent(token) : "";
    ws = new WebSocket(proto + "//" + location.host + "/console/ws" + qs);
    ws.binaryType = "arraybuffer";
    ws.onopen = sendWatch;
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") onMessage(JSON.parse(ev.data));
      else onFrame(ev.data);
    };
    ws.onclose = () => { setState("offline"); setTimeout(connect, 1000); };
  }

  function send(message) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }

  function sendWatch() {
    send({ type: "watch", frames: document.visibilityState === "visible" });
  }
  document.addEventListener("visibilitychange", sendWatch);

  function set(address, args) {
    if (!writable) return;
    send({ type: "set", id: nextId++, address: address, args: args });
  }

  function onFrame(buffer) {
    const kind = new Uint8Array(buffer, 0, 1)[0] === 0 ? "input" : "output";
    const url = URL.createObjectURL(new Blob([buffer.slice(1)], { type: "image/jpeg" }));
    const img = $(kind);
    const old = frameUrls[kind];
    img.onload = () => { if (old) URL.revokeObjectURL(old); };
    img.src = url;
    frameUrls[kind] = url;
    img.dataset.frames = String(Number(img.dataset.frames || 0) + 1);
  }

  function onMessage(m) {
    if (m.type === "hello") {
      writable = m.writable;
      prefix = m.prefix || "";
      $("access").textContent = m.writable ? "" : m.read_only_reason;
      buildControls(m.tree);
      buildPresets(m.presets);
      updateValues(m.values);
      points = m.history.slice(-HISTORY);
      m.errors.forEach(addError);
      showStatus(m.status);
      draw();
    } else if (m.type === "tree") {
      buildControls(m.tree);
      buildPresets(m.presets);
    } else if (m.type === "values") {
      updateValues(m.values);
    } else if (m.type === "status") {
      points.push(m);
      if (points.length > HISTORY) points.shift();
      showStatus(m);
      draw();
    } else if (m.type === "error") {
      addError(m);
    }
  }

  function setState(state) {
    const el = $("state");
    el.textContent = state;
    el.className = "pill " + state;
  }

  function showStatus(s) {
    setState(s.state);
    $("prompt").textContent = s.prompt || "(none)";
    $("fps").textContent = s.fps.toFixed(1);
    $("latency").textContent = s.latency_ms.toFixed(1) + " ms";
    $("frames").textContent = s.frames;
    $("dropped").textContent = s.dropped;
    $("errors").textContent = s.errors;
    const m = s.model || {};
    $("model").textContent = m.family ? "model family " + m.family + (m.max_strength ? ", strength up to " + m.max_strength : "") : "";
    document.querySelectorAll("#presets button").forEach((b) => b.classList.toggle("active", b.textContent === s.preset));
  }

  function addError(e) {
    const li = document.createElement("li");
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = new Date(e.t * 1000).toLocaleTimeString();
    li.append(t, document.createTextNode(e.text));
    const list = $("error-list");
    list.prepend(li);
    while (list.children.length > 50) list.lastChild.remove();
  }

  function buildPresets(names) {
    const box = $("presets");
    box.replaceChildren();
    for (const name of names) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = name;
      b.disabled = !writable;
      b.addEventListener("click", () => set(prefix + "/preset", [name]));
      box.append(b);
    }
    $("save-name").disabled = !writable;
    $("save-form").querySelector("button").disabled = !writable;
  }

  $("save-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("save-name").value.trim();
    if (name) set(prefix + "/preset/save", [name]);
  });

  function buildControls(tree) {
    const box = $("controls");
    box.replaceChildren();
    widgets = new Map();
    walk(tree, box, 0);
  }

  function walk(node, box, depth) {
    if (node.CONTENTS) {
      if (depth > 0) {
        const g = document.createElement("div");
        g.className = "group";
        g.textContent = node.FULL_PATH;
        box.append(g);
      }
      const names = Object.keys(node.CONTENTS);
      // methods first, then containers, each in the tree's order
      names.filter((k) => !node.CONTENTS[k].CONTENTS).forEach((k) => walk(node.CONTENTS[k], box, depth + 1));
      names.filter((k) => node.CONTENTS[k].CONTENTS).forEach((k) => walk(node.CONTENTS[k], box, depth + 1));
      return;
    }
    if (!node.TYPE || node.TYPE === "N" || !(node.ACCESS & 2)) return;
    if (node.FULL_PATH === prefix + "/preset") return;  // the preset buttons
    const w = widget(node);
    if (!w) return;
    const row = document.createElement("div");
    row.className = "control";
    row.title = node.DESCRIPTION || "";
    const label = document.createElement("label");
    label.textContent = node.FULL_PATH.slice(prefix.length);
    row.append(label, w.el, w.out || document.createElement("span"));
    row.dataset.path = node.FULL_PATH;
    box.append(row);
    w.el.disabled = !writable;
    widgets.set(node.FULL_PATH, w);
    if (node.VALUE) w.set(node.VALUE[0]);
  }

  function throttled(fn, ms) {
    let last = 0;
    let timer = null;
    return (...args) => {
      const now = Date.now();
      clearTimeout(timer);
      if (now - last >= ms) { last = now; fn(...args); } else timer = setTimeout(() => { last = Date.now(); fn(...args); }, ms);
    };
  }

  function widget(node) {
    const path = node.FULL_PATH;
    const range = (node.RANGE && node.RANGE[0]) || {};
    const t = node.TYPE;
    let el;
    let out = null;
    let busyUntil = 0;  // don't move a control under the user's hand
    const touch = () => { busyUntil = Date.now() + 700; };
    if ((t === "f" || t === "i") && typeof range.MIN === "number" && typeof range.MAX === "number" && range.MAX - range.MIN <= 100000) {
      el = document.createElement("input");
      el.type = "range";
      el.min = range.MIN;
      el.max = range.MAX;
      el.step = t === "i" ? 1 : (range.MAX - range.MIN) / 1000;
      out = document.createElement("output");
      const parse = t === "i" ? (v) => parseInt(v, 10) : (v) => parseFloat(v);
      const push = throttled(() => set(path, [parse(el.value)]), 50);
      el.addEventListener("input", () => { touch(); out.textContent = fmt(parse(el.value)); push(); });
      return { el, out, set: (v) => { if (Date.now() < busyUntil) return; el.value = v; out.textContent = fmt(v); } };
    }
    if (t === "f" || t === "i") {
      el = document.createElement("input");
      el.type = "number";
      if (typeof range.MIN === "number") el.min = range.MIN;
      if (typeof range.MAX === "number") el.max = range.MAX;
      el.step = t === "i" ? 1 : "any";
      el.addEventListener("change", () => set(path, [t === "i" ? parseInt(el.value, 10) : parseFloat(el.value)]));
      el.addEventListener("input", touch);
      return { el, set: (v) => { if (Date.now() < busyUntil || document.activeElement === el) return; el.value = v; } };
    }
    if (t === "T") {
      el = document.createElement("input");
      el.type = "checkbox";
      el.addEventListener("change", () => set(path, [el.checked]));
      return { el, set: (v) => { el.checked = !!v; } };
    }
    if (t === "s" && range.VALS) {
      el = document.createElement("select");
      for (const v of range.VALS) {
        const o = document.createElement("option");
        o.value = o.textContent = v;
        el.append(o);
      }
      el.addEventListener("change", () => set(path, [el.value]));
      return {
        el,
        set: (v) => {
          if (![...el.options].some((o) => o.value === v)) {
            const o = document.createElement("option");
            o.value = o.textContent = v;
            el.append(o);
          }
          el.value = v;
        },
      };
    }
    if (t === "s") {
      el = document.createElement("input");
      el.type = "text";
      el.addEventListener("change", () => set(path, [el.value]));
      return { el, set: (v) => { if (document.activeElement !== el) el.value = v; } };
    }
    return null;
  }

  function fmt(v) {
    return Number.isInteger(v) ? String(v) : Number(v).toFixed(3);
  }

  function updateValues(values) {
    for (const [path, v] of Object.entries(values || {})) {
      const w = widgets.get(path);
      if (w) w.set(v);
    }
  }

  function plot(canvas, key, unit, colour) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width;
    const H = canvas.height;
    ctx.clearRect(0, 0, W, H);
    const now = points.length ? points[points.length - 1].t : 0;
    const values = points.map((p) => p[key]);
    const max = Math.max(1, ...values) * 1.1;
    ctx.strokeStyle = "#2a3340";
    ctx.beginPath();
    for (let i = 1; i < 4; i++) { ctx.moveTo(0, (H * i) / 4); ctx.lineTo(W, (H * i) / 4); }
    ctx.stroke();
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => {
      const x = W - ((now - p.t) / HISTORY) * W;
      const y = H - (p[key] / max) * H;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = "#8a94a3";
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(key === "fps" ? "fps (last 5 min)" : "latency p50, ms (last 5 min)", 6, 14);
    ctx.textAlign = "right";
    ctx.fillText("max " + max.toFixed(1) + unit, W - 6, 14);
    ctx.textAlign = "left";
  }

  function draw() {
    plot($("plot-fps"), "fps", "", "#4fb3ff");
    plot($("plot-latency"), "latency_ms", " ms", "#ffb347");
  }

  connect();
})();
