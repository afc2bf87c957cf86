// The console's page: sign in with a personal token, follow the deployments live, act on one.
// Everything shown is put in the page as text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "orch-token";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let selected = new URLSearchParams(location.hash.slice(1)).get("d");
let stream = null;
let current = null;

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function banner(message, kind) {
  const box = $("banner");
  box.hidden = !message;
  box.textContent = message || "";
  box.className = kind || "";
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${token()}`, "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) { signOut("Your token was not accepted: sign in again."); }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// ---------------------------------------------------------------------------------- signing in
async function signIn(candidate) {
  sessionStorage.setItem(TOKEN_KEY, candidate);
  try {
    const who = await api("/api/whoami");
    $("who").textContent = `signed in as ${who.person}`;
    $("signin").hidden = true;
    $("main").hidden = false;
    $("signout").hidden = false;
    banner("");
    follow();
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("signin").hidden = false;
    banner(error.message);
  }
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (stream) stream.abort();
  $("main").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin").hidden = false;
  banner(message || "");
}

// ---------------------------------------------------------------------------------- live updates
async function follow() {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  const query = selected ? `?deployment=${encodeURIComponent(selected)}` : "";
  try {
    const response = await fetch(`/api/stream${query}`, {
      headers: { Authorization: `Bearer ${token()}` }, signal: controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      if (response.status === 401) { signOut(body.error); return; }
      throw new Error(body.error || `HTTP ${response.status}`);
    }
    $("live").classList.add("on");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const chunk = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        if (chunk.startsWith("data: ")) render(JSON.parse(chunk.slice(6)));
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return;
    banner(`live updates interrupted: ${error.message}; retrying`);
  }
  $("live").classList.remove("on");
  if (stream === controller && token()) setTimeout(follow, 2000);
}

function render(snapshot) {
  if (snapshot.error) { banner(snapshot.error); return; }
  if ($("banner").textContent.startsWith("live updates")) banner("");
  renderDeployments(snapshot.deployments);
  renderEnvironments(snapshot.environments);
  if (snapshot.detail) renderDetail(snapshot.detail);
}

// ---------------------------------------------------------------------------------- the list
function trafficText(weights) {
  const box = el("div", null, "traffic");
  for (const [version, weight] of Object.entries(weights).sort()) box.append(el("span", `${version} ${weight}%`));
  return box;
}

function renderDeployments(deployments) {
  const rows = deployments.map((d) => {
    const row = el("tr");
    row.dataset.id = d.id;
    if (d.id === selected) row.classList.add("selected");
    const version = d.candidate || d.stable || "";
    row.append(el("td", d.id, "mono"), el("td", `${d.service} ${version}`), el("td", d.environment),
      el("td", d.strategy));
    const phase = el("td"); phase.append(el("span", d.phase, `phase ${d.phase}`)); row.append(phase);
    row.append(el("td", d.step));
    const traffic = el("td"); traffic.append(trafficText(d.weights)); row.append(traffic);
    row.addEventListener("click", () => select(d.id));
    return row;
  });
  $("deployment-rows").replaceChildren(...rows);
}

function select(id) {
  selected = id;
  location.hash = `d=${encodeURIComponent(id)}`;
  $("detail").hidden = false;
  follow();
}

function renderEnvironments(environments) {
  const cards = environments.map((e) => {
    const card = el("div", null, "env");
    card.dataset.environment = e.name;
    const name = el("div", null, "name");
    const dot = el("span", null, "dot");
    let health = "not monitored";
    if (e.health) {
      dot.classList.add(e.health.healthy ? "ok" : "bad");
      health = e.health.healthy ? "healthy" : e.health.error || "unhealthy";
    }
    name.append(dot, document.createTextNode(e.name));
    card.append(name, el("div", `${e.complianceLevel} compliance${e.approvalRequired ? ", approval required" : ""}`, "hint"),
      el("div", health, "health"), el("div", `live: ${e.services.join(", ") || "none"}`, "hint"));
    return card;
  });
  $("environment-cards").replaceChildren(...cards);
}

// ---------------------------------------------------------------------------------- one deployment
function renderDetail(d) {
  current = d;
  $("detail").hidden = false;
  $("detail-title").textContent = `${d.service} ${d.candidate || d.stable || ""} → ${d.environment} (${d.strategy})`;
  const phase = $("detail-phase");
  phase.textContent = d.phase;
  phase.className = `phase ${d.phase}`;
  const why = d.rollback ? `rollback (${d.rollback.trigger}): ${d.rollback.reason}` : d.message;
  $("detail-message").textContent = why || "";
  renderActions(d);
  renderWeights(d);
  $("steps").replaceChildren(...d.steps.map((s) => el("li", s.label, s.state)));
  renderCharts(d.judgements);
  $("judgements").replaceChildren(...d.judgements.slice().reverse().map((j) => {
    const row = el("tr");
    const verdict = el("td"); verdict.append(el("span", j.verdict, `verdict ${j.verdict}`));
    row.append(el("td", time(j.at)), verdict, el("td", j.reason));
    return row;
  }));
  $("hooks").replaceChildren(...d.hooks.map((h) =>
    el("li", `${time(h.at)} ${h.type} hook '${h.hook}' before "${h.step}": ${h.outcome} (${h.answer})`)));
  $("events").replaceChildren(...d.events.slice().reverse().map((e) => {
    const row = el("tr");
    row.append(el("td", e.seq), el("td", time(e.at)), el("td", e.actor), el("td", e.kind), el("td", e.summary, "mono"));
    return row;
  }));
}

function renderActions(d) {
  const active = !d.terminal;
  const allowed = {
    promote: active, "promote-full": active, pause: active && d.phase !== "paused", resume: d.phase === "paused",
    abort: active, rollback: active || d.phase === "succeeded",
  };
  for (const button of document.querySelectorAll("[data-action]")) button.disabled = !allowed[button.dataset.action];
}

function renderWeights(d) {
  const versions = Object.entries(d.weights).sort((a, b) => (a[0] === d.candidate ? -1 : b[0] === d.candidate ? 1 : 0));
  $("weights").replaceChildren(...versions.map(([version, weight]) => {
    const row = el("div", null, version === d.candidate ? "weight candidate" : "weight stable");
    row.dataset.version = version;
    const bar = el("div", null, "bar");
    const fill = el("span");
    fill.style.width = `${weight}%`;
    bar.append(fill);
    row.append(el("span", version, "mono"), bar, el("span", `${weight}%`, "value"));
    return row;
  }));
}

// ---------------------------------------------------------------------------------- charts
function renderCharts(judgements) {
  const metrics = new Map();
  for (const j of judgements) {
    for (const check of j.checks) {
      if (!metrics.has(check.metric)) metrics.set(check.metric, []);
      metrics.get(check.metric).push({ ...check, verdict: j.verdict, at: j.at });
    }
  }
  const charts = [...metrics.entries()]
    .filter(([, points]) => points.some((p) => p.value !== null))
    .map(([metric, points]) => chart(metric, points));
  if (!charts.length) charts.push(el("p", "no judgement yet", "hint"));
  $("charts").replaceChildren(...charts);
}

function chart(metric, points) {
  const width = 320, height = 130, pad = 26;
  const last = points[points.length - 1];
  const values = points.map((p) => p.value).filter((v) => v !== null);
  const limits = [last.success, last.failure].filter((v) => v !== null && v !== undefined);
  const top = Math.max(...values, ...limits, 1e-9) * 1.25;
  const x = (i) => pad + (points.length === 1 ? (width - 2 * pad) / 2 : (i * (width - 2 * pad)) / (points.length - 1));
  const y = (v) => height - pad - (v / top) * (height - 2 * pad);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", "100%");
  svg.setAttribute("role", "img");
  const line = (y1, color, dash, label, atLeft) => {
    const l = document.createElementNS(SVG, "line");
    for (const [k, v] of Object.entries({ x1: pad, x2: width - pad, y1, y2: y1, stroke: color, "stroke-dasharray": dash })) {
      l.setAttribute(k, v);
    }
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", atLeft ? pad + 2 : width - pad);
    t.setAttribute("y", y1 - 3);
    t.setAttribute("text-anchor", atLeft ? "start" : "end");
    t.setAttribute("font-size", "9");
    t.setAttribute("fill", color);
    t.textContent = label;
    svg.append(l, t);
  };
  const axis = document.createElementNS(SVG, "line");
  for (const [k, v] of Object.entries({ x1: pad, x2: width - pad, y1: height - pad, y2: height - pad, stroke: "#c5ced8" })) {
    axis.setAttribute(k, v);
  }
  svg.append(axis);
  if (last.success !== null && last.success !== undefined) line(y(last.success), "#1f9d55", "4 3", `success ${fmt(last.success)}`, true);
  if (last.failure !== null && last.failure !== undefined) line(y(last.failure), "#d64545", "4 3", `failure ${fmt(last.failure)}`, false);
  const path = document.createElementNS(SVG, "polyline");
  path.setAttribute("points", points.map((p, i) => (p.value === null ? "" : `${x(i)},${y(p.value)}`)).join(" "));
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "#2f6fdb");
  svg.append(path);
  points.forEach((p, i) => {
    if (p.value === null) return;
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", x(i));
    dot.setAttribute("cy", y(p.value));
    dot.setAttribute("r", 4);
    dot.setAttribute("fill", { success: "#1f9d55", failure: "#d64545" }[p.verdict] || "#c98a00");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${time(p.at)} ${metric} ${fmt(p.value)} (${p.verdict})`;
    dot.append(title);
    svg.append(dot);
  });
  const box = el("div", null, "chart");
  box.dataset.metric = metric;
  box.append(el("div", `${metric}: last ${fmt(last.value)}`, "title"), svg);
  return box;
}

function fmt(value) {
  if (value === null || value === undefined) return "-";
  return Math.abs(value) < 1 ? value.toPrecision(2) : value.toFixed(1);
}

function time(seconds) { return new Date(seconds * 1000).toLocaleTimeString(); }

// ---------------------------------------------------------------------------------- actions
async function act(action) {
  if (!current) return;
  const reason = $("reason").value.trim();
  try {
    const status = await api(`/api/deployments/${encodeURIComponent(current.id)}/${action}`, {
      method: "POST", body: JSON.stringify({ reason }),
    });
    banner(`${action}: ${status.phase}${status.message ? ` (${status.message})` : ""}`, "info");
    $("reason").value = "";
  } catch (error) {
    banner(error.message);
  }
}

// ---------------------------------------------------------------------------------- start
$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  signIn(value);
});
$("signout").addEventListener("click", () => signOut("Signed out."));
for (const button of document.querySelectorAll("[data-action]")) {
  button.addEventListener("click", () => act(button.dataset.action));
}
if (token()) signIn(token()); else $("signin").hidden = false;
if (selected) $("detail").hidden = false;
