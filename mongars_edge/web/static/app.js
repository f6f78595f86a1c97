// monGARS chat page: no framework, no external request. Text from the model or the user only
// ever reaches the page through textContent / createElement (see renderMarkdown): no HTML
// injection is possible.
"use strict";
(() => {
  const T = {
    fr: {
      setupCode: "Code d'installation", name: "Nom", password: "Mot de passe",
      setupIntro: "Première mise en marche : entrez le code affiché dans la console de la boîte et créez le compte administrateur.",
      loginIntro: "Connectez-vous à votre assistant.", create: "Créer le compte", login: "Se connecter",
      newChat: "Nouvelle conversation", logout: "Se déconnecter", send: "Envoyer", stop: "Arrêter",
      placeholder: "Écrivez un message…", copy: "Copier", copied: "Copié", regenerate: "Régénérer",
      rename: "Renommer", del: "Supprimer", confirmDelete: "Supprimer cette conversation?",
      newTitle: "Nouveau titre :", untitled: "Sans titre", error: "Erreur", stopped: "arrêté",
      menu: "Menu", close: "Fermer", modelNow: "Modèle qui répond", noModel: "aucun modèle",
      manageModels: "Gérer les modèles", models: "Modèles de conversation",
      answering: "Répond maintenant", installed: "Installé", notInstalled: "Pas sur la boîte",
      builtIn: "Intégré", recommended: "Recommandé pour cette boîte",
      downloading: "Téléchargement", failed: "Échec du téléchargement", cancelled: "Téléchargement annulé",
      download: "Télécharger", loadWhenDone: "Charger une fois téléchargé", load: "Charger",
      loading: "Chargement…", remove: "Supprimer", confirmRemove: "Supprimer ce modèle de la boîte ?",
      yesRemove: "Oui, supprimer", cancel: "Annuler", cancelPull: "Annuler le téléchargement",
      tier_tiny: "Très petit", tier_small: "Petit", tier_medium: "Moyen", tier_large: "Grand",
      mb: "Mo", gb: "Go",
    },
    en: {
      setupCode: "Setup code", name: "Name", password: "Password",
      setupIntro: "First start: enter the code shown on the box's console and create the administrator account.",
      loginIntro: "Sign in to your assistant.", create: "Create account", login: "Sign in",
      newChat: "New conversation", logout: "Sign out", send: "Send", stop: "Stop",
      placeholder: "Write a message…", copy: "Copy", copied: "Copied", regenerate: "Regenerate",
      rename: "Rename", del: "Delete", confirmDelete: "Delete this conversation?",
      newTitle: "New title:", untitled: "Untitled", error: "Error", stopped: "stopped",
      menu: "Menu", close: "Close", modelNow: "Model answering", noModel: "no model",
      manageModels: "Manage models", models: "Chat models",
      answering: "Answering now", installed: "Installed", notInstalled: "Not on this box",
      builtIn: "Built in", recommended: "Recommended for this box",
      downloading: "Downloading", failed: "Download failed", cancelled: "Download cancelled",
      download: "Download", loadWhenDone: "Load when done", load: "Load",
      loading: "Loading…", remove: "Remove", confirmRemove: "Remove this model from the box?",
      yesRemove: "Yes, remove", cancel: "Cancel", cancelPull: "Cancel download",
      tier_tiny: "Tiny", tier_small: "Small", tier_medium: "Medium", tier_large: "Large",
      mb: "MB", gb: "GB",
    },
  };
  const langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "fr"];
  const lang = String(langs[0]).toLowerCase().startsWith("en") ? "en" : "fr";
  const t = (k) => T[lang][k];
  const $ = (id) => document.getElementById(id);
  const state = { user: null, csrf: null, conversation: null, controller: null, busy: false };

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function emit(name, detail) { document.dispatchEvent(new CustomEvent("mongars:" + name, { detail })); }
  // Icons are inline SVG drawn with the text colour: no emoji or symbol font is needed.
  const ICONS = { rename: "M4 20h4L19 9l-4-4L4 16zM13.5 6.5l4 4", del: "M6 6l12 12M18 6L6 18" };
  function icon(name) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg"), path = document.createElementNS(ns, "path");
    svg.setAttribute("class", "i"); svg.setAttribute("viewBox", "0 0 24 24"); svg.setAttribute("aria-hidden", "true");
    path.setAttribute("d", ICONS[name]);
    svg.appendChild(path);
    return svg;
  }
  function iconButton(cls, name) {
    const b = el("button", cls); b.type = "button"; b.title = t(name); b.setAttribute("aria-label", t(name));
    b.appendChild(icon(name));
    return b;
  }

  // ---- safe markdown: fenced code, headings, lists, quotes, paragraphs, inline code/bold/italic/links
  function inline(parent, text) {
    const re = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(\[[^\]]+\]\((https?:\/\/[^\s)]+)\))/g;
    let last = 0, m;
    while ((m = re.exec(text))) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      if (m[1]) parent.appendChild(el("code", "", m[1].slice(1, -1)));
      else if (m[2]) parent.appendChild(el("strong", "", m[2].slice(2, -2)));
      else if (m[3]) parent.appendChild(el("em", "", m[3].slice(1, -1)));
      else {
        const a = el("a", "", m[4].slice(1, m[4].indexOf("](")));
        a.href = m[5]; a.rel = "noopener noreferrer nofollow"; a.target = "_blank";
        parent.appendChild(a);
      }
      last = re.lastIndex;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }
  function renderMarkdown(target, src) {
    const frag = document.createDocumentFragment();
    const lines = src.replace(/\r\n?/g, "\n").split("\n");
    let i = 0, para = [];
    const flush = () => { if (para.length) { const p = el("p"); inline(p, para.join("\n")); frag.appendChild(p); para = []; } };
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(/^\s*```\s*([\w+-]*)/);
      if (fence) {
        flush();
        const code = [];
        i++;
        while (i < lines.length && !/^\s*```/.test(lines[i])) code.push(lines[i++]);
        i++;
        const pre = el("pre"), c = el("code", "", code.join("\n"));
        if (fence[1]) c.dataset.lang = fence[1];
        pre.appendChild(c); frag.appendChild(pre);
        continue;
      }
      const h = line.match(/^(#{1,4})\s+(.*)/);
      if (h) { flush(); const n = el("h" + Math.min(6, h[1].length + 2)); inline(n, h[2]); frag.appendChild(n); i++; continue; }
      const item = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)/);
      if (item) {
        flush();
        const ordered = /\d/.test(item[1]);
        const list = el(ordered ? "ol" : "ul");
        while (i < lines.length) {
          const it = lines[i].match(/^\s*([-*+]|\d+[.)])\s+(.*)/);
          if (!it || /\d/.test(it[1]) !== ordered) break;
          const li = el("li"); inline(li, it[2]); list.appendChild(li); i++;
        }
        frag.appendChild(list);
        continue;
      }
      if (/^>\s?/.test(line)) { flush(); const q = el("blockquote"); inline(q, line.replace(/^>\s?/, "")); frag.appendChild(q); i++; continue; }
      if (!line.trim()) { flush(); i++; continue; }
      para.push(line); i++;
    }
    flush();
    target.replaceChildren(frag);
  }

  // ---- HTTP
  async function api(method, path, body) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (state.csrf && method !== "GET") headers["X-CSRF-Token"] = state.csrf;
    const res = await fetch(path, { method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
    if (res.status === 204) return null;
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
    return data;
  }

  // ---- views
  function applyStrings() {
    document.documentElement.lang = lang === "fr" ? "fr-CA" : "en";
    document.querySelectorAll("[data-i18n]").forEach((n) => { n.textContent = t(n.dataset.i18n); });
    document.querySelectorAll("[data-i18n-label]").forEach((n) => {
      n.title = t(n.dataset.i18nLabel); if (n.tagName === "BUTTON") n.setAttribute("aria-label", n.title);
    });
    $("input").placeholder = t("placeholder");
  }
  function showAuth(setup) {
    $("app").hidden = true; $("auth").hidden = false;
    $("code-row").hidden = !setup; $("code").required = setup;
    $("auth-intro").textContent = t(setup ? "setupIntro" : "loginIntro");
    $("auth-submit").textContent = t(setup ? "create" : "login");
    $("password").autocomplete = setup ? "new-password" : "current-password";
    const want = setup ? "/setup" : "/login";
    if (location.pathname !== want) history.replaceState(null, "", want);
    (setup ? $("code") : $("name")).focus();
  }
  async function showApp() {
    $("auth").hidden = true; $("app").hidden = false;
    if (location.pathname !== "/") history.replaceState(null, "", "/" + location.hash);
    $("me").textContent = state.user.name;
    emit("signed-in", { user: state.user });
    await loadConversations();
    const m = location.hash.match(/c=(\d+)/);
    if (m) await openConversation(Number(m[1])); else newConversation();
    $("input").focus();
  }
  async function start() {
    applyStrings();
    const s = await api("GET", "/api/session");
    state.user = s.user; state.csrf = s.csrf;
    if (s.user) return showApp();
    showAuth(s.setup_required && location.pathname !== "/login");
  }
  $("auth-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("auth-error").textContent = "";
    const setup = !$("code-row").hidden;
    const body = { name: $("name").value.trim(), password: $("password").value };
    if (setup) body.code = $("code").value.trim();
    try {
      const s = await api("POST", setup ? "/api/setup" : "/api/login", body);
      state.user = s.user; state.csrf = s.csrf; $("password").value = "";
      await showApp();
    } catch (e) { $("auth-error").textContent = e.message; }
  });
  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout", {}); } catch (e) { /* signed out anyway */ }
    state.user = null; state.csrf = null; location.hash = "";
    emit("signed-out", {});
    showAuth(false);
  });

  // ---- conversations
  async function loadConversations() {
    const list = await api("GET", "/api/conversations?limit=100");
    const ul = $("conversations");
    ul.replaceChildren();
    for (const c of list.data) {
      const li = el("li"); li.dataset.id = c.id;
      if (c.id === state.conversation) li.className = "active";
      const a = el("a", "", c.title || t("untitled")); a.href = "#c=" + c.id;
      a.addEventListener("click", (ev) => { ev.preventDefault(); openConversation(c.id); $("app").classList.remove("menu"); });
      const ren = iconButton("rename", "rename");
      ren.addEventListener("click", async () => {
        const title = prompt(t("newTitle"), c.title);
        if (title === null) return;
        await api("PATCH", "/api/conversations/" + c.id, { title });
        await loadConversations();
        if (c.id === state.conversation) $("title").textContent = title;
      });
      const del = iconButton("delete", "del");
      del.addEventListener("click", async () => {
        if (!confirm(t("confirmDelete"))) return;
        await api("DELETE", "/api/conversations/" + c.id);
        if (c.id === state.conversation) newConversation();
        await loadConversations();
      });
      li.append(a, ren, del);
      ul.appendChild(li);
    }
  }
  function newConversation() {
    state.conversation = null;
    history.replaceState(null, "", "/");
    $("messages").replaceChildren();
    $("title").textContent = t("newChat");
    document.querySelectorAll("#conversations li").forEach((li) => li.classList.remove("active"));
  }
  async function openConversation(id) {
    let c;
    try { c = await api("GET", "/api/conversations/" + id); } catch (e) { newConversation(); return; }
    state.conversation = id;
    history.replaceState(null, "", "/#c=" + id);
    $("title").textContent = c.title || t("untitled");
    const box = $("messages");
    box.replaceChildren();
    const msgs = c.messages.filter((m) => m.role === "user" || m.role === "assistant");
    msgs.forEach((m, i) => {
      // Of several answers to one question (regenerate), the last one is shown.
      if (m.role === "assistant" && msgs[i + 1] && msgs[i + 1].role === "assistant") return;
      addMessage(m.role, m.content, m.status);
    });
    document.querySelectorAll("#conversations li").forEach((li) => li.classList.toggle("active", Number(li.dataset.id) === id));
    box.scrollTop = box.scrollHeight;
  }
  function addMessage(role, text, status) {
    const div = el("div", "msg " + role + (status === "partial" ? " partial" : ""));
    const body = el("div", "body");
    div.appendChild(body);
    if (role === "user") body.textContent = text; else renderMarkdown(body, text);
    if (role === "assistant") {
      const tools = el("div", "tools");
      const copy = el("button", "copy", t("copy"));
      copy.addEventListener("click", async () => {
        const raw = div.dataset.raw || "";
        try { await navigator.clipboard.writeText(raw); } catch (e) {
          const ta = el("textarea"); ta.value = raw; document.body.appendChild(ta); ta.select(); document.execCommand("copy"); ta.remove();
        }
        copy.textContent = t("copied"); setTimeout(() => { copy.textContent = t("copy"); }, 1200);
      });
      const regen = el("button", "regenerate", t("regenerate"));
      regen.addEventListener("click", () => regenerate(div));
      tools.append(copy, regen);
      div.appendChild(tools);
      div.dataset.raw = text;
    }
    $("messages").appendChild(div);
    return div;
  }

  // ---- streaming
  async function stream(payload, div) {
    const body = div.querySelector(".body");
    state.busy = true; $("send").hidden = true; $("stop").hidden = false;
    state.controller = new AbortController();
    let text = "", finish = null, scheduled = false;
    const paint = () => { scheduled = false; renderMarkdown(body, text); div.dataset.raw = text; $("messages").scrollTop = $("messages").scrollHeight; };
    try {
      const res = await fetch("/v1/chat/completions", {
        method: "POST", credentials: "same-origin", signal: state.controller.signal,
        headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf || "" },
        body: JSON.stringify(Object.assign({ model: "mongars", stream: true }, payload)),
      });
      if (!res.ok) { const e = await res.json().catch(() => ({})); throw new Error((e.error && e.error.message) || res.statusText); }
      const cid = Number(res.headers.get("X-Conversation-Id"));
      const isNew = cid && cid !== state.conversation;
      if (cid) { state.conversation = cid; history.replaceState(null, "", "/#c=" + cid); }
      emit("stream-start", { conversationId: state.conversation });
      if (isNew) loadConversations();
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, cut); buf = buf.slice(cut + 2);
          if (!ev.startsWith("data: ")) continue;
          const data = ev.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const choice = chunk.choices && chunk.choices[0];
          if (!choice) continue;
          const piece = choice.delta && choice.delta.content;
          if (piece) {
            text += piece; emit("token", { text: piece });
            if (!scheduled) { scheduled = true; requestAnimationFrame(paint); }
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    } catch (e) {
      if (e.name === "AbortError") { finish = "stopped"; div.classList.add("partial"); }
      else { finish = "error"; const p = el("p", "error", t("error") + " : " + e.message); div.appendChild(p); }
    } finally {
      paint();
      state.busy = false; state.controller = null;
      $("send").hidden = false; $("stop").hidden = true;
      emit("stream-end", { text, finishReason: finish });
    }
    return text;
  }
  async function send(text) {
    text = String(text || "").trim();
    if (!text || state.busy) return;
    if (!state.conversation) $("title").textContent = text.replace(/\s+/g, " ").slice(0, 60);
    addMessage("user", text);
    const div = addMessage("assistant", "");
    $("messages").scrollTop = $("messages").scrollHeight;
    await stream({ messages: [{ role: "user", content: text }], conversation_id: state.conversation || "new" }, div);
  }
  async function regenerate(div) {
    const answers = document.querySelectorAll(".msg.assistant");
    if (state.busy || !state.conversation || answers[answers.length - 1] !== div) return;
    div.classList.remove("partial");
    div.querySelectorAll(".error").forEach((n) => n.remove());
    await stream({ messages: [], regenerate: true, conversation_id: state.conversation }, div);
  }
  function stop() {
    if (state.controller) { state.controller.abort(); emit("stop", {}); }
  }
  $("composer").addEventListener("submit", (ev) => { ev.preventDefault(); const v = $("input").value; $("input").value = ""; send(v); });
  $("input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $("composer").requestSubmit(); }
  });
  $("input").addEventListener("input", () => { const i = $("input"); i.style.height = "auto"; i.style.height = Math.min(i.scrollHeight, 192) + "px"; });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", () => { newConversation(); $("app").classList.remove("menu"); $("input").focus(); });
  $("menu").addEventListener("click", (ev) => { ev.stopPropagation(); $("app").classList.toggle("menu"); });
  document.querySelector(".chat").addEventListener("click", () => $("app").classList.remove("menu"));

  // For models.js, voice.js and tests.
  window.mongars = { send, stop, conversationId: () => state.conversation, api, t, el, lang, user: () => state.user };
  start().catch((e) => { document.body.textContent = t("error") + ": " + e.message; });
})();
