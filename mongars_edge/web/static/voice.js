// monGARS voice: speaks replies sentence by sentence while they stream, push-to-talk, barge-in.
// Channel (docs/speech.md): each completed sentence is POSTed to /v1/audio/speech as 24 kHz
// PCM and played through Web Audio in order; push-to-talk records with MediaRecorder and
// POSTs the clip to /v1/audio/transcriptions. Nothing here talks to another host.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const PCM_RATE = 24000;
  const FIRST_PIECE_WORDS = 4;
  const ABBREV = new Set("mr mrs ms dr st jr sr vs etc e.g i.e no fig approx mme mlle p.ex a.m p.m av bd".split(" "));
  const fr = (navigator.language || "fr").toLowerCase().startsWith("fr");
  const L = fr
    ? { speakOn: "Lire les réponses à voix haute", speakOff: "Ne plus lire les réponses", ptt: "Maintenir pour parler", listening: "J'écoute…", noMic: "Micro indisponible" }
    : { speakOn: "Read replies aloud", speakOff: "Stop reading replies", ptt: "Hold to talk", listening: "Listening…", noMic: "Microphone unavailable" };

  const v = {
    available: { tts: false, stt: false },
    csrf: "",
    enabled: localStorage.getItem("mongars.speak") === "1",
    ctx: null,
    // The reply being spoken: one generation number; anything older is dropped (barge-in).
    gen: 0,
    buffer: "",
    pieces: 0,
    language: "",
    chain: Promise.resolve(),
    controllers: new Set(),
    sources: new Set(),
    nextTime: 0,
    recorder: null,
    stats: { requested: 0, played: 0, seconds: 0, silenced: 0, transcripts: 0, errors: [] },
  };

  // ---- HTTP (same-origin session cookie; the CSRF token comes from /api/session)
  async function refreshCsrf() {
    const res = await fetch("/api/session", { credentials: "same-origin" });
    const s = await res.json().catch(() => ({}));
    v.csrf = s.csrf || "";
  }
  async function post(path, init) {
    for (let attempt = 0; attempt < 2; attempt++) {
      const headers = Object.assign({ "X-CSRF-Token": v.csrf }, init.headers || {});
      const res = await fetch(path, Object.assign({}, init, { method: "POST", credentials: "same-origin", headers }));
      if (res.status !== 403 || attempt) return res;
      await refreshCsrf();  // the session was renewed since we read the token
    }
    throw new Error("unreachable");
  }

  // ---- sentence splitting (mirrors mongars_edge/speech/sentences.py)
  const END = /[.!?…]+(?:\s?["'»”’)\]])*\s+|\n\s*\n/g;
  const END_AT_TAIL = /[A-Za-zÀ-ÿ]{2,}[.!?…]+(?:\s?["'»”’)\]])*$/;
  const CLAUSE = /[,;:—]\s+/;
  function endsWithAbbrev(text) {
    const m = text.trimEnd().match(/([A-Za-zÀ-ÿ.]+)\.(?:\s?["'»”’)\]])*$/);
    if (!m) return false;
    const w = m[1].toLowerCase();
    return ABBREV.has(w) || (w.length === 1 && m[1] === m[1].toUpperCase());
  }
  function speakable(s) { return /[\p{L}\p{N}]/u.test(s); }
  function takeSentences(final) {
    const out = [];
    let start = 0, m;
    END.lastIndex = 0;
    while ((m = END.exec(v.buffer)) !== null) {
      const cand = v.buffer.slice(start, m.index + m[0].length);
      if (endsWithAbbrev(cand) && !m[0].includes("\n")) continue;
      out.push(cand); start = m.index + m[0].length;
    }
    v.buffer = v.buffer.slice(start);
    if (v.buffer && (final || (END_AT_TAIL.test(v.buffer) && !endsWithAbbrev(v.buffer)))) {
      out.push(v.buffer); v.buffer = "";
    }
    if (!out.length && !v.pieces && v.buffer) {
      // The first piece goes early: at a clause break or after a few words.
      const c = v.buffer.match(CLAUSE);
      if (c && v.buffer.slice(0, c.index).trim().split(/\s+/).length >= 2) {
        out.push(v.buffer.slice(0, c.index + c[0].length)); v.buffer = v.buffer.slice(c.index + c[0].length);
      } else {
        const words = v.buffer.trim().split(/\s+/);
        const complete = /\s$/.test(v.buffer) ? words.length : words.length - 1;
        if (complete >= FIRST_PIECE_WORDS) {
          const cut = /\s$/.test(v.buffer) ? v.buffer.length : v.buffer.trimEnd().lastIndexOf(" ");
          out.push(v.buffer.slice(0, cut)); v.buffer = v.buffer.slice(cut);
        }
      }
    }
    return out.map((s) => s.replace(/\s+/g, " ").trim()).filter(speakable);
  }

  // ---- playback
  function audioContext() {
    if (!v.ctx) v.ctx = new AudioContext();
    if (v.ctx.state === "suspended") v.ctx.resume();
    return v.ctx;
  }
  function speak(sentence) {
    const gen = v.gen;
    const controller = new AbortController();
    v.controllers.add(controller);
    v.pieces += 1;
    v.stats.requested += 1;
    const body = { model: "tts-1", input: sentence, response_format: "pcm" };
    if (v.language) body.language = v.language;
    // Requests start at once (the box queues them in order); playback keeps the order.
    const audio = post("/v1/audio/speech", {
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: controller.signal,
    }).then(async (res) => {
      if (!res.ok) throw new Error("speech " + res.status);
      if (!v.language) v.language = res.headers.get("X-Language") || "";
      return res.arrayBuffer();
    });
    v.chain = v.chain.then(async () => {
      let data;
      try { data = await audio; } catch (e) {
        if (e.name !== "AbortError") v.stats.errors.push(String(e.message || e));
        return;
      } finally { v.controllers.delete(controller); }
      if (gen !== v.gen || !data.byteLength) return;
      play(data);
    });
  }
  function play(data) {
    const ctx = audioContext();
    const pcm = new Int16Array(data, 0, Math.floor(data.byteLength / 2));
    const buffer = ctx.createBuffer(1, pcm.length, PCM_RATE);
    const ch = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(ctx.destination);
    const at = Math.max(ctx.currentTime + 0.02, v.nextTime);
    src.start(at);
    v.nextTime = at + buffer.duration;
    v.sources.add(src);
    src.onended = () => { v.sources.delete(src); v.stats.played += 1; };
    v.stats.seconds += buffer.duration;
  }
  // Barge-in: everything queued or playing stops now.
  function silence() {
    v.gen += 1;
    v.buffer = ""; v.pieces = 0; v.language = "";
    for (const c of v.controllers) c.abort();
    v.controllers.clear();
    for (const s of v.sources) { try { s.stop(); } catch (e) { /* already stopped */ } }
    v.sources.clear();
    v.chain = Promise.resolve();
    v.nextTime = 0;
    v.stats.silenced += 1;
  }
  function speaking() { return v.sources.size > 0 || v.controllers.size > 0; }

  // ---- the chat page's events
  document.addEventListener("mongars:stream-start", () => { silence(); });
  document.addEventListener("mongars:token", (e) => {
    if (!v.enabled || !v.available.tts) return;
    v.buffer += (e.detail && e.detail.text) || "";
    for (const s of takeSentences(false)) speak(s);
  });
  document.addEventListener("mongars:stream-end", (e) => {
    if (!v.enabled || !v.available.tts) return;
    const reason = e.detail && e.detail.finishReason;
    if (reason === "stopped" || reason === "error") { silence(); return; }
    for (const s of takeSentences(true)) speak(s);
  });
  document.addEventListener("mongars:stop", () => silence());
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && speaking()) silence(); });

  // ---- speak toggle
  function paintToggle() {
    const b = $("speak-toggle");
    // index.html holds both icons; app.css shows the one matching aria-pressed.
    b.setAttribute("aria-pressed", v.enabled ? "true" : "false");
    b.title = v.enabled ? L.speakOff : L.speakOn;
    b.setAttribute("aria-label", b.title);
  }
  $("speak-toggle").addEventListener("click", () => {
    if (speaking()) silence();
    v.enabled = !v.enabled;
    localStorage.setItem("mongars.speak", v.enabled ? "1" : "0");
    if (v.enabled) audioContext();  // a user gesture: the browser lets audio start
    paintToggle();
  });

  // ---- push-to-talk: hold the button (or press Space/Enter on it), release to send
  async function startTalking() {
    if (v.recorder) return;
    silence();  // a new utterance interrupts the box at once
    let stream;
    try { stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } }); } catch (e) {
      $("ptt").title = L.noMic; v.stats.errors.push("mic: " + e.message); return;
    }
    const chunks = [];
    const rec = new MediaRecorder(stream);
    v.recorder = rec;
    rec.ondataavailable = (ev) => { if (ev.data.size) chunks.push(ev.data); };
    rec.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      v.recorder = null;
      $("ptt").classList.remove("recording");
      $("ptt").setAttribute("aria-pressed", "false");
      const blob = new Blob(chunks, { type: rec.mimeType || "audio/webm" });
      if (!blob.size) return;
      await transcribe(blob);
    };
    rec.start();
    $("ptt").classList.add("recording");
    $("ptt").setAttribute("aria-pressed", "true");
  }
  function stopTalking() { if (v.recorder && v.recorder.state === "recording") v.recorder.stop(); }
  async function transcribe(blob) {
    const form = new FormData();
    const ext = (blob.type.split("/")[1] || "webm").split(";")[0];
    form.append("file", blob, "speech." + ext);
    form.append("model", "whisper-1");
    const input = $("input");
    const before = input.placeholder;
    input.placeholder = L.listening;
    try {
      const res = await post("/v1/audio/transcriptions", { body: form });
      const data = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
      const text = String(data.text || "").trim();
      v.stats.transcripts += 1;
      if (text) {
        input.value = input.value ? input.value.trimEnd() + " " + text : text;
        input.dispatchEvent(new Event("input"));
        input.focus();
      }
    } catch (e) { v.stats.errors.push("stt: " + e.message); } finally { input.placeholder = before; }
  }
  const ptt = $("ptt");
  ptt.title = L.ptt; ptt.setAttribute("aria-label", L.ptt); ptt.setAttribute("aria-pressed", "false");
  ptt.addEventListener("pointerdown", (e) => { e.preventDefault(); startTalking(); });
  ptt.addEventListener("pointerup", stopTalking);
  ptt.addEventListener("pointerleave", stopTalking);
  ptt.addEventListener("keydown", (e) => {
    if ((e.key === " " || e.key === "Enter") && !e.repeat) { e.preventDefault(); if (v.recorder) stopTalking(); else startTalking(); }
  });

  // ---- show the buttons once signed in, if the box offers speech
  async function detect() {
    try {
      const res = await fetch("/api/speech", { credentials: "same-origin" });
      if (!res.ok) return;
      const info = await res.json();
      v.available = { tts: !!info.tts, stt: !!info.stt && !!(window.MediaRecorder && navigator.mediaDevices) };
      await refreshCsrf();
    } catch (e) { return; }
    $("speak-toggle").hidden = !v.available.tts;
    $("ptt").hidden = !v.available.stt;
    paintToggle();
  }
  const app = $("app");
  new MutationObserver(() => { if (!app.hidden) detect(); else { silence(); $("speak-toggle").hidden = true; $("ptt").hidden = true; } })
    .observe(app, { attributes: true, attributeFilter: ["hidden"] });
  if (!app.hidden) detect();

  // For tests and the curious: what the voice layer did.
  window.mongarsVoice = { stats: v.stats, silence, speaking, enabled: () => v.enabled, available: () => v.available };
})();
