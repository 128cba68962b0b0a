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

function say(text) {
  const flash = document.getElementById("flash");
  if (!flash) return;
  flash.textContent = text;
  flash.hidden = !text;
}

// The buttons of a live page post their form in place: the page stays, and what the brain does next arrives as
// live updates (the form is re-drawn with them). Without fetch, or once the page is no longer live, forms post
// the ordinary way and the console answers with the page again.
function postInPlace(live) {
  if (!window.fetch) return;
  live.addEventListener("submit", async (event) => {
    const form = event.target;
    if (live.dataset.active !== "yes" || form.method.toLowerCase() !== "post") return;
    event.preventDefault();
    const button = event.submitter;
    const action = button && button.hasAttribute("formaction") ? button.formAction : form.action;
    const buttons = Array.from(form.querySelectorAll("button"));
    buttons.forEach((b) => { b.disabled = true; });
    say("");
    try {
      const response = await fetch(action, {method: "POST", body: new URLSearchParams(new FormData(form)),
                                            credentials: "same-origin"});
      if (response.ok) {
        for (const field of form.querySelectorAll("input[type=text]")) field.value = "";
      } else {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const message = page.querySelector("#error h1");
        say(message ? message.textContent : "the console answered " + response.status);
      }
    } catch (err) {
      say("the console does not answer: " + err);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  place(document);
  const live = document.getElementById("live");
  if (live) { follow(live); postInPlace(live); }
});
