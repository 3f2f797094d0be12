"""The page of ``uit serve``: one HTML document with its style and script inline, so it fetches
nothing but its own origin's API and images (no CDN, works offline). ``{{TITLE}}`` and
``{{INFO}}`` (the model, gallery and index as JSON) are filled in by ``render_page``.

Where the server wants a token, the page asks for it once (kept in the tab's sessionStorage)
and sends it as ``Authorization: Bearer`` on every fetch; images then come through ``fetch``
as blob: URLs (an ``<img src>`` cannot send the header). Without a token they load as plain
``<img src>``, as they always did."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{TITLE}}</title>
<style>
  * { box-sizing: border-box; }
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
  header, main { max-width: 1200px; margin: 0 auto; padding: 12px 16px; }
  header h1 { font-size: 18px; margin: 0 0 4px; }
  .about { color: #555; font-size: 13px; overflow-wrap: anywhere; }
  form { display: flex; flex-wrap: wrap; gap: 8px; margin: 12px 0 4px; }
  #text { flex: 1 1 240px; font: inherit; padding: 8px; min-width: 0; }
  button, select { font: inherit; padding: 6px 12px; }
  #query { margin: 8px 0; }
  mark { background: #ffe08a; padding: 0 1px; border-radius: 2px; }
  #status { color: #555; font-size: 13px; min-height: 1.4em; }
  #status.error { color: #b00020; }
  #grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(112px, 1fr));
          gap: 10px; margin: 8px 0; }
  figure { margin: 0; background: #fff; border: 3px solid #ddd; border-radius: 6px;
           padding: 4px; display: flex; flex-direction: column; align-items: center; }
  figure.correct { border-color: #2e7d32; }
  figure.wrong { border-color: #c62828; }
  figure img { width: 100%; height: 180px; object-fit: contain; image-rendering: pixelated; }
  figcaption { font-size: 12px; width: 100%; overflow-wrap: anywhere; }
  figcaption b { display: block; }
  .pager { display: flex; gap: 8px; align-items: center; }
  .legend { font-size: 12px; color: #555; }
  #login { margin: 12px 0 4px; }
  #token { flex: 1 1 240px; font: inherit; padding: 8px; min-width: 0; }
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
  <div id="status"></div>
  <div id="grid"></div>
  <div class="pager">
    <button type="button" id="prev" disabled>Previous</button>
    <button type="button" id="next" disabled>Next</button>
    <span id="page"></span>
  </div>
</main>
<script>
"use strict";
const info = {{INFO}};
const $ = (id) => document.getElementById(id);
let offset = 0;
let token = sessionStorage.getItem("uit-token") || "";
let blobs = [];

function askToken(message) {
  token = "";
  sessionStorage.removeItem("uit-token");
  $("login").hidden = false;
  $("status").className = "error";
  $("status").textContent = message;
  $("token").focus();
}

async function api(path, options = {}) {
  const headers = {...(options.headers || {})};
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const response = await fetch(path, {...options, headers});
  if (response.status === 401) askToken("This server wants an access token.");
  return response;
}

async function showImage(img, link, url) {
  if (!token) { img.src = url; link.href = url; return; }
  const response = await api(url);
  if (!response.ok) return;
  const blob = URL.createObjectURL(await response.blob());
  blobs.push(blob);
  img.src = blob;
  link.href = blob;
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
  if (result.query_pid !== null) {
    const legend = document.createElement("div");
    legend.className = "legend";
    legend.textContent = `A caption of identity ${result.query_pid}: its images are framed ` +
      "green, other identities red.";
    box.appendChild(legend);
  }
}

function tile(hit) {
  const figure = document.createElement("figure");
  if (hit.correct !== null) figure.className = hit.correct ? "correct" : "wrong";
  const link = document.createElement("a");
  link.target = "_blank";
  link.rel = "noopener";
  const img = document.createElement("img");
  img.alt = hit.name;
  showImage(img, link, hit.url);
  link.appendChild(img);
  const caption = document.createElement("figcaption");
  const score = document.createElement("b");
  score.textContent = `#${hit.rank}  ${hit.score.toFixed(3)}` +
    (hit.pid !== null ? `  id ${hit.pid}` : "");
  caption.append(score, hit.name);
  figure.append(link, caption);
  return figure;
}

async function search(newOffset) {
  const text = $("text").value;
  const k = Number($("k").value);
  $("status").className = "";
  $("status").textContent = "searching...";
  const response = await api("/search", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({text, k, offset: newOffset}),
  });
  const result = await response.json();
  if (!response.ok) {
    $("status").className = "error";
    $("status").textContent = result.detail;
    return;
  }
  offset = result.offset;
  showQuery(result);
  blobs.forEach((blob) => URL.revokeObjectURL(blob));
  blobs = [];
  $("grid").replaceChildren(...result.hits.map(tile));
  const last = offset + result.hits.length;
  $("status").textContent = `ranks ${offset + 1} to ${last} of ${result.gallery_size}`;
  $("page").textContent = `page ${Math.floor(offset / k) + 1}`;
  $("prev").disabled = offset === 0;
  $("next").disabled = last >= Math.min(result.gallery_size, 1000);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("uit-token", token);
  $("token").value = "";
  $("login").hidden = true;
  $("status").className = "";
  $("status").textContent = "";
});
$("form").addEventListener("submit", (event) => { event.preventDefault(); search(0); });
$("prev").addEventListener("click", () => search(Math.max(0, offset - Number($("k").value))));
$("next").addEventListener("click", () => search(offset + Number($("k").value)));
$("example").addEventListener("click", async () => {
  const response = await api("/examples?n=1");
  if (!response.ok) return;
  const [text] = await response.json();
  if (text) { $("text").value = text; search(0); }
});
</script>
</body>
</html>
"""
