"""The page of ``uit serve``: one HTML document with its style and script inline, so it fetches
nothing but its own origin's API and images (no CDN, works offline). ``{{TITLE}}`` and
``{{INFO}}`` (the model, gallery and index as JSON) are filled in by ``render_page``.

Where the server wants a token, the page asks for it once (kept in the tab's sessionStorage)
and sends it as ``Authorization: Bearer`` on every fetch; images then come through ``fetch``
as blob: URLs (an ``<img src>`` cannot send the header). Without a token they load as plain
``<img src>``, as they always did.

The search is in the address (``?q=...&k=20&page=2``): each new search or page is a history
entry, Back and Forward search again, and an address with ``q`` searches on load. A request
that fails (no answer, 5xx, 401, 429) says so in the page with a Retry button. The style and
script are allowed by their SHA-256 (``serve.page_policy``): no inline ``style=`` attributes."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{TITLE}}</title>
<style>
  * { box-sizing: border-box; }
  [hidden] { display: none !important; }
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
  header, main { max-width: 1200px; margin: 0 auto; padding: 12px 16px; }
  header h1 { font-size: 18px; margin: 0 0 4px; }
  .about { color: #555; font-size: 13px; overflow-wrap: break-word; }
  form { display: flex; flex-wrap: wrap; gap: 8px; margin: 12px 0 4px; }
  #text { flex: 1 1 240px; font: inherit; padding: 8px; min-width: 0; }
  button, select { font: inherit; padding: 6px 12px; }
  #query { margin: 8px 0; }
  mark { background: #ffe08a; padding: 0 1px; border-radius: 2px; }
  #status { color: #555; font-size: 13px; min-height: 1.4em; display: flex; gap: 8px;
            align-items: center; flex-wrap: wrap; }
  #status.error { color: #b00020; font-weight: 600; }
  #retry { font-size: 13px; padding: 2px 10px; }
  #grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(112px, 1fr));
          gap: 10px; margin: 8px 0; }
  figure { margin: 0; background: #fff; border: 3px solid #ddd; border-radius: 6px;
           padding: 4px; display: flex; flex-direction: column; align-items: center;
           min-width: 0; }
  figure.correct { border-color: #2e7d32; }
  figure.wrong { border-color: #c62828; }
  figure a { width: 100%; cursor: zoom-in; }
  figure img { width: 100%; height: 180px; object-fit: contain; image-rendering: pixelated; }
  figcaption { font-size: 12px; width: 100%; min-width: 0; }
  .score { display: flex; flex-wrap: wrap; column-gap: 6px; font-weight: 700; }
  .score span, .name { white-space: nowrap; }
  .name { overflow: hidden; text-overflow: ellipsis; }
  .pager { display: flex; gap: 8px; align-items: center; }
  .legend { font-size: 12px; color: #555; }
  #login { margin: 12px 0 4px; }
  #token { flex: 1 1 240px; font: inherit; padding: 8px; min-width: 0; }
  #overlay { position: fixed; inset: 0; background: rgba(0, 0, 0, 0.85); display: flex;
             flex-direction: column; align-items: center; justify-content: center; gap: 8px;
             z-index: 10; cursor: zoom-out; padding: 16px; }
  #overlay img { height: 80vh; max-width: 90vw; width: auto; object-fit: contain;
                 image-rendering: pixelated; background: #fff; }
  #overlay div { color: #fff; font-size: 13px; max-width: 90vw; white-space: nowrap;
                 overflow: hidden; text-overflow: ellipsis; }
</style>
</head>
<body>
<header>
  <h1>Person search</h1>
  <div class="about" id="about"></div>
</header>
<main>
  <form id="login" hidden>
    <input id="token" type="password" autocomplete="off" required
           placeholder="access token (uit serve token create NAME)" aria-label="access token">
    <button type="submit" id="use">Use token</button>
  </form>
  <form id="form">
    <input id="text" name="text" type="search" autocomplete="off" required
           placeholder="a woman in a red coat carrying a black backpack" aria-label="sentence">
    <select id="k" aria-label="results per page">
      <option>10</option><option selected>20</option><option>50</option>
    </select>
    <button type="submit" id="go">Search</button>
    <button type="button" id="example" hidden>Example caption</button>
  </form>
  <div id="query"></div>
  <div id="status" role="status"><span id="message"></span>
    <button type="button" id="retry" hidden>Retry</button></div>
  <div class="pager" id="pager-top" hidden>
    <button type="button" class="prev">Previous</button>
    <button type="button" class="next">Next</button>
    <span class="page"></span>
  </div>
  <div id="grid"></div>
  <div class="pager" id="pager-bottom" hidden>
    <button type="button" class="prev">Previous</button>
    <button type="button" class="next">Next</button>
    <span class="page"></span>
  </div>
</main>
<div id="overlay" hidden role="dialog" aria-modal="true" aria-label="larger view">
  <img id="large" alt="">
  <div id="large-name"></div>
</div>
<script>
"use strict";
const info = {{INFO}};
const MAX_RANK = 1000;
const $ = (id) => document.getElementById(id);
const pagers = () => document.querySelectorAll(".pager");
let token = sessionStorage.getItem("uit-token") || "";
let blobs = [];
let current = null;  // the search shown or asked for: {q, k, page}
let asked = 0;  // the latest request: an older answer arriving late is dropped

function say(message, error = false, retry = false) {
  $("status").className = error ? "error" : "";
  $("message").textContent = message;
  $("retry").hidden = !retry;
}

function askToken(message) {
  token = "";
  sessionStorage.removeItem("uit-token");
  $("login").hidden = false;
  say(message, true);
  $("token").focus();
}

async function api(path, options = {}) {
  const headers = {...(options.headers || {})};
  const sent = token;
  if (sent) headers["Authorization"] = `Bearer ${sent}`;
  const response = await fetch(path, {...options, headers});
  // a 401 for a token since replaced (or for none, sent before one was entered) is stale
  if (response.status === 401 && token === sent) askToken("This server wants an access token.");
  return response;
}

async function showImage(img, link, url) {
  if (!token) { img.src = url; link.href = url; return; }
  try {
    const response = await api(url);
    if (!response.ok) return;
    const blob = URL.createObjectURL(await response.blob());
    blobs.push(blob);
    img.src = blob;
    link.href = blob;
  } catch (error) {
    img.alt = `${img.alt} (not loaded: the server did not answer)`;
  }
}

const kind = info.index === "ann" ? "approximate" : "exact";
$("about").textContent = `Model: ${info.model}. Gallery: ${info.gallery}, ` +
  `${info.images.toLocaleString()} images, ${kind} index.`;
if (info.benchmark) {
  $("example").hidden = false;
}
if (info.auth && !token) askToken("This server wants an access token.");

function showQuery(result) {
  const box = $("query");
  box.replaceChildren();
  for (const piece of result.words) {
    const node = piece.attribute ? document.createElement("mark") : document.createTextNode("");
    node.textContent = piece.text;
    box.appendChild(node);
  }
  const described = result.described;
  if (described) {
    const line = document.createElement("div");
    line.id = "described";
    const where = described.first_rank === null ? "" :
      `, the first at rank ${described.first_rank.toLocaleString()}`;
    line.textContent = `This caption describes identity ${described.identity}: the gallery ` +
      `holds ${described.images} of its images${where}.`;
    box.appendChild(line);
  }
  if (result.query_pid !== null) {
    const legend = document.createElement("div");
    legend.className = "legend";
    legend.textContent = `A caption of identity ${result.query_pid}: its images are framed ` +
      "green, other identities red.";
    box.appendChild(legend);
  }
}

function openLarge(img, name) {
  if (!img.src) return;
  $("large").src = img.src;
  $("large").alt = name;
  $("large-name").textContent = name;
  $("overlay").hidden = false;
}

function closeLarge() {
  $("overlay").hidden = true;
  $("large").removeAttribute("src");
}

function tile(hit) {
  const figure = document.createElement("figure");
  if (hit.correct !== null) figure.className = hit.correct ? "correct" : "wrong";
  const link = document.createElement("a");
  link.target = "_blank";
  link.rel = "noopener";
  link.title = `${hit.name} (click for a larger view)`;
  const img = document.createElement("img");
  img.alt = hit.name;
  showImage(img, link, hit.url);
  link.appendChild(img);
  link.addEventListener("click", (event) => {
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    openLarge(img, hit.name);
  });
  const caption = document.createElement("figcaption");
  const score = document.createElement("div");
  score.className = "score";
  const parts = [`#${hit.rank}`, hit.score.toFixed(3)];
  if (hit.pid !== null) parts.push(`id ${hit.pid}`);
  score.append(...parts.map((text) => {
    const span = document.createElement("span");
    span.textContent = text;
    return span;
  }));
  const name = document.createElement("div");
  name.className = "name";
  name.title = hit.name;
  name.textContent = hit.name;
  caption.append(score, name);
  figure.append(link, caption);
  return figure;
}

function pageSize() {
  return Number($("k").value);
}

function chooseK(k) {
  const select = $("k");
  if (![...select.options].some((option) => Number(option.value) === k)) {
    const option = document.createElement("option");
    option.textContent = String(k);
    const after = [...select.options].find((o) => Number(o.value) > k);
    select.insertBefore(option, after || null);
  }
  select.value = String(k);
}

function fromUrl() {
  const params = new URLSearchParams(location.search);
  const q = (params.get("q") || "").trim();
  let k = parseInt(params.get("k") || "", 10);
  if (!(k >= 1 && k <= info.max_k)) k = 20;
  let page = parseInt(params.get("page") || "", 10);
  if (!(page >= 1)) page = 1;
  page = Math.min(page, Math.floor((MAX_RANK - k) / k) + 1);
  return q ? {q, k, page} : null;
}

function urlOf(wanted) {
  const params = new URLSearchParams({q: wanted.q, k: String(wanted.k)});
  if (wanted.page > 1) params.set("page", String(wanted.page));
  return `${location.pathname}?${params}`;
}

async function failure(response) {
  let detail = "";
  try { detail = (await response.json()).detail || ""; } catch (error) { detail = ""; }
  if (response.status === 401) return "This server wants an access token: enter it above.";
  if (response.status === 429) return `Too many requests: ${detail || "wait a little"}`;
  if (response.status >= 500) {
    return `The server failed (HTTP ${response.status})${detail ? ": " + detail : ""}`;
  }
  return detail || `The search was refused (HTTP ${response.status})`;
}

function showResults(result, wanted) {
  showQuery(result);
  blobs.forEach((blob) => URL.revokeObjectURL(blob));
  blobs = [];
  $("grid").replaceChildren(...result.hits.map(tile));
  const offset = result.offset;
  const last = offset + result.hits.length;
  say(result.hits.length ? `ranks ${offset + 1} to ${last} of ${result.gallery_size}` :
      "no results on this page");
  for (const pager of pagers()) {
    pager.hidden = result.hits.length === 0 && offset === 0;
    pager.querySelector(".page").textContent = `page ${wanted.page}`;
    pager.querySelector(".prev").disabled = offset === 0;
    pager.querySelector(".next").disabled =
      last >= Math.min(result.gallery_size, MAX_RANK) || last + wanted.k > MAX_RANK;
  }
}

async function search(wanted, push) {
  current = wanted;
  const mine = ++asked;
  closeLarge();
  $("text").value = wanted.q;
  chooseK(wanted.k);
  say("searching...");
  let response;
  try {
    response = await api("/search", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text: wanted.q, k: wanted.k, offset: (wanted.page - 1) * wanted.k}),
    });
  } catch (error) {
    if (mine === asked) {
      say("The server did not answer: it may have stopped, or the network is down.", true, true);
    }
    return;
  }
  if (mine !== asked) return;
  if (!response.ok) {
    const message = await failure(response);
    if (mine === asked) say(message, true, response.status !== 401);
    return;
  }
  const result = await response.json();
  if (mine !== asked) return;
  if (push && urlOf(wanted) !== location.pathname + location.search) {
    history.pushState(wanted, "", urlOf(wanted));
  }
  showResults(result, wanted);
}

function searchText(page) {
  const q = $("text").value.trim() || (current ? current.q : "");
  if (q) search({q, k: pageSize(), page}, true);
}

function turn(step) {
  if (current) search({...current, page: Math.max(1, current.page + step)}, true);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("uit-token", token);
  $("token").value = "";
  $("login").hidden = true;
  say("");
  if (current) search(current, true);
});
$("form").addEventListener("submit", (event) => { event.preventDefault(); searchText(1); });
$("k").addEventListener("change", () => {
  const same = current && $("text").value.trim() === current.q;
  const first = same ? (current.page - 1) * current.k : 0;  // keep the first rank in view
  const k = pageSize();
  searchText(Math.min(Math.floor(first / k), Math.floor((MAX_RANK - k) / k)) + 1);
});
$("retry").addEventListener("click", () => { if (current) search(current, true); });
for (const pager of pagers()) {
  pager.querySelector(".prev").addEventListener("click", () => turn(-1));
  pager.querySelector(".next").addEventListener("click", () => turn(1));
}
$("overlay").addEventListener("click", closeLarge);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !$("overlay").hidden) closeLarge();
});
$("example").addEventListener("click", async () => {
  try {
    const response = await api("/examples?n=1");
    if (!response.ok) { say(await failure(response), true); return; }
    const [text] = await response.json();
    if (text) { $("text").value = text; searchText(1); }
  } catch (error) {
    say("The server did not answer: it may have stopped, or the network is down.", true);
  }
});
window.addEventListener("popstate", () => {
  const wanted = fromUrl();
  if (wanted) { search(wanted, false); return; }
  current = null;
  ++asked;
  closeLarge();
  $("text").value = "";
  $("query").replaceChildren();
  $("grid").replaceChildren();
  for (const pager of pagers()) pager.hidden = true;
  say("");
});
const start = fromUrl();
if (start && info.auth && !token) {  // searched once the token is given
  current = start;
  $("text").value = start.q;
  chooseK(start.k);
} else if (start) {
  search(start, false);
}
</script>
</body>
</html>
"""
