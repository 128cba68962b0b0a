// The console's only script: place timeline bars from their data attributes (the page has no inline style under
// its Content-Security-Policy) and keep a session page live from the server's events, without a reload.
"use strict";

function place(root) {
  for (const el of root.querySelectorAll(".bar[data-left]")) {
    el.style.left = el.dataset.left + "%";
    el.style.width = el.dataset.width + "%";
  }
  for (const el of root.querySelectorAll(".note[data-left]")) {
    if (el.classList.contains("before")) el.style.right = el.dataset.right + "%";
    else el.style.left = el.dataset.left + "%";
  }
  for (const el of root.querySelectorAll(".axis .track span[data-left]")) {
    el.style.left = el.dataset.left + "%";
  }
}

function follow(live) {
  if (live.dataset.active !== "yes" || !window.EventSource) return;
  const url = live.dataset.liveUrl + "?after=" + encodeURIComponent(live.dataset.seq || "0");
  const source = new EventSource(url);
  let pending = null;
  const apply = (update) => {
    // The server's HTML, escaped there; scripts inserted this way never run (and the policy forbids inline ones).
    live.innerHTML = update.html;
    live.dataset.seq = String(update.seq);
    live.dataset.status = update.status;
    place(live);
  };
  source.addEventListener("update", (message) => {
    const update = JSON.parse(message.data);
    // A person typing in a form keeps what they typed: the newest update waits until they leave the field.
    const typing = document.activeElement && live.contains(document.activeElement) &&
      document.activeElement.tagName === "INPUT" && document.activeElement.value;
    if (typing) { pending = update; return; }
    pending = null;
    apply(update);
  });
  live.addEventListener("focusout", () => {
    if (pending) { const update = pending; pending = null; setTimeout(() => apply(update), 0); }
  });
  source.addEventListener("end", () => {
    source.close();
    live.dataset.active = "no";
    const note = document.getElementById("live-note");
    if (note) note.remove();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  place(document);
  const live = document.getElementById("live");
  if (live) follow(live);
});
