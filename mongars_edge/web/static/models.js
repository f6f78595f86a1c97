// monGARS models: which model answers (top bar), the box's problems from /health (a notice),
// and for administrators a panel that downloads, loads and removes chat models (/api/models*).
// The server decides everything; this only shows its state and sends the admin's choices.
"use strict";
(() => {
  const { api, t, el, lang } = window.mongars;
  const $ = (id) => document.getElementById(id);
  const dialog = $("models-dialog");
  const colon = lang === "fr" ? " : " : ": ";
  const num = new Intl.NumberFormat(lang === "fr" ? "fr-CA" : "en", { maximumFractionDigits: 1 });
  const m = {
    user: null,
    data: null,
    seq: 0,  // only the newest refresh paints and schedules the next one
    timer: 0,
    busy: null,  // {id, action} while a request runs: the panel's buttons wait for it
    confirm: null,  // the model whose removal awaits a yes
    loadWhenDone: {},
    rows: new Map(),  // id -> {li, key}: a row is rebuilt only when its state changes
    pollFailed: false,  // a failed refresh's error goes away with the next good one
    settle: 0,  // refreshes left for a finished download to start answering
  };
  const running = (r) => !!r.pull && r.pull.state === "running";
  // A finished download the box goes on to load (the chosen model, or "load when done"):
  // the load takes a few seconds more, and the top bar should show its end.
  function awaitingLoad(r, setting) {
    if (!r.pull || r.pull.state !== "done" || r.loaded) return false;
    return !!m.loadWhenDone[r.id] || r.id === setting || (setting === "auto" && r.recommended);
  }

  function size(bytes) {
    if (!bytes) return "";
    const mib = bytes / 1048576;
    return mib >= 1024 ? num.format(mib / 1024) + " " + t("gb") : num.format(Math.round(mib)) + " " + t("mb");
  }
  function showError(message) {
    const box = $("models-error");
    box.textContent = t("error") + colon + message;
    if (dialog.open) box.scrollIntoView({ block: "nearest" });
  }

  // ---- refresh: every second while a download runs and the panel is open, every 4 s while it
  // runs and the panel is closed (for the notice), not at all when nothing runs (but a little
  // longer while a finished one is being loaded).
  async function refresh() {
    const seq = ++m.seq;
    clearTimeout(m.timer);
    let data, health;
    try {
      [data, health] = await Promise.all([api("GET", "/api/models"), api("GET", "/health")]);
    } catch (e) {
      if (seq !== m.seq || !m.user) return;
      showError(e.message);
      m.pollFailed = true;
      if (m.settle > 0) { m.settle -= 1; schedule(); }  // the box may be restarting
      return;
    }
    if (seq !== m.seq || !m.user) return;
    m.data = data;
    if (m.pollFailed) { m.pollFailed = false; $("models-error").textContent = ""; }
    paintChip((data.chat && data.chat.id) || health.model);
    paintNotice(health.problems || []);
    paintPanel();
    if (data.catalog.some(running)) m.settle = 30;
    else if (m.settle > 0 && data.catalog.some((r) => awaitingLoad(r, health.model_setting))) m.settle -= 1;
    else m.settle = 0;
    if (m.settle > 0) schedule();
  }
  function schedule() { m.timer = setTimeout(refresh, dialog.open ? 1000 : 4000); }

  function paintChip(id) {
    $("model-label").textContent = t("modelNow") + colon;
    $("model-name").textContent = id || t("noModel");
    $("model").hidden = false;
  }
  function paintNotice(problems) {
    const box = $("notice");
    if (box.textContent === problems.join("")) return;
    box.replaceChildren(...problems.map((p) => el("p", "", p)));
    box.hidden = !problems.length;
  }

  // ---- the panel
  function paintPanel() {
    if (!dialog.open || !m.data) return;
    const list = $("models-list");
    const seen = new Set();
    let prev = null;
    for (const r of m.data.catalog) {
      seen.add(r.id);
      const p = r.pull || {};
      const key = JSON.stringify([r.installed, r.loaded, r.recommended, p.state, p.error, m.busy, m.confirm === r.id]);
      let row = m.rows.get(r.id);
      if (!row || row.key !== key) {
        const li = buildRow(r);
        if (row) row.li.replaceWith(li);
        row = { li, key };
        m.rows.set(r.id, row);
      }
      if (row.li.previousElementSibling !== prev || row.li.parentNode !== list) {
        list.insertBefore(row.li, prev ? prev.nextElementSibling : list.firstElementChild);
      }
      prev = row.li;
      if (running(r)) paintProgress(row.li, r.pull);
    }
    for (const [id, row] of m.rows) if (!seen.has(id)) { row.li.remove(); m.rows.delete(id); }
  }
  function paintProgress(li, pull) {
    const bar = li.querySelector("progress"), text = li.querySelector(".pct");
    if (pull.percent === null || pull.percent === undefined) {
      bar.removeAttribute("value");  // the total is unknown: an indeterminate bar
      text.textContent = size(pull.done_bytes);
    } else {
      bar.value = pull.percent;
      text.textContent = num.format(pull.percent) + (lang === "fr" ? " %" : "%");
    }
  }
  function buildRow(r) {
    const li = el("li");
    li.dataset.id = r.id;
    const head = el("div", "name", r.name || r.id);
    const badge = (key, cls) => head.appendChild(el("span", "badge " + cls, t(key)));
    if (r.loaded) badge("answering", "now");
    else badge(r.installed ? "installed" : "notInstalled", r.installed ? "installed" : "absent");
    if (r.embedded) badge("builtIn", "embedded");
    if (r.recommended) badge("recommended", "recommended");
    const meta = [t("tier_" + r.tier), size(r.size_bytes), r.licence, r.name ? r.id : ""];
    li.append(head, el("div", "meta", meta.filter(Boolean).join(" · ")));
    const pull = r.pull;
    if (running(r)) {
      const bar = el("div", "pull"), progress = el("progress");
      progress.max = 100;
      progress.setAttribute("aria-label", t("downloading") + " " + (r.name || r.id));
      bar.append(el("span", "", t("downloading")), progress, el("span", "pct"));
      li.appendChild(bar);
    } else if (pull && pull.state === "failed") {
      li.appendChild(el("p", "error pull-error", t("failed") + colon + pull.error));
    } else if (pull && pull.state === "cancelled") {
      li.appendChild(el("p", "muted pull-cancelled", t("cancelled")));
    }
    li.appendChild(actions(r));
    return li;
  }
  function actions(r) {
    const box = el("div", "actions");
    const button = (label, action, cls) => {
      const b = el("button", cls || "", t(label));
      b.type = "button";
      b.dataset.action = action;
      b.disabled = m.busy !== null;
      b.addEventListener("click", () => act(r.id, action));
      box.appendChild(b);
    };
    if (m.confirm === r.id) {
      box.appendChild(el("span", "", t("confirmRemove")));
      button("yesRemove", "remove", "danger");
      button("cancel", "keep");
    } else if (running(r)) {
      button("cancelPull", "cancel");
    } else if (!r.installed) {
      button("download", "pull", "primary");
      const check = el("input");
      check.type = "checkbox";
      check.checked = !!m.loadWhenDone[r.id];
      check.addEventListener("change", () => { m.loadWhenDone[r.id] = check.checked; });
      const label = el("label", "when-done");
      label.append(check, t("loadWhenDone"));
      box.appendChild(label);
    } else if (!r.loaded) {
      const loading = m.busy && m.busy.id === r.id && m.busy.action === "load";
      button(loading ? "loading" : "load", "load", "primary");
      if (!r.embedded) button("remove", "ask", "danger");
    }
    return box;
  }
  async function act(id, action) {
    if (action === "ask" || action === "keep") {
      m.confirm = action === "ask" ? id : null;
      paintPanel();
      return;
    }
    m.confirm = null;
    m.busy = { id, action };
    m.pollFailed = false;
    $("models-error").textContent = "";
    paintPanel();
    const path = "/api/models/" + encodeURIComponent(id);
    try {
      // A stray GGUF (no catalog entry) is loaded by its path: its id is only the file name.
      const row = m.data.catalog.find((r) => r.id === id) || {};
      if (action === "load") await api("POST", "/api/models/load", { model: row.kind ? id : row.path || id });
      else if (action === "pull") await api("POST", "/api/models/pull", { model: id, load: !!m.loadWhenDone[id] });
      else if (action === "cancel") await api("DELETE", path + "/pull");
      else if (action === "remove") await api("DELETE", path);
    } catch (e) { showError(e.message); }  // stays until the next action
    m.busy = null;
    await refresh();
    if (dialog.open && !dialog.contains(document.activeElement)) $("models-close").focus();
  }

  $("models-open").addEventListener("click", () => { dialog.showModal(); paintPanel(); refresh(); });
  $("models-close").addEventListener("click", () => dialog.close());

  // ---- who is signed in
  function signedIn(user) {
    m.user = user;
    $("models-open").hidden = !user.is_admin;
    refresh();
  }
  function signedOut() {
    m.user = null; m.data = null; m.seq += 1;
    clearTimeout(m.timer);
    if (dialog.open) dialog.close();
    m.rows.clear();
    $("models-list").replaceChildren();
    $("models-error").textContent = "";
    $("notice").replaceChildren();
    $("models-open").hidden = true; $("notice").hidden = true; $("model").hidden = true;
  }
  document.addEventListener("mongars:signed-in", (e) => signedIn(e.detail.user));
  document.addEventListener("mongars:signed-out", signedOut);
  // Another admin may have switched models: look again after a reply and on coming back.
  document.addEventListener("mongars:stream-end", () => { if (m.user) refresh(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && m.user) refresh(); });
  if (window.mongars.user()) signedIn(window.mongars.user());
})();
